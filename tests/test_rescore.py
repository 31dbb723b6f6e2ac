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

from conftest import REPO, SAMPLE_DATA, SHARED
from fake_verify_server import FakeServer, OtherHttpServer, fake_reward
from gymverl.cli import app
from gymverl.errors import RunError, UsageError
from gymverl.rescore import (
    RescoreError,
    RescoreSummary,
    default_failures_path,
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


def _closed_url() -> str:
    """A URL on 127.0.0.1 where nothing listens (connection refused)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def test_a_truncated_input_says_how_to_continue_and_resume_refusal_names_overwrite(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A truncated .gz input stopped rescore (exit 2) with no word on what next; once the input was
    fixed, --resume said "run without --resume to start over" and that said "continue it with
    --resume, or start over with --overwrite": a circle. Both now name --overwrite, which works."""
    import gzip

    monkeypatch.chdir(tmp_path)
    make_input(tmp_path / "full.jsonl", 600)
    data = gzip.compress((tmp_path / "full.jsonl").read_bytes())
    (tmp_path / "in.jsonl.gz").write_bytes(data[: len(data) // 2])
    with FakeServer() as srv:
        cmd = ["rescore", "in.jsonl.gz", "-o", "out.jsonl", "-s", srv.url]
        res = runner.invoke(app, cmd, env={"GYMVERL_VERIFY_URL": ""})
        assert res.exit_code == 2 and "corrupt or truncated gzip data after line" in res.output, res.output
        assert "the rows before it are saved in out.jsonl: fix the input and start over with --overwrite" in res.output
        (tmp_path / "in.jsonl.gz").write_bytes(data)  # the input fixed
        res = runner.invoke(app, [*cmd, "--resume"], env={"GYMVERL_VERIFY_URL": ""})
        assert res.exit_code == 2 and "is not the input the interrupted run used" in res.output, res.output
        assert "start over with --overwrite" in res.output and "run without --resume" not in res.output
        res = runner.invoke(app, [*cmd, "--overwrite"], env={"GYMVERL_VERIFY_URL": ""})
        assert res.exit_code == 0, res.output
    assert len(read_jsonl(tmp_path / "out.jsonl")) == 600


def test_a_server_that_answers_but_is_no_resources_server_is_one_sentence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--server at a port where something else answers HTTP (a policy model server: 404 for every
    route): GET /reverify_mode's 404 read as NeMo Gym < 0.5, so every row failed `http_4xx (404)`,
    exit 1, an empty output, failures and checkpoint written and "rescored rollouts written".
    Now the preflight refuses it: exit 2, one sentence, nothing sent as a row, nothing written."""
    monkeypatch.chdir(tmp_path)
    make_input(tmp_path / "in.jsonl", 5)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with OtherHttpServer(404) as other:
        res = runner.invoke(app, ["rescore", "in.jsonl", "-o", "out.jsonl", "-s", other.url], env={"GYMVERL_VERIFY_URL": ""})
        assert other.requests == 1  # the probe only
    assert res.exit_code == 2, res.output
    lines = [x for x in res.output.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: --server {other.url} answers 404 at /verify: not a NeMo Gym resources server;"), res.output
    assert "nothing was sent or written" in lines[0]
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_a_server_that_does_not_answer_is_one_sentence_before_any_row(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every --server given is down (nothing listens): rescore sent every row, retried each, and
    ended with exit 1 after the "in a row" stop; like collect and train-online it now refuses at
    once (exit 2, one sentence naming the server, its URL and how to start it), for a fresh run,
    --resume and --retry-failed alike, and leaves every file as it was."""
    monkeypatch.chdir(tmp_path)
    make_input(tmp_path / "in.jsonl", 40)
    dead = _closed_url()

    def refused(*extra: str, spec: str = dead) -> None:
        before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
        res = runner.invoke(app, ["rescore", "in.jsonl", "-o", "out.jsonl", "-s", spec, *extra], env={"GYMVERL_VERIFY_URL": ""})
        assert res.exit_code == 2, res.output
        lines = [x for x in res.output.splitlines() if x.strip()]
        assert len(lines) == 1 and lines[0].startswith(f"error: --server {spec} does not answer ("), res.output
        assert "python -m gymverl.nemo_gym" in lines[0] and "nothing was sent or written" in lines[0]
        assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # nothing written, nothing created

    refused()
    refused(spec=f"mcqa_simple_agent={dead}")
    with pytest.raises(RescoreError, match=r"mcqa_simple_agent=.* does not answer .*python -m gymverl.nemo_gym mcqa`") as info:
        rescore_file("in.jsonl", "out.jsonl", [f"mcqa_simple_agent={dead}"])
    assert info.value.exit_code == 2
    with FakeServer() as srv:
        # One replica down among live ones is named too: the command line names a server that is not there.
        refused("-s", srv.url, spec=dead)
        assert srv.stats()["requests"] == 0
        assert rescore_file("in.jsonl", "out.jsonl", [srv.url], limit=10).interrupted  # an unfinished run
    refused("--resume")
    with FakeServer("--plan", "503", "--every", "4") as srv:
        assert rescore_file("in.jsonl", "out.jsonl", [srv.url], resume=True, retries=0).failed > 0  # finished, with failures
    refused("--retry-failed")


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
        # Without its checkpoint the output is not known to be a rescore run: never replaced unasked.
        with pytest.raises(RescoreError, match="not from a gymverl rescore run; choose another path, or pass --overwrite"):
            rescore_file(inp, out, [srv.url], limit=3)
        rescore_file(inp, out, [srv.url], limit=3, overwrite=True)
        assert rescore_file(inp, out, [srv.url], overwrite=True).complete
    with pytest.raises(UsageError, match="is the input"):
        rescore_file(inp, inp, ["http://127.0.0.1:9"])


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "gymverl.cli", "rescore", *args]


@pytest.mark.parametrize("how", ["sigkill", "sigint", "sighup"])
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
        proc.send_signal({"sigkill": signal.SIGKILL, "sigint": signal.SIGINT, "sighup": signal.SIGHUP}[how])
        stdout, stderr = proc.communicate(timeout=60)
        if how == "sigkill":
            assert proc.returncode == -signal.SIGKILL
            with open(out, "ab") as f:
                f.write(b'{"half a line')  # what a crash mid-write can leave behind
        else:
            assert proc.returncode == 130, stderr
            want = "interrupted (Ctrl-C)" if how == "sigint" else "terminated (SIGHUP)"  # a closed terminal: like Ctrl-C
            assert "--resume" in stderr and json.loads(stdout)["interrupted"] == want
        done = read_state(out)["lines_done"]  # type: ignore[index]
        assert 30 <= done < 240
        res = subprocess.run(args + ["--resume"], cwd=REPO, capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, res.stderr
        data = json.loads(res.stdout)
        assert data["complete"] and data["lines"] == 240 and data["resumed_from_line"] == done
    check_exactly_once(inp, out, default_failures_path(out))


# ---- tasks join and the flip warning -------------------------------------------------------------


def test_tasks_rejoin_missing_fields_by_index_and_by_prompt(tmp_path: Path) -> None:
    """--tasks joins on _ng_task_index (the prompt only as a check, representation ignored); a row
    without an index (NeMo Gym's example rollouts) is joined by its prompt, which names one task here."""
    rows = sample_rows()
    stripped = []
    for i, r in enumerate(rows):
        s = {k: v for k, v in r.items() if k not in ("question", "expected_answer", "expected_answers")}
        s["responses_create_params"] = dict(s["responses_create_params"])
        s["responses_create_params"]["input"] = [dict(m, type="message") for m in s["responses_create_params"]["input"]]
        if i % 2:
            del s["_ng_task_index"]  # these must be found by prompt
        stripped.append(s)
    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps(r) + "\n" for r in stripped))
    with FakeServer() as srv:
        summary = rescore_file(inp, tmp_path / "out.jsonl", [srv.url], tasks=SAMPLE_DATA / "tasks.jsonl")
    out = read_jsonl(tmp_path / "out.jsonl")
    assert summary.joined_tasks == 20 and summary.unjoined == 0
    assert summary.task_source_kind == "tasks"
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
        res = runner.invoke(app, ["rescore", str(inp), "-o", str(out), "-s", srv.url, "--json", "--overwrite"])
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
        (["rescore", str(inp), "-o", str(inp), "-s", "http://127.0.0.1:9"], "is the input"),
    ]
    for args, msg in cases:
        res = runner.invoke(app, args, env={"GYMVERL_VERIFY_URL": ""})
        assert res.exit_code == 2, (args, res.output)
        assert msg in res.output and "Traceback" not in res.output


def test_a_slow_row_does_not_let_memory_grow_past_the_window(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows finishing after a slow one wait in a bounded reorder window, not in an unbounded buffer."""
    from gymverl.rescore.writer import OrderedWriter

    inp = tmp_path / "in.jsonl"
    make_input(inp, 400)
    seen: list[int] = []
    orig = OrderedWriter.drain

    def spy(self: Any, final: bool = False) -> bool:
        seen.append(len(self.pending))
        return orig(self, final)

    monkeypatch.setattr(OrderedWriter, "drain", spy)
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


# ---- issue 10: locked outputs, outputs that are inputs, write errors, crashes, odd valid lines ----


def _wait_for(cond: Any, seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while not cond():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.02)


def _error_lines(stderr: str) -> list[str]:
    lines = [x for x in stderr.splitlines() if x.strip()]
    assert "Traceback" not in stderr and "never retrieved" not in stderr, stderr
    return lines


@pytest.mark.parametrize("flag", ["--resume", "--overwrite"])
def test_two_runs_on_one_output_the_second_is_refused_naming_the_first(tmp_path: Path, flag: str) -> None:
    """Two processes started together on the same output: one runs, the other stops at once."""
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    make_input(inp, 300)  # ~7 s: the loser starts (and is refused) long before the winner ends
    with FakeServer("--latency", "0.05") as srv:
        args = _cli(str(inp), "-o", str(out), "-s", srv.url, "-c", "2", "--json", flag)
        procs = [subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
        results = [p.communicate(timeout=120) for p in procs]
    codes = [p.returncode for p in procs]
    assert sorted(codes) == [0, 1], (codes, results)
    winner, loser = (0, 1) if codes[0] == 0 else (1, 0)
    (line,) = _error_lines(results[loser][1])
    assert line.startswith("error: ") and f"process {procs[winner].pid}" in line and str(out) in line
    data = json.loads(results[winner][0])
    assert data["complete"] and data["lines"] == 300
    check_exactly_once(inp, out, default_failures_path(out))
    assert not list(tmp_path.glob(".*.lock"))  # the lock is released with the run


def test_a_second_run_while_the_first_is_running_is_refused_at_once(tmp_path: Path) -> None:
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    make_input(inp, 400)  # ~10 s
    with FakeServer("--latency", "0.05") as srv:
        args = _cli(str(inp), "-o", str(out), "-s", srv.url, "-c", "2", "--json")
        first = subprocess.Popen(args + ["--overwrite"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        _wait_for(lambda: state_path(out).exists())
        start = time.monotonic()
        second = subprocess.run(args + ["--resume"], cwd=REPO, capture_output=True, text=True, timeout=60)
        assert time.monotonic() - start < 30 and first.poll() is None
        assert second.returncode == 1
        (line,) = _error_lines(second.stderr)
        assert f"is being written by process {first.pid}" in line
        # The library refuses too, without touching the files.
        with pytest.raises(RunError, match=f"process {first.pid}"):
            rescore_file(inp, out, [srv.url], resume=True)
        stdout, stderr = first.communicate(timeout=120)
    assert first.returncode == 0, stderr
    check_exactly_once(inp, out, default_failures_path(out))


def _copy_inputs(tmp_path: Path) -> tuple[Path, Path]:
    inp, tasks = tmp_path / "in.jsonl", tmp_path / "tasks.jsonl"
    inp.write_bytes((SAMPLE_DATA / "rollouts.jsonl").read_bytes())
    tasks.write_bytes((SAMPLE_DATA / "tasks.jsonl").read_bytes())
    return inp, tasks


_COLLISIONS = {
    "failures is the tasks file": (lambda d: ["-o", "out.jsonl", "--tasks", "tasks.jsonl", "--failures", "tasks.jsonl"], "is the input"),
    "output is the tasks file": (lambda d: ["-o", "tasks.jsonl", "--tasks", "tasks.jsonl"], "is the input"),
    "failures is the input": (lambda d: ["-o", "out.jsonl", "--failures", "in.jsonl"], "is the input"),
    "output is a hard link to the input": (lambda d: (os.link(d / "in.jsonl", d / "same.jsonl"), ["-o", "same.jsonl"])[1], "is the same file as the input"),
    "output is a symlink to the input": (lambda d: ((d / "ln.jsonl").symlink_to(d / "in.jsonl"), ["-o", "ln.jsonl"])[1], "is the input"),
    "failures is a hard link to the tasks": (lambda d: (os.link(d / "tasks.jsonl", d / "t2.jsonl"), ["-o", "out.jsonl", "--tasks", "tasks.jsonl", "--failures", "t2.jsonl"])[1], "is the same file as the input"),
    "output and failures are one file": (lambda d: ["-o", "out.jsonl", "--failures", "out.jsonl"], "are the same file"),
}


@pytest.mark.parametrize("case", sorted(_COLLISIONS))
def test_an_output_that_is_an_input_is_refused_before_anything_is_written(tmp_path: Path, case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    inp, tasks = _copy_inputs(tmp_path)
    make_args, message = _COLLISIONS[case]
    opts = make_args(tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    monkeypatch.chdir(tmp_path)
    res = runner.invoke(app, ["rescore", "in.jsonl", *opts, "-s", "http://127.0.0.1:9"], env={"GYMVERL_VERIFY_URL": ""})
    assert res.exit_code == 2, res.output
    lines = [x for x in res.output.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], res.output
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # nothing written, nothing created


def test_the_shared_case_outputs_over_inputs_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The rescore forms of ../shared/cases/output-path-overwrites-input (4, 5, 6 of its README)."""
    case = SHARED / "cases" / "output-path-overwrites-input"
    if not case.exists():
        pytest.skip(f"shared case not found: {case}")
    monkeypatch.chdir(tmp_path)
    forms = [
        ["-o", "out.jsonl", "--tasks", "tasks.jsonl", "--failures", "tasks.jsonl"],
        ["-o", "tasks.jsonl", "--tasks", "tasks.jsonl"],
        ["-o", "same.jsonl"],
    ]
    for opts in forms:
        for name in ("rollouts.jsonl", "tasks.jsonl"):
            (tmp_path / name).unlink(missing_ok=True)
            (tmp_path / name).write_bytes((case / name).read_bytes())
        (tmp_path / "same.jsonl").unlink(missing_ok=True)
        os.link(tmp_path / "rollouts.jsonl", tmp_path / "same.jsonl")
        before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
        res = runner.invoke(app, ["rescore", "rollouts.jsonl", *opts, "-s", "http://127.0.0.1:9"], env={"GYMVERL_VERIFY_URL": ""})
        assert res.exit_code == 2 and "inputs are never overwritten" in res.output, (opts, res.output)
        assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_an_existing_file_that_is_not_a_rescore_output_is_not_replaced(tmp_path: Path) -> None:
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    make_input(inp, 5)
    with FakeServer() as srv:
        for victim in (out, default_failures_path(out)):
            victim.write_text("my notes\n")
            with pytest.raises(RescoreError, match=f"{victim.name} already exists and is not from a gymverl rescore run"):
                rescore_file(inp, out, [srv.url])
            assert victim.read_text() == "my notes\n" and not state_path(out).exists()
            victim.unlink()
        out.write_text("my notes\n")
        assert rescore_file(inp, out, [srv.url], overwrite=True).complete  # asked for: replaced
    check_exactly_once(inp, out, default_failures_path(out))


def test_a_finished_rescore_output_is_not_emptied_by_a_rerun(tmp_path: Path) -> None:
    """Re-running over a finished run's output (a pasted command, the verifier down) left it empty:
    its rows are kept unless --overwrite; with --overwrite (or an empty earlier output) it is replaced.
    (The verifier down is now refused first, before the output is looked at: kept either way.)"""
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    make_input(inp, 5)
    with FakeServer() as srv:
        assert rescore_file(inp, out, [srv.url]).complete
    before = out.read_bytes()
    with pytest.raises(RescoreError, match="does not answer"):
        rescore_file(inp, out, [_closed_url()], retries=0)
    assert out.read_bytes() == before and read_state(out)["complete"]  # type: ignore[index]
    with FakeServer() as srv:
        with pytest.raises(RescoreError, match="holds a finished rescore run .5 lines.; pass --overwrite"):
            rescore_file(inp, out, [srv.url], retries=0)
        assert srv.stats()["requests"] == 0
    assert out.read_bytes() == before and read_state(out)["complete"]  # type: ignore[index]
    with FakeServer() as srv:
        assert rescore_file(inp, out, [srv.url], overwrite=True).complete
    check_exactly_once(inp, out, default_failures_path(out))


def _assert_cut_back_to_checkpoint(out: Path) -> int:
    """After a failed run: the files hold whole lines only, exactly as far as the checkpoint says;
    no temp or lock file is left."""
    state = read_state(out)
    assert state is not None and not state["complete"]
    fails = default_failures_path(out)
    assert out.stat().st_size == state["output_bytes"]
    assert (fails.stat().st_size if fails.exists() else 0) == state["failures_bytes"]
    rows = read_jsonl(out) + read_jsonl(fails)  # every line parses: nothing half-written
    assert len(rows) == state["lines_done"]
    left = [p.name for p in out.parent.iterdir() if p.name.endswith((".tmp", ".lock"))]
    assert not left, left
    return state["lines_done"]


def _file_size_limit(limit: int) -> Any:
    def pre() -> None:
        import resource

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # so write() fails with EFBIG instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return pre


@pytest.mark.timeout(240)
def test_a_file_size_limit_mid_run_stops_at_once_and_resume_is_exact(tmp_path: Path) -> None:
    """Before the fix: the write error killed a background task nobody awaited and the run hung
    forever (more than the 1024-line window left after it)."""
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    make_input(inp, 1500)
    with FakeServer() as srv:
        args = _cli(str(inp), "-o", str(out), "-s", srv.url, "--json")
        start = time.monotonic()
        res = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=90, preexec_fn=_file_size_limit(256 * 1024))
        assert time.monotonic() - start < 60
        assert res.returncode == 1, res.stderr
        assert _error_lines(res.stderr) == [f"error: {out}: file too large (a file-size limit was reached)."]
        done = _assert_cut_back_to_checkpoint(out)
        assert 0 <= done < 1500
        res = subprocess.run(args + ["--resume"], cwd=REPO, capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, res.stderr
        assert json.loads(res.stdout)["resumed_from_line"] == done
    check_exactly_once(inp, out, default_failures_path(out))


@pytest.fixture
def small_disk(tmp_path: Path) -> Any:
    """A 1 MB tmpfs (root only; skipped where mounting is not permitted), grown by calling it."""
    where = tmp_path / "small"
    where.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(where)], capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {res.stderr.strip() or res.returncode}")

    def grow(size: str = "32m") -> None:
        subprocess.run(["mount", "-o", f"remount,size={size}", str(where)], check=True)

    try:
        yield where, grow
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


@pytest.mark.timeout(240)
def test_a_full_disk_mid_run_stops_at_once_and_resume_is_exact(tmp_path: Path, small_disk: Any) -> None:
    where, grow = small_disk
    inp, out = tmp_path / "in.jsonl", where / "out.jsonl"
    make_input(inp, 2000)
    with FakeServer() as srv:
        args = _cli(str(inp), "-o", str(out), "-s", srv.url, "--json")
        start = time.monotonic()
        res = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=90)
        assert time.monotonic() - start < 60
        assert res.returncode == 1, res.stderr  # disk full is not a usage error (was 2)
        (line,) = _error_lines(res.stderr)
        assert line.startswith("error: ") and line.endswith(": no space left on device."), line
        done = _assert_cut_back_to_checkpoint(out)
        grow()
        res = subprocess.run(args + ["--resume"], cwd=REPO, capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, res.stderr
        assert json.loads(res.stdout)["resumed_from_line"] == done
    check_exactly_once(inp, out, default_failures_path(out))


@pytest.mark.timeout(120)
def test_a_crash_on_one_line_deep_in_a_long_file_stops_the_run_naming_the_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Any exception in a worker ends the run at once (it used to hang with >1024 lines after it)."""
    import gc

    import gymverl.rescore.run as rescore_mod  # where the run calls build_request

    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    make_input(inp, 2000)
    real = rescore_mod.build_request

    def flaky(record: Any, extra: Any = None, *more: Any) -> Any:
        if record["response"]["id"] == "resp_499":
            raise ValueError("boom")
        return real(record, extra, *more)

    monkeypatch.setattr(rescore_mod, "build_request", flaky)
    with FakeServer() as srv:
        with pytest.raises(RunError, match=r"in\.jsonl: line 500: gymverl failed on this line \(ValueError: boom\)") as info:
            rescore_file(inp, out, [srv.url], concurrency=8)
        assert info.value.exit_code == 1
        gc.collect()
        assert not [r for r in caplog.records if r.name == "asyncio"], [r.getMessage() for r in caplog.records]
        done = _assert_cut_back_to_checkpoint(out)
        assert done < 500
        monkeypatch.setattr(rescore_mod, "build_request", real)
        summary = rescore_file(inp, out, [srv.url], resume=True)
    assert summary.complete and summary.resumed_from == done
    check_exactly_once(inp, out, default_failures_path(out))


@pytest.mark.timeout(120)
def test_a_failing_checkpoint_write_stops_the_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The background checkpoint writer (a thread) failing with a full disk: exit 1, no hang."""
    import errno

    import gymverl.rescore.checkpoint as rescore_mod  # the checkpoint writer

    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    make_input(inp, 600)
    calls = {"n": 0}
    real = rescore_mod._write_state

    def fill_up(path: Path, state: dict[str, Any]) -> None:
        calls["n"] += 1
        if calls["n"] > 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real(path, state)

    monkeypatch.setattr(rescore_mod, "_write_state", fill_up)
    monkeypatch.setattr(rescore_mod, "CHECKPOINT_SECONDS", 0.0)
    with FakeServer("--latency", "0.005") as srv:
        with pytest.raises(RunError, match=r"rescore-state: no space left on device\.") as info:
            rescore_file(inp, out, [srv.url], concurrency=4)
    assert info.value.exit_code == 1
    _assert_cut_back_to_checkpoint(out)


def test_tasks_join_with_a_numeric_tool_name_and_deep_values(tmp_path: Path) -> None:
    """The --tasks join and the request must not crash: a tool named by a number next to a named one
    (sorting them raised TypeError; such a rollout is now rejected as `bad_tools`, as validate and
    to-parquet reject it), values nested past orjson's 254."""
    deep: Any = "x"
    for _ in range(300):
        deep = [deep]
    rows = make_input(tmp_path / "seed.jsonl", 6)
    for i, r in enumerate(rows):
        r["_ng_task_index"] = i
        r["responses_create_params"]["tools"] = [{"type": "function", "name": "a"}, {"type": "function", "name": 5 if i == 4 else "b"}]
        if i % 2:
            r["responses_create_params"]["input"][-1]["content"] = [{"type": "input_text", "text": "q", "extra": deep}]
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text("".join(json.dumps({k: v for k, v in r.items() if k not in ("response", "reward")}) + "\n" for r in rows))
    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps({k: v for k, v in r.items() if k not in ("expected_answer", "question")}) + "\n" for r in rows))
    with FakeServer() as srv:
        summary = rescore_file(inp, tmp_path / "out.jsonl", [srv.url], tasks=tasks)
    assert summary.complete and summary.rescored == 5 and summary.joined_tasks == 5 and summary.rejected == 1
    assert [o.get("expected_answer") for o in read_jsonl(tmp_path / "out.jsonl")] == [r.get("expected_answer") for r in rows if r["_ng_task_index"] != 4]


def test_a_verifier_behind_a_compressing_proxy(tmp_path: Path) -> None:
    """../shared/cases/rescore-gzip-answers: every answer gzip-encoded (the client asks for it)."""
    case = SHARED / "cases" / "rescore-gzip-answers" / "rollouts.jsonl"
    inp = tmp_path / "in.jsonl"
    if case.exists():
        inp.write_bytes(case.read_bytes())
    else:
        make_input(inp, 2)
    n = len(inp.read_text().splitlines())
    out = tmp_path / "out.jsonl"
    with FakeServer("--compress", "gzip") as srv:
        res = runner.invoke(app, ["rescore", str(inp), "-o", str(out), "-s", srv.url, "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["rescored"] == n and data["failed"] == 0
    assert all(r["reward"] == fake_reward(r["response"]["id"]) for r in read_jsonl(out))


def test_a_gz_output_is_gzip_resumes_exactly_and_reads_back(tmp_path: Path) -> None:
    """../shared/cases/gz-named-output-is-plain-text, rescore part: `-o x.jsonl.gz` was plain text
    that gymverl's own readers then called corrupt. Each checkpoint ends a gzip member, so a
    resumed run (cut back to a checkpoint) still leaves one valid gzip stream."""
    import gzip

    from gymverl.records import validate_file

    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl.gz"
    make_input(inp, 120)
    lines = inp.read_text().splitlines()
    lines[4] = "{broken"
    inp.write_text("\n".join(lines) + "\n")
    fails = tmp_path / "out.failures.jsonl.gz"
    with FakeServer("--plan", "503", "--every", "7") as srv:
        a = rescore_file(inp, out, [srv.url], failures=fails, limit=50, retries=0)
        assert not a.complete
        b = rescore_file(inp, out, [srv.url], failures=fails, resume=True, retries=0)
        assert b.complete and b.lines == 120 and b.rejected == 1 and b.failed > 0
    with FakeServer() as srv:
        c = rescore_file(inp, out, [srv.url], failures=fails, retry_failed=True)
    assert c.complete and c.failed == 0 and c.rescored == 119
    assert out.read_bytes()[:2] == b"\x1f\x8b" and fails.read_bytes()[:2] == b"\x1f\x8b"
    plain_out, plain_fails = tmp_path / "o.jsonl", tmp_path / "f.jsonl"
    plain_out.write_bytes(gzip.decompress(out.read_bytes()))
    plain_fails.write_bytes(gzip.decompress(fails.read_bytes()))
    check_exactly_once(inp, plain_out, plain_fails)
    s = validate_file(out)  # gymverl's own reader takes it
    assert s.valid == 119 and s.rejected == 0


def _row_with_old_outputs(i: int) -> dict[str, Any]:
    return {
        "responses_create_params": {"input": [{"role": "user", "content": f"q{i}"}]},
        "response": {"id": f"resp_{i}", "output": [{"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "a"}]}]},
        "reward": 0.0,
        "question": f"q{i}",
        "verifier_metadata": {"task_id": f"T/{i}"},
        "extracted_answer": "stale",
        "base_status": "pass",
        "reward_components": {"x": 1.0},
        "_ng_task_index": i,
    }


def test_task_fields_sent_follow_the_servers_schema_else_a_warned_guess(tmp_path: Path) -> None:
    """Issue 12: what /verify gets besides the response is what its request model declares
    (`/openapi.json`); without a schema (or task file) the name heuristic decides and the run warns,
    naming the fields. verifier_metadata is a task field; old outputs are never sent back."""
    from gymverl.formats import FieldRules
    from gymverl.verify import build_request

    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps(_row_with_old_outputs(i)) + "\n" for i in range(3)))
    with FakeServer("--accepts", "question,verifier_metadata") as srv:
        s = rescore_file(inp, tmp_path / "a.jsonl", [srv.url])
        assert s.rescored == 3 and s.request_schemas == {srv.url: "schema"} and not s.guessed_fields
        assert s.warning() is None
    with FakeServer() as srv:  # no /openapi.json: a guess, reported once with the names
        s = rescore_file(inp, tmp_path / "b.jsonl", [srv.url])
        assert s.rescored == 3 and s.request_schemas == {srv.url: None}
        assert s.guessed_fields == {"question": True, "verifier_metadata": True, "extracted_answer": False, "base_status": False}
        w = s.warning() or ""
        assert "sent as task fields: question, verifier_metadata;" in w and "left out as verifier outputs: base_status, extracted_answer;" in w
        assert ".." not in w and ".;" not in w and w.endswith("to decide exactly.")  # one sentence, one full stop
    # The body itself: only the chosen task fields (and NeMo Gym's own keys), never the old verdict.
    body = build_request(_row_with_old_outputs(0), None, FieldRules().is_task_field)
    assert set(body) == {"responses_create_params", "response", "question", "verifier_metadata", "_ng_task_index"}
    body = build_request(_row_with_old_outputs(0), None, frozenset({"verifier_metadata"}).__contains__)
    assert set(body) == {"responses_create_params", "response", "verifier_metadata", "_ng_task_index"}


def test_an_empty_input_is_one_sentence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An empty rollout file: rescore printed a table of zeros and "rescored rollouts written" and
    exited 1 without a reason; validate and stats say "file is empty (no rollouts)", so does rescore."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty.jsonl").write_text("")
    with FakeServer() as srv:
        res = runner.invoke(app, ["rescore", "empty.jsonl", "-o", "out.jsonl", "-s", srv.url], env={"GYMVERL_VERIFY_URL": ""})
    assert res.exit_code == 1, res.output
    assert "error: empty.jsonl: file is empty (no rollouts)." in res.output and "rescored rollouts written" not in res.output


def test_rows_of_several_agents_sent_to_one_server_are_told_so() -> None:
    """`rescore --server <math_with_judge URL>` on rows of math_with_judge and xlam_fc: the xlam_fc
    rows fail 422 (question: Field required) and the advice was to re-join task fields with
    --tasks, which cannot help. With several agents on one pool, the advice is one server per agent."""
    from gymverl.rescore.summary import RescoreSummary

    s = RescoreSummary(input="in.jsonl", output="out.jsonl", failures_path="out.failures.jsonl")
    s.required_missing["question"] += 8
    s.agents |= {"math_with_judge_simple_agent", "xlam_fc_simple_agent"}
    w = s.warning() or ""
    assert "several agents (math_with_judge_simple_agent, xlam_fc_simple_agent)" in w and "--server AGENT=URL" in w
    assert "--tasks" not in w
    s.agents = {"math_with_judge_simple_agent"}
    assert "--tasks" in (s.warning() or "")


def test_the_rewards_went_down_warning_gives_its_advice_once() -> None:
    """With guessed task fields, the warning said "pass --tasks ... to decide exactly. Re-join task
    fields ... with --tasks ..." in one breath: the guess's part already gives that advice."""
    from gymverl.rescore.summary import RescoreSummary

    s = RescoreSummary("in.jsonl", "out.jsonl", "out.failures.jsonl", rescored=20, went_down=11)
    assert s.suspicious
    assert (s.warning() or "").count("--tasks") == 1 and "Re-join" in (s.warning() or "")  # no guess: the advice alone
    s.guessed_fields = {"question": True, "extracted_answer": False}
    w = s.warning() or ""
    assert w.count("--tasks") == 1 and "went down" in w and "task fields were guessed" in w, w
