"""stats/validate on NeMo Gym 0.7 files: masks, NeMo Gym's formulas, repeated rollouts, shards, side files (issue 11)."""

from __future__ import annotations

import json
import math
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from conftest import SAMPLE_DATA, SHARED
from gymverl.cli import app
from gymverl.stats import compute_stats
from ng07_data import TASKS, collection, materialized, rollout, task_row, write_jsonl

runner = CliRunner()
CASES = SHARED / "cases"


def _case(name: str) -> Path:
    d = CASES / name
    if not d.is_dir():
        pytest.skip(f"{d} not present (the shared cases live beside the repo)")
    return d


def _records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _profile_reference(records: list[dict[str, Any]]) -> dict[str, Any]:
    """NeMo Gym 0.7.0's numbers for one agent, written from its source (nemo_gym/reward_profile.py):
    `select_measured` drops masked rollouts; `describe_dataframe` gives mean and sample std (pandas
    ddof=1, a single value -> 0); `compute_pass_majority_metrics` gives binary pass@k per task over
    the tasks with at least k rollouts (as fractions here; NeMo Gym prints percentages)."""
    measured = [r for r in records if not r.get("mask_sample")]
    rewards = [float(r["reward"]) for r in measured]
    by_task: dict[int, list[float]] = defaultdict(list)
    for r in measured:
        by_task[r["_ng_task_index"]].append(float(r["reward"]))
    max_k = max(len(v) for v in by_task.values())
    pass_at = {}
    for k in range(1, max_k + 1):
        vals = []
        for v in by_task.values():
            if k > len(v):
                continue
            wrong = sum(1 for x in v if not x)
            vals.append(1.0 if wrong < k else 1.0 - math.comb(wrong, k) / math.comb(len(v), k))
        pass_at[k] = sum(vals) / len(vals)
    return {
        "mean": statistics.fmean(rewards),
        "std": statistics.stdev(rewards) if len(rewards) > 1 else 0.0,
        "pass_at_k": pass_at,
        "task_mean": {t: statistics.fmean(v) for t, v in by_task.items()},
        "task_std": {t: statistics.stdev(v) if len(v) > 1 else 0.0 for t, v in by_task.items()},
        "masked": len(records) - len(measured),
        "fully_masked_tasks": len({r["_ng_task_index"] for r in records} - set(by_task)),
    }


def _sample_with_masks(tmp_path: Path) -> Path:
    recs = _records(SAMPLE_DATA / "rollouts.jsonl")
    for r in recs:  # one agent, so the overall numbers are the agent's
        r["agent_ref"] = {"type": "responses_api_agents", "name": "math_with_judge_simple_agent"}
    # judge failures: reward 0.0 with mask_sample, as 0.7.0's fail-safe writes them
    for i in (0, 5, 6, 12, 13, 14, 15):
        recs[i].update(reward=0.0, mask_sample=True, failure_kind="judge_failed")
    return write_jsonl(tmp_path / "masked.jsonl", recs)


def test_stats_agree_with_gym_eval_profile_on_means_std_pass_at_k_and_masked_rows(tmp_path: Path) -> None:
    path = _sample_with_masks(tmp_path)
    recs = _records(path)
    ref = _profile_reference(recs)
    s = compute_stats(path)
    o = s.to_dict()["overall"]
    assert o["reward"]["mean"] == pytest.approx(ref["mean"])
    assert o["reward"]["std"] == pytest.approx(ref["std"])
    got = {row["k"]: row["pass_at_k"] for row in o["pass_at_k"]}
    assert got == {k: pytest.approx(v) for k, v in ref["pass_at_k"].items() if k in got}
    assert o["masked"] == ref["masked"] == 7 and o["rollouts"] == 13
    assert o["tasks_fully_masked"] == ref["fully_masked_tasks"] == 1 and o["tasks"] == 4
    by_key = {int(t["task"].split("#")[1]): t for t in s.per_task()}
    for t, mean in ref["task_mean"].items():
        assert by_key[t]["mean_reward"] == pytest.approx(mean)
        assert by_key[t]["std_reward"] == pytest.approx(ref["task_std"][t])
    assert by_key[3]["n"] == 0 and by_key[3]["masked"] == 4 and by_key[3]["pass_rate"] is None


def test_stats_cli_reports_masked_rows_separately(tmp_path: Path) -> None:
    path = _sample_with_masks(tmp_path)
    res = runner.invoke(app, ["stats", str(path)])
    assert res.exit_code == 0 and "masked (left out)" in res.stdout
    assert "7 masked rollouts" in res.stderr


def test_a_rollout_written_twice_is_reported_and_counted_once(tmp_path: Path) -> None:
    src = collection(tmp_path, side=False)
    once = compute_stats(src).to_dict()
    lines = src.read_text().splitlines()
    src.write_text("\n".join(lines + lines[:2]) + "\n")
    twice = compute_stats(src).to_dict()
    assert twice["repeated"] == 2 and any("counted once" in w for w in twice["warnings"])
    for k in ("rollouts", "correct", "pass_rate", "pass_at_k", "tasks"):
        assert twice["overall"][k] == once["overall"][k]


def test_concatenated_collections_keep_their_tasks_apart(tmp_path: Path) -> None:
    # Collection a: task 0 solved 0/2. Collection b, numbered from 0 too, another prompt: 2/2.
    a = [rollout("Question A", 0, r, 0.0) for r in range(2)]
    b = [rollout("Question B", 0, r, 1.0) for r in range(2)]
    path = write_jsonl(tmp_path / "both.jsonl", a + b)
    d = compute_stats(path).to_dict()
    o = d["overall"]
    assert o["tasks"] == 2 and o["rollouts"] == 4 and d["repeated"] == 0
    # Merged, this would be one task with 2 of 4 correct: pass@2 = 5/6. Apart: (0 + 1) / 2.
    assert {r["k"]: r["pass_at_k"] for r in o["pass_at_k"]} == {1: 0.5, 2: 0.5}
    assert (o["tasks_all_solved"], o["tasks_all_failed"]) == (1, 1)
    assert len({t["task"] for t in d["per_task"]}) == 2 and all("@" in t["task"] for t in d["per_task"])
    assert any("more than one prompt" in w for w in d["warnings"])


def _partial_collection(tmp_path: Path) -> Path:
    src = collection(tmp_path, repeats=2)
    recs = _records(src)
    # Task 2 never finished; task 1 repeat 0 failed first and succeeded on --resume.
    keep = [r for r in recs if r["_ng_task_index"] != 2]
    write_jsonl(src, keep)
    fail = {"_ng_failure_class": "agent_run_error", "_ng_failure_message": "boom", "agent_ref": TASKS[0]["agent_ref"]}
    write_jsonl(
        tmp_path / "r_failures.jsonl",
        [
            {**fail, "_ng_task_index": 1, "_ng_rollout_index": 0},
            {**fail, "_ng_task_index": 2, "_ng_rollout_index": 0},
            {**fail, "_ng_task_index": 2, "_ng_rollout_index": 0},  # a second attempt, failed again
        ],
    )
    return src


def test_stats_and_validate_report_failed_and_missing_rollouts_per_task(tmp_path: Path) -> None:
    src = _partial_collection(tmp_path)
    col = compute_stats(src).to_dict()["collection"]
    assert (col["expected"], col["present"], col["failed"], col["missing"]) == (6, 4, 1, 1)
    assert col["failures"]["superseded_rollouts"] == 1 and col["failures"]["attempts"] == 3
    assert col["tasks_without_rollouts"] == 1
    assert col["incomplete_tasks"] == [{"task_index": 2, "expected": 2, "present": 0, "failed": 1, "missing": 1}]
    for cmd in (["stats"], ["validate"]):
        res = runner.invoke(app, [*cmd, str(src), "--json"])
        assert res.exit_code == 0
        d = json.loads(res.stdout)
        assert d["collection"]["failed"] == 1 and any("partial collection" in w for w in d["warnings"])
        res = runner.invoke(app, [*cmd, str(src)])
        assert "tasks without rollouts" in res.stdout and "partial collection: 4 rollouts present of 6 expected" in res.stderr


def test_a_complete_collection_has_no_partial_warning(tmp_path: Path) -> None:
    src = collection(tmp_path)
    d = compute_stats(src).to_dict()
    assert d["collection"]["complete"] and d["warnings"] == []


def test_group_by_a_task_field_the_rollout_lines_lack(tmp_path: Path) -> None:
    tasks = [task_row("q one", category="easy"), task_row("q two", category="hard")]
    write_jsonl(tmp_path / "r_materialized_inputs.jsonl", [materialized(t, i, 0) for i, t in enumerate(tasks)])
    src = write_jsonl(tmp_path / "r.jsonl", [rollout("q one", 0, 0, 1.0), rollout("q two", 1, 0, 0.0)])
    d = compute_stats(src, group_by="category").to_dict()
    assert {g["name"]: g["pass_rate"] for g in d["groups"]} == {"easy": 1.0, "hard": 0.0}
    alone = tmp_path / "alone"
    alone.mkdir()
    (alone / "r.jsonl").write_bytes(src.read_bytes())
    res = runner.invoke(app, ["stats", str(alone / "r.jsonl"), "--group-by", "category", "--tasks", str(tmp_path / "r_materialized_inputs.jsonl"), "--json"])
    assert res.exit_code == 0 and {g["name"] for g in json.loads(res.stdout)["groups"]} == {"easy", "hard"}


# ---- real 0.7.0 files --------------------------------------------------------------------------


def test_real_partial_collection_is_reported(tmp_path: Path) -> None:
    src = _case("ng07-06-failures-sidecar-ignored") / "r.jsonl"
    col = compute_stats(src).to_dict()["collection"]
    assert (col["expected"], col["present"], col["failed"], col["missing"], col["tasks_without_rollouts"]) == (20, 9, 11, 0, 2)
    res = runner.invoke(app, ["validate", str(src), "--json"])
    assert json.loads(res.stdout)["collection"]["failed"] == 11


def test_real_failures_retried_by_resume_are_history(tmp_path: Path) -> None:
    src = _case("ng07-02-failures-counted-after-resume") / "r.jsonl"
    d = compute_stats(src).to_dict()
    col = d["collection"]
    assert col["complete"] and col["failed"] == 0 and col["failures"]["superseded_rollouts"] == 11
    assert d["warnings"] == []
