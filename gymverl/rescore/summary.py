"""`RescoreSummary`: what a rescore run did, resumed parts included, and the warning it prints."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Mapping

from gymverl.jsonl import MAX_SHOWN, Tally
from gymverl.records import ROLLOUT_KEYS
from gymverl.sidecars import ROLLOUT_INDEX, TASK_INDEX, PairSet
from gymverl.formats import FieldRules
from gymverl.verify import VERDICT_KEYS


_FIELD_REQUIRED = re.compile(r"(?:^|; |HTTP 422: )([A-Za-z_][\w.]*): Field required")


# Fields NeMo Gym itself reads and writes (`_ng_*`, the verdict, the rollout id it takes as
# `_ng_rollout_id`): never task fields, so never named as "missing" or "answered null".
BOOKKEEPING_FIELDS = frozenset(ROLLOUT_KEYS | VERDICT_KEYS | {"capture_rollout_id", "reward_before"})


def is_bookkeeping(name: str) -> bool:
    """True for a NeMo Gym bookkeeping field (not a task field the verifier needs)."""
    return name.startswith("_ng_") or name in BOOKKEEPING_FIELDS


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
    # Agents named by rows sent to one pool of servers (no NAME=URL routes; at most 8 kept).
    agents: set[str | None] = field(default_factory=set)
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
            # guess_warning is a sentence of its own, ending in "."; here it is one part of this one.
            parts.append((FieldRules(guessed=self.guessed_fields).guess_warning() or "").rstrip("."))
        if self.forced:
            parts.append(
                f"re-verified with --force against servers that do not declare a stateless /verify ({', '.join(self.forced)}): "
                "their rewards may be wrong"
            )
        if not parts:
            return None
        text = "; ".join(parts)
        if self.required_missing and len(self.agents - {None}) >= 2:
            # Rows of several agents all went to the same server(s): the rows of an agent whose
            # verifier that is not lack its fields by design; no task file would supply them.
            names = ", ".join(sorted(a for a in self.agents if a))
            text += (
                f". The rows name several agents ({names}) and were all sent to the same --server: give each "
                "agent its own resources server with --server AGENT=URL (repeatable)"
            )
        elif self.required_missing or self.suspicious:
            hint = None
            if self.task_source is None:
                if not self.guessed_fields:  # (the guess's own part already gives this advice)
                    hint = "re-join task fields from the NeMo Gym input file with --tasks TASKS.jsonl (or keep <stem>_materialized_inputs.jsonl beside the rollouts)"
            else:
                hint = f"the task rows joined from {self.task_source} do not supply them: check that it is the input these rollouts were collected from"
            if hint:
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
