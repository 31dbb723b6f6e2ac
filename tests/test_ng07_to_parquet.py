"""to-parquet on NeMo Gym 0.7 files: task fields joined by value, one rl row per task, masks, task identity (issue 11)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from conftest import SHARED
from gymverl.cli import app
from gymverl.convert import ConvertError, ConvertOptions, convert
from gymverl.reward import verify_request
from gymverl.select import SelectOptions
from ng07_data import TASKS, collection, materialized, rollout, task_row, write_jsonl

runner = CliRunner()
CASES = SHARED / "cases"


def _rows(out: Path) -> list[dict[str, Any]]:
    return [r for f in sorted(out.glob("train*.parquet")) for r in pq.read_table(f).to_pylist()]


def _tasks_by_index(out: Path) -> dict[int, dict[str, Any]]:
    return {int(r["extra_info"]["task_key"].split("#")[1]): json.loads(r["extra_info"]["nemo_gym"])["task"] for r in _rows(out)}


def _case(name: str) -> Path:
    d = CASES / name
    if not d.is_dir():
        pytest.skip(f"{d} not present (the shared cases live beside the repo)")
    return d


# ---- task fields -------------------------------------------------------------------------------


def test_rl_rows_join_task_fields_from_the_materialized_inputs_beside_the_rollouts(tmp_path: Path) -> None:
    src = collection(tmp_path)
    s = convert(src, tmp_path / "o", ConvertOptions(fmt="rl"))
    assert s.joined == 3 and s.task_source_kind == "materialized" and not s.warnings
    tasks = _tasks_by_index(tmp_path / "o")
    # Tasks 0 and 1 share their prompt: the join is by index, so each keeps its own answer.
    assert tasks[0]["expected_answers"][0]["arguments"] == {"city": "Paris"}
    assert tasks[1]["expected_answers"][0]["arguments"] == {"city": "London"}
    assert tasks[2] == {"question": "2+2", "expected_answer": "4"}
    # What compute_score sends to /verify carries them.
    row = next(r for r in _rows(tmp_path / "o") if r["extra_info"]["task_key"].endswith("#1"))
    body, _ = verify_request("x", row["extra_info"])
    assert body["expected_answers"] == TASKS[1]["expected_answers"]


def test_rl_rows_join_an_original_tasks_file_by_task_index_with_a_prompt_check(tmp_path: Path) -> None:
    src = collection(tmp_path, side=False)
    s = convert(src, tmp_path / "o", ConvertOptions(fmt="rl", tasks_path=tmp_path / "tasks.jsonl"))
    assert s.joined == 3 and s.task_source_kind == "tasks" and not s.warnings
    assert _tasks_by_index(tmp_path / "o")[1]["expected_answers"] == TASKS[1]["expected_answers"]
    # Another tasks file: every index names another prompt, so nothing is joined, and the warning
    # names the fields each agent's rows have in that file.
    other = write_jsonl(tmp_path / "other.jsonl", [TASKS[2], TASKS[2], TASKS[0]])
    s = convert(src, tmp_path / "o2", ConvertOptions(fmt="rl", tasks_path=other))
    assert s.not_joined["prompt_mismatch"] == 3
    assert s.missing_task_fields == {"expected_answers": 2, "question": 1}
    assert any("lack task fields" in w and "expected_answers (2 rows)" in w for w in s.warnings)


def test_rl_rows_without_task_fields_get_a_truthful_warning_and_strict_stops(tmp_path: Path) -> None:
    src = collection(tmp_path, side=False)
    s = convert(src, tmp_path / "o", ConvertOptions(fmt="rl"))
    text = " ".join(s.warnings)
    assert s.rows_without_source == 3 and "r_materialized_inputs.jsonl" in text and "--tasks" in text
    assert "still gets all task fields" not in text
    with pytest.raises(ConvertError, match="--strict"):
        convert(src, tmp_path / "strict", ConvertOptions(fmt="rl", strict=True))
    assert not (tmp_path / "strict").exists()
    res = runner.invoke(app, ["to-parquet", str(src), "-f", "rl", "-o", str(tmp_path / "cli"), "--strict"])
    assert res.exit_code == 2 and "--strict" in res.output and "Traceback" not in res.output


def test_no_side_files_warning_says_the_materialized_inputs_were_skipped_not_missing(tmp_path: Path) -> None:
    """`to-parquet ROLLOUTS -f rl --no-side-files` warned "no r_materialized_inputs.jsonl is beside
    ..." although the file was there and skipped on request: the warning now says --no-side-files
    skipped it."""
    src = collection(tmp_path)
    assert (tmp_path / "r_materialized_inputs.jsonl").exists()
    res = runner.invoke(app, ["to-parquet", str(src), "-f", "rl", "-o", str(tmp_path / "o"), "--no-side-files"])
    assert res.exit_code == 1, res.output  # rows that may lack task fields: written, and exit 1
    text = " ".join(res.output.split())
    assert f"--no-side-files skipped any r_materialized_inputs.jsonl beside {src}" in text, res.output
    assert "no r_materialized_inputs.jsonl is beside" not in text


def test_rl_from_materialized_inputs_is_one_row_per_task(tmp_path: Path) -> None:
    collection(tmp_path, repeats=4)
    s = convert(tmp_path / "r_materialized_inputs.jsonl", tmp_path / "o", ConvertOptions(fmt="rl"))
    assert s.input_kind == "materialized_inputs"
    assert s.rows["train"] == 3 and s.repeats_merged == 9 and s.kept_lines == 12 and s.accounted == 12
    res = runner.invoke(app, ["to-parquet", str(tmp_path / "r_materialized_inputs.jsonl"), "-f", "rl", "-o", str(tmp_path / "cli")])
    assert res.exit_code == 0 and "one row per task" in res.output


def test_materialized_inputs_of_concatenated_collections_keep_every_prompt(tmp_path: Path) -> None:
    # Two collections, each numbering its tasks from 0, concatenated: index 0 has two prompts.
    a = [materialized(TASKS[0], 0, r) for r in range(2)]
    b = [materialized(task_row("Another question", expected_answers=[]), 0, r) for r in range(2)]
    src = write_jsonl(tmp_path / "both_materialized_inputs.jsonl", a + b)
    s = convert(src, tmp_path / "o", ConvertOptions(fmt="rl"))
    assert s.rows["train"] == 2 and s.repeats_merged == 2
    assert sorted(len(r["extra_info"]["task_key"].split("@")) for r in _rows(tmp_path / "o")) == [1, 2]


# ---- masks -------------------------------------------------------------------------------------


def test_masked_rollouts_are_a_counted_filter_unless_kept(tmp_path: Path) -> None:
    src = collection(tmp_path, masked={(0, 0)})
    s = convert(src, tmp_path / "sft", ConvertOptions(fmt="sft"))
    assert s.filtered == {"masked": 1} and s.rows["train"] == 5 and s.accounted == 6
    s = convert(src, tmp_path / "kept", ConvertOptions(fmt="sft", select=SelectOptions(drop_masked=False)))
    assert "masked" not in s.filtered and s.rows["train"] == 6
    # rl: the masked rollout (reward 1.0, r=0) is not part of task 0's statistics.
    s = convert(src, tmp_path / "rl", ConvertOptions(fmt="rl"))
    assert s.filtered == {"masked": 1}
    row = next(r for r in _rows(tmp_path / "rl") if r["extra_info"]["task_key"].endswith("#0"))
    assert row["extra_info"]["n"] == 1 and row["extra_info"]["pass_rate"] == 0.0
    res = runner.invoke(app, ["to-parquet", str(src), "-o", str(tmp_path / "cli"), "--keep-masked", "--json"])
    assert res.exit_code == 0 and json.loads(res.output)["rows"]["train"] == 6


def test_a_task_whose_every_rollout_is_masked_gives_no_rl_row(tmp_path: Path) -> None:
    src = collection(tmp_path, masked={(2, 0), (2, 1)})
    s = convert(src, tmp_path / "rl", ConvertOptions(fmt="rl"))
    assert s.rows["train"] == 2 and s.tasks_dropped == {"masked": 1} and s.filtered == {"masked": 2}


# ---- task identity -----------------------------------------------------------------------------


@pytest.mark.parametrize("fmt, sel", [("rl", {}), ("sft", {"best_of_n": 4}), ("dpo", {})])
def test_a_rollout_written_twice_is_counted_once(tmp_path: Path, fmt: str, sel: dict[str, Any]) -> None:
    src = collection(tmp_path)
    lines = src.read_text().splitlines()
    src.write_text("\n".join(lines + [lines[0]]) + "\n")  # the first rollout again
    s = convert(src, tmp_path / fmt, ConvertOptions(fmt=fmt, select=SelectOptions(**sel)))
    assert s.filtered.get("repeated_rollout") == 1 and s.accounted == 7
    if fmt == "rl":
        assert all(r["extra_info"]["n"] == 2 for r in _rows(tmp_path / fmt))


def test_concatenated_collections_with_different_prompts_under_one_index_are_refused(tmp_path: Path) -> None:
    a = collection(tmp_path / "a", side=False)
    b = tmp_path / "b.jsonl"
    # Collection b numbered its own task 0 from 0, with another prompt.
    write_jsonl(b, [rollout("A different question", 0, r, 1.0) for r in range(2)])
    both = tmp_path / "both.jsonl"
    both.write_text(a.read_text() + b.read_text())
    for fmt in ("rl", "dpo"):
        with pytest.raises(ConvertError, match="different prompts"):
            convert(both, tmp_path / fmt, ConvertOptions(fmt=fmt))
    res = runner.invoke(app, ["to-parquet", str(both), "-f", "rl", "-o", str(tmp_path / "cli")])
    assert res.exit_code == 2 and "different prompts" in res.output and "Traceback" not in res.output


@pytest.mark.parametrize("rollout_index", ["distinct", "none"])
@pytest.mark.parametrize("fmt, sel", [("rl", {}), ("dpo", {"pairs_per_task": 2}), ("sft", {"best_of_n": 1})])
@pytest.mark.parametrize("path", ["fast", "exact", "2 workers"])
def test_two_prompts_under_one_task_index_are_named_whatever_the_rollout_indexes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rollout_index: str, fmt: str, sel: dict[str, Any], path: str
) -> None:
    """Only a repeated (task, rollout) pair used to compare prompts: with distinct rollout indexes
    (or none), two prompts under task 0 were merged without a word. dpo paired "What is 2+2?" with
    the answer "Rome"; rl wrote one row, the other prompt gone, its rollouts counted in n and
    pass_rate. Such tasks are now named in a warning. (Not refused: NeMo Gym's blackjack deals
    each rollout its own hand, in its prompt; see test_verl_load's blackjack fixture.)"""
    rows = [rollout("What is 2+2?", 0, 0, 1.0, answer="4"), rollout("What is 2+2?", 0, 1, 0.0, answer="5"),
            rollout("Capital of France?", 0, 2, 1.0, answer="Paris"), rollout("Capital of France?", 0, 3, 0.0, answer="Rome")]
    if rollout_index == "none":
        for r in rows:
            r.pop("_ng_rollout_index")
    src = tmp_path / "in.jsonl"
    write_jsonl(src, rows)
    if path == "exact":
        from gymverl import records
        from gymverl.formats import fast

        monkeypatch.setattr(records, "_msgspec", None)
        monkeypatch.setattr(fast, "simdjson", None)  # (fast.available() is then False)
    opts = ConvertOptions(fmt=fmt, select=SelectOptions(**sel), workers=2 if path == "2 workers" else 1)
    s = convert(src, tmp_path / "out", opts)
    warned = [w for w in s.warnings if "different prompts" in w]
    assert len(warned) == 1 and warned[0].startswith("1 task holds rollouts with different prompts (")
    assert "#0 (lines 1 and 3)):" in warned[0], warned[0]
    assert s.mixed_prompt_tasks == 1 and s.accounted == s.lines == 4


@pytest.mark.parametrize("fmt", ["rl", "dpo"])
def test_one_prompt_written_two_ways_is_one_task(tmp_path: Path, fmt: str) -> None:
    """The fingerprint is of the JSON as written: the same prompt with its keys in another order
    (another collector version) is still one task, as the prompts compare equal."""
    rows = [rollout("What is 2+2?", 0, r, float(r % 2), answer=str(r)) for r in range(4)]
    for r in rows[2:]:
        r["responses_create_params"]["input"] = [dict(reversed(list(item.items()))) for item in r["responses_create_params"]["input"]]
    src = tmp_path / "in.jsonl"
    write_jsonl(src, rows)
    s = convert(src, tmp_path / "out", ConvertOptions(fmt=fmt, select=SelectOptions(pairs_per_task=2) if fmt == "dpo" else SelectOptions()))
    assert s.tasks == 1 and sum(s.rows.values()) == (1 if fmt == "rl" else 2), s
    assert s.mixed_prompt_tasks == 0 and not [w for w in s.warnings if "different prompts" in w]


# ---- real 0.7.0 files --------------------------------------------------------------------------


def test_real_rl_rows_from_0_7_0_rollouts_carry_their_task_fields(tmp_path: Path) -> None:
    data = _case("ng07-03-rl-task-fields-dropped") / "data"
    for args in ({}, {"tasks_path": data / "tasks.jsonl"}):
        out = tmp_path / f"o{len(args)}"
        s = convert(data / "rollouts.jsonl", out, ConvertOptions(fmt="rl", **args))
        assert s.joined == 5 and not s.warnings
        tasks = [json.loads(line) for line in (data / "tasks.jsonl").read_text().splitlines()]
        got = _tasks_by_index(out)
        for i, t in enumerate(tasks):
            for k in ("question", "expected_answer", "expected_answers"):
                if k in t:
                    assert got[i][k] == t[k]
    # Without the side file: the truthful warning, not the old false claim.
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(data / "rollouts.jsonl", alone / "rollouts.jsonl")
    s = convert(alone / "rollouts.jsonl", tmp_path / "a", ConvertOptions(fmt="rl"))
    assert s.rows_without_source == 5 and not any("still gets all task fields" in w for w in s.warnings)


def test_real_materialized_inputs_give_one_rl_row_per_task(tmp_path: Path) -> None:
    src = _case("ng07-04-rl-from-materialized-inputs-duplicates") / "rollouts_materialized_inputs.jsonl"
    s = convert(src, tmp_path / "o", ConvertOptions(fmt="rl", select=SelectOptions(val_fraction=0.4)))
    assert sum(s.rows.values()) == 5 and s.tasks == 5 and s.repeats_merged == 15


def test_real_tasks_sharing_a_prompt_are_joined_by_index(tmp_path: Path) -> None:
    d = _case("ng07-07-rescore-materialized-join-by-line")
    convert(d / "r.jsonl", tmp_path / "o", ConvertOptions(fmt="rl"))
    cities = {i: t["expected_answers"][0]["arguments"] for i, t in _tasks_by_index(tmp_path / "o").items()}
    assert cities == {0: {"city": "Paris"}, 1: {"city": "London"}}


def test_a_field_only_some_tasks_have_is_no_warning_when_every_row_joins(tmp_path: Path) -> None:
    tasks = [task_row("q one", expected_answers=[], metadata={"src": "a"}), task_row("q two", expected_answers=[])]
    write_jsonl(tmp_path / "r_materialized_inputs.jsonl", [materialized(t, i, 0) for i, t in enumerate(tasks)])
    src = write_jsonl(tmp_path / "r.jsonl", [rollout("q one", 0, 0, 1.0), rollout("q two", 1, 0, 0.0)])
    s = convert(src, tmp_path / "o", ConvertOptions(fmt="rl", strict=True))
    assert s.joined == 2 and s.rows_missing_fields == 0 and not s.warnings


@pytest.mark.parametrize("fmt, sel, kept_lines", [("dpo", {}, [2, 3]), ("sft", {"best_of_n": 1}, [2])])
def test_a_chosen_rollout_whose_row_fails_gives_way_to_the_next(tmp_path: Path, fmt: str, sel: dict[str, Any], kept_lines: list[int]) -> None:
    """Selection ran before rows were built: the best rollout's row failed (a file part it cannot
    carry), so dpo wrote no pair (the others called `unpaired`, falsely: they pair) and best-of-n 1
    wrote nothing (the next best called `best_of_n`). Rows are now chosen among those that build."""
    rows = [rollout("Sky colour?", 0, 0, 1.0, answer="blue!"), rollout("Sky colour?", 0, 1, 0.5, answer="blue"),
            rollout("Sky colour?", 0, 2, 0.0, answer="I don't know")]
    rows[0]["response"]["output"][0]["content"].append({"type": "input_file", "file_id": "f1"})
    src = tmp_path / "in.jsonl"
    write_jsonl(src, rows)
    for workers in (1, 2):
        s = convert(src, tmp_path / f"out{workers}", ConvertOptions(fmt=fmt, select=SelectOptions(**sel), workers=workers))
        assert [r["line"] for r in s.rejections] == [1] and s.rejections[0]["code"] == "unsupported_content", s.rejections
        assert sum(s.rows.values()) == 1 and s.kept_lines == len(kept_lines), s
        assert dict(s.filtered) == ({} if fmt == "dpo" else {"best_of_n": 1}) and not s.tasks_dropped, (s.filtered, s.tasks_dropped)
        assert s.valid + s.rejected + s.blank == s.lines == 3
        (row,) = _rows(tmp_path / f"out{workers}")
        if fmt == "dpo":
            assert (row["extra_info"]["chosen_line"], row["extra_info"]["rejected_line"]) == (2, 3), row["extra_info"]
        else:
            assert json.loads(row["messages"])[-1]["content"] == "blue"
