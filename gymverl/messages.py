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
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Iterable, Mapping

from gymverl.jsonl import dumps
from gymverl.records import content_text

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
    prompt = prompt_messages(record["responses_create_params"], include_reasoning=include_reasoning)
    output = items_to_messages(record["response"].get("output") or [], include_reasoning=include_reasoning)
    return prompt + output


def response_messages(record: dict[str, Any], *, include_reasoning: bool = False) -> list[dict[str, Any]]:
    """Only the response output of a rollout, as chat messages."""
    return items_to_messages(record["response"].get("output") or [], include_reasoning=include_reasoning)


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
