"""NeMo Gym 0.7.0's post-collection health check, read from the files it writes beside the output."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import orjson


QUALITY_SUMMARY = "quality_summary.json"  # nemo_gym/health/types.py (0.7.0)
ROLLOUT_VERDICTS = "rollout_verdicts.jsonl"


def quality_report(output: str | os.PathLike[str], since: float | None = None) -> dict[str, Any] | None:
    """What NeMo Gym's post-collection health check (0.7.0's collector) wrote beside `output`.

    The collector writes `quality_summary.json` and `rollout_verdicts.jsonl` into the output's
    folder (not per output name); a file older than `since` (a `time.time()`) is an earlier run's
    and ignored. Returns None when there is none, else: `summary`/`verdicts` (paths), `rollouts`
    checked, `healthy`/`unhealthy`/`unobserved` counts, `issues` ({check id: count}, nonzero only),
    `flagged_tasks` (tasks with a task-level flag), `model_call_errors`, and `unhealthy_examples`
    (up to 5 `(task, rollout, [check, ...])` from the verdicts file). An unreadable summary gives
    `{"summary": path, "error": reason}`: it is reported, never a reason to fail the collection.
    """
    folder = Path(output).parent
    summary_path, verdicts_path = folder / QUALITY_SUMMARY, folder / ROLLOUT_VERDICTS
    try:
        st = summary_path.stat()
    except OSError:
        return None
    if since is not None and st.st_mtime < since - 1:
        return None
    rep: dict[str, Any] = {"summary": str(summary_path), "verdicts": str(verdicts_path) if verdicts_path.exists() else None}
    try:
        data = orjson.loads(summary_path.read_bytes())
        run = data["run"]
        verdicts = run.get("verdicts") or {}
        rep.update(
            rollouts=int(sum(v for v in verdicts.values() if isinstance(v, int))),
            healthy=int(verdicts.get("healthy", 0)),
            unhealthy=int(verdicts.get("unhealthy", 0)),
            unobserved=int(verdicts.get("unobserved", 0)),
            issues={k: v for k, v in (run.get("issues") or {}).items() if v},
            flagged_tasks=sum(1 for t in (data.get("tasks") or {}).values() if isinstance(t, dict) and t.get("flags")),
            model_call_errors=int(((run.get("stats") or {}).get("model_call_errors") or {}).get("total", 0)),
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        return {"summary": str(summary_path), "error": f"cannot read it ({exc})"}
    examples: list[dict[str, Any]] = []
    if rep["verdicts"] and rep["unhealthy"]:
        with contextlib.suppress(OSError):
            with open(verdicts_path, "rb") as f:
                for raw in f:
                    try:
                        row = orjson.loads(raw)
                    except orjson.JSONDecodeError:
                        continue
                    if isinstance(row, dict) and row.get("verdict") == "unhealthy":
                        checks = [x.get("check") for x in row.get("findings") or [] if isinstance(x, dict)]
                        examples.append({"task": row.get("_ng_task_index"), "rollout": row.get("_ng_rollout_index"), "checks": checks})
                        if len(examples) == 5:
                            break
    rep["unhealthy_examples"] = examples
    return rep


def quality_sentence(rep: dict[str, Any] | None) -> str | None:
    """One line for `quality_report`'s result, e.g. "NeMo Gym health check: 20 rollouts, 18 healthy, ..."."""
    if rep is None:
        return None
    if "error" in rep:
        return f"NeMo Gym's health check summary {rep['summary']}: {rep['error']}"
    issues = ", ".join(f"{k} {v}" for k, v in sorted(rep["issues"].items(), key=lambda kv: -kv[1]))
    return (
        f"NeMo Gym health check: {rep['rollouts']} rollouts, {rep['healthy']} healthy, {rep['unhealthy']} unhealthy, "
        f"{rep['unobserved']} unobserved" + (f" ({issues})" if issues else "")
        + (f"; {rep['flagged_tasks']} tasks flagged" if rep["flagged_tasks"] else "")
        + f"; see {rep['summary']}"
    )
