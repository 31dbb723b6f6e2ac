"""gymverl rescore under injected faults: order, exactly-once, failure records, resume, CLI.

The fault server (tests/fake_verify_server.py) answers with reward 0.1 + crc32(id) % 9 / 10, never
0.0, so a row written with a reward that did not come from the server is caught. Scoring against
real NeMo Gym servers is in test_rescore_real.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from typer.testing import CliRunner

from conftest import REPO, SAMPLE_DATA
from fake_verify_server import FakeServer, fake_reward
from gymverl.cli import app
from gymverl.rescore import (
    RescoreError,
    RescoreSummary,
    TaskIndex,
    default_failures_path,
    prompt_key,
    read_state,
    rescore_file,
    rescored_row,
    state_path,
)

runner = CliRunner()


def sample_rows() -> list[dict[str, Any]]:
    return [json.loads(line) for line in (SAMPLE_DATA / "rollouts.jsonl").read_text().splitlines()]


def make_input(path: Path, n: int) -> list[dict[str, Any]]:
    """n rollouts (copies of the sample ones with unique response ids), written to `path`."""
    base = sample_rows()
    rows = []
    for i in range(n):
        r = json.loads(json.dumps(base[i % len(base)]))
        r["response"]["id"] = f"resp_{i}"
        rows.append(r)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def check_exactly_once(inp: Path, out: Path, fails: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Every input line is exactly one output row or one failure record, both in input order,
    and every output reward is the server's (never invented)."""
    rows_in = inp.read_text().splitlines()
    out_rows, fail_rows = read_jsonl(out), read_jsonl(fails)
    fail_lines = [f["line"] for f in fail_rows]
    assert fail_lines == sorted(fail_lines) and len(set(fail_lines)) == len(fail_lines)
    ok_lines = [i for i in range(1, len(rows_in) + 1) if i not in set(fail_lines)]
    assert len(out_rows) == len(ok_lines), (len(out_rows), len(ok_lines), len(fail_lines))
    for line, row in zip(ok_lines, out_rows):
        src = json.loads(rows_in[line - 1])
        assert row["response"] == src["response"]  # same row, same place: order kept, no duplicate
        assert row["reward"] == fake_reward(src["response"]["id"]) != 0.0
        assert row["reward_before"] == src["reward"]
    return out_rows, fail_rows


# ---- library -------------------------------------------------------------------------------------


def test_rescore_keeps_order_and_every_field(tmp_path: Path) -> None:
    inp = tmp_path / "in.jsonl"
    rows = make_input(inp, 300)
    with FakeServer("--jitter", "0.03") as srv:  # answers finish out of order
        summary = rescore_file(inp, tmp_path / "out.jsonl", [srv.url], concurrency=16)
    out, fails = check_exactly_once(inp, tmp_path / "out.jsonl", tmp_path / "out.failures.jsonl")
    assert summary.complete and summary.rescored == 300 and summary.failed == 0 and not fails
    assert not (tmp_path / "out.failures.jsonl").exists()  # nothing failed: no empty file left
    first = out[0]
    assert list(first)[: list(first).index("reward") + 2][-2:] == ["reward", "reward_before"]
    for k, v in rows[0].items():
        if k != "reward":
            assert first[k] == v
    assert first["attempt"] == 1  # verifier outputs are added to the row
    assert summary.mean_before == pytest.approx(sum(r["reward"] for r in rows) / 300)
    assert summary.mean_after == pytest.approx(sum(fake_reward(r["response"]["id"]) for r in rows) / 300)
    assert summary.changed == sum(fake_reward(r["response"]["id"]) != r["reward"] for r in rows)
    assert summary.to_dict()["tasks"] == 5
    state = read_state(tmp_path / "out.jsonl")
    assert state is not None and state["complete"] and state["lines_done"] == 300


def test_transient_faults_cost_no_row(tmp_path: Path) -> None:
    inp = tmp_path / "in.jsonl"
    make_input(inp, 120)
    with FakeServer("--plan", "500,reset,429,timeout,ok", "--every", "2", "--hang", "10") as srv:
        summary = rescore_file(inp, tmp_path / "out.jsonl", [srv.url], concurrency=16, timeout=0.5, retries=5)
    check_exactly_once(inp, tmp_path / "out.jsonl", tmp_path / "out.failures.jsonl")
    assert summary.failed == 0 and summary.rescored == 120


def test_final_failures_go_to_the_failures_file_never_the_output(tmp_path: Path) -> None:
    inp = tmp_path / "in.jsonl"
    rows = make_input(inp, 60)
    with FakeServer("--plan", "422", "--every", "4") as srv:
        summary = rescore_file(inp, tmp_path / "out.jsonl", [srv.url], concurrency=8)
    out, fails = check_exactly_once(inp, tmp_path / "out.jsonl", tmp_path / "out.failures.jsonl")
    assert fails and summary.failed == len(fails) and summary.rescored == len(out)
    for f in fails:
        assert (f["kind"], f["reason"], f["status"], f["attempts"]) == ("verify", "http_4xx", 422, 1)
        assert f["error"] == "HTTP 422: question: Field required"
        assert f["reward_before"] == rows[f["line"] - 1]["reward"] and f["task"]
    assert summary.failures_by_reason == {"http_4xx (422)": len(fails)}
    assert summary.required_missing == {"question": len(fails)}
    assert "question" in (summary.warning() or "")


def test_invalid_rows_are_reported_like_validate_and_not_sent(tmp_path: Path) -> None:
    good = sample_rows()[:3]
    no_reward = {k: v for k, v in good[0].items() if k != "reward"}
    lines = [json.dumps(good[0]), "{not json", json.dumps(no_reward), json.dumps(good[1]), "", json.dumps(good[2])]
    inp = tmp_path / "in.jsonl"
    inp.write_text("\n".join(lines) + "\n")
    with FakeServer() as srv:
        summary = rescore_file(inp, tmp_path / "out.jsonl", [srv.url])
        assert srv.stats()["requests"] == 3
    fails = read_jsonl(tmp_path / "out.failures.jsonl")
    assert [(f["line"], f["kind"], f["reason"]) for f in fails] == [
        (2, "invalid", "invalid_json"), (3, "invalid", "missing_key"),
    ]  # line 5 is blank: skipped and counted, written nowhere
    assert fails[1]["error"] == "missing required key 'reward'" and fails[0]["raw"] == "{not json"
    assert [r["response"]["id"] for r in read_jsonl(tmp_path / "out.jsonl")] == [g["response"]["id"] for g in good]
    assert summary.rejected == 2 and summary.rejected_by_code == {"invalid_json": 1, "missing_key": 1}
    assert summary.blank == 1 and summary.lines == 6 == summary.rescored + summary.rejected + summary.blank


def test_server_killed_and_restarted_mid_run_loses_nothing(tmp_path: Path) -> None:
    inp = tmp_path / "in.jsonl"
    make_input(inp, 200)
    srv = FakeServer("--latency", "0.01", "--die-after", "60").start()
    port_args = ("--latency", "0.01")

    def restart_when_dead() -> None:
        while srv.proc is not None and srv.proc.poll() is None:
            time.sleep(0.02)
        time.sleep(0.3)  # the verifier is down for a moment
        srv.stop()
        srv.start(*port_args)

    t = threading.Thread(target=restart_when_dead)
    t.start()
    try:
        summary = rescore_file(inp, tmp_path / "out.jsonl", [srv.url], concurrency=8, retries=6)
    finally:
        t.join(timeout=30)
        srv.stop()
    check_exactly_once(inp, tmp_path / "out.jsonl", tmp_path / "out.failures.jsonl")
    assert summary.complete and summary.failed == 0 and summary.rescored == 200


def test_verifier_down_stops_the_run_and_resume_finishes_it(tmp_path: Path) -> None:
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    make_input(inp, 150)
    srv = FakeServer("--die-after", "50").start()
    try:
        first = rescore_file(inp, out, [srv.url], concurrency=4, retries=1, max_failures_in_a_row=6)
        assert not first.complete and first.interrupted and first.interrupted.startswith("verifier unreachable")
        # The rows that failed because the verifier went away are not recorded as failures.
        assert first.failed == 0 and not read_jsonl(default_failures_path(out))
        done = read_state(out)["lines_done"]  # type: ignore[index]
        assert 40 <= done < 150 and len(read_jsonl(out)) == done
        srv.stop()
        srv.start("--jitter", "0.01")
        second = rescore_file(inp, out, [srv.url], concurrency=8, resume=True)
        assert srv.stats()["requests"] == 150 - done  # nothing done twice
    finally:
        srv.stop()
    assert second.complete and second.resumed_from == done
    assert second.lines == 150 and second.rescored == 150  # the summary covers the whole file
    check_exactly_once(inp, out, default_failures_path(out))


def test_limit_then_resume_and_resume_of_a_finished_run(tmp_path: Path) -> None:
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    make_input(inp, 50)
    with FakeServer("--plan", "422", "--every", "5") as srv:
        a = rescore_file(inp, out, [srv.url], limit=20)
        assert not a.complete and a.lines == 20
        b = rescore_file(inp, out, [srv.url], resume=True)
        assert b.complete and b.lines == 50
        c = rescore_file(inp, out, [srv.url], resume=True)
        assert c.complete and c.rows_this_run == 0 and c.lines == 50 and c.failed == b.failed
        assert srv.stats()["requests"] == 50
    check_exactly_once(inp, out, default_failures_path(out))


def test_resume_refuses_a_different_input_or_a_missing_checkpoint(tmp_path: Path) -> None:
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    make_input(inp, 10)
    with FakeServer() as srv:
        rescore_file(inp, out, [srv.url], limit=5)
        with pytest.raises(RescoreError, match=r"unfinished rescore run \(5 lines done\); continue it with --resume"):
            rescore_file(inp, out, [srv.url])
        make_input(inp, 12)
        with pytest.raises(RescoreError, match="not the input the interrupted run used"):
            rescore_file(inp, out, [srv.url], resume=True)
        state_path(out).unlink()
        with pytest.raises(RescoreError, match="no rescore checkpoint"):
            rescore_file(inp, out, [srv.url], resume=True)
        rescore_file(inp, out, [srv.url], limit=3)
        assert rescore_file(inp, out, [srv.url], overwrite=True).complete
    with pytest.raises(RescoreError, match="must differ"):
        rescore_file(inp, inp, ["http://127.0.0.1:9"])


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "gymverl.cli", "rescore", *args]


@pytest.mark.parametrize("how", ["sigkill", "sigint"])
def test_crash_or_ctrl_c_then_resume(tmp_path: Path, how: str) -> None:
    """A real process killed mid-run (SIGKILL: no clean-up at all; or Ctrl-C), then --resume."""
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    make_input(inp, 240)
    with FakeServer("--latency", "0.03", "--jitter", "0.02") as srv:
        args = _cli(str(inp), "-o", str(out), "-s", srv.url, "-c", "4", "--json")
        proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            st = read_state(out) if state_path(out).exists() else None
            if st and st["lines_done"] >= 30:
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL if how == "sigkill" else signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
        if how == "sigkill":
            assert proc.returncode == -signal.SIGKILL
            with open(out, "ab") as f:
                f.write(b'{"half a line')  # what a crash mid-write can leave behind
        else:
            assert proc.returncode == 130, stderr
            assert "--resume" in stderr and json.loads(stdout)["interrupted"] == "interrupted (Ctrl-C)"
        done = read_state(out)["lines_done"]  # type: ignore[index]
        assert 30 <= done < 240
        res = subprocess.run(args + ["--resume"], cwd=REPO, capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, res.stderr
        data = json.loads(res.stdout)
        assert data["complete"] and data["lines"] == 240 and data["resumed_from_line"] == done
    check_exactly_once(inp, out, default_failures_path(out))


# ---- tasks join and the flip warning -------------------------------------------------------------


def test_tasks_rejoin_missing_fields_by_index_and_by_prompt(tmp_path: Path) -> None:
    rows = sample_rows()
    stripped = []
    for i, r in enumerate(rows):
        s = {k: v for k, v in r.items() if k not in ("question", "expected_answer", "expected_answers")}
        if i % 2:
            del s["_ng_task_index"]  # these must be found by prompt
            s["responses_create_params"] = dict(s["responses_create_params"])
            s["responses_create_params"]["input"] = [dict(m, type="message") for m in s["responses_create_params"]["input"]]
        stripped.append(s)
    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps(r) + "\n" for r in stripped))
    index = TaskIndex(SAMPLE_DATA / "tasks.jsonl")
    assert len(index) == 5
    for r, s in zip(rows, stripped):
        task = index.find(s)
        assert task is not None and prompt_key(task) == prompt_key(r)
        want = {k: r[k] for k in ("question", "expected_answer", "expected_answers") if k in r}
        assert TaskIndex.missing_fields(s, task) == want
    with FakeServer() as srv:
        summary = rescore_file(inp, tmp_path / "out.jsonl", [srv.url], tasks=SAMPLE_DATA / "tasks.jsonl")
    out = read_jsonl(tmp_path / "out.jsonl")
    assert summary.joined_tasks == 20 and summary.unjoined == 0
    for r, o in zip(rows, out):  # sent to the server (echoed back) and kept in the row
        for k in ("question", "expected_answer", "expected_answers"):
            assert o.get(k) == r.get(k)


def test_flip_warning_names_fields() -> None:
    s = RescoreSummary("in", "out", "fails")
    for i in range(10):
        s.add_ok("t", 1.0, 0.0 if i < 3 else 1.0)
    s.absent_accepted.update({"options": 3, "grading_mode": 3})
    s.null_echoed.update({"extracted_answer": 3})
    msg = s.warning()
    assert msg and "3 of 10 rewards went down" in msg and "options (absent from 3 rows)" in msg
    assert "extracted_answer" in msg and "--tasks" in msg
    quiet = RescoreSummary("in", "out", "fails")
    for i in range(10):
        quiet.add_ok("t", 1.0, 0.0 if i < 2 else 1.0)  # 20% < 25%
    assert quiet.warning() is None


def test_rescored_row_ignores_echo_and_does_not_add_nulls() -> None:
    row = {"responses_create_params": {"input": "q"}, "response": {"id": "r"}, "reward": 1.0, "extracted_answer": "5", "reward_before": 0.5}
    answer = {"responses_create_params": {"input": "changed"}, "response": {"id": "x"}, "reward": 0.0, "extracted_answer": None, "options": None, "score": 2}
    out = rescored_row(row, answer)
    assert out == {"responses_create_params": {"input": "q"}, "response": {"id": "r"}, "reward": 0.0, "reward_before": 1.0, "extracted_answer": None, "score": 2}


# ---- CLI -----------------------------------------------------------------------------------------


def test_cli_success_failures_and_exit_codes(tmp_path: Path) -> None:
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    make_input(inp, 40)
    with FakeServer() as srv:
        res = runner.invoke(app, ["rescore", str(inp), "-o", str(out), "-s", srv.url])
        assert res.exit_code == 0, res.output
        assert "rescored" in res.output and "per task" in res.output and "mean reward before -> after" in res.output
    with FakeServer("--plan", "422", "--every", "3") as srv:
        res = runner.invoke(app, ["rescore", str(inp), "-o", str(out), "-s", srv.url, "--json"])
        assert res.exit_code == 1
        data = json.loads(res.stdout)
        assert data["failed"] > 0 and data["failed"] + data["rescored"] == 40 and data["complete"]
        env = {"GYMVERL_VERIFY_URL": srv.url}
        res = runner.invoke(app, ["rescore", str(inp), "-o", str(tmp_path / "o2.jsonl")], env=env)
        assert res.exit_code == 1 and "failures and rejections" in res.output


def test_cli_usage_errors_are_one_sentence(tmp_path: Path) -> None:
    inp = tmp_path / "in.jsonl"
    make_input(inp, 2)
    cases = [
        (["rescore", str(inp), "-o", str(tmp_path / "o.jsonl")], "give at least one --server"),
        (["rescore", str(inp), "-o", str(tmp_path / "o.jsonl"), "-s", "localhost:1"], "must start with http"),
        (["rescore", str(tmp_path / "nope.jsonl"), "-o", str(tmp_path / "o.jsonl"), "-s", "http://127.0.0.1:9"], "no such file"),
        (["rescore", str(inp), "-o", str(inp), "-s", "http://127.0.0.1:9"], "must differ"),
    ]
    for args, msg in cases:
        res = runner.invoke(app, args, env={"GYMVERL_VERIFY_URL": ""})
        assert res.exit_code == 2, (args, res.output)
        assert msg in res.output and "Traceback" not in res.output


def test_a_slow_row_does_not_let_memory_grow_past_the_window(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows finishing after a slow one wait in a bounded reorder window, not in an unbounded buffer."""
    import gymverl.rescore as rescore_mod

    inp = tmp_path / "in.jsonl"
    make_input(inp, 400)
    seen: list[int] = []
    orig = rescore_mod._Run._drain

    def spy(self: Any, final: bool = False) -> None:
        seen.append(len(self.pending))
        orig(self, final)

    monkeypatch.setattr(rescore_mod._Run, "_drain", spy)
    # every 50th row times out once (0.5 s) and then answers; the rest answer at once
    with FakeServer("--plan", "timeout,ok", "--every", "50", "--hang", "5") as srv:
        summary = rescore_file(inp, tmp_path / "out.jsonl", [srv.url], concurrency=8, timeout=0.5, window=32)
    check_exactly_once(inp, tmp_path / "out.jsonl", tmp_path / "out.failures.jsonl")
    assert summary.complete and summary.failed == 0
    assert 24 <= max(seen) <= 32 + 1  # the window filled up, and no further


def test_gzip_input(tmp_path: Path) -> None:
    import gzip

    plain = tmp_path / "in.jsonl"
    make_input(plain, 30)
    gz = tmp_path / "in.jsonl.gz"
    gz.write_bytes(gzip.compress(plain.read_bytes()))
    with FakeServer() as srv:
        summary = rescore_file(gz, tmp_path / "out.jsonl", [srv.url])
    assert summary.complete and summary.rescored == 30
    check_exactly_once(plain, tmp_path / "out.jsonl", tmp_path / "out.failures.jsonl")


def test_retry_failed_resends_only_failed_rows_and_keeps_order(tmp_path: Path) -> None:
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    rows = make_input(inp, 80)
    lines = inp.read_text().splitlines()
    lines[9] = "{broken"  # an invalid line stays an invalid-line record
    inp.write_text("\n".join(lines) + "\n")
    fails_path = default_failures_path(out)
    with FakeServer("--plan", "503", "--every", "4") as srv:  # a flaky replica: some rows fail for good
        first = rescore_file(inp, out, [srv.url], retries=1, concurrency=8)
    assert first.complete and first.failed > 5 and first.rejected == 1
    failed_lines = {f["line"] for f in read_jsonl(fails_path) if f["kind"] == "verify"}
    before, before_fails = read_jsonl(out), read_jsonl(fails_path)
    # A retry pass cut short (the verifier goes away again) leaves both files exactly as they were.
    with FakeServer("--die-after", "3") as srv:
        cut = rescore_file(inp, out, [srv.url], retry_failed=True, retries=0, max_failures_in_a_row=2, concurrency=2)
    assert not cut.complete and cut.interrupted and cut.interrupted.startswith("verifier unreachable")
    assert read_jsonl(out) == before and read_jsonl(fails_path) == before_fails
    assert not list(tmp_path.glob(".*.retry.tmp"))
    with FakeServer() as srv:
        again = rescore_file(inp, out, [srv.url], retry_failed=True)
        assert srv.stats()["requests"] == len(failed_lines)  # only the failed rows were sent again
    assert again.complete and again.failed == 0 and again.rejected == 1 and again.rescored == 79
    out_rows, fails = check_exactly_once(inp, out, fails_path)
    assert [f["line"] for f in fails] == [10]
    kept = [r for r in out_rows if r["response"]["id"] in {b["response"]["id"] for b in before}]
    assert kept == before  # rows that had succeeded are copied unchanged
    assert read_state(out)["complete"] and read_state(out)["lines_done"] == 80  # type: ignore[index]
    with FakeServer("--plan", "503") as srv:
        rescore_file(inp, out, [srv.url], retry_failed=True)  # nothing left to retry: a plain copy
        assert srv.stats()["requests"] == 0
    assert read_jsonl(out) == out_rows
    with pytest.raises(RescoreError, match="do not combine"):
        rescore_file(inp, out, ["http://127.0.0.1:9"], retry_failed=True, resume=True)
