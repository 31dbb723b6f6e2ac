"""The tasks file checked before collecting, and how many rollouts the collector should write."""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from gymverl.collect.errors import CollectError
from gymverl.collect.output import sidecar_paths
from gymverl.errors import EXIT_FAILED
from gymverl.jsonl import MAX_SHOWN, InputError, Rejections, Tally, check_input_path, iter_lines
from gymverl.records import agent_name, iter_checked


@dataclass
class TaskCheck(Rejections):
    """What a pass over the tasks file found: tasks to run, agents they need, rejected lines."""

    path: str
    lines: int = 0
    tasks: int = 0  # valid tasks among the first `limit` lines (what the collector will run)
    agents: Counter[str] = field(default_factory=Counter)
    missing_agent: list[int] = field(default_factory=list)
    rollout_lines: int = 0  # valid tasks that are rollouts themselves (`response` and `reward`: the wrong file?)
    rejects: Tally = field(default_factory=Tally)  # rejected lines: `rejected`, `rejected_by_code`, `rejections`


def check_tasks(
    path: str | os.PathLike[str], *, limit: int | None = None, agent: str | None = None, max_examples: int = MAX_SHOWN
) -> TaskCheck:
    """Stream the tasks file: every line must be a valid NeMo Gym task naming an agent (or `agent` given)."""
    try:
        p = check_input_path(path)
    except InputError as exc:
        raise CollectError(str(exc)) from None
    if p.suffix == ".gz":
        raise CollectError(f"{p}: NeMo Gym's collector reads plain JSONL; decompress it first (gunzip -k {p}).")
    result = TaskCheck(str(p), rejects=Tally(limit=max_examples))
    # NeMo Gym's collector parses every line, blank ones too: here a blank line is a rejected task.
    for c in iter_checked(iter_lines(p, skip_blank=False), tasks=True):
        result.lines += 1
        if c.record is None:
            result.rejects.add(c.code or "unknown", {"line": c.line, "code": c.code, "reason": c.reason})
            continue
        if limit is not None and c.line > limit:
            continue  # checked, but the collector will not run it
        name = agent_name(c.record) or agent
        if name is None:
            result.missing_agent.append(c.line)
            continue
        result.tasks += 1
        result.agents[name] += 1
        if "response" in c.record and "reward" in c.record:
            result.rollout_lines += 1
    if result.rejected:
        first = result.rejections[0]
        raise CollectError(
            f"{p}: {result.rejected} of {result.lines} lines are not valid NeMo Gym tasks "
            f"(line {first['line']}: {first['reason']}); fix them before collecting.",
            code=EXIT_FAILED,
            details=result.rejections,
        )
    if result.missing_agent:
        lines = ", ".join(map(str, result.missing_agent[:10])) + (" …" if len(result.missing_agent) > 10 else "")
        which = f"line {lines} names" if len(result.missing_agent) == 1 else f"lines {lines} name"
        raise CollectError(f"{p}: {which} no agent (`agent_ref`); pass --agent NAME.")
    if result.lines == 0:
        raise CollectError(f"{p}: file is empty (no tasks).")
    return result


def expected_rollouts(tasks: TaskCheck, num_samples: int, output: Path, resume: bool) -> int:
    """How many rollouts the collector should write in total (resume: what its materialized inputs list)."""
    mat = sidecar_paths(output)["materialized_inputs"]
    if resume and mat.exists() and output.exists():
        with open(mat, "rb") as f:
            return sum(1 for line in f if line.strip())
    return tasks.tasks * num_samples
