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

from gymverl.formats import RowError, dumps_str
from gymverl.formats.rl import IMAGES
from gymverl.jsonl import dumps
from gymverl.messages import MessageError, check_placeholders, chat_tools, prompt_messages, response_messages

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
        if prompt_images:
            if images is None:
                raise RowError("images_not_supported", "the rollout's prompt has input_image content, which this output cannot carry")
            images.extend(prompt_images)
        messages = prompt + response_messages(record, include_reasoning=include_reasoning, images=images)
        check_placeholders(messages, images or [])
        tools = _CACHE.chat_tools(rcp.get("tools"))
    except MessageError as exc:
        raise RowError(exc.code, f"cannot convert to chat messages: {exc}") from None
    if not any(m.get("role") == "assistant" for m in messages):
        raise RowError("no_assistant_turn", "the response has no assistant message or tool call to train on")
    return messages, tools


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
    """One SFT row (split/index filled in by the writer); pass `messages`/`tools`/`images` if already built."""
    if messages is None:
        images = []
        messages, tools = conversation(record, include_reasoning=include_reasoning, images=images)
    idx = record.get("_ng_rollout_index")
    return {
        "messages": dumps_str(messages),
        "tools": dumps_str(tools) if tools else None,
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


def template_wants_object_arguments(tokenizer: Any) -> bool:
    """True when the chat template JSON-encodes tool-call arguments itself (e.g. `arguments | tojson`).

    OpenAI-form arguments are JSON *strings*; such templates (Qwen2.5, Llama 3.1) would render them
    as an escaped string, so they must get objects instead. Decided by rendering a probe call.
    """
    probe = [
        {"role": "user", "content": "x"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"type": "function", "id": "c0", "function": {"name": "f", "arguments": '{"k": 1}'}}],
        },
    ]
    try:
        text = tokenizer.apply_chat_template(probe, tokenize=False)
    except Exception:  # noqa: BLE001 - a template without tool support: nothing to adapt
        return False
    return '\\"k\\"' in str(text)


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
