"""The library's shared seams (issue 13): one rejection tally, one reward histogram, one progress shape."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import orjson
import pytest

from gymverl.collect import CollectError, check_tasks
from gymverl.convert import ConvertSummary
from gymverl.jsonl import MAX_SHOWN, Tally
from gymverl.records import ValidationSummary, validate_file
from gymverl.rescore import RescoreSummary
from gymverl.stats import RolloutStats, compute_stats


def test_tally_counts_all_and_keeps_the_first_limit():
    t = Tally(limit=3)
    for i in range(7):
        t.reject(i + 1, "bad" if i % 2 else "worse", f"reason {i}")
    t.add(None, {"line": 99})  # counted, not by code
    assert t.count == 8
    assert t.by_code == Counter({"worse": 4, "bad": 3})
    assert t.by_code_desc() == {"worse": 4, "bad": 3}
    assert [e["line"] for e in t.shown] == [1, 2, 3]
    assert t.shown[0] == {"line": 1, "code": "worse", "reason": "reason 0"}


def _bad_lines(path: Path, n: int) -> Path:
    path.write_bytes(b"not json\n" * n)
    return path


def test_every_report_keeps_the_same_first_rejections(tmp_path):
    """validate, stats, to-parquet's summary, collect's task check and rescore all count every
    rejection and show the first MAX_SHOWN (20): one Tally, one limit."""
    n = MAX_SHOWN + 5
    p = _bad_lines(tmp_path / "bad.jsonl", n)
    v = validate_file(p)
    s = compute_stats(p)
    assert (v.rejected, s.rejected) == (n, n)
    assert len(v.rejections) == len(s.rejections) == MAX_SHOWN
    assert v.first_rejections == v.rejections == s.rejections
    assert v.to_dict()["rejections"] == s.to_dict()["rejections"] and v.to_dict()["rejected_by_reason"] == {"invalid_json": n}
    with pytest.raises(CollectError) as exc:
        check_tasks(p)
    assert len(exc.value.details) == MAX_SHOWN and exc.value.details == v.rejections
    c = ConvertSummary("in", None, "sft")
    for e in v.rejections + [{"line": 99, "code": "x", "reason": "y"}] * 5:
        c.reject(e["line"], e["code"], e["reason"])
    assert c.rejected == n and c.rejections == v.rejections and c.to_dict()["rejected_by_reason"] == {"invalid_json": MAX_SHOWN, "x": 5}
    r = RescoreSummary("i", "o", "f")
    for i in range(n):
        r.add_failure({"line": i + 1, "kind": "invalid", "reason": "invalid_json"})
        r.note_pair({"_ng_task_index": 0, "_ng_rollout_index": 0}, line=i + 1)
    assert r.rejected == n and len(r.examples) == MAX_SHOWN
    assert r.duplicate_pairs == n - 1 and len(r.duplicate_examples) == MAX_SHOWN


def test_report_counts_stay_settable():
    # Reports filled in by hand (tests, merged parts) still set `rejected`.
    v = ValidationSummary("x")
    v.rejected = 3
    assert v.rejected == 3 == v.rejects.count
    s = RolloutStats("x")
    assert s.rejected == 0 and s.rejections == []


# ---- one reward histogram ----------------------------------------------------------------------

SAMPLE = Path(__file__).resolve().parent.parent / "sample_data" / "rollouts.jsonl"
# Bin edges and the floats next to them; 0.3 * 3 == 0.8999999999999999 lies below 0.9.
EDGE_REWARDS = [0.0, 0.1, 0.3 * 3, 0.9, 1.0, 0.5, 0.49999999999999994, 0.7, 0.1 * 7, 0.2, 1.0, 0.0]


def _with_rewards(path: Path, rewards: list[float]) -> Path:
    base = [orjson.loads(x) for x in SAMPLE.read_bytes().splitlines() if x.strip()]
    rows = []
    for i, r in enumerate(rewards):
        # Each line its own (task, rollout): stats counts a repeated pair once.
        row = dict(base[i % len(base)], reward=r, _ng_task_index=i, _ng_rollout_index=0)
        row.pop("mask_sample", None)
        rows.append(orjson.dumps(row))
    path.write_bytes(b"\n".join(rows) + b"\n")
    return path


def _validate_hist(path: Path) -> list[int]:
    return list(validate_file(path).to_dict()["reward"]["histogram"].values())


def _stats_hist(path: Path) -> list[int]:
    bins = compute_stats(path).to_dict()["overall"]["reward"]["histogram"]
    return [b["count"] for b in bins]


def test_reward_bin_edges():
    from gymverl.records import REWARD_EDGES, reward_bin

    assert reward_bin(0.0) == 0 and reward_bin(0.1) == 1 and reward_bin(1.0) == 9
    assert reward_bin(0.3 * 3) == 8 and reward_bin(0.9) == 9
    assert reward_bin(-0.01) is None and reward_bin(1.01) is None and reward_bin(float("nan")) is None
    assert reward_bin(5.0, [0.0, 2.5, 5.0]) == 1
    assert [reward_bin(e) for e in REWARD_EDGES] == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9]


@pytest.mark.parametrize("rewards", [EDGE_REWARDS, [i / 37 for i in range(38)], [1.0] * 5])
def test_validate_and_stats_histograms_agree(tmp_path, rewards):
    """Same file, same rewards in [0, 1], nothing masked: validate and stats bin alike."""
    p = _with_rewards(tmp_path / "r.jsonl", rewards)
    v, s = _validate_hist(p), _stats_hist(p)
    assert v == s and sum(v) == len(rewards)
    labels = list(validate_file(p).to_dict()["reward"]["histogram"])
    bins = compute_stats(p).to_dict()["overall"]["reward"]["histogram"]
    assert labels == [f"{b['lo']:.1f}-{b['hi']:.1f}" for b in bins]


def test_sample_data_histograms_agree():
    rows = [orjson.loads(x) for x in SAMPLE.read_bytes().splitlines() if x.strip()]
    assert not any(r.get("mask_sample") for r in rows)  # stats leaves masked rollouts out; validate counts them
    assert _validate_hist(SAMPLE) == _stats_hist(SAMPLE)


# ---- one copy of each helper and constant ------------------------------------------------------


def test_one_jsonable_and_shared_constants():
    import math

    from gymverl import demo, jsonl, preview, reward, runner, verl_data
    from gymverl.formats import decode_json, decode_row, fast, rl
    from gymverl.limits import DEFAULT_CONCURRENCY

    assert demo.jsonable is runner.jsonable is jsonl.jsonable
    assert jsonl.jsonable({1: (Path("a"), math.nan, 0.5)}) == {"1": ["a", None, 0.5]}
    assert (preview.TOOLS_AGENT, preview.STOCK_AGENT) == (rl.TOOLS_AGENT, rl.STOCK_AGENT)
    # (the fast readers keep no copy of the byte order mark: msgspec refuses a line starting with one)
    assert not hasattr(fast, "UTF8_BOM") and reward.DEFAULT_CONCURRENCY == DEFAULT_CONCURRENCY
    assert verl_data.decode_row is decode_row and verl_data.decode_json is decode_json
    assert decode_row({"messages": '[{"role": "user", "content": "hi"}]', "chosen": ['{"role": "assistant"}'], "x": "1"}) == {
        "messages": [{"role": "user", "content": "hi"}], "chosen": [{"role": "assistant"}], "x": "1"}


# ---- one progress shape ------------------------------------------------------------------------


def _big(tmp_path: Path, n: int = 5000) -> Path:
    """The sample rollouts repeated to `n` lines, each its own rollout (a repeated (task, rollout)
    pair would send sft through the grouped conversion, a second pass)."""
    import json

    lines = [json.loads(x) for x in SAMPLE.read_bytes().splitlines() if x.strip()]
    p = tmp_path / "big.jsonl"
    p.write_text("".join(json.dumps({**lines[i % len(lines)], "_ng_rollout_index": i}) + "\n" for i in range(n)))
    return p


def test_validate_stats_and_convert_report_the_same_progress_events(tmp_path):
    from gymverl.convert import ConvertOptions, convert
    from gymverl.progress import BYTES, ProgressEvent

    p = _big(tmp_path)
    size = p.stat().st_size
    seen: dict[str, list[ProgressEvent]] = {"validate": [], "stats": [], "convert": []}
    validate_file(p, on_progress=seen["validate"].append)
    compute_stats(p, on_progress=seen["stats"].append)
    convert(p, tmp_path / "out", ConvertOptions(fmt="sft"), on_progress=seen["convert"].append)
    for name, events in seen.items():
        assert all(type(e) is ProgressEvent and e.unit == BYTES and e.total == size for e in events), name
        done = [e.done for e in events]
        assert len(done) >= 3 and done == sorted(done) and done[-1] == size, name
    assert seen["validate"] == seen["stats"] == seen["convert"]  # same file, same reporting points


def test_progress_callback_leaves_results_alone(tmp_path):
    p = _big(tmp_path, 2100)
    assert validate_file(p, on_progress=lambda e: None).to_dict() == validate_file(p).to_dict()
    assert compute_stats(p, on_progress=lambda e: None).to_dict() == compute_stats(p).to_dict()


def test_cli_progress_helper_draws_events():
    import io

    from rich.console import Console

    from gymverl.cli import _progress
    from gymverl.progress import ROWS, ProgressEvent

    progress, on_progress = _progress("[bold]x[/]", console=Console(file=io.StringIO()))
    (task,) = progress.tasks
    on_progress(ProgressEvent(10, 100))
    assert (task.completed, task.total, task.fields["failed"]) == (10, 100, "")
    on_progress(ProgressEvent(20, 100, rows=7, new_rows=3, failed=2))
    assert (task.completed, task.fields["rows"], task.fields["failed"]) == (20, 7, "2 failed") and task.fields["rate"] == "0"
    on_progress(ProgressEvent(5, None, ROWS))  # an unknown total leaves the bar's as it was (rich)
    assert (task.completed, task.total) == (5, 100)
