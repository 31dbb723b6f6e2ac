"""`gymverl demo`: the whole pipeline on sample_data/ (end to end, slow), step reporting, cleanup."""

from __future__ import annotations

import json
import math
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from gymverl import demo as demo_mod
from gymverl.cli import app
from gymverl.demo import DemoOptions, PlainReporter, fresh_out_dir, run_demo

from conftest import REPO, SAMPLE_DATA

runner = CliRunner()


def _err(res) -> str:
    """stderr with rich's line wrapping undone."""
    return " ".join(res.stderr.split())
GYMVERL = [sys.executable, "-m", "gymverl.cli"]
QUICK = "rescore,stats,parquet,reward,train"  # --skip: validate only


def _sample_rows() -> list[dict]:
    return [json.loads(line) for line in (SAMPLE_DATA / "rollouts.jsonl").read_text().splitlines()]


def _statuses(report) -> dict[str, str]:
    return {s.name: s.status for s in report.steps}


def _rows(path: str | Path) -> int:
    return pq.ParquetFile(path).metadata.num_rows


class _Tracker:
    """Every process that descends from `pid` while it runs (ng_run, Ray, torchrun, ...)."""

    def __init__(self, pid: int) -> None:
        self.root = psutil.Process(pid)
        self.seen: dict[int, tuple[float, str]] = {}

    def poll(self) -> list[psutil.Process]:
        try:
            children = self.root.children(recursive=True)
        except psutil.NoSuchProcess:
            return []
        for c in children:
            with _quiet():
                self.seen.setdefault(c.pid, (c.create_time(), " ".join(c.cmdline())[:200]))
        return children

    def alive(self) -> list[str]:
        """Tracked processes still running (same pid *and* start time, not a zombie)."""
        left = []
        for pid, (created, cmd) in self.seen.items():
            try:
                p = psutil.Process(pid)
                if p.create_time() == created and p.status() != psutil.STATUS_ZOMBIE:
                    left.append(f"{pid} {cmd}")
            except psutil.NoSuchProcess:
                continue
        return left


class _quiet:
    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type, exc, tb) -> bool:
        return exc_type is not None and issubclass(exc_type, (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess))


def _wait_gone(tracker: _Tracker, timeout: float = 30.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = tracker.alive()
        if not left:
            return []
        time.sleep(0.5)
    return tracker.alive()


# ---- fast: no servers, no training --------------------------------------------------------------


def test_demo_without_servers_or_training(tmp_path: Path) -> None:
    lines: list[str] = []
    out = tmp_path / "out"
    report = run_demo(DemoOptions(out=out, skip=frozenset({"rescore", "train"})), PlainReporter(lines.append))
    assert _statuses(report) == {
        "servers": "skipped", "model": "skipped", "validate": "ok", "rescore": "skipped",
        "stats": "ok", "parquet": "ok", "preview": "skipped", "reward": "skipped", "train": "skipped",
    }
    assert report.ok
    # validate: every sample line is a valid rollout
    assert json.loads((out / "validate.json").read_text())["valid"] == 20
    # stats: computed on the original rollouts (no rescoring), hand-checked in test_stats.py
    stats = json.loads((out / "stats.json").read_text())["stats"]
    assert stats["overall"]["pass_rate"] == pytest.approx(0.55)
    assert (out / "stats.png").read_bytes()[:4] == b"\x89PNG"
    # parquet: rl has one row per task; sft one row per complete rollout with reward 1.0
    rows = _sample_rows()
    rl = report.step("parquet").details["rl"]
    sft = report.step("parquet").details["sft"]
    assert sum(_rows(p) for p in rl["files"]) == len({r["_ng_task_index"] for r in rows}) == 5
    correct = [r for r in rows if r["reward"] >= 1.0 and r["response"]["status"] == "completed"]
    assert sum(_rows(p) for p in sft["files"]) == len(correct) == 11
    assert sft["train_rows"] + sft["val_rows"] == 11
    # every step says what it did and where; the equivalent commands are printed
    text = "\n".join(lines)
    for expected in ("[3/9]", "same as: gymverl validate", "same as: gymverl to-parquet", "--format sft --min-reward 1.0"):
        assert expected in text
    assert "parquet/sft/train.parquet" in text
    saved = json.loads((out / "demo.json").read_text())
    assert saved["ok"] is True and [s["status"] for s in saved["steps"]] == [s.status for s in report.steps]


def test_printed_commands_paste_for_data_without_a_tasks_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--data with rollouts only: the steps use no tasks file, so the printed commands name none
    (they named a missing DATA/tasks.jsonl, and to-parquet refused it when pasted)."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "rollouts.jsonl").write_bytes((SAMPLE_DATA / "rollouts.jsonl").read_bytes())
    monkeypatch.chdir(tmp_path)
    lines: list[str] = []
    report = run_demo(DemoOptions(out=Path("out"), data=data, skip=frozenset({"rescore", "train"})), PlainReporter(lines.append))
    assert report.ok
    pasted = [_pasted(line, {}) for line in lines if "same as: " in line]
    assert [a[0] for a in pasted] == ["validate", "stats", "to-parquet", "to-parquet"]
    for args in pasted:
        assert "--tasks" not in args
        res = runner.invoke(app, args)
        assert res.exit_code == 0, (args, res.output[-1000:])


def test_demo_reports_a_missing_part_as_unavailable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # As if gymverl.rescore were not installed: the demo says so and starts no servers.
    monkeypatch.setitem(sys.modules, "gymverl.rescore", None)
    res = runner.invoke(
        app, ["demo", "--out", str(tmp_path / "out"), "--skip", "stats,parquet", "--skip", "train", "--json"]
    )
    assert res.exit_code == 1, res.output
    report = json.loads(res.stdout)
    steps = {s["name"]: s for s in report["steps"]}
    assert steps["servers"]["status"] == "unavailable" and steps["rescore"]["status"] == "unavailable"
    assert "gymverl.rescore is not available" in steps["rescore"]["summary"]
    assert steps["validate"]["status"] == "ok"
    assert not (tmp_path / "out" / "rescored.jsonl").exists()


def test_demo_without_nemo_gym_fails_that_step_and_goes_on(tmp_path: Path) -> None:
    report = run_demo(
        DemoOptions(out=tmp_path / "out", nemo_gym_env=tmp_path / "no-venv", skip=frozenset({"train"})),
        PlainReporter(lambda _line: None),
    )
    st = _statuses(report)
    assert st["servers"] == "failed" and "NeMo Gym not found" in report.step("servers").summary
    assert st["rescore"] == "skipped" and "needs the servers step" in report.step("rescore").summary
    assert st["validate"] == "ok" and st["stats"] == "ok" and st["parquet"] == "ok"
    assert st["reward"] == "skipped"
    assert not report.ok


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--skip", "validate"], "cannot skip validate"),
        (["--data", "/nonexistent/dir"], "sample rollouts not found"),
    ],
)
def test_demo_usage_errors(tmp_path: Path, args: list[str], message: str) -> None:
    res = runner.invoke(app, ["demo", "--out", str(tmp_path / "o"), *args])
    assert res.exit_code == 2
    assert message in _err(res) and "Traceback" not in res.output


def test_demo_out_dir_rules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "precious.txt").write_text("keep me")
    res = runner.invoke(app, ["demo", "--out", str(mine), "--skip", QUICK])
    assert res.exit_code == 2 and "not empty" in _err(res)
    res = runner.invoke(app, ["demo", "--out", str(mine), "--overwrite", "--skip", QUICK])
    assert res.exit_code == 2 and "refusing" in _err(res)
    assert (mine / "precious.txt").read_text() == "keep me"
    # a directory written by an earlier demo can be replaced
    old = tmp_path / "old"
    assert runner.invoke(app, ["demo", "--out", str(old), "--skip", QUICK]).exit_code == 0
    assert runner.invoke(app, ["demo", "--out", str(old), "--overwrite", "--skip", QUICK]).exit_code == 0
    # the default is a fresh folder in the working directory
    monkeypatch.chdir(tmp_path)
    assert fresh_out_dir() == Path("gymverl-demo-out")
    Path("gymverl-demo-out").mkdir()
    assert fresh_out_dir() == Path("gymverl-demo-out")  # empty: reused
    Path("gymverl-demo-out/x").write_text("")
    assert fresh_out_dir() == Path("gymverl-demo-out-2")
    Path("gymverl-demo-out-2").mkdir()
    assert fresh_out_dir() == Path("gymverl-demo-out-3")


# ---- slow: the real thing -----------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.nemo_gym
@pytest.mark.verl
@pytest.mark.timeout(900)
def test_demo_end_to_end(tmp_path: Path) -> None:
    """`gymverl demo` from the repo root: real NeMo Gym servers, rescore, parquet, VeRL CPU training."""
    out = tmp_path / "demo-out"
    started = time.monotonic()
    proc = subprocess.Popen(
        [*GYMVERL, "demo", "--out", str(out), "--json"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env={**os.environ, "COLUMNS": "120"},
    )
    tracker = _Tracker(proc.pid)
    while proc.poll() is None and time.monotonic() - started < 600:
        tracker.poll()
        time.sleep(0.5)
    if proc.poll() is None:
        proc.kill()
    stdout, stderr = proc.communicate(timeout=60)
    wall = time.monotonic() - started
    assert proc.returncode == 0, stderr.decode()[-5000:]
    report = json.loads(stdout)
    steps = {s["name"]: s for s in report["steps"]}
    assert [s["status"] for s in report["steps"]] == ["ok"] * 9, [(s["name"], s["summary"]) for s in report["steps"]]
    # preview: an xlam_fc rl row's tools are in the policy's prompt (gymverl_tools agent loop)
    assert "tools get_weather shown" in steps["preview"]["summary"] or "tools convert_currency shown" in steps["preview"]["summary"]
    assert "tokens trained" in steps["preview"]["summary"]
    assert wall < 300, f"the demo took {wall:.0f} s (limit: 5 minutes)"

    # the servers really ran on loopback, and everything they started is gone
    urls = steps["servers"]["details"]["urls"]
    assert set(urls) == {"math_with_judge", "xlam_fc"} and all(u.startswith("http://127.0.0.1:") for u in urls.values())
    assert any("ng_run" in cmd for _, cmd in tracker.seen.values())
    assert _wait_gone(tracker) == []

    # rescore: NeMo Gym's verifiers agree with every sample reward; the old one is kept
    original = _sample_rows()
    rescored = [json.loads(line) for line in (out / "rescored.jsonl").read_text().splitlines()]
    assert len(rescored) == len(original) == 20
    assert [r["reward"] for r in rescored] == [r["reward"] for r in original]
    assert all(r["reward_before"] == r["reward"] for r in rescored)

    # stats on the rescored file, compared with the original
    stats = json.loads((out / "stats.json").read_text())
    assert stats["stats"]["overall"]["pass_rate"] == pytest.approx(0.55)
    assert stats["comparison"]["tasks"]["unchanged"] == 5
    assert (out / "stats.png").stat().st_size > 1000

    # parquet: rl one row per task (with what /verify needs), sft the correct rollouts
    rl = steps["parquet"]["details"]["rl"]
    assert sum(_rows(p) for p in rl["files"]) == 5
    row = pq.read_table(rl["files"][0]).to_pylist()[0]
    assert json.loads(row["extra_info"]["nemo_gym"])["responses_create_params"]["input"]
    sft = steps["parquet"]["details"]["sft"]
    assert sum(_rows(p) for p in sft["files"]) == 11

    # reward: VeRL's reward function (gymverl.reward.compute_score) scored every rl prompt via /verify
    scored = steps["reward"]["details"]["rows"]
    assert len(scored) == 5
    assert all(r["reference_score"] == 1.0 and r["non_answer_score"] == 0.0 for r in scored)

    # train: VeRL ran steps on CPU and the model was exported as a Hugging Face directory
    train = steps["train"]["details"]
    assert train["returncode"] == 0 and train["steps"] >= 2
    assert all(math.isfinite(x) for x in train["losses"])
    hf = Path(train["hf_model"])
    assert (hf / "config.json").is_file() and any(hf.glob("*.safetensors"))
    assert (out / "train" / "train.log").stat().st_size > 0


def _pasted(line: str, server_urls: dict[str, str]) -> list[str]:
    """The argv a user gets pasting a "same as:" line into a shell (`gymverl` dropped): train-offline
    as a --dry-run (planned, not trained), rescore's --server URLs those of servers started again."""
    argv = shlex.split(line.split("same as: ", 1)[1])
    assert argv[0] == "gymverl", line
    args = argv[1:]
    if args[0] == "train-offline":
        args.append("--dry-run")
    for i, word in enumerate(args):
        if i and args[i - 1] == "--server":
            agent = word.split("=", 1)[0]
            args[i] = f"{agent}={server_urls[demo_mod.server_for_agent(agent)]}"
    return args


@pytest.mark.slow
@pytest.mark.nemo_gym
@pytest.mark.verl
@pytest.mark.timeout(900)
def test_every_printed_command_works_when_pasted_after_the_demo(tmp_path: Path, gym_servers, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each "same as: gymverl ..." line, pasted after the demo, runs (exit 0): train-offline and
    rescore over the step's own finished output (they refused it: no --overwrite), rescore's
    failures where the step put them. The demo stops its servers, so rescore's line is pasted with
    the URLs of servers started again, as a user would have to."""
    monkeypatch.chdir(tmp_path)  # printed paths are relative to the working directory, as in a shell
    lines: list[str] = []
    report = run_demo(DemoOptions(out=Path("out"), skip=frozenset({"reward"})), PlainReporter(lines.append))
    assert report.ok, [(s.name, s.status, s.summary) for s in report.steps]
    printed = [line for line in lines if "same as: " in line]
    urls = {name: gym_servers.url(name) for name in ("math_with_judge", "xlam_fc")}
    pasted = [_pasted(line, urls) for line in printed]
    assert sorted({a[0] for a in pasted}) == ["preview", "rescore", "stats", "to-parquet", "train-offline", "validate"]
    assert Path("out/train/hf_model").is_dir() and Path("out/rescored.jsonl").stat().st_size > 0  # what is pasted over
    failed = []
    for line, args in zip(printed, pasted):
        res = runner.invoke(app, args)
        if res.exit_code != 0:
            failed.append(f"{line.strip()} -> exit {res.exit_code}: {' '.join(res.output.split())[-400:]}")
    assert failed == []
    # the pasted rescore wrote where the step did: rows and (none) failures, the same rewards
    rescored = [json.loads(x) for x in Path("out/rescored.jsonl").read_text().splitlines()]
    assert [r["reward"] for r in rescored] == [r["reward"] for r in _sample_rows()]
    assert not Path("out/rescored.failures.jsonl").exists()


@pytest.mark.slow
@pytest.mark.nemo_gym
@pytest.mark.parametrize(
    ("sig", "times"), [(signal.SIGINT, 1), (signal.SIGINT, 2), (signal.SIGTERM, 1)], ids=["ctrl-c", "ctrl-c-twice", "sigterm"]
)
def test_demo_interrupted_stops_its_servers(tmp_path: Path, sig: int, times: int) -> None:
    """Ctrl-C (even twice) or SIGTERM while NeMo Gym is starting: exit 130, and ng_run + Ray are gone."""
    out = tmp_path / "demo-out"
    proc = subprocess.Popen(
        [*GYMVERL, "demo", "--out", str(out), "--skip", "stats,parquet,reward,train"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    tracker = _Tracker(proc.pid)
    deadline = time.monotonic() + 180
    try:
        # Wait until ng_run has started Ray (a few processes below it), then interrupt.
        while time.monotonic() < deadline and proc.poll() is None:
            kids = tracker.poll()
            if len(kids) >= 4 and any("ng_run" in " ".join(_cmd(k)) for k in kids):
                break
            time.sleep(0.3)
        assert proc.poll() is None, proc.communicate()[1].decode()[-3000:]
        time.sleep(2)
        tracker.poll()
        assert len(tracker.seen) >= 4 and any("ng_run" in cmd for _, cmd in tracker.seen.values())
        proc.send_signal(sig)
        for _ in range(times - 1):
            time.sleep(1.0)  # an impatient user presses Ctrl-C again while the servers are stopping
            if proc.poll() is None:
                proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr.decode()[-3000:]
    assert "interrupted" in stderr.decode()
    assert _wait_gone(tracker) == []
    saved = json.loads((out / "demo.json").read_text())
    assert saved["interrupted"] is True and saved["ok"] is False


def _cmd(p: psutil.Process) -> list[str]:
    try:
        return p.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return []


def test_demo_servers_for_the_sample_agents() -> None:
    assert demo_mod.agents_in(SAMPLE_DATA / "rollouts.jsonl") == ["math_with_judge_simple_agent", "xlam_fc_simple_agent"]
    assert [demo_mod.server_for_agent(a) for a in ("math_with_judge_simple_agent", "xlam_fc_simple_agent")] == [
        "math_with_judge", "xlam_fc",
    ]
    assert demo_mod.server_for_agent("mcqa_simple_agent") == "mcqa"
    assert demo_mod.server_for_agent("blackjack") == "blackjack"
