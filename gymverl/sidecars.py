"""NeMo Gym's side files beside a rollouts file, and joining task fields onto rollouts.

NeMo Gym >= 0.5 (`gym eval run`, `ng_collect_rollouts`) writes, beside `<stem>.jsonl`:
- `<stem>_materialized_inputs.jsonl`: one line per (task, repeat): the full task row as sent, plus
  `_ng_task_index` and `_ng_rollout_index`. Rollout lines keep only the input fields the
  verifier's response echoes (0.7.0 math_with_judge drops `question`, xlam_fc `expected_answers`,
  mcqa `options`/`grading_mode`), so this file is where the task fields are.
- `<stem>_failures.jsonl`: one line per *failed attempt* (`_ng_failure_class`,
  `_ng_failure_message`), appended across `--resume` runs and never cleared.

This module is the one place that knows these files:
- `sidecar_paths(rollouts)` finds them;
- `TaskSource` joins task field *values* onto rollouts: on (`_ng_task_index`, `_ng_rollout_index`)
  for materialized inputs, on `_ng_task_index` = 0-based line of the task for an original tasks
  file (NeMo Gym numbers tasks so). Never on line position of materialized inputs, never on prompt
  text alone (two tasks may share a prompt); the prompt is only a *check* that the index names the
  same task (concatenated shards each number their tasks from 0);
- `read_failures` / `settle_failures` apply the "a later success supersedes a failure" rule
  (collect uses it too);
- `collection_report` says per task how many rollouts were expected, present, failed and missing.

Memory: a `TaskSource` keeps one small entry per task (the rows stay in the file and are read back
by byte offset), so it is bounded by the number of tasks, not of rollouts.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Container, Mapping

import orjson

from gymverl.jsonl import check_input_path, dumps, iter_lines, parse_line, read_jsonl
from gymverl.records import RecordError, agent_name, check_task, content_text, is_ng_key

MATERIALIZED_SUFFIX = "_materialized_inputs.jsonl"
FAILURES_SUFFIX = "_failures.jsonl"
TASK_INDEX = "_ng_task_index"
ROLLOUT_INDEX = "_ng_rollout_index"


# ---- finding the side files --------------------------------------------------------------------


def stem_of(path: str | os.PathLike[str]) -> str:
    """The collection stem NeMo Gym derives side-file names from: `r.jsonl` -> `r` (`.gz` too)."""
    name = Path(path).name
    for suffix in (".gz", ".jsonl", ".json"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return name


@dataclass(frozen=True)
class Sidecars:
    """The side files found beside a rollouts file (None when absent)."""

    materialized: Path | None = None
    failures: Path | None = None


def sidecar_paths(rollouts: str | os.PathLike[str]) -> Sidecars:
    """`<stem>_materialized_inputs.jsonl` and `<stem>_failures.jsonl` beside `rollouts`, when they exist.

    A file that is itself a side file (its name ends in one of the suffixes) has no side files.
    """
    p = Path(str(rollouts))  # str(): an opened `gymverl.inputs.Input` names the user's path
    stem = stem_of(p)
    if stem.endswith(("_materialized_inputs", "_failures")):
        return Sidecars()

    def find(suffix: str) -> Path | None:
        for cand in (p.with_name(stem + suffix), p.with_name(stem + suffix + ".gz")):
            if cand.is_file():
                return cand
        return None

    return Sidecars(find(MATERIALIZED_SUFFIX), find(FAILURES_SUFFIX))


# ---- prompts and task fields -------------------------------------------------------------------


def prompt_key(record: Mapping[str, Any]) -> str:
    """A hash of the task prompt that ignores representation details.

    NeMo Gym writes the prompt of a rollout through its request model (`type: "message"`,
    `phase: null`, `tools: []`, every unset parameter as null), while a tasks file or materialized
    input keeps it as written; this key is equal for both. It covers the input messages (role +
    text), the tool names and the instructions.
    """
    rcp = record.get("responses_create_params") or {}
    if not isinstance(rcp, Mapping):
        rcp = {}
    inp = rcp.get("input")
    items = [{"role": "user", "content": inp}] if isinstance(inp, str) else (inp if isinstance(inp, list) else [])
    norm: list[Any] = []
    for item in items:
        if isinstance(item, Mapping) and item.get("type", "message") == "message" and "role" in item:
            norm.append([item.get("role"), content_text(item.get("content"))])
        else:
            norm.append(item)
    tools = sorted(str(t.get("name", "")) for t in rcp.get("tools") or [] if isinstance(t, Mapping))
    key = [norm, tools, rcp.get("instructions") or None]
    # jsonl.dumps: a prompt nested deeper than orjson writes (254 levels; validate accepts 1024) is still keyed.
    return hashlib.sha1(dumps(key, sort_keys=True)).hexdigest()[:16]


def input_fields(row: Mapping[str, Any]) -> dict[str, Any]:
    """The task fields of a task row: everything except NeMo Gym's own keys and the prompt."""
    return {k: v for k, v in row.items() if not is_ng_key(k) and k != "responses_create_params"}


def _index(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else None


# Why a rollout got no task row (Join.reason); "joined" when it did.
JOIN_REASONS = {
    "no_index": "has no _ng_task_index",
    "not_found": "names a task (and repeat) the file does not have",
    "prompt_mismatch": "has a different prompt than the task its index names",
    "ambiguous": "names a task index the file gives two different prompts",
    "prompt_ambiguous": "has no _ng_task_index, and tasks with different fields share its prompt",
}


@dataclass(frozen=True)
class Join:
    """The result of looking up one rollout: `fields` (None unless joined) and `reason`."""

    fields: dict[str, Any] | None
    reason: str


class TaskSource:
    """Task rows to join onto rollouts: NeMo Gym materialized inputs or an original tasks file.

    `kind` is "materialized" (lines carry `_ng_rollout_index`; joined on both indices) or "tasks"
    (joined on `_ng_task_index` = 0-based line of the task), detected from the file unless given.
    Every lookup also checks the prompt (`prompt_key`): an index whose prompt differs names
    another task (shards numbered from 0, a different tasks file) and is not joined.
    Lines that are not valid tasks are counted in `bad_lines` and skipped.
    `prompt_fallback=True`: a rollout with no `_ng_task_index` key is joined by prompt when the
    prompt names exactly one field row ("prompt_ambiguous" otherwise); never used for a rollout
    that has an index.
    Raises UsageError (exit 2) when the file is missing or unreadable.

    Memory: per task one small entry (where its row is, a prompt hash, a bitmask of its repeats);
    the rows themselves stay in the file and are read back by byte offset when looked up (a few
    recent ones cached). A gzip file cannot be read at an offset cheaply, so its distinct rows
    (one per task: the repeats of a task share it) are kept in memory.
    """

    CACHE_ROWS = 1024

    def __init__(self, path: str | os.PathLike[str], kind: str | None = None, *, prompt_fallback: bool = False) -> None:
        self.path = check_input_path(path)
        # Opt-in: a rollout with no _ng_task_index at all (NeMo Gym's own example rollouts, files
        # older than the index) is joined by prompt, but only when that prompt names one field row.
        self.prompt_fallback = prompt_fallback
        self._by_prompt: dict[str, int] = {}  # prompt key -> row ref; -1 when rows with different fields share it
        self.kind = kind or _detect_kind(self.path)
        self.bad_lines = 0
        self.lines = 0
        self._seekable = self.path.suffix != ".gz"
        self._rows: list[dict[str, Any]] = []  # distinct field rows (gzip input only)
        self._refs: dict[bytes, int] = {}  # digest of a distinct field row -> byte offset (or index in _rows)
        self._cache: dict[int, dict[str, Any]] = {}
        # task index -> [row ref, prompt key, agent, bitmask of rollout indices (materialized)]
        self._tasks: dict[int, list[Any]] = {}
        self._ambiguous: set[int] = set()
        self._exceptions: dict[tuple[int, int], int] = {}  # a repeat whose fields differ from its task's
        self.field_names: set[str] = set()
        self.fields_by_agent: dict[str | None, set[str]] = {}
        self._load()

    def __len__(self) -> int:
        return len(self._tasks)

    @property
    def expected(self) -> dict[int, int]:
        """task index -> bitmask of the rollout indices the file lists (materialized inputs only)."""
        return {t: e[3] for t, e in self._tasks.items()}

    def _intern(self, fields: dict[str, Any], offset: int) -> int:
        """A reference to this field row: the offset of its first occurrence (or its index in memory)."""
        blob = dumps(fields, sort_keys=True)
        digest = hashlib.blake2b(blob, digest_size=12).digest()
        ref = self._refs.get(digest)
        if ref is None:
            if self._seekable:
                ref = offset
            else:
                ref = len(self._rows)
                self._rows.append(fields)
            self._refs[digest] = ref
        return ref

    def _row(self, ref: int) -> dict[str, Any]:
        """The task fields of the row at `ref`."""
        if not self._seekable:
            return self._rows[ref]
        got = self._cache.get(ref)
        if got is None:
            with open(self.path, "rb") as f:
                f.seek(ref)
                got = input_fields(orjson.loads(f.readline()))
            if len(self._cache) >= self.CACHE_ROWS:
                self._cache.clear()
            self._cache[ref] = got
        return got

    def _load(self) -> None:
        materialized = self.kind == "materialized"
        offset = 0
        if self._seekable:
            with open(self.path, "rb") as f:
                offset = 3 if f.read(3) == b"\xef\xbb\xbf" else 0  # iter_lines skips a byte order mark
        for line in iter_lines(self.path):
            start = offset
            offset += line.size + 1  # size counts everything but the newline
            p = parse_line(line)
            self.lines += 1
            obj = p.obj
            try:
                if not p.ok:
                    raise RecordError("bad_json", p.reason or "")
                check_task(obj)
            except RecordError:
                self.bad_lines += 1
                continue
            if materialized:
                t, r = _index(obj.get(TASK_INDEX)), _index(obj.get(ROLLOUT_INDEX))
                if t is None:
                    self.bad_lines += 1
                    continue
                r = r or 0
            else:
                t, r = p.number - 1, 0
            fields = input_fields(obj)
            agent = agent_name(obj)
            self.field_names.update(fields)
            self.fields_by_agent.setdefault(agent, set()).update(fields)
            rid = self._intern(fields, start)
            pk = prompt_key(obj)
            if self.prompt_fallback:
                seen = self._by_prompt.setdefault(pk, rid)
                if seen != rid:
                    self._by_prompt[pk] = -1
            entry = self._tasks.get(t)
            if entry is None:
                self._tasks[t] = [rid, pk, agent, 1 << r]
                continue
            if entry[1] != pk:
                self._ambiguous.add(t)  # two prompts under one index: concatenated shards
            if rid != entry[0]:
                self._exceptions[(t, r)] = rid
            entry[3] |= 1 << r

    def find(self, record: Mapping[str, Any]) -> Join:
        """The task fields for rollout (or task) `record`, or why there are none (`JOIN_REASONS`)."""
        t = _index(record.get(TASK_INDEX))
        if t is None:
            if self.prompt_fallback and record.get(TASK_INDEX) is None:
                ref = self._by_prompt.get(prompt_key(record))
                if ref is None:
                    return Join(None, "not_found")
                return Join(self._row(ref), "joined") if ref >= 0 else Join(None, "prompt_ambiguous")
            return Join(None, "no_index")
        entry = self._tasks.get(t)
        if entry is None:
            return Join(None, "not_found")
        if t in self._ambiguous:
            return Join(None, "ambiguous")
        rid = entry[0]
        if self.kind == "materialized":
            r = _index(record.get(ROLLOUT_INDEX))
            if r is not None:
                if not entry[3] >> r & 1:
                    return Join(None, "not_found")
                rid = self._exceptions.get((t, r), rid)
        if prompt_key(record) != entry[1]:
            return Join(None, "prompt_mismatch")
        return Join(self._row(rid), "joined")

    def wanted_fields(self, agent: str | None) -> set[str]:
        """The task field names the rows of `agent` have in this file (all names if the agent is unknown)."""
        got = self.fields_by_agent.get(agent)
        return set(got) if got is not None else set(self.field_names)


def _detect_kind(path: Path, max_lines: int = 50) -> str:
    for n, p in enumerate(read_jsonl(path)):
        if n >= max_lines:
            break
        if p.ok and isinstance(p.obj, dict) and ROLLOUT_INDEX in p.obj and "response" not in p.obj:
            return "materialized"
    return "tasks"


def is_materialized_inputs(path: str | os.PathLike[str]) -> bool:
    """True when `path` holds NeMo Gym materialized inputs (task rows with `_ng_rollout_index`)."""
    return _detect_kind(Path(path)) == "materialized"


def merge_fields(record: dict[str, Any], fields: Mapping[str, Any]) -> dict[str, Any]:
    """`record` with the joined task `fields` it lacks (absent or null); its own values win."""
    add = {k: v for k, v in fields.items() if record.get(k) is None and v is not None}
    return {**record, **add} if add else record


# ---- failures ----------------------------------------------------------------------------------


@dataclass(slots=True)
class FailedRollout:
    """Every failed attempt of one (task, repeat) in a failures file; the last one's class and message."""

    attempts: int
    failure_class: str
    message: str
    line: int


def read_failures(path: str | os.PathLike[str]) -> tuple[dict[tuple[int, int], FailedRollout], int]:
    """(task, repeat) -> its failed attempts, and the number of lines that name no (task, repeat).

    Streams the file; memory is one entry per failed (task, repeat).
    """
    out: dict[tuple[int, int], FailedRollout] = {}
    unusable = 0
    for p in read_jsonl(check_input_path(path)):
        obj = p.obj if p.ok else None
        t = _index(obj.get(TASK_INDEX)) if isinstance(obj, dict) else None
        if t is None:
            unusable += 1
            continue
        r = _index(obj.get(ROLLOUT_INDEX)) or 0
        cls = str(obj.get("_ng_failure_class") or obj.get("failure_kind") or "failed")
        msg = str(obj.get("_ng_failure_message") or obj.get("failure_reason") or "")
        prev = out.get((t, r))
        out[(t, r)] = FailedRollout((prev.attempts if prev else 0) + 1, cls, msg, p.number)
    return out, unusable


@dataclass
class FailureReport:
    """What a failures file means once later successes are taken into account."""

    path: str
    attempts: int = 0  # failure lines naming a (task, repeat)
    unusable_lines: int = 0
    failed: dict[tuple[int, int], FailedRollout] = field(default_factory=dict)  # still failed
    superseded: int = 0  # (task, repeat)s that failed earlier and then succeeded
    superseded_attempts: int = 0
    by_class: Counter[str] = field(default_factory=Counter)  # still-failed (task, repeat)s by last class

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data."""
        return {
            "path": self.path,
            "attempts": self.attempts,
            "failed_rollouts": len(self.failed),
            "superseded_rollouts": self.superseded,
            "superseded_attempts": self.superseded_attempts,
            "failed_by_class": dict(self.by_class.most_common()),
            "unusable_lines": self.unusable_lines,
        }


def settle_failures(path: str | os.PathLike[str], succeeded: Container[tuple[int, int]]) -> FailureReport:
    """Read a failures file and keep only the (task, repeat)s that never succeeded.

    NeMo Gym appends one line per failed attempt and re-dispatches failed rollouts on `--resume`;
    one that then succeeds is in the rollouts file and its old failure lines are history. So a
    (task, repeat) is failed iff it has failure lines and is not in `succeeded` (the pairs present
    in the rollouts file). This is the rule `collect`, `validate` and `stats` share.
    """
    failures, unusable = read_failures(path)
    rep = FailureReport(str(path), unusable_lines=unusable)
    for pair, f in failures.items():
        rep.attempts += f.attempts
        if pair in succeeded:
            rep.superseded += 1
            rep.superseded_attempts += f.attempts
        else:
            rep.failed[pair] = f
            rep.by_class[f.failure_class] += 1
    return rep


# ---- what a collection holds -------------------------------------------------------------------


try:  # optional accelerator: reads only the two indices of a line
    import msgspec

    class _Ids(msgspec.Struct, gc=False):
        t: Any = msgspec.field(default=None, name=TASK_INDEX)
        r: Any = msgspec.field(default=None, name=ROLLOUT_INDEX)

except ImportError:  # pragma: no cover
    msgspec = None  # type: ignore[assignment]


class PairSet:
    """(task index, rollout index) pairs as one bitmask per task: memory ~ tasks x repeats bits."""

    def __init__(self) -> None:
        self.by_task: dict[int, int] = {}

    def add(self, t: int, r: int) -> bool:
        """Add a pair; False when it was already there."""
        m = self.by_task.get(t, 0)
        bit = 1 << r
        if m & bit:
            return False
        self.by_task[t] = m | bit
        return True

    def __contains__(self, pair: object) -> bool:
        t, r = pair  # type: ignore[misc]
        return bool(self.by_task.get(t, 0) >> r & 1)

    def __len__(self) -> int:
        return sum(m.bit_count() for m in self.by_task.values())


def rollout_pairs(path: str | os.PathLike[str]) -> tuple[PairSet, int]:
    """The (task, repeat) pairs present in a rollouts file, and how many lines repeat a pair.

    Reads only the two indices of each line (msgspec skips the rest); unreadable lines name no pair.
    """
    decode = msgspec.json.Decoder(_Ids).decode if msgspec is not None else None
    pairs = PairSet()
    repeated = 0
    for line in iter_lines(path):
        t = r = None
        try:
            if decode is not None:
                ids = decode(line.data)
                t, r = ids.t, ids.r
            else:  # pragma: no cover
                obj = orjson.loads(line.data)
                t, r = obj.get(TASK_INDEX), obj.get(ROLLOUT_INDEX)
        except Exception:  # noqa: BLE001 - an unreadable line names no pair (validate reports it)
            continue
        t, r = _index(t), _index(r)
        if t is None:
            continue
        if not pairs.add(t, r or 0):
            repeated += 1
    return pairs, repeated


@dataclass
class CollectionReport:
    """Expected vs present vs failed rollouts of one collection, per task (`--json` of validate/stats)."""

    rollouts: str
    materialized: str | None
    failures: FailureReport | None
    expected: int | None = None
    present: int = 0
    failed: int = 0
    missing: int = 0
    extra: int = 0  # present but not listed in the materialized inputs
    tasks_expected: int | None = None
    tasks_without_rollouts: int = 0
    tasks_incomplete: list[dict[str, Any]] = field(default_factory=list)  # first MAX_TASKS tasks
    tasks_incomplete_count: int = 0

    MAX_TASKS = 50

    @property
    def complete(self) -> bool:
        """True when nothing failed or is missing."""
        return not self.failed and not self.missing

    def warning(self) -> str | None:
        """One sentence for a partial collection, None when complete."""
        if self.complete:
            return None
        parts = []
        if self.failed:
            src = self.failures.path if self.failures else "the failures file"
            parts.append(f"{self.failed} failed (see {src})")
        if self.missing:
            parts.append(f"{self.missing} missing")
        of = f" of {self.expected} expected" if self.expected is not None else ""
        no = f"; {self.tasks_without_rollouts} tasks have no rollout at all" if self.tasks_without_rollouts else ""
        return (
            f"partial collection: {self.present} rollouts present{of}, {', '.join(parts)}{no}; "
            "pass rates and means cover only the rollouts present."
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data."""
        return {
            "rollouts": self.rollouts,
            "materialized_inputs": self.materialized,
            "failures": self.failures.to_dict() if self.failures else None,
            "expected": self.expected,
            "present": self.present,
            "failed": self.failed,
            "missing": self.missing,
            "extra": self.extra,
            "tasks_expected": self.tasks_expected,
            "tasks_without_rollouts": self.tasks_without_rollouts,
            "tasks_incomplete": self.tasks_incomplete_count,
            "incomplete_tasks": self.tasks_incomplete,
            "complete": self.complete,
        }


def collection_report(
    rollouts: str | os.PathLike[str],
    present: PairSet | None = None,
    *,
    sidecars: Sidecars | None = None,
    source: TaskSource | None = None,
) -> CollectionReport | None:
    """Compare a rollouts file with its side files; None when it has neither.

    `present`: the (task, repeat) pairs in the rollouts file (read from the file when not given).
    `source`: an already loaded materialized-inputs TaskSource (to avoid reading it twice).
    """
    sc = sidecars or sidecar_paths(rollouts)
    if sc.materialized is None and sc.failures is None:
        return None
    if present is None:
        present, _ = rollout_pairs(rollouts)
    fails = settle_failures(sc.failures, present) if sc.failures is not None else None
    rep = CollectionReport(str(rollouts), str(sc.materialized) if sc.materialized else None, fails)
    rep.present = len(present)
    failed_pairs = fails.failed if fails is not None else {}
    rep.failed = len(failed_pairs)
    if sc.materialized is not None:
        src = source if source is not None and source.kind == "materialized" else TaskSource(sc.materialized, "materialized")
        expected = src.expected
        rep.expected = sum(m.bit_count() for m in expected.values())
        rep.tasks_expected = len(expected)
        failed_by_task: Counter[int] = Counter(t for t, _ in failed_pairs)
        for t in sorted(expected):
            want = expected[t]
            have = present.by_task.get(t, 0)
            n_have = (have & want).bit_count()
            n_failed = failed_by_task.get(t, 0)
            n_missing = max(want.bit_count() - n_have - n_failed, 0)
            rep.missing += n_missing
            if n_have == 0:
                rep.tasks_without_rollouts += 1
            if n_have < want.bit_count():
                rep.tasks_incomplete_count += 1
                if len(rep.tasks_incomplete) < rep.MAX_TASKS:
                    rep.tasks_incomplete.append(
                        {"task_index": t, "expected": want.bit_count(), "present": n_have, "failed": n_failed, "missing": n_missing}
                    )
        rep.extra = sum((m & ~expected.get(t, 0)).bit_count() for t, m in present.by_task.items())
    else:
        by_task: Counter[int] = Counter(t for t, _ in failed_pairs)
        for t in sorted(by_task):
            rep.tasks_incomplete_count += 1
            if t not in present.by_task:
                rep.tasks_without_rollouts += 1
            if len(rep.tasks_incomplete) < rep.MAX_TASKS:
                rep.tasks_incomplete.append({"task_index": t, "expected": None, "present": present.by_task.get(t, 0).bit_count(), "failed": by_task[t], "missing": None})
    return rep


__all__ = [
    "CollectionReport",
    "FailedRollout",
    "FailureReport",
    "JOIN_REASONS",
    "Join",
    "PairSet",
    "Sidecars",
    "TaskSource",
    "collection_report",
    "input_fields",
    "is_materialized_inputs",
    "merge_fields",
    "prompt_key",
    "read_failures",
    "rollout_pairs",
    "settle_failures",
    "sidecar_paths",
    "stem_of",
]

