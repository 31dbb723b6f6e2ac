"""Rollouts whose content must not become training targets as is (issue 12 items 7-9).

- item 7 `malformed-tool-arguments`: tool calls whose `arguments` are not a JSON object. validate and
  stats count them (with line numbers); to-parquet sft/dpo drops such rollouts under the counted
  filter `malformed_tool_call` (--keep-malformed-calls keeps them, arguments exactly as written).
- item 8 `reasoning-only-output`: a response without a final answer ("" or reasoning only) is the
  counted filter `empty_answer` for sft and dpo, the same for both kinds.
- item 9 `aviary-transitions`: aviary's `response.output` as per-step transitions is read from its
  last transition (question, calls, answer; tools from `response.tools`); the flat form, which has
  no question anywhere, is rejected with a reason naming the aviary agent, never a row that starts
  with an assistant call.
Every run checks that each input line is in exactly one place (row, filter, rejection).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from gymverl.cli import app
from gymverl.convert import ConvertOptions, convert
from gymverl.records import validate_file
from gymverl.select import SelectOptions
from gymverl.verl_data import decode_row

from conftest import SHARED

runner = CliRunner()
CASES = SHARED / "cases"

WEATHER_TOOL = {"type": "function", "name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}


def _call(cid: str, args: Any) -> dict[str, Any]:
    return {"type": "function_call", "call_id": cid, "name": "get_weather", "arguments": args}


def _out(cid: str, text: str) -> dict[str, Any]:
    return {"type": "function_call_output", "call_id": cid, "output": text}


def _say(text: str) -> dict[str, Any]:
    return {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": text}]}


def _rollout(output: list[dict[str, Any]], reward: float, ri: int, task: int = 0) -> dict[str, Any]:
    return {
        "responses_create_params": {"input": [{"role": "user", "content": "Weather in Paris?", "type": "message"}], "tools": [WEATHER_TOOL]},
        "response": {"output": output, "status": "completed"},
        "reward": reward,
        "_ng_task_index": task,
        "_ng_rollout_index": ri,
        "agent_ref": {"type": "responses_api_agents", "name": "weather_simple_agent"},
    }


def _write(path: Path, recs: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return path


def _malformed_file(tmp_path: Path) -> Path:
    """Lines 1-3 have a malformed call (a retry that ended rewarded, a JSON string, ""); 4-5 are clean."""
    return _write(
        tmp_path / "malformed.jsonl",
        [
            _rollout([_call("a", '{"city": "Par'), _out("a", "error: invalid JSON"), _call("b", '{"city": "Paris"}'), _out("b", "sunny"), _say("Sunny.")], 1.0, 0),
            _rollout([_call("a", '"Paris"'), _out("a", "error"), _say("Could not tell.")], 0.0, 1),
            _rollout([_call("a", ""), _out("a", "error"), _say("Could not tell.")], 0.0, 2),
            _rollout([_call("a", '{"city": "Paris"}'), _out("a", "sunny"), _say("Sunny.")], 1.0, 3),
            _rollout([_call("a", '{"city": "Lyon"}'), _out("a", "rain"), _say("Rain.")], 0.0, 4),
        ],
    )


def _rows(out: Path) -> list[dict[str, Any]]:
    files = sorted(out.glob("*.parquet")) if out.is_dir() else [out]
    return [r for f in files for r in pq.read_table(f).to_pylist()]


def _accounted(s: Any) -> None:
    assert s.lines == s.rejected + sum(s.filtered.values()) + s.kept_lines + s.blank


def _cli_json(*args: str) -> tuple[int, dict[str, Any]]:
    res = runner.invoke(app, [*args, "--json"])
    return res.exit_code, json.loads(res.stdout)


def _need(path: Path) -> Path:
    if not path.is_file():
        pytest.skip(f"shared case not found at {path}")
    return path


# ---- item 7: malformed tool calls ---------------------------------------------------------------


def test_validate_and_stats_count_malformed_calls_with_line_numbers(tmp_path: Path) -> None:
    src = _malformed_file(tmp_path)
    code, v = _cli_json("validate", str(src))
    assert code == 0 and v["valid"] == 5
    assert v["malformed_tool_calls"] == {"rollouts": 3, "lines": [1, 2, 3]}
    # The exact path (on_line turns the fast check off) counts the same.
    assert validate_file(src, on_line=lambda c: None).to_dict() == validate_file(src).to_dict()
    code, st = _cli_json("stats", str(src))
    assert code == 0 and st["overall"]["malformed_tool_calls"] == 3
    res = runner.invoke(app, ["validate", str(src)])
    assert "malformed tool calls" in res.stdout and "lines 1, 2, 3" in res.stdout


def test_one_malformed_rollout_is_line_not_lines(tmp_path: Path) -> None:
    """validate said "(lines 14)" for one line: one is "(line N)"."""
    one = tmp_path / "one.jsonl"
    one.write_text(_malformed_file(tmp_path).read_text().splitlines(keepends=True)[1])
    res = runner.invoke(app, ["validate", str(one)])
    assert res.exit_code == 0 and "(line 1)" in res.stdout and "(lines 1)" not in res.stdout, res.stdout


@pytest.mark.parametrize("sel", [{}, {"min_reward": 1.0}, {"best_of_n": 4}], ids=["stream", "min-reward", "best-of-n"])
def test_sft_drops_rollouts_with_malformed_calls_under_a_named_rule(tmp_path: Path, sel: dict[str, Any]) -> None:
    """Old code: line 1 (reward 1 after a retry) became a row whose trained text holds `{"city": "Par`."""
    s = convert(_malformed_file(tmp_path), tmp_path / "o", ConvertOptions(fmt="sft", select=SelectOptions(**sel)))
    _accounted(s)
    assert s.filtered["malformed_tool_call"] == 3 and s.rejected == 0
    rows = _rows(tmp_path / "o")
    assert rows and all("Par\\\"" not in r["messages"] and '"city": "Par"' not in r["messages"] for r in rows)
    assert {r["extra_info"]["line"] for r in rows} == ({4} if sel.get("min_reward") else {4, 5})


def test_dpo_pairs_only_clean_rollouts(tmp_path: Path) -> None:
    s = convert(_malformed_file(tmp_path), tmp_path / "o", ConvertOptions(fmt="dpo"))
    _accounted(s)
    assert s.filtered["malformed_tool_call"] == 3
    (row,) = _rows(tmp_path / "o")
    assert (row["extra_info"]["chosen_line"], row["extra_info"]["rejected_line"]) == (4, 5)


def test_keep_malformed_calls_keeps_the_arguments_as_written(tmp_path: Path) -> None:
    code, data = _cli_json("to-parquet", str(_malformed_file(tmp_path)), "-o", str(tmp_path / "o"), "--keep-malformed-calls")
    assert code == 0 and data["kept_lines"] == 5 and "malformed_tool_call" not in data["filtered"]
    args = [tc["function"]["arguments"] for r in _rows(tmp_path / "o") for m in json.loads(r["messages"]) for tc in m.get("tool_calls") or []]
    assert args[:3] == ['{"city": "Par', '{"city": "Paris"}', '"Paris"'] and "" in args  # never re-encoded


def test_cli_reports_the_filter(tmp_path: Path) -> None:
    res = runner.invoke(app, ["to-parquet", str(_malformed_file(tmp_path)), "-o", str(tmp_path / "o")])
    assert res.exit_code == 0, res.output
    assert "malformed_tool_call" in res.stdout


def test_shared_case_malformed_tool_arguments(tmp_path: Path) -> None:
    src = _need(CASES / "malformed-tool-arguments" / "rollouts.jsonl")
    code, v = _cli_json("validate", str(src))
    assert code == 0 and v["malformed_tool_calls"]["rollouts"] == 3
    # The README's recipe: nothing left to train on, said as a named filter, exit 1 (no row kept).
    code, data = _cli_json("to-parquet", str(src), "-o", str(tmp_path / "o"), "--min-reward", "1")
    assert code == 1 and data["filtered"] == {"malformed_tool_call": 3} and data["kept_lines"] == 0
    assert data["lines"] == data["rejected"] + sum(data["filtered"].values()) + data["kept_lines"]
    code, data = _cli_json("to-parquet", str(src), "-o", str(tmp_path / "d"), "--format", "dpo")
    assert code == 1 and data["filtered"]["malformed_tool_call"] == 3


# ---- item 8: no final answer --------------------------------------------------------------------


def _empty_file(tmp_path: Path) -> Path:
    """Line 1: an empty final message; 2: reasoning only; 3: a real answer; 4: calls, then ""."""
    reasoning = {"type": "reasoning", "summary": [{"type": "summary_text", "text": "Let me think..."}]}
    return _write(
        tmp_path / "empty.jsonl",
        [
            _rollout([_say("")], 0.0, 0),
            _rollout([reasoning], 0.0, 1),
            _rollout([reasoning, _say("Sunny.")], 1.0, 2),
            _rollout([_call("a", '{"city": "Paris"}'), _out("a", "sunny"), _say("  ")], 0.0, 3),
        ],
    )


@pytest.mark.parametrize("fmt", ["sft", "dpo"])
@pytest.mark.parametrize("reasoning", [False, True])
def test_no_final_answer_is_one_named_filter(tmp_path: Path, fmt: str, reasoning: bool) -> None:
    """Old code: line 1 became an SFT row training only the end-of-turn token; line 2 a rejection."""
    s = convert(_empty_file(tmp_path), tmp_path / "o", ConvertOptions(fmt=fmt, include_reasoning=reasoning))
    _accounted(s)
    assert s.filtered["empty_answer"] == 3 and s.rejected == 0
    if fmt == "sft":
        assert [r["extra_info"]["line"] for r in _rows(tmp_path / "o")] == [3]
    else:
        assert s.filtered["unpaired"] == 1  # the one answer has nobody left to pair with


def test_keep_empty_answers(tmp_path: Path) -> None:
    s = convert(_empty_file(tmp_path), tmp_path / "o", ConvertOptions(select=SelectOptions(drop_empty_answers=False)))
    _accounted(s)
    assert s.rejected_by_code == {"no_assistant_turn": 1} and s.kept_lines == 3  # reasoning only: nothing to train


def test_validate_counts_answerless_rollouts(tmp_path: Path) -> None:
    src = _empty_file(tmp_path)
    code, v = _cli_json("validate", str(src))
    assert code == 0 and v["empty_answers"] == {"rollouts": 3, "lines": [1, 2, 4]}
    assert validate_file(src, on_line=lambda c: None).to_dict() == validate_file(src).to_dict()  # exact == fast


@pytest.mark.parametrize("name", ["empty_message.jsonl", "reasoning_only.jsonl"])
def test_shared_case_reasoning_only_output(tmp_path: Path, name: str) -> None:
    src = _need(CASES / "reasoning-only-output" / name)
    for extra in ([], ["--include-reasoning"]):
        code, data = _cli_json("to-parquet", str(src), "-o", str(tmp_path / f"o{len(extra)}"), *extra)
        assert code == 1 and data["filtered"] == {"empty_answer": data["lines"]} and data["rejected"] == 0


# ---- item 9: aviary transitions -----------------------------------------------------------------


def _aviary(transitions: bool, reward: float, ri: int) -> dict[str, Any]:
    """NeMo Gym's aviary agent output: the seed question lives only in the environment's transitions."""
    calc = {"type": "function", "name": "calculator", "description": "Calculate.", "parameters": {"type": "object", "properties": {"expr": {"type": "string"}}}}
    seed = {"role": "user", "content": "What is 12 * 50 / 60?", "type": "message"}
    call = {"type": "function_call", "call_id": "c1", "name": "calculator", "arguments": '{"expr": "12*50/60"}'}
    answer = _say("10" if reward else "11")
    steps = [[seed, call, _out("c1", "10.0")], [seed, call, _out("c1", "10.0"), answer]]
    return {
        "responses_create_params": {"input": [], "tools": []},
        "response": {
            "output": steps if transitions else [call, _out("c1", "10.0"), answer],
            "tools": [calc],
            "contains_transitions": transitions,
        },
        "reward": reward,
        "task_idx": 0,
        "_ng_rollout_index": ri,
        "agent_ref": {"type": "responses_api_agents", "name": "gsm8k_aviary_agent"},
    }


def test_aviary_transitions_become_whole_conversations(tmp_path: Path) -> None:
    """Old code: every line rejected as "'response.output[0]' must be an object, got array"."""
    src = _write(tmp_path / "t.jsonl", [_aviary(True, 1.0, 0), _aviary(True, 0.0, 1)])
    code, v = _cli_json("validate", str(src))
    assert code == 0 and v["valid"] == 2 and v["transitions"] == 2 and v["no_prompt"]["rollouts"] == 0
    s = convert(src, tmp_path / "sft")
    _accounted(s)
    assert s.kept_lines == 2
    row = _rows(tmp_path / "sft")[0]
    msgs = json.loads(row["messages"])
    assert [m["role"] for m in msgs] == ["user", "assistant", "tool", "assistant"]  # seed once, no repeats
    assert msgs[0]["content"] == "What is 12 * 50 / 60?" and msgs[-1]["content"] == "10"
    assert [t["function"]["name"] for t in json.loads(row["tools"])] == ["calculator"]  # from response.tools
    s = convert(src, tmp_path / "dpo", ConvertOptions(fmt="dpo"))
    _accounted(s)
    (pair,) = [decode_row(r) for r in _rows(tmp_path / "dpo")]
    assert [m["role"] for m in pair["prompt"]] == ["user"]
    assert pair["chosen"][0]["role"] == "assistant" and pair["chosen"][-1]["content"] == "10"
    code, st = _cli_json("stats", str(src))
    assert code == 0 and st["overall"]["rollouts"] == 2


def test_aviary_tasks_are_told_apart_by_their_question(tmp_path: Path) -> None:
    """aviary's request input is [] for every task: without a task index, grouping by the request
    alone would pair one question's answer against another's (dpo) or rank them together (best-of-n)."""
    other = _aviary(True, 0.0, 1)
    for step in other["response"]["output"]:
        step[0] = {**step[0], "content": "What is 7 * 6?"}
    src = _write(tmp_path / "t.jsonl", [_aviary(True, 1.0, 0), other])
    s = convert(src, tmp_path / "dpo", ConvertOptions(fmt="dpo"))
    _accounted(s)
    assert s.tasks == 2 and s.filtered["unpaired"] == 2 and s.kept_lines == 0
    s = convert(src, tmp_path / "sft", ConvertOptions(select=SelectOptions(best_of_n=1)))
    assert s.kept_lines == 2


def test_aviary_flat_form_is_rejected_with_a_reason_naming_it(tmp_path: Path) -> None:
    """Old code: validate 2/2 valid, to-parquet exit 0, rows starting with an assistant tool call and no tools."""
    src = _write(tmp_path / "f.jsonl", [_aviary(False, 1.0, 0), _aviary(False, 0.0, 1)])
    code, v = _cli_json("validate", str(src))
    assert code == 0 and v["no_prompt"] == {"rollouts": 2, "lines": [1, 2]}
    assert validate_file(src, on_line=lambda c: None).to_dict() == validate_file(src).to_dict()  # exact == fast
    for fmt in ("sft", "dpo"):
        code, data = _cli_json("to-parquet", str(src), "-o", str(tmp_path / fmt), "--format", fmt)
        assert code == 1 and data["rejected_by_reason"] == {"no_prompt": 2} and data["kept_lines"] == 0
        assert all("return_transitions" in r["reason"] and "aviary" in r["reason"] for r in data["rejections"])
        assert not (tmp_path / fmt).exists() or not list((tmp_path / fmt).glob("*.parquet"))


def test_shared_case_aviary_transitions(tmp_path: Path) -> None:
    src = _need(CASES / "aviary-transitions" / "aviary_transitions.jsonl")
    code, data = _cli_json("to-parquet", str(src), "-o", str(tmp_path / "t"))
    assert code == 0 and data["kept_lines"] == data["lines"] == 2
    for row in _rows(tmp_path / "t"):
        msgs = json.loads(row["messages"])
        assert msgs[0]["role"] == "user" and msgs[-1]["role"] == "assistant" and row["tools"]
        assert sum(m["role"] == "user" for m in msgs) == 1
    flat = _need(CASES / "aviary-transitions" / "aviary_flat.jsonl")
    code, data = _cli_json("to-parquet", str(flat), "-o", str(tmp_path / "f"))
    assert code == 1 and data["rejected_by_reason"] == {"no_prompt": 2}


def test_question_only_in_the_output_goes_to_the_dpo_prompt(tmp_path: Path) -> None:
    """A request without a prompt whose output starts with the question: sft keeps the whole
    conversation, dpo puts the question in `prompt` (not at the head of `chosen`)."""
    recs = []
    for ri, (text, reward) in enumerate((("Sunny.", 1.0), ("No idea.", 0.0))):
        r = _rollout([{"type": "message", "role": "user", "content": "Weather in Paris?"}, _say(text)], reward, ri)
        r["responses_create_params"]["input"] = []
        recs.append(r)
    src = _write(tmp_path / "q.jsonl", recs)
    s = convert(src, tmp_path / "sft")
    assert s.kept_lines == 2
    assert [m["role"] for m in json.loads(_rows(tmp_path / "sft")[0]["messages"])] == ["user", "assistant"]
    s = convert(src, tmp_path / "dpo", ConvertOptions(fmt="dpo"))
    (pair,) = [decode_row(r) for r in _rows(tmp_path / "dpo")]
    assert pair["prompt"] == [{"role": "user", "content": "Weather in Paris?"}]
    assert [m["role"] for m in pair["chosen"]] == ["assistant"]


def test_rl_rows_of_aviary_rollouts_are_rejected_naming_why(tmp_path: Path) -> None:
    seed = [{"role": "user", "content": "What is 12 * 50 / 60?", "type": "message"}]
    answer = {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "10"}]}
    rec = {
        "responses_create_params": {"input": []},
        "response": {"output": [seed + [answer]], "contains_transitions": True},
        "reward": 1.0,
        "agent_ref": {"name": "aviary_calculator_agent"},
    }
    src = _write(tmp_path / "a.jsonl", [rec])
    s = convert(src, tmp_path / "rl", ConvertOptions(fmt="rl"))
    (rej,) = s.rejections
    assert rej["code"] == "no_prompt" and "aviary" in rej["reason"] and "/seed_session" in rej["reason"]


# ---- content parts NeMo Gym refuses, and prompts that ask nothing ----------------------------------


def _with_input(content: Any, ri: int = 0) -> dict[str, Any]:
    r = _rollout([_say("Sunny.")], 1.0, ri, task=ri)
    r["responses_create_params"]["input"] = [{"role": "user", "content": content}] if not isinstance(content, str) or content else content
    return r


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda r: r.update(_with_input([{"type": "input_text"}])), "'responses_create_params.input[0].content[0]' is an input_text part without a string 'text'"),
        (lambda r: r.update(_with_input([{"type": "input_text", "text": 123}])), "'responses_create_params.input[0].content[0]' is an input_text part without a string 'text'"),
        (lambda r: r["response"]["output"][0].update(content=[{"type": "output_text"}]), "'response.output[0].content[0]' is an output_text part without a string 'text'"),
        (lambda r: r["response"]["output"][0].update(content=[{"type": "refusal", "refusal": None}]), "'response.output[0].content[0]' is a refusal part without a string 'refusal'"),
        (lambda r: r.update(_with_input([{"type": "weird", "text": "q"}])), "'responses_create_params.input[0].content[0]' has unknown content part type 'weird'"),
        (lambda r: r.update(_with_input([{"type": "input_audio", "input_audio": {"data": "eA==", "format": "wav"}}])), "'responses_create_params.input[0].content[0]' has unknown content part type 'input_audio'"),
        (lambda r: r.update(_with_input(["q"])), "'responses_create_params.input[0].content[0]' must be an object, got string"),
    ],
)
def test_a_content_part_nemo_gym_refuses_is_rejected_by_validate_and_to_parquet(tmp_path: Path, mutate: Any, reason: str) -> None:
    """Old code: validate called these lines valid; to-parquet wrote `{'role': 'user', 'content': ''}`
    (sft), an RL prompt with empty content, or kept an unknown part's text; `input_audio` passed
    validate but was refused by to-parquet. NeMo Gym's own models refuse them all (422)."""
    bad = _rollout([_say("Sunny.")], 1.0, 1, task=1)
    mutate(bad)
    src = _write(tmp_path / "p.jsonl", [_rollout([_say("Sunny.")], 1.0, 0), bad])
    code, v = _cli_json("validate", str(src))
    assert code == 1 and v["valid"] == 1
    assert v["rejections"] == [{"line": 2, "code": "bad_content_part" if "content[0]" in reason else "wrong_type", "reason": reason}]
    assert validate_file(src, on_line=lambda c: None).to_dict() == validate_file(src).to_dict()  # exact == fast
    for fmt in ("sft", "rl"):
        code, data = _cli_json("to-parquet", str(src), "-o", str(tmp_path / fmt), "--format", fmt)
        assert data["kept_lines"] == 1 and data["rejections"] == [{"line": 2, "code": "bad_content_part", "reason": reason}]


@pytest.mark.parametrize(
    "prompt",
    ["", " \n", [], [{"type": "input_text", "text": ""}], [{"type": "input_text", "text": " "}, {"type": "output_text", "text": "\t"}], "blank messages"],
)
def test_a_prompt_that_asks_nothing_is_the_no_prompt_rule_everywhere(tmp_path: Path, prompt: Any) -> None:
    """Old code: rl wrote a task row whose prompt was an empty user message, sft rows starting with
    an empty user turn; validate counted some as "no prompt" but not others. Now one rule
    (`records.starts_without_prompt`): validate and stats count it, to-parquet rejects it as no_prompt."""
    recs = [_rollout([_say("Sunny.")], 1.0, 0, task=0)]
    for ri in (1, 2):
        r = _rollout([_say("Sunny." if ri == 1 else "Rain.")], float(ri == 1), ri, task=1)
        rcp = r["responses_create_params"]
        if prompt == "blank messages":
            rcp["input"] = [{"role": "system", "content": ""}, {"type": "message", "role": "user", "content": "  "}]
        elif isinstance(prompt, str):
            rcp["input"] = prompt
        else:
            rcp["input"] = [{"role": "user", "content": prompt}] if prompt else []
        recs.append(r)
    src = _write(tmp_path / "e.jsonl", recs)
    code, v = _cli_json("validate", str(src))
    assert code == 0 and v["valid"] == 3 and v["no_prompt"] == {"rollouts": 2, "lines": [2, 3]}
    assert validate_file(src, on_line=lambda c: None).to_dict() == validate_file(src).to_dict()  # exact == fast
    code, st = _cli_json("stats", str(src))
    assert code == 0 and st["overall"]["no_prompt"] == 2
    for fmt in ("sft", "rl", "dpo"):
        s = convert(src, tmp_path / fmt, ConvertOptions(fmt=fmt))
        _accounted(s)
        assert s.to_dict()["rejected_by_reason"] == {"no_prompt": 2}, fmt
        assert all(r["code"] == "no_prompt" and r["line"] in (2, 3) for r in s.rejections)
        if fmt != "dpo":
            rows = _rows(tmp_path / fmt)
            assert len(rows) == 1


def test_an_image_only_prompt_is_a_prompt(tmp_path: Path) -> None:
    """A question asked by an image alone is a prompt (it has no text, but something to answer)."""
    png = "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
    src = _write(tmp_path / "i.jsonl", [_with_input([{"type": "input_image", "image_url": png}])])
    code, v = _cli_json("validate", str(src))
    assert code == 0 and v["valid"] == 1 and v["no_prompt"]["rollouts"] == 0
    s = convert(src, tmp_path / "sft")
    assert s.kept_lines == 1 and s.rejected == 0


def test_an_rl_input_that_opens_with_a_model_turn_still_asks(tmp_path: Path) -> None:
    """The RL policy continues the whole input: one that opens with a scripted assistant turn and
    then asks (`[assistant "Hi", user "q"]`) is a prompt for rl (kept, the greeting in its prompt),
    while sft, whose trained turns would start before any prompt, rejects it as no_prompt."""
    r = _rollout([_say("Sunny.")], 1.0, 0, task=0)
    r["responses_create_params"]["input"] = [{"role": "assistant", "content": "Hi, how can I help?"}, {"role": "user", "content": "Weather in Paris?"}]
    src = _write(tmp_path / "g.jsonl", [r])
    s = convert(src, tmp_path / "rl", ConvertOptions(fmt="rl"))
    assert s.kept_lines == 1 and s.rejected == 0
    (row,) = _rows(tmp_path / "rl")
    assert [m["role"] for m in row["prompt"]] == ["assistant", "user"]
    s = convert(src, tmp_path / "sft", ConvertOptions(fmt="sft"))
    assert s.rejected == 1 and s.rejections[0]["code"] == "no_prompt"
