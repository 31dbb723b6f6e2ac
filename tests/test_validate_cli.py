"""`gymverl validate` through the CLI: exit codes 0/1/2, --json, --rejects, one clear sentence per error."""

from __future__ import annotations

import json
from pathlib import Path

import orjson
import pytest
from typer.testing import CliRunner

from conftest import SAMPLE_DATA
from gymverl.cli import app
from test_records import BAD_INPUTS, GOOD

# Wide enough that rich never wraps a reason inside the table.
runner = CliRunner(env={"COLUMNS": "400", "NO_COLOR": "1", "TERM": "dumb"})


def invoke(*args: str):
    return runner.invoke(app, ["validate", *map(str, args)])


def write(tmp_path: Path, data: bytes, name: str = "rollouts.jsonl") -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


def test_all_valid_exits_0_with_summary(tmp_path):
    src = write(tmp_path, GOOD + b"\n" + GOOD + b"\n")
    r = invoke(src)
    assert r.exit_code == 0, r.output
    assert "valid" in r.stdout and "rejected" in r.stdout
    assert "rejected lines" not in r.stdout
    assert r.stderr == ""


@pytest.mark.parametrize("name, data, number, code, reason", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_json_and_rejects_file(tmp_path, name, data, number, code, reason):
    src = write(tmp_path, data)
    rejects = tmp_path / "rejects.jsonl"
    r = invoke(src, "--json", "--rejects", rejects)
    assert r.exit_code == 1, r.output
    assert "Traceback" not in r.output
    summary = json.loads(r.stdout)  # nothing but JSON on stdout
    physical = data.count(b"\n") + (0 if data.endswith(b"\n") else 1)
    assert (summary["lines"], summary["valid"], summary["rejected"]) == (physical, physical - 1, 1)
    assert summary["rejections"] == [{"line": number, "code": code, "reason": reason}]
    assert summary["rejected_by_reason"] == {code: 1}
    rows = [orjson.loads(x) for x in rejects.read_bytes().splitlines()]
    raw = data.split(b"\n")[number - 1].decode("utf-8", "replace")
    assert rows == [{"line": number, "code": code, "reason": reason, "raw": raw}]


@pytest.mark.parametrize("name, data, number, code, reason", BAD_INPUTS[:6], ids=[c[0] for c in BAD_INPUTS[:6]])
def test_bad_input_text_report_names_line_and_reason(tmp_path, name, data, number, code, reason):
    r = invoke(write(tmp_path, data))
    assert r.exit_code == 1
    assert "Traceback" not in r.output
    row = next(x for x in r.stdout.splitlines() if reason in x)
    assert row.split()[1] == str(number) or row.split()[0] == str(number)
    assert f"{code}: 1" in r.stdout


def test_rejects_file_only_written_with_option_and_lists_each_bad_line(tmp_path):
    src = write(tmp_path, b"\n".join([GOOD, b"[1]", GOOD, b"{oops", b""]) + b"\n")
    rejects = tmp_path / "out" / "rejects.jsonl"
    r = invoke(src, "--rejects", rejects)
    assert r.exit_code == 1
    assert f"rejected lines written to {rejects}" in " ".join(r.stdout.split())
    rows = [orjson.loads(x) for x in rejects.read_bytes().splitlines()]
    assert [(x["line"], x["code"], x["raw"]) for x in rows] == [
        (2, "not_object", "[1]"),
        (4, "invalid_json", "{oops"),
    ]  # line 5 is blank: skipped and counted, not a rejection
    assert all(set(x) == {"line", "code", "reason", "raw"} for x in rows)


def test_rejects_raw_is_cut_at_64kb(tmp_path):
    bad = b'{"responses_create_params": {"input": "' + b"q" * 100_000 + b'"}}'
    src = write(tmp_path, bad + b"\n")
    rejects = tmp_path / "rej.jsonl"
    r = invoke(src, "--rejects", rejects, "--max-line-mb", "0.05")
    assert r.exit_code == 1
    (row,) = [orjson.loads(x) for x in rejects.read_bytes().splitlines()]
    assert row["code"] == "line_too_long"
    assert row["reason"] == "line is 100 KB, over the 50 KB limit per line"  # 100,041 bytes
    assert row["raw"] == bad[:50_002].decode() and row["raw_truncated"] is True  # read up to the limit + "\r\n"
    r2 = invoke(src, "--rejects", rejects)  # under the default limit: a whole-line reject, raw cut at 64 KB
    assert r2.exit_code == 1
    (row,) = [orjson.loads(x) for x in rejects.read_bytes().splitlines()]
    assert row["code"] == "missing_key"
    assert row["raw"] == bad[: 64 * 1024].decode() and row["raw_truncated"] is True


def test_empty_file_exits_1_with_one_sentence(tmp_path):
    src = write(tmp_path, b"")
    r = invoke(src)
    assert r.exit_code == 1
    assert r.stderr.strip() == f"error: {src}: file is empty (no rollouts)."
    rj = invoke(src, "--json")
    assert rj.exit_code == 1
    assert json.loads(rj.stdout)["error"] == "file is empty"


def test_50mb_line_via_cli(tmp_path):
    src = tmp_path / "big.jsonl"
    with open(src, "wb") as f:
        f.write(GOOD + b"\n" + b'{"x": "' + b"z" * 50_000_000 + b'"}\n' + GOOD + b"\n")
    r = invoke(src, "--json")
    assert r.exit_code == 1
    s = json.loads(r.stdout)
    assert s["rejections"] == [
        {"line": 2, "code": "line_too_long", "reason": "line is 50 MB, over the 16 MB limit per line"}
    ]
    assert (s["valid"], s["rejected"]) == (2, 1)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p / "missing.jsonl", "{p}: no such file."),
        (lambda p: p, "{p}: is a directory, not a JSONL file."),
    ],
)
def test_missing_path_or_directory_exits_2(tmp_path, make, message):
    target = make(tmp_path)
    r = invoke(target)
    assert r.exit_code == 2
    assert r.stderr.strip() == "error: " + message.format(p=target)
    assert "Traceback" not in r.output and r.stdout == ""


def test_usage_errors_exit_2(tmp_path):
    src = write(tmp_path, GOOD + b"\n")
    assert invoke(src, "--no-such-option").exit_code == 2
    assert invoke().exit_code == 2
    r = invoke(src, "--max-line-mb", "0")
    assert r.exit_code == 2
    assert r.stderr.strip() == "error: --max-line-mb must be above 0 and at most 100000 MB, not 0."  # names the option now


def test_json_summary_of_sample_rollouts():
    r = invoke(SAMPLE_DATA / "rollouts.jsonl", "--json")
    assert r.exit_code == 0, r.output
    s = json.loads(r.stdout)
    rows = [json.loads(x) for x in (SAMPLE_DATA / "rollouts.jsonl").read_text().splitlines()]
    assert (s["lines"], s["valid"], s["rejected"]) == (len(rows), len(rows), 0)
    assert s["tasks"] == len({r["_ng_task_index"] for r in rows})
    assert s["incomplete"] == sum(1 for r in rows if r["response"].get("status") != "completed")
    assert s["reward"]["mean"] == pytest.approx(sum(r["reward"] for r in rows) / len(rows))


def test_text_summary_of_sample_rollouts():
    r = invoke(SAMPLE_DATA / "rollouts.jsonl")
    assert r.exit_code == 0
    out = r.stdout
    for label in ("lines", "valid", "tasks", "rollouts per task", "reward", "incomplete responses", "reward histogram"):
        assert label in out
    assert "math_with_judge_simple_agent" in out


def test_tasks_flag():
    ok = invoke(SAMPLE_DATA / "tasks.jsonl", "--tasks", "--json")
    assert ok.exit_code == 0 and json.loads(ok.stdout)["rejected"] == 0
    as_rollouts = invoke(SAMPLE_DATA / "tasks.jsonl", "--json")
    assert as_rollouts.exit_code == 1
    assert json.loads(as_rollouts.stdout)["rejected_by_reason"] == {"missing_key": 5}


def test_gzip_input_and_corrupt_gzip(tmp_path):
    import gzip

    good = write(tmp_path, gzip.compress(GOOD + b"\n" + GOOD + b"\n"), "r.jsonl.gz")
    r = invoke(good, "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["valid"] == 2
    bad = write(tmp_path, gzip.compress(GOOD + b"\n" * 2000)[:-20], "bad.jsonl.gz")
    r = invoke(bad)
    assert r.exit_code == 2
    assert r.stderr.startswith(f"error: {bad}: corrupt or truncated gzip data after line")
    assert "Traceback" not in r.output


@pytest.mark.parametrize("link", ["same", "symlink", "hardlink"])
def test_rejects_file_cannot_be_the_input(tmp_path, link):
    # The one wording every command uses for an output that is an input (gymverl.files.check_outputs).
    src = write(tmp_path, GOOD + b"\n[1]\n")
    rejects = src if link == "same" else tmp_path / "rej.jsonl"
    if link == "symlink":
        rejects.symlink_to(src)
    elif link == "hardlink":
        rejects.hardlink_to(src)
    r = invoke(src, "--rejects", rejects)
    assert r.exit_code == 2
    assert r.stderr.startswith(f"error: output {rejects} ")
    assert f"the input {src}; choose another output path" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert src.read_bytes() == GOOD + b"\n[1]\n"  # untouched


def test_a_tasks_file_checked_as_rollouts_gets_the_input_kind_hint(tmp_path):
    """`validate sample_data/tasks.jsonl` said "missing required key 'response'" 5 times, exit 1, with
    no hint, while to-parquet recognises a tasks file: validate's summary now says to check it with
    --input-kind tasks (the same detection, gymverl.convert.detect_input_kind); a rollouts file
    with a bad line gets no such hint."""
    tasks = SAMPLE_DATA / "tasks.jsonl"
    res = invoke(tasks)
    assert res.exit_code == 1
    assert f"warning: {tasks} looks like a NeMo Gym tasks file (no 'response' in its lines): check it with --input-kind tasks." in res.output
    data = json.loads(invoke(tasks, "--json").stdout)
    assert any("--input-kind tasks" in w for w in data["warnings"])
    assert invoke(tasks, "--input-kind", "tasks").exit_code == 0
    bad = write(tmp_path, (SAMPLE_DATA / "rollouts.jsonl").read_bytes() + b'{"responses_create_params": {}}\n')
    res = invoke(bad)
    assert res.exit_code == 1 and "--input-kind tasks" not in res.output


@pytest.mark.parametrize(
    "args",
    [["stats", "-"], ["validate", "-"], ["validate", "-", "--json"], ["--help"], ["stats", "--help"]],
    ids=["stats", "validate", "validate-json", "help", "command-help"],
)
def test_a_closed_output_pipe_exits_141_quietly(args):
    """`gymverl stats x | head -1`: once the reader is gone, exit 141 (128 + SIGPIPE, as `cat` does)
    with nothing on stderr; rich's own handler exited 1, the code for rejected input."""
    import os
    import subprocess
    import sys

    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader went away before the first write
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "gymverl.cli", *args],
            input=(SAMPLE_DATA / "rollouts.jsonl").read_bytes(),
            stdout=write_end,
            stderr=subprocess.PIPE,
            timeout=120,
            cwd=Path(__file__).resolve().parent.parent,
        )
    finally:
        os.close(write_end)
    assert (proc.returncode, proc.stderr.decode()) == (141, "")


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs Linux's /dev/full (a device that is always full)")
@pytest.mark.parametrize("args", [["--help"], ["to-parquet", "--help"], ["--version"]])
def test_help_to_a_full_disk_is_one_sentence(args):
    """`gymverl --help > /dev/full` printed a Python traceback (the error came before any command ran)."""
    import subprocess
    import sys

    with open("/dev/full", "wb") as full:
        proc = subprocess.run([sys.executable, "-m", "gymverl.cli", *args], stdout=full, stderr=subprocess.PIPE, timeout=120,
                              cwd=Path(__file__).resolve().parent.parent)  # fmt: skip
    assert (proc.returncode, proc.stderr.decode().strip()) == (1, "error: no space left on device.")


def test_rewards_near_the_double_limit_give_strict_json_and_no_crash(tmp_path: Path) -> None:
    """Two finite rewards of 1.7e308: their sum overflows. `stats` crashed in its table (int(inf)) and
    `--json` of stats and validate printed `Infinity`/`NaN`, which strict JSON parsers refuse."""
    row = json.loads((SAMPLE_DATA / "rollouts.jsonl").read_text().splitlines()[0])
    row["reward"] = 1.7e308
    p = tmp_path / "big.jsonl"
    p.write_text("".join(json.dumps({**row, "_ng_rollout_index": i}) + "\n" for i in range(2)))

    def strict(text: str) -> dict:
        def refuse(constant: str) -> None:
            raise AssertionError(f"not strict JSON: {constant}")

        return json.loads(text, parse_constant=refuse)

    runner = CliRunner()
    for command in ("stats", "validate"):
        r = runner.invoke(app, [command, str(p), "--json"])
        assert r.exit_code == 0, r.output
        data = strict(r.stdout)
        reward = data["overall"]["reward"] if command == "stats" else data["reward"]
        assert reward["mean"] is None and reward["max"] == 1.7e308  # the sum overflowed
        r = runner.invoke(app, [command, str(p)])
        assert r.exit_code == 0 and "overflow" in r.stdout and "internal error" not in r.output, r.output


def test_a_tasks_file_summary_has_no_rollout_rows() -> None:
    """`validate --input-kind tasks` showed "rollouts per task min 1" and "incomplete responses 0":
    a tasks file has neither."""
    res = runner.invoke(app, ["validate", str(SAMPLE_DATA / "tasks.jsonl"), "--input-kind", "tasks"])
    assert res.exit_code == 0, res.output
    assert "tasks" in res.output and "rollouts per task" not in res.output and "incomplete responses" not in res.output
    data = json.loads(runner.invoke(app, ["validate", str(SAMPLE_DATA / "tasks.jsonl"), "--input-kind", "tasks", "--json"]).stdout)
    assert data["input_kind"] == "tasks" and data["valid"] == 5
    res = runner.invoke(app, ["validate", str(SAMPLE_DATA / "rollouts.jsonl")])
    assert "rollouts per task" in res.output and "incomplete responses" in res.output
