"""gymverl.schema: the rollout schema is declared once (`Task`, `Rollout`), and the dict checker, the
fast path's typed checks and the tables all come from that declaration.

The tests walk the declaration themselves (msgspec.structs), independently of the compiler, so a
rule added to it is tried on every path: the dict checker must reject a line breaking it, and the
fast paths (validate's and to-parquet's) must decline it (the dict path then decides).
"""

from __future__ import annotations

import copy
import json
import re
from typing import Annotated, Any, Iterator, Literal, Optional, Union, get_args, get_origin

import msgspec
import orjson
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from gymverl import records, schema
from gymverl.formats import fast as fast_fmt
from gymverl.schema import RecordError, check_items, check_record, check_task, compile_checks, items_ok
from test_records import good
from test_validate_property import item as any_item
from test_validate_property import record_like

pytestmark = pytest.mark.skipif(not fast_fmt.available(), reason="msgspec/pysimdjson not installed")

_DROP = object()  # a violation that removes the key
_ITEMS = object()  # a path step: "each item of this list"


def base() -> dict[str, Any]:
    """A valid rollout whose every item is typed (so the strict declaration decodes it too)."""
    rec = good(_ng_task_index=3, _ng_rollout_index=1)
    for item in rec["responses_create_params"]["input"]:
        item["type"] = "message"
    rec["responses_create_params"]["input"].append({"type": "reasoning", "summary": []})
    return rec


def _plain(tp: Any) -> tuple[Any, ...]:
    """The members of a declared type: Annotated and Optional/Union unwrapped."""
    if get_origin(tp) is Annotated:
        return _plain(get_args(tp)[0])
    if get_origin(tp) is Union:
        return tuple(m for a in get_args(tp) for m in _plain(a))
    return (tp,)


def _valid(tp: Any) -> Any:
    """A value of a declared item field type."""
    (tp,) = _plain(tp)
    return get_args(tp)[0] if get_origin(tp) is Literal else "x"


def _part_lists(tp: Any) -> list[Any]:
    """The tagged unions of an optional item field that holds a list of Structs (content parts)."""
    return [get_args(m)[0] for m in _plain(tp) if get_origin(m) is list and isinstance(_plain(get_args(m)[0])[0], type)]


def _item_violations(union: Any) -> Iterator[tuple[str, Any]]:
    """(what, item) for every rule of the declared item kinds (or content parts): each breaks one."""
    yield "unknown type", {"type": "no_such_item"}
    yield "non-string type", {"type": 5, "role": "user"}
    yield "not an object", "text"
    for kind in _plain(union):
        fields = msgspec.structs.fields(kind)
        tag = kind.__struct_config__.tag
        ok = {f.encode_name: _valid(f.type) for f in fields if f.required}
        for f in fields:
            for parts in _part_lists(f.type):
                # an optional field of content parts: a wrong JSON type, then every rule of a part
                yield f"{tag} with a numeric {f.name}", {"type": tag, **ok, f.encode_name: 5}
                for what, bad in _item_violations(parts):
                    yield f"{tag} with a {f.name} part: {what}", {"type": tag, **ok, f.encode_name: [bad]}
        fields = [f for f in fields if f.required]
        if getattr(kind, "untyped", False):
            for f in fields:
                yield f"untyped {tag} without {f.name}", {k: v for k, v in ok.items() if k != f.encode_name}
                yield f"untyped {tag} with a bad {f.name}", {**ok, f.encode_name: "no-such-value" if _plain(f.type)[0] is not str else 1}
        for f in fields:
            yield f"{tag} without {f.name}", {"type": tag, **{k: v for k, v in ok.items() if k != f.encode_name}}
            yield f"{tag} with a non-string {f.name}", {"type": tag, **ok, f.encode_name: 1}
            if get_origin(_plain(f.type)[0]) is Literal:
                yield f"{tag} with an undeclared {f.name}", {"type": tag, **ok, f.encode_name: "no-such-value"}


_WRONG = ["x", 1.5, -1, 2, [], {}, True, None]


def _violations(cls: type, path: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], Any]]:
    """(path, value) for every rule the declaration `cls` states: each breaks exactly that rule."""
    for f in msgspec.structs.fields(cls):
        here = path + (f.encode_name,)
        if f.required:
            yield here, _DROP
        decode = msgspec.json.Decoder(f.type).decode
        for value in _WRONG:
            try:
                decode(orjson.dumps(value))
            except msgspec.ValidationError:
                yield here, value
        for member in _plain(f.type):
            if isinstance(member, type) and issubclass(member, msgspec.Struct):
                yield from _violations(member, here)
            elif get_origin(member) is list and get_args(member)[0] is not Any:
                for what, item in _item_violations(get_args(member)[0]):
                    yield here + (_ITEMS, what), item


def _apply(rec: dict[str, Any], path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    rec = copy.deepcopy(rec)
    *parents, last = path
    obj = rec
    for i, step in enumerate(parents):
        if step is _ITEMS:
            obj.append(value)  # (after the answer: the line stays valid but for this item)
            return rec
        obj = obj[step]
    if value is _DROP:
        del obj[last]
    else:
        obj[last] = value
    return rec


RULES = list(_violations(schema.Rollout))


def test_the_walk_finds_every_kind_of_rule() -> None:
    """The walk below the tests is not empty-handed: keys, types, bounds, nested objects, items."""
    paths = {tuple(s for s in p if s is not _ITEMS) for p, _ in RULES}
    assert ("reward",) in paths and ("_ng_task_index",) in paths and ("response", "output") in paths
    assert ("responses_create_params", "input", "function_call without call_id") in paths
    assert ("response", "output", "message with an undeclared role") in paths
    assert ("responses_create_params", "input", "message with a content part: input_text without text") in paths
    assert ("response", "output", "message with a content part: unknown type") in paths
    assert (("reward",), _DROP) in RULES and (("_ng_task_index",), -1) in RULES
    assert len(RULES) > 60


@pytest.mark.parametrize("path,value", RULES, ids=[".".join("[]" if s is _ITEMS else str(s) for s in p) + f"={v!r}"[:40] for p, v in RULES])
def test_every_declared_rule_rejects_on_the_dict_path_and_declines_the_fast_paths(path: tuple[Any, ...], value: Any) -> None:
    """A line breaking any one rule of the declaration: `check_record` rejects it, the strict decode
    of the declaration rejects it, and neither fast path (validate's, to-parquet's) accepts it. A rule
    added to the declaration that the fast path does not read fails here."""
    ok = base()
    assert check_record(ok) is None and msgspec.json.decode(orjson.dumps(ok), type=schema.Rollout)
    assert records._FastRollouts()(orjson.dumps(ok)) is not None
    assert fast_fmt.FastSFT().decode(orjson.dumps(ok)) is not None

    bad = _apply(ok, path, value)
    line = orjson.dumps(bad)
    with pytest.raises(RecordError):
        check_record(bad)
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(line, type=schema.Rollout)
    assert records._FastRollouts()(line) is None
    assert fast_fmt.FastSFT().decode(line) is None
    assert fast_fmt.FastSFT().decode(line, rows=False) is None
    if path[0] in {f.encode_name for f in msgspec.structs.fields(schema.Task)}:
        with pytest.raises(RecordError):
            check_task(bad)


def test_public_tables_are_the_declarations() -> None:
    assert schema.REQUIRED_KEYS == ("responses_create_params", "response", "reward")
    assert schema.ITEM_TYPES == frozenset({"message", "function_call", "function_call_output", "reasoning"})
    assert schema.MESSAGE_ROLES == frozenset({"system", "developer", "user", "assistant", "tool"}) == frozenset(get_args(schema.Role))
    assert records.REQUIRED_KEYS is schema.REQUIRED_KEYS and records.ITEM_TYPES is schema.ITEM_TYPES


# ---- a rule added to the declaration reaches both paths --------------------------------------------


class _CallOutput(msgspec.Struct, tag_field="type", tag="function_call_output", kw_only=True):
    call_id: str
    id: str  # new: a call output must name its item id


class _WebSearch(msgspec.Struct, tag_field="type", tag="web_search_call", kw_only=True):
    pass  # new: an item kind


_Item2 = Union[schema.MessageItem, schema.FunctionCallItem, _CallOutput, schema.ReasoningItem, _WebSearch]


class _Params2(msgspec.Struct, kw_only=True):
    input: Union[str, list[_Item2]]
    tools: Optional[list[Any]] = None


class _Task2(msgspec.Struct, kw_only=True):
    responses_create_params: _Params2
    task_index: Optional[schema.Index] = msgspec.field(default=None, name="_ng_task_index")


class _Response2(msgspec.Struct, kw_only=True):
    output: Annotated[list[_Item2], msgspec.Meta(extra={"transitions": True})]


class _Rollout2(_Task2, kw_only=True):
    response: _Response2
    reward: schema.Finite
    env: str  # new: a required top-level key


def test_a_rule_added_to_the_declaration_reaches_the_dict_checker_the_typed_check_and_the_tables() -> None:
    new = compile_checks(_Rollout2, _Task2)
    assert new["REQUIRED_KEYS"] == ("responses_create_params", "response", "reward", "env")
    assert new["ITEM_TYPES"] == schema.ITEM_TYPES | {"web_search_call"}
    rec = good(env="weather")
    rec["response"]["output"][1]["id"] = "fc_1"
    new["check_record"](rec)  # valid under both declarations
    check_record(rec)

    def reason(check: Any, value: Any) -> str | None:
        try:
            check(value)
        except RecordError as exc:
            return exc.reason
        return None

    no_env = {k: v for k, v in rec.items() if k != "env"}
    assert reason(new["check_record"], no_env) == "missing required key 'env'" and reason(check_record, no_env) is None
    assert reason(new["check_record"], {**rec, "env": 5}) == "'env' must be a string, got number"
    no_id = copy.deepcopy(rec)
    del no_id["response"]["output"][1]["id"]
    assert reason(new["check_record"], no_id) == "'response.output[1]' is a function_call_output without a string 'call_id' and 'id'"
    assert reason(check_record, no_id) is None
    search = copy.deepcopy(rec)
    search["response"]["output"].insert(0, {"type": "web_search_call"})
    assert reason(new["check_record"], search) is None and reason(check_record, search) == "'response.output[0]' has unknown item type 'web_search_call'"

    # The typed check of the fast path (on the lenient `Item`s the fast decoder reads) follows.
    decode = schema.record_decoder()
    output = lambda r: decode(orjson.dumps(r)).response.output  # noqa: E731
    assert new["items_ok"](output(rec)) and items_ok(output(rec))
    assert not new["items_ok"](output(no_id)) and items_ok(output(no_id))
    assert new["items_ok"](output(search)) and not items_ok(output(search))


class _Unbounded(msgspec.Struct, kw_only=True):
    responses_create_params: Annotated[str, msgspec.Meta(min_length=1)]  # a constraint the compiler does not know


class _NotDecoded(msgspec.Struct, tag_field="type", tag="function_call", kw_only=True):
    name: str
    call_id: str
    server: str  # the fast path's Item has no such field: items_ok could not check it


class _DefaultNotNone(msgspec.Struct, tag_field="type", tag="function_call", kw_only=True):
    arguments: str  # the fast path's Item reads a missing one as "{}": items_ok could not tell it missing


class _ItemsParams(msgspec.Struct, kw_only=True):
    input: list[Union[_NotDecoded, schema.ReasoningItem]]


class _ItemsTask(msgspec.Struct, kw_only=True):
    responses_create_params: _ItemsParams


class _DefaultParams(msgspec.Struct, kw_only=True):
    input: list[Union[_DefaultNotNone, schema.ReasoningItem]]


class _DefaultTask(msgspec.Struct, kw_only=True):
    responses_create_params: _DefaultParams


class _OptionalNotNull(msgspec.Struct, kw_only=True):
    reward: float = 0.0  # absent reads as 0.0: not a rule the dict checker states


@pytest.mark.parametrize(
    "decl,why",
    [
        (_Unbounded, "does not know the type"),
        (_ItemsTask, "must decode 'server'"),
        (_DefaultTask, "must decode 'arguments'"),
        (_OptionalNotNull, "default to None"),
    ],
)
def test_the_compiler_refuses_a_rule_it_cannot_enforce_on_every_path(decl: type, why: str) -> None:
    """A rule is never declared without being checked: what the compiler cannot compile to both the
    dict checker and the typed check fails at import."""
    with pytest.raises(TypeError, match=why):
        compile_checks(decl, decl)


# ---- the compiled checker means what msgspec means by the declaration ------------------------------


def _typed_only(rec: Any) -> bool:
    """No part msgspec cannot state: untyped items, aviary transitions, integers beyond 64 bits."""
    if re.search(r"\d{19}", json.dumps(rec)):
        return False  # (orjson reads integers beyond 64 bits as floats; msgspec as ints)
    if not isinstance(rec, dict):
        return True
    rcp, response = rec.get("responses_create_params"), rec.get("response")
    for items in (rcp.get("input") if isinstance(rcp, dict) else None, response.get("output") if isinstance(response, dict) else None):
        if isinstance(items, list) and (schema.is_transitions(items) or any(isinstance(i, dict) and i.get("type") is None for i in items)):
            return False
    return True


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rec=record_like)
# CI's find: a tool the declaration decodes (any JSON) that no chat template can render.
@example(rec={"reward": 0.0, "response": {"output": []}, "responses_create_params": {"input": "", "tools": [None]}})
def test_check_record_accepts_exactly_what_the_strict_declaration_decodes(rec: Any) -> None:
    """check_record is the compiled declaration plus one rule msgspec cannot state (`tools_fault`):
    it accepts a line exactly when the declaration decodes it and its tools pass that rule."""
    assume(_typed_only(rec))
    try:
        line = json.dumps(rec, allow_nan=False).encode()
    except ValueError:
        return  # NaN/Infinity: not JSON
    try:
        check_record(orjson.loads(line))
        dict_ok = True
    except RecordError:
        dict_ok = False
    except orjson.JSONDecodeError:
        return
    try:
        decoded = msgspec.json.decode(line, type=schema.Rollout)
        strict_ok = schema.tools_fault(decoded.responses_create_params.tools) is None
    except msgspec.ValidationError:
        strict_ok = False
    assert dict_ok == strict_ok


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(items=st.lists(any_item, max_size=5))
def test_items_ok_on_typed_items_agrees_with_check_items(items: list[Any]) -> None:
    try:
        typed = msgspec.json.decode(json.dumps(items).encode(), type=list[schema.Item[schema.TextParts]])
    except (msgspec.ValidationError, msgspec.DecodeError):
        return  # the fast path declines what it cannot decode
    try:
        check_items(items, "response.output")
        ok = True
    except RecordError:
        ok = False
    assert items_ok(typed) == ok


@pytest.mark.parametrize("text", ["x", "", " ", "\n", " \t\n", "\nanswer", "  x", "\u00a0", "\u3000", "\u3000x", "é", "\\", '"', "/", "\b", "\ud7ff", "null"])
@pytest.mark.parametrize("content", [Any, None])
def test_the_typed_final_answer_test_agrees_with_the_dict_path(text: str, content: Any) -> None:
    # content_blank reads the usual answer (one text part) by its first bytes: on both typed shapes
    # (raw texts: Record[TextParts]; dicts: Record[Any], the fast SFT reader's) rollout_facts' "no
    # final answer" must be the dict path's, for texts that start with white space, escapes,
    # non-ASCII white space, or nothing.
    rec = good()
    rec["response"]["output"] = [{"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": text}]}]
    line = orjson.dumps(rec)
    facts = schema.rollout_facts(schema.record_decoder(content)(line))
    assert facts is not None and facts[6] is records.empty_answer(rec), (text, content)
