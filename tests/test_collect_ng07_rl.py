"""Proof for issue 11: RL training data from real NeMo Gym rollouts means what it says.

Real servers of the installed NeMo Gym (0.7.0 by default; 0.4.0 with `make test-nemo-gym-0.4`):
math_with_judge, mcqa and xlam_fc with their simple agents and `openai_model` pointed at the
scripted policy. `gymverl collect` collects 2 rollouts per task (the reference answer, then a
non-answer), `gymverl to-parquet --format rl` converts them (0.7.0 drops task fields such as
xlam_fc's `expected_answers` and mcqa's `options` from rollout lines: they come from
`<stem>_materialized_inputs.jsonl`, found automatically), and `gymverl.reward.compute_score` --
VeRL's reward function -- scores every task's reference answer 1.0 and a non-answer 0.0 against
the same real servers. The same parquet, run through VeRL's rollout worker (`RLHFDataset` +
`AgentLoopWorker`, Qwen2.5's chat template, a stand-in model), shows every xlam_fc task's own tools
in the prompt the policy gets (gymverl's agent loop, issue 12), and no tools on the other tasks.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from gymverl.cli import app
from gymverl.formats.rl import STOCK_AGENT, TOOLS_AGENT
from gymverl.nemo_gym import NemoGymServers, nemo_gym_version, package_dir

from policy_server import PolicyServer, ScriptedPolicy

pytestmark = [pytest.mark.nemo_gym, pytest.mark.slow]
runner = CliRunner()
SERVERS = ("math_with_judge", "mcqa", "xlam_fc")
TASKS_PER_SERVER = 2
NON_ANSWER = "I am not sure."


def _user_text(task: dict) -> str:
    msgs = task["responses_create_params"]["input"]
    return [m for m in msgs if m.get("role") == "user"][-1]["content"]


def _reference(server: str, task: dict) -> str:
    """The reference answer as the policy would write it (VeRL's solution_str)."""
    if server == "xlam_fc":
        return "".join(f"<tool_call>{json.dumps(c)}</tool_call>" for c in task["expected_answers"])
    return "\\boxed{%s}" % task["expected_answer"]


def _tasks(env: Path) -> list[tuple[str, dict]]:
    """The first TASKS_PER_SERVER shipped example tasks of each server (xlam_fc: one expected call,
    which the scripted policy can make), each with its server's agent."""
    out = []
    for server in SERVERS:
        rows = [json.loads(x) for x in (package_dir(env) / "resources_servers" / server / "data" / "example.jsonl").read_text().splitlines() if x.strip()]
        if server == "xlam_fc":
            rows = [r for r in rows if len(r["expected_answers"]) == 1]
        for row in rows[:TASKS_PER_SERVER]:
            row["agent_ref"] = {"type": "responses_api_agents", "name": f"{server}_simple_agent"}
            out.append((server, row))
    return out


def _script(tasks: list[tuple[str, dict]]) -> list[dict]:
    """Per task: first the reference answer, then a non-answer (i-th request -> answers[i % 2])."""
    script = []
    for server, task in tasks:
        if server == "xlam_fc":
            call = task["expected_answers"][0]
            good = {"tool_call": {"name": call["name"], "arguments": call["arguments"]}, "then": "Done."}
        else:
            good = {"text": _reference(server, task)}
        script.append({"match": _user_text(task)[-120:], "answers": [good, {"text": NON_ANSWER}]})
    return script


def test_rl_parquet_from_real_rollouts_scores_reference_1_and_non_answer_0(nemo_gym_env: Path, tmp_path: Path) -> None:
    version = nemo_gym_version(nemo_gym_env)
    tasks = _tasks(nemo_gym_env)
    assert len(tasks) == len(SERVERS) * TASKS_PER_SERVER
    tasks_file = tmp_path / "tasks.jsonl"
    tasks_file.write_text("".join(json.dumps(t) + "\n" for _, t in tasks))
    root = package_dir(nemo_gym_env)
    configs = [root / "resources_servers" / s / "configs" / f"{s}.yaml" for s in SERVERS]
    configs.append(root / "responses_api_models" / "openai_model" / "configs" / "openai_model.yaml")
    out = tmp_path / "r.jsonl"

    with PolicyServer(ScriptedPolicy(_script(tasks))) as policy, NemoGymServers(
        configs, env=nemo_gym_env, policy_base_url=policy.base_url, log_path=tmp_path / "ng_run.log"
    ) as servers:
        # 1. Collect through gymverl (NeMo Gym's own collector), 2 rollouts per task, 2 in flight.
        res = runner.invoke(app, ["collect", "-i", str(tasks_file), "-o", str(out), "-n", "2", "-c", "2",
                                  "--head-url", f"http://127.0.0.1:{servers.head_port}", "--json"])
        assert res.exit_code == 0, res.output
        collected = json.loads(res.stdout)
        assert collected["validation"]["valid"] == 12
        if version and version.startswith("0.7"):
            # 0.7.0's collector checks the run's health afterwards; collect reports what it found.
            quality = collected["quality"]
            assert quality is not None and quality["summary"] == str(tmp_path / "quality_summary.json"), quality
            assert quality["rollouts"] == 12, quality
        rows = [json.loads(x) for x in out.read_text().splitlines()]
        by_pair = {(r["_ng_task_index"], r["_ng_rollout_index"]): r for r in rows}
        for t, (server, _) in enumerate(tasks):
            # The real verifiers scored the collection: reference 1.0, non-answer 0.0.
            got = sorted(by_pair[(t, i)]["reward"] for i in range(2))
            assert got == [0.0, 1.0], (server, t, got)
        if version and version.startswith("0.7"):
            # What made RL rows wrong before: the ground truth is not in 0.7.0's rollout lines.
            assert all("expected_answers" not in r for r in rows if r["_ng_task_index"] >= 4)
            assert out.with_name("r_materialized_inputs.jsonl").exists()

        # 2. RL parquet: one row per task, task fields joined from the materialized inputs.
        parquet = tmp_path / "rl.parquet"
        res = runner.invoke(app, ["to-parquet", str(out), "--format", "rl", "-o", str(parquet), "--strict"])
        assert res.exit_code == 0, res.output
        table = pq.read_table(parquet).to_pylist()
        assert len(table) == len(tasks)

        # 3. VeRL's reward function against the same real servers.
        spec = " ".join(f"{s}={servers.url(s)}" for s in SERVERS)

        async def score_all() -> list[tuple[str, float, float]]:
            from gymverl.reward import compute_score, get_client

            try:
                return await _score(compute_score)
            finally:
                await get_client(server=spec).close()  # the pool belongs to this event loop

        async def _score(compute_score) -> list[tuple[str, float, float]]:
            scores = []
            for row in table:
                extra = row["extra_info"]
                ng = extra["nemo_gym"] if isinstance(extra["nemo_gym"], dict) else json.loads(extra["nemo_gym"])
                server = next(s for s in SERVERS if ng["agent_ref"]["name"].startswith(s))
                ref = _reference(server, ng["task"])  # from the parquet's own task fields
                good = await compute_score(row["data_source"], ref, row["reward_model"]["ground_truth"], extra, server=spec)
                bad = await compute_score(row["data_source"], NON_ANSWER, row["reward_model"]["ground_truth"], extra, server=spec)
                assert good["verify_failed"] == 0.0 and bad["verify_failed"] == 0.0
                scores.append((server, good["score"], bad["score"]))
            return scores

        scores = asyncio.run(score_all())
    assert sorted(s for s, _, _ in scores) == sorted(s for s, _ in tasks)
    assert all((good, bad) == (1.0, 0.0) for _, good, bad in scores), scores

    # 4. The policy sees each task's own tools: the same parquet through VeRL's rollout worker
    # (the servers are not needed for this; only the model is a stand-in).
    from verl_agent_loop import render_prompts, tiny_model_with_template

    rendered, _ = render_prompts(tiny_model_with_template(tmp_path / "qwen25"), [parquet], prompt_length=16384)
    assert len(rendered) == len(tasks)
    for r in rendered:
        ng = json.loads(r.extra_info["nemo_gym"])
        server = next(s for s in SERVERS if ng["agent_ref"]["name"].startswith(s))
        tools = ng["responses_create_params"].get("tools") or []
        assert bool(tools) == (server == "xlam_fc"), server
        if server == "xlam_fc":
            assert r.agent_name == TOOLS_AGENT
            for tool in tools:
                assert f'"name": "{tool["name"]}"' in r.text, (tool["name"], r.text)
                for param in (tool.get("parameters") or {}).get("properties") or {}:
                    assert f'"{param}":' in r.text
            # the tool the reference answer calls is among them
            assert f'"name": "{ng["task"]["expected_answers"][0]["name"]}"' in r.text
        else:
            assert r.agent_name == STOCK_AGENT and "<tools>" not in r.text
