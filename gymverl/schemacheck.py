"""Compiles a rollout schema declared as msgspec Structs (`gymverl.schema`) into its checks.

`compile_schema` walks the declaration (msgspec.inspect) and writes the checks as plain Python
source, compiled once at import: the same straight-line code a person would write (the dict checker
runs on every line of `validate --orjson-only`, `items_ok` on every line of the fast path), with
each reason derived from the declared type ("must be an object", "must be a string or an array",
"missing required key", "is a function_call without a string 'name' and 'call_id'"). What it does
not know how to check on both the dict and the typed shape it refuses (TypeError), so a rule cannot
be declared without being enforced.
"""

from __future__ import annotations

import math
import re
import struct
import sys
from typing import Any

import msgspec
import msgspec.inspect as _mi

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_STEPS_REASON = (
    "is an array in a list of items (NeMo Gym's aviary agent writes per-step transitions "
    "as a list of arrays only, contains_transitions=true)"
)


class _Source:
    """Generated source lines, and the constants they name (reasons, tables)."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.names: dict[str, Any] = {}

    def add(self, indent: int, text: str) -> None:
        self.lines.append("    " * indent + text)

    def const(self, value: Any) -> str:
        for name, known in self.names.items():
            if type(known) is type(value) and known == value:
                return name
        name = f"_c{len(self.names)}"
        self.names[name] = value
        return name


def _unwrap(t: Any) -> tuple[Any, dict[str, Any]]:
    """(type, its Meta `extra`) of a type_info node."""
    if isinstance(t, _mi.Metadata):
        return t.type, dict(t.extra or {})
    return t, {}


def _members(t: Any) -> list[Any]:
    return list(t.types) if isinstance(t, _mi.UnionType) else [t]


def _is_finite(t: Any) -> bool:
    return (t.ge, t.le, t.gt, t.lt, t.multiple_of) == (-sys.float_info.max, sys.float_info.max, None, None, None)


def _test(t: Any, v: str) -> tuple[str, str, bool]:
    """(Python test that value `v` has JSON type `t`, its name in a reason, whether the reason shows
    the value itself rather than its type's name: for constrained types)."""
    if isinstance(t, _mi.StrType) and (t.min_length, t.max_length, t.pattern) == (None, None, None):
        return f"isinstance({v}, str)", "a string", False
    if isinstance(t, _mi.ListType) and (t.min_length, t.max_length) == (None, None):
        return f"isinstance({v}, list)", "an array", False
    if isinstance(t, _mi.StructType):
        return f"isinstance({v}, dict)", "an object", False
    if isinstance(t, _mi.BoolType):
        return f"isinstance({v}, bool)", "true or false", True
    if isinstance(t, _mi.FloatType) and _is_finite(t):
        return f"not isinstance({v}, bool) and isinstance({v}, (int, float))", "a number", False
    if isinstance(t, _mi.IntType) and (t.ge, t.gt, t.lt, t.multiple_of) == (0, None, None, None):
        high = "" if t.le is None else f" and {v} <= {t.le}"
        return f"not isinstance({v}, bool) and isinstance({v}, int) and {v} >= 0{high}", "a non-negative integer", True
    raise TypeError(f"the schema compiler does not know the type {t!r}")


class _Compiler:
    def __init__(self, item: type, part: Any = None) -> None:
        self.src = _Source()
        # the fast path's lenient item Struct (`Item`), and its fields' defaults by key (NODEFAULT: required)
        self.item = item
        keys, defaults = item.__struct_encode_fields__, item.__struct_defaults__
        self.item_fields = dict.fromkeys(keys, msgspec.NODEFAULT) | dict(zip(keys[len(keys) - len(defaults) :], defaults))
        self.items: Any = None  # the item union (one per declaration)
        self.steps: list[str] = []  # paths whose items may be aviary transitions
        self.depth = 0
        self.part = part  # the fast path's lenient content part Struct (`Part`): its text fields raw
        self.parts: Any = None  # the content part rules (one part union per declaration)
        self.content: dict[str, Any] = {}  # item tag -> its content-parts field (`parts_field`)

    def record(self, name: str, st: Any) -> None:
        """`def name(obj)`: the checks of a top-level Struct on a parsed JSON line."""
        s = self.src
        s.add(0, f"def {name}(obj):")
        reason = s.const("line is a JSON ")
        s.add(1, "if not isinstance(obj, dict):")
        s.add(2, f'raise RecordError("not_object", {reason} + _type_name(obj) + {s.const(", not an object")})')
        self.fields(st, "obj", "", 1)
        s.add(0, "")

    def fields(self, st: Any, obj: str, path: str, ind: int) -> None:
        """Every required key first (in order), then each field's value (in order)."""
        s = self.src
        for f in st.fields:
            if f.required:
                reason = s.const("missing required key '" + path + f.encode_name + "'")
                s.add(ind, f"if {f.encode_name!r} not in {obj}:")
                s.add(ind + 1, f'raise RecordError("missing_key", {reason})')
        self.depth += 1
        v = f"v{self.depth}"
        for f in st.fields:
            if f.required:
                s.add(ind, f"{v} = {obj}[{f.encode_name!r}]")
            elif f.default is None and any(isinstance(m, _mi.NoneType) for m in _members(_unwrap(f.type)[0])):
                s.add(ind, f"{v} = {obj}.get({f.encode_name!r})")  # absent reads as null
            else:
                raise TypeError(f"the schema compiler needs an optional field to default to None: {path}{f.encode_name}")
            self.value(f.type, v, path + f.encode_name, ind)
        self.depth -= 1

    def value(self, t: Any, v: str, path: str, ind: int) -> None:
        s = self.src
        t, extra = _unwrap(t)
        members = _members(t)
        if any(isinstance(m, _mi.AnyType) for m in members):
            return
        nullable = any(isinstance(m, _mi.NoneType) for m in members)
        members = [m for m in members if not isinstance(m, _mi.NoneType)]
        tests = [_test(m, v) for m in members]
        shows_value = any(shows for _, _, shows in tests)
        reason = s.const("'" + path + "' must be " + " or ".join(n for _, n, _ in tests) + ", got ")
        fail = f'raise RecordError("wrong_type", {reason} + {"_short" if shows_value else "_type_name"}({v}))'
        deep = [(m, test) for m, (test, _, _) in zip(members, tests) if self.has_checks(m)]
        rest = [test for m, (test, _, _) in zip(members, tests) if not self.has_checks(m)] + ([f"{v} is None"] if nullable else [])
        if not deep:
            s.add(ind, f"if {v} is not None and not ({' or '.join(rest[:-1])}):" if nullable else f"if not ({' or '.join(rest)}):")
            s.add(ind + 1, fail)
        else:
            for i, (m, test) in enumerate(deep):
                s.add(ind, f"{'if' if i == 0 else 'elif'} {test}:")
                self.checks(m, v, path, ind + 1, extra)
            s.add(ind, f"elif not ({' or '.join(rest)}):" if rest else "else:")
            s.add(ind + 1, fail)
        for m in members:
            if isinstance(m, _mi.FloatType):  # only `Finite` gets here (`_test`)
                if len(members) > 1:
                    raise TypeError(f"the schema compiler needs a finite number alone in its union: {path}")
                guard = f"{v} is not None and " if nullable else ""
                head, tail = s.const("'" + path + "' is "), s.const(", not a finite number")
                s.add(ind, f"if {guard}not _isfinite({v}):")
                s.add(ind + 1, f'raise RecordError("non_finite_number", {head} + str({v}) + {tail})')

    def has_checks(self, t: Any) -> bool:
        return isinstance(t, _mi.StructType) or (isinstance(t, _mi.ListType) and not isinstance(t.item_type, _mi.AnyType))

    def checks(self, t: Any, v: str, path: str, ind: int, extra: dict[str, Any]) -> None:
        """The checks inside a value already known to be of JSON type `t`."""
        s = self.src
        if isinstance(t, _mi.StructType):
            self.fields(t, v, path + ".", ind)
            return
        union = _unwrap(t.item_type)[0]
        if self.items is None:
            self.items = union
        elif union != self.items:
            raise TypeError("the schema compiler supports one item union")
        if extra.get("transitions"):
            self.steps.append(path)
            s.add(ind, f"if _is_transitions({v}):")
            s.add(ind + 1, f"check_items({v}[-1], {path + '[-1]'!r})")
            s.add(ind, "else:")
            s.add(ind + 1, f"check_items({v}, {path!r})")
        else:
            s.add(ind, f"check_items({v}, {path!r})")

    def part_rules(self, union: Any) -> list[tuple[str, list[str]]]:
        """Per content part kind (a tagged union, the members of a `content` list): (tag, required
        string fields). The typed check reads them raw off the lenient part Struct (`_Part`)."""
        rules = []
        for st in _members(union):
            if not isinstance(st, _mi.StructType) or st.tag_field != "type" or not _NAME.match(str(st.tag)):
                raise TypeError(f"the schema compiler needs content parts tagged by 'type': {st!r}")
            strings = []
            for f in st.fields:
                if not f.required or not isinstance(_unwrap(f.type)[0], _mi.StrType) or not _NAME.match(f.encode_name):
                    raise TypeError(f"the schema compiler supports required string part fields only: {st.tag}.{f.name}")
                if getattr(self.part, "__struct_defaults__", None) is None or f.encode_name not in self.part.__struct_fields__:
                    raise TypeError(f"the lenient part Struct must decode '{f.encode_name}' (raw) for {st.tag}")
                strings.append(f.encode_name)
            rules.append((st.tag, strings))
        return rules

    def parts_field(self, f: Any) -> tuple[str, list[str], list[tuple[str, list[str]]]] | None:
        """An optional item field (default None) holding a string or a list of content parts:
        (key, its JSON type names for a reason, part rules); None for any other field."""
        members = _members(_unwrap(f.type)[0])
        lists = [m for m in members if isinstance(m, _mi.ListType) and isinstance(_unwrap(m.item_type)[0], (_mi.UnionType, _mi.StructType))]
        rest = [m for m in members if not isinstance(m, (_mi.ListType, _mi.NoneType))]
        if f.required or f.default is not None or len(lists) != 1 or any(not isinstance(m, _mi.StrType) for m in rest):
            return None
        if self.parts is None:
            self.parts = self.part_rules(_unwrap(lists[0].item_type)[0])
        names = [_test(m, "v")[1] for m in members if not isinstance(m, _mi.NoneType)]
        return f.encode_name, names, self.parts

    def item_rules(self) -> list[tuple[str, list[tuple[str, frozenset[str]]], list[str], bool]]:
        """Per item kind: (tag, Literal fields and their values, required string fields, untyped);
        `self.content[tag]`: its field of content parts (`parts_field`), if any."""
        rules = []
        for st in _members(self.items):
            if not isinstance(st, _mi.StructType) or st.tag_field != "type" or not _NAME.match(str(st.tag)):
                raise TypeError(f"the schema compiler needs items tagged by 'type': {st!r}")
            literals, strings = [], []
            for f in st.fields:
                ft = _unwrap(f.type)[0]
                content = self.parts_field(f) if _NAME.match(f.encode_name) else None
                if content is not None:
                    if f.encode_name not in self.item_fields or self.item_fields[f.encode_name] is not None:
                        raise TypeError(f"{self.item.__name__} must decode '{f.encode_name}' (default None) for {st.tag}")
                    self.content[st.tag] = content
                    continue
                if not f.required or not _NAME.match(f.encode_name):
                    raise TypeError(f"the schema compiler supports required item fields only: {st.tag}.{f.name}")
                if f.encode_name not in self.item_fields or self.item_fields[f.encode_name] is not None:
                    # `items_ok` reads the field off the lenient Item: it must be there, None when missing
                    raise TypeError(f"{self.item.__name__} must decode '{f.encode_name}' (default None) for {st.tag}")
                if isinstance(ft, _mi.LiteralType) and all(type(x) is str for x in ft.values):
                    literals.append((f.encode_name, frozenset(ft.values)))
                elif isinstance(ft, _mi.StrType):
                    strings.append(f.encode_name)
                else:
                    raise TypeError(f"the schema compiler does not know the item field type {ft!r}")
            rules.append((st.tag, literals, strings, bool(getattr(st.cls, "untyped", False))))
        if sum(untyped for *_, untyped in rules) > 1:
            raise TypeError("at most one item kind may stand for items without a type")
        return rules

    def content_check(self, tag: str, ind: int) -> None:
        """The checks of an item's content-parts field (dict shape), when kind `tag` has one."""
        if tag not in self.content:
            return
        s = self.src
        key, names, _ = self.content[tag]
        s.add(ind, f"value = item.get({key!r})")
        s.add(ind, "if value is not None and not isinstance(value, str):")
        s.add(ind + 1, "if not isinstance(value, list):")
        reason = " or ".join(names)
        s.add(ind + 2, f"raise RecordError(\"wrong_type\", f\"'{{where}}[{{i}}].{key}' must be {reason}, got {{_type_name(value)}}\")")
        s.add(ind + 1, f"check_parts(value, f\"{{where}}[{{i}}].{key}\")")

    def parts_checks(self) -> None:
        """`check_parts(parts, where)` on dict content parts, and `parts_ok(parts)` on the typed
        ones: the lenient `_Part` Structs of `Item[TextParts]`, or plain values (`Item[Any]`)."""
        s = self.src
        rules = self.parts or []
        tags = s.const(frozenset(tag for tag, _ in rules))
        s.add(0, "def check_parts(parts, where):")
        s.add(1, "for j, part in enumerate(parts):")
        s.add(2, "if not isinstance(part, dict):")
        s.add(3, "raise RecordError(\"bad_content_part\", f\"'{where}[{j}]' must be an object, got {_type_name(part)}\")")
        s.add(2, 'kind = part.get("type")')
        s.add(2, f"if not isinstance(kind, str) or kind not in {tags}:")
        s.add(3, "raise RecordError(\"bad_content_part\", f\"'{where}[{j}]' has unknown content part type {_short(kind)}\")")
        for tag, strings in rules:
            if strings:
                test = " or ".join(f"not isinstance(part.get({f!r}), str)" for f in strings)
                named = " and ".join(f"'{f}'" for f in strings)
                s.add(2, f"if kind == {tag!r} and ({test}):")
                s.add(3, f"raise RecordError(\"bad_content_part\", f\"'{{where}}[{{j}}]' is {'an' if tag[0] in 'aeiou' else 'a'} {tag} part without a string {named}\")")
        s.add(0, "")
        # typed: a raw text field is a string when its JSON starts with a quote (34); missing reads as null
        checked = [(tag, strings) for tag, strings in rules if strings]
        free = s.const(frozenset(tag for tag, strings in rules if not strings))
        s.add(0, "def parts_ok(parts):")
        s.add(1, "for part in parts:")
        for shape, get in (("dict", "part.get({f!r})"), ("_Part", "part.{f}")):
            s.add(2, f"{'if' if shape == 'dict' else 'elif'} type(part) is {shape}:")
            s.add(3, 'kind = part.get("type")' if shape == "dict" else "kind = part.type")
            for i, (tag, strings) in enumerate(checked):
                s.add(3, f"{'if' if i == 0 else 'elif'} kind == {tag!r}:")
                if shape == "dict":
                    test = " or ".join(f"not isinstance(part.get({f!r}), str)" for f in strings)
                else:
                    test = " or ".join(f"_first_byte(part.{f})[0] != 34" for f in strings)
                s.add(4, f"if {test}:")
                s.add(5, "return False")
            s.add(3, f"{'elif' if checked else 'if'} type(kind) is not str or kind not in {free}:")
            s.add(4, "return False")
        s.add(2, "else:")
        s.add(3, "return False")
        s.add(1, "return True")
        s.add(0, "")

    def item_checks(self) -> None:
        """`check_items(items, where)` on dict items, and `items_ok(items)` on lenient typed items."""
        s = self.src
        rules = self.rules = self.item_rules()
        tags = s.const(frozenset(tag for tag, *_ in rules))
        s.add(0, "def check_items(items, where):")
        s.add(1, "for i, item in enumerate(items):")
        s.add(2, "if not isinstance(item, dict):")
        if self.steps:
            s.add(3, f"if isinstance(item, list) and where in {s.const(frozenset(self.steps))}:")
            s.add(4, f"raise RecordError(\"wrong_type\", f\"'{{where}}[{{i}}]' {_STEPS_REASON}\")")
        s.add(3, "raise RecordError(\"wrong_type\", f\"'{where}[{i}]' must be an object, got {_type_name(item)}\")")
        s.add(2, 'kind = item.get("type")')
        for tag, literals, strings, untyped in rules:
            if untyped:
                s.add(2, "if kind is None:")
                tests = [f"isinstance(value := item.get({f!r}), str) and value in {s.const(vals)}" for f, vals in literals]
                tests += [f"isinstance(item.get({f!r}), str)" for f in strings]
                s.add(3, f"if {' and '.join(tests) or 'True'}:")
                self.content_check(tag, 4)
                s.add(4, "continue")
                named = " and ".join(f"'{f}'" for f in [f for f, _ in literals] + strings)
                s.add(3, f"raise RecordError(\"bad_item\", f\"'{{where}}[{{i}}]' has no 'type' and no {tag} {named}\")")
        s.add(2, f"if not isinstance(kind, str) or kind not in {tags}:")
        s.add(3, "raise RecordError(\"bad_item\", f\"'{where}[{i}]' has unknown item type {_short(kind)}\")")
        first = True
        for tag, literals, strings, _ in rules:
            if not literals and not strings and tag not in self.content:
                continue
            s.add(2, f"{'if' if first else 'elif'} kind == {tag!r}:")
            first = False
            for f, vals in literals:
                s.add(3, f"value = item.get({f!r})")
                s.add(3, f"if not isinstance(value, str) or value not in {s.const(vals)}:")
                s.add(4, f"raise RecordError(\"bad_item\", f\"'{{where}}[{{i}}]' is a {tag} with {f} {{_short(value)}}\")")
            if strings:
                test = " or ".join(f"not isinstance(item.get({f!r}), str)" for f in strings)
                s.add(3, f"if {test}:")
                named = " and ".join(f"'{f}'" for f in strings)
                s.add(4, f"raise RecordError(\"bad_item\", f\"'{{where}}[{{i}}]' is a {tag} without a string {named}\")")
            self.content_check(tag, 3)
        s.add(0, "")
        self.parts_checks()
        # The typed form: `type` defaults to the untyped kind's tag (a missing key), or is None (null).
        s.add(0, "def items_ok(items):")
        s.add(1, "for item in items:")
        s.add(2, "kind = item.type")
        first = True
        free = []
        for tag, literals, strings, untyped in rules:
            if not literals and not strings and tag not in self.content:
                free.append(tag)
                continue
            s.add(2, f"{'if' if first else 'elif'} kind == {tag!r}{' or kind is None' if untyped else ''}:")
            first = False
            tests = [f"item.{f} not in {s.const(vals)}" for f, vals in literals] + [f"item.{f} is None" for f in strings]
            if tag in self.content:
                key = self.content[tag][0]
                tests.append(f"(c := item.{key}) is not None and type(c) is not str and (type(c) is not list or not parts_ok(c))")
            s.add(3, f"if {' or '.join(tests)}:")
            s.add(4, "return False")
        if first:
            s.add(2, "if False:")
            s.add(3, "pass")
        if free:
            s.add(2, f"elif kind != {free[0]!r}:" if len(free) == 1 else f"elif kind not in {s.const(frozenset(free))}:")
        else:
            s.add(2, "else:")
        s.add(3, "return False")
        s.add(1, "return True")
        untyped_tags = [tag for tag, *_, untyped in rules if untyped]
        if untyped_tags and self.item_fields.get("type") != untyped_tags[0]:
            raise TypeError(f"{self.item.__name__}.type must default to {untyped_tags[0]!r}")


def compile_schema(rollout: type, task: type, item: type, helpers: dict[str, Any]) -> dict[str, Any]:
    """Compile a declaration (top-level Structs `rollout` and `task`, the lenient typed `item` the
    fast path decodes) into its checks and tables.

    `helpers`: what the generated code calls: `RecordError(code, reason)`, `_type_name(value)`,
    `_short(value)`, `_is_transitions(list)`, and `_Part`: the lenient content part Struct the
    typed items hold (its declared text fields decoded raw, missing as JSON null). Returns a dict of `check_record`, `check_task`,
    `check_items`, `items_ok` (the functions), `REQUIRED_KEYS` (tuple), `ITEM_TYPES`,
    `MESSAGE_ROLES` (frozensets) and `source` (the generated code, str). Raises TypeError for a
    declaration it cannot enforce in full.
    """
    c = _Compiler(item, helpers.get("_Part"))
    rollout_info, task_info = _mi.multi_type_info([rollout, task])  # (slow: once)
    c.record("check_record", rollout_info)
    c.record("check_task", task_info)
    c.item_checks()
    source = "\n".join(c.src.lines)
    # __name__: the functions' module is the declaration's (so pickle finds them where they are bound)
    # `_first_byte(raw)`: (its first byte,), without copying it (faster than a memoryview)
    namespace: dict[str, Any] = {"__name__": rollout.__module__, **helpers, "_isfinite": math.isfinite, "_first_byte": struct.Struct("B").unpack_from, **c.src.names}
    exec(compile(source, f"<gymverl checks of {rollout.__name__}>", "exec"), namespace)  # noqa: S102 - our own generated code
    rules = c.rules
    roles = [vals for tag, literals, _, _ in rules if tag == "message" for f, vals in literals if f == "role"]
    return {
        "check_record": namespace["check_record"],
        "check_task": namespace["check_task"],
        "check_items": namespace["check_items"],
        "items_ok": namespace["items_ok"],
        "REQUIRED_KEYS": tuple(f.encode_name for f in rollout_info.fields if f.required),
        "ITEM_TYPES": frozenset(tag for tag, *_ in rules),
        "MESSAGE_ROLES": roles[0] if roles else frozenset(),
        "source": source,
        "info": rollout_info,
    }


def field_type(info: Any, *keys: str) -> Any:
    """The msgspec.inspect type of the field at `keys` (JSON keys) below a StructType `info`."""
    for key in keys:
        info = _unwrap({f.encode_name: f.type for f in info.fields}[key])[0]
    return info


def json_starts(t: Any) -> frozenset[int]:
    """The first bytes (ints) of the JSON text of a value of msgspec.inspect type `t`, for a field
    the fast path keeps raw."""
    starts = {_mi.NoneType: b"n", _mi.ListType: b"[", _mi.StrType: b'"', _mi.StructType: b"{", _mi.DictType: b"{"}
    return frozenset(starts[type(m)][0] for m in _members(_unwrap(t)[0]))
