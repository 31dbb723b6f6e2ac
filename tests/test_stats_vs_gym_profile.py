"""`gymverl stats` agrees with NeMo Gym's own `gym eval profile` (0.7.0) on the same real collection:
per-task and per-agent reward means and standard deviations (both the sample std, ddof 1)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import SHARED
from gymverl.stats import compute_stats

CASE = SHARED / "cases" / "ng07-02-failures-counted-after-resume"

pytestmark = pytest.mark.nemo_gym


@pytest.fixture
def gym_cli(nemo_gym_env: Path) -> Path:
    from gymverl.ng_setup import installed_nemo_gym_version

    version = installed_nemo_gym_version(nemo_gym_env)
    if not version or not version.startswith("0.7"):
        pytest.skip(f"`gym eval profile` is NeMo Gym >= 0.5; the venv under test has {version}")
    return nemo_gym_env / "bin" / "gym"


@pytest.mark.parametrize("masked", [0, 3], ids=["as-collected", "3-rows-masked"])
def test_stats_means_and_std_equal_gym_eval_profile(gym_cli: Path, tmp_path: Path, masked: int) -> None:
    """Also with rows marked `mask_sample: true` (a judge fail-safe's reward 0.0): both leave them out."""
    if not CASE.is_dir():
        pytest.skip(f"shared case not found: {CASE} (../shared is only beside the repo in CI and sessions)")
    for name in ("r_materialized_inputs.jsonl", "r_failures.jsonl"):
        shutil.copy(CASE / name, tmp_path / name)
    rows = [json.loads(x) for x in (CASE / "r.jsonl").read_text().splitlines() if x.strip()]
    for row in rows[:masked]:  # what NeMo Gym's judge fail-safe writes
        row.update(reward=0.0, mask_sample=True, failure_kind="judge_failed")
    (tmp_path / "r.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    # profile writes its results beside the rollouts: run it on the copy.
    subprocess.run(
        [str(gym_cli), "eval", "profile", "--inputs", "r_materialized_inputs.jsonl", "--rollouts", "r.jsonl"],
        cwd=tmp_path, check=True, capture_output=True, timeout=300,
    )
    per_task = {d["_ng_task_index"]: d for d in map(json.loads, (tmp_path / "r_reward_profiling.jsonl").read_text().splitlines())}
    per_agent = {a["agent_ref"]["name"]: a for a in json.loads((tmp_path / "r_agent_metrics.json").read_text())}

    ours = compute_stats(tmp_path / "r.jsonl").to_dict(per_task=True)
    assert ours["overall"]["masked"] == masked
    assert len(ours["per_task"]) == len(per_task) == 5
    for t in ours["per_task"]:
        ref = per_task[int(t["task"].rsplit("#", 1)[1])]
        assert t["mean_reward"] == pytest.approx(ref["mean/reward"])
        assert t["std_reward"] == pytest.approx(ref["std/reward"])
    groups = {g["name"]: g for g in ours["groups"]}
    assert set(groups) == set(per_agent)
    for name, ref in per_agent.items():
        assert groups[name]["reward"]["mean"] == pytest.approx(ref["mean/reward"])
        assert groups[name]["reward"]["std"] == pytest.approx(ref["std/reward"])
