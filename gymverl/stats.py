"""Reward statistics for a rollout file: pass rates, pass@k, reward and length distributions.

One streaming pass over the file; memory is one small counter per task plus bounded
distributions (exact value counts up to `Distribution.MAX_DISTINCT` distinct values, then a
fixed-size reservoir sample), so a 10-million-line file costs what its number of tasks costs.

A rollout counts as *correct* when `reward >= threshold` (default 1.0: NeMo Gym verifiers give
1.0 for a solved task, 0.0 otherwise; blackjack's -1/0/1 makes only a win correct). pass@k is the
unbiased estimator of Chen et al. (2021), `1 - C(n-c, k) / C(n, k)` per task, averaged over the
tasks that have at least k rollouts.

Agreement with NeMo Gym 0.7's own numbers (`gym eval profile`, `/aggregate_metrics`; read from
`nemo_gym/reward_profile.py` and `nemo_gym/cli/eval.py` of nemo-gym 0.7.0):
- masked rollouts (`mask_sample: true`) are no measurement: `select_measured` removes them before
  any quality metric, and so does this module (they are counted in `masked`, per task too, and
  tasks whose every rollout is masked in `tasks_fully_masked`, like `coverage/fully_masked_tasks`);
- means are plain means over the measured rollouts (agent level: all rollouts of the agent pooled,
  `RewardProfiler.profile_from_data` -> `describe_dataframe` -> `DataFrame.mean`);
- std is the *sample* standard deviation (ddof=1), `DataFrame.std`'s default there; one value
  gives 0.0 (NeMo Gym fills the NaN of a single value with 0);
- pass@k: `compute_pass_majority_metrics` uses `1 - C(n_incorrect, k)/C(n, k)` per task over the
  tasks with at least k rollouts when rewards are 0/1 (the same as here with threshold 1.0), but
  `max(first k rewards)` when they are not; NeMo Gym reports percentages, this module fractions;
- a (task, repeat) that occurs twice is counted once (`repeated` counts the extra lines; NeMo Gym
  refuses such a file), and the same task index with two prompts (concatenated collections) is
  two tasks, keyed `INDEX@PROMPTHASH`.
With `<stem>_materialized_inputs.jsonl` / `<stem>_failures.jsonl` beside the file, the report also
says how many rollouts were expected, failed and missing per task (`collection`); `gym eval
profile` refuses such a partial run unless told `++allow_partial_rollouts=True`.
"""

from __future__ import annotations

import math
import os
import random

import orjson
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from gymverl.inputs import as_input
from gymverl.jsonl import Rejections, Tally, iter_lines
from gymverl.progress import OnProgress, track_lines
from gymverl.records import REWARD_EDGES, Checked, agent_name, check_line, check_record, reward_bin, content_text, empty_answer, is_incomplete, iter_checked, malformed_calls, output_items, output_tokens, task_key
from gymverl.sidecars import CollectionReport, PairSet, Sidecars, TaskSource, collection_report, prompt_key, sidecar_paths

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


class Distribution:
    """Streaming summary of numbers: exact while there are few distinct values, else sampled."""

    MAX_DISTINCT = 100_000
    RESERVOIR = 100_000

    def __init__(self, seed: int = 0) -> None:
        self.count = 0
        self.total = 0.0
        self.total_sq = 0.0
        self.min: float | None = None
        self.max: float | None = None
        self.values: Counter[float] | None = Counter()
        self.sample: list[float] = []
        self._rng = random.Random(seed)

    def add(self, x: float) -> None:
        """Fold one value in."""
        self.count += 1
        self.total += x
        self.total_sq += x * x
        if self.min is None or x < self.min:
            self.min = x
        if self.max is None or x > self.max:
            self.max = x
        values = self.values
        if values is not None:
            values[x] = values.get(x, 0) + 1
            if len(values) <= self.MAX_DISTINCT:
                return
            # Too many distinct values to keep exactly: switch to a reservoir sample of what was seen.
            # (weighted draw from the counts: never expands them into one value per rollout)
            keys = list(self.values)
            weights = [self.values[k] for k in keys]
            self.sample = self._rng.choices(keys, weights, k=min(self.RESERVOIR, self.count))
            self.values = None
            return
        if len(self.sample) < self.RESERVOIR:
            self.sample.append(x)
        else:
            j = self._rng.randrange(self.count)
            if j < self.RESERVOIR:
                self.sample[j] = x

    @property
    def exact(self) -> bool:
        """True while quantiles and histograms are exact (not from a sample)."""
        return self.values is not None

    @property
    def mean(self) -> float | None:
        """Arithmetic mean (exact)."""
        return self.total / self.count if self.count else None

    @property
    def std(self) -> float | None:
        """Sample standard deviation (ddof=1, exact), as NeMo Gym's profile (pandas `DataFrame.std`); 0.0 for one value."""
        if not self.count:
            return None
        return _sample_std(self.count, self.total, self.total_sq)

    def quantile(self, q: float) -> float | None:
        """The q-quantile (linear interpolation between order statistics, like numpy's default)."""
        if not self.count:
            return None
        if self.values is None:
            ordered = sorted(self.sample)
            return _interpolate(lambda i: ordered[i], len(ordered), q)
        items = sorted(self.values.items())
        cum: list[int] = []
        run = 0
        for _, n in items:
            run += n
            cum.append(run)

        def at(i: int) -> float:
            # The i-th (0-based) value in sorted order, found in the cumulative counts.
            lo, hi = 0, len(cum) - 1
            while lo < hi:
                mid = (lo + hi) // 2
                if cum[mid] > i:
                    hi = mid
                else:
                    lo = mid + 1
            return items[lo][0]

        return _interpolate(at, self.count, q)

    def histogram(self, edges: list[float]) -> list[int]:
        """Counts per bin [edges[i], edges[i+1]) (last bin closed); sampled counts are scaled up."""
        bins = [0] * (len(edges) - 1)
        pairs: Iterable[tuple[float, float]]
        if self.values is not None:
            pairs = ((v, n) for v, n in self.values.items())
        else:
            scale = self.count / len(self.sample) if self.sample else 0.0
            pairs = ((v, scale) for v in self.sample)
        for v, n in pairs:
            i = reward_bin(v, edges)
            if i is not None:
                bins[i] += n  # type: ignore[assignment]
        return [round(b) for b in bins]

    def distinct(self) -> dict[float, int] | None:
        """Exact value counts, when there are at most 20 distinct values (e.g. 0/1 rewards)."""
        if self.values is None or len(self.values) > 20:
            return None
        return dict(sorted(self.values.items()))

    def summary(self) -> dict[str, Any]:
        """count, mean, std, min, quartiles, p90, p99, max as plain data."""
        return {
            "count": self.count,
            "mean": self.mean,
            "std": self.std,
            "min": self.min,
            "p25": self.quantile(0.25),
            "median": self.quantile(0.5),
            "p75": self.quantile(0.75),
            "p90": self.quantile(0.9),
            "p99": self.quantile(0.99),
            "max": self.max,
            "exact": self.exact,
        }


def _sample_std(n: int, total: float, total_sq: float) -> float:
    """Sample std (ddof=1) from count, sum and sum of squares; 0.0 for n <= 1 (NeMo Gym's fill value)."""
    if n <= 1:
        return 0.0
    m = total / n
    return math.sqrt(max((total_sq - n * m * m) / (n - 1), 0.0))


def _interpolate(at: Callable[[int], float], n: int, q: float) -> float:
    pos = q * (n - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, n - 1)
    a, b = at(lo), at(hi)
    return a + (b - a) * (pos - lo)


def reward_edges(lo: float | None, hi: float | None, bins: int = 10) -> list[float]:
    """Histogram edges: `records.REWARD_EDGES` (tenths of 0-1, as `validate`) when rewards lie in [0, 1],
    else `bins` equal bins over min-max. Binned by `records.reward_bin`."""
    if lo is None or hi is None or (lo >= 0.0 and hi <= 1.0):
        return list(REWARD_EDGES)
    if lo == hi:
        return [lo - 0.5, hi + 0.5]
    step = (hi - lo) / bins
    return [lo + i * step for i in range(bins)] + [hi]


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
                "values": {_num_key(k): v for k, v in (self.reward.distinct() or {}).items()} or None,
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
            "length": {
                "unit": unit,
                **dist.summary(),
                "mean_correct": sum_c / self.correct if self.correct else None,
                "mean_incorrect": sum_i / n_incorrect if n_incorrect else None,
            },
        }


def _num_key(x: float) -> str:
    return f"{x:g}"


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


def _pass_at_k_map(d: dict[str, Any]) -> dict[int, float | None]:
    return {row["k"]: row["pass_at_k"] for row in d["pass_at_k"]}


def _delta(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else b - a


def compare_stats(before: RolloutStats, after: RolloutStats, top: int = 10) -> dict[str, Any]:
    """Before/after comparison of two files (e.g. before and after training or rescoring)."""
    a = before.to_dict(per_task=False)["overall"]
    b = after.to_dict(per_task=False)["overall"]
    metrics: list[dict[str, Any]] = []

    def row(name: str, x: float | None, y: float | None) -> None:
        metrics.append({"metric": name, "before": x, "after": y, "delta": _delta(x, y)})

    row("rollouts", a["rollouts"], b["rollouts"])
    row("tasks", a["tasks"], b["tasks"])
    row("pass rate", a["pass_rate"], b["pass_rate"])
    row("mean reward", a["reward"]["mean"], b["reward"]["mean"])
    row("median reward", a["reward"]["median"], b["reward"]["median"])
    pa, pb = _pass_at_k_map(a), _pass_at_k_map(b)
    for k in sorted(set(pa) | set(pb)):
        row(f"pass@{k}", pa.get(k), pb.get(k))
    row("tasks all solved", a["tasks_all_solved"], b["tasks_all_solved"])
    row("tasks all failed", a["tasks_all_failed"], b["tasks_all_failed"])
    row("tasks zero variance", a["tasks_zero_variance"], b["tasks_zero_variance"])
    row("incomplete", a["incomplete"], b["incomplete"])
    row("failed", a["failed"], b["failed"])
    if a["length"]["unit"] == b["length"]["unit"]:
        row(f"mean length ({a['length']['unit']})", a["length"]["mean"], b["length"]["mean"])

    improved = regressed = unchanged = 0
    changes: list[dict[str, Any]] = []
    for key, tb in after.tasks.items():
        ta = before.tasks.get(key)
        if ta is None or not ta.n or not tb.n:  # a fully masked task has no pass rate to compare
            continue
        d = tb.pass_rate - ta.pass_rate
        if d > 1e-12:
            improved += 1
        elif d < -1e-12:
            regressed += 1
        else:
            unchanged += 1
        if abs(d) > 1e-12 or abs(tb.mean_reward - ta.mean_reward) > 1e-12:
            changes.append(
                {
                    "task": key,
                    "pass_rate_before": ta.pass_rate,
                    "pass_rate_after": tb.pass_rate,
                    "mean_reward_before": ta.mean_reward,
                    "mean_reward_after": tb.mean_reward,
                }
            )
    changes.sort(key=lambda c: -abs(c["pass_rate_after"] - c["pass_rate_before"]))
    return {
        "before": before.path,
        "after": after.path,
        "threshold": after.threshold,
        "metrics": metrics,
        "tasks": {
            "in_both": improved + regressed + unchanged,
            "only_before": sum(1 for k in before.tasks if k not in after.tasks),
            "only_after": sum(1 for k in after.tasks if k not in before.tasks),
            "improved": improved,
            "regressed": regressed,
            "unchanged": unchanged,
        },
        "top_changes": changes[:top],
    }


def short_task_label(key: str, width: int = 18) -> str:
    """A task key short enough for an axis label: the index keeps its agent prefix's start."""
    if len(key) <= width:
        return key
    head, sep, tail = key.rpartition("#") if "#" in key else key.rpartition("@")
    keep = max(width - len(sep + tail) - 1, 3)
    return f"{head[:keep]}…{sep}{tail}" if head else key[: width - 1] + "…"


def plot_stats(stats: RolloutStats, out: str | os.PathLike[str], against: RolloutStats | None = None) -> None:
    """Write a PNG: reward histogram and pass rate per task (sorted); `against` is drawn as 'before'.

    The file is written atomically and locked while written (`gymverl.files`); `out` must not be
    either rollout file (UsageError, exit 2). ImportError when matplotlib is missing.
    """
    from gymverl.errors import from_os_error
    from gymverl.files import atomic_path, check_outputs, output_lock

    check_outputs([out], [stats.path, against.path if against is not None else None])
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs: list[tuple[RolloutStats, str | None]] = [(against, "before"), (stats, "after")] if against else [(stats, None)]
    colors = ["#9aa5b1", "#2f6fb0"] if len(runs) == 2 else ["#2f6fb0"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 5), gridspec_kw={"width_ratios": [1, 1.3]})
    slot = 0.8 / len(runs)

    # Reward histogram: one bar per value when rewards are discrete (0/1, -1/0/1), else bins.
    discrete = [s.overall.reward.distinct() if s.overall else None for s, _ in runs]
    if all(d is not None for d in discrete):
        values = sorted({v for d in discrete if d for v in d})
        for i, ((s, label), d, color) in enumerate(zip(runs, discrete, colors)):
            xs = [j + (i - (len(runs) - 1) / 2) * slot for j in range(len(values))]
            counts = [(d or {}).get(v, 0) for v in values]
            bars = ax1.bar(xs, counts, width=slot * 0.95, color=color, label=label)
            ax1.bar_label(bars, fontsize=8)
        ax1.set_xticks(range(len(values)), [f"{v:g}" for v in values])
    else:
        lo = min((s.overall.reward.min for s, _ in runs if s.overall and s.overall.reward.min is not None), default=None)
        hi = max((s.overall.reward.max for s, _ in runs if s.overall and s.overall.reward.max is not None), default=None)
        edges = reward_edges(lo, hi, bins=20)
        width = (edges[1] - edges[0]) / len(runs)
        for i, ((s, label), color) in enumerate(zip(runs, colors)):
            assert s.overall is not None
            counts = s.overall.reward.histogram(edges)
            ax1.bar([e + i * width for e in edges[:-1]], counts, width=width * 0.95, align="edge", color=color, label=label)
        ax1.tick_params(axis="x", labelrotation=45)
    total = ", ".join(f"{s.overall.rollouts if s.overall else 0}" for s, _ in runs)
    ax1.set_title(f"reward histogram ({total} rollouts)")
    ax1.set_xlabel("reward")
    ax1.set_ylabel("rollouts")

    # Pass rate per task, sorted by the (after) pass rate; tasks matched by key when comparing.
    measured = [k for k, t in stats.tasks.items() if t.n]  # fully masked tasks have no pass rate
    order = sorted(measured, key=lambda k: (-stats.tasks[k].pass_rate, k))
    if against is not None:
        order += [k for k, t in against.tasks.items() if t.n and k not in stats.tasks]
    if len(order) <= 40:
        for i, ((s, label), color) in enumerate(zip(runs, colors)):
            xs = [j + (i - (len(runs) - 1) / 2) * slot for j in range(len(order))]
            rates = [s.tasks[k].pass_rate if k in s.tasks else 0.0 for k in order]
            bars = ax2.bar(xs, rates, width=slot * 0.95, color=color, label=label)
            if len(order) <= 20:
                ax2.bar_label(bars, labels=[f"{r:.2g}" for r in rates], fontsize=8)
        ax2.set_xticks(range(len(order)), [short_task_label(k) for k in order], rotation=35, ha="right", fontsize=8)
        ax2.set_xlabel("task")
    else:
        for (s, label), color in zip(runs, colors):
            rates = sorted((t.pass_rate for t in s.tasks.values() if t.n), reverse=True)
            ax2.step(range(len(rates)), rates, where="post", color=color, label=label)
        ax2.set_xlabel(f"tasks, sorted by pass rate ({len(stats.tasks)})")
    ax2.set_ylim(0, 1.1)
    ax2.set_ylabel("pass rate")
    ax2.set_title(f"pass rate per task (correct = reward >= {stats.threshold:g})")
    if against is not None:
        ax1.legend()
        ax2.legend()
    title = os.path.basename(str(stats.path))
    if against is not None:
        title = f"before: {os.path.basename(str(against.path))}   after: {title}"
    fig.suptitle(title)
    fig.tight_layout()
    try:
        with output_lock(out), atomic_path(out) as tmp:
            fig.savefig(tmp, format="png", dpi=100)
    except OSError as exc:  # name the plot, not its temp file
        raise from_os_error(exc, str(out)) from None
    finally:
        plt.close(fig)


__all__ = [
    "DEFAULT_THRESHOLD",
    "Distribution",
    "GroupStats",
    "RolloutStats",
    "TaskCounter",
    "compare_stats",
    "compute_stats",
    "group_of",
    "is_failed",
    "k_values",
    "pass_at_k",
    "pass_at_k_table",
    "pass_rate_buckets",
    "plot_stats",
    "response_chars",
    "short_task_label",
]
