"""`gymverl collect` end to end on loopback, against real NeMo Gym: its head server, resources servers
(math_with_judge with math-verify, xlam_fc), simple agents and `openai_model` model server, the
last pointed at our scripted policy (tests/policy_server.py). Rewards come from the real verifiers."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import defaultdict
from pathlib import Path

import psutil
import pytest
from typer.testing import CliRunner

from gymverl.cli import app
from gymverl.nemo_gym import NemoGymServers

from conftest import marked_processes, REPO, SAMPLE_DATA
from policy_server import SAMPLE_REWARDS, PolicyServer, ScriptedPolicy

pytestmark = [pytest.mark.nemo_gym, pytest.mark.slow]
TASKS = SAMPLE_DATA / "tasks.jsonl"
runner = CliRunner()
CONFIGS = [
    "resources_servers/math_with_judge/configs/math_with_judge.yaml",
    "resources_servers/xlam_fc/configs/xlam_fc.yaml",
    "responses_api_models/openai_model/configs/openai_model.yaml",
]


@pytest.fixture(scope="module")
def policy():
    with PolicyServer(ScriptedPolicy()) as ps:
        yield ps


@pytest.fixture(scope="module")
def stack(policy: PolicyServer, nemo_gym_env: Path, tmp_path_factory: pytest.TempPathFactory):
    """NeMo Gym servers (started once for this module) whose model server is the scripted policy."""
    log = tmp_path_factory.mktemp("ng") / "ng_run.log"
    with NemoGymServers(CONFIGS, env=nemo_gym_env, policy_base_url=policy.base_url, log_path=log) as servers:
        yield f"http://127.0.0.1:{servers.head_port}"


@pytest.fixture(autouse=True)
def _reset_policy(policy: PolicyServer):
    policy.policy.fail_after, policy.policy.delay = None, 0.0
    policy.policy.counts.clear()  # each test starts at the first scripted answer of every prompt
    yield
    policy.policy.fail_after, policy.policy.delay = None, 0.0


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _rewards_by_task(rows: list[dict]) -> dict[int, list[float]]:
    by = defaultdict(list)
    for r in rows:
        by[r["_ng_task_index"]].append(r["reward"])
    return {t: sorted(v) for t, v in sorted(by.items())}


def _run_json(*args: str):
    res = runner.invoke(app, ["collect", *args, "--json"])
    assert "Traceback" not in res.output
    return res, json.loads(res.stdout)


def test_four_validated_rollouts_per_task_with_real_rewards(stack: str, policy: PolicyServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "rollouts.jsonl"
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    res, data = _run_json("-i", str(TASKS), "-o", str(out), "--num-samples", "4", "--concurrency", "4", "--head-url", stack)
    assert res.exit_code == 0, res.output
    # NeMo Gym's collector is a Hydra app: it wrote outputs/<date>/<time>/ into the working directory.
    # It now writes into a scratch directory beside the output, removed when the collector is done.
    assert list(cwd.iterdir()) == []
    assert not [p for p in tmp_path.iterdir() if p.name == "outputs" or p.name.startswith(".gymverl-")], list(tmp_path.iterdir())
    # Preflight found every server each agent uses in NeMo Gym's own config, down to the policy URL.
    assert {"math_with_judge_simple_agent", "xlam_fc_simple_agent", "math_with_judge", "xlam_fc", "policy_model"} < set(data["servers"])
    assert data["servers"]["policy_model upstream"] == policy.base_url
    assert data["ok"] and data["expected_rollouts"] == 20 and data["written"] == 20
    v = data["validation"]
    assert (v["valid"], v["rejected"], v["tasks"]) == (20, 0, 5)
    assert v["rollouts_per_task"]["distribution"] == {"4": 5}
    rows = _rows(out)
    # Each task got each of its 4 scripted answers once; the rewards are math-verify's and xlam_fc's.
    assert _rewards_by_task(rows) == {t: sorted(r) for t, r in enumerate(SAMPLE_REWARDS)}
    assert sorted((r["_ng_task_index"], r["_ng_rollout_index"]) for r in rows) == [(t, i) for t in range(5) for i in range(4)]
    math_rows = [r for r in rows if r["_ng_task_index"] < 3]
    assert all("extracted_answer" in r for r in math_rows)  # written by the math_with_judge verifier
    assert {r["extracted_answer"] for r in math_rows if r["_ng_task_index"] == 0} == {"56"}
    fc = [r for r in rows if r["_ng_task_index"] == 3]
    assert all([o["type"] for o in r["response"]["output"]] == ["function_call", "function_call_output", "message"] for r in fc)
    assert v["incomplete"] == 1  # the scripted truncated answer
    # The output passes `gymverl validate` on its own too.
    assert runner.invoke(app, ["validate", str(out)]).exit_code == 0


def test_limit_and_no_silent_overwrite(stack: str, tmp_path: Path) -> None:
    out = tmp_path / "r.jsonl"
    res, data = _run_json("-i", str(TASKS), "-o", str(out), "-n", "2", "--limit", "2", "--head-url", stack)
    assert res.exit_code == 0 and data["validation"]["valid"] == 4 and data["validation"]["tasks"] == 2
    before = out.read_bytes()
    res = runner.invoke(app, ["collect", "-i", str(TASKS), "-o", str(out), "--head-url", stack])
    assert res.exit_code == 2 and "already exists" in res.output and out.read_bytes() == before
    res, data = _run_json("-i", str(TASKS), "-o", str(out), "-n", "1", "--limit", "1", "--overwrite", "--head-url", stack)
    assert res.exit_code == 0 and data["validation"]["valid"] == 1


def test_agent_not_running_names_its_config(stack: str, tmp_path: Path) -> None:
    row = json.loads(TASKS.read_text().splitlines()[0])
    row["agent_ref"] = {"type": "responses_api_agents", "name": "mcqa_simple_agent"}
    tasks = tmp_path / "t.jsonl"
    tasks.write_text(json.dumps(row) + "\n")
    res = runner.invoke(app, ["collect", "-i", str(tasks), "-o", str(tmp_path / "o.jsonl"), "--head-url", stack])
    assert res.exit_code == 2, res.output
    text = " ".join(res.output.split())
    assert "agent 'mcqa_simple_agent' is not running" in text
    assert "math_with_judge_simple_agent, xlam_fc_simple_agent" in text and "resources_servers/mcqa/configs/mcqa.yaml" in text


def test_collector_crash_mid_run_keeps_and_reports_partial_output(stack: str, policy: PolicyServer, tmp_path: Path) -> None:
    out = tmp_path / "r.jsonl"
    # The model starts failing after a few answers: NeMo Gym's agent errors and its collector dies.
    policy.policy.fail_after = policy.policy.requests + 5
    res, data = _run_json("-i", str(TASKS), "-o", str(out), "-n", "4", "-c", "1", "--head-url", stack)
    assert res.exit_code == 1, res.output
    assert data["collector_exit_code"] not in (0, None) and not data["interrupted"]
    assert "NeMo Gym's collector failed" in data["message"] and "continue with --resume" in data["message"]
    kept = data["validation"]["valid"]
    assert 1 <= kept < 20 and data["validation"]["rejected"] == 0
    assert f"{kept} valid rollouts of 20 expected kept in {out}" in data["message"]
    assert len(_rows(out)) == kept
    # And --resume finishes the job once the model answers again, without redoing the kept rollouts.
    policy.policy.fail_after = None
    res, data = _run_json("-i", str(TASKS), "-o", str(out), "-n", "4", "--resume", "--head-url", stack)
    assert res.exit_code == 0, res.output
    rows = _rows(out)
    assert len(rows) == 20 and _rewards_by_task(rows).keys() == set(range(5))
    assert len({(r["_ng_task_index"], r["_ng_rollout_index"]) for r in rows}) == 20


def test_ctrl_c_stops_the_collector_and_keeps_partial_output(stack: str, policy: PolicyServer, tmp_path: Path) -> None:
    out = tmp_path / "r.jsonl"
    policy.policy.delay = 0.4
    cmd = [sys.executable, "-m", "gymverl.cli", "collect", "-i", str(TASKS), "-o", str(out), "-n", "4", "-c", "1", "--head-url", stack]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and (not out.exists() or len(out.read_text().splitlines()) < 2):
            time.sleep(0.2)
        assert out.exists(), "collector wrote nothing"
        children = psutil.Process(proc.pid).children(recursive=True)
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, output
    assert "interrupted" in output and "--resume" in output and "Traceback" not in output
    assert children and not any(c.is_running() and c.status() != psutil.STATUS_ZOMBIE for c in children)
    kept = _rows(out)
    assert 2 <= len(kept) < 20


def _marked(mark: str) -> list[str]:
    """Live processes that inherited GYMVERL_E2E_MARK=mark (ng_run, its servers, Ray, the collector)."""
    return marked_processes("GYMVERL_E2E_MARK", mark)


def test_servers_option_starts_collects_and_stops_everything(
    policy: PolicyServer, tmp_path: Path, nemo_gym_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--servers` runs ng_run for the duration (no module stack needed) and leaves nothing behind."""
    mark = uuid.uuid4().hex
    monkeypatch.setenv("GYMVERL_E2E_MARK", mark)  # inherited by everything ng_run starts, Ray included
    out = tmp_path / "r.jsonl"
    seen: set[str] = set()
    done = threading.Event()

    def watch() -> None:
        while not done.wait(1.0):
            seen.update(name.split(" ", 1)[1] for name in _marked(mark))

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        res, data = _run_json(
            "-i", str(TASKS), "-o", str(out), "-n", "2", "--limit", "3",
            "--servers", "math_with_judge", "--policy-url", policy.base_url, "--nemo-gym-env", str(nemo_gym_env),
        )  # fmt: skip
    finally:
        done.set()
        watcher.join()
    assert res.exit_code == 0, res.output
    assert {"raylet", "gcs_server"} <= seen, seen  # the marker does reach Ray: the check below means something
    assert data["validation"]["valid"] == 6
    assert _rewards_by_task(_rows(out)) == {t: sorted(SAMPLE_REWARDS[t][:2]) for t in range(3)}
    assert (tmp_path / "r_servers.log").exists() and (tmp_path / "r_collect.log").exists()
    port = next(a.split("=", 1)[1] for a in data["argv"] if a.startswith("++head_server.port="))
    leftovers = [
        p.pid
        for p in psutil.process_iter(["cmdline"])
        if any(f"head_server.port={port}" in part for part in (p.info["cmdline"] or []))
    ]
    assert not leftovers, f"ng_run still running: {leftovers}"
    deadline = time.monotonic() + 20
    while _marked(mark) and time.monotonic() < deadline:
        time.sleep(0.5)  # Ray workers exit a moment after their raylet
    assert not _marked(mark), f"left running: {_marked(mark)}"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=["sigterm", "sighup"])
def test_signal_while_servers_start_stops_everything(tmp_path: Path, nemo_gym_env: Path, sig: int) -> None:
    """servers-leak-on-sigterm, for `collect --servers`: SIGTERM (a scheduler) or SIGHUP (a closed
    terminal) while ng_run starts: exit 130 and ng_run, Ray and the servers are all gone."""
    import os

    mark = uuid.uuid4().hex
    env = {**os.environ, "GYMVERL_E2E_MARK": mark, "PYTHONPATH": str(REPO)}
    # (--limit 3: the math tasks only, whose server --servers starts; xlam_fc's would be refused first)
    cmd = [sys.executable, "-m", "gymverl.cli", "collect", "-i", str(TASKS), "-o", str(tmp_path / "r.jsonl"), "--limit", "3",
           "--servers", "math_with_judge", "--policy-url", "http://127.0.0.1:9/v1", "--nemo-gym-env", str(nemo_gym_env)]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None and not any("raylet" in p for p in _marked(mark)):
            time.sleep(0.3)
        assert any("raylet" in p for p in _marked(mark)), "Ray did not start"
        proc.send_signal(sig)
        output = proc.communicate(timeout=90)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
    deadline = time.monotonic() + 15
    while _marked(mark) and time.monotonic() < deadline:
        time.sleep(0.5)
    left = _marked(mark)
    for entry in left:  # never leak into the next test
        with contextlib.suppress(psutil.NoSuchProcess):
            psutil.Process(int(entry.split()[0])).kill()
    assert proc.returncode == 130, output
    assert "Traceback" not in output
    assert not left, f"left running: {left}"
