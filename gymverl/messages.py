"""Responses-API items -> chat messages (OpenAI chat form, as chat templates and VeRL expect).

`items_to_messages` goes from items to messages; `messages_to_items` / `response_object` go back (an
agent loop's chat turns -> the Responses-API `response` a NeMo Gym `/verify` reads). Rules:
- `message` items become `{role, content}`; `developer` becomes `system`; content parts are joined.
- `responses_create_params.instructions` becomes a leading system message.
- `function_call` items become `tool_calls` on an assistant message, in OpenAI form
  `{"type": "function", "id": call_id, "function": {"name", "arguments": <JSON string>}}`. Calls
  that directly follow an assistant text message join that message (one assistant turn).
- `function_call_output` items become `{"role": "tool", "tool_call_id", "content"}`.
- `reasoning` items become `reasoning_content` on the next assistant message, only when asked for.
- Images (`input_image` parts, also chat-style `image_url` parts) become an `<image>` placeholder at
  their place in the text, and the image itself is appended to the caller's `images` list as
  `{"bytes": <encoded image>, "path": None}`: the form of VeRL 0.9.1's multimodal datasets
  (`RLHFDataset._build_messages` and `MultiTurnSFTDataset._build_messages` split message text on
  `<image>` and take the row's `images` column in order; the {bytes, path} struct is what a
  `datasets` Image column stores). Only inline images are carried: `data:image/...;base64,` URLs.
  An http(s) URL, a file path or a `file_id` is refused (`image_not_inline`): VeRL would fetch it
  at training time on every worker, or not find it. Callers that pass no `images` list (a format
  that carries no images) get `images_not_supported`. Other non-text parts (`input_file`,
  `input_audio`) are refused (`unsupported_content`): dropping them would leave a prompt that asks
  about content the model cannot see.
- aviary's per-step transitions (`response.output` as a list of item lists): the last one is the
  conversation (`rollout_parts`).
"""

from __future__ import annotations

import base64
import binascii
import re
import time
import uuid
from io import BytesIO
from typing import Any, Callable, Iterable, Mapping

from gymverl.jsonl import dumps
from gymverl.schema import IMAGE_PART_TYPES, MEDIA_PART_TYPES, UNSUPPORTED_PART_TYPES, content_text, is_transitions, tools_fault

ROLE_MAP = {"developer": "system"}

IMAGE_PLACEHOLDER = "<image>"
# The placeholders VeRL's datasets split message text on (`re.split("(<image>|<video>|<audio>)")`).
MEDIA_PLACEHOLDERS = ("<image>", "<video>", "<audio>")
_DATA_URL = re.compile(r"data:(image/[\w.+-]+)?((?:;[\w.+-]+=[^;,]*)*)(;base64)?,", re.ASCII)


class MessageError(ValueError):
    """An item that cannot be turned into a chat message. `code` names the kind (a rejection code)."""

    code = "bad_messages"


class ContentError(MessageError):
    """Message content a row cannot carry faithfully (an image that is not inline, a file part, ...)."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code


def image_bytes(part: dict[str, Any]) -> bytes:
    """The encoded image (PNG, JPEG, ... bytes) of an `input_image` / `image_url` content part.

    Reads `image_url` as a string (Responses API) or `{"url": ...}` (chat completions). Only
    `data:image/<type>;base64,<data>` URLs are accepted; raises ContentError `image_not_inline` for
    URLs, paths and `file_id`s, and `bad_image` for a data URL that is not a decodable image.
    """
    url = part.get("image_url")
    if isinstance(url, dict):
        url = url.get("url")
    if not isinstance(url, str):
        what = "a file_id" if part.get("file_id") else "no image_url"
        raise ContentError("image_not_inline", f"an {part.get('type')} part has {what}; only inline data:image/...;base64 images can be carried")
    m = _DATA_URL.match(url)
    if m is None:
        shown = url if len(url) <= 60 else url[:57] + "..."
        raise ContentError(
            "image_not_inline",
            f"image {shown!r} is not an inline data URL; VeRL would have to fetch it while training: inline it as data:image/...;base64",
        )
    if m.group(1) is None or m.group(3) is None:
        raise ContentError("bad_image", "an image data URL is not of the form data:image/<type>;base64,<data>")
    try:
        data = base64.b64decode(url[m.end():], validate=True)
    except (binascii.Error, ValueError):
        raise ContentError("bad_image", "an image data URL holds invalid base64") from None
    try:
        from PIL import Image  # what VeRL opens the bytes with
    except ImportError:  # pragma: no cover - Pillow comes with VeRL; without it only base64 is checked
        return data
    try:
        with Image.open(BytesIO(data)) as img:
            img.size  # noqa: B018 - the header was read: a known image format
    except Exception:  # noqa: BLE001 - PIL raises many kinds for garbage
        raise ContentError("bad_image", f"an image data URL ({m.group(1)}) does not hold an image Pillow can open") from None
    return data


def content_with_images(content: Any, images: list[dict[str, Any]] | None) -> str:
    """`records.content_text` that keeps images: each image part becomes `<image>` in the text and
    its bytes are appended to `images`. ContentError when `images` is None and there is an image,
    or for a non-text, non-image part (see the module docstring)."""
    if not isinstance(content, list):
        return content_text(content)
    # One loop for the usual case (text parts only: `content_text`, inlined, for every message),
    # left at the first part that is not a plain dict or str, or holds something else than text.
    texts: list[str] = []
    for p in content:
        if type(p) is dict:
            kind = p.get("type")
            if kind in MEDIA_PART_TYPES:
                break
            text = p.get("text")
            if text is None and kind == "refusal":
                text = p.get("refusal")
            if isinstance(text, str):
                texts.append(text)
        elif isinstance(p, str):
            texts.append(p)
        elif isinstance(p, dict):
            break
    else:
        return "".join(texts)
    for p in content:
        if isinstance(p, dict) and p.get("type") in MEDIA_PART_TYPES:
            break
    else:
        return content_text(content)
    parts: list[str] = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in IMAGE_PART_TYPES:
            if images is None:
                raise ContentError("images_not_supported", f"the rollout has {kind} content, which this output format cannot carry")
            images.append({"bytes": image_bytes(part), "path": None})
            parts.append(IMAGE_PLACEHOLDER)
        elif kind in UNSUPPORTED_PART_TYPES:
            raise ContentError("unsupported_content", f"the rollout has {kind} content, which gymverl cannot carry into a training row")
        else:
            parts.append(content_text([part]))
    return "".join(parts)


def check_placeholders(messages: list[dict[str, Any]], images: list[dict[str, Any]]) -> None:
    """For a row with images: its text must hold exactly one `<image>` per image and no other media
    placeholder, or VeRL pairs images with the wrong places (or fails an assertion). ContentError
    `placeholder_in_text` otherwise. Rows without images need no check (VeRL splits no text then)."""
    if not images:
        return
    texts = [m.get("content") for m in messages if isinstance(m.get("content"), str)]
    n = sum(t.count(IMAGE_PLACEHOLDER) for t in texts)
    other = next((p for p in MEDIA_PLACEHOLDERS[1:] if any(p in t for t in texts)), None)
    if n != len(images) or other:
        found = other or IMAGE_PLACEHOLDER
        raise ContentError(
            "placeholder_in_text", f"the text contains {found!r} itself, which VeRL would read as a media placeholder next to the row's {len(images)} image(s)"
        )


def _json_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    # jsonl.dumps: arguments nested deeper than orjson writes (254 levels) are still valid JSON.
    return dumps(value).decode()


def _output_text(output: Any, images: list[dict[str, Any]] | None = None) -> str:
    # A function_call_output's `output` is a string, or a list of content parts (input_text,
    # input_image, ...): text parts are joined, images become placeholders (or are refused).
    if type(output) is str:
        return output
    if isinstance(output, list) and all(isinstance(p, dict) for p in output):
        if all(isinstance(p.get("text"), str) for p in output):
            return content_text(output)
        if any(p.get("type") in MEDIA_PART_TYPES for p in output):
            return content_with_images(output, images)
    return _json_text(output)


def _reasoning_text(summary: Any, content: Any) -> str:
    parts: list[str] = []
    for value in (summary, content):
        if not isinstance(value, list):
            continue
        for part in value:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                parts.append(part["text"])
    return "\n".join(parts)


def _dict_fields(item: Any) -> tuple[Any, ...]:
    """What `convert_items` reads of a dict item (the order of `gymverl.schema.item_fields`), with
    the readings of missing keys: no `type` is a message, no `arguments` is "{}", no `output` ""."""
    if not isinstance(item, dict):
        raise MessageError(f"item is a {type(item).__name__}, not an object")
    get = item.get
    kind = get("type", "message")
    if kind is None and "role" in item:
        kind = "message"
    return kind, get("role"), get("content"), get("name"), get("call_id"), get("id"), get("arguments", "{}"), get("output", ""), get("summary")


def items_to_messages(
    items: Iterable[Any], *, include_reasoning: bool = False, images: list[dict[str, Any]] | None = None
) -> list[dict[str, Any]]:
    """Convert a sequence of Responses-API items (dicts) to chat messages.

    `images`: a list the images of the items are appended to (see the module docstring); None when
    the caller's format carries no images (an image is then a ContentError).
    """
    return convert_items(items, _dict_fields, include_reasoning=include_reasoning, images=images)


def convert_items(
    items: Iterable[Any],
    fields: Callable[[Any], tuple[Any, ...]],
    *,
    include_reasoning: bool = False,
    images: list[dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """The one Responses-API items -> chat messages converter, for either shape of item.

    `fields(item)` gives (type, role, content, name, call_id, id, arguments, output, summary):
    `_dict_fields` for parsed dicts (`items_to_messages`), `gymverl.schema.item_fields` for the
    typed items of `gymverl.schema.Record[Any]` (the fast path decodes, this converts). A type of
    None with a role is a message. MessageError (or its ContentError) when an item cannot be converted.
    """
    messages: list[dict[str, Any]] = []
    pending_reasoning: list[str] = []
    # The assistant message that following function_calls may still join.
    open_assistant: dict[str, Any] | None = None
    # No helper closures and no per-item allocations beyond the messages: this loop runs for every
    # response of `to-parquet --format sft`.
    for item in items:
        kind, role, content, name, call_id, item_id, arguments, output, summary = fields(item)
        if kind == "message" or (kind is None and role is not None):
            if not isinstance(role, str):
                raise MessageError("message item without a role")
            role = ROLE_MAP.get(role, role)
            text = content if type(content) is str else content_with_images(content, images)
            if role == "assistant":
                open_assistant = {"role": "assistant", "content": text}
                if pending_reasoning:
                    if include_reasoning:
                        open_assistant["reasoning_content"] = "\n".join(pending_reasoning)
                    pending_reasoning.clear()
                messages.append(open_assistant)
            else:
                messages.append({"role": role, "content": text})
                open_assistant = None
        elif kind == "function_call":
            call = {
                "type": "function",
                "id": call_id or item_id,
                "function": {"name": name, "arguments": arguments if type(arguments) is str else _json_text(arguments)},
            }
            if open_assistant is None:
                # A call without assistant text before it opens an assistant turn of its own.
                # (keys in the order of an assistant message with text: reasoning before calls)
                open_assistant = {"role": "assistant", "content": ""}
                if pending_reasoning:
                    if include_reasoning:
                        open_assistant["reasoning_content"] = "\n".join(pending_reasoning)
                    pending_reasoning.clear()
                open_assistant["tool_calls"] = [call]
                messages.append(open_assistant)
            else:
                open_assistant.setdefault("tool_calls", []).append(call)
        elif kind == "function_call_output":
            text = output if type(output) is str else _output_text(output, images)
            messages.append({"role": "tool", "tool_call_id": call_id, "content": text})
            open_assistant = None
        elif kind == "reasoning":
            text = _reasoning_text(summary, content)
            if text:
                pending_reasoning.append(text)
        else:
            raise MessageError(f"unsupported item type {kind!r}")
    return messages


def prompt_messages(
    responses_create_params: dict[str, Any], *, include_reasoning: bool = False, images: list[dict[str, Any]] | None = None
) -> list[dict[str, Any]]:
    """The task prompt (`instructions` + `input`) as chat messages (`images`: see `items_to_messages`)."""
    messages: list[dict[str, Any]] = []
    instructions = responses_create_params.get("instructions")
    if isinstance(instructions, str) and instructions:
        messages.append({"role": "system", "content": instructions})
    inp = responses_create_params.get("input")
    if isinstance(inp, str):
        messages.append({"role": "user", "content": inp})
    elif inp:
        messages.extend(items_to_messages(inp, include_reasoning=include_reasoning, images=images))
    return messages


def prompt_fault(responses_create_params: Any, images: list[dict[str, Any]] | None = None) -> tuple[str, str] | None:
    """(code, reason) when no training row can carry this task prompt, else None.

    The rule rl and sft rows apply to their prompt (`prompt_messages` with images, then
    `check_placeholders`): an image that is not inline (`image_not_inline`) or does not open
    (`bad_image`), a file, audio or video part (`unsupported_content`), a media placeholder in the
    text beside images (`placeholder_in_text`). `validate` counts these, so a prompt `to-parquet`
    will reject is named before converting. Items that are no messages at all are the schema's to
    reject (None here). `images`, when given, receives the prompt's images.
    """
    images = [] if images is None else images
    try:
        check_placeholders(prompt_messages(responses_create_params, images=images), images)
    except ContentError as exc:
        return exc.code, str(exc)
    except MessageError:
        return None
    return None


def rollout_messages(
    record: dict[str, Any], *, include_reasoning: bool = False, images: list[dict[str, Any]] | None = None
) -> list[dict[str, Any]]:
    """The whole conversation of a rollout: prompt messages followed by the response output
    (`images`: see `items_to_messages`)."""
    prompt, response = rollout_parts(record, include_reasoning=include_reasoning, images=images)
    return prompt + response


def rollout_parts(
    record: dict[str, Any], *, include_reasoning: bool = False, images: list[dict[str, Any]] | None = None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(prompt messages, response messages) of a rollout (`images`: see `items_to_messages`).

    A plain `response.output` is all response. NeMo Gym's aviary agent (`return_transitions=true`)
    writes a list of per-step transitions instead, each the cumulative conversation so far, the
    last one whole, seed question included (`responses_create_params.input` is then usually []):
    the last transition is read, what repeats the task input is dropped, and its messages before
    the first assistant turn (the seed) join the prompt. The same seed split applies to a plain
    output when the request has no prompt at all (the question is only in the output).
    """
    prompt = prompt_messages(record["responses_create_params"], include_reasoning=include_reasoning, images=images)
    output = record["response"].get("output") or []
    transitions = is_transitions(output)
    if not transitions and prompt:
        return prompt, items_to_messages(output, include_reasoning=include_reasoning, images=images)
    # The prompt's images were collected above; a transition repeating the prompt repeats its
    # images, so the output's images go to a list of their own and only the new ones are kept.
    out_images: list[dict[str, Any]] | None = [] if images is not None else None
    messages = items_to_messages(output[-1] if transitions else output, include_reasoning=include_reasoning, images=out_images)
    if prompt and messages[: len(prompt)] == prompt:
        repeated = sum(str(m.get("content") or "").count("<image>") for m in prompt)
        messages = messages[len(prompt) :]
        if out_images is not None:
            del out_images[:repeated]
    if images is not None and out_images:
        images.extend(out_images)
    first = next((i for i, m in enumerate(messages) if m["role"] == "assistant"), len(messages))
    return prompt + messages[:first], messages[first:]


def response_messages(
    record: dict[str, Any], *, include_reasoning: bool = False, images: list[dict[str, Any]] | None = None
) -> list[dict[str, Any]]:
    """Only the response of a rollout (what the model produced and the tool results), as chat
    messages (`images`: see `items_to_messages`)."""
    output = record["response"].get("output") or []
    rcp = record["responses_create_params"]
    if is_transitions(output) or not (rcp.get("input") or rcp.get("instructions")):
        return rollout_parts(record, include_reasoning=include_reasoning, images=images)[1]
    return items_to_messages(output, include_reasoning=include_reasoning, images=images)


def chat_tools(tools: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """Responses-API tool schemas -> chat-completions `tools` (`{"type": "function", "function": {...}}`).

    Raises ContentError("bad_tools") for a tool a chat model cannot be given (`schema.tools_fault`:
    not an object, not a function, or nameless)."""
    fault = tools_fault(tools)
    if fault is not None:
        raise ContentError("bad_tools", fault)
    out: list[dict[str, Any]] = []
    for tool in tools or []:
        chat_form = isinstance(tool.get("function"), dict)
        fn: dict[str, Any] = dict(tool["function"]) if chat_form else {"name": tool["name"]}
        if chat_form:
            out.append({"type": "function", "function": fn})
            continue
        if tool.get("description") is not None:
            fn["description"] = tool["description"]
        fn["parameters"] = tool.get("parameters") or {"type": "object", "properties": {}}
        out.append({"type": "function", "function": fn})
    return out


def _new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:24]}"


def messages_to_items(messages: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Chat messages (the model's turns and tool results) -> Responses-API output items.

    The reverse of `items_to_messages`, in the item shapes NeMo Gym's `simple_agent` writes:
    an assistant message's `reasoning_content` becomes a `reasoning` item, its non-empty text an
    assistant `message` item (`output_text`), each of its `tool_calls` a `function_call` item
    (`call_id` = the call's `id`, `arguments` a JSON string); a `tool` message becomes a
    `function_call_output` item (`call_id` = its `tool_call_id`). Other roles are refused
    (MessageError): a response holds only what the model and its tools produced.
    """
    items: list[dict[str, Any]] = []
    for msg in messages:
        role = msg.get("role")
        if role == "assistant":
            reasoning = msg.get("reasoning_content")
            if reasoning:
                items.append({"type": "reasoning", "id": _new_id("rs"), "summary": [{"type": "summary_text", "text": reasoning}]})
            text = msg.get("content") or ""
            if not isinstance(text, str):
                text = content_text(text)
            calls = msg.get("tool_calls") or []
            if text.strip() or not calls:
                items.append(
                    {
                        "id": _new_id("msg"),
                        "type": "message",
                        "role": "assistant",
                        "status": "completed",
                        "content": [{"type": "output_text", "text": text, "annotations": []}],
                    }
                )
            for call in calls:
                fn = call.get("function") or call
                items.append(
                    {
                        "type": "function_call",
                        "id": _new_id("fc"),
                        "call_id": call.get("id") or _new_id("call"),
                        "name": fn.get("name"),
                        "arguments": _json_text(fn.get("arguments", "{}")),
                        "status": "completed",
                    }
                )
        elif role == "tool":
            items.append({"type": "function_call_output", "call_id": msg.get("tool_call_id"), "output": _json_text(msg.get("content", ""))})
        else:
            raise MessageError(f"a response holds assistant and tool messages only, not {role!r}")
    return items


def response_object(output: list[dict[str, Any]], params: Mapping[str, Any] | None = None, *, model: str = "verl-policy") -> dict[str, Any]:
    """A Responses-API `response` object around `output` items (the fields NeMo Gym's verify
    request model requires; `tools`, `tool_choice`, `parallel_tool_calls` echo the task's
    `responses_create_params`)."""
    params = params or {}
    tool_choice = params.get("tool_choice")
    parallel = params.get("parallel_tool_calls")
    return {
        "id": _new_id("resp"),
        "created_at": time.time(),
        "model": model,
        "object": "response",
        "output": output,
        "parallel_tool_calls": True if parallel is None else parallel,
        "tool_choice": "auto" if tool_choice is None else tool_choice,
        "tools": params.get("tools") or [],
        "status": "completed",
    }
