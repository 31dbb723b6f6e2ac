"""Re-score rollouts against a live NeMo Gym `/verify`: concurrent, retried, resumable, lossless.

Every input line ends as exactly one of: an output row (the rollout with the verifier's new
`reward`, the old one kept as `reward_before`, other verifier outputs updated) or a record in the
failures file (a row that failed validation, or whose verification finally failed). A failure is
never written as a reward.

Both files are written in input order (a bounded reorder window holds rows that finish early), so
the pair is always a prefix of the input. A checkpoint beside the output (`.<OUT>.rescore-state`)
records, after both files are flushed, how many input lines are done and each file's size; a
resumed run truncates the files to those sizes (dropping anything written after the last
checkpoint) and continues with the next line: no duplicates, no gaps, order kept.

Task fields the rollouts lack (NeMo Gym >= 0.5 keeps only what the verifier's request model
declares) are joined from `--tasks` or from `<stem>_materialized_inputs.jsonl` beside the input,
on (`_ng_task_index`, `_ng_rollout_index`) via `gymverl.sidecars.TaskSource`. Before any row is
sent each server is asked `GET /reverify_mode`; one not declared stateless is refused without
`--force`. An HTTP 200 answer that reports a failure (`mask_sample: true`, `judge_failed`) is a
failure record, never a reward. Rows repeating a (task, rollout) pair are counted and reported.

Both files are locked for the whole run (`gymverl.files.output_lock`: a second run into them stops
at once, naming this one's PID) and checked against the inputs before anything is written. An
output named `.gz` is gzip-compressed, one gzip member per checkpoint, so it resumes the same way.
Any error inside the run (disk full, a file-size limit, a bug met on one line, a failed checkpoint
write) stops every task at once, cuts both files back to the last checkpoint and is raised as one
sentence (`RunError`, exit 1, for disk full); the run never waits on a task that has died.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import hashlib
import os
import re
import signal
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import orjson

from gymverl.errors import RunError, UsageError, from_os_error
from gymverl.files import ResumableFile, atomic_open, check_outputs, is_gzip_name, output_lock
from gymverl.inputs import Input, as_input
from gymverl.progress import BYTES, OnProgress, ProgressEvent
from gymverl.jsonl import MAX_SHOWN, RAW_KEEP_BYTES, Tally, dumps, iter_lines
from gymverl.records import ROLLOUT_KEYS, agent_name, check_line, task_key
from gymverl.sidecars import ROLLOUT_INDEX, TASK_INDEX, PairSet, TaskSource, sidecar_paths
from gymverl.formats import FieldRules
from gymverl.verify import ECHO_KEYS, VERDICT_KEYS, RequestSchema, VerifyClient, VerifyResult, build_request, fetch_request_fields, fetch_request_schema

STATE_VERSION = 1
_FIELD_REQUIRED = re.compile(r"(?:^|; |HTTP 422: )([A-Za-z_][\w.]*): Field required")
TRANSIENT = frozenset({"timeout", "connection", "http_429", "http_5xx"})
CHECKPOINT_SECONDS = 1.0


class RescoreError(UsageError):
    """A problem that stops the whole run before it starts (one clear sentence)."""


# ---- task join (--tasks, materialized inputs) ---------------------------------------------------

# Fields NeMo Gym itself reads and writes (`_ng_*`, the verdict, the rollout id it takes as
# `_ng_rollout_id`): never task fields, so never named as "missing" or "answered null".
BOOKKEEPING_FIELDS = frozenset(ROLLOUT_KEYS | VERDICT_KEYS | {"capture_rollout_id", "reward_before"})


def is_bookkeeping(name: str) -> bool:
    """True for a NeMo Gym bookkeeping field (not a task field the verifier needs)."""
    return name.startswith("_ng_") or name in BOOKKEEPING_FIELDS


def task_source_for(input_path: str | os.PathLike[str], tasks: "str | os.PathLike[str] | TaskSource | None", side_files: bool = True) -> TaskSource | None:
    """The task rows to join onto rollouts: `tasks` (a tasks file or materialized inputs, kind
    detected), else `<stem>_materialized_inputs.jsonl` beside the input (unless `side_files` is
    False), else None. Raises UsageError when `tasks` is missing or unreadable."""
    if isinstance(tasks, TaskSource):
        return tasks
    if tasks is not None:
        # Rollouts without an index (NeMo Gym's example rollouts) join by prompt only when it is unambiguous.
        return TaskSource(tasks, prompt_fallback=True)
    if not side_files:
        return None
    found = sidecar_paths(input_path).materialized
    return TaskSource(found, "materialized", prompt_fallback=True) if found is not None else None


# ---- GET /reverify_mode ---------------------------------------------------------------------------

# What `GET /reverify_mode` may say (NeMo Gym >= 0.5 `ReverifyMode`), plus gymverl's own two:
# `not_declared` (HTTP 404: the server predates the route, NeMo Gym < 0.5) and `unreachable`.
SAFE_MODES = frozenset({"stateless", "not_declared", "unreachable"})


async def fetch_reverify_mode(url: str, timeout: float = 10.0) -> str:
    """What the server at `url` says about re-verifying stored rollouts: "stateless",
    "unsupported", "unknown" (its answer), "not_declared" (HTTP 404: NeMo Gym < 0.5 has no such
    route), "unreachable" (no answer: the run itself then reports the server), or
    "HTTP <status>" / "unreadable answer" for anything else. Never raises for server trouble."""
    import aiohttp

    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session:
            async with session.get(url + "/reverify_mode") as resp:
                raw = await resp.read()
                status = resp.status
    except (aiohttp.ClientError, OSError, asyncio.TimeoutError):
        return "unreachable"
    if status == 404:
        return "not_declared"
    if status != 200:
        return f"HTTP {status}"
    try:
        mode = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return "unreadable answer"
    return mode.strip().lower() if isinstance(mode, str) and mode.strip() else "unreadable answer"


def check_reverify_modes(client: VerifyClient, force: bool) -> tuple[dict[str, str], list[str]]:
    """Ask every server of `client` `GET /reverify_mode` (concurrently, once per URL).

    Returns ({url: mode}, [urls re-verified although not stateless: only with `force`]).
    Raises RescoreError (exit 2) without `force` when a server is not declared stateless: its
    `/verify` may read session state that `/seed_session` and the rollout's tool calls built, which
    a stored rollout does not carry, so a re-verified reward would be wrong. As `gym eval
    reverify` does, "unknown" (the 0.7.0 default, e.g. math_with_judge and xlam_fc) counts as not
    stateless. A 404 (NeMo Gym < 0.5, no such route) is let through: those servers cannot declare
    anything, and refusing them all would make --force a habit; the summary records it.
    """
    urls = list(dict.fromkeys([*client.pool, *(u for us in client.routes.values() for u in us)]))
    timeout = min(client.timeout, 10.0)

    async def ask() -> list[str]:
        return list(await asyncio.gather(*(fetch_reverify_mode(u, timeout) for u in urls)))

    modes = dict(zip(urls, asyncio.run(ask())))
    unsafe = [u for u, m in modes.items() if m not in SAFE_MODES]
    if unsafe and not force:
        names = {u: [n for n, us in client.routes.items() if u in us] for u in unsafe}
        which = "; ".join(f"{u}{' (' + ', '.join(names[u]) + ')' if names[u] else ''} says {modes[u]!r}" for u in unsafe)
        raise RescoreError(
            f"refusing to re-verify: {which} to GET /reverify_mode, not \"stateless\": re-verifying a stateful "
            "verifier needs the session that /seed_session and the rollout's tool calls built, which a stored rollout "
            "does not carry, so rewards may be wrong; pass --force if this verifier is stateless "
            "(gym eval reverify refuses the same servers without ++force=true)."
        )
    return modes, unsafe


# ---- summary ------------------------------------------------------------------------------------


@dataclass
class RescoreSummary:
    """What a rescore run did (whole file, resumed parts included); `to_dict()` is the `--json`."""

    input: str
    output: str
    failures_path: str
    lines: int = 0
    rescored: int = 0
    failed: int = 0
    rejected: int = 0
    blank: int = 0  # blank lines: skipped, written nowhere, counted in `lines`
    changed: int = 0
    went_up: int = 0
    went_down: int = 0
    sum_before: float = 0.0
    sum_after: float = 0.0
    per_task: dict[str, list[float]] = field(default_factory=dict)  # task -> [n, sum before, sum after, changed]
    failures_by_reason: Counter[str] = field(default_factory=Counter)
    rejected_by_code: Counter[str] = field(default_factory=Counter)
    problems: Tally = field(default_factory=Tally)  # failed + rejected lines; `examples` are its first few
    joined_tasks: int = 0
    unjoined: int = 0
    unjoined_by_reason: Counter[str] = field(default_factory=Counter)  # sidecars.JOIN_REASONS keys
    task_source: str | None = None  # the tasks file or materialized inputs joined (None: none)
    task_source_kind: str | None = None  # "tasks" or "materialized"
    # rows whose (_ng_task_index, _ng_rollout_index) an earlier row had: `duplicate_pairs`, `duplicate_examples`
    duplicates: Tally = field(default_factory=Tally)
    _pairs: PairSet = field(default_factory=PairSet, repr=False)
    _big_pairs: set[tuple[int, int]] = field(default_factory=set, repr=False)
    reverify_modes: dict[str, str] = field(default_factory=dict)  # server URL -> its GET /reverify_mode
    forced: list[str] = field(default_factory=list)  # servers re-verified although not stateless (--force)
    added_fields: Counter[str] = field(default_factory=Counter)
    null_echoed: Counter[str] = field(default_factory=Counter)
    absent_accepted: Counter[str] = field(default_factory=Counter)
    required_missing: Counter[str] = field(default_factory=Counter)  # from 422 "X: Field required"
    # How the task fields sent to /verify were decided: per server URL, "schema" (its /openapi.json,
    # "schema+" when open to undeclared fields) or None; and the names the fallback heuristic decided.
    request_schemas: dict[str, str | None] = field(default_factory=dict)
    guessed_fields: dict[str, bool] = field(default_factory=dict)
    resumed_from: int = 0
    complete: bool = False
    interrupted: str | None = None
    seconds: float = 0.0
    rows_this_run: int = 0
    servers: list[dict[str, Any]] = field(default_factory=list)
    flip_threshold: float = 0.25
    max_examples: int = MAX_SHOWN

    def __post_init__(self) -> None:
        self.problems.limit = self.duplicates.limit = self.max_examples

    @property
    def examples(self) -> list[dict[str, Any]]:
        """The first failed or rejected lines (as in the failures file: line, kind, reason, status, error, attempts)."""
        return self.problems.shown

    @property
    def duplicate_pairs(self) -> int:
        """Rows whose (_ng_task_index, _ng_rollout_index) pair an earlier row had."""
        return self.duplicates.count

    @property
    def duplicate_examples(self) -> list[dict[str, Any]]:
        """The first of those rows: `{"line", "_ng_task_index", "_ng_rollout_index"}`."""
        return self.duplicates.shown

    def add_ok(self, task: str, before: float | None, after: float) -> None:
        """Fold one rescored row into the totals."""
        self.lines += 1
        self.rescored += 1
        b = after if before is None else before
        self.sum_before += b
        self.sum_after += after
        moved = abs(after - b) > 1e-9
        if moved:
            self.changed += 1
            if after > b:
                self.went_up += 1
            else:
                self.went_down += 1
        t = self.per_task.get(task)
        if t is None:
            t = self.per_task[task] = [0, 0.0, 0.0, 0]
        t[0] += 1
        t[1] += b
        t[2] += after
        t[3] += moved

    def note_pair(self, rec: Mapping[str, Any], line: int | None = None) -> None:
        """Count a row whose (task, rollout) pair an earlier row already had (a duplicate
        rollout: a concatenation of overlapping files, a collection resumed twice)."""
        t, r = rec.get(TASK_INDEX), rec.get(ROLLOUT_INDEX)
        if type(t) is not int or type(r) is not int or t < 0 or r < 0:
            return
        # PairSet keeps one bit per repeat: a huge rollout index goes to a plain set instead.
        new = self._pairs.add(t, r) if r < 4096 else ((t, r) not in self._big_pairs and not self._big_pairs.add((t, r)))
        if not new:
            self.duplicates.add(None, {"line": line, TASK_INDEX: t, ROLLOUT_INDEX: r})

    def add_failure(self, rec: Mapping[str, Any]) -> None:
        """Fold one failures-file record into the totals."""
        self.lines += 1
        if rec.get("kind") == "invalid":
            self.rejected += 1
            self.rejected_by_code[str(rec.get("reason"))] += 1
        else:
            self.failed += 1
            self.failures_by_reason[self._reason_label(rec)] += 1
            if rec.get("status") == 422:
                for name in _FIELD_REQUIRED.findall(str(rec.get("error") or "")):
                    self.required_missing[name] += 1
        self.problems.add(None, {k: rec.get(k) for k in ("line", "kind", "reason", "status", "error", "attempts")})

    @staticmethod
    def _reason_label(rec: Mapping[str, Any]) -> str:
        status = rec.get("status")
        reason = str(rec.get("reason"))
        return f"{reason} ({status})" if status and reason.startswith("http") else reason

    @property
    def mean_before(self) -> float | None:
        """Mean old reward over the rescored rows."""
        return self.sum_before / self.rescored if self.rescored else None

    @property
    def mean_after(self) -> float | None:
        """Mean new reward over the rescored rows."""
        return self.sum_after / self.rescored if self.rescored else None

    @property
    def suspicious(self) -> bool:
        """True when a suspicious share of rewards went down (a sign of missing task fields)."""
        return self.rescored > 0 and self.went_down >= 2 and self.went_down / self.rescored >= self.flip_threshold

    def likely_missing_fields(self) -> list[str]:
        """Fields to look at when rewards flip: accepted by /verify but absent, then echoed as null
        (task fields only: NeMo Gym's bookkeeping fields are never named)."""
        names = [k for k, _ in self.absent_accepted.most_common() if not is_bookkeeping(k)]
        names += [k for k, _ in self.null_echoed.most_common() if k not in names and not is_bookkeeping(k)]
        return names

    def warning(self) -> str | None:
        """The loud warning text when rewards flipped suspiciously or required fields are missing."""
        parts: list[str] = []
        if self.required_missing:
            fields = ", ".join(f"{k} ({n} rows)" for k, n in self.required_missing.most_common(8))
            parts.append(f"the verifier rejected rows for missing required fields: {fields}")
        if self.suspicious:
            share = self.went_down / self.rescored
            msg = f"{self.went_down} of {self.rescored} rewards went down ({share:.0%}); the rollouts may lack task fields the verifier needs"
            absent = [f"{k} (absent from {n} rows)" for k, n in self.absent_accepted.most_common() if not is_bookkeeping(k)][:8]
            nulls = [f"{k} ({n} rows)" for k, n in self.null_echoed.most_common() if not is_bookkeeping(k)][:8]
            if absent:
                msg += f"; the server's /verify accepts fields these rows lack: {', '.join(absent)}"
            if nulls:
                msg += f"; the server answered null for: {', '.join(nulls)}"
            parts.append(msg)
        if self.duplicate_pairs:
            ex = ", ".join(f"({e[TASK_INDEX]}, {e[ROLLOUT_INDEX]})" for e in self.duplicate_examples[:5])
            parts.append(
                f"{self.duplicate_pairs} rows repeat a (_ng_task_index, _ng_rollout_index) pair an earlier row has, e.g. {ex}: "
                "the input holds the same rollout twice or concatenates collections that number tasks alike"
            )
        if self.guessed_fields:
            parts.append(FieldRules(guessed=self.guessed_fields).guess_warning() or "")
        if self.forced:
            parts.append(
                f"re-verified with --force against servers that do not declare a stateless /verify ({', '.join(self.forced)}): "
                "their rewards may be wrong"
            )
        if not parts:
            return None
        text = "; ".join(parts)
        if self.required_missing or self.suspicious:
            if self.task_source is None:
                hint = "re-join task fields from the NeMo Gym input file with --tasks TASKS.jsonl (or keep <stem>_materialized_inputs.jsonl beside the rollouts)"
            else:
                hint = f"the task rows joined from {self.task_source} do not supply them: check that it is the input these rollouts were collected from"
            text += ". " + hint[0].upper() + hint[1:]
        return text + "."

    def to_dict(self, per_task: bool | None = None) -> dict[str, Any]:
        """Plain JSON-able data."""
        tasks = [
            {"task": k, "n": int(v[0]), "mean_before": v[1] / v[0], "mean_after": v[2] / v[0], "changed": int(v[3])}
            for k, v in self.per_task.items()
        ]
        include_tasks = per_task if per_task is not None else len(tasks) <= 1000
        return {
            "input": self.input,
            "output": self.output,
            "failures": self.failures_path,
            "complete": self.complete,
            "interrupted": self.interrupted,
            "lines": self.lines,
            "rescored": self.rescored,
            "failed": self.failed,
            "rejected": self.rejected,
            "blank": self.blank,
            "changed": self.changed,
            "went_up": self.went_up,
            "went_down": self.went_down,
            "mean_before": self.mean_before,
            "mean_after": self.mean_after,
            "failures_by_reason": dict(self.failures_by_reason.most_common()),
            "rejected_by_reason": dict(self.rejected_by_code.most_common()),
            "examples": self.examples,
            "tasks": len(tasks),
            "per_task": tasks if include_tasks else None,
            "tasks_joined": self.joined_tasks,
            "tasks_not_found": self.unjoined,
            "tasks_not_found_by_reason": dict(self.unjoined_by_reason.most_common()),
            "task_source": self.task_source,
            "task_source_kind": self.task_source_kind,
            "duplicate_pairs": self.duplicate_pairs,
            "duplicate_examples": self.duplicate_examples,
            "reverify_modes": self.reverify_modes,
            "forced": self.forced,
            "added_fields": dict(self.added_fields.most_common()),
            "null_echoed": {k: n for k, n in self.null_echoed.most_common() if not is_bookkeeping(k)},
            "absent_accepted_fields": {k: n for k, n in self.absent_accepted.most_common() if not is_bookkeeping(k)},
            "required_fields_missing": dict(self.required_missing.most_common()),
            "request_schemas": self.request_schemas,
            "task_fields_guessed": {"sent": sorted(k for k, v in self.guessed_fields.items() if v), "left_out": sorted(k for k, v in self.guessed_fields.items() if not v)},
            "warning": self.warning(),
            "resumed_from_line": self.resumed_from,
            "seconds": self.seconds,
            "rows_this_run": self.rows_this_run,
            "rows_per_second": self.rows_this_run / self.seconds if self.seconds > 0 else None,
            "servers": self.servers,
        }


# ---- output rows --------------------------------------------------------------------------------


def rescored_row(record: Mapping[str, Any], answer: Mapping[str, Any], added: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The rollout with the verifier's answer applied: new `reward`, old one as `reward_before`
    (placed right after it), other verifier outputs updated; echoed request parts are ignored."""
    out: dict[str, Any] = {}
    for k, v in record.items():
        # The old verdict (mask_sample, failure_kind, ...) belongs to the old reward: the answer's replaces it.
        if k == "reward_before" or k in VERDICT_KEYS:
            continue
        out[k] = v
        if k == "reward":
            out["reward_before"] = v
    if added:
        out.update(added)
    for k, v in answer.items():
        if k in ECHO_KEYS or (v is None and k not in out):
            continue
        out[k] = v
    out["reward"] = answer["reward"]
    return out


def failure_record(line: int, record: Mapping[str, Any] | None, result: VerifyResult) -> dict[str, Any]:
    """A failures-file record for a row whose verification failed."""
    rec: dict[str, Any] = {"line": line, "kind": "verify"}
    rec.update(result.failure())
    if record is not None:
        rec["task"] = task_key(dict(record))
        for k in (TASK_INDEX, ROLLOUT_INDEX):
            if k in record:
                rec[k] = record[k]
        rec["agent"] = agent_name(dict(record))
        rec["reward_before"] = record.get("reward")
    return rec


def rejected_record(line: int, code: str, reason: str, raw: bytes) -> dict[str, Any]:
    """A failures-file record for a line that is not a usable rollout (not sent)."""
    rec: dict[str, Any] = {"line": line, "kind": "invalid", "reason": code, "status": None, "error": reason, "attempts": 0}
    rec["raw"] = raw[:RAW_KEEP_BYTES].decode("utf-8", errors="replace")
    if len(raw) > RAW_KEEP_BYTES or code == "line_too_long":
        rec["raw_truncated"] = True
    return rec


# ---- checkpoint ---------------------------------------------------------------------------------


def default_failures_path(output: str | os.PathLike[str]) -> Path:
    """`out.jsonl` -> `out.failures.jsonl` (same folder)."""
    p = Path(output)
    name = p.name
    for suffix in (".jsonl.gz", ".jsonl", ".json"):
        if name.endswith(suffix):
            return p.with_name(name[: -len(suffix)] + ".failures.jsonl")
    return p.with_name(name + ".failures.jsonl")


def state_path(output: str | os.PathLike[str]) -> Path:
    """The checkpoint file beside `output`."""
    p = Path(output)
    return p.with_name(f".{p.name}.rescore-state")


def input_fingerprint(path: Path | Input) -> dict[str, Any]:
    """Size and a hash of the first MB: enough to refuse resuming against a different input."""
    src = as_input(path, passes=2)  # a pipe's spooled copy: same bytes, same fingerprint
    assert src.path is not None
    with open(src.path, "rb") as f:
        head = f.read(1 << 20)
    where = src.name if src.spooled else str(src.path.resolve())
    return {"path": where, "size": src.path.stat().st_size, "head_sha1": hashlib.sha1(head).hexdigest()}


def _open_output(path: Path) -> Any:
    """Read back one of rescore's own outputs (gzip when named `.gz`, as it was written)."""
    return gzip.open(path, "rb") if is_gzip_name(path) else open(path, "rb")


def _write_state(path: Path, state: dict[str, Any]) -> None:
    # Atomic (temp beside it, fsync, rename): a crash leaves the previous checkpoint or this one.
    with atomic_open(path, compress=False) as f:
        f.write(orjson.dumps(state, option=orjson.OPT_INDENT_2))


def read_state(output: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The checkpoint of a previous run into `output`, if any."""
    p = state_path(output)
    if not p.exists():
        return None
    try:
        state = orjson.loads(p.read_bytes())
    except orjson.JSONDecodeError:
        raise RescoreError(f"{p}: checkpoint is corrupt; delete it and the output to start over.") from None
    if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
        raise RescoreError(f"{p}: checkpoint from another gymverl version; run without --resume to start over.")
    return state


# ---- the run ------------------------------------------------------------------------------------


@dataclass
class _Pending:
    line: int
    record: dict[str, Any] | None = None
    size: int = 0
    out: dict[str, Any] | None = None  # output row when verified
    fail: dict[str, Any] | None = None  # failures record otherwise
    done: bool = False
    transient: bool = False


class _Run:
    def __init__(
        self,
        input_path: Input,
        output: Path,
        failures: Path,
        client: VerifyClient,
        *,
        resume: bool,
        overwrite: bool,
        retry_failed: bool,
        tasks: TaskSource | None,
        window: int,
        max_failures_in_a_row: int,
        flip_threshold: float,
        on_progress: OnProgress | None,
        handle_signals: bool,
        limit: int | None,
    ) -> None:
        self.input, self.output, self.failures_path, self.client = input_path, output, failures, client
        self.resume, self.tasks, self.window = resume, tasks, window
        self.overwrite = overwrite
        self.retry = retry_failed
        self._retry_lines: set[int] = set()
        self._old: tuple[Any, Any] | None = None  # retry mode: (old output file, old failures file)
        self.max_failures_in_a_row = max_failures_in_a_row
        self.on_progress, self.handle_signals, self.limit = on_progress, handle_signals, limit
        self.summary = RescoreSummary(str(input_path), str(output), str(failures), flip_threshold=flip_threshold)
        self.state_file = state_path(output)
        self.pending: dict[int, _Pending] = {}
        self.next_write = 1
        self.bytes_done = 0
        self.bytes_total = input_path.progress_total  # for progress; None for a gzip
        self.in_a_row = 0
        self.stop_reason: str | None = None
        self.stop = asyncio.Event()
        self.advanced = asyncio.Event()
        self._last_checkpoint = 0.0
        self._persisting: asyncio.Future[None] | None = None
        self._last_progress = 0.0
        self._accepted: dict[str, asyncio.Future[list[str] | None]] = {}
        # Which top-level fields are task fields (sent to /verify): the server's schema, else the
        # task source's field names, else the name heuristic (its guesses are reported).
        self._schemas: dict[str, RequestSchema | None] = {}
        self._rules = FieldRules(task_keys=frozenset(tasks.field_names) if tasks is not None else None, guessed=self.summary.guessed_fields)
        self._field_rule: dict[str | None, Callable[[str], bool]] = {}
        self._input_exhausted = False
        self._pending_fail: dict[str, Any] | None = None
        self._out: ResumableFile | None = None
        self._fails: ResumableFile | None = None
        # (output bytes, failures bytes) named by the last checkpoint known to be on disk.
        self._durable = (0, 0)
        # The first exception raised in any background task (worker, producer, checkpoint writer):
        # it stops the run at once and is raised by `run()`, never left for nobody to await.
        self._error: BaseException | None = None

    # -- resume --------------------------------------------------------------------------------
    def _prepare_files(self) -> tuple[int, int, int]:
        """Decide where to start: (lines done, output bytes, failures bytes)."""
        fp = input_fingerprint(self.input)
        self.fingerprint = fp
        if not self.resume and not self.overwrite:
            old_state = read_state(self.output) if self.output.exists() else None
            if old_state is not None and not old_state.get("complete"):
                raise RescoreError(
                    f"{self.output} holds an unfinished rescore run ({old_state.get('lines_done', 0)} lines done); "
                    "continue it with --resume, or start over with --overwrite."
                )
            if old_state is None:
                # A file that is not a rescore run's output is never replaced without being asked.
                for path in (self.output, self.failures_path):
                    if path.exists() and path.stat().st_size > 0:
                        raise RescoreError(
                            f"{path} already exists and is not from a gymverl rescore run; "
                            "choose another path, or pass --overwrite to replace it."
                        )
        state = read_state(self.output) if self.resume else None
        if state is None:
            if self.resume and (self.output.exists() and self.output.stat().st_size > 0):
                raise RescoreError(
                    f"{self.output} exists but has no rescore checkpoint to resume from; run without --resume to start over."
                )
            return 0, 0, 0
        old = state.get("input", {})
        if old.get("size") != fp["size"] or old.get("head_sha1") != fp["head_sha1"]:
            raise RescoreError(
                f"cannot resume: {self.input} is not the input the interrupted run used ({old.get('path')}); "
                "run without --resume to start over."
            )
        out_bytes, fail_bytes = int(state["output_bytes"]), int(state["failures_bytes"])
        for path, size in ((self.output, out_bytes), (self.failures_path, fail_bytes)):
            have = path.stat().st_size if path.exists() else 0
            if have < size:
                raise RescoreError(f"cannot resume: {path} is shorter than the checkpoint says; run without --resume to start over.")
        return int(state["lines_done"]), out_bytes, fail_bytes

    def _prepare_retry(self) -> None:
        """Retry mode: check the finished run, collect the lines whose verification failed."""
        self.fingerprint = fp = input_fingerprint(self.input)
        state = read_state(self.output)
        if state is None:
            raise RescoreError(f"{self.output} has no rescore run to retry failures of; run without --retry-failed first.")
        old = state.get("input", {})
        if old.get("size") != fp["size"] or old.get("head_sha1") != fp["head_sha1"]:
            raise RescoreError(f"cannot retry: {self.input} is not the input of the run that wrote {self.output}.")
        if not state.get("complete"):
            raise RescoreError(f"{self.output} holds an unfinished run; finish it with --resume before --retry-failed.")
        if self.failures_path.exists():
            with _open_output(self.failures_path) as f:
                for raw in f:
                    if raw.strip():
                        rec = orjson.loads(raw)
                        if rec.get("kind") == "verify":
                            self._retry_lines.add(int(rec["line"]))

    def _replay(self) -> None:
        """Rebuild the summary of lines done by earlier runs from the output and failures files
        (already cut back to the checkpoint, so all they hold is done)."""
        s = self.summary
        def add_ok(r: dict[str, Any]) -> None:
            s.add_ok(task_key(r), r.get("reward_before"), float(r["reward"]))
            s.note_pair(r)

        def add_failure(r: dict[str, Any]) -> None:
            s.add_failure(r)
            s.note_pair(r, r.get("line"))

        for path, add in ((self.output, add_ok), (self.failures_path, add_failure)):
            if not path.exists() or path.stat().st_size == 0:
                continue
            with _open_output(path) as f:
                for raw in f:
                    if raw.strip():
                        add(orjson.loads(raw))

    def _checkpoint(self, *, complete: bool = False, force: bool = False) -> None:
        """Record progress: flush both files, then (off the event loop unless `force`) fsync them
        and write the checkpoint naming the offsets flushed, so it never points past durable data."""
        if self.retry:
            return  # a retry pass writes temp files that replace the old ones at the end
        now = time.monotonic()
        busy = self._persisting is not None and not self._persisting.done()
        if not force and (busy or now - self._last_checkpoint < CHECKPOINT_SECONDS):
            return
        self._last_checkpoint = now
        out, fails = self._out, self._fails
        assert out is not None and fails is not None
        out.flush()
        fails.flush()
        state = {
            "version": STATE_VERSION,
            "input": self.fingerprint,
            "lines_done": self.next_write - 1,
            "output_bytes": out.size,
            "failures_bytes": fails.size,
            "complete": complete,
            "servers": {"pool": self.client.pool, "routes": self.client.routes},
        }
        if force:
            assert not busy, "await _settle() before a forced checkpoint"
            self._persist(state)
        else:
            # fsync can take tens of ms on a busy disk: not on the loop that keeps requests flowing.
            fut = asyncio.get_running_loop().run_in_executor(None, self._persist, state)
            fut.add_done_callback(self._background_done)
            self._persisting = fut

    def _finish_retry(self, out_path: Path, fail_path: Path) -> None:
        """Retry mode: swap the rewritten files in (only when the pass completed)."""
        if not self.summary.complete:
            return  # interrupted: the old files stay as they were
        out_bytes, fail_bytes = out_path.stat().st_size, fail_path.stat().st_size
        os.replace(out_path, self.output)
        os.replace(fail_path, self.failures_path)
        _write_state(
            self.state_file,
            {
                "version": STATE_VERSION, "input": self.fingerprint, "lines_done": self.next_write - 1,
                "output_bytes": out_bytes, "failures_bytes": fail_bytes, "complete": True,
                "servers": {"pool": self.client.pool, "routes": self.client.routes},
            },
        )

    def _persist(self, state: dict[str, Any]) -> None:
        assert self._out is not None and self._fails is not None
        self._out.sync()
        self._fails.sync()
        _write_state(self.state_file, state)
        self._durable = (state["output_bytes"], state["failures_bytes"])

    async def _settle(self) -> None:
        """Wait for a checkpoint being written in the background (raises what it raised)."""
        if self._persisting is not None:
            fut, self._persisting = self._persisting, None
            await fut

    def _background_done(self, fut: "asyncio.Future[Any]") -> None:
        """Done-callback of every background task: its exception stops the whole run at once."""
        if fut.cancelled():
            return
        exc = fut.exception()  # retrieved here, so asyncio never reports it as unretrieved
        if exc is not None and self._error is None:
            self._error = exc
            self.stop.set()

    # -- main ----------------------------------------------------------------------------------
    async def run(self) -> RescoreSummary:
        start = time.monotonic()
        out_path, fail_path = self.output, self.failures_path
        out_bytes = fail_bytes = 0
        if self.retry:
            # Rewrite both files beside the old ones; they replace them only when the pass completes.
            self._prepare_retry()
            done = 0
            out_path = self.output.with_name(f".{self.output.name}.retry.tmp")
            fail_path = self.failures_path.with_name(f".{self.failures_path.name}.retry.tmp")
            for path in (out_path, fail_path):
                path.unlink(missing_ok=True)
            self._old = (_open_output(self.output), _open_output(self.failures_path) if self.failures_path.exists() else None)
        else:
            done, out_bytes, fail_bytes = self._prepare_files()
            self.summary.resumed_from = done
        self._durable = (out_bytes, fail_bytes)
        self.next_write = done + 1
        loop = asyncio.get_running_loop()
        signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
        # Restored afterwards: asyncio's remove_signal_handler would leave SIGTERM/SIGHUP at their
        # defaults, dropping the CLI's "stop like Ctrl-C" handlers (gymverl.proc).
        previous = {sig: signal.getsignal(sig) for sig in signals} if self.handle_signals else {}
        if self.handle_signals:
            for sig in signals:
                loop.add_signal_handler(sig, self._interrupt, sig)
        try:
            try:
                # Opening cuts each file back to the checkpoint: anything written after it is dropped.
                self._out = ResumableFile(out_path, out_bytes, compress=is_gzip_name(self.output))
                self._fails = ResumableFile(fail_path, fail_bytes, compress=is_gzip_name(self.failures_path))
                if done:
                    self._replay()
                self._checkpoint(force=True)
                await self.client.open()
                await self._fetch_schemas()
                await self._process(done)
                await self._settle()
                self._checkpoint(complete=self.summary.complete, force=True)
            except BaseException:
                await self._abandon()
                raise
            for f in (self._out, self._fails):
                f.close()
            if self.retry:
                self._finish_retry(out_path, fail_path)
            if self.summary.complete and self.failures_path.exists() and self.failures_path.stat().st_size == 0:
                self.failures_path.unlink()  # nothing failed: no empty failures file left behind
        finally:
            if self._old is not None:
                for old in self._old:
                    if old is not None:
                        old.close()
            if self.retry:
                for path in (out_path, fail_path):
                    path.unlink(missing_ok=True)
            if self.handle_signals:
                for sig in signals:
                    loop.remove_signal_handler(sig)
                    if previous[sig] is not None:
                        signal.signal(sig, previous[sig])
            await self.client.close()
        self.summary.seconds = time.monotonic() - start
        self.summary.servers = self.client.server_stats()
        self._report_progress(force=True)
        return self.summary

    async def _process(self, done: int) -> None:
        """Run the producer and the workers until the input is done, the run is stopped, or any
        of them fails; in every case all of them are cancelled and awaited before returning."""
        queue: asyncio.Queue[_Pending | None] = asyncio.Queue(maxsize=self.client.concurrency * 2)
        workers = [asyncio.create_task(self._worker(queue)) for _ in range(self.client.concurrency)]
        producer = asyncio.create_task(self._produce(queue, done))
        for t in (producer, *workers):
            t.add_done_callback(self._background_done)
        stopper = asyncio.create_task(self.stop.wait())
        tasks: list[asyncio.Task[Any]] = [producer, *workers, stopper]
        try:
            # A failing task sets `stop` (its done-callback), so every wait below ends at once then.
            await asyncio.wait({producer, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if not self.stop.is_set():
                finisher = asyncio.create_task(self._finish_workers(queue, len(workers), workers))
                tasks.append(finisher)
                await asyncio.wait({finisher, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            fetches = list(self._accepted.values())
            for t in (*tasks, *fetches):
                t.cancel()
            # Awaiting them all retrieves every exception: nothing is left "never retrieved".
            await asyncio.gather(*tasks, *fetches, return_exceptions=True)
        if self._error is None:
            for t in tasks:
                if not t.cancelled() and t.exception() is not None:
                    self._error = t.exception()
                    break
        if self._error is not None:
            raise self._error
        if self.stop.is_set():
            self.summary.interrupted = self.stop_reason
            self._drain(final=False)
        else:
            self._drain(final=True)
            self.summary.complete = self._input_exhausted and not self.pending
            if not self.summary.complete:
                self.summary.interrupted = f"stopped after {self.limit} rows (--limit)"

    @staticmethod
    async def _finish_workers(queue: "asyncio.Queue[_Pending | None]", n: int, workers: list["asyncio.Task[None]"]) -> None:
        for _ in range(n):
            await queue.put(None)
        await asyncio.gather(*workers)

    async def _abandon(self) -> None:
        """After an error: write nothing more, cut both files back to the last checkpoint on disk
        (so they hold whole lines only, and `--resume` continues from there), close them."""
        with contextlib.suppress(Exception):
            await self._settle()  # never cut a file under a checkpoint being written
        for f, size in ((self._out, self._durable[0]), (self._fails, self._durable[1])):
            if f is None:
                continue
            with contextlib.suppress(OSError):
                if not self.retry:
                    f.truncate(size)
            with contextlib.suppress(OSError):
                f.close(discard=True)

    def _interrupt(self, sig: int) -> None:
        self.stop_reason = "interrupted (Ctrl-C)" if sig == signal.SIGINT else f"terminated ({signal.Signals(sig).name})"
        self.stop.set()

    async def _produce(self, queue: asyncio.Queue[_Pending | None], done: int) -> None:
        taken = 0
        # Blank lines keep their numbers (rows are written in line order) and are written nowhere.
        for ln in iter_lines(self.input, skip_blank=False):
            if ln.number <= done:
                self.bytes_done += ln.size + 1
                if ln.blank:  # done by an earlier run, written nowhere: _replay cannot see it
                    self.summary.lines += 1
                    self.summary.blank += 1
                continue
            if self.limit is not None and taken >= self.limit:
                return
            taken += 1
            # Bound memory: never run more than `window` lines ahead of the oldest unwritten one.
            while ln.number - self.next_write >= self.window:
                self.advanced.clear()
                await self.advanced.wait()
            item = _Pending(ln.number, size=ln.size + 1)
            self.pending[ln.number] = item
            if ln.blank:
                item.done = True
                self._drain()
                continue
            if self._old is not None and self._copy_old(item):
                self._drain()
                continue
            c = check_line(ln)
            if c.record is None:
                item.fail, item.done = rejected_record(ln.number, c.code or "invalid", c.reason or "", c.raw), True
                self._drain()
                continue
            item.record = c.record
            await queue.put(item)
        self._input_exhausted = True

    def _copy_old(self, item: _Pending) -> bool:
        """Retry mode: fill `item` from the finished run unless its verification is to be retried."""
        old_out = self._old[0]  # type: ignore[index]
        if self._pending_fail is None:
            self._next_old_failure()  # peek: failure records are in line order
        fail = self._pending_fail
        if fail is not None and fail["line"] == item.line:
            self._pending_fail = None  # consumed: copied, or replaced by the new outcome
            if item.line in self._retry_lines:
                return False
            item.fail, item.done = fail, True
            return True
        raw = old_out.readline()
        if not raw.strip():
            raise RescoreError(f"{self.output} has fewer rows than its checkpoint says; cannot retry failures.")
        item.out, item.done = orjson.loads(raw), True
        return True

    def _next_old_failure(self) -> None:
        fails = self._old[1] if self._old else None  # type: ignore[index]
        self._pending_fail = None
        while fails is not None:
            raw = fails.readline()
            if not raw:
                return
            if raw.strip():
                self._pending_fail = orjson.loads(raw)
                return

    async def _worker(self, queue: asyncio.Queue[_Pending | None]) -> None:
        while True:
            item = await queue.get()
            if item is None:
                return
            try:
                await self._rescore_item(item)
            except Exception as exc:
                # A bug met on one line must name that line, and stops the run (never a hang).
                raise RunError(
                    f"{self.input}: line {item.line}: gymverl failed on this line ({type(exc).__name__}: {exc}); "
                    "please report it with the line. Lines before it are saved; continue with --resume."
                ) from exc
            item.record = None  # free the row early; the output row holds what is needed
            item.done = True
            self._drain()

    async def _rescore_item(self, item: _Pending) -> None:
        record = item.record
        assert record is not None
        added: dict[str, Any] = {}
        if self.tasks is not None:
            # Joined on the indices (both for materialized inputs), the prompt only as a check:
            # never on line position or prompt text (two tasks may share a prompt).
            join = self.tasks.find(record)
            if join.fields is None:
                self.summary.unjoined += 1
                self.summary.unjoined_by_reason[join.reason] += 1
            else:
                self.summary.joined_tasks += 1
                added = {k: v for k, v in join.fields.items() if record.get(k) is None and v is not None}
                for k in added:
                    self.summary.added_fields[k] += 1
        body = build_request(record, added, self._task_field_rule(agent_name(record)))
        result = await self.client.verify_body(body, agent=agent_name(record))
        if result.ok:
            assert result.answer is not None
            self.in_a_row = 0
            item.out = rescored_row(record, result.answer, added)
            before, after = record.get("reward"), result.answer["reward"]
            if isinstance(before, (int, float)) and after < before:
                # Diagnose rewards that went down: nulls in the answer, fields the server takes but the row lacks.
                for k, v in result.answer.items():
                    if v is None and body.get(k) is None and k not in ECHO_KEYS and not is_bookkeeping(k):
                        self.summary.null_echoed[k] += 1
                await self._note_absent(result.server, body)
        else:
            item.fail = failure_record(item.line, record, result)
            item.transient = result.reason in TRANSIENT
            if item.transient:
                self.in_a_row += 1
                if self.in_a_row >= self.max_failures_in_a_row and not self.stop.is_set():
                    self.stop_reason = (
                        f"verifier unreachable: {self.in_a_row} rows in a row failed ({result.reason}: {result.error})"
                    )
                    self.stop.set()
            else:
                self.in_a_row = 0

    async def _fetch_schemas(self) -> None:
        """Ask every server for its `/verify` request schema once, before any row is sent."""
        urls = list(dict.fromkeys([*self.client.pool, *(u for us in self.client.routes.values() for u in us)]))
        timeout = min(self.client.timeout, 10.0)
        found = await asyncio.gather(*(fetch_request_schema(u, timeout) for u in urls))
        self._schemas = dict(zip(urls, found))
        self.summary.request_schemas = {u: None if sc is None else "schema+" if sc.open else "schema" for u, sc in self._schemas.items()}
        for u, sc in self._schemas.items():  # the absent-field diagnostics reuse the answer
            fut: asyncio.Future[list[str] | None] = asyncio.get_running_loop().create_future()
            fut.set_result(list(sc.fields) if sc is not None else None)
            self._accepted[u] = fut

    def _task_field_rule(self, agent: str | None) -> Callable[[str], bool]:
        """`key -> is it a task field?` for rows of `agent`: declared by the /verify schema of every
        server the row may go to (alone when the schemas are closed), else named by the task
        source, else the heuristic (which records its guesses)."""
        rule = self._field_rule.get(agent)
        if rule is not None:
            return rule
        urls = self.client.servers_for(agent) or []
        schemas = [self._schemas.get(u) for u in urls]
        if urls and all(sc is not None for sc in schemas):
            declared = frozenset(k for sc in schemas if sc is not None for k in sc.fields)
            if not any(sc is not None and sc.open for sc in schemas):
                rule = declared.__contains__
            else:
                fallback = self._rules.is_task_field
                rule = lambda k: k in declared or fallback(k)  # noqa: E731
        else:
            rule = self._rules.is_task_field
        self._field_rule[agent] = rule
        return rule

    async def _note_absent(self, server: str | None, body: Mapping[str, Any]) -> None:
        """Count task fields the server's /verify accepts that this row did not send (diagnostics)."""
        if server is None:
            return
        fetch = self._accepted.get(server)
        if fetch is None:
            fetch = self._accepted[server] = asyncio.ensure_future(fetch_request_fields(server))
        for k in await fetch or ():
            if body.get(k) is None and not is_bookkeeping(k):
                self.summary.absent_accepted[k] += 1

    def _drain(self, final: bool = False) -> None:
        """Write finished rows in input order. A run of transient failures is held back until a
        later row succeeds (or the run ends normally), so that if the verifier went down and the
        run stops, those rows are retried on --resume instead of being recorded as failures."""
        out, fails = self._out, self._fails
        assert out is not None and fails is not None
        wrote = False
        while True:
            item = self.pending.get(self.next_write)
            if item is None or not item.done:
                break
            if item.transient and not final:
                # Look ahead: is this streak followed by a finished non-transient row?
                n = self.next_write
                while (nxt := self.pending.get(n)) is not None and nxt.done and nxt.transient:
                    n += 1
                if nxt is None or not nxt.done:
                    break
            del self.pending[self.next_write]
            if item.out is not None:
                out.write(dumps(item.out) + b"\n")
                o = item.out
                self.summary.add_ok(task_key(o), o.get("reward_before"), float(o["reward"]))
                self.summary.note_pair(o, item.line)
            elif item.fail is not None:
                fails.write(dumps(item.fail) + b"\n")
                self.summary.add_failure(item.fail)
                self.summary.note_pair(item.fail, item.line)
            else:  # a blank line: skipped, counted
                self.summary.lines += 1
                self.summary.blank += 1
            self.summary.rows_this_run += 1
            self.bytes_done += item.size
            self.next_write += 1
            wrote = True
        if wrote:
            self.advanced.set()
            self._checkpoint()
            self._report_progress()

    def _report_progress(self, force: bool = False) -> None:
        if self.on_progress is None:
            return
        now = time.monotonic()
        if force or now - self._last_progress >= 0.1:
            self._last_progress = now
            s = self.summary
            self.on_progress(ProgressEvent(self.bytes_done, self.bytes_total, BYTES, rows=s.lines, new_rows=s.rows_this_run, failed=s.failed + s.rejected))


def rescore_file(
    input_path: str | os.PathLike[str],
    output: str | os.PathLike[str],
    servers: list[str] | str | None = None,
    *,
    client: VerifyClient | None = None,
    failures: str | os.PathLike[str] | None = None,
    resume: bool = False,
    overwrite: bool = False,
    retry_failed: bool = False,
    tasks: str | os.PathLike[str] | TaskSource | None = None,
    side_files: bool = True,
    force: bool = False,
    check_reverify: bool = True,
    concurrency: int | None = None,
    timeout: float | None = None,
    retries: int | None = None,
    window: int | None = None,
    max_failures_in_a_row: int | None = None,
    flip_threshold: float = 0.25,
    limit: int | None = None,
    on_progress: OnProgress | None = None,
    handle_signals: bool = False,
) -> RescoreSummary:
    """Re-score a rollout file against NeMo Gym `/verify` servers (see the module docstring).

    `resume` continues an unfinished run into `output`; without it, an unfinished run there is
    refused unless `overwrite` (a finished one is simply replaced). `retry_failed` re-sends the rows
    of a finished run whose verification failed, copies every other row, and replaces the output
    and failures files (order kept) only if that pass completes.

    Task fields the rollouts lack are joined from `tasks` (an original NeMo Gym tasks file, joined
    on `_ng_task_index` = its 0-based line, or materialized inputs, joined on
    (`_ng_task_index`, `_ng_rollout_index`); either way the prompt must match), else from
    `<stem>_materialized_inputs.jsonl` beside the input when it exists (`side_files=False`: not
    looked for). Never on line position or prompt text alone (`gymverl.sidecars.TaskSource`).

    Unless `check_reverify` is False, every server is asked `GET /reverify_mode` first; servers
    that are not declared stateless are refused without `force` (see `check_reverify_modes`).

    Outputs (`output`, the failures file, the checkpoint) are checked against the inputs (the
    rollouts and the task file) before anything is written, and locked for the whole run.

    Raises (each one sentence, `exit_code` set): InputError / RescoreError (exit 2) for problems
    found before any row is sent, an output that is an input, or an existing file that is not a
    rescore run's output; RunError (exit 1) when another process is writing the same output (its
    PID named), when the disk fills or a file-size limit is reached, or when a line cannot be
    processed: the run stops at once, both files are cut back to the last checkpoint (whole lines
    only) and `resume=True` continues from there.
    """
    # Two passes (fingerprint, then lines): a pipe is spooled to a temp file (see gymverl.inputs).
    path = as_input(input_path, passes=2)
    assert path.path is not None
    out = Path(output)
    fails = Path(failures) if failures is not None else default_failures_path(out)
    # A pipe (spooled) has no folder to find side files in.
    source = task_source_for(path.path, tasks, side_files and not path.spooled)
    if source is not None and len(source) == 0:
        raise RescoreError(f"{source.path}: no valid NeMo Gym task rows to join.")
    # Before anything is opened for writing: no output may be an input (path, symlink, hard link).
    check_outputs([out, fails, state_path(out)], [None if path.spooled else path.path, source.path if source is not None else None])
    if retry_failed and (resume or overwrite):
        raise RescoreError("--retry-failed works on a finished run; do not combine it with --resume or --overwrite.")
    if client is None:
        if not servers:
            raise RescoreError("no verifier server given (use --server URL or NAME=URL).")
        kw: dict[str, Any] = {}
        if concurrency is not None:
            kw["concurrency"] = concurrency
        if timeout is not None:
            kw["timeout"] = timeout
        if retries is not None:
            kw["retries"] = retries
        client = VerifyClient([servers] if isinstance(servers, str) else list(servers), **kw)
    modes, forced = check_reverify_modes(client, force) if check_reverify else ({}, [])
    try:
        # Held for the whole run: a second rescore into the same files stops at once, naming this one.
        with output_lock(out, fails):
            summary = _rescore_locked(
                path, out, fails, client, source, window, max_failures_in_a_row, flip_threshold, on_progress,
                handle_signals, limit, resume=resume, overwrite=overwrite, retry_failed=retry_failed,
            )
        summary.reverify_modes, summary.forced = modes, forced
        if source is not None:
            summary.task_source, summary.task_source_kind = str(source.path), source.kind
        return summary
    except OSError as exc:
        # Disk full or a file-size limit: exit 1 (the command line was fine); anything else: exit 2.
        raise from_os_error(exc, None if exc.filename else str(out)) from None


def _rescore_locked(
    path: Input,
    out: Path,
    fails: Path,
    client: VerifyClient,
    task_index: TaskSource | None,
    window: int | None,
    max_failures_in_a_row: int | None,
    flip_threshold: float,
    on_progress: OnProgress | None,
    handle_signals: bool,
    limit: int | None,
    *,
    resume: bool,
    overwrite: bool,
    retry_failed: bool,
) -> RescoreSummary:
    win = window or max(1024, 16 * client.concurrency)
    # A held-back run of failures must be able to trip the breaker before it fills the window.
    breaker = min(max_failures_in_a_row or max(10, 2 * client.concurrency), max(1, win - 1))
    run = _Run(
        path,
        out,
        fails,
        client,
        resume=resume,
        overwrite=overwrite,
        retry_failed=retry_failed,
        tasks=task_index,
        window=win,
        max_failures_in_a_row=breaker,
        flip_threshold=flip_threshold,
        on_progress=on_progress,
        handle_signals=handle_signals,
        limit=limit,
    )
    return asyncio.run(run.run())


__all__ = [
    "RescoreError",
    "RescoreSummary",
    "BOOKKEEPING_FIELDS",
    "check_reverify_modes",
    "fetch_reverify_mode",
    "is_bookkeeping",
    "task_source_for",
    "default_failures_path",
    "failure_record",
    "read_state",
    "rejected_record",
    "rescore_file",
    "rescored_row",
    "state_path",
]
