"""Row builders (gymverl.formats): task fields vs verifier outputs, ground truth, rl/sft/dpo rows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import FIXTURES, SAMPLE_DATA
from gymverl.formats import FieldRules, RowError, looks_like_verifier_output
from gymverl.formats.dpo import dpo_row, dpo_side
from gymverl.formats.rl import rl_row
from gymverl.formats.sft import arguments_as_objects, conversation, sft_row, template_wants_object_arguments
from gymverl.messages import chat_tools, rollout_messages


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


ROLLOUTS = _lines(SAMPLE_DATA / "rollouts.jsonl")


def test_heuristic_separates_verifier_outputs_in_real_rollouts(fixture_files: list[Path]) -> None:
    rec = _lines(FIXTURES / "math_with_judge.jsonl")[0]
    fields = FieldRules().task_fields(rec)
    assert "expected_answer" in fields
    for k in ("extracted_answer", "judge_evaluations", "library_reward", "reward", "response", "responses_create_params"):
        assert k not in fields
    xlam = FieldRules().task_fields(_lines(FIXTURES / "xlam_fc.jsonl")[0])
    assert not {"num_correct", "num_expected", "num_predicted", "predicted_calls"} & set(xlam)
    assert looks_like_verifier_output("foo_reward") and not looks_like_verifier_output("question")


def test_tasks_file_keys_decide_alone() -> None:
    rec = ROLLOUTS[0]  # has question, expected_answer, extracted_answer, library_reward, judge_evaluations
    rules = FieldRules(task_keys=frozenset({"expected_answer", "library_reward"}))
    assert set(rules.task_fields(rec)) == {"expected_answer", "library_reward"}


def test_ground_truth_selection() -> None:
    assert FieldRules().ground_truth({"question": "q", "expected_answer": "56"}) == "56"
    assert FieldRules().ground_truth({"expected_answers": [{"name": "f", "arguments": {"a": 1}}]}) == '[{"name":"f","arguments":{"a":1}}]'
    assert FieldRules(ground_truth_field="question").ground_truth({"question": "q", "expected_answer": "56"}) == "q"
    assert FieldRules(ground_truth_field="missing").ground_truth({"expected_answer": "56"}) is None
    assert FieldRules().ground_truth({"question": "q"}) is None


def test_rl_row_carries_what_the_verifier_needs() -> None:
    rec = ROLLOUTS[0]
    row, has_gt = rl_row(rec, rules=FieldRules(), data_source="ds", ability="math", task_key="k", stats=(4, 0.5, 0.5))
    assert has_gt and row["reward_model"] == {"style": "rule", "ground_truth": rec["expected_answer"]}
    assert row["prompt"] == [{"role": "user", "content": rec["responses_create_params"]["input"][0]["content"]}]
    ng = json.loads(row["extra_info"]["nemo_gym"])
    assert ng["responses_create_params"] == rec["responses_create_params"]
    assert ng["task"] == {"question": rec["question"], "expected_answer": rec["expected_answer"]}
    assert ng["agent_ref"] == rec["agent_ref"]
    assert (row["extra_info"]["n"], row["extra_info"]["pass_rate"]) == (4, 0.5)


def test_rl_prompt_refuses_tool_calls_in_the_input() -> None:
    rec = json.loads(json.dumps(ROLLOUTS[0]))
    rec["responses_create_params"]["input"].append({"type": "function_call", "name": "f", "arguments": "{}", "call_id": "c1"})
    with pytest.raises(RowError) as info:
        rl_row(rec, rules=FieldRules(), data_source="d", ability="a", task_key="k")
    assert info.value.code == "prompt_has_tool_calls"


def test_sft_row_round_trips_messages_and_tools() -> None:
    rec = next(r for r in ROLLOUTS if r["responses_create_params"].get("tools"))
    row = sft_row(rec, data_source="d", task_key="k", line=7)
    assert json.loads(row["messages"]) == rollout_messages(rec)
    assert json.loads(row["tools"]) == chat_tools(rec["responses_create_params"]["tools"])
    assert row["extra_info"]["line"] == 7 and row["extra_info"]["reward"] == rec["reward"]
    plain = sft_row(ROLLOUTS[0], data_source="d", task_key="k", line=1)
    assert plain["tools"] is None


def test_sft_refuses_a_response_without_assistant_turn() -> None:
    rec = json.loads(json.dumps(ROLLOUTS[0]))
    rec["response"]["output"] = []
    with pytest.raises(RowError) as info:
        conversation(rec)
    assert info.value.code == "no_assistant_turn"


def test_dpo_row() -> None:
    a, b = ROLLOUTS[4], ROLLOUTS[5]  # task 1: reward 1.0 and 0.0
    assert a["_ng_task_index"] == b["_ng_task_index"] and a["reward"] > b["reward"]
    row = dpo_row(dpo_side(a), dpo_side(b), chosen_reward=a["reward"], rejected_reward=b["reward"], data_source="d", task_key="k", chosen_line=5, rejected_line=6)
    assert row["margin"] == a["reward"] - b["reward"]
    # One JSON text per message (the list<arrow.json> column TRL gets as a message list).
    prompt, chosen, rejected = ([json.loads(m) for m in row[k]] for k in ("prompt", "chosen", "rejected"))
    assert prompt[-1]["role"] == "user"
    assert chosen[0]["role"] == "assistant" and chosen != rejected


def test_tool_argument_style_detection(tiny_model: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_model))
    assert template_wants_object_arguments(tok) is False  # the tiny template prints the JSON string as is
    tok.chat_template = tok.chat_template.replace("{{ tc.function.arguments }}", "{{ tc.function.arguments | tojson }}")
    assert template_wants_object_arguments(tok) is True
    msgs = [{"role": "assistant", "content": "", "tool_calls": [{"type": "function", "id": "c", "function": {"name": "f", "arguments": '{"x": 1}'}}]}]
    assert arguments_as_objects(msgs)[0]["tool_calls"][0]["function"]["arguments"] == {"x": 1}
    assert msgs[0]["tool_calls"][0]["function"]["arguments"] == '{"x": 1}'  # input untouched


def test_verifier_metadata_is_a_task_field_and_every_guess_is_named_once() -> None:
    """Issue 12: NeMo Gym keeps the ground truth in verifier_metadata (evalplus, example_mcp_weather);
    outputs that 0.7.0's response models declare are not task fields; the heuristic's guesses are
    recorded for one warning, and an authoritative source (tasks file) guesses nothing."""
    rec = {"responses_create_params": {"input": "q"}, "response": {}, "reward": 1.0, "verifier_metadata": {"task_id": "HumanEval/0"},
           "base_status": "pass", "plus_status": "fail", "is_correct_plus": False, "expected_weather": "x", "tool_call_seen": True,
           "options": [{"A": "a"}], "_ng_task_index": 0, "mask_sample": False, "reward_components": {"a": 1.0}}
    rules = FieldRules()
    assert set(rules.task_fields(rec)) == {"verifier_metadata", "options"}
    rules.task_fields(rec)  # a second row adds nothing
    w = rules.guess_warning() or ""
    assert w.count("verifier_metadata") == 1
    assert "sent as task fields: options, verifier_metadata;" in w
    assert "left out as verifier outputs: base_status, expected_weather, is_correct_plus, plus_status, tool_call_seen;" in w
    exact = FieldRules(task_keys=frozenset({"verifier_metadata", "tool_call_seen"}))
    assert set(exact.task_fields(rec)) == {"verifier_metadata", "tool_call_seen"} and exact.guess_warning() is None
    assert not looks_like_verifier_output("verifier_metadata") and looks_like_verifier_output("verifier_error")


def test_the_field_tables_match_nemo_gym_source(nemo_gym_env) -> None:
    """gymverl.ng_fields is generated from the installed NeMo Gym's resources servers (0.7.0)."""
    from gymverl import ng_fields
    from gymverl.nemo_gym import nemo_gym_version

    if nemo_gym_version(nemo_gym_env) != "0.7.0":
        pytest.skip("the tables are generated from NeMo Gym 0.7.0")
    site = next(nemo_gym_env.glob("lib/python3*/site-packages"))
    request, response_only = ng_fields.scan(site)
    assert request == ng_fields.REQUEST_FIELDS and response_only == ng_fields.RESPONSE_ONLY_FIELDS


def test_one_servers_request_fields_are_what_its_openapi_declares(nemo_gym_env) -> None:
    """`server_request_fields` (to-parquet's offline stand-in for rescore's /openapi.json) reads one
    server's request models (for mcqa the same fields a running mcqa's /openapi.json declares), no
    bookkeeping; an unknown server is None, never a guess."""
    from gymverl.ng_fields import server_request_fields

    assert server_request_fields("mcqa", nemo_gym_env) >= {"options", "grading_mode", "expected_answer"}
    assert server_request_fields("math_with_judge", nemo_gym_env) == {"question", "expected_answer"}
    assert not {"responses_create_params", "response"} & server_request_fields("mcqa", nemo_gym_env)  # type: ignore[operator]
    assert server_request_fields("no_such_server", nemo_gym_env) is None and server_request_fields("../mcqa", nemo_gym_env) is None


def test_a_servers_own_venv_is_not_read_for_its_request_fields(tmp_path) -> None:
    """NeMo Gym 0.4 builds each server's uv venv inside its folder (`<server>/.venv`, ~19,000 .py
    files): reading it took to-parquet ~40 s per agent. Only the server's own code declares its
    request model; hidden, vendored and test folders are skipped."""
    from gymverl.ng_fields import scan

    server = tmp_path / "resources_servers" / "toy"
    (server / ".venv" / "lib").mkdir(parents=True)
    (server / "tests").mkdir()
    (tmp_path / "nemo_gym").mkdir()
    (tmp_path / "nemo_gym" / "base_resources_server.py").write_text(
        "class BaseVerifyRequest(BaseModel):\n    responses_create_params: dict\n    response: dict\n"
    )
    (server / "app.py").write_text("class ToyVerifyRequest(BaseVerifyRequest):\n    expected_answer: str\n")
    vendored = "class Other(BaseVerifyRequest):\n    from_vendored_code: str\n"
    (server / ".venv" / "lib" / "x.py").write_text(vendored)
    (server / "tests" / "test_app.py").write_text(vendored.replace("vendored", "tests"))
    request, _ = scan(tmp_path, "toy")
    assert "expected_answer" in request
    assert not {"from_vendored_code", "from_tests_code"} & request



def test_a_files_classes_are_read_once_and_only_where_a_class_can_be(tmp_path, monkeypatch) -> None:
    """`ng_fields._classes` parses a file once per (path, mtime, size) (every server's scan reads
    NeMo Gym's base models) and never parses a file with no line starting with `class`; the
    answer is the same as parsing it."""
    import ast

    from gymverl import ng_fields

    parsed: list[int] = []
    real_parse = ast.parse
    monkeypatch.setattr(ng_fields.ast, "parse", lambda text, *a, **k: parsed.append(1) or real_parse(text, *a, **k))
    script = tmp_path / "prepare.py"
    script.write_text('PROMPT = """\nclass NotAModel(BaseVerifyRequest):\n    x: int\n"""\n')
    app = tmp_path / "app.py"
    app.write_text("import x\n\nclass Req(BaseVerifyRequest):\n    a: str\n    b: int = 1\n")
    st = app.stat()
    assert ng_fields._classes(str(app), st.st_mtime_ns, st.st_size) == (("Req", ("BaseVerifyRequest",), ("a", "b")),)
    assert ng_fields._classes(str(app), st.st_mtime_ns, st.st_size)[0][0] == "Req" and len(parsed) == 1
    indented = tmp_path / "indented.py"
    indented.write_text("def f():\n    class Local(BaseVerifyRequest):\n        y: int\n")
    assert ng_fields._classes(str(indented), 0, 0) == () and len(parsed) == 1
    # a class at column 0 inside a string is parsed (and is no class): the same as before
    assert ng_fields._classes(str(script), 0, 0) == () and len(parsed) == 2


@pytest.mark.parametrize(
    "value",
    [
        [{"role": "user", "content": "é ☃ \u2028"}],
        {1: "a", "b": [{2: 3, None: True}]},  # non-str keys (written as strings)
        [[[[[["deep"]]]]]] * 2,
        {"a": [[]] * 3, "b": 1.5, "c": None},
    ],
)
def test_json_cell_writes_what_jsonl_dumps_writes(value) -> None:
    import numpy as np

    from gymverl.formats import json_cell
    from gymverl.jsonl import dumps

    assert json_cell(value) == dumps(value)
    assert json_cell({"n": np.int64(3), "x": np.float32(0.5)}) == dumps({"n": np.int64(3), "x": np.float32(0.5)})
    deep: list = []
    for _ in range(300):  # deeper than orjson writes (254 levels)
        deep = [deep]
    assert json_cell(deep) == dumps(deep) and json.loads(json_cell(deep))
