"""rescore against NeMo Gym >= 0.5 behaviour (issue 11), with the fault server and own small inputs:

- an HTTP 200 answer that reports a failure (judge_failed, mask_sample true) is a failure record;
- `GET /reverify_mode`: servers not declared stateless are refused without --force;
- task fields joined from materialized inputs on (_ng_task_index, _ng_rollout_index), found
  beside the input automatically (`ng07-07-rescore-materialized-join-by-line`);
- NeMo Gym bookkeeping fields never in the missing-field warning (`ng07-08-...`);
- the same (task, rollout) pair twice is reported.

Scoring against real 0.7.0 servers: test_rescore_real.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from conftest import SAMPLE_DATA, SHARED
from fake_verify_server import FakeServer, fake_reward
from gymverl.cli import app
from gymverl.rescore import RescoreError, RescoreSummary, is_bookkeeping, rescore_file

runner = CliRunner()
CASE07 = SHARED / "cases" / "ng07-07-rescore-materialized-join-by-line"


def sample_rows() -> list[dict[str, Any]]:
    return [json.loads(line) for line in (SAMPLE_DATA / "rollouts.jsonl").read_text().splitlines()]


def write(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def read(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


# ---- a 200 answer that reports a failure ---------------------------------------------------------


@pytest.mark.parametrize("step", ["judge_failed", "masked"])
def test_a_judge_failure_answered_200_is_a_failure_record_never_a_zero_reward(tmp_path: Path, step: str) -> None:
    rows = sample_rows()[:6]
    for i, r in enumerate(rows):
        r["response"]["id"] = f"resp_{i}"
    inp = write(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"
    # Every row's first attempt is answered with the failure; it is not retried (the server's own
    # fail-safe retried its judge), so every row is a failure.
    with FakeServer("--plan", f"{step},ok") as srv:
        s = rescore_file(inp, out, [srv.url], retries=3)
    assert s.complete and s.rescored == 0 and s.failed == 6
    assert read(out) == []
    fails = read(tmp_path / "out.failures.jsonl")
    assert [f["reason"] for f in fails] == [step] * 6 and all(f["status"] == 200 and f["attempts"] == 1 for f in fails)
    assert dict(s.failures_by_reason) == {step: 6}
    assert all(f["_ng_task_index"] == r["_ng_task_index"] for f, r in zip(fails, rows))
    # --retry-failed re-sends them (the judge is back): now they are rewards, from the server.
    with FakeServer("--plan", "ok") as srv:
        s2 = rescore_file(inp, out, [srv.url], retry_failed=True)
    assert s2.rescored == 6 and s2.failed == 0
    assert [o["reward"] for o in read(out)] == [fake_reward(f"resp_{i}") for i in range(6)]


def test_cli_exit_1_and_the_reason_for_judge_failures(tmp_path: Path) -> None:
    inp = write(tmp_path / "in.jsonl", sample_rows()[:3])
    with FakeServer("--plan", "judge_failed") as srv:
        res = runner.invoke(app, ["rescore", str(inp), "-o", str(tmp_path / "o.jsonl"), "-s", srv.url, "--json"])
    assert res.exit_code == 1, res.output
    d = json.loads(res.stdout)
    assert d["failed"] == 3 and d["rescored"] == 0 and d["failures_by_reason"] == {"judge_failed": 3}


def test_a_degraded_but_measured_answer_keeps_its_reward_and_the_old_verdict_goes(tmp_path: Path) -> None:
    """failure_kind with mask_sample false is a valid measurement (NeMo Gym's contract); a stored
    mask_sample/failure_kind of the old reward never survives next to the new one."""
    rows = sample_rows()[:2]
    rows[1].update(mask_sample=True, failure_kind="judge_failed", _ng_failure_class="judge_failed")
    inp = write(tmp_path / "in.jsonl", rows)
    with FakeServer("--plan", "degraded") as srv:
        s = rescore_file(inp, tmp_path / "o.jsonl", [srv.url])
    assert s.rescored == 2 and s.failed == 0
    out = read(tmp_path / "o.jsonl")
    assert all(o["mask_sample"] is False and o["failure_kind"] == "tool_error" and "_ng_failure_class" not in o for o in out)


# ---- GET /reverify_mode ----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["unsupported", "unknown"])
def test_a_server_not_declared_stateless_is_refused_without_force(tmp_path: Path, mode: str) -> None:
    inp = write(tmp_path / "in.jsonl", sample_rows()[:4])
    out = tmp_path / "o.jsonl"
    with FakeServer("--reverify-mode", mode) as srv:
        with pytest.raises(RescoreError, match=rf"says '{mode}'.*/seed_session.*--force"):
            rescore_file(inp, out, [f"math_with_judge={srv.url}"])
        assert not out.exists() and srv.stats()["requests"] == 0  # nothing sent, nothing written
        res = runner.invoke(app, ["rescore", str(inp), "-o", str(out), "-s", srv.url])
        assert res.exit_code == 2 and "reverify_mode" in res.output and "Traceback" not in res.output
        s = rescore_file(inp, out, [srv.url], force=True)
    assert s.complete and s.rescored == 4
    assert s.reverify_modes == {srv.url: mode} and s.forced == [srv.url]
    assert "--force" in (s.warning() or "") and "may be wrong" in (s.warning() or "")


def test_stateless_and_undeclared_servers_are_used(tmp_path: Path) -> None:
    """"stateless" (0.7.0 mcqa) goes ahead; a 404 (NeMo Gym 0.4.0 has no such route) is recorded
    as not_declared and goes ahead. (A server that does not answer at all is refused before this
    check: test_rescore.test_a_server_that_does_not_answer_is_one_sentence_before_any_row.)"""
    inp = write(tmp_path / "in.jsonl", sample_rows()[:4])
    with FakeServer("--reverify-mode", "stateless") as a, FakeServer() as b:
        s = rescore_file(inp, tmp_path / "o.jsonl", [a.url, b.url])
        assert a.stats()["reverify_mode_requests"] == 1  # once per server, not per row
    assert s.rescored == 4 and s.reverify_modes == {a.url: "stateless", b.url: "not_declared"} and s.forced == []
    assert "--force" not in (s.warning() or "")


# ---- task fields from materialized inputs ----------------------------------------------------------


def shared_prompt_collection(tmp_path: Path) -> tuple[Path, list[dict[str, Any]]]:
    """Two tasks with the same prompt and different ground truth, 2 repeats each, collected out of
    order (0.7.0 writes lines in completion order), their materialized inputs beside them in
    another order: only a join on (_ng_task_index, _ng_rollout_index) is right."""
    base = sample_rows()[0]
    truth = ["Paris", "London"]
    rollouts, mat = [], []
    for t in (1, 0):
        for r in (1, 0):
            row = {k: v for k, v in base.items() if k not in ("question", "expected_answer", "expected_answers")}
            row = json.loads(json.dumps(row))
            row.update(_ng_task_index=t, _ng_rollout_index=r, mask_sample=False, failure_kind=None, failure_reason=None)
            row["response"]["id"] = f"resp_{t}_{r}"
            rollouts.append(row)
    for t in (0, 1):
        for r in (0, 1):
            mat.append({"responses_create_params": base["responses_create_params"], "expected_answer": truth[t],
                        "agent_ref": base["agent_ref"], "_ng_task_index": t, "_ng_rollout_index": r})
    inp = write(tmp_path / "r.jsonl", rollouts)
    write(tmp_path / "r_materialized_inputs.jsonl", mat)
    return inp, rollouts


def test_materialized_inputs_beside_the_input_are_joined_on_both_indices(tmp_path: Path) -> None:
    inp, rollouts = shared_prompt_collection(tmp_path)
    truth = ["Paris", "London"]
    with FakeServer() as srv:
        s = rescore_file(inp, tmp_path / "o.jsonl", [srv.url])  # no --tasks: found beside the input
        assert s.task_source_kind == "materialized" and s.task_source == str(tmp_path / "r_materialized_inputs.jsonl")
        assert s.joined_tasks == 4 and s.unjoined == 0
        out = read(tmp_path / "o.jsonl")
        # The server got (and echoed) each rollout's own task's ground truth.
        assert [o["expected_answer"] for o in out] == [truth[r["_ng_task_index"]] for r in rollouts]
        # The same by --tasks, and by the original tasks file (joined on its line = task index).
        s = rescore_file(inp, tmp_path / "o2.jsonl", [srv.url], tasks=tmp_path / "r_materialized_inputs.jsonl")
        assert [o["expected_answer"] for o in read(tmp_path / "o2.jsonl")] == [truth[r["_ng_task_index"]] for r in rollouts]
        tasks = write(tmp_path / "tasks.jsonl", [{k: v for k, v in m.items() if not k.startswith("_ng")} for m in read(tmp_path / "r_materialized_inputs.jsonl") if m["_ng_rollout_index"] == 0])
        s = rescore_file(inp, tmp_path / "o3.jsonl", [srv.url], tasks=tasks)
        assert s.task_source_kind == "tasks"
        assert [o["expected_answer"] for o in read(tmp_path / "o3.jsonl")] == [truth[r["_ng_task_index"]] for r in rollouts]
        # A row without an index is joined by prompt only when the prompt names one task: not here.
        noidx = write(tmp_path / "noidx.jsonl", [{k: v for k, v in r.items() if not k.startswith("_ng")} for r in rollouts])
        s = rescore_file(noidx, tmp_path / "o5.jsonl", [srv.url], tasks=tmp_path / "r_materialized_inputs.jsonl")
        assert s.joined_tasks == 0 and dict(s.unjoined_by_reason) == {"prompt_ambiguous": 4}
        assert all("expected_answer" not in o for o in read(tmp_path / "o5.jsonl"))
        # --no-side-files: nothing joined.
        s = rescore_file(inp, tmp_path / "o4.jsonl", [srv.url], side_files=False)
        assert s.task_source is None and s.joined_tasks == 0 and all("expected_answer" not in o for o in read(tmp_path / "o4.jsonl"))


def test_shared_case_ng07_07_materialized_join(tmp_path: Path) -> None:
    """../shared/cases/ng07-07: two xlam_fc tasks share prompt and tools; task 1's truth is London."""
    if not CASE07.exists():
        pytest.skip(f"{CASE07} not present")
    inp = tmp_path / "r.jsonl"
    inp.write_bytes((CASE07 / "r.jsonl").read_bytes())
    for tasks in (CASE07 / "r_materialized_inputs.jsonl", CASE07 / "tasks.jsonl"):
        with FakeServer() as srv:
            s = rescore_file(inp, tmp_path / f"o_{tasks.stem}.jsonl", [srv.url], tasks=tasks)
        assert s.joined_tasks == 4
        out = read(tmp_path / f"o_{tasks.stem}.jsonl")
        cities = {(o["_ng_task_index"], o["_ng_rollout_index"]): o["expected_answers"][0]["arguments"]["city"] for o in out}
        assert cities == {(0, 0): "Paris", (0, 1): "Paris", (1, 0): "London", (1, 1): "London"}


# ---- ng07-08: bookkeeping fields never named ---------------------------------------------------------


def test_bookkeeping_fields_are_never_named_in_the_missing_field_warning(tmp_path: Path) -> None:
    """A 0.7.0-like server: answers carry failure_kind/failure_reason null, /verify declares
    _ng_rollout_id. Rewards go down (old ones 1.0); only the task field is named."""
    rows = sample_rows()[:8]
    for i, r in enumerate(rows):
        r["reward"] = 1.0
        r["response"]["id"] = f"resp_{i}"
        r.pop("expected_answers", None)
        r.pop("question", None)
    inp = write(tmp_path / "in.jsonl", rows)
    with FakeServer("--ng07", "--accepts", "_ng_rollout_id,expected_answers,capture_rollout_id") as srv:
        s = rescore_file(inp, tmp_path / "o.jsonl", [srv.url], side_files=False)
    assert s.went_down == 8
    w = s.warning() or ""
    assert "expected_answers" in w
    for name in ("_ng_rollout_id", "capture_rollout_id", "failure_kind", "failure_reason", "mask_sample"):
        assert name not in w, w
    d = s.to_dict()
    assert set(d["absent_accepted_fields"]) == {"expected_answers"}
    assert not any(is_bookkeeping(k) for k in d["null_echoed"])
    assert s.likely_missing_fields()[0] == "expected_answers" and not any(map(is_bookkeeping, s.likely_missing_fields()))


def test_is_bookkeeping() -> None:
    for k in ("_ng_rollout_id", "_ng_task_index", "_ng_anything_new", "failure_kind", "failure_reason", "mask_sample", "capture_rollout_id"):
        assert is_bookkeeping(k)
    for k in ("expected_answers", "question", "options", "uuid", "metadata"):
        assert not is_bookkeeping(k)


# ---- task identity -----------------------------------------------------------------------------------


def test_the_same_task_and_rollout_twice_is_reported(tmp_path: Path) -> None:
    rows = sample_rows()[:5]
    for i, r in enumerate(rows):
        r["_ng_task_index"], r["_ng_rollout_index"] = 7, i
        r["response"]["id"] = f"resp_{i}"
    dup = json.loads(json.dumps(rows[2]))
    dup["response"]["id"] = "resp_dup"
    rows.append(dup)  # line 6 repeats line 3's (task, rollout)
    inp = write(tmp_path / "in.jsonl", rows)
    out = tmp_path / "o.jsonl"
    with FakeServer() as srv:
        s = rescore_file(inp, out, [srv.url], limit=4)
        assert s.duplicate_pairs == 0
        s = rescore_file(inp, out, [srv.url], resume=True)  # the summary is rebuilt across resumes
    assert s.rescored == 6 and s.duplicate_pairs == 1
    assert s.duplicate_examples[0] == {"line": 6, "_ng_task_index": 7, "_ng_rollout_index": 2}
    assert "repeat a (_ng_task_index, _ng_rollout_index) pair" in (s.warning() or "")
    d = s.to_dict()
    assert d["duplicate_pairs"] == 1


def test_a_huge_rollout_index_costs_no_memory() -> None:
    s = RescoreSummary("i", "o", "f")
    s.note_pair({"_ng_task_index": 0, "_ng_rollout_index": 10**15}, 1)
    s.note_pair({"_ng_task_index": 0, "_ng_rollout_index": 10**15}, 2)
    assert s.duplicate_pairs == 1
