"""gymverl.records: the rollout schema, one exact reason per bad input, record helpers, summaries."""

from __future__ import annotations

import copy
import json
import re
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import orjson
import pytest

from conftest import SAMPLE_DATA
from gymverl.jsonl import InputError
from gymverl.records import (
    ValidationSummary,
    ROLLOUT_KEYS,
    RecordError,
    agent_name,
    check_record,
    check_task,
    content_text,
    final_text,
    is_incomplete,
    iter_checked,
    output_tokens,
    prompt_hash,
    task_fields,
    task_key,
    validate_file,
)


def good(**overrides: Any) -> dict[str, Any]:
    """A small valid rollout in NeMo Gym's format: call -> tool result -> answer."""
    rec: dict[str, Any] = {
        "responses_create_params": {
            "input": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Weather in Paris?"}],
            "tools": [{"type": "function", "name": "get_weather", "parameters": {"type": "object"}}],
        },
        "response": {
            "status": "completed",
            "output": [
                {"type": "function_call", "name": "get_weather", "call_id": "c1", "arguments": '{"city": "Paris"}'},
                {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
                {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Sunny."}]},
            ],
        },
        "reward": 1.0,
        "expected_answer": "sunny",
        "_ng_task_index": 0,
        "_ng_rollout_index": 0,
        "agent_ref": {"type": "responses_api_agents", "name": "weather_agent"},
    }
    rec.update(overrides)
    return rec


def line(rec: Any) -> bytes:
    return orjson.dumps(rec)


def without(path: str) -> dict[str, Any]:
    rec = good()
    *parents, last = path.split(".")
    d = rec
    for p in parents:
        d = d[p]
    del d[last]
    return rec


def with_value(path: str, value: Any) -> dict[str, Any]:
    rec = good()
    keys = path.replace("]", "").replace("[", ".").split(".")
    d: Any = rec
    for k in keys[:-1]:
        d = d[int(k)] if isinstance(d, list) else d[k]
    last = keys[-1]
    if isinstance(d, list):
        d[int(last)] = value
    else:
        d[last] = value
    return rec


GOOD = line(good())
_UTF8_BAD = line(good(expected_answer="caf_")).replace(b"caf_", b"caf\xff")
_UTF8_COLUMN = _UTF8_BAD.index(b"\xff") + 1
# Every bad-input case of issue 2: (id, file content, bad line number, code, exact reason).
# Shared with tests/test_validate_cli.py, which runs the same table through the CLI.
BAD_INPUTS: list[tuple[str, bytes, int, str, str]] = [
    ("truncated_last_line", GOOD + b"\n" + GOOD + b"\n" + GOOD[:120], 3, "truncated",
     "truncated JSON at end of file (the file ends mid-record)"),
    ("cut_record_mid_file", GOOD + b"\n" + GOOD[:200] + b"\n" + GOOD + b"\n", 2, "invalid_json",
     "invalid JSON: the line ends mid-record"),
    ("invalid_utf8", GOOD + b"\n" + _UTF8_BAD + b"\n", 2, "invalid_utf8",
     f"not valid UTF-8 (byte 0xff at column {_UTF8_COLUMN})"),
    ("not_json", GOOD + b"\nhello world\n", 2, "invalid_json",
     "invalid JSON at column 1 (unexpected character, expected a JSON value)"),
    # A blank line is not a bad input any more: skipped and counted (tests/test_inputs.py).
    ("array_line", b"[1, 2]\n", 1, "not_object", "line is a JSON array, not an object"),
    ("string_line", b'"a rollout"\n', 1, "not_object", "line is a JSON string, not an object"),
    ("number_line", b"42\n", 1, "not_object", "line is a JSON number, not an object"),
    ("null_line", b"null\n", 1, "not_object", "line is a JSON null, not an object"),
    ("missing_reward", line(without("reward")) + b"\n", 1, "missing_key", "missing required key 'reward'"),
    ("missing_response", line(without("response")) + b"\n", 1, "missing_key", "missing required key 'response'"),
    ("missing_rcp", line(without("responses_create_params")) + b"\n", 1, "missing_key",
     "missing required key 'responses_create_params'"),
    ("missing_output", line(without("response.output")) + b"\n", 1, "missing_key",
     "missing required key 'response.output'"),
    ("missing_input", line(without("responses_create_params.input")) + b"\n", 1, "missing_key",
     "missing required key 'responses_create_params.input'"),
    ("reward_string", line(good(reward="1.0")) + b"\n", 1, "wrong_type", "'reward' must be a number, got string"),
    ("reward_bool", line(good(reward=True)) + b"\n", 1, "wrong_type", "'reward' must be a number, got boolean"),
    ("reward_null", line(good(reward=None)) + b"\n", 1, "wrong_type", "'reward' must be a number, got null"),
    ("rcp_null", line(good(responses_create_params=None)) + b"\n", 1, "wrong_type",
     "'responses_create_params' must be an object, got null"),
    ("response_array", line(good(response=[])) + b"\n", 1, "wrong_type", "'response' must be an object, got array"),
    ("output_object", line(with_value("response.output", {})) + b"\n", 1, "wrong_type",
     "'response.output' must be an array, got object"),
    ("input_number", line(with_value("responses_create_params.input", 3)) + b"\n", 1, "wrong_type",
     "'responses_create_params.input' must be a string or an array, got number"),
    ("tools_string", line(with_value("responses_create_params.tools", "get_weather")) + b"\n", 1, "wrong_type",
     "'responses_create_params.tools' must be an array, got string"),
    ("task_index_negative", line(good(_ng_task_index=-1)) + b"\n", 1, "wrong_type",
     "'_ng_task_index' must be a non-negative integer, got -1"),
    ("rollout_index_string", line(good(_ng_rollout_index="3")) + b"\n", 1, "wrong_type",
     "'_ng_rollout_index' must be a non-negative integer, got '3'"),
    ("item_not_object", line(with_value("response.output[1]", "sunny")) + b"\n", 1, "wrong_type",
     "'response.output[1]' must be an object, got string"),
    ("item_unknown_type", line(with_value("response.output[0].type", "web_search_call")) + b"\n", 1, "bad_item",
     "'response.output[0]' has unknown item type 'web_search_call'"),
    ("item_type_not_string", line(with_value("response.output[0].type", ["x"])) + b"\n", 1, "bad_item",
     "'response.output[0]' has unknown item type ['x']"),
    ("message_bad_role", line(with_value("response.output[2].role", "robot")) + b"\n", 1, "bad_item",
     "'response.output[2]' is a message with role 'robot'"),
    ("message_role_not_string", line(with_value("response.output[2].role", {"r": 1})) + b"\n", 1, "bad_item",
     "'response.output[2]' is a message with role {'r': 1}"),
    ("input_item_no_role", line(with_value("responses_create_params.input[1]", {"content": "hi"})) + b"\n", 1,
     "bad_item", "'responses_create_params.input[1]' has no 'type' and no message 'role'"),
    ("function_call_no_name", line(with_value("response.output[0].name", None)) + b"\n", 1, "bad_item",
     "'response.output[0]' is a function_call without a string 'name' and 'call_id'"),
    ("function_call_output_no_call_id", line(with_value("response.output[1].call_id", 7)) + b"\n", 1, "bad_item",
     "'response.output[1]' is a function_call_output without a string 'call_id'"),
    # A mask that is not a boolean read as "not masked": the failed verification became a trained 0.0.
    ("mask_sample_string", line(good(mask_sample="true")) + b"\n", 1, "wrong_type",
     "'mask_sample' must be true or false, got 'true'"),
    ("mask_sample_number", line(good(mask_sample=1)) + b"\n", 1, "wrong_type", "'mask_sample' must be true or false, got 1"),
    ("nan_reward", line(good()).replace(b'"reward":1.0', b'"reward":NaN') + b"\n", 1, "non_finite_number",
     "'reward' is NaN, which is not a finite number (JSON has no NaN or Infinity)"),
    ("infinity_reward", line(good()).replace(b'"reward":1.0', b'"reward":Infinity') + b"\n", 1, "non_finite_number",
     "'reward' is Infinity, which is not a finite number (JSON has no NaN or Infinity)"),
    ("minus_infinity_reward", line(good()).replace(b'"reward":1.0', b'"reward":-Infinity') + b"\n", 1,
     "non_finite_number", "'reward' is -Infinity, which is not a finite number (JSON has no NaN or Infinity)"),
    ("overflow_reward", line(good()).replace(b'"reward":1.0', b'"reward":1e999') + b"\n", 1, "non_finite_number",
     "'reward' is 1e999, too large to be a finite number"),
    ("nan_in_verifier_output", line(good(score=0.5)).replace(b'"score":0.5', b'"score":NaN') + b"\n", 1,
     "non_finite_number", "'score' is NaN, which is not a finite number (JSON has no NaN or Infinity)"),
]
for _case in BAD_INPUTS:
    assert _case[1].count(b"\n") >= _case[2] - 1, _case[0]


@pytest.mark.parametrize("name, data, number, code, reason", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_rejected_with_line_and_reason(tmp_path, name, data, number, code, reason):
    src = tmp_path / "rollouts.jsonl"
    src.write_bytes(data)
    rejects = tmp_path / "rejects.jsonl"
    summary = validate_file(src, rejects=rejects)
    physical = data.count(b"\n") + (0 if data.endswith(b"\n") else 1)
    assert summary.lines == physical
    assert summary.rejected == 1 and summary.valid == physical - 1
    assert summary.first_rejections == [{"line": number, "code": code, "reason": reason}]
    assert summary.rejected_by_code == Counter({code: 1})
    (rej,) = [orjson.loads(x) for x in rejects.read_bytes().splitlines()]
    bad_line = data.split(b"\n")[number - 1]
    assert rej == {"line": number, "code": code, "reason": reason, "raw": bad_line.decode("utf-8", "replace")}


def test_empty_file_has_no_lines_and_no_rejections(tmp_path):
    src = tmp_path / "empty.jsonl"
    src.write_bytes(b"")
    s = validate_file(src)
    assert (s.lines, s.valid, s.rejected) == (0, 0, 0)


def test_50mb_line_rejected_with_its_size(tmp_path):
    src = tmp_path / "big.jsonl"
    filler = 50_000_000
    with open(src, "wb") as f:
        f.write(GOOD + b"\n")
        f.write(b'{"responses_create_params": {"input": "' + b"z" * filler + b'"}}\n')
        f.write(GOOD + b"\n")
    s = validate_file(src, rejects=tmp_path / "rej.jsonl")
    assert (s.lines, s.valid, s.rejected) == (3, 2, 1)
    assert s.first_rejections == [
        {"line": 2, "code": "line_too_long", "reason": "line is 50 MB, over the 16 MB limit per line"}
    ]
    (rej,) = [orjson.loads(x) for x in (tmp_path / "rej.jsonl").read_bytes().splitlines()]
    assert rej["line"] == 2 and rej["raw_truncated"] is True and len(rej["raw"]) == 64 * 1024


def test_custom_line_limit_in_reason(tmp_path):
    src = tmp_path / "r.jsonl"
    src.write_bytes(GOOD + b"\n")
    s = validate_file(src, max_line_bytes=500)
    assert s.first_rejections[0]["reason"] == f"line is {len(GOOD)} bytes, over the 500 bytes limit per line"


@pytest.mark.parametrize("make", [lambda p: p / "missing.jsonl", lambda p: p])
def test_missing_or_directory_path_is_input_error(tmp_path, make: Callable[[Path], Path]):
    target = make(tmp_path)
    rejects = tmp_path / "rej.jsonl"
    with pytest.raises(InputError) as exc:
        validate_file(target, rejects=rejects)
    assert str(exc.value) in (f"{target}: no such file.", f"{target}: is a directory, not a JSONL file.")
    assert not rejects.exists()  # the atomic rejects file is not left behind half-written


def test_deep_records_validate_and_write_back(tmp_path):
    # orjson reads 1024 nested levels but writes only 254: gymverl.jsonl.dumps must cope.
    from gymverl.jsonl import dumps

    data = line(good(extra="x")).replace(b'"extra":"x"', b'"extra":' + b"[" * 600 + b"]" * 600)
    src = tmp_path / "deep.jsonl"
    src.write_bytes(data + b"\n")
    (c,) = list(iter_checked(src))
    assert c.record is not None
    assert dumps(c.record) == data
    assert validate_file(src).valid == 1
    too_deep = line(good(extra="x")).replace(b'"extra":"x"', b'"extra":' + b"[" * 1100 + b"]" * 1100)
    src.write_bytes(too_deep + b"\n")
    s = validate_file(src)
    (rej,) = s.first_rejections
    assert (rej["line"], rej["code"]) == (1, "invalid_json")
    assert re.fullmatch(r"invalid JSON at column \d+ \(depth limit exceeded\)", rej["reason"])


def test_every_line_is_valid_or_rejected_in_order(tmp_path):
    lines = [GOOD, b"[]", GOOD, b"", b"{bad", GOOD]
    src = tmp_path / "mixed.jsonl"
    src.write_bytes(b"\n".join(lines) + b"\n")
    out = list(iter_checked(src))
    assert [c.line for c in out] == [1, 2, 3, 5, 6]  # line 4 is blank: skipped, not rejected
    assert [c.record is not None for c in out] == [True, False, True, False, True]
    assert [c.code for c in out] == [None, "not_object", None, "invalid_json", None]
    assert out[0].record == good()


# ---- check_record / check_task on objects ------------------------------------------------------


@pytest.mark.parametrize(
    "rec",
    [
        good(),
        good(reward=0),
        good(reward=-1.0),  # blackjack uses -1
        good(reward=2.5),
        with_value("responses_create_params.input", "a plain string prompt"),
        with_value("responses_create_params.tools", None),
        good(_ng_task_index=None),
        with_value("responses_create_params.input[0]", {"type": "message", "role": "developer", "content": "x"}),
        with_value("response.output[0]", {"type": "reasoning", "summary": []}),
        with_value("response.output", []),
        good(agent_ref="plain-agent-name", unknown_key={"kept": True}),
    ],
)
def test_valid_records(rec):
    check_record(rec)


def test_unknown_keys_are_kept_through_validation(tmp_path):
    rec = good(my_field={"deep": [1, 2]}, expected_answers=["a"])
    src = tmp_path / "r.jsonl"
    src.write_bytes(line(rec) + b"\n")
    (c,) = list(iter_checked(src))
    assert c.record == rec


def test_check_task_accepts_task_rows_and_rollouts_need_more(tmp_path):
    task = {"responses_create_params": {"input": [{"role": "user", "content": "2+2?"}]}, "expected_answer": "4"}
    check_task(task)
    with pytest.raises(RecordError) as exc:
        check_record(task)
    assert (exc.value.code, exc.value.reason) == ("missing_key", "missing required key 'response'")


def test_record_error_carries_code_and_reason():
    with pytest.raises(RecordError) as exc:
        check_record([])
    assert exc.value.code == "not_object"
    assert str(exc.value) == exc.value.reason == "line is a JSON array, not an object"


# ---- helpers -------------------------------------------------------------------------------------


def test_task_key_prefers_task_index_and_agent():
    assert task_key(good(_ng_task_index=7)) == "weather_agent#7"
    assert task_key(good(_ng_task_index=7, agent_ref=None)) == "#7"
    no_index = good(_ng_task_index=None)
    assert task_key(no_index) == f"weather_agent@{prompt_hash(no_index)}"


def test_prompt_hash_ignores_key_order_and_non_prompt_fields():
    a = good()
    b = copy.deepcopy(a)
    b["responses_create_params"] = dict(reversed(list(b["responses_create_params"].items())))
    b["reward"] = 0.0
    b["response"]["output"] = []
    assert prompt_hash(a) == prompt_hash(b)
    c = with_value("responses_create_params.input[1].content", "Weather in Rome?")
    assert prompt_hash(c) != prompt_hash(a)
    d = copy.deepcopy(a)
    d["responses_create_params"]["instructions"] = "Answer in French."
    assert prompt_hash(d) != prompt_hash(a)


def test_agent_name_forms():
    assert agent_name(good()) == "weather_agent"
    assert agent_name(good(agent_ref="x")) == "x"
    assert agent_name(good(agent_ref={"name": 3})) is None
    assert agent_name({}) is None


@pytest.mark.parametrize(
    "response, expected",
    [
        ({"status": "completed", "output": []}, False),
        ({"output": []}, False),
        ({"status": "incomplete", "output": []}, True),
        ({"status": "completed", "incomplete_details": {"reason": "max_output_tokens"}, "output": []}, True),
        ({"status": "completed", "incomplete_details": None, "output": []}, False),
    ],
)
def test_is_incomplete(response, expected):
    assert is_incomplete(good(response=response)) is expected


def test_output_tokens_final_text_content_text():
    rec = good()
    assert output_tokens(rec) is None
    rec["response"]["usage"] = {"output_tokens": 12}
    assert output_tokens(rec) == 12
    rec["response"]["usage"] = {"output_tokens": True}
    assert output_tokens(rec) is None
    assert final_text(rec) == "Sunny."
    assert final_text(with_value("response.output", [])) == ""
    assert content_text(None) == ""
    assert content_text("plain") == "plain"
    parts = [{"type": "output_text", "text": "a"}, "b", {"type": "refusal", "refusal": "no"}, {"type": "image"}]
    assert content_text(parts) == "abno"


def test_task_fields_are_everything_but_rollout_keys():
    rec = good(judge_evaluations=None, skills_ref={"x": 1}, _ng_failure_class=None)
    assert task_fields(rec) == {"expected_answer": "sunny", "judge_evaluations": None}
    assert {"responses_create_params", "response", "reward", "_ng_task_index", "agent_ref"} <= ROLLOUT_KEYS


# ---- summaries on the sample data, checked against a plain json reading --------------------------


def test_summary_of_sample_rollouts_matches_plain_reading():
    path = SAMPLE_DATA / "rollouts.jsonl"
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    rewards = [float(r["reward"]) for r in rows]
    per_task = Counter((r["agent_ref"]["name"], r["_ng_task_index"]) for r in rows)
    incomplete = sum(
        1 for r in rows if r["response"].get("incomplete_details") or r["response"].get("status") not in (None, "completed")
    )
    d = validate_file(path).to_dict()
    assert (d["lines"], d["valid"], d["rejected"]) == (len(rows), len(rows), 0)
    assert d["tasks"] == len(per_task)
    assert d["rollouts_per_task"]["distribution"] == {str(k): v for k, v in Counter(per_task.values()).items()}
    assert d["reward"]["mean"] == pytest.approx(sum(rewards) / len(rewards))
    assert (d["reward"]["min"], d["reward"]["max"]) == (min(rewards), max(rewards))
    assert sum(d["reward"]["histogram"].values()) + d["reward"]["out_of_0_1"] == len(rows)
    assert d["reward"]["values"] == {(str(k)[:-2] if str(k).endswith(".0") else str(k)): v for k, v in sorted(Counter(rewards).items())}
    assert d["incomplete"] == incomplete >= 1
    assert d["agents"] == dict(Counter(r["agent_ref"]["name"] for r in rows))


def test_summary_histogram_and_out_of_range(tmp_path):
    rewards = [0.0, 0.05, 0.5, 0.99, 1.0, 1.0, -1.0, 3]
    src = tmp_path / "r.jsonl"
    src.write_bytes(b"".join(line(good(reward=r, _ng_rollout_index=i)) + b"\n" for i, r in enumerate(rewards)))
    d = validate_file(src).to_dict()
    hist = d["reward"]["histogram"]
    assert hist["0.0-0.1"] == 2 and hist["0.5-0.6"] == 1 and hist["0.9-1.0"] == 3
    assert d["reward"]["out_of_0_1"] == 2
    assert d["reward"]["mean"] == pytest.approx(sum(rewards) / len(rewards))
    assert d["tasks"] == 1 and d["rollouts_per_task"]["max"] == len(rewards)


def test_tasks_mode_on_sample_tasks():
    s = validate_file(SAMPLE_DATA / "tasks.jsonl", tasks=True)
    n = len((SAMPLE_DATA / "tasks.jsonl").read_text().splitlines())
    assert (s.lines, s.valid, s.rejected) == (n, n, 0)
    assert s.reward_mean is None
    # The same file checked as rollouts: every row lacks 'response'.
    r = validate_file(SAMPLE_DATA / "tasks.jsonl")
    assert r.rejected == n and r.rejected_by_code == Counter({"missing_key": n})
    assert r.first_rejections[0] == {"line": 1, "code": "missing_key", "reason": "missing required key 'response'"}


def test_on_line_sees_every_line(tmp_path):
    src = tmp_path / "r.jsonl"
    src.write_bytes(GOOD + b"\n[]\n" + GOOD)
    seen = []
    validate_file(src, on_line=lambda c: seen.append((c.line, c.code)))
    assert seen == [(1, None), (2, "not_object"), (3, None)]


def _peak_validating(src: Path, accelerated: bool) -> tuple[int, int]:
    import tracemalloc

    from gymverl import records

    saved = records._msgspec
    if not accelerated:
        records._msgspec = None
    tracemalloc.start()
    try:
        s = validate_file(src)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        records._msgspec = saved
    return s.valid, peak


@pytest.mark.parametrize("accelerated", [True, False])
def test_validate_streams_in_constant_memory(tmp_path, accelerated):
    peaks = {}
    for n in (2_000, 10_000):
        src = tmp_path / f"{n}.jsonl"
        with open(src, "wb") as f:
            for i in range(n):
                f.write(line(good(_ng_task_index=i % 50, _ng_rollout_index=i // 50, reward=(i % 7) / 7)) + b"\n")
        valid, peaks[n] = _peak_validating(src, accelerated)
        assert valid == n
    # 5x the lines (about 6 MB), the same memory: one line and one 1 MB read buffer at a time.
    assert peaks[10_000] < peaks[2_000] + 100_000
    assert peaks[10_000] < 3_000_000 < (tmp_path / "10000.jsonl").stat().st_size


@pytest.mark.parametrize("accelerated", [True, False])
@pytest.mark.parametrize("value", [2**64 - 1, 2**64, 10**30])
def test_task_index_beyond_64_bits_same_verdict_on_both_paths(tmp_path, monkeypatch, accelerated, value):
    """msgspec reads any integer exactly, orjson reads those beyond 64 bits as floats: the fast path
    must hand such lines to the exact path, so the verdict never depends on the accelerators."""
    from gymverl import records

    if not accelerated:
        monkeypatch.setattr(records, "_msgspec", None)
    line = (SAMPLE_DATA / "rollouts.jsonl").read_text().splitlines()[0]
    assert '"_ng_task_index": 0' in line
    src = tmp_path / "big.jsonl"
    src.write_text(line.replace('"_ng_task_index": 0', f'"_ng_task_index": {value}') + "\n")
    s = validate_file(src)
    if value <= 2**64 - 1:
        assert (s.valid, s.rejected) == (1, 0)
    else:
        assert (s.valid, s.rejected) == (0, 1)
        assert s.first_rejections[0]["line"] == 1
        # (it was `wrong_type`, "must be a non-negative integer, got 1.8446744073709552e+19": the
        # float orjson made of it; the reason now names the integer the file holds)
        assert s.first_rejections[0]["code"] == "integer_too_large"
        assert s.first_rejections[0]["reason"] == f"'_ng_task_index' is {value}, an integer beyond 64 bits that would be read as {float(value)!r}"


def test_nemo_gym_bookkeeping_keys_are_never_task_fields():
    """0.7.0 writes keys ROLLOUT_KEYS did not list (`_ng_attempt_index`, `_ng_rollout_id`,
    `_ng_failure_*`): every `_ng_*` key is NeMo Gym's, never a task field (nor joined, nor an rl column)."""
    from gymverl.formats import FieldRules
    from gymverl.records import is_ng_key
    from gymverl.sidecars import input_fields

    rec = {"responses_create_params": {"input": "q"}, "response": {}, "reward": 1.0, "expected_answer": "4",
           "_ng_attempt_index": 1, "_ng_rollout_id": "r1", "_ng_failure_message": "x", "mask_sample": False}
    assert task_fields(rec) == {"expected_answer": "4"}
    assert input_fields(rec) == {"expected_answer": "4"}
    assert FieldRules(keep_all=True).task_fields(rec) == {"expected_answer": "4"}
    assert is_ng_key("_ng_anything") and is_ng_key("reward") and not is_ng_key("question")


def _count_one_at_a_time(facts: list[tuple[Any, ...]], lines: list[int], max_examples: int) -> dict[str, Any]:
    """The summary's counting rules, applied line by line (what `ValidationSummary.fold` batches)."""
    from bisect import bisect_right

    from gymverl.records import REWARD_EDGES

    out: dict[str, Any] = {"tasks": Counter(), "agents": Counter(), "values": Counter(), "hist": [0] * 10, "out": 0, "sum": 0.0, "min": None, "max": None,
                           "incomplete": 0, "masked": 0, "uncarried": Counter(), "uncarried_lines": []}
    for name in ("malformed", "empty", "no_prompt"):
        out[name], out[name + "_lines"] = 0, []
    for (r, key, agent, incomplete, masked, malformed, empty, no_prompt, uncarried), line in zip(facts, lines):
        out["tasks"][key] += 1
        out["agents"][agent or "(unnamed)"] += 1
        if uncarried is not None:
            out["uncarried"][uncarried] += 1
            if len(out["uncarried_lines"]) < max_examples:
                out["uncarried_lines"].append(line)
        if r is None:
            continue
        for flag, name in ((malformed, "malformed"), (empty, "empty"), (no_prompt, "no_prompt")):
            if flag:
                out[name] += 1
                if len(out[name + "_lines"]) < max_examples:
                    out[name + "_lines"].append(line)
        out["sum"] += r
        out["min"] = r if out["min"] is None or r < out["min"] else out["min"]
        out["max"] = r if out["max"] is None or r > out["max"] else out["max"]
        if len(out["values"]) < 50 or r in out["values"]:
            out["values"][r] += 1
        if 0.0 <= r <= 1.0:
            out["hist"][min(bisect_right(REWARD_EDGES, r), 10) - 1] += 1
        else:
            out["out"] += 1
        out["incomplete"] += incomplete
        out["masked"] += masked
    return out


@pytest.mark.parametrize("seed", range(4))
def test_batched_counting_equals_counting_line_by_line(seed: int) -> None:
    # validate counts valid lines in batches (`fold`): the counts, the order of the counters' keys
    # (most_common's ties), the first example lines and the float sum must be those of counting
    # one line at a time, across batch boundaries, with rewards first seen after 50 distinct ones.
    import random

    rng = random.Random(seed)
    facts, lines = [], []
    for i in range(rng.randint(2000, 5000)):
        reward = None if rng.random() < 0.05 else rng.choice([0.0, -0.0, 1.0, 0.5, 1.5, -1.0, 0.3 * 3, rng.random(), i / 7])
        facts.append((reward, f"a#{rng.randint(0, 300)}", rng.choice(["a", "b", None, ""]), rng.random() < 0.1, rng.random() < 0.1,
                      rng.choice([0, 0, 0, 0, 0, 0, 0, 0, 2]), rng.random() < 0.02, rng.random() < 0.01, rng.choice([None] * 30 + ["image_url"])))
        lines.append(i * 2 + 1)
    s = ValidationSummary("x", max_examples=7)
    for f, n in zip(facts, lines):
        s.add_facts(f, n)
        if rng.random() < 0.001:
            s.fold()  # an exact-path line or the end may fold any time
    s.fold()
    want = _count_one_at_a_time(facts, lines, 7)
    assert (s.lines, s.valid) == (len(facts), len(facts))
    assert list(s.rollouts_per_task.items()) == list(want["tasks"].items())
    assert list(s.agents.items()) == list(want["agents"].items())
    assert list(s.reward_values.items()) == list(want["values"].items()) and len(s.reward_values) == 50
    assert (s.reward_hist, s.reward_out_of_range) == (want["hist"], want["out"])
    assert (s.reward_sum, s.reward_min, s.reward_max) == (want["sum"], want["min"], want["max"])
    assert (s.incomplete, s.masked) == (want["incomplete"], want["masked"])
    assert (s.malformed_calls, s.malformed_call_lines) == (want["malformed"], want["malformed_lines"])
    assert (s.empty_answers, s.empty_answer_lines) == (want["empty"], want["empty_lines"])
    assert (s.no_prompt, s.no_prompt_lines) == (want["no_prompt"], want["no_prompt_lines"])
    assert (list(s.uncarried_prompts.items()), s.uncarried_prompt_lines) == (list(want["uncarried"].items()), want["uncarried_lines"])
