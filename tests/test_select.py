"""Selection rules (gymverl.select): split by task, difficulty filters, dedup, best-of-n, dpo pairing."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import SAMPLE_DATA
from gymverl.select import (
    RULES,
    Member,
    SelectOptions,
    dedup_key,
    needs_grouping,
    pair_task,
    record_status,
    select_task,
    split_of,
    task_status,
)


def test_split_is_deterministic_and_close_to_the_fraction() -> None:
    keys = [f"agent#{i}" for i in range(20000)]
    first = [split_of(k, 0.1) for k in keys]
    assert first == [split_of(k, 0.1) for k in keys]  # same on every call / run
    share = first.count("val") / len(keys)
    assert 0.09 < share < 0.11
    assert all(split_of(k, 0.0) == "train" for k in keys[:100])
    # A different seed gives a different (but again deterministic) assignment.
    other = [split_of(k, 0.1, seed="other") for k in keys]
    assert other != first and 0.09 < other.count("val") / len(keys) < 0.11


def test_split_grows_monotonically_with_the_fraction() -> None:
    """A task in val at 5% stays in val at 20%: raising the fraction only moves tasks train -> val."""
    keys = [f"t{i}" for i in range(2000)]
    small = {k for k in keys if split_of(k, 0.05) == "val"}
    large = {k for k in keys if split_of(k, 0.2) == "val"}
    assert small and small < large


def test_record_status_order() -> None:
    opts = SelectOptions(min_reward=0.5)
    assert record_status(0.0, True, opts) == "incomplete"  # first rule wins
    assert record_status(0.0, False, opts) == "min_reward"
    assert record_status(0.7, False, opts) is None
    assert record_status(0.0, True, SelectOptions(drop_incomplete=False)) is None


def test_task_status_uses_threshold() -> None:
    ms = [Member(1, 1.0), Member(2, 1.0)]
    assert task_status(ms, SelectOptions(drop_solved=True)) == "solved"
    assert task_status(ms, SelectOptions(drop_unsolved=True)) is None
    assert task_status([Member(1, 0.9)], SelectOptions(drop_unsolved=True)) == "unsolved"
    assert task_status([Member(1, 0.9)], SelectOptions(drop_unsolved=True, solved_threshold=0.8)) is None
    # blackjack-style -1/1 rewards
    assert task_status([Member(1, -1.0), Member(2, 1.0)], SelectOptions(drop_solved=True, drop_unsolved=True)) is None


def test_task_level_rule_keeps_earlier_per_rollout_reason() -> None:
    ms = [Member(1, 0.0, status="incomplete"), Member(2, 0.0), Member(3, 0.0)]
    select_task(ms, SelectOptions(drop_unsolved=True))
    assert [m.status for m in ms] == ["incomplete", "unsolved", "unsolved"]


def test_dedup_then_best_of_n() -> None:
    ms = [Member(1, 0.5, dedup="a"), Member(2, 1.0, dedup="b"), Member(3, 1.0, dedup="b"), Member(4, 0.7, dedup="c"), Member(5, 1.0, dedup="d")]
    select_task(ms, SelectOptions(dedup=True, best_of_n=2))
    assert [m.status for m in ms] == ["best_of_n", None, "duplicate", "best_of_n", None]


def test_pairing_best_with_worst_and_margin() -> None:
    ms = [Member(1, 0.2), Member(2, 1.0), Member(3, 0.0), Member(4, 0.6)]
    pairs = pair_task(ms, SelectOptions(pairs_per_task=2))
    assert [(c.line, r.line) for c, r in pairs] == [(2, 3), (4, 1)]
    ms = [Member(1, 0.2), Member(2, 1.0), Member(3, 0.0), Member(4, 0.6)]
    pairs = pair_task(ms, SelectOptions(pairs_per_task=2, min_margin=0.5))
    assert [(c.line, r.line) for c, r in pairs] == [(2, 3)]
    assert [m.status for m in ms] == ["unpaired", None, None, "unpaired"]
    equal = [Member(1, 1.0), Member(2, 1.0)]
    assert pair_task(equal, SelectOptions()) == [] and all(m.status == "unpaired" for m in equal)


@settings(max_examples=200, deadline=None)
@given(rewards=st.lists(st.sampled_from([0.0, 0.25, 0.5, 1.0]), min_size=1, max_size=12), k=st.integers(1, 5))
def test_best_of_n_keeps_the_top_k(rewards: list[float], k: int) -> None:
    ms = [Member(i, r) for i, r in enumerate(rewards)]
    select_task(ms, SelectOptions(best_of_n=k))
    kept = [m for m in ms if m.status is None]
    dropped = [m for m in ms if m.status is not None]
    assert len(kept) == min(k, len(rewards))
    assert all(d.status == "best_of_n" for d in dropped)
    if dropped:
        assert min(m.reward for m in kept) >= max(m.reward for m in dropped)


def test_dedup_key_ignores_ids_but_not_content() -> None:
    recs = [json.loads(line) for line in (SAMPLE_DATA / "rollouts.jsonl").read_text().splitlines()]
    fc = [r for r in recs if r["responses_create_params"].get("tools")]
    a = fc[0]
    b = json.loads(json.dumps(a))
    for item in b["response"]["output"]:
        if "call_id" in item:
            item["call_id"] = "call_other"
        if "id" in item:
            item["id"] = "other"
    assert dedup_key(a) == dedup_key(b)
    c = json.loads(json.dumps(a))
    c["response"]["output"][-1]["content"][0]["text"] += " (different)"
    assert dedup_key(a) != dedup_key(c)


def test_needs_grouping() -> None:
    assert not needs_grouping("sft", SelectOptions(min_reward=1.0))
    assert needs_grouping("sft", SelectOptions(best_of_n=1))
    assert needs_grouping("rl", SelectOptions()) and not needs_grouping("rl", SelectOptions(), tasks_input=True)
    assert needs_grouping("dpo", SelectOptions())


def test_option_checks() -> None:
    with pytest.raises(ValueError, match="val-fraction"):
        SelectOptions(val_fraction=1.0).check()
    with pytest.raises(ValueError, match="best-of-n"):
        SelectOptions(best_of_n=0).check()
    assert set(RULES) >= {"incomplete", "min_reward", "max_tokens", "solved", "unsolved", "duplicate", "best_of_n", "unpaired"}
