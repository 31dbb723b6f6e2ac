"""Issue 14 proof (CPU): gymverl's `gymverl_env` agent loop plays real NeMo Gym 0.7 episodes inside VeRL.

Driven by VeRL 0.9.1's own rollout machinery: `gymverl to-parquet --format rl` -> VeRL's `RLHFDataset`
+ `collate_fn` -> `AgentLoopWorker.generate_sequences` (the loop declared through
`agent.agent_loop_config_path`, as a user would), a real tokenizer (gymverl.tiny) with Qwen2.5's real
tool-capable chat template, against real NeMo Gym resources servers (example_multi_step: a multi-step
tool environment; workplace_assistant: 27 stateful workplace tools; math_with_judge: single-turn). Only the model is a stand-in: `ScriptedTokens`, an
`LLMServerClient.generate` that answers scripted hermes text as token ids with known logprobs.

The same scripts drive NeMo Gym's own `simple_agent` (its `/run`, with `openai_model` pointed at
tests/policy_server.py's scripted policy): the rewards and verifier outputs must be equal.
Faults (a fake resources server, for fault injection only): a failed `/verify`, a `mask_sample`
answer, a tool 5xx -> the sample is marked and excluded from the loss (or the step raises), never 0.0.
"""

from __future__ import annotations

import asyncio
import json
import threading
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from gymverl.cli import app

pytestmark = pytest.mark.verl
runner = CliRunner()

# Qwen2.5-Instruct's chat template (a real tool-capable template), one copy for all agent-loop tests.
from verl_agent_loop import QWEN25_TEMPLATE  # noqa: E402


def tiny_qwen(out_dir: Path) -> Path:
    """gymverl.tiny's Qwen2 model + tokenizer with Qwen2.5's chat template."""
    from verl_agent_loop import tiny_model_with_template

    return tiny_model_with_template(out_dir, QWEN25_TEMPLATE)


def hermes(answer: dict[str, Any]) -> str:
    """A scripted answer as the model's text: a hermes `<tool_call>` block, or plain text."""
    if "tool_call" in answer:
        return "<tool_call>\n" + json.dumps(answer["tool_call"]) + "\n</tool_call>"
    return answer["text"]


class ScriptedTokens:
    """Stand-in for VeRL's `LLMServerClient`: per script entry (matched in the decoded prompt), the
    turn after k `<tool_response>`s answers `steps[k]` as token ids + `<|im_end|>`, with known logprobs.
    `calls[match]` records (prompt ids, token ids, logprobs) of every turn."""

    def __init__(self, script: list[dict[str, Any]]) -> None:
        self.script = script
        self.tokenizer: Any = None
        self.calls: dict[str, list[tuple[list[int], list[int], list[float]]]] = {}

    async def generate(self, request_id: str, *, prompt_ids: list[int], sampling_params: dict[str, Any], **_: Any):  # noqa: ANN201
        from verl.workers.rollout.replica import TokenOutput

        text = self.tokenizer.decode(prompt_ids)
        entry = next(e for e in self.script if e["match"] in text)
        steps = entry["answers"][0].get("steps") or [entry["answers"][0]]
        k = text.count("<tool_response>")
        ids = self.tokenizer.encode(hermes(steps[min(k, len(steps) - 1)]), add_special_tokens=False)
        ids.append(self.tokenizer.convert_tokens_to_ids("<|im_end|>"))
        lps = [-0.01 * (1 + (len(prompt_ids) + i) % 50) for i in range(len(ids))]
        self.calls.setdefault(entry["match"], []).append((list(prompt_ids), ids, lps))
        return TokenOutput(token_ids=ids, log_probs=lps)


def verl_config(model_dir: Path, files: list[Path], loop_yaml: Path, *, prompt_length: int = 16384, response_length: int = 1024):  # noqa: ANN201
    """main_ppo's own config (ppo_trainer.yaml) with the overrides for gymverl's rl parquet + env loop."""
    from hydra import compose, initialize_config_dir

    import verl.trainer.main_ppo as main_ppo

    overrides = [
        f"actor_rollout_ref.model.path={model_dir}",
        f"data.train_files=[{','.join(str(f) for f in files)}]",
        f"data.max_prompt_length={prompt_length}",
        f"data.max_response_length={response_length}",
        "actor_rollout_ref.rollout.name=vllm",  # mandatory in the YAML; no server is started here
        f"actor_rollout_ref.rollout.agent.agent_loop_config_path={loop_yaml}",
    ]
    with initialize_config_dir(config_dir=str(Path(main_ppo.__file__).parent / "config"), version_base=None):
        return compose(config_name="ppo_trainer", overrides=overrides)


def to_rl(tasks: list[dict[str, Any]], out: Path) -> list[Path]:
    """`gymverl to-parquet TASKS --format rl` (all rows in train) -> the parquet files."""
    out.mkdir(parents=True, exist_ok=True)
    f = out / "tasks.jsonl"
    f.write_text("".join(json.dumps(t) + "\n" for t in tasks))
    res = runner.invoke(app, ["to-parquet", str(f), "--format", "rl", "-o", str(out / "rl"), "--val-fraction", "0"])
    assert res.exit_code == 0, res.output
    files = sorted((out / "rl").rglob("*.parquet"))
    assert files
    return files


def rollout(model_dir: Path, files: list[Path], loop_yaml: Path, policy: ScriptedTokens, **lengths: int):  # noqa: ANN201
    """Every row through RLHFDataset + AgentLoopWorker.generate_sequences with agent_name=gymverl_env
    (`lengths`: verl_config's prompt_length / response_length)."""
    from verl import DataProto
    from verl.experimental.agent_loop.agent_loop import AgentLoopWorker
    from verl.utils.dataset.rl_dataset import RLHFDataset, collate_fn

    cfg = verl_config(model_dir, files, loop_yaml, **lengths)
    worker = AgentLoopWorker(cfg, llm_client=policy)
    policy.tokenizer = worker.tokenizer
    dataset = RLHFDataset(data_files=[str(f) for f in files], tokenizer=worker.tokenizer, config=cfg.data)
    items = [dataset[i] for i in range(len(dataset))]
    assert len(items) == len(dataset) and items
    for item in items:
        item["agent_name"] = "gymverl_env"
    batch = DataProto.from_single_dict(collate_fn(items))
    return asyncio.run(worker.generate_sequences(batch)), items, worker.tokenizer


@pytest.fixture(scope="module")
def qwen_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_qwen(tmp_path_factory.mktemp("qwen25-tiny"))


# ---- faults: a fake resources server (fault injection only) ----------------------------------------

class FakeEnv:
    """A resources server on 127.0.0.1 (a thread) with one tool `lookup`, whose `/verify` answers per
    `verify` (ok: reward 0.75; an int: that HTTP status; "masked": NeMo Gym's judge fail-safe answer)
    and whose `tool` status (200 or a 5xx) is set per test. `requests` logs (path, Cookie header)."""

    def __init__(self, verify: Any = "ok", tool: int = 200, tool_answer: Any = None, seed: int = 200) -> None:
        self.verify, self.tool, self.seed = verify, tool, seed
        self.tool_answer = {"value": 42} if tool_answer is None else tool_answer
        self.requests: list[tuple[str, str]] = []
        self.verify_bodies: list[dict[str, Any]] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self.port = 0

    def _app(self):  # noqa: ANN202
        from aiohttp import web

        async def handle(request: web.Request) -> web.Response:
            path = request.path
            self.requests.append((path, request.headers.get("Cookie", "")))
            body = await request.json()
            if path == "/seed_session":
                if self.seed != 200:
                    return web.json_response({"detail": "seeding failed"}, status=self.seed)
                resp = web.json_response({})
                resp.set_cookie("ng_session", "s-123")
                return resp
            if path == "/lookup":
                return web.json_response(self.tool_answer, status=self.tool)
            if path == "/verify":
                self.verify_bodies.append(body)
                if isinstance(self.verify, int):
                    return web.json_response({"detail": "verifier crashed"}, status=self.verify)
                if self.verify == "masked":
                    return web.json_response({**body, "reward": 0.0, "mask_sample": True, "failure_kind": "judge_failed",
                                              "_ng_failure_class": "judge_failed", "failure_reason": "judge timed out"})
                return web.json_response({**body, "reward": 0.75})
            if path == "/close_session":
                return web.json_response({"resources_session_id": body["resources_session_id"]})
            return web.json_response({"detail": "Not Found"}, status=404)

        a = web.Application()
        a.router.add_post("/{name}", handle)
        return a

    def __enter__(self) -> "FakeEnv":
        from aiohttp import web

        async def start() -> None:
            self._runner = web.AppRunner(self._app(), access_log=None)
            await self._runner.setup()
            site = web.TCPSite(self._runner, "127.0.0.1", 0)
            await site.start()
            self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

        self._thread.start()
        asyncio.run_coroutine_threadsafe(start(), self._loop).result(timeout=10)
        return self

    def __exit__(self, *exc: Any) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


FAKE_TASK = {
    "responses_create_params": {
        "input": [{"role": "user", "content": "Look up the value and report it."}],
        "tools": [{"type": "function", "name": "lookup", "description": "Look up the value.",
                   "parameters": {"type": "object", "properties": {"key": {"type": "string"}}}}],
    },
    "expected": 42,
    "agent_ref": {"type": "responses_api_agents", "name": "fake_env_simple_agent"},
}
FAKE_SCRIPT = [{"match": "Look up the value", "answers": [{"steps": [
    {"tool_call": {"name": "lookup", "arguments": {"key": "k"}}}, {"text": "The value is 42."}]}]}]


def fake_rollout(qwen_model: Path, tmp_path: Path, env: FakeEnv, **settings: Any):  # noqa: ANN201
    from gymverl.env_loop import loop_config

    files = to_rl([FAKE_TASK], tmp_path / "data")
    yaml_path = loop_config(tmp_path / "loop.yaml", server=f"fake_env={env.url}", retries=0, **settings)
    policy = ScriptedTokens(FAKE_SCRIPT)
    out, _, tok = rollout(qwen_model, files, yaml_path, policy)
    return out, policy, tok


def test_fake_env_ok_episode_seeds_calls_verifies_closes_with_cookies(qwen_model: Path, tmp_path: Path) -> None:
    with FakeEnv() as env:
        out, policy, tok = fake_rollout(qwen_model, tmp_path, env)
    paths = [p for p, _ in env.requests]
    assert paths == ["/seed_session", "/lookup", "/verify", "/close_session"]
    assert all("ng_session=s-123" in c for p, c in env.requests[1:]), env.requests  # the seed's cookie, every time
    assert float(out.batch["rm_scores"][0].sum()) == 0.75
    assert out.non_tensor_batch["env_failed"][0] == 0.0
    # /verify got the whole trajectory as Responses-API items
    items = env.verify_bodies[0]["response"]["output"]
    assert [i["type"] for i in items] == ["function_call", "function_call_output", "message"]
    assert json.loads(items[0]["arguments"]) == {"key": "k"} and items[1]["output"] == '{"value": 42}'
    assert items[1]["call_id"] == items[0]["call_id"] and items[2]["content"][0]["text"] == "The value is 42."
    assert env.verify_bodies[0]["expected"] == 42  # task fields sent
    assert list(out.non_tensor_batch["gymverl_response_output"][0]) == items  # the trajectory kept for the trainer's logs
    assert out.non_tensor_batch["gymverl_verify_answer"][0] == {"reward": 0.75}
    mask = out.batch["response_mask"][0]
    assert int(mask.sum()) == sum(len(ids) for _, ids, _ in policy.calls[FAKE_SCRIPT[0]["match"]])


def test_fake_env_max_turns_still_runs_the_last_calls(qwen_model: Path, tmp_path: Path) -> None:
    with FakeEnv() as env:
        out, policy, _ = fake_rollout(qwen_model, tmp_path, env, max_turns=1)
    assert [p for p, _ in env.requests] == ["/seed_session", "/lookup", "/verify", "/close_session"]
    assert len(policy.calls[FAKE_SCRIPT[0]["match"]]) == 1  # one model turn
    assert [i["type"] for i in env.verify_bodies[0]["response"]["output"]] == ["function_call", "function_call_output"]
    assert out.non_tensor_batch["env_turns"][0] == 1.0 and out.non_tensor_batch["env_tool_calls"][0] == 1.0


def test_fake_env_long_tool_output_is_cut_and_says_so(qwen_model: Path, tmp_path: Path) -> None:
    long = {"value": 42, "log": " ".join(f"line {i} of the tool's log" for i in range(200))}
    with FakeEnv(tool_answer=long) as env:
        out, _, tok = fake_rollout(qwen_model, tmp_path, env, max_tool_output_tokens=6)
    full = json.dumps(long)
    assert env.verify_bodies[0]["response"]["output"][1]["output"] == full  # /verify: the whole output
    mask, resp = out.batch["response_mask"][0], out.batch["responses"][0]
    n = int(out.batch["attention_mask"][0, out.batch["prompts"].shape[1]:].sum())
    seen = tok.decode(resp[:n][~mask[:n].bool()].tolist())  # the model: 6 tokens of it and a note
    assert "[gymverl: tool output cut to 6 of " in seen and "line 199" not in seen
    assert out.non_tensor_batch["env_tool_outputs_cut"][0] == 1.0


@pytest.mark.parametrize(("verify", "tool", "stage", "reason"), [
    (500, 200, "verify", "http_5xx"),
    ("masked", 200, "verify", "judge_failed"),
    ("ok", 503, "tool", "http_5xx"),
    ("ok", 200, "seed_session", "http_5xx"),
    ("ok", 200, "seed_session", "http_4xx"),
])
def test_fake_env_failure_masks_sample_never_zero_reward(qwen_model: Path, tmp_path: Path, verify: Any, tool: int, stage: str, reason: str) -> None:
    seed = 200
    if stage == "seed_session":
        seed, verify = (500 if reason == "http_5xx" else 422), "ok"
    with FakeEnv(verify=verify, tool=tool, seed=seed) as env:
        out, _, _ = fake_rollout(qwen_model, tmp_path, env, on_failure="mask")
    assert [p for p, _ in env.requests][0] == "/seed_session" and env.requests[-1][0] == "/close_session"
    assert out.non_tensor_batch["env_failed"][0] == 1.0  # VeRL's reward_extra_info -> a per-step metric
    failure = out.non_tensor_batch["gymverl_env_failure"][0]
    assert (failure["stage"], failure["reason"]) == (stage, reason), failure
    assert int(out.batch["response_mask"][0].sum()) == 0  # not one token of it is trained
    assert int(out.batch["attention_mask"][0].sum()) > 0


@pytest.mark.parametrize(("verify", "tool"), [(500, 200), ("masked", 200), ("ok", 502)])
def test_fake_env_failure_raises_by_default(qwen_model: Path, tmp_path: Path, verify: Any, tool: int) -> None:
    from gymverl.env_loop import EnvEpisodeFailed

    with FakeEnv(verify=verify, tool=tool) as env, pytest.raises(EnvEpisodeFailed):
        fake_rollout(qwen_model, tmp_path, env)
    assert env.requests[-1][0] == "/close_session"  # the session is closed all the same


# ---- proof: real NeMo Gym 0.7 servers, compared with NeMo Gym's own simple_agent -------------------

# resources server -> its ng_run process name
REAL_SERVERS = {
    "example_multi_step": "example_multi_step_resources_server",
    "math_with_judge": "math_with_judge",
    "example_session_state_mgmt": "example_session_state_mgmt_resources_server",
    "workplace_assistant": "workplace_assistant",
}


def _user_text(task: dict[str, Any]) -> str:
    return [m for m in task["responses_create_params"]["input"] if m.get("role") == "user"][-1]["content"]


def real_tasks(env: Path) -> list[dict[str, Any]]:
    """example_multi_step's first 2 shipped tasks, math_with_judge's first and example_session_state_mgmt's
    first (a counter kept per session cookie: seeded with `initial_count`, verified against `expected_count`),
    each with its simple agent."""
    from gymverl.nemo_gym import package_dir

    out = []
    for server, n in (("example_multi_step", 2), ("math_with_judge", 1), ("example_session_state_mgmt", 1)):
        lines = (package_dir(env) / "resources_servers" / server / "data" / "example.jsonl").read_text().splitlines()
        for line in lines[:n]:
            row = json.loads(line)
            row["agent_ref"] = {"type": "responses_api_agents", "name": f"{server}_simple_agent"}
            out.append(row)
    return out


def real_script(tasks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Multi-step task 0: look every synonym up, extract the values in order, answer (reward 1);
    task 1: look up only the first synonym and extract just its value (reward 0, partial overlap);
    math: the reference answer boxed; counter: add 1, add 2 (the task says so), read the counter, answer."""
    script = []
    for t, task in enumerate(tasks):
        if "expected_synonyms" in task:
            syns = task["expected_synonyms"] if t == 0 else task["expected_synonyms"][:1]
            values = [sum(map(ord, s)) for s in syns]  # what the server's get_synonym_value answers
            steps = [{"tool_call": {"name": "get_synonym_value", "arguments": {"synonym": s}}} for s in syns]
            steps.append({"tool_call": {"name": "extract_synonym_values", "arguments": {"synonym_values": values}}})
            steps.append({"text": "I extracted the synonym values."})
            answer: dict[str, Any] = {"steps": steps}
        elif "expected_count" in task:
            steps = [{"tool_call": {"name": "increment_counter", "arguments": {"count": c}}} for c in (1, 2)]
            steps += [{"tool_call": {"name": "get_counter_value", "arguments": {}}}, {"text": "The count is 6."}]
            answer = {"steps": steps}
        else:
            answer = {"text": "\\boxed{%s}" % task["expected_answer"]}
        script.append({"match": _user_text(task)[-100:], "answers": [answer]})
    return script


def workplace_tasks(env: Path) -> list[dict[str, Any]]:
    """workplace_assistant's first 2 shipped tasks (email: reply to Carlos's last email; calendar: rename
    the last event of December 1), each with its simple agent. Its `/verify` replays the predicted and
    the ground-truth calls on fresh copies of the five toolkits' data and compares the states."""
    from gymverl.nemo_gym import package_dir

    lines = (package_dir(env) / "resources_servers" / "workplace_assistant" / "data" / "example.jsonl").read_text().splitlines()
    out = []
    for line in lines[:2]:
        row = json.loads(line)
        row["agent_ref"] = {"type": "responses_api_agents", "name": "workplace_assistant_simple_agent"}
        out.append(row)
    return out


def workplace_script(tasks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Email task: look Carlos's address up, search his emails, reply to the one the search finds
    (00000057, the ground truth's), answer (reward 1). Calendar task: search December 1's events,
    rename the right event (00000252) to a wrong name (reward 0: the calendar state differs)."""
    email, calendar = tasks
    assert email["category"].endswith("email") and calendar["category"].endswith("calendar"), (email["category"], calendar["category"])
    reply = json.loads(email["ground_truth"][0]["arguments"])["body"]
    steps_email = [
        {"tool_call": {"name": "company_directory_find_email_address", "arguments": {"name": "carlos"}}},
        {"tool_call": {"name": "email_search_emails", "arguments": {"query": "carlos Task Update on Develop prototype for report generation"}}},
        {"tool_call": {"name": "email_reply_email", "arguments": {"email_id": "00000057", "body": reply}}},
        {"text": "I replied to Carlos's last email."},
    ]
    steps_calendar = [
        {"tool_call": {"name": "calendar_search_events", "arguments": {"time_min": "2023-12-01 00:00:00", "time_max": "2023-12-02 00:00:00"}}},
        {"tool_call": {"name": "calendar_update_event", "arguments": {"event_id": "00000252", "field": "event_name", "new_value": "Risk Forum"}}},
        {"text": "I renamed the event."},
    ]
    return [{"match": _user_text(t)[-100:], "answers": [{"steps": s}]} for t, s in ((email, steps_email), (calendar, steps_calendar))]


@pytest.fixture(scope="module")
def gym(nemo_gym_env: Path, tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    """Real servers, once for the module: the resources servers, their simple agents, and
    openai_model pointed at the scripted policy server (for the simple_agent side)."""
    from gymverl.nemo_gym import NemoGymServers, package_dir

    from policy_server import PolicyServer, ScriptedPolicy

    tasks = real_tasks(nemo_gym_env)
    root = package_dir(nemo_gym_env)
    configs = [root / "resources_servers" / s / "configs" / f"{s}.yaml" for s in REAL_SERVERS]
    configs.append(root / "responses_api_models" / "openai_model" / "configs" / "openai_model.yaml")
    log = tmp_path_factory.mktemp("ng") / "ng_run.log"
    script = real_script(tasks) + workplace_script(workplace_tasks(nemo_gym_env))
    with PolicyServer(ScriptedPolicy(script)) as policy, NemoGymServers(
        configs, env=nemo_gym_env, policy_base_url=policy.base_url, log_path=log
    ) as servers:
        yield tasks, servers


def simple_agent_run(servers: Any, task: dict[str, Any]) -> dict[str, Any]:
    """NeMo Gym's own simple_agent `/run` on `task`: its verify answer."""
    url = servers.url(task["agent_ref"]["name"]) + "/run"
    req = urllib.request.Request(url, data=json.dumps(task).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=300) as resp:
        return json.loads(resp.read())


def play_and_compare(gym: Any, qwen_model: Path, tmp_path: Path, tasks: list[dict[str, Any]], script: list[dict[str, Any]], **lengths: int):  # noqa: ANN201
    """Play `tasks` with the `gymverl_env` loop through VeRL's AgentLoopWorker (the scripted `script`
    as the model) and run NeMo Gym's simple_agent on each; assert, per task, that the reward and the
    verifier's outputs are equal, /verify got the same trajectory, the session was seeded, every tool
    called, verified and closed in order, and the response is token-exact with the tool outputs at
    mask 0 (`lengths`: verl_config's). Returns (rollout output, task index -> batch row)."""
    from gymverl.env_loop import loop_config

    _, servers = gym
    files = to_rl(tasks, tmp_path / "data")
    spec = " ".join(f"{s}={servers.url(proc)}" for s, proc in REAL_SERVERS.items())
    yaml_path = loop_config(tmp_path / "loop.yaml", server=spec)
    policy = ScriptedTokens(script)
    out, items, tok = rollout(qwen_model, files, yaml_path, policy, **lengths)

    by_task = {}
    for i, item in enumerate(items):
        text = tok.decode(out.batch["prompts"][i][out.batch["attention_mask"][i, : out.batch["prompts"].shape[1]].bool()].tolist())
        t = next(k for k, e in enumerate(script) if e["match"] in text)
        by_task[t] = i
    assert sorted(by_task) == list(range(len(tasks)))

    width = out.batch["prompts"].shape[1]
    for t, task in enumerate(tasks):
        i = by_task[t]
        ours = out.non_tensor_batch["gymverl_verify_answer"][i]
        assert out.non_tensor_batch["gymverl_env_failure"][i] is None
        theirs = simple_agent_run(servers, task)
        # The reward (and the verifier's own measurements) equal NeMo Gym's simple_agent's.
        reward = float(out.batch["rm_scores"][i].sum())
        assert reward == ours["reward"] == theirs["reward"], (t, reward, theirs["reward"])
        for key in ("parsed_synonym_values", "set_overlap", "accuracy", "extracted_answer"):
            assert ours.get(key) == theirs.get(key), (t, key)
        # /verify got the full trajectory: the same items, in the same order, as simple_agent sends.
        def shape(output: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
            return [(o["type"], o.get("name"), json.loads(o["arguments"]) if o["type"] == "function_call" else None,
                     o.get("output") if o["type"] == "function_call_output" else None) for o in output]
        our_output = out.non_tensor_batch["gymverl_response_output"][i]
        assert shape(our_output) == shape(theirs["response"]["output"]), t
        assert "response" not in ours and "responses_create_params" not in ours  # the echo is not kept twice
        # Session: seeded, every tool called on the server, verified, closed -- in that order.
        calls = list(out.non_tensor_batch["gymverl_env_calls"][i])
        fc = [o["name"] for o in our_output if o["type"] == "function_call"]
        assert calls == ["/seed_session", *["/" + n for n in fc], "/verify", "/close_session"], calls

        # Token-exact: the mask-1 tokens are exactly the generated ones (with their logprobs); the
        # tool outputs are in the response with mask 0.
        mask = out.batch["response_mask"][i]
        resp = out.batch["responses"][i]
        n = int(out.batch["attention_mask"][i, width:].sum())
        gen = policy.calls[script[t]["match"]]
        assert resp[:n][mask[:n].bool()].tolist() == [x for _, ids, _ in gen for x in ids]
        lp = out.batch["rollout_log_probs"][i][:n][mask[:n].bool()].tolist()
        assert np.allclose(lp, [x for _, _, lps in gen for x in lps])
        tool_text = tok.decode(resp[:n][~mask[:n].bool()].tolist())
        outputs = [o["output"] for o in our_output if o["type"] == "function_call_output"]
        steps = script[t]["answers"][0].get("steps", [])
        assert len(outputs) == sum("tool_call" in st for st in steps) and len(gen) == max(1, len(steps))
        for o in outputs:
            assert o in tool_text and o not in tok.decode(resp[:n][mask[:n].bool()].tolist())
    return out, by_task


@pytest.mark.nemo_gym
@pytest.mark.slow
def test_real_envs_episode_matches_simple_agent(gym: Any, qwen_model: Path, tmp_path: Path) -> None:
    tasks, _ = gym
    out, by_task = play_and_compare(gym, qwen_model, tmp_path, tasks, real_script(tasks))
    assert [float(out.batch["rm_scores"][by_task[t]].sum()) for t in range(4)] == [1.0, 0.0, 1.0, 1.0]
    # The counter lives in the server, per session cookie: seeded at 3, +1 +2 by this episode's calls.
    counter = out.non_tensor_batch["gymverl_response_output"][by_task[3]]
    assert [o["output"] for o in counter if o["type"] == "function_call_output"][-1].replace(" ", "") == '{"count":6}'
    assert tasks[3]["initial_count"] == 3 and tasks[3]["expected_count"] == 6


@pytest.mark.nemo_gym
@pytest.mark.slow
def test_workplace_assistant_episode_matches_simple_agent(gym: Any, nemo_gym_env: Path, qwen_model: Path, tmp_path: Path) -> None:
    """workplace_assistant (27 tools, state per session, /verify replays the calls and compares the
    five toolkits' states): the scripted policy makes real calls whose answers come from the
    environment's data, and the rewards (1 for the right reply, 0 for the misnamed event) equal
    simple_agent's."""
    tasks = workplace_tasks(nemo_gym_env)
    # The tool outputs (search results) are long in the tiny tokenizer: room for the whole episode.
    out, by_task = play_and_compare(gym, qwen_model, tmp_path, tasks, workplace_script(tasks), response_length=8192)
    assert [float(out.batch["rm_scores"][by_task[t]].sum()) for t in range(2)] == [1.0, 0.0]
    email = [o["output"] for o in out.non_tensor_batch["gymverl_response_output"][by_task[0]] if o["type"] == "function_call_output"]
    # the environment's own data answered: Carlos's address, then his email the reply goes to
    assert "carlos.rodriguez@atlas.com" in email[0] and "00000057" in email[1], email
    calendar = [o["output"] for o in out.non_tensor_batch["gymverl_response_output"][by_task[1]] if o["type"] == "function_call_output"]
    assert "00000252" in calendar[0], calendar
    # the rendered prompt carried all 27 tools of the task
    assert len(tasks[0]["responses_create_params"]["tools"]) == 27


def test_unreachable_server_is_a_connection_failure(qwen_model: Path, tmp_path: Path) -> None:
    from gymverl.env_loop import loop_config
    from gymverl.nemo_gym import free_port

    files = to_rl([FAKE_TASK], tmp_path / "data")
    yaml_path = loop_config(tmp_path / "loop.yaml", server=f"fake_env=http://127.0.0.1:{free_port()}", on_failure="mask")
    out, _, _ = rollout(qwen_model, files, yaml_path, ScriptedTokens(FAKE_SCRIPT))
    failure = out.non_tensor_batch["gymverl_env_failure"][0]
    assert (failure["stage"], failure["reason"]) == ("seed_session", "connection"), failure
    assert out.non_tensor_batch["env_failed"][0] == 1.0 and int(out.batch["response_mask"][0].sum()) == 0


_FIRST_IMPORT = """
import json, sys
from omegaconf import OmegaConf
from verl.experimental.agent_loop.agent_loop import _agent_loop_registry
if sys.argv[1] != "-":
    for entry in OmegaConf.load(sys.argv[1]):  # what AgentLoopWorker.__init__ does
        _agent_loop_registry[entry.name] = entry
assert "gymverl.env_loop" not in sys.modules
import gymverl.env_loop  # what hydra does when it instantiates the first trajectory's loop
print(json.dumps(OmegaConf.to_container(OmegaConf.create(dict(_agent_loop_registry["gymverl_env"])))))
"""


def test_yaml_settings_survive_the_modules_first_import(tmp_path: Path) -> None:
    """In a main_ppo rollout worker the agent-loop YAML (with `server`) is loaded before gymverl.env_loop
    is first imported (by hydra, for the first trajectory): the module's registration must keep that
    entry, or every later trajectory is built without its settings (found by a CPU GRPO run:
    EnvLoopConfigError 'no NeMo Gym resources server' from the second trajectory on)."""
    import subprocess
    import sys

    from gymverl.env_loop import loop_config

    repo = Path(__file__).resolve().parents[1]
    yaml_path = loop_config(tmp_path / "loop.yaml", server="math=http://127.0.0.1:9", max_turns=3)

    def first_import(arg: str) -> dict[str, Any]:
        res = subprocess.run([sys.executable, "-c", _FIRST_IMPORT, arg], capture_output=True, text=True, timeout=300,
                             env={**__import__("os").environ, "PYTHONPATH": str(repo)})
        assert res.returncode == 0, res.stderr[-2000:]
        return json.loads(res.stdout.strip().splitlines()[-1])

    kept = first_import(str(yaml_path))
    assert kept["server"] == "math=http://127.0.0.1:9" and kept["max_turns"] == 3, kept
    assert first_import("-") == {"_target_": "gymverl.env_loop.GymverlEnvAgentLoop"}  # still registered without a YAML


def test_row_tools_and_task_from_rl_rows() -> None:
    from gymverl.env_loop import row_task, row_tools

    params = FAKE_TASK["responses_create_params"]
    chat = [{"type": "function", "function": {"name": "lookup", "description": "Look up the value.",
                                              "parameters": {"type": "object", "properties": {"key": {"type": "string"}}}}}]
    assert row_tools({"tools": None}, params) == chat  # converted from the task's Responses-API tools
    assert row_tools({"tools": "null"}, params) == chat
    own = [{"type": "function", "function": {"name": "other", "parameters": {"type": "object"}}}]
    assert row_tools({"tools": json.dumps(own)}, params) == own  # the row's own extra_info.tools win
    assert row_tools({}, {"input": "hi"}) is None
    with pytest.raises(ValueError, match="extra_info.tools"):
        row_tools({"tools": '[{"name": "flat"}]'}, params)
    ng = {"responses_create_params": params, "task": {"expected": 42}, "agent_ref": {"name": "fake_env_simple_agent"}}
    assert row_task({"nemo_gym": json.dumps(ng)}) == (params, {"expected": 42}, "fake_env_simple_agent")
    with pytest.raises(ValueError, match="to-parquet --format rl"):
        row_task({})


def test_settings_route_by_agent_name_and_refuse_bad_values(monkeypatch: pytest.MonkeyPatch) -> None:
    from gymverl.env_loop import EnvLoopConfigError, EnvLoopSettings

    s = EnvLoopSettings.from_kwargs({"server": "math=http://a:1 math_with_judge=http://b:2 http://c:3"})
    assert s.server_for("math_with_judge_simple_agent") == "http://b:2"  # the longest matching name
    assert s.server_for("math_simple_agent") == "http://a:1" and s.server_for("other") == "http://c:3"
    monkeypatch.delenv("GYMVERL_ENV_URL", raising=False)
    monkeypatch.delenv("GYMVERL_VERIFY_URL", raising=False)
    with pytest.raises(EnvLoopConfigError, match="GYMVERL_ENV_URL"):
        EnvLoopSettings.from_kwargs({})
    monkeypatch.setenv("GYMVERL_ENV_URL", "http://d:4")
    assert EnvLoopSettings.from_kwargs({}).server_for(None) == "http://d:4"
    with pytest.raises(EnvLoopConfigError, match="on_failure"):
        EnvLoopSettings.from_kwargs({"on_failure": "zero"})
    with pytest.raises(EnvLoopConfigError):
        EnvLoopSettings.from_kwargs({"max_turns": "many"})
