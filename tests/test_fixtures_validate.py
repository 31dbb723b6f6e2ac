"""Real data: every shared NeMo Gym rollout fixture and sample_data/ validates with 0 rejections."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from conftest import SAMPLE_DATA, fixture_params
from gymverl.cli import app
from gymverl.records import iter_checked, validate_file

runner = CliRunner()


def _lines(path) -> int:
    return len(path.read_bytes().splitlines())


def test_fixtures_are_present(fixture_files):
    assert len(fixture_files) >= 10


@pytest.mark.parametrize("path", fixture_params("name"))
def test_shared_fixture_validates(path, tmp_path):
    rejects = tmp_path / "rejects.jsonl"
    s = validate_file(path, rejects=rejects)
    assert (s.lines, s.rejected) == (_lines(path), 0), s.first_rejections
    assert s.valid == s.lines > 0
    assert rejects.read_bytes() == b""
    r = runner.invoke(app, ["validate", str(path), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["valid"] == s.lines
    # Records come through unchanged: every key NeMo Gym wrote is still there.
    for c, raw in zip(iter_checked(path), path.read_bytes().splitlines()):
        assert c.record == json.loads(raw)


def test_sample_rollouts_validate():
    path = SAMPLE_DATA / "rollouts.jsonl"
    r = runner.invoke(app, ["validate", str(path), "--json"])
    assert r.exit_code == 0, r.output
    s = json.loads(r.stdout)
    assert (s["lines"], s["valid"], s["rejected"]) == (_lines(path), _lines(path), 0)
    assert s["tasks"] == 5 and s["rollouts_per_task"]["distribution"] == {"4": 5}
    assert s["incomplete"] == 1


def test_sample_tasks_validate_with_tasks_flag():
    path = SAMPLE_DATA / "tasks.jsonl"
    r = runner.invoke(app, ["validate", str(path), "--tasks", "--json"])
    assert r.exit_code == 0, r.output
    s = json.loads(r.stdout)
    assert (s["lines"], s["valid"], s["rejected"]) == (_lines(path), 5, 0)


def test_bench_validate_runs_and_both_validators_agree():
    import subprocess
    import sys

    from conftest import REPO

    r = subprocess.run(
        [sys.executable, str(REPO / "bench" / "validate.py"), "--lines", "400", "--json"],
        capture_output=True, text=True, timeout=300,
    )
    assert r.returncode in (0, 1), r.stderr  # 1 only says a speed target was missed on this tiny file
    report = json.loads(r.stdout)
    assert report["counts_agree"] is True
    for res in report["results"].values():
        assert res["valid"] + res["rejected"] == 400
        assert res["rejected"] == report["broken_lines"]
