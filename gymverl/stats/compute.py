"""`compute_stats`: one streaming pass over a rollout file into `RolloutStats` (per task, per group,
pass@k, reward and length distributions, collection sidecars)."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any, Callable

import orjson

from gymverl.inputs import as_input
from gymverl.jsonl import Rejections, Tally, iter_lines
from gymverl.progress import OnProgress, track_lines
from gymverl.records import Checked, agent_name, check_line, check_record, content_text, empty_answer, is_incomplete, starts_without_prompt, iter_checked, malformed_calls, output_items, output_tokens, reward_key, task_key
from gymverl.sidecars import CollectionReport, PairSet, Sidecars, TaskSource, collection_report, prompt_key, sidecar_paths

from gymverl.stats.distribution import Distribution, _sample_std, reward_edges


DEFAULT_THRESHOLD = 1.0
GROUP_BY_AGENT = "agent"
GROUP_BY_NONE = "none"


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one task with `n` samples of which `c` are correct: 1 - C(n-c,k)/C(n,k)."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    # Product form of C(n-c,k)/C(n,k) = prod_{i=n-c+1}^{n} (1 - k/i): no huge binomials, no
    # cancellation (Chen et al. 2021, "Evaluating Large Language Models Trained on Code").
    ratio = 1.0
    for i in range(n - c + 1, n + 1):
        ratio *= 1.0 - k / i
    return 1.0 - ratio


def k_values(max_n: int) -> list[int]:
    """The k reported for pass@k: 1, 2, 4, 8, ... below `max_n`, and `max_n` itself."""
    ks: list[int] = []
    k = 1
    while k < max_n:
        ks.append(k)
        k *= 2
    if max_n >= 1:
        ks.append(max_n)
    return ks


def response_chars(record: dict[str, Any]) -> int:
    """Characters the policy produced: message text, tool-call names + arguments, reasoning text."""
    n = 0
    for item in output_items(record):
        if not isinstance(item, dict):
            continue
        t = item.get("type", "message")
        if t == "message" and item.get("role") == "assistant":
            n += len(content_text(item.get("content")))
        elif t == "function_call":
            n += len(str(item.get("name") or "")) + len(str(item.get("arguments") or ""))
        elif t == "reasoning":
            parts = [p for key in ("summary", "content") if isinstance(item.get(key), list) for p in item[key]]
            for part in parts:
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    n += len(part["text"])
    return n


def is_failed(record: dict[str, Any]) -> bool:
    """True when the rollout or its scoring failed: a failure record, or a response with an error."""
    if record.get("failure_kind") or record.get("_ng_result_type") in ("failure", "error"):
        return True
    response = record.get("response") or {}
    return bool(response.get("error")) or response.get("status") == "failed"


def group_of(record: dict[str, Any], group_by: str) -> str:
    """The group a rollout is reported under: its agent (`agent_ref.name`), data source, or a field."""
    if group_by == GROUP_BY_NONE:
        return "(all)"
    if group_by == GROUP_BY_AGENT:
        name = agent_name(record)
        if name:
            return name
        src = record.get("data_source") or record.get("_ng_environment_server")
        return str(src) if src is not None else "(unnamed)"
    value = record.get(group_by)
    if isinstance(value, dict) and isinstance(value.get("name"), str):
        return value["name"]
    return "(missing)" if value is None else str(value)


@dataclass(slots=True)
class TaskCounter:
    """What stats keeps per task: counts and sums, never the rollouts themselves."""

    group: str
    n: int = 0  # measured rollouts (masked and repeated lines are not)
    correct: int = 0
    reward_sum: float = 0.0
    incomplete: int = 0
    failed: int = 0
    first_reward: float | None = None
    varied: bool = False  # False while every reward seen for this task is identical
    reward_sq: float = 0.0
    reward_min: float | None = None
    reward_max: float | None = None
    masked: int = 0
    repeated: int = 0
    prompt: str | None = None  # prompt key of a task keyed by index (task identity)
    seen: int = 0  # bitmask of the rollout indices seen

    @property
    def pass_rate(self) -> float:
        """Fraction of this task's rollouts that are correct."""
        return self.correct / self.n if self.n else 0.0

    @property
    def mean_reward(self) -> float:
        """Mean reward of this task's rollouts."""
        return self.reward_sum / self.n if self.n else 0.0

    @property
    def std_reward(self) -> float | None:
        """Sample std (ddof=1) of this task's rewards, as `gym eval profile`'s `std/reward`."""
        return _sample_std(self.n, self.reward_sum, self.reward_sq) if self.n else None


@dataclass(slots=True)
class Facts:
    """What stats needs from one rollout, read once and shared by the overall, group and task counters."""

    reward: float
    correct: bool
    incomplete: bool
    failed: bool
    masked: bool
    tokens: int | None
    chars: int
    malformed: bool = False  # a tool call whose arguments are not a JSON object (records.malformed_calls)
    empty: bool = False  # no final answer (records.empty_answer)
    no_prompt: bool = False  # nothing asked before the first model turn (records.starts_without_prompt)

    @classmethod
    def of(cls, record: dict[str, Any], threshold: float) -> "Facts":
        """Read the facts of one valid rollout."""
        reward = float(record["reward"])
        return cls(
            reward,
            reward >= threshold,
            is_incomplete(record),
            is_failed(record),
            record.get("mask_sample") is True,
            output_tokens(record),
            response_chars(record),
            malformed_calls(record) > 0,
            empty_answer(record),
            starts_without_prompt(record),
        )


@dataclass
class GroupStats:
    """Statistics over a set of rollouts (a whole file or one agent / data source)."""

    name: str
    threshold: float
    rollouts: int = 0
    correct: int = 0
    incomplete: int = 0
    failed: int = 0
    masked: int = 0
    malformed_tool_calls: int = 0  # rollouts with a tool call whose arguments are not a JSON object
    empty_answers: int = 0  # rollouts without a final answer
    no_prompt: int = 0  # rollouts without a prompt (validate's no_prompt; to-parquet rejects them)
    reward: Distribution = field(default_factory=Distribution)
    tokens: Distribution = field(default_factory=Distribution)
    chars: Distribution = field(default_factory=Distribution)
    length_sum_correct: float = 0.0
    length_sum_incorrect: float = 0.0
    chars_sum_correct: float = 0.0
    chars_sum_incorrect: float = 0.0

    def add(self, f: "Facts") -> None:
        """Fold one rollout (its facts, computed once per line) in; a masked one is only counted."""
        if f.masked:
            self.masked += 1
            return
        self.rollouts += 1
        correct = f.correct
        self.correct += correct
        self.reward.add(f.reward)
        self.incomplete += f.incomplete
        self.failed += f.failed
        self.malformed_tool_calls += f.malformed
        self.empty_answers += f.empty
        self.no_prompt += f.no_prompt
        toks = f.tokens
        if toks is not None:
            self.tokens.add(toks)
            if correct:
                self.length_sum_correct += toks
            else:
                self.length_sum_incorrect += toks
        chars = f.chars
        self.chars.add(chars)
        if correct:
            self.chars_sum_correct += chars
        else:
            self.chars_sum_incorrect += chars

    def length_unit(self) -> str:
        """`output_tokens` when every rollout recorded `response.usage.output_tokens`, else `characters`."""
        return "output_tokens" if self.rollouts and self.tokens.count == self.rollouts else "characters"

    def to_dict(self, tasks: list[TaskCounter]) -> dict[str, Any]:
        """Plain JSON-able summary; `tasks` are this group's per-task counters.

        `rollouts`, `tasks` and every quality number cover measured rollouts only; `masked` and
        `tasks_fully_masked` say what was left out.
        """
        fully_masked = sum(1 for t in tasks if not t.n and t.masked)
        tasks = [t for t in tasks if t.n]
        unit = self.length_unit()
        dist = self.tokens if unit == "output_tokens" else self.chars
        sum_c, sum_i = (
            (self.length_sum_correct, self.length_sum_incorrect)
            if unit == "output_tokens"
            else (self.chars_sum_correct, self.chars_sum_incorrect)
        )
        n_incorrect = self.rollouts - self.correct
        edges = reward_edges(self.reward.min, self.reward.max)
        hist = self.reward.histogram(edges)
        return {
            "name": self.name,
            "rollouts": self.rollouts,
            "tasks": len(tasks),
            "correct": self.correct,
            "pass_rate": self.correct / self.rollouts if self.rollouts else None,
            "pass_at_k": pass_at_k_table(tasks),
            "reward": {
                **self.reward.summary(),
                "values": {reward_key(k): v for k, v in (self.reward.distinct() or {}).items()} or None,
                "histogram": [
                    {"lo": lo, "hi": hi, "count": c} for lo, hi, c in zip(edges, edges[1:], hist)
                ],
            },
            "tasks_all_solved": sum(1 for t in tasks if t.n and t.correct == t.n),
            "tasks_all_failed": sum(1 for t in tasks if t.n and t.correct == 0),
            # What GRPO-style group filtering drops: every reward in the group is the same.
            "tasks_zero_variance": sum(1 for t in tasks if t.n and not t.varied),
            "tasks_single_rollout": sum(1 for t in tasks if t.n == 1),
            "rollouts_per_task": _count_summary([t.n for t in tasks]),
            "incomplete": self.incomplete,
            "failed": self.failed,
            "masked": self.masked,
            "tasks_fully_masked": fully_masked,
            "malformed_tool_calls": self.malformed_tool_calls,
            "empty_answers": self.empty_answers,
            "no_prompt": self.no_prompt,
            "length": {
                "unit": unit,
                **dist.summary(),
                "mean_correct": sum_c / self.correct if self.correct else None,
                "mean_incorrect": sum_i / n_incorrect if n_incorrect else None,
            },
        }


def _count_summary(ns: list[int]) -> dict[str, Any]:
    if not ns:
        return {"min": 0, "max": 0, "mean": 0.0}
    return {"min": min(ns), "max": max(ns), "mean": sum(ns) / len(ns)}


def pass_at_k_table(tasks: list[TaskCounter]) -> list[dict[str, Any]]:
    """pass@k for k = 1, 2, 4, ... max n, each averaged over the tasks with at least k rollouts."""
    max_n = max((t.n for t in tasks), default=0)
    rows = []
    for k in k_values(max_n):
        vals = [pass_at_k(t.n, t.correct, k) for t in tasks if t.n >= k]
        rows.append({"k": k, "pass_at_k": sum(vals) / len(vals) if vals else None, "tasks": len(vals)})
    return rows


@dataclass
class RolloutStats(Rejections):
    """Everything `gymverl stats` reports about one rollout file."""

    path: str
    threshold: float = DEFAULT_THRESHOLD
    group_by: str = GROUP_BY_AGENT
    lines: int = 0
    blank: int = 0  # blank lines: skipped, not rejected, counted in `lines`
    rejects: Tally = field(default_factory=Tally)  # rejected lines: `rejected`, `rejected_by_code`, `rejections`
    overall: GroupStats | None = None
    groups: dict[str, GroupStats] = field(default_factory=dict)
    tasks: dict[str, TaskCounter] = field(default_factory=dict)
    repeated: int = 0  # lines whose (task, repeat) came earlier in the file: counted once
    split_keys: set[str] = field(default_factory=set)  # task indices that carry two prompts
    source: TaskSource | None = None  # task rows, for --group-by a task field the lines lack
    pairs: PairSet | None = None  # (task, repeat) pairs present, when side files are compared
    collection: CollectionReport | None = None
    _prompt_cache: dict[bytes, str] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.overall is None:
            self.overall = GroupStats("(all)", self.threshold)

    def _prompt_key(self, rec: dict[str, Any]) -> str:
        """`sidecars.prompt_key`, normalised once per distinct prompt (the n rollouts of a task share it)."""
        rcp = rec.get("responses_create_params")
        try:
            blob = orjson.dumps([rcp.get("input"), rcp.get("tools"), rcp.get("instructions")]) if isinstance(rcp, dict) else None
        except TypeError:  # e.g. an integer beyond 64 bits: the exact function decides
            blob = None
        if blob is None:
            return prompt_key(rec)
        cache = self._prompt_cache
        pk = cache.get(blob)
        if pk is None:
            if len(cache) >= 4096:
                cache.clear()
            pk = cache[blob] = prompt_key(rec)
        return pk

    def _group_of(self, rec: dict[str, Any]) -> str:
        group = group_of(rec, self.group_by)
        if group == "(missing)" and self.source is not None:
            # NeMo Gym >= 0.5 drops input fields from rollout lines: read it from the task row.
            j = self.source.find(rec)
            if j.fields is not None and j.fields.get(self.group_by) is not None:
                return group_of(j.fields, self.group_by)
        return group

    def add(self, c: Checked) -> None:
        """Fold one checked line in (a rejected line is counted and its reason kept)."""
        self.lines += 1
        if c.record is None:
            self.rejects.add(c.code or "unknown", {"line": c.line, "code": c.code, "reason": c.reason})
            return
        rec = c.record
        f = Facts.of(rec, self.threshold)
        reward = f.reward
        key = task_key(rec)
        t = self.tasks.get(key)
        idx, ri = _index(rec.get("_ng_task_index")), _index(rec.get("_ng_rollout_index"))
        pk = None
        if idx is not None:
            # Task identity: the same index with another prompt is another task (collections
            # each numbered from 0, concatenated), never merged into this one.
            pk = self._prompt_key(rec)
            if t is not None and t.prompt != pk:
                self.split_keys.add(key)
                key = f"{key}@{pk}"
                t = self.tasks.get(key)
        group = self._group_of(rec)
        if t is None:
            t = self.tasks[key] = TaskCounter(group, prompt=pk)
        if ri is not None:
            bit = 1 << ri
            if t.seen & bit:  # this (task, repeat) again: reported, counted once
                t.repeated += 1
                self.repeated += 1
                return
            t.seen |= bit
        if self.pairs is not None and idx is not None:
            self.pairs.add(idx, ri or 0)
        assert self.overall is not None
        self.overall.add(f)
        g = self.groups.get(group)
        if g is None:
            g = self.groups[group] = GroupStats(group, self.threshold)
        g.add(f)
        if f.masked:
            t.masked += 1
            return
        t.n += 1
        t.reward_sq += reward * reward
        if t.reward_min is None or reward < t.reward_min:
            t.reward_min = reward
        if t.reward_max is None or reward > t.reward_max:
            t.reward_max = reward
        t.correct += f.correct
        t.reward_sum += reward
        t.incomplete += f.incomplete
        t.failed += f.failed
        if t.first_reward is None:
            t.first_reward = reward
        elif reward != t.first_reward:
            t.varied = True

    def task_label(self, key: str) -> str:
        """The reported name of a task: `KEY@PROMPTHASH` when its index carries several prompts."""
        t = self.tasks[key]
        return f"{key}@{t.prompt}" if key in self.split_keys else key

    def per_task(self) -> list[dict[str, Any]]:
        """One row per task, in first-seen order (n, pass rate, means: measured rollouts only)."""
        return [
            {
                "task": self.task_label(key),
                "group": t.group,
                "n": t.n,
                "correct": t.correct,
                "pass_rate": t.pass_rate if t.n else None,
                "mean_reward": t.mean_reward if t.n else None,
                "std_reward": t.std_reward,
                "min_reward": t.reward_min,
                "max_reward": t.reward_max,
                "incomplete": t.incomplete,
                "failed": t.failed,
                "masked": t.masked,
                "repeated": t.repeated,
            }
            for key, t in self.tasks.items()
        ]

    def warnings(self) -> list[str]:
        """What the numbers do not cover: repeated lines, split task indices, a partial collection."""
        out = []
        if self.repeated:
            out.append(f"{self.repeated} lines repeat a (task, repeat) that came earlier in the file; each rollout was counted once.")
        if self.split_keys:
            some = ", ".join(sorted(self.split_keys)[:3])
            out.append(
                f"{len(self.split_keys)} task indices carry more than one prompt ({some}; collections numbered from 0 and "
                "concatenated?): they are reported as separate tasks, KEY@PROMPTHASH."
            )
        assert self.overall is not None
        if self.group_by not in (GROUP_BY_AGENT, GROUP_BY_NONE) and list(self.groups) == ["(missing)"]:
            # A misspelt field name would otherwise give one group and no word about it.
            out.append(f"no rollout (nor its task row) has a field '{self.group_by}': every rollout is in the group (missing).")
        if self.overall.masked:
            out.append(f"{self.overall.masked} masked rollouts (mask_sample: true) are left out of every mean, pass rate and pass@k.")
        w = self.collection.warning() if self.collection is not None else None
        if w:
            out.append(w)
        return out

    def to_dict(self, per_task: bool = True) -> dict[str, Any]:
        """The whole report as plain JSON-able data (`--json`)."""
        assert self.overall is not None
        tasks = list(self.tasks.values())
        out: dict[str, Any] = {
            "path": self.path,
            "threshold": self.threshold,
            "group_by": self.group_by,
            "lines": self.lines,
            "rejected": self.rejected,
            "blank": self.blank,
            "rejected_by_reason": self.rejects.by_code_desc(),
            "rejections": self.rejects.shown,
            "repeated": self.repeated,
            "overall": self.overall.to_dict(tasks),
            "pass_rate_distribution": pass_rate_buckets(tasks),
            "groups": [
                g.to_dict([t for t in tasks if t.group == name]) for name, g in self.groups.items()
            ]
            if len(self.groups) > 1
            else [],
        }
        if per_task:
            out["per_task"] = self.per_task()
        out["collection"] = self.collection.to_dict() if self.collection is not None else None
        out["warnings"] = self.warnings()
        return out


PASS_RATE_BUCKETS = ("0", "(0, 0.25)", "[0.25, 0.5)", "[0.5, 0.75)", "[0.75, 1)", "1")


def pass_rate_buckets(tasks: list[TaskCounter]) -> dict[str, int]:
    """How many tasks fall in each pass-rate bucket (0 and 1 on their own: GRPO drops those)."""
    counts = dict.fromkeys(PASS_RATE_BUCKETS, 0)
    for t in tasks:
        if not t.n:
            continue
        r = t.pass_rate
        if t.correct == 0:
            counts["0"] += 1
        elif t.correct == t.n:
            counts["1"] += 1
        elif r < 0.25:
            counts["(0, 0.25)"] += 1
        elif r < 0.5:
            counts["[0.25, 0.5)"] += 1
        elif r < 0.75:
            counts["[0.5, 0.75)"] += 1
        else:
            counts["[0.75, 1)"] += 1
    return counts


def compute_stats(
    path: str | os.PathLike[str],
    *,
    threshold: float = DEFAULT_THRESHOLD,
    group_by: str = GROUP_BY_AGENT,
    on_line: Callable[[Checked], None] | None = None,
    tasks_path: str | os.PathLike[str] | None = None,
    side_files: bool = True,
    on_progress: OnProgress | None = None,
) -> RolloutStats:
    """Stream a rollout file once and return its statistics (rejected lines are counted, not fatal).

    With `side_files`, NeMo Gym's `<stem>_materialized_inputs.jsonl` and `<stem>_failures.jsonl`
    beside `path` are compared with it (`collection`: expected, failed, missing per task).
    `tasks_path` (else the materialized inputs) supplies task fields for a `group_by` field the
    rollout lines lack. UsageError when `tasks_path` is unreadable. `on_line` sees every checked
    line; `on_progress` hears the input bytes read (`gymverl.progress`).
    """
    if not math.isfinite(threshold):
        raise ValueError(f"threshold must be a finite number, got {threshold}")
    sc = sidecar_paths(path) if side_files else Sidecars()
    stats = RolloutStats(str(path), threshold=threshold, group_by=group_by)
    if group_by not in (GROUP_BY_AGENT, GROUP_BY_NONE):
        if tasks_path is not None:
            stats.source = TaskSource(tasks_path)
        elif sc.materialized is not None:
            stats.source = TaskSource(sc.materialized, "materialized")
    if sc.materialized is not None or sc.failures is not None:
        stats.pairs = PairSet()
    src = as_input(path)  # a path, `-`, a pipe or an Input
    lines = iter_lines(src)
    checked = iter_checked(lines)
    if on_progress is not None:
        checked = (check_line(line, check_record, lines.max_line_bytes) for line in track_lines(lines, on_progress, src.progress_total))
    for c in checked:
        stats.add(c)
        if on_line is not None:
            on_line(c)
    stats.blank = lines.blank  # skipped, not rejected; still accounted for in `lines`
    stats.lines += lines.blank
    if stats.pairs is not None:
        stats.collection = collection_report(path, stats.pairs, sidecars=sc, source=stats.source)
    return stats


def _index(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else None
