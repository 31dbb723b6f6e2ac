"""`gymverl stats`: pass@k estimator, hand-computed statistics of sample_data/, CLI, plot, comparison."""

from __future__ import annotations

import importlib.util
import json
import math
import random
from fractions import Fraction
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from gymverl.cli import app
from gymverl.stats import (
    Distribution,
    compare_stats,
    compute_stats,
    k_values,
    pass_at_k,
    pass_rate_buckets,
    plot_stats,
    response_chars,
)

from conftest import SAMPLE_DATA

ROLLOUTS = SAMPLE_DATA / "rollouts.jsonl"
MATH = "math_with_judge_simple_agent"
FC = "xlam_fc_simple_agent"
runner = CliRunner()


def _exact_pass_at_k(n: int, c: int, k: int) -> Fraction:
    return 1 - Fraction(math.comb(n - c, k), math.comb(n, k))


def _generator():
    spec = importlib.util.spec_from_file_location("sample_generate", SAMPLE_DATA / "generate.py")
    mod = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(mod)
    return mod


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _rows() -> list[dict]:
    return [json.loads(line) for line in ROLLOUTS.read_text().splitlines()]


# ---- pass@k ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "c", "k", "expected"),
    [
        (4, 2, 1, 0.5),
        (4, 2, 2, 5 / 6),  # 1 - C(2,2)/C(4,2) = 1 - 1/6
        (4, 2, 4, 1.0),
        (4, 0, 1, 0.0),
        (4, 0, 4, 0.0),
        (4, 4, 1, 1.0),
        (4, 4, 4, 1.0),
        (4, 1, 2, 0.5),  # 1 - C(3,2)/C(4,2) = 1 - 3/6
        (10, 3, 5, 1 - 21 / 252),  # C(7,5)=21, C(10,5)=252
        (1, 1, 1, 1.0),
        (1, 0, 1, 0.0),
    ],
)
def test_pass_at_k_known_cases(n: int, c: int, k: int, expected: float) -> None:
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


@given(st.integers(1, 300).flatmap(lambda n: st.tuples(st.just(n), st.integers(0, n), st.integers(1, n))))
def test_pass_at_k_matches_exact_binomials(nck: tuple[int, int, int]) -> None:
    n, c, k = nck
    assert pass_at_k(n, c, k) == pytest.approx(float(_exact_pass_at_k(n, c, k)), abs=1e-9)


def test_pass_at_k_is_stable_for_large_n() -> None:
    # C(2000, 1000) overflows a float; the product form must not.
    value = pass_at_k(2000, 3, 1000)
    assert value == pytest.approx(float(_exact_pass_at_k(2000, 3, 1000)), rel=1e-9)
    assert 0.0 < value < 1.0
    assert pass_at_k(10_000, 1, 1) == pytest.approx(1e-4)


@pytest.mark.parametrize(("n", "c", "k"), [(4, 5, 1), (4, -1, 1), (4, 2, 0), (4, 2, 5)])
def test_pass_at_k_rejects_impossible_arguments(n: int, c: int, k: int) -> None:
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)


def test_k_values() -> None:
    assert k_values(1) == [1]
    assert k_values(4) == [1, 2, 4]
    assert k_values(5) == [1, 2, 4, 5]
    assert k_values(16) == [1, 2, 4, 8, 16]
    assert k_values(0) == []


# ---- sample_data, by hand ----------------------------------------------------------------------


def test_sample_data_overall_by_hand() -> None:
    # generate.py: task 0 4/4, task 1 2/4 (one truncated), task 2 0/4, task 3 3/4, task 4 2/4.
    d = compute_stats(ROLLOUTS).to_dict()
    o = d["overall"]
    assert (d["lines"], d["rejected"], o["rollouts"], o["tasks"], o["correct"]) == (20, 0, 20, 5, 11)
    assert o["pass_rate"] == pytest.approx(11 / 20)
    p = {r["k"]: r["pass_at_k"] for r in o["pass_at_k"]}
    assert sorted(p) == [1, 2, 4]
    assert p[1] == pytest.approx((1 + 0.5 + 0 + 0.75 + 0.5) / 5)
    assert p[2] == pytest.approx((1 + 5 / 6 + 0 + 1 + 5 / 6) / 5)  # c=3,n=4,k=2: n-c<k -> 1
    assert p[4] == pytest.approx(4 / 5)
    assert o["reward"]["mean"] == pytest.approx(0.55)
    assert o["reward"]["median"] == 1.0  # 9 zeros, 11 ones
    assert o["reward"]["min"] == 0.0 and o["reward"]["max"] == 1.0
    assert o["reward"]["values"] == {"0": 9, "1": 11}
    # Sample std (ddof=1), as NeMo Gym's `gym eval profile` (pandas DataFrame.std).
    assert o["reward"]["std"] == pytest.approx(math.sqrt(0.55 * 0.45 * 20 / 19))
    assert (o["tasks_all_solved"], o["tasks_all_failed"], o["tasks_zero_variance"]) == (1, 1, 2)
    assert (o["incomplete"], o["failed"], o["masked"]) == (1, 0, 0)
    assert o["rollouts_per_task"] == {"min": 4, "max": 4, "mean": 4.0}
    assert d["pass_rate_distribution"] == {
        "0": 1, "(0, 0.25)": 0, "[0.25, 0.5)": 0, "[0.5, 0.75)": 2, "[0.75, 1)": 1, "1": 1,
    }
    per_task = {r["task"]: (r["n"], r["correct"], r["incomplete"]) for r in d["per_task"]}
    assert per_task == {
        f"{MATH}#0": (4, 4, 0), f"{MATH}#1": (4, 2, 1), f"{MATH}#2": (4, 0, 0), f"{FC}#3": (4, 3, 0), f"{FC}#4": (4, 2, 0),
    }


def test_sample_data_matches_generator_tables() -> None:
    # Derive per-task pass rates from generate.py's own tables, independently of the JSONL.
    gen = _generator()
    expected = [sum(1 for s in samples if s[1] >= 1.0) for _, _, samples in gen.MATH_TASKS]
    expected += [sum(1 for s in samples if s[3] >= 1.0) for _, _, _, samples in gen.FC_TASKS]
    got = [r["correct"] for r in compute_stats(ROLLOUTS).per_task()]
    assert got == expected


def test_sample_data_groups_by_agent() -> None:
    groups = {g["name"]: g for g in compute_stats(ROLLOUTS).to_dict()["groups"]}
    assert set(groups) == {MATH, FC}
    m, f = groups[MATH], groups[FC]
    assert (m["rollouts"], m["tasks"], m["correct"], f["rollouts"], f["tasks"], f["correct"]) == (12, 3, 6, 8, 2, 5)
    pm = {r["k"]: r["pass_at_k"] for r in m["pass_at_k"]}
    pf = {r["k"]: r["pass_at_k"] for r in f["pass_at_k"]}
    assert pm[2] == pytest.approx((1 + 5 / 6 + 0) / 3)
    assert pf[2] == pytest.approx((1 + 5 / 6) / 2)
    assert m["reward"]["median"] == 0.5 and f["reward"]["median"] == 1.0
    assert (m["incomplete"], f["incomplete"]) == (1, 0)
    assert compute_stats(ROLLOUTS, group_by="none").to_dict()["groups"] == []


def test_sample_data_lengths_are_output_tokens() -> None:
    rows = _rows()
    tokens = sorted(r["response"]["usage"]["output_tokens"] for r in rows)
    ln = compute_stats(ROLLOUTS).to_dict()["overall"]["length"]
    assert ln["unit"] == "output_tokens"
    assert ln["min"] == tokens[0] and ln["max"] == tokens[-1]
    assert ln["mean"] == pytest.approx(sum(tokens) / 20)
    assert ln["median"] == pytest.approx((tokens[9] + tokens[10]) / 2)
    ok = [r["response"]["usage"]["output_tokens"] for r in rows if r["reward"] >= 1.0]
    assert ln["mean_correct"] == pytest.approx(sum(ok) / len(ok))


def test_lengths_fall_back_to_characters(tmp_path: Path) -> None:
    rows = _rows()
    del rows[0]["response"]["usage"]
    d = compute_stats(_write(tmp_path / "r.jsonl", rows)).to_dict()["overall"]["length"]
    assert d["unit"] == "characters"
    # rollout 0's only output is "$7 \\times 8 = 56$.\n\n\\boxed{56}"
    assert response_chars(rows[0]) == len("$7 \\times 8 = 56$.\n\n\\boxed{56}")
    # an xlam rollout: function name + arguments + final message, not the tool's output
    fc = rows[12]
    args = fc["response"]["output"][0]["arguments"]
    final = fc["response"]["output"][2]["content"][0]["text"]
    assert response_chars(fc) == len("get_weather") + len(args) + len(final)
    assert d["count"] == 20


def test_threshold_changes_what_counts_as_correct(tmp_path: Path) -> None:
    # blackjack-style rewards -1/0/1 on one task; and partial credit 0.5 on another.
    rows = _rows()[:8]
    for r, reward in zip(rows[:4], [-1.0, 0.0, 1.0, 1.0]):
        r["reward"] = reward
    for r, reward in zip(rows[4:], [0.5, 0.5, 0.0, 1.0]):
        r["reward"] = reward
    path = _write(tmp_path / "r.jsonl", rows)
    strict = compute_stats(path).per_task()
    assert [t["correct"] for t in strict] == [2, 1]
    loose = compute_stats(path, threshold=0.5).per_task()
    assert [t["correct"] for t in loose] == [2, 3]
    o = compute_stats(path).to_dict()["overall"]
    assert o["reward"]["min"] == -1.0
    assert o["reward"]["values"] == {"-1": 1, "0": 2, "0.5": 2, "1": 3}
    # rewards outside 0-1: histogram spans min..max and still counts every rollout
    assert sum(b["count"] for b in o["reward"]["histogram"]) == 8
    assert o["reward"]["histogram"][0]["lo"] == -1.0


def test_uneven_rollouts_per_task(tmp_path: Path) -> None:
    rows = _rows()
    # task 0 keeps 1 rollout, task 1 keeps 3 (2 correct), task 2 keeps 4 (0 correct)
    kept = [r for r in rows if (r["_ng_task_index"], r["_ng_rollout_index"]) in {(0, 0), (1, 0), (1, 1), (1, 2)}]
    kept += [r for r in rows if r["_ng_task_index"] == 2]
    o = compute_stats(_write(tmp_path / "r.jsonl", kept)).to_dict()["overall"]
    p = {r["k"]: (r["pass_at_k"], r["tasks"]) for r in o["pass_at_k"]}
    assert sorted(p) == [1, 2, 4]
    assert p[1][0] == pytest.approx((1 + 2 / 3 + 0) / 3) and p[1][1] == 3
    assert p[2][0] == pytest.approx((1 + 0) / 2) and p[2][1] == 2  # task 1: n=3,c=2,k=2 -> 1
    assert p[4] == (0.0, 1)
    assert o["tasks_single_rollout"] == 1


def test_rejected_lines_are_counted_and_reported(tmp_path: Path) -> None:
    lines = ROLLOUTS.read_text().splitlines()
    lines.insert(3, "{not json")
    lines.insert(7, json.dumps({"responses_create_params": {"input": "x"}, "response": {"output": []}}))
    path = tmp_path / "r.jsonl"
    path.write_text("\n".join(lines) + "\n")
    d = compute_stats(path).to_dict()
    assert (d["lines"], d["rejected"], d["overall"]["rollouts"]) == (22, 2, 20)
    assert [(r["line"], r["code"]) for r in d["rejections"]] == [(4, "invalid_json"), (8, "missing_key")]


def test_failures_are_counted(tmp_path: Path) -> None:
    rows = _rows()
    rows[0]["failure_kind"] = "timeout"
    rows[1]["response"]["error"] = {"code": "server_error", "message": "boom"}
    o = compute_stats(_write(tmp_path / "r.jsonl", rows)).to_dict()["overall"]
    assert o["failed"] == 2


def test_distribution_exact_and_sampled() -> None:
    d = Distribution()
    for x in [3, 1, 2, 2, 10]:
        d.add(x)
    assert d.exact and d.quantile(0.5) == 2 and d.quantile(0.0) == 1 and d.quantile(1.0) == 10
    import numpy as np

    for q in (0.1, 0.25, 0.75, 0.9, 0.99):
        assert d.quantile(q) == pytest.approx(float(np.quantile([3, 1, 2, 2, 10], q)))
    big = Distribution()
    big.MAX_DISTINCT = 1000  # type: ignore[misc]
    big.RESERVOIR = 500  # type: ignore[misc]
    rng = random.Random(1)
    values = [rng.random() for _ in range(20_000)]
    for v in values:
        big.add(v)
    assert not big.exact and len(big.sample) == 500
    assert big.count == 20_000 and big.mean == pytest.approx(sum(values) / 20_000)
    assert big.quantile(0.5) == pytest.approx(0.5, abs=0.08)
    assert sum(big.histogram([i / 10 for i in range(11)])) == pytest.approx(20_000, abs=20)


def test_pass_rate_buckets_edges() -> None:
    from gymverl.stats import TaskCounter

    tasks = [TaskCounter("g", n=8, correct=c) for c in (0, 1, 2, 4, 6, 7, 8)]
    assert pass_rate_buckets(tasks) == {
        "0": 1, "(0, 0.25)": 1, "[0.25, 0.5)": 1, "[0.5, 0.75)": 1, "[0.75, 1)": 2, "1": 1,
    }


def test_compare_before_after(tmp_path: Path) -> None:
    rows = _rows()
    for r in rows:
        if r["_ng_task_index"] == 2 and r["_ng_rollout_index"] < 2:
            r["reward"] = 1.0  # task 2: 0/4 -> 2/4
        if r["_ng_task_index"] == 3:
            r["reward"] = 0.0  # task 3: 3/4 -> 0/4
    after = compute_stats(_write(tmp_path / "after.jsonl", rows))
    cmp = compare_stats(compute_stats(ROLLOUTS), after)
    m = {x["metric"]: x for x in cmp["metrics"]}
    assert m["pass rate"]["before"] == pytest.approx(11 / 20)
    assert m["pass rate"]["after"] == pytest.approx(10 / 20)
    assert m["pass rate"]["delta"] == pytest.approx(-1 / 20)
    assert m["tasks all failed"]["before"] == 1 and m["tasks all failed"]["after"] == 1
    assert cmp["tasks"] == {"in_both": 5, "only_before": 0, "only_after": 0, "improved": 1, "regressed": 1, "unchanged": 3}
    assert [c["task"] for c in cmp["top_changes"]] == [f"{FC}#3", f"{MATH}#2"]


def test_streams_large_file_with_per_task_memory_only(tmp_path: Path) -> None:
    # 2000 rollouts over 50 tasks: everything is counted; nothing per rollout is kept.
    rows = [r for r in _rows() if r["agent_ref"]["name"] == MATH]
    path = tmp_path / "big.jsonl"
    with path.open("w") as f:
        for i in range(2000):
            # One prompt per task index (another prompt under an index would be another task).
            r = dict(rows[(i % 50) % len(rows)])
            r["_ng_task_index"] = i % 50
            r["_ng_rollout_index"] = i // 50
            f.write(json.dumps(r) + "\n")
    s = compute_stats(path)
    assert s.overall is not None and s.overall.rollouts == 2000 and len(s.tasks) == 50
    assert all(t.n == 40 for t in s.tasks.values())
    assert len(s.overall.reward.values or {}) == 2  # value counts, not a list of 2000 rewards


# ---- plot --------------------------------------------------------------------------------------


def test_plot_writes_png(tmp_path: Path) -> None:
    out = tmp_path / "plots" / "stats.png"
    s = compute_stats(ROLLOUTS)
    plot_stats(s, out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = _rows()
    for i, r in enumerate(rows):
        r["reward"] = (i % 7) / 6.5  # continuous rewards -> binned histogram
    plot_stats(compute_stats(_write(tmp_path / "c.jsonl", rows)), tmp_path / "c.png", against=s)
    assert (tmp_path / "c.png").stat().st_size > 1000
    assert not list(tmp_path.glob("**/.*.tmp"))


# ---- CLI ---------------------------------------------------------------------------------------


def test_cli_json() -> None:
    res = runner.invoke(app, ["stats", str(ROLLOUTS), "--json"])
    assert res.exit_code == 0, res.output
    d = json.loads(res.stdout)
    assert d["overall"]["pass_rate"] == pytest.approx(0.55)
    assert len(d["per_task"]) == 5
    assert [g["name"] for g in d["groups"]] == [MATH, FC]


def test_cli_tables_and_plot(tmp_path: Path) -> None:
    out = tmp_path / "s.png"
    res = runner.invoke(app, ["stats", str(ROLLOUTS), "--plot", str(out)], env={"COLUMNS": "160"})
    assert res.exit_code == 0, res.output
    for text in ("pass@2", "0.7333", "tasks all solved", "output tokens", f"{MATH}#1", "plot written to"):
        assert text in res.stdout
    assert out.exists()


def test_cli_against(tmp_path: Path) -> None:
    rows = _rows()
    for r in rows:
        r["reward"] = 1.0
    after = _write(tmp_path / "after.jsonl", rows)
    res = runner.invoke(app, ["stats", str(after), "--against", str(ROLLOUTS), "--json"])
    assert res.exit_code == 0, res.output
    d = json.loads(res.stdout)
    assert d["before"]["overall"]["pass_rate"] == pytest.approx(0.55)
    assert d["after"]["overall"]["pass_rate"] == 1.0
    assert d["comparison"]["tasks"]["improved"] == 4
    res = runner.invoke(app, ["stats", str(after), "--against", str(ROLLOUTS)], env={"COLUMNS": "160"})
    assert res.exit_code == 0 and "improved 4" in res.stdout


def test_cli_rejected_lines_exit_1(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    path.write_text(ROLLOUTS.read_text() + "[1, 2]\n")
    res = runner.invoke(app, ["stats", str(path)], env={"COLUMNS": "160"})
    assert res.exit_code == 1
    assert "21" in res.stdout and "not an object" in res.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["stats", "/nonexistent/r.jsonl"], "no such file"),
        (["stats", str(ROLLOUTS), "--plot", "out.svg"], ".png"),
        (["stats", str(ROLLOUTS), "--threshold", "nan"], "finite"),
        (["stats", str(ROLLOUTS), "--against", "/nonexistent/b.jsonl"], "no such file"),
    ],
)
def test_cli_usage_errors(args: list[str], message: str) -> None:
    res = runner.invoke(app, args)
    assert res.exit_code == 2
    assert message in res.stderr
    assert "Traceback" not in res.output


def test_cli_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_text("")
    res = runner.invoke(app, ["stats", str(path), "--json"])
    assert res.exit_code == 1
    assert json.loads(res.stdout)["overall"]["rollouts"] == 0


# ---- the real NeMo Gym rollouts (shared fixtures) -----------------------------------------------


def test_real_nemo_gym_rollouts(fixture_files: list[Path]) -> None:
    """Every real rollout file: all lines counted, numbers match a direct read of the file."""
    for path in fixture_files:
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        d = compute_stats(path).to_dict()
        o = d["overall"]
        assert (d["lines"], d["rejected"], o["rollouts"]) == (len(rows), 0, len(rows)), path.name
        assert sum(t["n"] for t in d["per_task"]) == len(rows)
        assert o["correct"] == sum(1 for r in rows if r["reward"] >= 1.0), path.name
        assert o["reward"]["mean"] == pytest.approx(sum(r["reward"] for r in rows) / len(rows))
        truncated = sum(
            1 for r in rows if r["response"].get("incomplete_details") or r["response"].get("status") not in (None, "completed")
        )
        assert o["incomplete"] == truncated, path.name
        with_usage = all(isinstance((r["response"].get("usage") or {}).get("output_tokens"), int) for r in rows)
        assert o["length"]["unit"] == ("output_tokens" if with_usage else "characters"), path.name
        p1 = next(p for p in o["pass_at_k"] if p["k"] == 1)["pass_at_k"]
        per_task = d["per_task"]
        assert p1 == pytest.approx(sum(t["correct"] / t["n"] for t in per_task) / len(per_task))


def test_real_blackjack_rewards_minus_one_to_one(fixture_files: list[Path]) -> None:
    path = next((p for p in fixture_files if p.name == "blackjack.jsonl"), None)
    assert path is not None
    rewards = [json.loads(line)["reward"] for line in path.read_text().splitlines()]
    o = compute_stats(path).to_dict()["overall"]
    assert o["reward"]["min"] == min(rewards) == -1.0
    assert o["correct"] == rewards.count(1.0)  # only wins count at the default threshold
    assert compute_stats(path, threshold=0.0).to_dict()["overall"]["correct"] == sum(1 for r in rewards if r >= 0)


def test_grouping_by_a_field_no_rollout_has_says_so() -> None:
    """`stats --group-by nosuchfield` gave one group, `"groups": []` and no warning: a misspelt
    field went unnoticed."""
    warned = compute_stats(ROLLOUTS, group_by="nosuchfield").to_dict()["warnings"]
    assert "no rollout (nor its task row) has a field 'nosuchfield': every rollout is in the group (missing)." in warned
    assert not any("has a field" in w for w in compute_stats(ROLLOUTS, group_by="expected_answer").to_dict()["warnings"])


def test_stats_on_a_tasks_file_says_it_is_one() -> None:
    # It printed an empty table and five "missing required key 'response'" lines, with no hint
    # (validate and to-parquet both say what the file is).
    res = runner.invoke(app, ["stats", str(SAMPLE_DATA / "tasks.jsonl")])
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert "looks like a NeMo Gym tasks file" in res.output and "gymverl collect" in res.output, res.output
    res = runner.invoke(app, ["stats", str(SAMPLE_DATA / "tasks.jsonl"), "--json"])
    assert any("looks like a NeMo Gym tasks file" in w for w in json.loads(res.stdout)["warnings"])


def test_reward_values_keep_every_distinct_reward_and_agree_with_validate(tmp_path: Path) -> None:
    """stats wrote reward values with `{x:g}` (6 digits): 0.1234561 and 0.1234564 became one key,
    the second count overwriting the first; validate wrote `str(x)` ("1.0" where stats wrote "1")."""
    from gymverl.records import validate_file

    rows = _rows()[:6]
    for r, reward in zip(rows, [0.1234561, 0.1234564, 1.0, 1.0, 0.0, 1e-07]):
        r["reward"] = reward
    path = _write(tmp_path / "r.jsonl", rows)
    want = {"0": 1, "1e-07": 1, "0.1234561": 1, "0.1234564": 1, "1": 2}
    assert compute_stats(path).to_dict()["overall"]["reward"]["values"] == want
    assert validate_file(path).to_dict()["reward"]["values"] == want
