"""Preference pairs (DPO and reward-model data): per task, a better and a worse rollout of the same prompt.

Columns: `prompt` (chat messages of the task input), `chosen` and `rejected` (the two responses as
chat messages, tool calls included), `tools` (chat-form tool schemas or null), all JSON strings
for the same reason as SFT (no Arrow null-key pollution); `chosen_reward`, `rejected_reward`,
`margin`, `data_source`, `extra_info` {split, index, task_key, chosen_line, rejected_line}.
`gymverl.verl_data.decode_row` turns a row back into Python lists.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from gymverl.formats import RowError, dumps_str
from gymverl.formats.sft import no_prompt_reason, task_tools
from gymverl.messages import MessageError, chat_tools, rollout_parts

SCHEMA = pa.schema(
    [
        pa.field("prompt", pa.string(), nullable=False),
        pa.field("chosen", pa.string(), nullable=False),
        pa.field("rejected", pa.string(), nullable=False),
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


def dpo_side(record: dict[str, Any], *, include_reasoning: bool = False) -> dict[str, Any]:
    """The parts of one rollout a pair needs: prompt, response messages and tools (JSON strings)."""
    try:
        prompt, response = rollout_parts(record, include_reasoning=include_reasoning)  # aviary transitions too
        tools = chat_tools(task_tools(record))
    except MessageError as exc:
        raise RowError("bad_messages", f"cannot convert to chat messages: {exc}") from None
    if not response:
        raise RowError("no_assistant_turn", "the response is empty")
    if not prompt or prompt[0]["role"] in ("assistant", "tool"):
        raise RowError("no_prompt", no_prompt_reason(record))
    return {"prompt": dumps_str(prompt), "response": dumps_str(response), "tools": dumps_str(tools) if tools else None}


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
