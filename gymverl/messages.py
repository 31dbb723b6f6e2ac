"""Responses-API items -> chat messages (OpenAI chat form, as chat templates and VeRL expect).

One direction only. Rules:
- `message` items become `{role, content}`; `developer` becomes `system`; content parts are joined.
- `responses_create_params.instructions` becomes a leading system message.
- `function_call` items become `tool_calls` on an assistant message, in OpenAI form
  `{"type": "function", "id": call_id, "function": {"name", "arguments": <JSON string>}}`. Calls
  that directly follow an assistant text message join that message (one assistant turn).
- `function_call_output` items become `{"role": "tool", "tool_call_id", "content"}`.
- `reasoning` items become `reasoning_content` on the next assistant message, only when asked for.
- aviary's per-step transitions (`response.output` as a list of item lists): the last one is the
  conversation (`rollout_parts`).
"""

from __future__ import annotations

from typing import Any, Iterable

from gymverl.jsonl import dumps
from gymverl.records import content_text, is_transitions

ROLE_MAP = {"developer": "system"}


class MessageError(ValueError):
    """An item that cannot be turned into a chat message."""


def _json_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    # jsonl.dumps: arguments nested deeper than orjson writes (254 levels) are still valid JSON.
    return dumps(value).decode()


def _output_text(output: Any) -> str:
    # A function_call_output's `output` is a string, or a list of content parts (input_text, ...).
    if isinstance(output, list) and all(isinstance(p, dict) and isinstance(p.get("text"), str) for p in output):
        return content_text(output)
    return _json_text(output)


def _reasoning_text(item: dict[str, Any]) -> str:
    parts: list[str] = []
    for key in ("summary", "content"):
        value = item.get(key)
        if not isinstance(value, list):
            continue
        for part in value:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                parts.append(part["text"])
    return "\n".join(parts)


def items_to_messages(items: Iterable[Any], *, include_reasoning: bool = False) -> list[dict[str, Any]]:
    """Convert a sequence of Responses-API items to chat messages."""
    messages: list[dict[str, Any]] = []
    pending_reasoning: list[str] = []
    # The assistant message that following function_calls may still join.
    open_assistant: dict[str, Any] | None = None

    def new_assistant(content: str) -> dict[str, Any]:
        msg: dict[str, Any] = {"role": "assistant", "content": content}
        if include_reasoning and pending_reasoning:
            msg["reasoning_content"] = "\n".join(pending_reasoning)
        pending_reasoning.clear()
        messages.append(msg)
        return msg

    for item in items:
        if not isinstance(item, dict):
            raise MessageError(f"item is a {type(item).__name__}, not an object")
        kind = item.get("type", "message")
        if kind == "message" or (kind is None and "role" in item):
            role = item.get("role")
            if not isinstance(role, str):
                raise MessageError("message item without a role")
            role = ROLE_MAP.get(role, role)
            text = content_text(item.get("content"))
            if role == "assistant":
                open_assistant = new_assistant(text)
            else:
                messages.append({"role": role, "content": text})
                open_assistant = None
        elif kind == "function_call":
            call = {
                "type": "function",
                "id": item.get("call_id") or item.get("id"),
                "function": {"name": item.get("name"), "arguments": _json_text(item.get("arguments", "{}"))},
            }
            if open_assistant is None:
                open_assistant = new_assistant("")
            open_assistant.setdefault("tool_calls", []).append(call)
        elif kind == "function_call_output":
            messages.append(
                {"role": "tool", "tool_call_id": item.get("call_id"), "content": _output_text(item.get("output", ""))}
            )
            open_assistant = None
        elif kind == "reasoning":
            text = _reasoning_text(item)
            if text:
                pending_reasoning.append(text)
        else:
            raise MessageError(f"unsupported item type {kind!r}")
    return messages


def prompt_messages(responses_create_params: dict[str, Any], *, include_reasoning: bool = False) -> list[dict[str, Any]]:
    """The task prompt (`instructions` + `input`) as chat messages."""
    messages: list[dict[str, Any]] = []
    instructions = responses_create_params.get("instructions")
    if isinstance(instructions, str) and instructions:
        messages.append({"role": "system", "content": instructions})
    inp = responses_create_params.get("input")
    if isinstance(inp, str):
        messages.append({"role": "user", "content": inp})
    elif inp:
        messages.extend(items_to_messages(inp, include_reasoning=include_reasoning))
    return messages


def rollout_messages(record: dict[str, Any], *, include_reasoning: bool = False) -> list[dict[str, Any]]:
    """The whole conversation of a rollout: prompt messages followed by the response output."""
    prompt, response = rollout_parts(record, include_reasoning=include_reasoning)
    return prompt + response


def rollout_parts(record: dict[str, Any], *, include_reasoning: bool = False) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(prompt messages, response messages) of a rollout.

    A plain `response.output` is all response. NeMo Gym's aviary agent (`return_transitions=true`)
    writes a list of per-step transitions instead, each the cumulative conversation so far, the
    last one whole, seed question included (`responses_create_params.input` is then usually []):
    the last transition is read, what repeats the task input is dropped, and its messages before
    the first assistant turn (the seed) join the prompt. The same seed split applies to a plain
    output when the request has no prompt at all (the question is only in the output).
    """
    prompt = prompt_messages(record["responses_create_params"], include_reasoning=include_reasoning)
    output = record["response"].get("output") or []
    transitions = is_transitions(output)
    if not transitions and prompt:
        return prompt, items_to_messages(output, include_reasoning=include_reasoning)
    messages = items_to_messages(output[-1] if transitions else output, include_reasoning=include_reasoning)
    if prompt and messages[: len(prompt)] == prompt:
        messages = messages[len(prompt) :]
    first = next((i for i, m in enumerate(messages) if m["role"] == "assistant"), len(messages))
    return prompt + messages[:first], messages[first:]


def response_messages(record: dict[str, Any], *, include_reasoning: bool = False) -> list[dict[str, Any]]:
    """Only the response of a rollout (what the model produced and the tool results), as chat messages."""
    output = record["response"].get("output") or []
    rcp = record["responses_create_params"]
    if is_transitions(output) or not (rcp.get("input") or rcp.get("instructions")):
        return rollout_parts(record, include_reasoning=include_reasoning)[1]
    return items_to_messages(output, include_reasoning=include_reasoning)


def chat_tools(tools: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """Responses-API tool schemas -> chat-completions `tools` (`{"type": "function", "function": {...}}`)."""
    out: list[dict[str, Any]] = []
    for tool in tools or []:
        if not isinstance(tool, dict):
            raise MessageError(f"tool is a {type(tool).__name__}, not an object")
        if tool.get("type", "function") != "function":
            raise MessageError(f"unsupported tool type {tool.get('type')!r}")
        if isinstance(tool.get("function"), dict):  # already chat form
            out.append({"type": "function", "function": dict(tool["function"])})
            continue
        fn: dict[str, Any] = {"name": tool.get("name")}
        if tool.get("description") is not None:
            fn["description"] = tool["description"]
        fn["parameters"] = tool.get("parameters") or {"type": "object", "properties": {}}
        out.append({"type": "function", "function": fn})
    return out
