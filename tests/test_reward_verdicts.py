"""compute_score gives the verifier's real verdict on the *final answer* (issue 12, items 2, 3, 5).

- Reasoning (`think-tag-reward`): split like NeMo Gym (everything up to the last closing marker is
  reasoning; an unclosed block, or no close when the template opened it, is no answer), markers per
  model family. Verdicts from real NeMo Gym 0.7.0 mcqa and math_with_judge servers (`gym_servers`).
- reward_components: real `example_tool_call_multireward` server (NeMo Gym's multi-reward example);
  failures via the fake /verify (fault injection only).
- verifier_metadata (`verifier-metadata-dropped`): a row written by to-parquet reaches a real
  `example_mcp_weather` server with its ground truth.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from fake_verify_server import FakeServer
from gymverl.errors import UsageError
from gymverl.reasoning import NO_REASONING, ReasoningMarkers, markers_from_settings, parse_markers, split_reasoning
from gymverl.reward import RewardConfigError, VerifyFailed, compute_score, response_from_text

MCQA_TASK = {
    "responses_create_params": {
        "input": [
            {
                "role": "user",
                "content": "You should output your final response letter inside \\boxed{} and nothing else. Which test finds a specific CF mutation?\n"
                "A: Karyotyping\nB: Polymerase Chain Reaction (PCR)\nC: Whole-genome sequencing\nD: Chromosome painting",
            }
        ]
    },
    "options": [{"A": "Karyotyping"}, {"B": "Polymerase Chain Reaction (PCR)"}, {"C": "Whole-genome sequencing"}, {"D": "Chromosome painting"}],
    "expected_answer": "B",
    "grading_mode": "strict_single_letter_boxed",
    "agent_ref": {"type": "responses_api_agents", "name": "mcqa_simple_agent"},
}
MATH_TASK = {
    "responses_create_params": {"input": [{"role": "user", "content": "Put the answer inside \\boxed{}.\n\nWhat is $7 \\times 8$?"}]},
    "question": "What is $7 \\times 8$?",
    "expected_answer": "56",
    "agent_ref": {"type": "responses_api_agents", "name": "math_with_judge_simple_agent"},
}


def _info(task: dict[str, Any]) -> dict[str, Any]:
    ng = {
        "responses_create_params": task["responses_create_params"],
        "task": {k: v for k, v in task.items() if k not in ("responses_create_params", "agent_ref")},
        "agent_ref": task["agent_ref"],
    }
    return {"split": "train", "index": 3, "nemo_gym": json.dumps(ng)}


@pytest.fixture(autouse=True)
def no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("GYMVERL_VERIFY_URL", "GYMVERL_VERIFY_ON_FAILURE", "GYMVERL_REASONING_MARKERS", "GYMVERL_REWARD_COMPONENTS", "GYMVERL_REWARD_COMPONENT_PREFIX"):
        monkeypatch.delenv(var, raising=False)


# ---- the split itself ---------------------------------------------------------------------------

THINK = ReasoningMarkers("<think>", "</think>", False)
OPENED = ReasoningMarkers("<think>", "</think>", True)


@pytest.mark.parametrize(
    "text, markers, reasoning, answer, closed",
    [
        ("<think>r</think>a", THINK, "r", "a", True),  # A/B: both tags
        ("\n<think>r</think>\n\na ", THINK, "r", "\n\na ", True),  # the answer kept byte for byte (NeMo Gym)
        ("r \\boxed{1}</think>a", THINK, "r \\boxed{1}", "a", True),  # C/D: template opened it
        ("<think>r</think>x<think>s</think>a", THINK, "r</think>x<think>s", "a", True),  # up to the LAST close
        ("<think>r \\boxed{1}", THINK, "r \\boxed{1}", "", False),  # E: cut off inside the reasoning
        ("<think>r</think>a<think>more", THINK, "r</think>a<think>more", "", False),  # a new block never closed
        ("r \\boxed{1}", OPENED, "r \\boxed{1}", "", False),  # F: opened by the template, never closed
        ("plain \\boxed{1}", THINK, "", "plain \\boxed{1}", True),  # no reasoning at all
        ("<think>r</think>a", NO_REASONING, "", "<think>r</think>a", True),
        ("[THINK]r[/THINK]a", parse_markers("mistral"), "r", "a", True),
        ("<seed:think>r", parse_markers("seed_oss"), "r", "", False),
    ],
)
def test_split_reasoning_like_nemo_gym(text: str, markers: ReasoningMarkers, reasoning: str, answer: str, closed: bool) -> None:
    s = split_reasoning(text, markers)
    assert (s.reasoning, s.answer, s.closed) == (reasoning, answer, closed)


def test_markers_from_presets_pairs_env_and_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    assert markers_from_settings({}) == THINK
    assert markers_from_settings({"reasoning_markers": "deepseek_r1"}) == OPENED
    assert markers_from_settings({"reasoning_markers": "think+opened"}) == OPENED
    assert markers_from_settings({"reasoning_markers": "<reasoning> </reasoning> +opened"}) == ReasoningMarkers("<reasoning>", "</reasoning>", True)
    assert markers_from_settings({"reasoning_markers": ["[THINK]", "[/THINK]"]}) == ReasoningMarkers("[THINK]", "[/THINK]", False)
    assert markers_from_settings({"reasoning_markers": "none"}) == NO_REASONING
    assert markers_from_settings({"keep_think": True}) == NO_REASONING
    monkeypatch.setenv("GYMVERL_REASONING_MARKERS", "qwen3_thinking")
    assert markers_from_settings({}) == OPENED
    with pytest.raises(UsageError, match="reasoning_markers 'llama': give a preset"):
        parse_markers("llama")


def test_the_response_sent_to_verify_is_shaped_like_nemo_gyms() -> None:
    """Reasoning becomes a `reasoning` item; no final answer means no message (NeMo Gym's
    postprocess_assistant_message_dict); tool calls inside the reasoning are not calls."""
    r = response_from_text("<think>call <tool_call>{\"name\": \"f\", \"arguments\": {}}</tool_call>?</think>Done.", {})
    assert [o["type"] for o in r["output"]] == ["reasoning", "message"]
    assert r["output"][0]["summary"] == [{"type": "summary_text", "text": 'call <tool_call>{"name": "f", "arguments": {}}</tool_call>?'}]
    assert r["output"][1]["content"][0]["text"] == "Done."
    cut = response_from_text("<think>so \\boxed{4} maybe", {})
    assert [o["type"] for o in cut["output"]] == ["reasoning"]
    assert [o["type"] for o in response_from_text("", {})["output"]] == ["message"]


# ---- real verdicts: mcqa and math_with_judge (NeMo Gym 0.7.0) ----------------------------------

# (completion, reasoning_markers, reward): the think-tag-reward cases A-F for a task whose answer is B / 56.
MCQA_CASES = [
    ("<think>Maybe \\boxed{A}? No.</think>\\boxed{B}", None, 1.0),  # A
    ("<think>Maybe \\boxed{B}? No.</think>\\boxed{A}", None, 0.0),  # B
    ("Maybe \\boxed{A}? No, PCR.</think>\\boxed{B}", None, 1.0),  # C: template opened <think> (old code: 0.0)
    ("Maybe \\boxed{B}? No, karyotyping.</think>\\boxed{A}", None, 0.0),  # D (old code: 1.0)
    ("<think>PCR fits, so \\boxed{B}. But let me check C", None, 0.0),  # E: cut off (old code: 1.0)
    ("PCR fits, so \\boxed{B}. But let me check C", "deepseek_r1", 0.0),  # F: opened + cut off (old: 1.0)
    ("\\boxed{B}", "qwen3", 1.0),  # no reasoning emitted (thinking off): the text is the answer
]
MATH_CASES = [
    ("<think>7*8 = \\boxed{54}? no</think>So \\boxed{56}.", None, 1.0),
    ("7*8 = \\boxed{56}? no, 7*8 is 54</think>So \\boxed{54}.", None, 0.0),
    ("<think>7*8 = \\boxed{56}, let me double check by", None, 0.0),  # old code: 1.0
    ("7*8 = \\boxed{56}, let me double check by", "deepseek_r1", 0.0),  # old code: 1.0
]


def _score(url: str, task: dict[str, Any], text: str, markers: str | None) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"server": url}
    if markers is not None:
        kwargs["reasoning_markers"] = markers
    return asyncio.run(compute_score("x", text, None, _info(task), **kwargs))


def test_mcqa_grades_only_the_final_answer(gym_servers: Any) -> None:
    url = gym_servers.url("mcqa")
    got = [_score(url, MCQA_TASK, text, mk)["score"] for text, mk, _ in MCQA_CASES]
    assert got == [r for _, _, r in MCQA_CASES]


def test_math_with_judge_grades_only_the_final_answer(gym_servers: Any) -> None:
    url = gym_servers.url("math_with_judge")
    got = [_score(url, MATH_TASK, text, mk)["score"] for text, mk, _ in MATH_CASES]
    assert got == [r for _, _, r in MATH_CASES]


def test_shared_think_tag_case_tasks(gym_servers: Any) -> None:
    """The case's own task files (when ../shared is there): a truncated answer scores 0 on both servers."""
    from conftest import SHARED

    case = SHARED / "cases" / "think-tag-reward"
    if not case.is_dir():
        pytest.skip(f"{case} not found (only CI and development sessions have ../shared)")
    math = json.loads((case / "tasks.jsonl").read_text().splitlines()[0])
    mcqa = json.loads((case / "tasks_mcqa.jsonl").read_text().splitlines()[0])
    assert _score(gym_servers.url("math_with_judge"), math, "<think>7 times 8 is \\boxed{56}, checking", None)["score"] == 0.0
    assert _score(gym_servers.url("math_with_judge"), math, "7 times 8 is \\boxed{56}</think>\\boxed{56}", None)["score"] == 1.0
    right = mcqa["expected_answer"]
    assert _score(gym_servers.url("mcqa"), mcqa, f"<think>\\boxed{{{right}}} but", None)["score"] == 0.0
    assert _score(gym_servers.url("mcqa"), mcqa, f"so A?</think>\\boxed{{{right}}}", None)["score"] == 1.0


# ---- reward components (GDPO) --------------------------------------------------------------------


@pytest.fixture(scope="module")
def example_servers(nemo_gym_env: Path, tmp_path_factory: pytest.TempPathFactory):
    """NeMo Gym's own example_tool_call_multireward (multi-reward) and example_mcp_weather
    (ground truth in verifier_metadata) resources servers, for this module only."""
    from gymverl.nemo_gym import running_resources_servers

    log = tmp_path_factory.mktemp("ng-examples") / "ng_run.log"
    with running_resources_servers(["example_tool_call_multireward", "example_mcp_weather"], env=nemo_gym_env, log_path=log) as servers:
        yield servers


WEATHER_TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "Get the current weather for a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"], "additionalProperties": False},
    "strict": True,
}
MULTI_TASK = {
    "responses_create_params": {"input": [{"role": "user", "content": "what's the weather in San Francisco?"}], "tools": [WEATHER_TOOL]},
    "expected_call": {"name": "get_weather", "arguments": {"city": "San Francisco"}},
    "agent_ref": {"type": "responses_api_agents", "name": "example_tool_call_multireward_simple_agent"},
}
COMPONENTS = "correctness,schema_valid,format"


def test_reward_components_come_back_as_flat_keys(example_servers: Any) -> None:
    url = example_servers.url("example_tool_call_multireward")
    right = '<tool_call>{"name": "get_weather", "arguments": {"city": "San Francisco"}}</tool_call>'
    wrong_city = 'Sure.<tool_call>{"name": "get_weather", "arguments": {"city": "Boston"}}</tool_call>'
    cases = {
        right: (3.0, 1.0, 1.0, 1.0),
        wrong_city: (1.0, 0.0, 1.0, 0.0),  # schema valid only: a wrong city and extra prose
        "<think>" + right + " hmm": (0.0, 0.0, 0.0, 0.0),  # the call is inside unfinished reasoning
    }
    keys = None
    for text, (score, correctness, schema, fmt) in cases.items():
        out = asyncio.run(compute_score("x", text, None, _info(MULTI_TASK), server=url, reward_components=COMPONENTS))
        assert (out["score"], out["reward_correctness"], out["reward_schema_valid"], out["reward_format"]) == (score, correctness, schema, fmt)
        assert all(isinstance(out[k], float) for k in ("reward_correctness", "reward_schema_valid", "reward_format"))
        keys = keys or list(out)
        assert list(out) == keys  # the same keys, in the same order, on every call
    # A list setting and another prefix work the same way.
    out = asyncio.run(compute_score("x", right, None, _info(MULTI_TASK), server=url, reward_components=["format"], reward_component_prefix="gdpo_"))
    assert out["gdpo_format"] == 1.0 and "reward_format" not in out
    # A component the server does not return is a configuration error, never a silent 0.
    with pytest.raises(RewardConfigError, match=r"no numeric reward component 'style' \(its reward_components: \['correctness', 'format', 'schema_valid'\]\)"):
        asyncio.run(compute_score("x", right, None, _info(MULTI_TASK), server=url, reward_components="style"))


def test_reward_components_of_a_failed_sample_and_key_clashes() -> None:
    with FakeServer("--plan", "503") as srv:
        out = asyncio.run(compute_score("x", "hi", None, _info(MULTI_TASK), server=srv.url, retries=0, on_failure=-1, reward_components=COMPONENTS))
        assert out == {"score": -1.0, "verify_failed": 1.0, "verify_attempts": 1, "reward_correctness": -1.0, "reward_schema_valid": -1.0, "reward_format": -1.0}
        with pytest.raises(VerifyFailed):
            asyncio.run(compute_score("x", "hi", None, _info(MULTI_TASK), server=srv.url, retries=0, reward_components=COMPONENTS))
    with pytest.raises(RewardConfigError, match="reward_model clash"):
        asyncio.run(compute_score("x", "hi", None, _info(MULTI_TASK), server="http://127.0.0.1:9", reward_components="model"))


def test_reward_components_from_the_environment(monkeypatch: pytest.MonkeyPatch, example_servers: Any) -> None:
    monkeypatch.setenv("GYMVERL_REWARD_COMPONENTS", "format")
    url = example_servers.url("example_tool_call_multireward")
    out = asyncio.run(compute_score("x", "no call", None, _info(MULTI_TASK), server=url))
    assert out["reward_format"] == 0.0


# ---- task fields: verifier_metadata is the ground truth, old verifier outputs are not re-sent ----

def _weather_rollout(city: str, stale_city: str) -> dict[str, Any]:
    """A rollout line shaped like NeMo Gym's example_mcp_weather example rollouts: the ground truth in
    verifier_metadata, and the previous verification's outputs (for another city) beside it."""
    text = f"The weather in {city} is sunny and 72 F."
    return {
        "responses_create_params": {"input": [{"role": "user", "content": f"What's the weather in {city}?"}]},
        "response": {
            "id": f"resp_{city}", "created_at": 0, "model": "m", "object": "response", "parallel_tool_calls": True,
            "tool_choice": "auto", "tools": [], "status": "completed",
            "output": [{"id": "msg_1", "type": "message", "role": "assistant", "status": "completed",
                        "content": [{"type": "output_text", "text": text, "annotations": []}]}],
        },
        "reward": 1.0,
        "expected_weather": f"The weather in {stale_city} is sunny and 72 F.",
        "tool_call_seen": True,
        "final_response_mentions_weather": True,
        "verifier_metadata": {"expected_city": city},
        "agent_ref": {"type": "responses_api_agents", "name": "example_mcp_weather_simple_agent"},
    }


def _rl_rows(tmp_path: Path, lines: list[dict[str, Any]], *extra_args: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    import pandas as pd
    from typer.testing import CliRunner

    from gymverl.cli import app

    inp = tmp_path / "rollouts.jsonl"
    inp.write_text("".join(json.dumps(x) + "\n" for x in lines))
    res = CliRunner().invoke(app, ["to-parquet", str(inp), "-o", str(tmp_path / "rl"), "--format", "rl", "--json", *extra_args])
    assert res.exit_code == 0, res.output
    rows = pd.read_parquet(tmp_path / "rl" / "train.parquet").to_dict("records")
    return rows, json.loads(res.stdout)


def test_to_parquet_keeps_verifier_metadata_and_warns_about_guessed_fields(tmp_path: Path) -> None:
    rows, summary = _rl_rows(tmp_path, [_weather_rollout("Tokyo", "Paris")])
    task = json.loads(rows[0]["extra_info"]["nemo_gym"])["task"]
    assert task == {"verifier_metadata": {"expected_city": "Tokyo"}}  # no old outputs (expected_weather, ...)
    (warning,) = [w for w in summary["warnings"] if "guessed" in w]
    # to-parquet sends nothing and reads no server: its wording says so (it borrowed rescore's)
    assert "kept as task fields (extra_info.nemo_gym.task): verifier_metadata;" in warning and "server" not in warning
    assert "left out as verifier outputs: expected_weather, final_response_mentions_weather, tool_call_seen;" in warning


def test_to_parquet_with_a_tasks_file_decides_without_guessing(tmp_path: Path) -> None:
    task_row = {"responses_create_params": {"input": [{"role": "user", "content": "What's the weather in Tokyo?"}]},
                "verifier_metadata": {"expected_city": "Tokyo"}, "tool_call_seen": "a task field of this server",
                "agent_ref": {"type": "responses_api_agents", "name": "example_mcp_weather_simple_agent"}}
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text(json.dumps(task_row) + "\n")
    rows, summary = _rl_rows(tmp_path, [_weather_rollout("Tokyo", "Paris")], "--tasks", str(tasks))
    task = json.loads(rows[0]["extra_info"]["nemo_gym"])["task"]
    assert set(task) == {"verifier_metadata", "tool_call_seen"}
    assert not [w for w in summary["warnings"] if "guessed" in w]


def test_shared_case_evalplus_and_weather_rows_keep_their_ground_truth(tmp_path: Path) -> None:
    from conftest import SHARED

    case = SHARED / "cases" / "verifier-metadata-dropped"
    if not case.is_dir():
        pytest.skip(f"{case} not found (only CI and development sessions have ../shared)")
    for name, outputs in (
        ("evalplus_rollouts.jsonl", {"base_status", "plus_status", "is_correct", "is_correct_plus", "extracted_model_code", "extracted_model_output"}),
        ("mcp_weather_rollouts.jsonl", {"expected_weather", "tool_call_seen", "final_response_mentions_weather"}),
    ):
        lines = [json.loads(x) for x in (case / name).read_text().splitlines() if x.strip()]
        (tmp_path / name).mkdir()
        rows, _ = _rl_rows(tmp_path / name, lines)
        for row, line in zip(rows, lines):
            task = json.loads(row["extra_info"]["nemo_gym"])["task"]
            assert task["verifier_metadata"] == line["verifier_metadata"]
            assert not outputs & set(task), name


def test_compute_score_sends_verifier_metadata_to_a_real_server(example_servers: Any, tmp_path: Path) -> None:
    """example_mcp_weather grades against verifier_metadata.expected_city (falling back to Paris
    when it is missing): the row's own city must reach the server."""
    rows, _ = _rl_rows(tmp_path, [_weather_rollout("Tokyo", "Paris")])
    url = example_servers.url("example_mcp_weather")
    out = asyncio.run(compute_score("x", "The weather in Tokyo is sunny and 72 F.", None, rows[0]["extra_info"], server=url, extra_fields=["expected_weather"]))
    assert out["expected_weather"] == "The weather in Tokyo is sunny and 72 F."


def test_rescore_never_resends_old_verifier_outputs(example_servers: Any, tmp_path: Path) -> None:
    """The server's /openapi.json says what /verify takes (example_mcp_weather: verifier_metadata,
    open to more): the stale expected_weather of the last verification is not sent back (the server
    would echo it, or fail on it), and the answer is graded on the row's own city."""
    from gymverl.rescore import rescore_file

    inp = tmp_path / "in.jsonl"
    inp.write_text(json.dumps(_weather_rollout("Tokyo", "Paris")) + "\n")
    url = example_servers.url("example_mcp_weather")
    summary = rescore_file(inp, tmp_path / "out.jsonl", [url], force=True)
    assert (summary.rescored, summary.failed) == (1, 0), summary.to_dict()
    (row,) = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert row["expected_weather"] == "The weather in Tokyo is sunny and 72 F."
    assert summary.request_schemas == {url: "schema+"}


def test_reward_components_feed_verls_gdpo(example_servers: Any, tiny_model: Path) -> None:
    """Through VeRL 0.9.1's own `gdpo` reward manager (custom compute_score loaded by VeRL) and its
    GDPO advantage estimator: the component keys become non_tensor_batch columns
    (`np.array(values)`, as ray_trainer builds them) that `algorithm.gdpo_reward_keys` reads."""
    import numpy as np
    import torch
    from omegaconf import OmegaConf
    from transformers import AutoTokenizer
    from verl import DataProto
    from verl.trainer.ppo.core_algos import compute_gdpo_outcome_advantage
    from verl.trainer.ppo.reward import load_reward_manager

    import gymverl.reward

    url = example_servers.url("example_tool_call_multireward")
    config = OmegaConf.create(
        {
            "trainer": {"experiment_name": "t"},
            "reward": {
                "custom_reward_function": {"path": gymverl.reward.__file__, "name": "compute_score",
                                           "reward_kwargs": {"server": url, "reward_components": ["correctness", "schema_valid", "format"]}},
                "reward_manager": {"source": "register", "name": "gdpo"},
            },
        }
    )
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    manager = load_reward_manager(config, tokenizer)
    info = _info(MULTI_TASK)
    texts = [
        '<tool_call>{"name": "get_weather", "arguments": {"city": "San Francisco"}}</tool_call>',
        'ok <tool_call>{"name": "get_weather", "arguments": {"city": "San Francisco"}}</tool_call>',
        '<tool_call>{"name": "get_weather", "arguments": {"city": "Boston"}}</tool_call>',
        "I cannot.",
    ]

    def sample(text: str) -> DataProto:
        prompt_ids = torch.tensor(tokenizer.encode("prompt"))
        resp_ids = torch.tensor(tokenizer.encode(text))
        assert tokenizer.decode(resp_ids, skip_special_tokens=True) == text
        return DataProto.from_dict(
            tensors={"prompts": prompt_ids[None], "responses": resp_ids[None],
                     "attention_mask": torch.ones(1, len(prompt_ids) + len(resp_ids), dtype=torch.long)},
            non_tensors={"data_source": np.array(["x"], dtype=object), "reward_model": np.array([{"ground_truth": ""}], dtype=object),
                         "extra_info": np.array([dict(info)], dtype=object)},
        )

    async def score_all() -> list[dict[str, Any]]:
        return await asyncio.gather(*(manager.run_single(sample(t)) for t in texts))

    results = manager.loop.run_until_complete(score_all())
    extra = [r["reward_extra_info"] for r in results]
    assert [r["reward_score"] for r in results] == [3.0, 2.0, 2.0, 0.0]
    keys = ["reward_correctness", "reward_schema_valid", "reward_format"]
    columns = {k: np.array([e[k] for e in extra]) for k in keys}  # what ray_trainer puts in non_tensor_batch
    assert columns["reward_correctness"].tolist() == [1.0, 1.0, 0.0, 0.0]
    assert columns["reward_format"].tolist() == [1.0, 0.0, 1.0, 0.0]
    n, length = len(texts), 5
    mask = torch.ones(n, length)
    batch = {"prompts": torch.zeros(n, 3, dtype=torch.long), "attention_mask": torch.ones(n, 3 + length, dtype=torch.long)}
    adv, _ = compute_gdpo_outcome_advantage(
        torch.zeros(n, length), mask, np.array(["g"] * n, dtype=object),
        config=OmegaConf.create({"gdpo_reward_keys": keys}), non_tensor_batch=columns, batch=batch,
    )
    first = adv[:, 0]
    assert torch.isfinite(adv).all() and first[0] > first[1] and first[0] > first[2] > first[3]


def test_whether_the_template_opens_reasoning_is_read_from_the_tokenizer(gym_servers: Any, tiny_model: Path, tmp_path: Path) -> None:
    """A DeepSeek-R1-style template appends `<think>\\n` to the generation prompt: given the policy's
    tokenizer, a completion with no marker at all is reasoning cut off (0.0), without naming a preset;
    the tiny model's own template does not open it, so the same text is the answer there."""
    from transformers import AutoTokenizer

    from gymverl.reasoning import template_opens_reasoning

    tok = AutoTokenizer.from_pretrained(tiny_model)
    assert not template_opens_reasoning(tok, THINK)
    opening = tmp_path / "r1-style"
    tok.chat_template = tok.chat_template.replace("<|im_start|>assistant\n{% endif %}", "<|im_start|>assistant\n<think>\n{% endif %}")
    assert tok.chat_template.endswith("<think>\n{% endif %}")
    tok.save_pretrained(opening)
    assert template_opens_reasoning(AutoTokenizer.from_pretrained(opening), THINK)
    assert markers_from_settings({"tokenizer": str(opening)}) == OPENED
    text = "PCR finds the mutation, so \\boxed{B}. But let me check C"
    url = gym_servers.url("mcqa")
    assert asyncio.run(compute_score("x", text, None, _info(MCQA_TASK), server=url, tokenizer=str(opening)))["score"] == 0.0
    assert asyncio.run(compute_score("x", text, None, _info(MCQA_TASK), server=url, tokenizer=str(tiny_model)))["score"] == 1.0
    with pytest.raises(UsageError, match="reasoning tokenizer .*: cannot load it"):
        markers_from_settings({"tokenizer": str(tmp_path / "missing")})
