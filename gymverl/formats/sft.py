"""SFT rows for VeRL's `MultiTurnSFTDataset` (`verl.trainer.sft_trainer`): one row per kept rollout.

Columns: `messages` (the whole conversation, tool calls and tool results included, as a JSON
string), `tools` (the task's tool schemas in chat-completions form, JSON string, null when the task
has none), `data_source`, `extra_info` {split, index, task_key, line, reward, rollout_index},
`images` (the conversation's images as `[{"bytes", "path": null}]`, one `<image>` placeholder each in
the message text, as VeRL's `MultiTurnSFTDataset` reads them with a processor; null when none).
Load with `gymverl.verl_data.GymverlSFTDataset` (it decodes the JSON strings).
"""

from __future__ import annotations

from typing import Any

import orjson
import pyarrow as pa

from gymverl.formats import RowError, json_cell
from gymverl.formats.rl import IMAGES
from gymverl.jsonl import dumps
from gymverl.messages import MessageError, check_placeholders, chat_tools, prompt_messages, response_messages, rollout_parts
from gymverl.records import agent_name, is_json_object_text, is_transitions, starts_without_prompt

SCHEMA = pa.schema(
    [
        pa.field("messages", pa.string(), nullable=False),
        pa.field("tools", pa.string()),
        pa.field("data_source", pa.string()),
        pa.field(
            "extra_info",
            pa.struct(
                [
                    pa.field("split", pa.string()),
                    pa.field("index", pa.int64()),
                    pa.field("task_key", pa.string()),
                    pa.field("line", pa.int64()),
                    pa.field("reward", pa.float64()),
                    pa.field("rollout_index", pa.int64()),
                ]
            ),
        ),
        pa.field("images", IMAGES),
    ]
)


class _PromptCache:
    """Converted prompts and tools of recent tasks: the n rollouts of a task share them, so each is
    converted once. Keyed by the JSON bytes of the task input; bounded (cleared when full)."""

    def __init__(self, size: int = 512) -> None:
        self.size = size
        self.prompts: dict[bytes, list[dict[str, Any]]] = {}
        self.tools: dict[bytes, list[dict[str, Any]]] = {}

    def prompt(self, rcp: dict[str, Any], include_reasoning: bool) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """(messages, images) of the task input; prompts with images are not cached (their bytes may be large)."""
        key = dumps([rcp.get("instructions"), rcp.get("input"), include_reasoning])  # deep nesting too
        hit = self.prompts.get(key)
        if hit is not None:
            return hit, []
        images: list[dict[str, Any]] = []
        messages = prompt_messages(rcp, include_reasoning=include_reasoning, images=images)
        if not images:
            if len(self.prompts) >= self.size:
                self.prompts.clear()
            self.prompts[key] = messages
        return messages, images

    def chat_tools(self, tools: Any) -> list[dict[str, Any]]:
        if not tools:
            return []
        key = dumps(tools)
        hit = self.tools.get(key)
        if hit is None:
            if len(self.tools) >= self.size:
                self.tools.clear()
            hit = self.tools[key] = chat_tools(tools)
        return hit


_CACHE = _PromptCache()


def conversation(
    record: dict[str, Any], *, include_reasoning: bool = False, images: list[dict[str, Any]] | None = None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The rollout's chat messages and chat tools; RowError when it has nothing to train on.

    Same result as `rollout_messages` + `chat_tools`; the returned lists share message dicts with
    other rollouts of the task, so treat them as read-only. `images`: a list that receives the
    conversation's images (placeholders in the text, see `gymverl.messages`); None refuses a
    rollout with images (RowError `images_not_supported`).
    """
    try:
        rcp = record["responses_create_params"]
        prompt, prompt_images = _CACHE.prompt(rcp, include_reasoning)
        if prompt and not is_transitions(record["response"].get("output")):
            if prompt_images:
                if images is None:
                    raise RowError("images_not_supported", "the rollout's prompt has input_image content, which this output cannot carry")
                images.extend(prompt_images)
            messages = prompt + response_messages(record, include_reasoning=include_reasoning, images=images)
        else:  # aviary transitions, or a question only in the output: split by rollout_parts
            prompt, response = rollout_parts(record, include_reasoning=include_reasoning, images=images)
            messages = prompt + response
        check_placeholders(messages, images or [])
        tools = _CACHE.chat_tools(task_tools(record))
    except MessageError as exc:
        raise RowError(exc.code, f"cannot convert to chat messages: {exc}") from None
    if not any(m.get("role") == "assistant" for m in messages):
        raise RowError("no_assistant_turn", "the response has no assistant message or tool call to train on")
    if messages[0]["role"] in ("assistant", "tool") or starts_without_prompt(record):
        raise RowError("no_prompt", no_prompt_reason(record, blank=messages[0]["role"] not in ("assistant", "tool")))
    return messages, tools


def task_tools(record: dict[str, Any]) -> Any:
    """The tool schemas the model was given: `responses_create_params.tools`; for aviary's transition
    form, whose request carries none, the ones the response echoes (`response.tools`)."""
    tools = record["responses_create_params"].get("tools")
    if not tools and is_transitions(record["response"].get("output")):
        tools = record["response"].get("tools")
    return tools


def no_prompt_reason(record: dict[str, Any], blank: bool = False) -> str:
    """Why a conversation without a prompt (`records.starts_without_prompt`) cannot be trained on
    (one sentence). `blank`: it starts with prompt messages, all without text or an image."""
    if blank:
        return (
            "the prompt is blank: the messages before the first model turn (responses_create_params.instructions "
            "and input) hold no text and no image, so the model would be trained to answer nothing"
        )
    reason = "the conversation starts with a model turn: there is no question in responses_create_params.input or before the first response item"
    response = record.get("response") or {}
    if response.get("contains_transitions") is False or "aviary" in str(agent_name(record) or ""):
        reason += (
            " (NeMo Gym's aviary agent with return_transitions=false keeps the question only in its environment; "
            "collect with return_transitions=true, whose last transition holds the whole conversation)"
        )
    return reason


def sft_row(
    record: dict[str, Any],
    *,
    data_source: str,
    task_key: str,
    line: int,
    include_reasoning: bool = False,
    messages: list[dict[str, Any]] | None = None,
    tools: list[dict[str, Any]] | None = None,
    images: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """One SFT row (split/index filled in by the writer); pass `messages`/`tools`/`images` if already built.

    `messages` and `tools` are JSON text as UTF-8 bytes (`json_cell`), which the writer stores as strings."""
    if messages is None:
        images = []
        messages, tools = conversation(record, include_reasoning=include_reasoning, images=images)
    idx = record.get("_ng_rollout_index")
    return {
        "messages": json_cell(messages),
        "tools": json_cell(tools) if tools else None,
        "data_source": data_source,
        "extra_info": {
            "split": None,
            "index": None,
            "task_key": task_key,
            "line": line,
            "reward": float(record["reward"]),
            "rollout_index": idx if isinstance(idx, int) and not isinstance(idx, bool) else None,
        },
        "images": images or None,
    }


# The probe call: a key and value that appear in no template, so finding them in the rendered text
# (and how they are quoted) tells which argument form the template shows as the model wrote it.
_PROBE_KEY = "gymverl_probe_key"
_PROBE_VALUE = "gymverl_probe_value"
TOOL_ARGUMENT_FORMS = ("string", "object")


class ToolArgumentsError(ValueError):
    """The chat template renders tool-call arguments correctly in neither form (one sentence)."""


def _probe_messages(arguments: Any) -> list[dict[str, Any]]:
    return [
        {"role": "user", "content": "x"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"type": "function", "id": "c0", "function": {"name": "f", "arguments": arguments}}],
        },
    ]


def _probe_problem(text: str) -> str | None:
    """What is wrong with a rendered probe call (None: the arguments appear as written)."""
    if _PROBE_KEY not in text or _PROBE_VALUE not in text:
        return "does not show the arguments"
    if f'\\"{_PROBE_KEY}\\"' in text:
        return "encodes them a second time (a JSON string inside JSON)"
    if f"'{_PROBE_KEY}'" in text:
        return "prints them as a Python dict"
    return None


def tool_arguments_form(tokenizer: Any) -> str:
    """'string' or 'object': the tool-call argument form the tokenizer's chat template renders as written.

    OpenAI-form arguments are JSON *strings* (what gymverl stores: the model's own text). Some
    templates JSON-encode arguments themselves (`arguments | tojson`: Qwen2.5, Llama 3.1), which
    turns a string into an escaped string; others iterate them (`arguments | items`: Qwen3-Coder,
    Gemma), which raises on a string. Both forms are rendered with a probe call; the string form wins
    when both show the arguments unchanged (no re-encoding). Raises `ToolArgumentsError` when
    neither does (the template raises, drops the arguments, double-encodes or prints a Python dict).
    """
    problems: list[str] = []
    for form in TOOL_ARGUMENT_FORMS:
        args: Any = {_PROBE_KEY: _PROBE_VALUE}
        if form == "string":
            args = orjson.dumps(args).decode()
        try:
            text = str(tokenizer.apply_chat_template(_probe_messages(args), tokenize=False))
        except Exception as exc:  # noqa: BLE001 - a template error is the answer for this form
            first = str(exc).splitlines()[0] if str(exc) else ""
            problems.append(f"with {form} arguments it raises {type(exc).__name__}" + (f" ({first})" if first else ""))
            continue
        problem = _probe_problem(text)
        if problem is None:
            return form
        problems.append(f"with {form} arguments it {problem}")
    raise ToolArgumentsError(
        "the tokenizer's chat template renders no tool call as written (" + "; ".join(problems) + "), "
        "so set +data.tool_arguments=object or +data.tool_arguments=string after checking how the template prints arguments."
    )


def template_wants_object_arguments(tokenizer: Any) -> bool:
    """True when the chat template needs tool-call arguments as objects (see `tool_arguments_form`).

    Raises `ToolArgumentsError` when the template renders them correctly in neither form.
    """
    return tool_arguments_form(tokenizer) == "object"


def has_tool_calls(messages: Any) -> bool:
    """True when a conversation (a list of chat messages, or its JSON text) has an assistant tool call."""
    if isinstance(messages, (str, bytes)):
        return b'"tool_calls"' in (messages.encode() if isinstance(messages, str) else messages) and has_tool_calls(orjson.loads(messages))
    return any(isinstance(m, dict) and m.get("tool_calls") for m in messages or ())


def non_object_arguments(messages: list[dict[str, Any]]) -> list[str]:
    """The `arguments` of every tool call in chat `messages` that is not a JSON object (as text)."""
    out: list[str] = []
    for m in messages:
        for tc in (m.get("tool_calls") or ()) if isinstance(m, dict) else ():
            args = (tc.get("function") or {}).get("arguments") if isinstance(tc, dict) else None
            if not is_json_object_text(args):
                out.append(args if isinstance(args, str) else orjson.dumps(args).decode())
    return out


def arguments_as_objects(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Copy of `messages` with JSON-object tool-call arguments parsed into dicts (others left as they are)."""
    out: list[dict[str, Any]] = []
    for m in messages:
        calls = m.get("tool_calls")
        if not calls:
            out.append(m)
            continue
        new_calls = []
        for tc in calls:
            fn = dict(tc.get("function") or {})
            args = fn.get("arguments")
            if isinstance(args, str):
                try:
                    parsed = orjson.loads(args)
                except orjson.JSONDecodeError:
                    parsed = None
                if isinstance(parsed, dict):
                    fn["arguments"] = parsed
            new_calls.append({**tc, "function": fn})
        out.append({**m, "tool_calls": new_calls})
    return out
