"""Small inputs in the NeMo Gym 0.7 format (rollouts + side files), for tests that must not need ../shared."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

AGENT = {"type": "responses_api_agents", "name": "xlam_fc_simple_agent"}
MATH = {"type": "responses_api_agents", "name": "math_with_judge_simple_agent"}


def task_row(prompt: str, agent: dict[str, Any] = AGENT, **fields: Any) -> dict[str, Any]:
    """A task row as written in a tasks file (prompt as the user wrote it)."""
    return {"responses_create_params": {"input": [{"role": "user", "content": prompt}]}, **fields, "agent_ref": agent}


def rollout(
    prompt: str,
    t: int,
    r: int,
    reward: float,
    *,
    agent: dict[str, Any] = AGENT,
    answer: str = "ok",
    masked: bool = False,
    **echoed: Any,
) -> dict[str, Any]:
    """A 0.7.0 rollout line: the prompt through the request model, bookkeeping keys, only echoed task fields."""
    return {
        "responses_create_params": {
            "background": None,
            "input": [{"content": prompt, "role": "user", "type": "message", "phase": None}],
            "instructions": None,
            "parallel_tool_calls": True,
            "tool_choice": "auto",
            "tools": [],
        },
        "response": {
            "id": f"resp_{t}_{r}",
            "output": [{"id": "m", "type": "message", "role": "assistant", "status": "completed", "content": [{"type": "output_text", "text": answer}]}],
            "status": "completed",
        },
        "reward": reward,
        "mask_sample": masked,
        "failure_kind": "judge_failed" if masked else None,
        "failure_reason": None,
        **echoed,
        "_ng_task_index": t,
        "_ng_rollout_index": r,
        "agent_ref": agent,
        "_ng_environment_server": agent["name"].replace("_simple_agent", "_environment_server"),
        "_ng_result_type": "legacy_agent",
    }


def materialized(task: dict[str, Any], t: int, r: int) -> dict[str, Any]:
    return {**task, "_ng_task_index": t, "_ng_rollout_index": r}


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# Two tasks with the SAME prompt and different ground truth (as in ng07-07), and a third one.
SAME = "What is the weather in the capital?"
TASKS = [
    task_row(SAME, expected_answers=[{"name": "get_weather", "arguments": {"city": "Paris"}}]),
    task_row(SAME, expected_answers=[{"name": "get_weather", "arguments": {"city": "London"}}]),
    task_row("Solve: 2+2", MATH, question="2+2", expected_answer="4"),
]


def collection(d: Path, *, repeats: int = 2, stem: str = "r", masked: set[tuple[int, int]] = frozenset(), side: bool = True) -> Path:
    """A complete 0.7-format collection in `d`: `<stem>.jsonl`, its materialized inputs, tasks.jsonl.

    Rollout lines are in completion order (task 2 first, repeats reversed); like 0.7.0, xlam lines
    keep no task field and math lines only `expected_answer`.
    """
    d.mkdir(parents=True, exist_ok=True)
    write_jsonl(d / "tasks.jsonl", TASKS)
    lines = []
    for t in (2, 1, 0):
        for r in reversed(range(repeats)):
            task = TASKS[t]
            prompt = task["responses_create_params"]["input"][0]["content"]
            echoed = {"expected_answer": task["expected_answer"]} if "expected_answer" in task else {}
            lines.append(rollout(prompt, t, r, float(r % 2 == 0), agent=task["agent_ref"], masked=(t, r) in masked, **echoed))
    out = write_jsonl(d / f"{stem}.jsonl", lines)
    if side:
        write_jsonl(d / f"{stem}_materialized_inputs.jsonl", [materialized(TASKS[t], t, r) for t in range(3) for r in range(repeats)])
    return out
