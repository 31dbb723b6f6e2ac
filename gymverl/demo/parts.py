"""Adapters to the other gymverl parts the demo shows: rescore, parquet, and scoring rl rows as VeRL would."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from gymverl.demo.report import Unavailable


def _rescore_api() -> Callable[..., Any]:
    """gymverl.rescore.rescore_file, or Unavailable when that part is missing from this install."""
    try:
        from gymverl.rescore import rescore_file
    except ImportError as exc:
        raise Unavailable(f"gymverl.rescore is not available in this install ({exc})") from None
    return rescore_file


def _rescore(rollouts: Path, out: Path, failures: Path, urls: dict[str, str], tasks: Path | None) -> dict[str, Any]:
    """Rescore with gymverl.rescore, each agent's rows routed to its server (`NAME=URL`)."""
    rescore_file = _rescore_api()
    summary = rescore_file(
        rollouts,
        out,
        [f"{agent}={url}" for agent, url in urls.items()],
        failures=failures,
        tasks=tasks if tasks is not None and tasks.is_file() else None,
        # The sample's verifiers (math_with_judge's rule-based math-verify, xlam_fc's call
        # matching) keep no session state, but 0.7.0 declares them "unknown" at /reverify_mode,
        # which rescore refuses without force (as `gym eval reverify` does without ++force=true).
        force=True,
    )
    return summary.to_dict()


def _to_parquet(rollouts: Path, tasks: Path, out: Path, val_fraction: float) -> dict[str, dict[str, Any]]:
    """Write rl (every task) and sft (correct, complete rollouts) parquet with gymverl.convert."""
    try:
        from gymverl.convert import ConvertOptions, convert
        from gymverl.select import SelectOptions
    except ImportError as exc:
        raise Unavailable(f"gymverl's parquet converter (gymverl.convert) is not available in this install ({exc})") from None
    tasks_path = tasks if tasks.is_file() else None
    plans = {
        # one prompt per task, with the ground truth and what /verify needs in extra_info
        "rl": SelectOptions(val_fraction=val_fraction),
        # rejection sampling: only rollouts the verifier rewarded 1.0 become SFT conversations
        "sft": SelectOptions(min_reward=1.0, val_fraction=val_fraction),
    }
    done: dict[str, dict[str, Any]] = {}
    for fmt, sel in plans.items():
        summary = convert(rollouts, out / fmt, ConvertOptions(fmt=fmt, select=sel, tasks_path=tasks_path if fmt == "rl" else None)).to_dict()
        if summary["rejected"]:
            raise RuntimeError(f"{fmt}: {summary['rejected']} input lines rejected: {summary['rejections'][:3]}")
        files = summary["files"]
        done[fmt] = {
            "train_rows": summary["rows"].get("train", 0),
            "val_rows": summary["rows"].get("val", 0),
            "filtered": summary["filtered"],
            "files": [p for split in ("train", "val") for p in files.get(split, [])],
            "train": (files.get("train") or [None])[0],
            "val": (files.get("val") or [None])[0],
            "warnings": summary["warnings"],
        }
    return done


def reference_answer(ground_truth: str, tools: Any) -> str:
    """What a policy would answer to get reward 1.0 on a sample task: a tool call or a boxed answer."""
    if tools:
        calls = json.loads(ground_truth)
        return "\n".join(
            "<tool_call>\n" + json.dumps({"name": c["name"], "arguments": c["arguments"]}) + "\n</tool_call>" for c in calls
        )
    return f"The answer is \\boxed{{{ground_truth}}}."


NON_ANSWER = "I am not sure."


def _score_rl_rows(files: list[Path], urls: dict[str, str]) -> list[dict[str, Any]]:
    """Score every rl row's reference answer and a non-answer the way VeRL's reward loop would."""
    import asyncio

    import pyarrow.parquet as pq

    from gymverl.reward import compute_score, get_client

    rows = [row for f in files for row in pq.read_table(f).to_pylist()]
    servers = [f"{agent}={url}" for agent, url in urls.items()]

    async def score_all() -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        try:
            for row in rows:
                info = row["extra_info"]
                ng = json.loads(info["nemo_gym"]) if isinstance(info["nemo_gym"], str) else info["nemo_gym"]
                gt = row["reward_model"]["ground_truth"]
                answer = reference_answer(gt, (ng.get("responses_create_params") or {}).get("tools"))
                good, bad = await asyncio.gather(
                    compute_score(row["data_source"], answer, gt, info, server=servers),
                    compute_score(row["data_source"], NON_ANSWER, gt, info, server=servers),
                )
                out.append(
                    {
                        "data_source": row["data_source"],
                        "split": info.get("split"),
                        "index": info.get("index"),
                        "reference_answer": answer,
                        "reference_score": good["score"],
                        "non_answer_score": bad["score"],
                    }
                )
        finally:
            await get_client(server=servers).close()  # the pool belongs to this event loop
        return out

    return asyncio.run(score_all())
