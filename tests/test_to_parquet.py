"""`gymverl to-parquet` / gymverl.convert: accounting, selection against a naive reference, splits,
shards, atomic output, tasks-file input, and `datasets.load_dataset` on every format."""

from __future__ import annotations

import json
import random
from collections import defaultdict
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from conftest import SAMPLE_DATA
from gymverl.cli import app
from gymverl.convert import ConvertError, ConvertOptions, convert
from gymverl.select import SelectOptions

ROLLOUTS = SAMPLE_DATA / "rollouts.jsonl"
TASKS = SAMPLE_DATA / "tasks.jsonl"
runner = CliRunner()


def _records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _rows(out: Path, split: str = "train") -> list[dict[str, Any]]:
    files = sorted(out.glob(f"{split}*.parquet"))
    return [r for f in files for r in pq.read_table(f).to_pylist()]


def _reference_sft_lines(path: Path, *, min_reward: float | None = None, best_of_n: int | None = None,
                         drop_solved: bool = False, drop_unsolved: bool = False) -> set[int]:
    """Naive in-memory reference of the selection rules: the input line numbers that should become rows."""
    by_task: dict[int, list[tuple[int, dict[str, Any]]]] = defaultdict(list)
    for n, rec in enumerate(_records(path), start=1):
        by_task[rec["_ng_task_index"]].append((n, rec))
    keep: set[int] = set()
    for items in by_task.values():
        rewards = [r["reward"] for _, r in items]
        if drop_solved and all(x >= 1.0 for x in rewards):
            continue
        if drop_unsolved and not any(x >= 1.0 for x in rewards):
            continue
        cands = [(n, r) for n, r in items if r["response"]["status"] == "completed"]
        if min_reward is not None:
            cands = [(n, r) for n, r in cands if r["reward"] >= min_reward]
        cands.sort(key=lambda t: (-t[1]["reward"], t[0]))
        if best_of_n is not None:
            cands = cands[:best_of_n]
        keep.update(n for n, _ in cands)
    return keep


@pytest.mark.parametrize(
    "sel",
    [
        {},
        {"min_reward": 0.5},
        {"best_of_n": 1},
        {"drop_unsolved": True, "best_of_n": 2},
        {"drop_solved": True, "drop_unsolved": True, "min_reward": 1.0},
    ],
)
def test_sft_selection_matches_reference(tmp_path: Path, sel: dict[str, Any]) -> None:
    summary = convert(ROLLOUTS, tmp_path / "out", ConvertOptions(fmt="sft", select=SelectOptions(**sel)))
    rows = _rows(tmp_path / "out")
    assert {r["extra_info"]["line"] for r in rows} == _reference_sft_lines(ROLLOUTS, **sel)
    assert summary.rows["train"] == len(rows)
    assert summary.lines == 20 and summary.accounted == 20
    assert [r["extra_info"]["index"] for r in rows] == list(range(len(rows)))


def test_grouping_does_not_depend_on_input_order_or_partitioning(tmp_path: Path) -> None:
    lines = ROLLOUTS.read_text().splitlines()
    random.Random(7).shuffle(lines)
    shuffled = tmp_path / "shuffled.jsonl"
    shuffled.write_text("\n".join(lines) + "\n")
    for sel, key in [
        # ties in best-of-n are broken by input order, so only (task, reward) must agree there
        (SelectOptions(best_of_n=2, drop_unsolved=True), lambda r: (r["extra_info"]["task_key"], r["extra_info"]["reward"])),
        (SelectOptions(drop_solved=True, dedup=True), lambda r: (r["extra_info"]["task_key"], r["messages"])),
    ]:
        a = convert(ROLLOUTS, tmp_path / "a", ConvertOptions(fmt="sft", select=sel))
        b = convert(shuffled, tmp_path / "b", ConvertOptions(fmt="sft", select=sel, partition_bytes=2000))  # many partitions
        assert sorted(map(key, _rows(tmp_path / "a"))) == sorted(map(key, _rows(tmp_path / "b")))
        assert a.filtered == b.filtered and a.tasks == b.tasks == 5


def _with_bad_lines(tmp_path: Path) -> tuple[Path, dict[int, str]]:
    lines = ROLLOUTS.read_text().splitlines()
    no_answer = json.loads(lines[0])
    no_answer["response"]["output"] = []
    # Another repeat of line 1's task (the same (task, repeat) twice would be a repeated rollout).
    no_answer["_ng_rollout_index"] = 1000
    bad = {
        3: ('{"responses_create_params": {"input": "hi"}, "response": ', "invalid_json"),
        6: ("[1, 2, 3]", "not_object"),
        9: (json.dumps({"responses_create_params": {"input": "hi"}, "response": {"output": []}}), "missing_key"),
        12: (json.dumps(no_answer), "no_assistant_turn"),
    }
    out: list[str] = []
    for n in range(1, len(lines) + len(bad) + 1):
        out.append(bad[n][0] if n in bad else lines.pop(0))
    p = tmp_path / "mixed.jsonl"
    p.write_text("\n".join(out) + "\n")
    return p, {n: code for n, (_, code) in bad.items()}


@pytest.mark.parametrize(
    "fmt, sel, row_error",
    [
        # The answerless rollout is an `empty_answer` filter by default (issue 12 item 8); with that
        # rule off it is kept, so building its row fails (a rejection).
        ("sft", {}, False),
        ("sft", {"drop_empty_answers": False}, True),  # streaming
        ("sft", {"best_of_n": 10, "drop_empty_answers": False}, True),  # grouped: the broken rollout is kept, so building its row fails
        ("rl", {}, False),  # rl rows need only the prompt
        ("dpo", {}, False),  # its task has only reward-1.0 rollouts: counted as unpaired before any row is built
    ],
)
def test_every_line_is_accounted_for(tmp_path: Path, fmt: str, sel: dict[str, Any], row_error: bool) -> None:
    src, bad = _with_bad_lines(tmp_path)
    if not row_error:
        bad = {n: c for n, c in bad.items() if c != "no_assistant_turn"}
    rejects = tmp_path / "rejects.jsonl"
    summary = convert(src, tmp_path / fmt, ConvertOptions(fmt=fmt, select=SelectOptions(**sel), rejects_path=rejects))
    assert summary.lines == 24
    assert summary.rejected + sum(summary.filtered.values()) + summary.kept_lines == 24
    got = {r["line"]: r["code"] for r in _records(rejects)}
    assert got == bad
    assert all(r["raw"] and r["reason"] for r in _records(rejects))
    if fmt == "sft" and not row_error:
        assert summary.filtered["empty_answer"] == 1


def test_cli_reports_rejections_and_exit_code(tmp_path: Path) -> None:
    src, bad = _with_bad_lines(tmp_path)
    res = runner.invoke(app, ["to-parquet", str(src), "-o", str(tmp_path / "o"), "--json", "--keep-empty-answers"])
    assert res.exit_code == 1
    data = json.loads(res.stdout)
    assert {r["line"] for r in data["rejections"]} == set(bad)
    assert data["lines"] == data["rejected"] + sum(data["filtered"].values()) + data["kept_lines"]
    res = runner.invoke(app, ["to-parquet", str(ROLLOUTS), "-o", str(tmp_path / "ok")])
    assert res.exit_code == 0, res.output
    assert "filtered: incomplete" in res.stdout and "train" in res.stdout


def test_val_split_is_by_task_and_stable(tmp_path: Path) -> None:
    opts = ConvertOptions(fmt="sft", select=SelectOptions(val_fraction=0.5, drop_incomplete=False))
    convert(ROLLOUTS, tmp_path / "a", opts)
    convert(ROLLOUTS, tmp_path / "b", opts)
    train, val = _rows(tmp_path / "a", "train"), _rows(tmp_path / "a", "val")
    assert train and val and len(train) + len(val) == 20
    t_tasks = {r["extra_info"]["task_key"] for r in train}
    v_tasks = {r["extra_info"]["task_key"] for r in val}
    assert not t_tasks & v_tasks
    assert all(r["extra_info"]["split"] == "val" for r in val)
    assert _rows(tmp_path / "b", "val") == val  # same split, same rows on a rerun
    # RL rows from the tasks file put each task in the same split as its rollouts.
    convert(TASKS, tmp_path / "rl", ConvertOptions(fmt="rl", select=SelectOptions(val_fraction=0.5)))
    assert {r["extra_info"]["task_key"] for r in _rows(tmp_path / "rl", "val")} == v_tasks


def test_shards_and_stale_shards(tmp_path: Path) -> None:
    out = tmp_path / "out"
    s = convert(ROLLOUTS, out, ConvertOptions(fmt="sft", shard_size=4))
    names = sorted(p.name for p in out.glob("*.parquet"))
    assert names == [f"train-{i:05d}-of-00005.parquet" for i in range(5)]  # 19 rows
    assert [pq.read_metadata(out / n).num_rows for n in names] == [4, 4, 4, 4, 3]
    assert s.files["train"] == [str(out / n) for n in names]
    s = convert(ROLLOUTS, out, ConvertOptions(fmt="sft", shard_size=3, select=SelectOptions(val_fraction=0.4)))
    for split in ("train", "val"):
        k = -(-s.rows[split] // 3)
        assert k > 0 and sorted(p.name for p in out.glob(f"{split}*.parquet")) == [f"{split}-{i:05d}-of-{k:05d}.parquet" for i in range(k)]
    convert(ROLLOUTS, out, ConvertOptions(fmt="sft"))  # no shards, no val split: the old files go
    assert sorted(p.name for p in out.iterdir()) == ["train.parquet"]  # no temp files or spill directories either


def test_dry_run_writes_nothing(tmp_path: Path) -> None:
    res = runner.invoke(app, ["to-parquet", str(ROLLOUTS), "-o", str(tmp_path / "o"), "--format", "dpo", "--dry-run", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["rows"]["train"] > 0
    assert not (tmp_path / "o").exists()


def test_failed_run_leaves_previous_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    convert(ROLLOUTS, out, ConvertOptions(fmt="sft"))
    before = (out / "train.parquet").read_bytes()
    import gymverl.convert as conv

    def boom(*a: Any, **k: Any) -> Any:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(conv.sft_fmt, "sft_row", boom)
    with pytest.raises(RuntimeError):
        convert(ROLLOUTS, out, ConvertOptions(fmt="sft", batch_rows=1))
    assert (out / "train.parquet").read_bytes() == before
    assert sorted(p.name for p in out.iterdir()) == ["train.parquet"]


def test_rl_from_tasks_and_from_rollouts(tmp_path: Path) -> None:
    s = convert(TASKS, tmp_path / "t", ConvertOptions(fmt="rl"))
    assert s.input_kind == "tasks" and s.rows["train"] == 5
    rows = _rows(tmp_path / "t")
    tasks = _records(TASKS)
    assert [r["reward_model"]["ground_truth"] for r in rows[:3]] == [t["expected_answer"] for t in tasks[:3]]
    assert all(r["extra_info"]["n"] is None for r in rows)
    s = convert(ROLLOUTS, tmp_path / "r", ConvertOptions(fmt="rl", select=SelectOptions(drop_solved=True, drop_unsolved=True)))
    rows = _rows(tmp_path / "r")
    by_task = defaultdict(list)
    for rec in _records(ROLLOUTS):
        by_task[rec["_ng_task_index"]].append(rec["reward"])
    expect = {i: sum(x >= 1 for x in v) / len(v) for i, v in by_task.items() if 0 < sum(x >= 1 for x in v) < len(v)}
    assert {int(r["extra_info"]["task_key"].split("#")[1]): r["extra_info"]["pass_rate"] for r in rows} == expect
    assert s.filtered == {"solved": 4, "unsolved": 4} and s.kept_lines == 12


@pytest.mark.parametrize("fmt", ["sft", "dpo"])
def test_tasks_with_a_format_that_holds_no_task_fields_is_said_unread(tmp_path: Path, fmt: str) -> None:
    """sft/dpo rows hold no task fields: --tasks printed "task fields joined 0 from tasks.jsonl", as
    if the join had failed. Now it is not read, and a warning says why."""
    s = convert(ROLLOUTS, tmp_path / "o", ConvertOptions(fmt=fmt, tasks_path=TASKS))
    assert s.task_source is None and s.to_dict()["task_fields"]["source"] is None
    assert [w for w in s.warnings if w.startswith("--tasks ")] == [f"--tasks {TASKS} was not read: {fmt} rows hold no task fields (only --format rl joins them)."]
    res = runner.invoke(app, ["to-parquet", str(ROLLOUTS), "--tasks", str(TASKS), "-f", fmt, "-o", str(tmp_path / "cli")])
    assert res.exit_code == 0 and "task fields joined" not in res.output and "was not read" in " ".join(res.output.split())


def test_tasks_file_decides_task_fields(tmp_path: Path) -> None:
    slim = tmp_path / "tasks.jsonl"
    slim.write_text("\n".join(json.dumps({"responses_create_params": t["responses_create_params"], "expected_answer": t.get("expected_answer")}) for t in _records(TASKS)) + "\n")
    convert(ROLLOUTS, tmp_path / "a", ConvertOptions(fmt="rl", tasks_path=slim))
    convert(ROLLOUTS, tmp_path / "b", ConvertOptions(fmt="rl"))
    with_tasks = json.loads(_rows(tmp_path / "a")[0]["extra_info"]["nemo_gym"])["task"]
    heuristic = json.loads(_rows(tmp_path / "b")[0]["extra_info"]["nemo_gym"])["task"]
    assert set(with_tasks) == {"expected_answer"}
    assert set(heuristic) == {"question", "expected_answer"}  # extracted_answer, library_reward, ... excluded


def test_max_tokens_uses_the_chat_template(tmp_path: Path, tiny_model: Path) -> None:
    from transformers import AutoTokenizer

    from gymverl.messages import chat_tools, rollout_messages

    tok = AutoTokenizer.from_pretrained(str(tiny_model))
    lengths = {}
    for n, rec in enumerate(_records(ROLLOUTS), start=1):
        if rec["response"]["status"] == "completed":
            tools = chat_tools(rec["responses_create_params"].get("tools")) or None
            ids = tok.apply_chat_template(rollout_messages(rec), tools=tools, tokenize=True)
            lengths[n] = len(ids["input_ids"] if hasattr(ids, "keys") else ids)
    limit = sorted(lengths.values())[len(lengths) // 2]
    res = runner.invoke(app, ["to-parquet", str(ROLLOUTS), "-o", str(tmp_path / "o"), "--max-tokens", str(limit), "--tokenizer", str(tiny_model), "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["filtered"]["max_tokens"] == sum(v > limit for v in lengths.values()) > 0
    assert {r["extra_info"]["line"] for r in _rows(tmp_path / "o")} == {n for n, v in lengths.items() if v <= limit}


@pytest.mark.parametrize(
    "args, message",
    [
        (["--format", "sft", str(TASKS)], "tasks file"),
        (["--format", "rl", "--best-of-n", "2", str(ROLLOUTS)], "one row per task"),
        (["--max-tokens", "10", str(ROLLOUTS)], "--tokenizer"),
        (["--format", "xml", str(ROLLOUTS)], "--format"),
        (["--val-fraction", "0.2", str(ROLLOUTS), "-o", "x.parquet"], "directory"),
        (["/nonexistent/rollouts.jsonl"], "no such file"),
    ],
)
def test_usage_errors_exit_2(tmp_path: Path, args: list[str], message: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    if "-o" not in args:
        args = [*args, "-o", str(tmp_path / "o")]
    res = runner.invoke(app, ["to-parquet", *args])
    assert res.exit_code == 2, res.output
    assert message in res.output and "Traceback" not in res.output
    assert not list(tmp_path.glob("o/*"))


def test_library_errors_are_convert_errors(tmp_path: Path) -> None:
    with pytest.raises(ConvertError, match="tasks file"):
        convert(TASKS, tmp_path / "o", ConvertOptions(fmt="dpo"))


@pytest.mark.parametrize("fmt", ["rl", "sft", "dpo"])
def test_datasets_load_every_format(tmp_path: Path, fmt: str) -> None:
    import datasets

    s = convert(ROLLOUTS, tmp_path / fmt, ConvertOptions(fmt=fmt, select=SelectOptions(val_fraction=0.4), shard_size=3))
    for split, files in s.files.items():
        ds = datasets.load_dataset("parquet", data_files=files, cache_dir=str(tmp_path / "hf"))["train"]
        assert len(ds) == s.rows[split] > 0
        assert {r["split"] for r in ds["extra_info"]} == {split}
        if fmt == "sft":
            assert all(isinstance(json.loads(v), list) for v in ds["messages"])
        if fmt == "dpo":  # message lists, decoded by datasets (List(Json())), as TRL's DPOTrainer reads them
            assert all(isinstance(v, list) and v[0]["role"] == "assistant" for v in ds["chosen"])


def test_tasks_input_keeps_every_task_field(tmp_path: Path) -> None:
    """A tasks file has no verifier outputs: even names the heuristic would drop stay task fields."""
    rec = {**_records(TASKS)[0], "num_expected": 1, "judge_prompt": "Compare the answers."}
    p = tmp_path / "tasks.jsonl"
    p.write_text(json.dumps(rec) + "\n")
    convert(p, tmp_path / "o", ConvertOptions(fmt="rl"))
    task = json.loads(_rows(tmp_path / "o")[0]["extra_info"]["nemo_gym"])["task"]
    assert task == {k: v for k, v in rec.items() if k not in ("responses_create_params", "agent_ref")}


@pytest.mark.parametrize("fmt, sel", [("sft", {}), ("sft", {"best_of_n": 2, "dedup": True}), ("rl", {}), ("dpo", {})])
def test_worker_processes_give_the_same_result(tmp_path: Path, fmt: str, sel: dict[str, Any]) -> None:
    src, _ = _with_bad_lines(tmp_path)
    out = {}
    for workers in (1, 2):
        rej = tmp_path / f"rejects-{workers}.jsonl"
        s = convert(src, tmp_path / f"w{workers}", ConvertOptions(fmt=fmt, select=SelectOptions(**sel), workers=workers, rejects_path=rej))
        d = s.to_dict()
        for k in ("seconds", "lines_per_second", "output", "files", "bytes_written"):
            d.pop(k)
        out[workers] = (d, _rows(tmp_path / f"w{workers}"), sorted(map(json.dumps, _records(rej))))
    assert out[1] == out[2]
    assert out[1][0]["rejected"] >= 3 and out[1][1]


# ---- single-file output and stale-output cleanup (issue 10) ------------------------------------


@pytest.mark.parametrize("fmt", ["sft", "rl", "dpo"])
def test_single_file_output(tmp_path: Path, fmt: str) -> None:
    # Before: commit() renamed the temp file to out.parquet, then deleted it as a "stale" val file: exit 2.
    out = tmp_path / "out.parquet"
    pq.write_table(pa.table({"older": [1]}), out)  # an older out.parquet
    res = runner.invoke(app, ["to-parquet", str(ROLLOUTS), "-o", str(out), "-f", fmt, "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["files"] == {"train": [str(out)]}
    assert pq.read_metadata(out).num_rows == summary["rows"]["train"] > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.parquet"]  # no temp, lock or scratch left


def test_single_file_shards_replace_only_their_own_earlier_files(tmp_path: Path) -> None:
    out = tmp_path / "out.parquet"
    s = convert(ROLLOUTS, out, ConvertOptions(shard_size=5))
    assert s.files["train"] == [str(tmp_path / f"out-{i:05d}-of-00004.parquet") for i in range(4)]
    # Files named like outputs that gymverl did not write stay: a user's note, and an input file.
    (tmp_path / "out-00009-of-00010.parquet").write_text("my notes, not parquet")
    data = tmp_path / "val.parquet"
    data.write_bytes(ROLLOUTS.read_bytes())
    d = tmp_path / "d"
    d.mkdir()
    (d / "val.parquet").hardlink_to(data)
    s = convert(ROLLOUTS, out, ConvertOptions())
    assert s.files["train"] == [str(out)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d", "out-00009-of-00010.parquet", "out.parquet", "val.parquet"]
    assert any("out-00009-of-00010.parquet" in w and "not written by gymverl" in w for w in s.warnings)
    # The stale-split cleanup of a directory never deletes an input (here a hard link of it).
    s = convert(d / "val.parquet", d, ConvertOptions())
    assert sorted(p.name for p in d.iterdir()) == ["train.parquet", "val.parquet"]
    assert (d / "val.parquet").read_bytes() == ROLLOUTS.read_bytes()


def test_failed_single_file_run_keeps_the_existing_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out.parquet"
    convert(ROLLOUTS, out, ConvertOptions())
    before = out.read_bytes()
    import gymverl.convert as conv

    def boom(*a: Any, **k: Any) -> Any:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(conv.sft_fmt, "sft_row", boom)
    with pytest.raises(RuntimeError):
        convert(ROLLOUTS, out, ConvertOptions(batch_rows=1))
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.parquet"]


def test_single_file_case_from_the_issue(tmp_path: Path) -> None:
    from conftest import SHARED

    case = SHARED / "cases" / "single-file-parquet-output"
    if not case.is_dir():
        pytest.skip(f"shared case {case} not present")
    for fmt in ("sft", "rl", "dpo"):
        out = tmp_path / f"{fmt}.parquet"
        res = runner.invoke(app, ["to-parquet", str(case / "rollouts.jsonl"), "-o", str(out), "-f", fmt])
        assert res.exit_code == 0, res.output
        assert pq.read_metadata(out).num_rows > 0


# ---- rl rows that lack what their verifier reads (case verifier-metadata-dropped, mcqa) -----------


def _mcqa_rollout(i: int, agent: str | None) -> dict[str, Any]:
    """An mcqa rollout as NeMo Gym's example rollouts have it: expected_answer kept, options and
    grading_mode (which mcqa's /verify reads) not."""
    row: dict[str, Any] = {
        "responses_create_params": {"input": [{"role": "user", "content": f"Question {i}?\nA: yes\nB: no"}]},
        "response": {"id": f"resp_{i}", "output": [{"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "\\boxed{A}"}]}]},
        "reward": 1.0,
        "expected_answer": "A",
        "extracted_answer": "A",
    }
    if agent is not None:
        row["agent_ref"] = {"type": "responses_api_agents", "name": agent}
    return row


def _write(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_rl_rows_naming_no_agent_say_their_verifier_cannot_be_checked(tmp_path: Path) -> None:
    """Rows without agent_ref and without a task file got only the generic "task fields were guessed"
    warning (exit 0 with --strict), though mcqa scores them all 0.0: now a specific one, naming what
    they carry, and --strict stops (exit 2) before anything is written."""
    src = _write(tmp_path / "mcqa.jsonl", [_mcqa_rollout(i, None) for i in range(3)])
    s = convert(src, tmp_path / "out", ConvertOptions(fmt="rl"))
    (w,) = [w for w in s.warnings if "name no agent" in w]
    assert w.startswith("3 RL rows name no agent (agent_ref)") and "they carry only: expected_answer," in w and "--tasks" in w
    with pytest.raises(ConvertError, match="--strict: 3 RL rows name no agent"):
        convert(src, tmp_path / "strict", ConvertOptions(fmt="rl", strict=True))
    assert not (tmp_path / "strict").exists()
    bare = [{k: v for k, v in _mcqa_rollout(i, None).items() if k in ("responses_create_params", "response", "reward", "_ng_task_index")} for i in range(2)]
    s = convert(_write(tmp_path / "bare.jsonl", bare), tmp_path / "bare", ConvertOptions(fmt="rl"))
    (w,) = [w for w in s.warnings if "name no agent" in w]
    assert "they carry no task field," in w and "none" not in w, w  # it said "they carry only: none"
    res = runner.invoke(app, ["to-parquet", str(src), "-f", "rl", "-o", str(tmp_path / "cli"), "--strict"])
    assert res.exit_code == 2 and "name no agent" in res.output and "Traceback" not in res.output


def test_rl_rows_lacking_fields_their_server_takes_name_them(tmp_path: Path, nemo_gym_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The fields come from the installed NeMo Gym's mcqa request model (what rescore reads from the
    server's /openapi.json); rows that carry every field their server takes (the sample data:
    math_with_judge, xlam_fc) get no such warning."""
    monkeypatch.setenv("GYMVERL_NEMO_GYM_ENV", str(nemo_gym_env))
    src = _write(tmp_path / "mcqa.jsonl", [_mcqa_rollout(i, "mcqa_simple_agent") for i in range(4)])
    s = convert(src, tmp_path / "out", ConvertOptions(fmt="rl"))
    (w,) = [w for w in s.warnings if "lack task fields" in w]
    assert w.startswith("4 RL rows of agent mcqa_simple_agent lack task fields that mcqa's /verify takes")
    assert "options (absent from 4 rows)" in w and "grading_mode (absent from 4 rows)" in w and "expected_answer" not in w
    with pytest.raises(ConvertError, match="--strict: 4 RL rows of agent mcqa_simple_agent lack"):
        convert(src, tmp_path / "strict", ConvertOptions(fmt="rl", strict=True))
    s = convert(SAMPLE_DATA / "rollouts.jsonl", tmp_path / "sample", ConvertOptions(fmt="rl", strict=True))
    assert not [w for w in s.warnings if "lack task fields" in w or "name no agent" in w]


def test_rl_rows_whose_verifier_cannot_be_looked_up_say_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With no NeMo Gym venv to read the verifiers' request models from, to-parquet said nothing
    about the fields mcqa rows lack (read as "nothing missing"); now a note says the check could
    not be made and how to make it. Not an error under --strict: nothing is known to be missing."""
    monkeypatch.setenv("GYMVERL_NEMO_GYM_ENV", str(tmp_path / "no-such-venv"))
    src = _write(tmp_path / "mcqa.jsonl", [_mcqa_rollout(i, "mcqa_simple_agent") for i in range(2)])
    s = convert(src, tmp_path / "out", ConvertOptions(fmt="rl", strict=True))
    (w,) = [w for w in s.warnings if w.startswith("could not check")]
    assert "mcqa_simple_agent" in w and "GYMVERL_NEMO_GYM_ENV" in w and "--tasks" in w
    assert not [w for w in s.warnings if "lack task fields" in w]


def test_shared_case_mcqa_rollouts_are_warned_about(tmp_path: Path) -> None:
    """../shared/cases/verifier-metadata-dropped/mcqa_rollouts.jsonl (NeMo Gym's example mcqa
    rollouts: no agent_ref, no options): to-parquet --format rl said nothing specific, exit 0."""
    from conftest import SHARED

    src = SHARED / "cases" / "verifier-metadata-dropped" / "mcqa_rollouts.jsonl"
    if not src.exists():
        pytest.skip(f"{src} not found (only CI and development sessions have ../shared)")
    s = convert(src, tmp_path / "out", ConvertOptions(fmt="rl"))
    assert any(w.startswith("5 RL rows name no agent") and "carry only: expected_answer," in w for w in s.warnings), s.warnings
    res = runner.invoke(app, ["to-parquet", str(src), "-f", "rl", "-o", str(tmp_path / "cli"), "--strict"])
    assert res.exit_code == 2 and "name no agent" in res.output and not (tmp_path / "cli").exists()


@pytest.mark.parametrize("fmt", ["sft", "dpo", "rl", "sft-grouped"])
@pytest.mark.parametrize("tool", [{"type": "function", "parameters": {}}, {"type": "function", "function": {"name": "", "parameters": {}}}, {"type": "web_search"}])
def test_a_nameless_tool_is_rejected_in_every_format(tmp_path: Path, fmt: str, tool: dict) -> None:
    """rl rejected a prompt tool without a name (`bad_tools`); sft and dpo wrote it as `"name": null`,
    which no chat template can render and no model can call. The one tools converter now refuses it,
    and the rejected lines are not counted `valid` too."""
    rows = [json.loads(line) for line in ROLLOUTS.read_text().splitlines() if line.strip()]
    # a task with both a solved and a failed rollout, so dpo pairs it (an unpaired task never reads its tools)
    bad_task = next(t for t in (r["_ng_task_index"] for r in rows) if len({r["reward"] for r in rows if r["_ng_task_index"] == t}) > 1)
    for row in rows:
        if row["_ng_task_index"] == bad_task:
            row["responses_create_params"]["tools"] = [tool]
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    grouped = {"best_of_n": 4} if fmt == "sft-grouped" else {}
    s = convert(src, tmp_path / "o", ConvertOptions(fmt=fmt.split("-")[0], select=SelectOptions(drop_incomplete=False, **grouped)))
    bad_lines = [i + 1 for i, r in enumerate(rows) if r["_ng_task_index"] == bad_task]
    rejected = [r for r in s.rejections if r["code"] == "bad_tools" and ("has no name" in r["reason"] or "only function tools" in r["reason"])]
    assert rejected and {r["line"] for r in rejected} <= set(bad_lines), s.rejections
    # A line rejected while its row was built is not also `valid` (it was: 6 lines gave valid 6 + rejected 2).
    assert s.valid + s.rejected + s.blank == s.lines == len(rows), (s.valid, s.rejected, s.lines)
    for path in s.files.get("train", []):
        for cell in pq.read_table(path).to_pydict().get("tools", []):
            assert cell is None or '"name":null' not in cell.replace(" ", ""), cell


def test_a_parquet_output_never_replaces_a_file_that_is_not_parquet(tmp_path: Path) -> None:
    """`to-parquet -o keep.parquet` replaced an existing text file of that name (exit 0); an earlier
    Parquet output is still replaced (a re-run), and the refusal is one sentence, exit 2."""
    out = tmp_path / "keep.parquet"
    out.write_text("my notes\n")
    res = runner.invoke(app, ["to-parquet", str(ROLLOUTS), "-f", "sft", "-o", str(out)])
    assert res.exit_code == 2 and "is not a Parquet file" in res.output and "Traceback" not in res.output
    assert out.read_text() == "my notes\n"
    out.unlink()
    for _ in range(2):  # written, then replaced by the re-run
        res = runner.invoke(app, ["to-parquet", str(ROLLOUTS), "-f", "sft", "-o", str(out)])
        assert res.exit_code == 0, res.output
        assert pq.read_table(out).num_rows > 0


@pytest.mark.parametrize(
    ("name", "opts"),
    [
        ("train.parquet", {}),
        ("val.parquet", {"select": SelectOptions(val_fraction=0.4)}),
        ("train-00001-of-00002.parquet", {"shard_size": 10}),  # (19 rows) a shard name, known only when committing
    ],
)
def test_an_output_directory_never_replaces_a_file_that_is_not_parquet(tmp_path: Path, name: str, opts: dict[str, Any]) -> None:
    """`-o DIR` replaced a text file named like one of its outputs (`train.parquet`, `val.parquet`, a
    shard) silently: only the single-file `-o X.parquet` was checked. Refused, exit 2, nothing kept."""
    out = tmp_path / "o"
    out.mkdir()
    keep = out / name
    keep.write_text("my notes\n")
    with pytest.raises(ConvertError, match="is not a Parquet file") as exc:
        convert(ROLLOUTS, out, ConvertOptions(fmt="sft", **opts))
    assert exc.value.exit_code == 2
    assert keep.read_text() == "my notes\n"
    assert sorted(p.name for p in out.iterdir()) == [name]  # no shard, temp or lock left beside it
    keep.unlink()
    s = convert(ROLLOUTS, out, ConvertOptions(fmt="sft", **opts))
    assert name in {Path(p).name for paths in s.files.values() for p in paths}, s.files


@pytest.mark.parametrize("workers", [1, 2])
def test_sft_never_writes_one_rollout_twice(tmp_path: Path, workers: int) -> None:
    """A file holding the sample rollouts twice (two collections concatenated) gave 38 sft rows, each
    rollout twice, with no word: only the grouped paths settled repeats. Streaming sft now notices a
    (task, rollout) pair seen before and lets the grouped conversion settle the input, so the later
    copies are filtered as `repeated_rollout` as the README says; a file without repeats streams."""
    twice = tmp_path / "twice.jsonl"
    twice.write_bytes(ROLLOUTS.read_bytes() * 2)
    s = convert(twice, tmp_path / "o", ConvertOptions(fmt="sft", workers=workers))
    once = convert(ROLLOUTS, tmp_path / "o1", ConvertOptions(fmt="sft", workers=workers))
    assert not once.grouped and s.grouped
    assert s.rows == once.rows and s.filtered["repeated_rollout"] == once.rows["train"]
    assert s.lines == s.rejected + sum(s.filtered.values()) + s.kept_lines == 40
    pairs = [(r["extra_info"]["task_key"], r["extra_info"]["rollout_index"]) for r in _rows(tmp_path / "o", "train")]
    assert len(pairs) == len(set(pairs)) == once.rows["train"]



def test_sft_without_min_reward_says_how_many_rows_are_failed_answers(tmp_path: Path) -> None:
    """Plain `to-parquet --format sft` wrote 19 rows, 8 of them answers the verifier scored 0, with no
    word: SFT trains on them as targets. A warning now counts them and names --min-reward; with it
    (or with every row solved) there is none."""
    s = convert(ROLLOUTS, tmp_path / "a", ConvertOptions(fmt="sft"))
    failed = sum(1 for r in _rows(tmp_path / "a") if r["extra_info"]["reward"] < 1.0)
    assert failed == s.unsolved_rows == 8
    assert any(w.startswith(f"{failed} of 19 sft rows come from rollouts with a reward below 1") and "--min-reward 1" in w for w in s.warnings), s.warnings
    s = convert(ROLLOUTS, tmp_path / "b", ConvertOptions(fmt="sft", select=SelectOptions(min_reward=1.0)))
    assert s.unsolved_rows == 0 and not any("--min-reward" in w for w in s.warnings)
    s = convert(ROLLOUTS, tmp_path / "c", ConvertOptions(fmt="sft", select=SelectOptions(best_of_n=1)))  # grouped: the same count
    assert s.unsolved_rows == sum(1 for r in _rows(tmp_path / "c") if r["extra_info"]["reward"] < 1.0)


def test_a_val_split_that_draws_no_task_is_named(tmp_path: Path) -> None:
    """`--val-fraction 0.05` on the sample's 5 tasks wrote no val.parquet and said nothing (tasks are
    split by a hash of their key): a warning now says val is empty and what to change."""
    s = convert(ROLLOUTS, tmp_path / "o", ConvertOptions(fmt="sft", select=SelectOptions(val_fraction=0.05, min_reward=1.0)))
    assert s.rows["val"] == 0 and s.rows["train"] > 0 and not (tmp_path / "o" / "val.parquet").exists()
    assert any(w.startswith("--val-fraction 0.05 put no row in val") for w in s.warnings), s.warnings
    s = convert(ROLLOUTS, tmp_path / "p", ConvertOptions(fmt="sft", select=SelectOptions(val_fraction=0.4, min_reward=1.0)))
    assert s.rows["val"] > 0 and not any("put no row in val" in w for w in s.warnings)


def test_output_named_as_the_input_gets_the_input_sentence(tmp_path: Path) -> None:
    """`to-parquet X.jsonl -o X.jsonl` said "exists and is not a directory"; it is the input, and the
    sentence every command uses for that is what a user needs. (And one option "selects".)"""
    src = tmp_path / "r.jsonl"
    src.write_bytes(ROLLOUTS.read_bytes())
    res = runner.invoke(app, ["to-parquet", str(src), "-o", str(src)])
    assert res.exit_code == 2 and "is the input" in res.output and src.read_bytes() == ROLLOUTS.read_bytes(), res.output
    res = runner.invoke(app, ["to-parquet", str(src), "-o", str(tmp_path / "o"), "-f", "rl", "--min-reward", "1"])
    assert res.exit_code == 2 and "--min-reward selects rollouts" in " ".join(res.output.split()), res.output


def test_a_mistyped_tmp_dir_is_refused_not_created(tmp_path: Path) -> None:
    """`--tmp-dir /nonexistent/x` was created, parents and all, and left behind (exit 0)."""
    bad = tmp_path / "no" / "such" / "dir"
    with pytest.raises(ConvertError, match="neither it nor its parent directory exists") as exc:
        convert(ROLLOUTS, tmp_path / "o", ConvertOptions(fmt="sft", tmp_dir=str(bad), select=SelectOptions(best_of_n=1)))
    assert exc.value.exit_code == 2 and not (tmp_path / "no").exists() and not (tmp_path / "o").exists()
    s = convert(ROLLOUTS, tmp_path / "o", ConvertOptions(fmt="sft", tmp_dir=str(tmp_path / "spill"), select=SelectOptions(best_of_n=1)))
    assert s.rows["train"] > 0  # a new directory under an existing one is still made


def test_dpo_with_min_reward_that_leaves_nothing_to_pair_says_why(tmp_path: Path) -> None:
    # dpo pairs a task's better rollouts with its worse ones; --min-reward 1 removed every worse one
    # first, and the run ended with only "no rows were kept".
    s = convert(ROLLOUTS, tmp_path / "o", ConvertOptions(fmt="dpo", select=SelectOptions(min_reward=1.0)))
    assert sum(s.rows.values()) == 0 and s.filtered["min_reward"] == 8
    assert any(w.startswith("--min-reward removed 8 rollouts before pairing") for w in s.warnings), s.warnings


@pytest.mark.parametrize("fmt", ["sft", "rl", "dpo"])
def test_conversation_columns_are_written_without_a_dictionary(tmp_path: Path, fmt: str) -> None:
    """Per-rollout texts (messages, prompts, chosen/rejected, nemo_gym records, image bytes) are
    written plain, every other column dictionary-encoded: each path the writer names is a real
    column of the file (a misspelt one would silently leave its column as it was)."""
    from gymverl.convert.parquet import _PLAIN_LEAVES

    s = convert(ROLLOUTS, tmp_path / fmt, ConvertOptions(fmt=fmt))
    meta = pq.ParquetFile(s.files["train"][0]).metadata
    paths = set()
    for i in range(meta.num_columns):
        col = meta.row_group(0).column(i)
        paths.add(col.path_in_schema)
        assert ("RLE_DICTIONARY" in col.encodings) == (col.path_in_schema not in _PLAIN_LEAVES), col.path_in_schema
    plain = {"sft": {"messages"}, "rl": {"prompt.list.element.content", "extra_info.nemo_gym"}, "dpo": {"prompt.list.element", "chosen.list.element"}}[fmt]
    assert plain <= paths & _PLAIN_LEAVES
