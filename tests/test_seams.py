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
