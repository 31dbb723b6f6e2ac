"""Preference pairs (DPO and reward-model data): per task, a better and a worse rollout of the same prompt.

Rows are in the *conversational preference* form that TRL's `DPOTrainer` and OpenRLHF read
(`trl.data_utils.is_conversational` is true for them): `prompt` (the task input as chat messages),
`chosen` and `rejected` (the two responses as assistant/tool messages, tool calls included) are
message lists, and `tools` is the task's chat-form tool schemas as a JSON string (TRL's DPOTrainer
`json.loads` a string `tools` cell) or null. Also `chosen_reward`, `rejected_reward`, `margin`,
`data_source`, `extra_info` {split, index, task_key, chosen_line, rejected_line}.

Encoding of the message lists: Arrow `list<arrow.json>`, one JSON text per message, which the
`datasets` library reads as `List(Json())` (it maps Arrow's canonical JSON extension type to its
`Json()` feature; tested with datasets 5.2.0 and trl 1.16.0), so `load_dataset("parquet", ...)`
hands TRL lists of plain dicts. A `datasets` without the `Json()` feature may refuse the type:
read such files with pyarrow and `gymverl.verl_data.decode_row` instead.
Not a `list<struct>`: Arrow would merge the message structs of all rows into one type, and every
message would read back with the keys only other messages have (`tool_calls: null`,
`tool_call_id: null`, `reasoning_content: null`), which some chat templates test with
`'tool_calls' in message` and then render wrongly (the null-key trap, see `gymverl.formats`).
A JSON text per message keeps each message exactly as written, and the list stays a real list
for readers that do not know the extension type (pandas/pyarrow see a list of JSON strings;
`gymverl.verl_data.decode_row` decodes either form).

gymverl 0.1.0 wrote these three columns as one JSON string each, which every trainer read as plain text.
Rollouts whose prompt or response has images (`input_image` parts) are rejected
(`images_not_supported`): no preference encoding for images is written yet.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from gymverl.formats import RowError, json_cell
from gymverl.formats.sft import arguments_as_objects, no_prompt_reason, task_tools
from gymverl.records import starts_without_prompt
from gymverl.messages import MessageError, chat_tools, rollout_parts

# One JSON text per chat message (see the module docstring).
MESSAGES = pa.list_(pa.json_(pa.string()))

SCHEMA = pa.schema(
    [
        pa.field("prompt", MESSAGES, nullable=False),
        pa.field("chosen", MESSAGES, nullable=False),
        pa.field("rejected", MESSAGES, nullable=False),
        pa.field("tools", pa.string()),
        pa.field("chosen_reward", pa.float64()),
        pa.field("rejected_reward", pa.float64()),
        pa.field("margin", pa.float64()),
        pa.field("data_source", pa.string()),
        pa.field(
            "extra_info",
            pa.struct(
                [
                    pa.field("split", pa.string()),
                    pa.field("index", pa.int64()),
                    pa.field("task_key", pa.string()),
                    pa.field("chosen_line", pa.int64()),
                    pa.field("rejected_line", pa.int64()),
                ]
            ),
        ),
    ]
)


def encode_messages(messages: list[dict[str, Any]]) -> list[bytes]:
    """A message list as the cell value of a `MESSAGES` column: one compact JSON text per message."""
    return [json_cell(m) for m in messages]


def dpo_side(record: dict[str, Any], *, include_reasoning: bool = False, object_arguments: bool = False) -> dict[str, Any]:
    """The parts of one rollout a pair needs: `prompt` and `response` (encoded message lists) and
    `tools` (JSON text, `json_cell`, or None). RowError when the rollout cannot be one side of a pair.

    `object_arguments`: tool-call arguments that are JSON objects are written as objects, not as
    the model's JSON text. A DPO trainer renders rows with the model's own chat template, and
    templates that JSON-encode arguments (`arguments | tojson`: Qwen2.5, Llama 3.1) or iterate them
    (`arguments | items`: Qwen3-Coder, Gemma) need objects; templates that print them as they are
    need strings (`gymverl.formats.sft.tool_arguments_form` tells which).
    """
    try:
        # images=None: an image is refused (images_not_supported), never dropped.
        prompt, response = rollout_parts(record, include_reasoning=include_reasoning)  # aviary transitions too
        tools = chat_tools(task_tools(record))
    except MessageError as exc:
        raise RowError(exc.code, f"cannot convert to chat messages: {exc}") from None
    if not response:
        raise RowError("no_assistant_turn", "the response is empty")
    if not prompt or prompt[0]["role"] in ("assistant", "tool") or starts_without_prompt(record):
        raise RowError("no_prompt", no_prompt_reason(record, blank=bool(prompt) and prompt[0]["role"] not in ("assistant", "tool")))
    if object_arguments:
        prompt, response = arguments_as_objects(prompt), arguments_as_objects(response)
    return {"prompt": encode_messages(prompt), "response": encode_messages(response), "tools": json_cell(tools) if tools else None}


def dpo_row(
    chosen: dict[str, Any],
    rejected: dict[str, Any],
    *,
    chosen_reward: float,
    rejected_reward: float,
    data_source: str,
    task_key: str,
    chosen_line: int,
    rejected_line: int,
) -> dict[str, Any]:
    """One preference pair from two `dpo_side` parts of the same task (split/index filled in by the writer)."""
    return {
        "prompt": chosen["prompt"],
        "chosen": chosen["response"],
        "rejected": rejected["response"],
        "tools": chosen["tools"],
        "chosen_reward": chosen_reward,
        "rejected_reward": rejected_reward,
        "margin": chosen_reward - rejected_reward,
        "data_source": data_source,
        "extra_info": {
            "split": None,
            "index": None,
            "task_key": task_key,
            "chosen_line": chosen_line,
            "rejected_line": rejected_line,
        },
    }
