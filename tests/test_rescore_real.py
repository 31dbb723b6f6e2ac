"""Rescoring and the VeRL reward function against REAL NeMo Gym resources servers (nemo-gym 0.4.0).

The servers (math_with_judge with its rule-based math-verify, xlam_fc, mcqa) run on 127.0.0.1
for the whole session (the `gym_servers` fixture in conftest.py starts them with `ng_run`).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from conftest import FIXTURES, SAMPLE_DATA
from gymverl.cli import app
from gymverl.nemo_gym import package_dir
from gymverl.records import final_text
from gymverl.rescore import rescore_file
from gymverl.reward import response_from_text

pytestmark = pytest.mark.nemo_gym
runner = CliRunner()


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def ng_data(env: Path, server: str) -> Path:
    """NeMo Gym's own example input file for a resources server (shipped in the wheel)."""
    return package_dir(env) / "resources_servers" / server / "data" / "example.jsonl"


def routes(gym_servers: Any) -> list[str]:
    return [f"math_with_judge={gym_servers.url('math_with_judge')}", f"xlam_fc={gym_servers.url('xlam_fc')}"]


def test_sample_rollouts_keep_their_rewards(gym_servers: Any, tmp_path: Path) -> None:
    """sample_data's rewards are what the real verifiers return; the verifier outputs are refreshed."""
    out = tmp_path / "out.jsonl"
    # force: 0.7.0's math_with_judge and xlam_fc answer GET /reverify_mode "unknown" (stateless in fact).
    summary = rescore_file(SAMPLE_DATA / "rollouts.jsonl", out, routes(gym_servers), concurrency=8, force=True)
    assert summary.complete and summary.failed == 0 and summary.rescored == 20
    assert summary.changed == 0, [r for r in read_jsonl(out) if r["reward"] != r["reward_before"]]
    rows_in = read_jsonl(SAMPLE_DATA / "rollouts.jsonl")
    rows_out = read_jsonl(out)
    assert [r["response"]["id"] for r in rows_out] == [r["response"]["id"] for r in rows_in]
    for before, after in zip(rows_in, rows_out):
        assert after["reward"] == after["reward_before"] == before["reward"]
        if "library_reward" in after:  # math_with_judge reports what math-verify extracted
            assert after["library_reward"] == before["reward"]
            # 0.7.0's math_with_judge reports no extracted answer for a wrong one.
            assert after["extracted_answer"] is not None or before["reward"] == 0.0
        else:
            assert {"num_expected", "num_predicted", "num_correct", "predicted_calls"} <= set(after)
    assert {s["url"]: s["sent"] for s in summary.servers} == {
        gym_servers.url("math_with_judge"): 12, gym_servers.url("xlam_fc"): 8,
    }


def mcqa_rollout(task: dict[str, Any], answer: str, index: int) -> dict[str, Any]:
    row = dict(task)
    row["response"] = response_from_text(answer, task["responses_create_params"], model="test-policy")
    row["reward"] = 0.5  # a placeholder the verifier must replace
    row["_ng_task_index"] = index
    return row


def test_right_wrong_and_malformed_answers(gym_servers: Any, nemo_gym_env: Path, tmp_path: Path) -> None:
    tasks = read_jsonl(ng_data(nemo_gym_env, "mcqa"))[:3]
    lines: list[str] = []
    expected: list[float] = []
    for i, t in enumerate(tasks):
        right = t["expected_answer"]
        wrong = "A" if right != "A" else "B"
        for answer, reward in ((f"I think it is \\boxed{{{right}}}", 1.0), (f"\\boxed{{{wrong}}}", 0.0), ("I am not sure.", 0.0)):
            lines.append(json.dumps(mcqa_rollout(t, answer, i)))
            expected.append(reward)
    lines.insert(4, '{"responses_create_params": {"input": "x"}, "reward": 1.0}')  # no response: not sent
    inp = tmp_path / "in.jsonl"
    inp.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out.jsonl"
    res = runner.invoke(app, ["rescore", str(inp), "-o", str(out), "-s", gym_servers.url("mcqa"), "--json"])
    assert res.exit_code == 1  # one line rejected
    data = json.loads(res.stdout)
    assert (data["rescored"], data["rejected"], data["failed"]) == (9, 1, 0)
    assert [r["reward"] for r in read_jsonl(out)] == expected
    (rej,) = read_jsonl(tmp_path / "out.failures.jsonl")
    assert (rej["line"], rej["kind"], rej["reason"]) == (5, "invalid", "missing_key")


def _post(url: str, body: dict[str, Any]) -> tuple[int, Any]:
    req = urllib.request.Request(url + "/verify", data=json.dumps(body).encode(), headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.load(resp)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_mcqa_fixture_nulls_missing_fields_warning_and_tasks_rejoin(fixture_files: list[Path], gym_servers: Any, nemo_gym_env: Path, tmp_path: Path) -> None:
    src = FIXTURES / "mcqa.jsonl"
    url = gym_servers.url("mcqa")
    # What a naive re-scorer hits: the rows' explicit nulls are rejected by the current server.
    first = read_jsonl(src)[0]
    status, _ = _post(url, {k: v for k, v in first.items() if k != "reward"})
    assert status == 422

    out = tmp_path / "out.jsonl"
    res = runner.invoke(app, ["rescore", str(src), "-o", str(out), "-s", url, "--strict", "--json"])
    data = json.loads(res.stdout)
    assert data["rescored"] == 5 and data["failed"] == 0  # nulls dropped from the request: no 422
    assert data["went_down"] == 3 and res.exit_code == 1  # 1.0 -> 0.0 on 3 rows: loud under --strict
    assert "options (absent from 3 rows)" in data["warning"] and "grading_mode" in data["warning"]
    assert "warning:" in res.stderr
    assert read_jsonl(src) == [json.loads(x) for x in src.read_text().splitlines()]  # input untouched

    out2 = tmp_path / "joined.jsonl"
    res = runner.invoke(app, ["rescore", str(src), "-o", str(out2), "-s", url, "--strict", "--json", "--tasks", str(ng_data(nemo_gym_env, "mcqa"))])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    # 0.7.0's mcqa grader also reads \boxed{C: <option text>}: row 3 of NeMo Gym's 0.4-era example goes 0.0 -> 1.0.
    newer = nemo_gym_version_of(nemo_gym_env) >= (0, 5)
    assert data["tasks_joined"] == 5 and data["changed"] == (1 if newer else 0) and data["went_down"] == 0 and data["warning"] is None
    rows = read_jsonl(out2)
    before = [r["reward"] for r in read_jsonl(src)]
    assert [r["reward"] for r in rows] == ([1.0 if i == 2 else b for i, b in enumerate(before)] if newer else before)
    assert all(r["options"] and r["grading_mode"] for r in rows)  # re-joined fields kept in the output


def test_math_fixture_missing_required_fields_are_failures_not_zeros(fixture_files: list[Path], gym_servers: Any, nemo_gym_env: Path, tmp_path: Path) -> None:
    src = FIXTURES / "math_with_judge.jsonl"
    url = gym_servers.url("math_with_judge")
    out = tmp_path / "out.jsonl"
    res = runner.invoke(app, ["rescore", str(src), "-o", str(out), "-s", url, "--force"])
    assert res.exit_code == 1
    assert out.read_text() == ""  # no reward was invented for any row
    fails = read_jsonl(tmp_path / "out.failures.jsonl")
    assert [(f["line"], f["status"], f["attempts"]) for f in fails] == [(i, 422, 1) for i in range(1, 6)]
    assert all(f["error"] == "HTTP 422: question: Field required" for f in fails)
    assert "missing required fields: question" in res.stderr.replace("\n", " ")

    joined = tmp_path / "joined.jsonl"
    summary = rescore_file(src, joined, [url], tasks=ng_data(nemo_gym_env, "math_with_judge"), force=True)
    assert summary.failed == 0 and summary.joined_tasks == 5
    rows_in, rows_out = read_jsonl(src), read_jsonl(joined)
    # The rule-based verdict (math-verify) matches the original library_reward. Row 2's answer is a
    # huge symbolic expression whose check can hit math-verify's time limit on a busy machine.
    for i, (a, b) in enumerate(zip(rows_in, rows_out)):
        if i != 1:
            assert b["library_reward"] == a["library_reward"] == b["reward"], i


def test_xlam_fixture_flip_names_expected_answers(fixture_files: list[Path], gym_servers: Any, nemo_gym_env: Path, tmp_path: Path) -> None:
    src = FIXTURES / "xlam_fc.jsonl"
    url = gym_servers.url("xlam_fc")
    summary = rescore_file(src, tmp_path / "out.jsonl", [url], force=True)
    assert summary.went_down == 3 and "expected_answers (absent from 3 rows)" in (summary.warning() or "")
    # ng07-08: only the task field is named, never NeMo Gym >= 0.5's _ng_rollout_id / failure_kind / failure_reason.
    for name in ("_ng_rollout_id", "failure_kind", "failure_reason", "mask_sample"):
        assert name not in (summary.warning() or "")
    fixed = rescore_file(src, tmp_path / "joined.jsonl", [url], tasks=ng_data(nemo_gym_env, "xlam_fc"), force=True)
    assert fixed.changed == 0 and fixed.rescored == 5
    assert fixed.warning() is not None and "--force" in fixed.warning() if nemo_gym_version_of(nemo_gym_env) >= (0, 5) else fixed.warning() is None


def nemo_gym_version_of(env: Path) -> tuple[int, ...]:
    """The installed nemo-gym version as a tuple (0, 4, 0) / (0, 7, 0)."""
    from gymverl.nemo_gym import nemo_gym_version

    return tuple(int(x) for x in str(nemo_gym_version(env) or "0").split(".")[:3] if x.isdigit())


def test_reverify_mode_of_real_servers(fixture_files: list[Path], gym_servers: Any, nemo_gym_env: Path, tmp_path: Path) -> None:
    """0.7.0: mcqa says "stateless" (used), math_with_judge and xlam_fc "unknown" (refused without
    --force, as gym eval reverify refuses them); 0.4.0 has no such route: "not_declared", used."""
    import asyncio

    from gymverl.rescore import RescoreError, fetch_reverify_mode

    modes = {n: asyncio.run(fetch_reverify_mode(gym_servers.url(n))) for n in ("mcqa", "math_with_judge", "xlam_fc")}
    src = tmp_path / "in.jsonl"
    src.write_text((FIXTURES / "xlam_fc.jsonl").read_text())
    if nemo_gym_version_of(nemo_gym_env) >= (0, 5):
        assert modes == {"mcqa": "stateless", "math_with_judge": "unknown", "xlam_fc": "unknown"}
        with pytest.raises(RescoreError, match="reverify_mode"):
            rescore_file(src, tmp_path / "o.jsonl", [gym_servers.url("xlam_fc")])
        assert not (tmp_path / "o.jsonl").exists()
    else:
        assert set(modes.values()) == {"not_declared"}
        assert rescore_file(src, tmp_path / "o.jsonl", [gym_servers.url("xlam_fc")]).rescored == 5


# ---- the VeRL reward function, loaded and called the way VeRL does it ----------------------------


def solution_text(rollout: dict[str, Any]) -> str:
    """What the policy would have generated: the final text, or its tool calls in Hermes format."""
    calls = [o for o in rollout["response"]["output"] if o.get("type") == "function_call"]
    if calls:
        return "\n".join(
            f'<tool_call>{json.dumps({"name": c["name"], "arguments": json.loads(c["arguments"])})}</tool_call>' for c in calls
        )
    return final_text(rollout)


@pytest.mark.verl
def test_compute_score_through_verls_reward_loader(gym_servers: Any, tiny_model: Path, tmp_path: Path) -> None:
    import torch
    from omegaconf import OmegaConf
    from transformers import AutoTokenizer
    from verl import DataProto
    from verl.trainer.ppo.reward import load_reward_manager

    import gymverl.reward

    # RL rows exactly as `gymverl to-parquet --format rl` writes them.
    res = runner.invoke(app, ["to-parquet", str(SAMPLE_DATA / "rollouts.jsonl"), "--format", "rl", "-o", str(tmp_path / "rl"), "--tasks", str(SAMPLE_DATA / "tasks.jsonl")])
    assert res.exit_code == 0, res.output
    df = pd.read_parquet(tmp_path / "rl" / "train.parquet")
    by_prompt = {json.dumps(json.loads(r["extra_info"]["nemo_gym"])["responses_create_params"]["input"]): r for _, r in df.iterrows()}

    config = OmegaConf.create(
        {
            "reward": {
                "custom_reward_function": {
                    "path": gymverl.reward.__file__,
                    "name": "compute_score",
                    "reward_kwargs": {"server": routes(gym_servers), "concurrency": 8, "extra_fields": ["extracted_answer", "num_correct"]},
                },
                "reward_manager": {"source": "register", "name": "naive"},
            }
        }
    )
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    manager = load_reward_manager(config, tokenizer)
    assert type(manager).__name__ == "NaiveRewardManager" and manager.is_async_reward_score

    def sample(row: Any, text: str) -> DataProto:
        prompt_ids = torch.tensor(tokenizer.encode("prompt"))
        resp_ids = torch.tensor(tokenizer.encode(text))
        assert tokenizer.decode(resp_ids, skip_special_tokens=True) == text
        tensors = {
            "prompts": prompt_ids[None],
            "responses": resp_ids[None],
            "attention_mask": torch.ones(1, len(prompt_ids) + len(resp_ids), dtype=torch.long),
        }
        non_tensors = {
            "data_source": np.array([row["data_source"]], dtype=object),
            "reward_model": np.array([row["reward_model"]], dtype=object),
            "extra_info": np.array([dict(row["extra_info"])], dtype=object),
        }
        return DataProto.from_dict(tensors=tensors, non_tensors=non_tensors)

    async def score_all(samples: list[DataProto]) -> list[dict[str, Any]]:
        import asyncio

        return await asyncio.gather(*(manager.run_single(s) for s in samples))

    rollouts = read_jsonl(SAMPLE_DATA / "rollouts.jsonl")
    samples = [sample(by_prompt[json.dumps(r["responses_create_params"]["input"])], solution_text(r)) for r in rollouts]
    results = manager.loop.run_until_complete(score_all(samples))
    assert [r["reward_score"] for r in results] == [r["reward"] for r in rollouts]
    keys = {frozenset(r["reward_extra_info"]) for r in results}
    assert keys == {frozenset({"score", "verify_failed", "verify_attempts", "extracted_answer", "num_correct"})}
    assert all(r["reward_extra_info"]["verify_failed"] == 0.0 for r in results)
    # 0.7.0's math_with_judge reports no extracted answer for a wrong one: checked on the right ones.
    math = [r for r, ro in zip(results, rollouts) if "expected_answer" in ro and ro["reward"] == 1.0]
    assert math and all(r["reward_extra_info"]["extracted_answer"] is not None for r in math)


def test_ng07_07_materialized_join_scores_like_gym_eval_reverify(gym_servers: Any, tmp_path: Path) -> None:
    """../shared/cases/ng07-07: two xlam_fc tasks share prompt and tools (truth Paris / London), the
    policy said Paris each time. Joined on (_ng_task_index, _ng_rollout_index), as `gym eval
    reverify` does, task 0 scores 1.0 and task 1 0.0: the collected rewards."""
    from conftest import SHARED

    case = SHARED / "cases" / "ng07-07-rescore-materialized-join-by-line"
    if not case.exists():
        pytest.skip(f"{case} not present")
    for name in ("r.jsonl", "r_materialized_inputs.jsonl"):
        (tmp_path / name).write_bytes((case / name).read_bytes())
    url = gym_servers.url("xlam_fc")
    want = {(0, 0): 1.0, (0, 1): 1.0, (1, 0): 0.0, (1, 1): 0.0}
    for tasks in (None, case / "tasks.jsonl"):  # beside the input (found by itself), or the original tasks file
        out = tmp_path / f"out_{'side' if tasks is None else 'tasks'}.jsonl"
        s = rescore_file(tmp_path / "r.jsonl", out, [url], tasks=tasks, force=True)
        assert s.joined_tasks == 4 and s.failed == 0 and s.changed == 0, s.to_dict()
        assert {(r["_ng_task_index"], r["_ng_rollout_index"]): r["reward"] for r in read_jsonl(out)} == want
