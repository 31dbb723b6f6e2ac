"""gymverl.sidecars: finding NeMo Gym's side files, joining task fields by index, the failures rule."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from gymverl.errors import UsageError
from gymverl.sidecars import (
    PairSet,
    TaskSource,
    collection_report,
    merge_fields,
    prompt_key,
    rollout_pairs,
    settle_failures,
    sidecar_paths,
    stem_of,
)
from ng07_data import TASKS, collection, materialized, rollout, task_row, write_jsonl


def test_side_files_are_found_by_the_collection_stem(tmp_path: Path) -> None:
    assert stem_of("a/r.jsonl") == "r" and stem_of("r.jsonl.gz") == "r"
    src = collection(tmp_path)
    assert sidecar_paths(src).materialized == tmp_path / "r_materialized_inputs.jsonl"
    assert sidecar_paths(src).failures is None
    (tmp_path / "r_failures.jsonl").write_text("")
    assert sidecar_paths(src).failures == tmp_path / "r_failures.jsonl"
    # A side file has no side files of its own; another stem finds nothing.
    assert sidecar_paths(tmp_path / "r_materialized_inputs.jsonl").materialized is None
    assert sidecar_paths(tmp_path / "other.jsonl").materialized is None


def test_a_rollout_and_its_task_row_have_the_same_prompt_key() -> None:
    # 0.7.0 writes the prompt through its request model (type, phase, tools: [], nulls).
    assert prompt_key(rollout("hi", 0, 0, 1.0)) == prompt_key(task_row("hi"))
    assert prompt_key(rollout("hi", 0, 0, 1.0)) != prompt_key(task_row("hello"))


def test_materialized_inputs_join_on_both_indices_never_on_the_prompt(tmp_path: Path) -> None:
    collection(tmp_path)
    src = TaskSource(tmp_path / "r_materialized_inputs.jsonl")
    assert src.kind == "materialized" and len(src) == 3 and src.expected == {0: 0b11, 1: 0b11, 2: 0b11}
    prompt = TASKS[0]["responses_create_params"]["input"][0]["content"]
    # Tasks 0 and 1 share the prompt: each rollout gets its own task's fields.
    assert src.find(rollout(prompt, 0, 1, 1.0)).fields == {"expected_answers": TASKS[0]["expected_answers"]}
    assert src.find(rollout(prompt, 1, 1, 1.0)).fields == {"expected_answers": TASKS[1]["expected_answers"]}
    assert src.find(rollout(prompt, 1, 5, 1.0)).reason == "not_found"  # no such repeat
    assert src.find(rollout(prompt, 7, 0, 1.0)).reason == "not_found"
    assert src.find(rollout("other prompt", 0, 0, 1.0)).reason == "prompt_mismatch"
    r = rollout(prompt, 0, 0, 1.0)
    del r["_ng_task_index"]
    assert src.find(r).reason == "no_index"


def test_a_tasks_file_joins_on_its_line_index(tmp_path: Path) -> None:
    src = TaskSource(write_jsonl(tmp_path / "tasks.jsonl", TASKS))
    assert src.kind == "tasks"
    assert src.find(rollout("Solve: 2+2", 2, 3, 1.0)).fields == {"question": "2+2", "expected_answer": "4"}
    assert src.find(rollout("Solve: 2+2", 0, 0, 1.0)).reason == "prompt_mismatch"
    assert src.wanted_fields("math_with_judge_simple_agent") == {"question", "expected_answer"}


def test_one_index_with_two_prompts_is_ambiguous(tmp_path: Path) -> None:
    rows = [materialized(task_row("A", x=1), 0, 0), materialized(task_row("B", x=2), 0, 1)]
    src = TaskSource(write_jsonl(tmp_path / "m_materialized_inputs.jsonl", rows))
    assert src.find(rollout("A", 0, 0, 1.0)).reason == "ambiguous"


def test_gzip_and_bad_lines(tmp_path: Path) -> None:
    p = tmp_path / "t.jsonl.gz"
    with gzip.open(p, "wt") as f:
        f.write('{"responses_create_params": {"input": "q"}, "a": 1}\nnot json\n[1]\n')
    src = TaskSource(p)
    assert src.bad_lines == 2 and len(src) == 1
    with pytest.raises(UsageError):
        TaskSource(tmp_path / "missing.jsonl")


def test_merge_keeps_the_rollouts_own_values() -> None:
    assert merge_fields({"a": 1, "b": None}, {"a": 2, "b": 3, "c": 4}) == {"a": 1, "b": 3, "c": 4}


def test_a_later_success_supersedes_earlier_failures(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "r_failures.jsonl",
        [
            {"_ng_task_index": 0, "_ng_rollout_index": 1, "_ng_failure_class": "agent_run_error"},
            {"_ng_task_index": 0, "_ng_rollout_index": 1, "_ng_failure_class": "timeout"},
            {"_ng_task_index": 3, "_ng_rollout_index": 0, "_ng_failure_class": "agent_run_error", "_ng_failure_message": "boom"},
            {"no": "index"},
        ],
    )
    succeeded = PairSet()
    succeeded.add(3, 0)  # the resume collected task 3 repeat 0
    rep = settle_failures(path, succeeded)
    assert set(rep.failed) == {(0, 1)} and rep.failed[(0, 1)].attempts == 2 and rep.failed[(0, 1)].failure_class == "timeout"
    assert (rep.attempts, rep.superseded, rep.superseded_attempts, rep.unusable_lines) == (3, 1, 1, 1)
    assert dict(rep.by_class) == {"timeout": 1}


def test_pairs_of_a_rollouts_file(tmp_path: Path) -> None:
    src = collection(tmp_path)
    lines = src.read_text().splitlines()
    src.write_text("\n".join(lines + [lines[0], "not json"]) + "\n")
    pairs, repeated = rollout_pairs(src)
    assert len(pairs) == 6 and repeated == 1 and (2, 1) in pairs and (2, 2) not in pairs
    rep = collection_report(src)
    assert rep is not None and rep.complete and rep.expected == 6
    assert collection_report(tmp_path / "tasks.jsonl") is None


def test_rows_are_read_back_by_offset_through_a_bom_and_crlf_lines(tmp_path: Path) -> None:
    import json

    rows = [materialized(task_row(f"q{t}", x=t), t, r) for t in range(3) for r in range(2)]
    rows[3]["x"] = "odd"  # task 1 repeat 1 differs from its task's other repeat
    p = tmp_path / "m_materialized_inputs.jsonl"
    p.write_bytes(b"\xef\xbb\xbf" + b"".join(json.dumps(r).encode() + b"\r\n" for r in rows))
    src = TaskSource(p)
    assert src.bad_lines == 0 and len(src) == 3
    for t in range(3):
        for r in range(2):
            want = "odd" if (t, r) == (1, 1) else t
            assert src.find(rollout(f"q{t}", t, r, 1.0)).fields == {"x": want}


def test_task_rows_nested_deeper_than_orjson_writes_are_joined(tmp_path: Path) -> None:
    # orjson writes 254 levels but reads 1024: a task row it read must be internable (issue 12).
    import json

    deep: object = "x"
    for _ in range(300):
        deep = [deep]
    tasks = [*TASKS[:2], dict(TASKS[2], verifier_metadata={"tests": deep})]
    p = tmp_path / "tasks.jsonl"
    p.write_text("".join(json.dumps(t) + "\n" for t in tasks))
    src = TaskSource(p)
    row = src.find(rollout("Solve: 2+2", 2, 0, 1.0))
    assert row.fields is not None and row.fields["verifier_metadata"] == {"tests": deep}
