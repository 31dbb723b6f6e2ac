"""Property tests: whatever bytes or JSON a file holds, validation never raises and accounts for every line."""

from __future__ import annotations

import json
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from gymverl.inputs import GZIP_MAGIC, HEAD_BYTES, InputError, sniff
from gymverl.jsonl import RAW_KEEP_BYTES
from gymverl.messages import rollout_messages
from gymverl.records import RecordError, check_record, iter_checked, validate_file
from test_records import GOOD, good

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("prop")


def physical_lines(data: bytes) -> int:
    """Lines as a reader sees them: split on \\n; a last line without \\n counts; a leading BOM is not content."""
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    return data.count(b"\n") + (1 if data and not data.endswith(b"\n") else 0)


# Bytes that look a little like JSONL, so parsing gets past the first byte often.
_fragments = st.sampled_from(
    [GOOD, GOOD[:50], b"{", b"}", b"[", b"]", b'"', b":", b",", b"\n", b"\r\n", b"NaN", b"1e999", b"\xff",
     b"\xc3", b"\xef\xbb\xbf", b"null", b" ", b"\\u", b"\\ud800", b'{"reward": 1}', b"\x00"]
)
jsonl_ish = st.lists(st.one_of(_fragments, st.binary(max_size=40)), max_size=30).map(b"".join)
any_bytes = st.one_of(st.binary(max_size=2000), jsonl_ish)


def refused(data: bytes) -> bool:
    """Whole-file refusals (gymverl.inputs): binary/Parquet/... in the first block, or gzip magic
    (random bytes after it are corrupt gzip). One sentence for the file, not one per line."""
    if data.startswith(GZIP_MAGIC):
        return True
    try:
        sniff(data[:HEAD_BYTES], "x")
    except InputError:
        return True
    return False


def check_refused(path: Path, data: bytes, **kw) -> bool:
    """True (after checking the one-sentence error) when the whole file is refused."""
    if not refused(data):
        return False
    try:
        validate_file(path, **kw)
    except InputError as exc:
        assert "\n" not in str(exc) and str(exc).startswith(str(path))
        return True
    assert data.startswith(GZIP_MAGIC), "a binary head must be refused"  # a valid gzip stream may pass
    return True


def check_accounting(path: Path, data: bytes, rejects: Path) -> None:
    if check_refused(path, data, rejects=rejects):
        return
    s = validate_file(path, rejects=rejects)
    # Blank lines are skipped and counted, never rejected: every physical line is in one bucket.
    assert s.valid + s.rejected + s.blank == s.lines == physical_lines(data)
    rows = [orjson.loads(x) for x in rejects.read_bytes().splitlines()]
    assert len(rows) == s.rejected
    assert [r["line"] for r in rows] == sorted({r["line"] for r in rows})
    for r in rows:
        assert 1 <= r["line"] <= s.lines and r["reason"] and r["code"]
        assert len(r["raw"].encode("utf-8", "surrogatepass")) <= 3 * RAW_KEEP_BYTES
    assert sum(s.rejected_by_code.values()) == s.rejected


@SETTINGS
@given(data=any_bytes)
def test_any_bytes_never_raise_and_every_line_is_counted(workdir, data):
    path = workdir / "bytes.jsonl"
    path.write_bytes(data)
    check_accounting(path, data, workdir / "bytes.rejects.jsonl")


@SETTINGS
@given(data=any_bytes, limit=st.integers(min_value=1, max_value=64))
def test_any_bytes_with_a_tiny_line_limit(workdir, data, limit):
    path = workdir / "limit.jsonl"
    path.write_bytes(data)
    if check_refused(path, data, max_line_bytes=limit):
        return
    s = validate_file(path, max_line_bytes=limit)
    assert s.valid + s.rejected + s.blank == s.lines == physical_lines(data)


json_leaf = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20),
)
json_value = st.recursive(
    json_leaf, lambda kids: st.one_of(st.lists(kids, max_size=4), st.dictionaries(st.text(max_size=8), kids, max_size=4)),
    max_leaves=20,
)

ITEM_KEYS = ["type", "role", "content", "name", "call_id", "arguments", "output", "summary", "id"]
item = st.one_of(
    json_value,
    st.fixed_dictionaries(
        {},
        optional={
            "type": st.one_of(st.sampled_from(["message", "function_call", "function_call_output", "reasoning", "x"]), json_value),
            "role": st.one_of(st.sampled_from(["user", "assistant", "system", "developer", "tool", "bot"]), json_value),
            "content": json_value, "name": st.one_of(st.text(max_size=5), json_value),
            "call_id": st.one_of(st.text(max_size=5), json_value), "arguments": json_value,
            "output": json_value, "summary": json_value,
        },
    ),
)
items = st.one_of(st.lists(item, max_size=5), json_value)
record_like = st.fixed_dictionaries(
    {},
    optional={
        "responses_create_params": st.one_of(
            st.fixed_dictionaries({}, optional={"input": st.one_of(st.text(max_size=10), items), "tools": json_value,
                                                "instructions": json_value}),
            json_value,
        ),
        "response": st.one_of(st.fixed_dictionaries({}, optional={"output": items, "status": json_value,
                                                                  "incomplete_details": json_value}), json_value),
        "reward": st.one_of(st.floats(allow_nan=True, allow_infinity=True), json_value),
        "_ng_task_index": json_value, "_ng_rollout_index": json_value, "agent_ref": json_value,
        "mask_sample": json_value, "extra": json_value,
    },
)


def dump(value) -> bytes:
    # Python's json writes NaN/Infinity and big ints as they are: exactly the input validate must cope with.
    return json.dumps(value).encode()


@SETTINGS
@given(values=st.lists(st.one_of(json_value, record_like), max_size=8))
def test_arbitrary_json_per_line(workdir, values):
    data = b"".join(dump(v) + b"\n" for v in values)
    path = workdir / "values.jsonl"
    path.write_bytes(data)
    check_accounting(path, data, workdir / "values.rejects.jsonl")
    for c in iter_checked(path):
        if c.record is not None:
            # Whatever validates converts to chat messages and writes back as JSON.
            rollout_messages(c.record, include_reasoning=True)
            orjson.dumps(c.record)
            assert c.record == orjson.loads(c.raw)


@SETTINGS
@given(rec=record_like)
def test_check_record_raises_only_record_error(rec):
    try:
        check_record(rec)
    except RecordError as exc:
        assert exc.code and exc.reason and "\n" not in exc.reason
    else:
        rollout_messages(rec)


@SETTINGS
@given(cut=st.integers(min_value=1, max_value=len(GOOD) - 1), n_good=st.integers(min_value=0, max_value=3))
def test_any_cut_last_record_is_reported_as_truncated(workdir, cut, n_good):
    data = (GOOD + b"\n") * n_good + GOOD[:cut]
    path = workdir / "cut.jsonl"
    path.write_bytes(data)
    s = validate_file(path)
    assert (s.lines, s.valid, s.rejected) == (n_good + 1, n_good, 1)
    assert s.first_rejections == [
        {"line": n_good + 1, "code": "truncated", "reason": "truncated JSON at end of file (the file ends mid-record)"}
    ]


def test_valid_record_shapes_round_trip(workdir):
    rec = good(extra={"nested": [1, 2.5, None, "é"]})
    path = workdir / "one.jsonl"
    path.write_bytes(dump(rec) + b"\n")
    (c,) = list(iter_checked(path))
    assert c.record == rec


# ---- the accelerated path (simdjson + msgspec) gives exactly the orjson path's results ------------

import contextlib  # noqa: E402

from gymverl import records  # noqa: E402
from gymverl.messages import prompt_fault  # noqa: E402
from gymverl.records import _FastRollouts, agent_name, empty_answer, is_incomplete, malformed_calls, starts_without_prompt, task_key  # noqa: E402


@contextlib.contextmanager
def orjson_path_only():
    saved = records._msgspec
    records._msgspec = None
    try:
        yield
    finally:
        records._msgspec = saved


def both_ways(workdir: Path, data: bytes) -> None:
    path = workdir / "both.jsonl"
    path.write_bytes(data)
    if refused(data):
        return  # refused before any line is parsed, by either path
    fast = validate_file(path, rejects=workdir / "fast.rejects.jsonl").to_dict()
    with orjson_path_only():
        slow = validate_file(path, rejects=workdir / "slow.rejects.jsonl").to_dict()
    assert fast == slow
    assert (workdir / "fast.rejects.jsonl").read_bytes() == (workdir / "slow.rejects.jsonl").read_bytes()


def _fault(rec: dict) -> str | None:
    fault = prompt_fault(rec["responses_create_params"])
    return fault and fault[0]


def test_accelerators_are_installed_and_used():
    assert records._msgspec is not None and records._simdjson is not None, "pip install msgspec pysimdjson"
    found = _FastRollouts()(GOOD)
    rec = orjson.loads(GOOD)
    assert found == (1.0, task_key(rec), agent_name(rec), is_incomplete(rec), False, malformed_calls(rec), empty_answer(rec), starts_without_prompt(rec), _fault(rec))


def test_fast_path_accepts_the_sample_rollouts():
    from conftest import SAMPLE_DATA

    fast = _FastRollouts()
    for raw in (SAMPLE_DATA / "rollouts.jsonl").read_bytes().splitlines():
        rec = orjson.loads(raw)
        assert fast(raw) == (
            float(rec["reward"]), task_key(rec), agent_name(rec), is_incomplete(rec), False,
            malformed_calls(rec), empty_answer(rec), starts_without_prompt(rec), _fault(rec),
        )


@SETTINGS
@given(values=st.lists(st.one_of(record_like, json_value), max_size=6))
def test_fast_and_orjson_paths_agree_on_arbitrary_json(workdir, values):
    both_ways(workdir, b"".join(dump(v) + b"\n" for v in values))


@SETTINGS
@given(data=any_bytes)
def test_fast_and_orjson_paths_agree_on_any_bytes(workdir, data):
    both_ways(workdir, data)


DUP_KEYS = ["reward", "_ng_task_index", "_ng_rollout_index", "response", "responses_create_params", "agent_ref", "mask_sample"]


@SETTINGS
@given(
    key=st.sampled_from(DUP_KEYS), value=json_value, first=st.booleans(),
    item_key=st.sampled_from(["type", "role", "name", "call_id"]), item_value=json_value, which=st.integers(0, 2),
)
def test_repeated_keys_read_like_orjson(workdir, key, value, first, item_key, item_value, which):
    # JSON leaves repeated keys to the reader; gymverl must read them as orjson does (last wins).
    v = dump(value)
    top = b'{"' + key.encode() + b'":' + v + b"," + GOOD[1:] if first else GOOD[:-1] + b',"' + key.encode() + b'":' + v + b"}"
    marker = [b'{"type":"function_call",', b'{"type":"function_call_output",', b'{"type":"message",'][which]
    dup = b'"' + item_key.encode() + b'":' + dump(item_value) + b","
    item = GOOD.replace(marker, marker + dup if not first else marker[:1] + dup + marker[1:], 1)
    assert item != GOOD
    both_ways(workdir, top + b"\n" + item + b"\n" + GOOD + b"\n")
    for raw in (top, item):
        found = _FastRollouts()(raw)
        if found is not None:
            rec = orjson.loads(raw)
            check_record(rec)
            assert found == (
                float(rec["reward"]), task_key(rec), agent_name(rec), is_incomplete(rec), rec.get("mask_sample") is True,
                malformed_calls(rec), empty_answer(rec), starts_without_prompt(rec), _fault(rec),
            )


@SETTINGS
@given(value=json_value, where=st.sampled_from(["extra", "usage", "content"]))
def test_values_only_orjson_rejects_are_not_let_through(workdir, value, where):
    # Numbers beyond a double, NaN, big ints, odd unicode: anywhere in a line, including keys the
    # fast path skips, the two paths must agree.
    rec = good()
    if where == "extra":
        rec["extra"] = value
    elif where == "usage":
        rec["response"]["usage"] = {"output_tokens": value}
    else:
        rec["response"]["output"][2]["content"] = value
    both_ways(workdir, dump(rec) + b"\n")


@pytest.mark.parametrize(
    "raw",
    [
        GOOD.replace(b'"expected_answer":"sunny"', b'"expected_answer":1e400'),
        GOOD.replace(b'"expected_answer":"sunny"', b'"expected_answer":' + b"9" * 400),
        GOOD.replace(b'"expected_answer":"sunny"', b'"expected_answer":18446744073709551616'),
        GOOD.replace(b'"expected_answer":"sunny"', b'"expected_answer":"\xff"'),
        GOOD.replace(b'"expected_answer":"sunny"', b'"expected_answer":"\xed\xa0\x80"'),
        GOOD.replace(b'"expected_answer":"sunny"', b'"expected_answer":"\\ud800"'),
        GOOD.replace(b'"expected_answer":"sunny"', b'"expected_answer":NaN'),
        b"\xef\xbb\xbf" + GOOD,
        GOOD.replace(b'"_ng_task_index":0', b'"_ng_task_index":18446744073709551616'),
        GOOD.replace(b'"expected_answer":"sunny"', b'"expected_answer":' + b"[" * 1030 + b"]" * 1030),
    ],
)
def test_known_differences_between_parsers_are_handled(workdir, raw):
    both_ways(workdir, b'{"a": 1}\n' + raw + b"\n" + GOOD + b"\n")


# ---- a line validate accepts never crashes a later stage ----------------------------------------
# Issue 10: values validate lets through (a task field nested ~255 levels deep, past what orjson
# writes; a tool whose `name` is a number) crashed rescore and the rl row builder. Valid rollouts
# with arbitrary values in every free-form place must go through rescore's request building, task
# join and row writing, and the rl/sft row builders, raising nothing but the builders' RowError.

_DEPTHS = st.sampled_from([0, 1, 60, 253, 254, 255, 256, 300, 1000])


def _nest(value, depth: int, as_dict: bool):
    for _ in range(depth):
        value = {"k": value} if as_dict else [value]
    return value


deep_value = st.builds(_nest, json_value, _DEPTHS, st.booleans())
free_value = st.one_of(json_value, deep_value)


@st.composite
def valid_rollouts(draw, free_value=free_value):
    tool_def = st.fixed_dictionaries(
        {"type": st.just("function"), "name": st.one_of(st.text(max_size=8), free_value)},
        optional={"parameters": free_value, "description": free_value, "strict": free_value},
    )
    rec = good()
    rcp = rec["responses_create_params"]
    if draw(st.booleans()):
        rcp["tools"] = draw(st.one_of(st.none(), st.lists(st.one_of(tool_def, free_value), max_size=3)))
    if draw(st.booleans()):
        rcp["input"][1]["content"] = draw(st.one_of(st.text(max_size=10), free_value))
    if draw(st.booleans()):
        rcp["instructions"] = draw(free_value)
    out = rec["response"]["output"]
    if draw(st.booleans()):
        out[0]["arguments"] = draw(st.one_of(st.text(max_size=10), free_value))
    if draw(st.booleans()):
        out[1]["output"] = draw(free_value)
    if draw(st.booleans()):
        out[2]["content"] = draw(free_value)
    for key in draw(st.lists(st.sampled_from(["expected_answer", "options", "metadata", "question", "x"]), max_size=3)):
        rec[key] = draw(free_value)
    if draw(st.booleans()):
        rec["agent_ref"] = draw(free_value)
    if draw(st.booleans()):
        rec["_ng_task_index"] = draw(st.integers(min_value=0, max_value=2**64 - 1))
    return rec


def _line_of(value) -> bytes:
    import sys

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 20_000))
    try:
        return json.dumps(value).encode()
    finally:
        sys.setrecursionlimit(limit)


def _accepted(rec):
    """The record as validate reads it back from its line, or None when validate rejects the line."""
    from gymverl.jsonl import Line
    from gymverl.records import check_line

    data = _line_of(rec)
    c = check_line(Line(1, data, len(data)))
    return c.record


@SETTINGS
@given(rec=valid_rollouts(), answer_extra=free_value)
def test_a_valid_line_never_crashes_rescore(rec, answer_extra):
    from gymverl.jsonl import dumps
    from gymverl.rescore import failure_record, rescored_row
    from gymverl.sidecars import input_fields, prompt_key
    from gymverl.records import task_key
    from gymverl.verify import VerifyResult, build_request, encode_body

    record = _accepted(rec)
    if record is None:
        return
    task = {k: v for k, v in record.items() if k not in ("response", "reward")}
    assert prompt_key(task) == prompt_key(record)  # --tasks joins it
    stripped = {k: v for k, v in record.items() if k not in ("expected_answer", "options", "metadata", "question", "x")}
    added = {k: v for k, v in input_fields(task).items() if stripped.get(k) is None and v is not None}
    body = build_request(stripped, added)
    sent = orjson.loads(encode_body(body))  # what /verify gets
    assert "reward" not in sent and all(k in sent for k, v in task.items() if v is not None)
    try:  # the server's answer is what orjson reads from its body
        extra = orjson.loads(_line_of(answer_extra))
    except orjson.JSONDecodeError:
        extra = None
    answer = dict(orjson.loads(dumps(body)), reward=0.5, extra=extra)
    row = rescored_row(record, answer, added)
    assert orjson.loads(dumps(row))["reward"] == 0.5
    fail = failure_record(7, record, VerifyResult(False, reason="http_5xx", status=503, error="x", attempts=1))
    assert orjson.loads(dumps(fail))["task"] == task_key(record)


def _rl_and_sft(record) -> None:
    from gymverl.formats import FieldRules, RowError
    from gymverl.formats.rl import rl_row
    from gymverl.formats.sft import sft_row
    from gymverl.convert.parquet import SCHEMAS, _to_table
    from gymverl.records import task_key

    key = task_key(record)
    for rules in (FieldRules(), FieldRules(keep_all=True), FieldRules(task_keys=frozenset({"expected_answer", "x"}))):
        try:
            row, _ = rl_row(record, rules=rules, data_source="d", ability="a", task_key=key)
        except RowError:
            continue
        orjson.loads(row["extra_info"]["nemo_gym"])
        _to_table([{**row, "extra_info": {**row["extra_info"], "split": "train", "index": 0}}], SCHEMAS["rl"])  # the writer takes it
    for reasoning in (False, True):
        try:
            row = sft_row(record, data_source="d", task_key=key, line=1, include_reasoning=reasoning)
        except RowError:
            continue
        orjson.loads(row["messages"])


@SETTINGS
@given(rec=valid_rollouts(free_value=json_value))
def test_a_valid_line_never_crashes_the_rl_and_sft_row_builders(rec):
    record = _accepted(rec)
    if record is not None:
        _rl_and_sft(record)


_DEEP = _nest("x", 300, False)


def _deep_at(where: str):
    rec = good()
    if where == "task field":
        rec["expected_answer"] = _DEEP
    elif where == "tool parameters":
        rec["responses_create_params"]["tools"][0]["parameters"] = {"type": "object", "x": _DEEP}
    elif where == "call arguments":
        rec["response"]["output"][0]["arguments"] = {"city": _DEEP}
    elif where == "tool output":
        rec["response"]["output"][1]["output"] = [{"type": "input_text", "text": "t", "x": _DEEP}]
    elif where == "prompt content":
        rec["responses_create_params"]["input"][1]["content"] = [{"type": "input_text", "text": "q", "x": _DEEP}]
    return rec


@pytest.mark.parametrize(
    "where",
    [
        "task field",
        "tool parameters",
        "call arguments",
        "tool output",
        "prompt content",
    ],
)
def test_a_valid_line_nested_deeper_than_orjson_writes_never_crashes_the_row_builders(where):
    record = _accepted(_deep_at(where))
    assert record is not None  # validate accepts it (orjson reads 1024 levels)
    _rl_and_sft(record)


@pytest.mark.parametrize(
    "content",
    [
        "", " ", "\n\t", "\u00a0", "\u2003x", "a", '"', "\\", " a",
        [{"type": "output_text", "text": ""}], [{"type": "output_text", "text": " \u3000"}],
        [{"type": "refusal", "refusal": "no"}], [{"type": "refusal", "text": None, "refusal": " "}],
        [{"type": "output_text", "text": None, "refusal": "x"}], ["", " x"], [" "],
        [{"type": "output_text", "text": 5}], [{"type": "output_text", "text": "", "annotations": [{"text": "x"}]}],
        [{"type": "output_text", "text": "\u0020"}, {"type": "output_text", "text": "\u0041"}],
    ],
)
def test_empty_answer_fast_check_agrees_with_the_exact_path(workdir, content):
    # The fast path reads a text's first character instead of building it: every edge of
    # "blank after strip()" must come out as the exact path says.
    rec = good()
    rec["response"]["output"][2]["content"] = content
    both_ways(workdir, dump(rec) + b"\n")


# ---- one schema: the typed shape and the dict shape meet in the same rules (gymverl.schema) -------

from gymverl import schema  # noqa: E402

text_value = st.one_of(st.sampled_from(["", " ", "\n\t", "\u00a0", "\u3000x", "a", " a", '"', "\\"]), st.text(max_size=6))
content_part = st.one_of(
    text_value,
    st.fixed_dictionaries(
        {}, optional={"type": st.sampled_from(["output_text", "refusal", "input_text"]), "text": st.one_of(text_value, json_value), "refusal": st.one_of(text_value, json_value)}
    ),
)
content_value = st.one_of(st.none(), text_value, st.lists(content_part, max_size=4), json_value)


@SETTINGS
@given(content=content_value)
@example(content=[{"type": "refusal", "refusal": "no"}])
@example(content=[{"type": "refusal", "text": None, "refusal": " x"}])
@example(content=[{"type": "output_text", "refusal": "x"}])
@example(content=[{"text": " "}, {"text": "\u00a0"}, "\n"])
@example(content=[{"text": '"'}])
@example(content=[{"text": 5}, {"text": "\\"}])
@example(content=[{"text": "\u3000"}, "\u2028", {"text": "\x85\u200a"}, {"text": "\x1c\t"}])  # multi-byte white space
@example(content=[{"text": "\u3000"}, {"text": "\u00d7"}])
@example(content=[{"text": "\u2028"}, {"text": "\U0001f600"}])
@example(content=[{"text": "\n"}, {"text": "\x08"}])
@example(content=[{"text": "\x1f"}, {"text": "\u2003x"}])
def test_blank_answer_rule_reads_both_shapes_alike(content):
    # `content_blank` on the typed parts (texts left raw) is `content_text(...).strip() == ""` on the dict.
    expected = not schema.content_text(content).strip()
    assert schema.content_blank(content) == expected
    try:
        typed = schema.msgspec.json.Decoder(schema.TextParts).decode(orjson.dumps(content))
    except (schema.msgspec.ValidationError, orjson.JSONEncodeError):
        return  # not of the typed form: such a line takes the dict path
    assert schema.content_blank(typed) == expected


def test_fast_path_reads_rollouts_without_a_task_index():
    # The task key from the prompt hash comes from the same rule on both shapes (it used to be left
    # to the orjson path, for every line of such a file).
    from conftest import SAMPLE_DATA

    fast = _FastRollouts()
    for raw in (SAMPLE_DATA / "rollouts.jsonl").read_bytes().splitlines():
        rec = orjson.loads(raw)
        rec.pop("_ng_task_index", None)
        rec.pop("_ng_rollout_index", None)
        line = orjson.dumps(rec)
        assert fast(line) == (
            float(rec["reward"]), task_key(rec), agent_name(rec), is_incomplete(rec), False,
            malformed_calls(rec), empty_answer(rec), starts_without_prompt(rec), _fault(rec),
        )
        assert "@" in task_key(rec)


def test_long_prompts_with_the_same_ending_keep_their_own_facts(workdir):
    # Long prompts are looked up by their last 64 bytes first (no copy and hash of the whole
    # prompt per line); two prompts that end alike must still get their own malformed-call count.
    tail = {"role": "user", "content": "the same question at the end " * 4}
    lines = []
    for args in ('{"a": 1}', '{"a"', '{"b": 2}', '"x"'):  # alternating: each line finds the other's entry
        rec = good()
        rec["responses_create_params"]["input"] = [
            {"role": "system", "content": "s" * 1500},
            {"type": "function_call", "name": "f", "call_id": "c1", "arguments": args},
            {"type": "function_call_output", "call_id": "c1", "output": "o"},
            tail,
        ]
        lines.append(dump(rec))
    for line in lines * 2:
        assert len(orjson.dumps(orjson.loads(line)["responses_create_params"]["input"])) > 1024
        both_ways(workdir, line + b"\n")
    fast = _FastRollouts()
    assert [fast(line)[5] for line in lines * 2] == [malformed_calls(orjson.loads(line)) for line in lines * 2] == [0, 1, 0, 1] * 2


@pytest.mark.parametrize(
    "tools, reason",
    [
        ([{"type": "function", "parameters": {}}], "'responses_create_params.tools[0]' has no name"),
        ([{"type": "function", "name": "f"}, {"type": "function", "function": {"name": ""}}], "'responses_create_params.tools[1]' has no name"),
        ([{"type": "web_search"}], "'responses_create_params.tools[0]' has type 'web_search': only function tools can be given to a chat model"),
        (["get_weather"], "'responses_create_params.tools[0]' is string, not a tool object"),
        ([{"type": None, "name": "f"}], "'responses_create_params.tools[0]' has type null: only function tools can be given to a chat model"),
        ([{"type": "function", "name": "f"}, {"function": {"name": "g"}}], None),
        ([], None),
        (None, None),
    ],
)
def test_validate_rejects_the_tools_to_parquet_cannot_convert(workdir, tools, reason):
    """validate called a rollout with a nameless or non-function tool valid, then every to-parquet
    format rejected it (`bad_tools`): "valid" must mean "converts". Both paths, the same verdict."""
    rec = orjson.loads(GOOD)
    rec["responses_create_params"]["tools"] = tools
    data = orjson.dumps(rec) + b"\n"
    both_ways(workdir, data)
    s = validate_file(workdir / "both.jsonl")
    if reason is None:
        assert s.valid == 1, s.rejections
    else:
        assert s.valid == 0 and s.rejected == 1 and s.rejections[0]["code"] == "bad_tools" and s.rejections[0]["reason"] == reason, s.rejections
