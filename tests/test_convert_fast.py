"""to-parquet's fast path (msgspec + simdjson, gymverl/formats/fast.py) and the pandas-free table
builder must give exactly what the orjson path and `Table.from_pylist` give, line for line."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import json
import random
from pathlib import Path
from typing import Any, Callable

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from gymverl import convert as conv
from gymverl.convert import ConvertOptions, convert
from gymverl.formats import dpo as dpo_fmt
from gymverl.formats import fast as fast_fmt
from gymverl.formats import sft as sft_fmt
from gymverl.formats import rl as rl_fmt
from gymverl.select import SelectOptions
from gymverl.sidecars import prompt_key

from conftest import REPO, SAMPLE_DATA

pytestmark = pytest.mark.skipif(not fast_fmt.available(), reason="msgspec/pysimdjson not installed")

MUTATIONS: dict[str, Callable[[dict[str, Any]], None]] = {}


def mutation(f: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, Any]], None]:
    MUTATIONS[f.__name__] = f
    return f


def _items(r: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [it for it in r["response"]["output"] if it.get("type") == kind]


@mutation
def no_task_index(r: dict[str, Any]) -> None:
    r.pop("_ng_task_index", None)


@mutation
def index_beyond_64_bits(r: dict[str, Any]) -> None:
    r["_ng_task_index"] = 2**64


@mutation
def largest_64_bit_index(r: dict[str, Any]) -> None:
    r["_ng_task_index"] = 2**64 - 1


@mutation
def boolean_reward(r: dict[str, Any]) -> None:
    r["reward"] = True


@mutation
def integer_reward(r: dict[str, Any]) -> None:
    r["reward"] = 1


@mutation
def agent_as_string(r: dict[str, Any]) -> None:
    r["agent_ref"] = "my_agent"


@mutation
def agent_name_not_string(r: dict[str, Any]) -> None:
    r["agent_ref"] = {"type": "x", "name": 5}


@mutation
def message_without_type(r: dict[str, Any]) -> None:
    for it in _items(r, "message"):
        del it["type"]


@mutation
def empty_call_id(r: dict[str, Any]) -> None:
    for it in _items(r, "function_call"):
        it["call_id"], it["id"] = "", "item_id"


@mutation
def object_arguments(r: dict[str, Any]) -> None:
    for it in _items(r, "function_call"):
        it["arguments"] = {"a": 1}


@mutation
def missing_arguments(r: dict[str, Any]) -> None:
    for it in _items(r, "function_call"):
        it.pop("arguments", None)


@mutation
def tool_output_parts(r: dict[str, Any]) -> None:
    r["response"]["output"].append({"type": "function_call_output", "call_id": "c", "output": [{"type": "input_text", "text": "hi"}]})


@mutation
def tool_output_missing(r: dict[str, Any]) -> None:
    r["response"]["output"].append({"type": "function_call_output", "call_id": "c"})


@mutation
def reasoning_first(r: dict[str, Any]) -> None:
    r["response"]["output"].insert(0, {"type": "reasoning", "summary": [{"type": "summary_text", "text": "think"}], "content": [{"text": "more"}]})


@mutation
def unknown_item(r: dict[str, Any]) -> None:
    r["response"]["output"].append({"type": "web_search_call"})


@mutation
def no_output(r: dict[str, Any]) -> None:
    r["response"]["output"] = []


@mutation
def tools_not_a_list(r: dict[str, Any]) -> None:
    r["responses_create_params"]["tools"] = {"a": 1}


@mutation
def tool_not_an_object(r: dict[str, Any]) -> None:
    r["responses_create_params"]["tools"] = [5]


@mutation
def instructions(r: dict[str, Any]) -> None:
    r["responses_create_params"]["instructions"] = "Be brief."


@mutation
def input_string(r: dict[str, Any]) -> None:
    r["responses_create_params"]["input"] = "a plain string prompt"


@mutation
def input_bad_role(r: dict[str, Any]) -> None:
    r["responses_create_params"]["input"] = [{"type": "message", "role": "wizard", "content": "x"}]


@mutation
def assistant_in_prompt_only(r: dict[str, Any]) -> None:
    r["responses_create_params"]["input"] = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    r["response"]["output"] = []


@mutation
def incomplete(r: dict[str, Any]) -> None:
    r["response"]["status"] = "incomplete"


@mutation
def content_parts(r: dict[str, Any]) -> None:
    for it in _items(r, "message"):
        it["content"] = [{"type": "refusal", "refusal": "no"}, "x", {"text": 5}]


@mutation
def message_name_not_string(r: dict[str, Any]) -> None:
    for it in _items(r, "message"):
        it["name"] = 5


PNG_1X1 = "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="


@mutation
def prompt_image(r: dict[str, Any]) -> None:
    # An inline image in the task input (vlm_eval_kit): carried by sft/rl, refused by dpo.
    r["responses_create_params"]["input"][-1]["content"] = [{"type": "input_image", "image_url": PNG_1X1}, {"type": "input_text", "text": "what is this?"}]


@mutation
def prompt_image_url(r: dict[str, Any]) -> None:
    # An image by URL: not inline, refused everywhere.
    r["responses_create_params"]["input"][-1]["content"] = [{"type": "input_image", "image_url": "https://example.com/a.png"}, {"type": "input_text", "text": "q"}]


@mutation
def response_image(r: dict[str, Any]) -> None:
    # A tool result or message with an image in the response.
    for it in _items(r, "message"):
        it["content"] = [{"type": "output_text", "text": "see "}, {"type": "input_image", "image_url": PNG_1X1}]


@mutation
def prompt_file(r: dict[str, Any]) -> None:
    r["responses_create_params"]["input"][-1]["content"] = [{"type": "input_file", "file_data": "eA==", "filename": "a.txt"}, {"type": "input_text", "text": "q"}]


# Content parts NeMo Gym refuses (a text part without a string text, an unknown type) and prompts
# that ask nothing: rejected / the no_prompt rule, the same on both paths.
@mutation
def input_text_without_text(r: dict[str, Any]) -> None:
    r["responses_create_params"]["input"][-1]["content"] = [{"type": "input_text"}]


@mutation
def output_text_not_a_string(r: dict[str, Any]) -> None:
    for it in _items(r, "message"):
        it["content"] = [{"type": "output_text", "text": 123}]


@mutation
def unknown_part_type(r: dict[str, Any]) -> None:
    r["responses_create_params"]["input"][-1]["content"] = [{"type": "weird", "text": "q"}]


@mutation
def audio_part(r: dict[str, Any]) -> None:
    r["responses_create_params"]["input"][-1]["content"] = [{"type": "input_audio", "input_audio": {"data": "eA==", "format": "wav"}}]


@mutation
def empty_string_prompt(r: dict[str, Any]) -> None:
    r["responses_create_params"]["input"] = ""
    r["responses_create_params"].pop("instructions", None)


@mutation
def blank_prompt_messages(r: dict[str, Any]) -> None:
    r["responses_create_params"]["input"] = [{"role": "system", "content": " "}, {"role": "user", "content": [{"type": "input_text", "text": ""}]}]
    r["responses_create_params"].pop("instructions", None)


@mutation
def image_only_prompt(r: dict[str, Any]) -> None:
    r["responses_create_params"]["input"] = [{"role": "user", "content": [{"type": "input_image", "image_url": PNG_1X1}]}]
    r["responses_create_params"].pop("instructions", None)


# Issue 12 items 7-9: content the fast path must judge like the exact path (or decline).
@mutation
def malformed_arguments(r: dict[str, Any]) -> None:
    for it in _items(r, "function_call"):
        it["arguments"] = '{"city": "Par'


@mutation
def string_arguments(r: dict[str, Any]) -> None:
    for it in _items(r, "function_call"):
        it["arguments"] = '"Paris"'


@mutation
def empty_arguments(r: dict[str, Any]) -> None:
    for it in _items(r, "function_call"):
        it["arguments"] = ""


@mutation
def null_arguments(r: dict[str, Any]) -> None:
    for it in _items(r, "function_call"):
        it["arguments"] = None


@mutation
def malformed_call_in_prompt(r: dict[str, Any]) -> None:
    r["responses_create_params"]["input"] = [
        {"role": "user", "content": "q"},
        {"type": "function_call", "call_id": "p0", "name": "f", "arguments": "{oops"},
        {"type": "function_call_output", "call_id": "p0", "output": "error"},
    ]


@mutation
def empty_final_answer(r: dict[str, Any]) -> None:
    r["response"]["output"].append({"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": " "}]})


@mutation
def reasoning_only(r: dict[str, Any]) -> None:
    r["response"]["output"] = [{"type": "reasoning", "summary": [{"type": "summary_text", "text": "hmm"}]}]


@mutation
def aviary_transitions(r: dict[str, Any]) -> None:
    seed = r["responses_create_params"]["input"]
    seed = [{"role": "user", "content": seed}] if isinstance(seed, str) else seed
    out = r["response"]["output"]
    r["response"]["output"] = [seed + out[:1], seed + out]
    r["response"]["tools"] = r["responses_create_params"].pop("tools", None)
    r["responses_create_params"]["input"] = []


@mutation
def aviary_flat(r: dict[str, Any]) -> None:
    r["responses_create_params"]["input"] = []
    r["responses_create_params"].pop("instructions", None)
    r["response"]["contains_transitions"] = False


@mutation
def question_in_output(r: dict[str, Any]) -> None:
    r["responses_create_params"]["input"] = []
    r["response"]["output"].insert(0, {"type": "message", "role": "user", "content": "the question"})


def _mixed_file(path: Path) -> Path:
    """Sample rollouts, then each mutation (alone and in random pairs), plus lines only orjson judges."""
    base = [json.loads(line) for line in (SAMPLE_DATA / "rollouts.jsonl").read_text().splitlines()]
    rng = random.Random(3)
    recs = list(base)
    for f in MUTATIONS.values():
        for r in base[::3]:
            r = copy.deepcopy(r)
            f(r)
            recs.append(r)
    for r in base:
        r = copy.deepcopy(r)
        for f in rng.sample(list(MUTATIONS.values()), 2):
            f(r)
        recs.append(r)
    prompts = {r.get("_ng_task_index"): prompt_key(r) for r in base}
    for n, r in enumerate(recs[len(base) :], start=1000):
        # Copies are further repeats of their task: the same (task, repeat) twice is a repeated
        # rollout (checked in test_to_parquet). A copy whose prompt changed is another task: under
        # its old index, conversion stops (test_ng07_to_parquet), so it gets an index of its own.
        if "_ng_rollout_index" in r:
            r["_ng_rollout_index"] = n
        if isinstance(r.get("_ng_task_index"), int) and prompts.get(r["_ng_task_index"]) != prompt_key(r):
            r["_ng_task_index"] = n
    lines = [json.dumps(r, ensure_ascii=False).encode() for r in recs]
    lines[3:3] = [
        b"\xef\xbb\xbf" + lines[0],  # byte order mark mid-file
        lines[1][:-1] + b',"reward":0.25}',  # repeated key: the last one counts
        lines[2].replace(b'"reward":', b'"x":1e999,"reward":', 1),  # number too large for a double
        lines[3].replace(b'"content":"', b'"content":"\\ud800', 1),  # lone surrogate escape
        lines[4].replace(b'"content":"', b'"content":"\xff', 1),  # invalid UTF-8
        b"not json",
        b"[1, 2]",
    ]
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def _run(src: Path, out: Path, fmt: str, sel: dict[str, Any], fast: bool, monkeypatch: pytest.MonkeyPatch, **opts: Any) -> tuple[Any, ...]:
    with monkeypatch.context() as m:
        if not fast:
            m.setattr(fast_fmt, "available", lambda: False)
        rejects = out.with_suffix(".rejects.jsonl")
        s = convert(src, out, ConvertOptions(fmt=fmt, select=SelectOptions(**sel), rejects_path=rejects, **opts))
    summary = s.to_dict()
    for k in ("seconds", "lines_per_second", "files", "output", "bytes_written"):
        summary.pop(k)
    tables = {split: [pq.read_table(p).to_pylist() for p in paths] for split, paths in s.files.items()}
    return summary, tables, rejects.read_bytes() if rejects.exists() else b""


@pytest.mark.parametrize(
    ("fmt", "sel", "opts"),
    [
        ("sft", {}, {}),
        ("sft", {}, {"include_reasoning": True}),
        ("sft", {"min_reward": 0.5, "val_fraction": 0.4}, {}),
        ("sft", {"best_of_n": 2, "drop_unsolved": True}, {}),
        ("rl", {"drop_solved": True}, {}),
        ("dpo", {}, {}),
        ("sft", {"drop_malformed_calls": False, "drop_empty_answers": False}, {}),
        ("sft", {"best_of_n": 2, "drop_malformed_calls": False}, {}),
    ],
)
def test_fast_path_gives_the_exact_paths_rows_and_rejections(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: str, sel: dict[str, Any], opts: dict[str, Any]) -> None:
    src = _mixed_file(tmp_path / "mixed.jsonl")
    exact = _run(src, tmp_path / "exact", fmt, sel, False, monkeypatch, **opts)
    fast = _run(src, tmp_path / "fast", fmt, sel, True, monkeypatch, **opts)
    assert fast == exact
    assert exact[0]["rejected"] > 0 and sum(exact[0]["rows"].values()) > 0
    if fmt == "sft" and not sel.get("best_of_n"):  # (elsewhere selection may remove them before any row is built)
        # The image mutations reached the rows: carried or refused by name, never dropped.
        assert b"image_not_inline" in exact[2] and b"unsupported_content" in exact[2]
        assert any(r["images"] for tables in exact[1].values() for t in tables for r in t)


def test_fast_reader_takes_most_valid_lines_and_declines_the_odd_ones(tmp_path: Path) -> None:
    reader = fast_fmt.FastSFT()
    plain = (SAMPLE_DATA / "rollouts.jsonl").read_bytes().splitlines()
    taken = [reader.decode(line) for line in plain]
    assert all(t is not None for t in taken)
    convs = [reader.conversation(t) for t in taken if t is not None]
    assert all(c is not None for c in convs)
    rows = convert(SAMPLE_DATA / "rollouts.jsonl", tmp_path / "o", ConvertOptions(select=SelectOptions(drop_incomplete=False)))
    assert rows.rows["train"] == len(plain)
    for name in ("index_beyond_64_bits", "boolean_reward", "unknown_item", "tools_not_a_list", "prompt_image", "response_image", "prompt_file"):
        r = json.loads(next(line for line in plain if b'"function_call"' in line))
        MUTATIONS[name](r)
        got = reader.decode(json.dumps(r).encode())
        assert got is None or reader.conversation(got) is None, name
    # An empty call_id falls back to the item id: the fast path converts it with the one converter,
    # to the exact path's conversation.
    r = json.loads(next(line for line in plain if b'"function_call"' in line))
    empty_call_id(r)
    got = reader.decode(json.dumps(r).encode())
    assert got is not None and reader.conversation(got) == sft_fmt.conversation(r)
    assert any(c["id"] == "item_id" for m in reader.conversation(got)[0] for c in m.get("tool_calls", []))


def _value(t: pa.DataType, rng: random.Random) -> Any:
    if t == pa.string():
        return rng.choice([None, "", "abc", "é☃ \u2028", "x" * rng.randint(0, 50)])
    if t == pa.int64():
        return rng.choice([None, 0, -5, 2**63 - 1, -(2**63), rng.randint(0, 10**6)])
    if t == pa.float64():
        return rng.choice([None, 0.0, 1, -2.5, 1e300])
    if pa.types.is_list(t) and pa.types.is_struct(t.value_type) and t.value_type.get_field_index("bytes") >= 0:
        return rng.choice([None, None, None, [], [{"bytes": b"\x89PNG", "path": None}]])  # images: mostly null
    if pa.types.is_list(t) and pa.types.is_struct(t.value_type):  # rl's prompt: a list of {role, content}
        if rng.random() < 0.01:
            return None
        return [_value(t.value_type, rng) for _ in range(rng.choice([0, 1, 1, 2, 3]))]
    if pa.types.is_list(t):  # dpo's message lists: one JSON text per message
        if rng.random() < 0.01:
            return None  # not nullable there: rare, or hardly any table would build
        return rng.choice([[], ['{"role":"user","content":"q"}'], ['{"role":"assistant","content":"é"}', "{}"]])
    return {c.name: _value(c.type, rng) for c in t if rng.random() < 0.9}


@pytest.mark.parametrize("schema", [sft_fmt.SCHEMA, dpo_fmt.SCHEMA, rl_fmt.SCHEMA], ids=["sft", "dpo", "rl"])
def test_table_builder_matches_from_pylist(schema: pa.Schema) -> None:
    rng = random.Random(7)
    built = 0
    for _ in range(200):
        rows = [{f.name: _value(f.type, rng) for f in schema if rng.random() < 0.98} for _ in range(rng.randint(1, 30))]
        try:
            # from_pylist cannot build JSON extension columns: the reference builds their string storage.
            storage = conv._storage_schema(schema)
            want = pa.Table.from_pylist(rows, schema=storage)
            want = want if storage is schema else want.cast(schema)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError):
            with pytest.raises((pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError)):
                conv._to_table(rows, schema)
            continue
        got = conv._to_table(rows, schema)
        got.validate(full=True)
        assert got.equals(want)
        built += 1
    assert built > 20


@pytest.mark.parametrize("schema", [sft_fmt.SCHEMA, dpo_fmt.SCHEMA, rl_fmt.SCHEMA], ids=["sft", "dpo", "rl"])
def test_table_builder_takes_json_cells_as_utf8_bytes(schema: pa.Schema) -> None:
    """The format builders keep JSON cells as UTF-8 bytes (`formats.json_cell`): the builder stores
    them as the strings they encode, the same table as from the str values."""
    rng = random.Random(11)
    checked = 0
    for _ in range(100):
        rows = [{f.name: _value(f.type, rng) for f in schema} for _ in range(rng.randint(1, 20))]

        def encoded(v: Any) -> Any:
            if isinstance(v, str):
                return v.encode()
            if isinstance(v, list):
                return [encoded(x) for x in v]
            return {k: encoded(x) for k, x in v.items()} if isinstance(v, dict) else v

        try:
            want = conv._to_table(rows, schema)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError):
            continue
        got = conv._to_table([encoded(r) for r in rows], schema)
        got.validate(full=True)
        assert got.equals(want)
        checked += 1
    assert checked > 20


def test_table_builder_falls_back_for_unexpected_types() -> None:
    schema = sft_fmt.SCHEMA
    row = {"messages": "[]", "tools": None, "data_source": "d", "extra_info": {"split": "train", "index": True, "task_key": "k", "line": 1, "reward": 1.0, "rollout_index": None}}
    with pytest.raises((pa.ArrowInvalid, pa.ArrowTypeError, TypeError)) as exact:
        pa.Table.from_pylist([row], schema=schema)
    with pytest.raises(type(exact.value)):
        conv._to_table([row], schema)


def test_fast_reader_facts_from_its_prompt_cache_equal_the_schemas() -> None:
    """The fast SFT reader takes a prompt's input facts from its cached conversion (one parse per
    distinct prompt): they must equal the typed `rollout_facts` and the dict path's reading."""
    from gymverl import records, schema

    plain = (SAMPLE_DATA / "rollouts.jsonl").read_bytes().splitlines()
    base = json.loads(next(line for line in plain if b'"function_call"' in line))
    lines = list(plain)
    for args in ('{"a": 1}', '{"a"', '"text"', None):  # valid, cut off, not an object, missing
        r = copy.deepcopy(base)
        call: dict[str, Any] = {"type": "function_call", "name": "f", "call_id": "c1"}
        if args is not None:
            call["arguments"] = args
        r["responses_create_params"]["input"] = [
            {"role": "user", "content": "q"},
            call,
            {"type": "function_call_output", "call_id": "c1", "output": "o"},
            {"role": "user", "content": "go on"},
        ]
        lines.append(json.dumps(r).encode())
    typed = schema.record_decoder()
    reader = fast_fmt.FastSFT()
    fields = ("reward", "key", "agent", "incomplete", "masked", "malformed", "empty")
    seen_malformed = set()
    for _ in range(2):  # cold and warm prompt cache
        for line in lines:
            got = reader.decode(line)
            assert got is not None
            want = schema.rollout_facts(typed(line))
            assert want is not None and tuple(getattr(got, f) for f in fields) == want[:7]
            assert got.malformed == records.malformed_calls(json.loads(line))
            seen_malformed.add(got.malformed)
    assert len(seen_malformed) > 1  # the input's malformed calls were counted


@pytest.mark.parametrize("facts", [True, False])
def test_pass_1_fast_check_takes_every_plain_valid_line(facts):
    """Pass 1's fast check (rl: facts=False) must accept ordinary valid rollouts: when it declined
    them all (rl left contents raw, which the content-part rule cannot read), every line fell back
    to the full decode, silently slower, the results still equal."""
    from gymverl.convert.grouped import _FastMeta

    check = _FastMeta(facts=facts)
    lines = [ln for ln in (Path(__file__).resolve().parents[1] / "sample_data" / "rollouts.jsonl").read_bytes().splitlines() if ln.strip()]
    assert lines and all(check(ln) is not None for ln in lines)


@pytest.mark.parametrize("fmt", ["rl", "sft", "dpo"])
def test_converting_sample_data_builds_every_column_itself(tmp_path: Path, fmt: str) -> None:
    """Every column of the sample data's rows (rl's prompt list too) is assembled by `_column`,
    never by `Table.from_pylist`, whose first use imports pandas: ~0.3 s of CPU, a third of a
    30,000-line rl conversion. Checked in a fresh interpreter (nothing imported pandas before)."""
    code = (
        "import sys\n"
        "from gymverl.convert import ConvertOptions, convert, parquet\n"
        "from gymverl.select import SelectOptions\n"
        "def refuse(*a, **k):\n"
        "    raise AssertionError('a column was left to from_pylist')\n"
        "parquet._storage_schema = refuse  # the fallback's first step\n"
        f"s = convert(sys.argv[1], sys.argv[2], ConvertOptions(fmt={fmt!r}, select=SelectOptions(drop_incomplete=False)))\n"
        "assert sum(s.rows.values()) > 0, s.rows\n"
        "assert 'pandas' not in sys.modules\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", code, str(SAMPLE_DATA / "rollouts.jsonl"), str(tmp_path / "o")],
        capture_output=True, text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert res.returncode == 0, res.stderr[-2000:]
