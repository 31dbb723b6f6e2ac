"""Rejection sampling: which rollouts become rows. Pure decisions over small per-rollout facts.

Rules run in a fixed order and a rollout is counted under the first rule that removes it, so the
summary adds up to the input:
per rollout  `masked` -> `repeated_rollout` -> `incomplete` -> `malformed_tool_call` -> `empty_answer`
             -> `min_reward` -> `max_tokens`;
per task     `solved` / `unsolved` (judged on *all* valid rollouts of the task, so a reward
             threshold cannot make a task look solved) -> `duplicate` -> `best_of_n` -> `unpaired` (dpo).
The train/val split is a hash of the task key: deterministic, identical on every run and machine,
and never puts one task in both splits.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any, Iterable

from gymverl.jsonl import dumps

from gymverl.messages import response_messages

# Rule code -> what the summary says about it, in the order the rules are applied.
RULES: dict[str, str] = {
    "masked": "mask_sample: true, not a valid measurement (NeMo Gym >= 0.5; --keep-masked keeps them)",
    "repeated_rollout": "the same (task, repeat) as an earlier line of the file",
    "incomplete": "response incomplete (cut off before it finished)",
    "malformed_tool_call": "a tool call whose arguments are not a JSON object, which training would teach (--keep-malformed-calls keeps them)",
    "empty_answer": "no final answer: the response ends in an empty message or has reasoning only (--keep-empty-answers keeps them)",
    "min_reward": "reward below --min-reward",
    "max_tokens": "longer than --max-tokens",
    "solved": "task solved by every rollout (--drop-solved)",
    "unsolved": "task solved by no rollout (--drop-unsolved)",
    "duplicate": "same response as another rollout of the task (--dedup)",
    "best_of_n": "not among the best --best-of-n of its task",
    "unpaired": "in no preference pair: nothing to pair with at the required margin, or past --pairs-per-task (dpo)",
}
TASK_RULES = ("max_tokens", "solved", "unsolved")
_NOT_MEASURED = ("masked", "repeated_rollout")


@dataclass
class SelectOptions:
    """Selection settings shared by all formats (see `RULES`)."""

    min_reward: float | None = None
    best_of_n: int | None = None
    drop_solved: bool = False
    drop_unsolved: bool = False
    dedup: bool = False
    max_tokens: int | None = None
    drop_incomplete: bool = True
    # NeMo Gym >= 0.5 marks rollouts whose reward is not a valid measurement (judge failed, session
    # lost, ...) with `mask_sample: true`; `gym eval profile` leaves them out, NeMo RL zeroes their loss.
    drop_masked: bool = True
    # NeMo Gym's simple agent hands a malformed call's parse error back to the model and goes on, so
    # rollouts (even rewarded ones) contain calls the model should not learn; sft/dpo drop them.
    drop_malformed_calls: bool = True
    # A response with no final answer ("" or reasoning only) teaches stopping without answering.
    drop_empty_answers: bool = True
    # A rollout "solves" its task when reward >= this (1.0 fits 0/1 verifiers and blackjack's -1/1).
    solved_threshold: float = 1.0
    val_fraction: float = 0.0
    split_seed: str = "gymverl"
    pairs_per_task: int = 1
    min_margin: float = 0.0

    def check(self) -> None:
        """Raise ValueError (one sentence) on settings that cannot work."""
        # NaN compares false with everything: a NaN threshold would silently filter nothing.
        for name, value in (("--min-reward", self.min_reward), ("--solved-threshold", self.solved_threshold),
                            ("--min-margin", self.min_margin), ("--val-fraction", self.val_fraction)):
            if value is not None and not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, not {value}.")
        if self.best_of_n is not None and self.best_of_n < 1:
            raise ValueError("--best-of-n must be at least 1.")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError("--val-fraction must be at least 0 and below 1.")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ValueError("--max-tokens must be at least 1.")
        if self.pairs_per_task < 1:
            raise ValueError("--pairs-per-task must be at least 1.")
        if self.min_margin < 0:
            raise ValueError("--min-margin must not be negative.")


def split_of(task_key: str, val_fraction: float, seed: str = "gymverl") -> str:
    """'val' or 'train' for a task: a stable hash of (seed, task key), so every run agrees."""
    if val_fraction <= 0.0:
        return "train"
    digest = hashlib.blake2b(f"{seed}\x00{task_key}".encode(), digest_size=8).digest()
    u = int.from_bytes(digest, "big") / 2**64
    return "val" if u < val_fraction else "train"


def needs_grouping(fmt: str, opts: SelectOptions, *, tasks_input: bool = False) -> bool:
    """True when rows depend on other rollouts of the same task (so the input is grouped first)."""
    if fmt == "rl":
        return not tasks_input
    if fmt == "dpo":
        return True
    return bool(opts.best_of_n or opts.drop_solved or opts.drop_unsolved or opts.dedup)


def record_status(
    reward: float, incomplete: bool, opts: SelectOptions, masked: bool = False, malformed: int = 0, empty: bool = False
) -> str | None:
    """The first per-rollout rule that removes this rollout (None: keep); `max_tokens` is checked separately.

    `masked`: the rollout has `mask_sample: true` (dropped unless `opts.drop_masked` is off);
    `malformed`: its count of tool calls whose arguments are not a JSON object
    (`records.malformed_calls`); `empty`: it ends without a final answer (`records.empty_answer`).
    """
    if masked and opts.drop_masked:
        return "masked"
    if opts.drop_incomplete and incomplete:
        return "incomplete"
    if malformed and opts.drop_malformed_calls:
        return "malformed_tool_call"
    if empty and opts.drop_empty_answers:
        return "empty_answer"
    if opts.min_reward is not None and reward < opts.min_reward:
        return "min_reward"
    return None


def dedup_key(record: dict[str, Any]) -> str:
    """A hash of the response as chat messages without call ids (which differ between identical answers)."""
    try:
        msgs = response_messages(record)
    except Exception:  # noqa: BLE001 - unconvertible responses are reported by the row builder
        msgs = record.get("response", {}).get("output")
    for m in msgs or []:
        if isinstance(m, dict):
            m.pop("tool_call_id", None)
            m.pop("id", None)
            for tc in m.get("tool_calls") or []:
                if isinstance(tc, dict):
                    tc.pop("id", None)
    return hashlib.blake2b(dumps(msgs, sort_keys=True), digest_size=8).hexdigest()


@dataclass(slots=True)
class Member:
    """What selection needs to know about one valid rollout of a task."""

    line: int
    reward: float
    status: str | None = None  # None: still kept; else the RULES code that removed it
    dedup: str | None = None
    slot: int = -1  # where the converter keeps this rollout's row payload
    rollout: int | None = None  # `_ng_rollout_index`, when recorded
    prompt: int | None = None  # a fingerprint of its prompt (`convert.grouped._PromptPrints`): equal prompts, equal prints


def task_status(members: Iterable[Member], opts: SelectOptions) -> str | None:
    """'solved' / 'unsolved' when the task-level difficulty filter drops the task, else None.

    Judged on every valid rollout of the task except those that are no measurement at all
    (masked, or a repeated line of the same rollout).
    """
    if not (opts.drop_solved or opts.drop_unsolved):
        return None
    rewards = [m.reward for m in members if m.status not in _NOT_MEASURED]
    if not rewards:
        return None
    solved = [r >= opts.solved_threshold for r in rewards]
    if opts.drop_solved and all(solved):
        return "solved"
    if opts.drop_unsolved and not any(solved):
        return "unsolved"
    return None


def select_task(members: list[Member], opts: SelectOptions) -> None:
    """Apply the task-level rules to one task's members in place (status set on removed ones)."""
    verdict = task_status(members, opts)
    if verdict:
        for m in members:
            if m.status is None:
                m.status = verdict
        return
    live = [m for m in members if m.status is None]
    if opts.dedup:
        seen: set[str] = set()
        for m in live:
            if m.dedup is not None and m.dedup in seen:
                m.status = "duplicate"
            elif m.dedup is not None:
                seen.add(m.dedup)
        live = [m for m in live if m.status is None]
    if opts.best_of_n is not None and len(live) > opts.best_of_n:
        # Highest reward first; ties keep input order, so reruns pick the same rollouts.
        ranked = sorted(live, key=lambda m: (-m.reward, m.line))
        for m in ranked[opts.best_of_n :]:
            m.status = "best_of_n"


def pair_task(members: list[Member], opts: SelectOptions) -> list[tuple[Member, Member]]:
    """Preference pairs from a task's kept members: best with worst, second best with second worst, ...

    A pair needs a reward margin above 0 and at least `min_margin`; members left over are marked 'unpaired'.
    """
    live = sorted((m for m in members if m.status is None), key=lambda m: (-m.reward, m.line))
    pairs: list[tuple[Member, Member]] = []
    lo, hi = 0, len(live) - 1
    while lo < hi and len(pairs) < opts.pairs_per_task:
        chosen, rejected = live[lo], live[hi]
        margin = chosen.reward - rejected.reward
        if margin <= 0 or margin < opts.min_margin:
            break
        pairs.append((chosen, rejected))
        lo, hi = lo + 1, hi - 1
    used = {id(m) for p in pairs for m in p}
    for m in live:
        if id(m) not in used:
            m.status = "unpaired"
    return pairs
