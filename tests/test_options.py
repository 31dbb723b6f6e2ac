"""Numeric options of every command: NaN, infinities and out-of-range values are one sentence, exit 2.

The options are found in the Typer app itself (the click parameters typer builds), so a numeric
option added later is checked without anyone listing it here: it must carry the shared `number()`
callback, and NaN / inf / -inf (and -1 where -1 is out of range) must be refused before the command
runs (fault: non-finite-numeric-options).
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from conftest import SHARED
from gymverl.cli import Bounds, app, option_bounds

runner = CliRunner(env={"COLUMNS": "300", "NO_COLOR": "1", "TERM": "dumb"})

# Options whose range includes -1 (a reward threshold may be negative: blackjack rewards -1/0/1;
# --save-freq -1 means "only at the end"). Anything else accepting -1 must be added here on purpose.
NEGATIVE_OK = {"--threshold", "--min-reward", "--solved-threshold", "--save-freq"}


def _kind(param: Any) -> Any:
    """int, float or something else: the option's annotation (Optional[...] already unwrapped)."""
    return getattr(getattr(param, "type_descriptor", None), "annotation", None)


def _numeric_params() -> list[tuple[str, Any]]:
    # typer builds its commands on its own copy of click: duck-typed, not isinstance.
    group = typer.main.get_command(app)
    found = []
    for name, cmd in sorted(group.commands.items()):  # type: ignore[attr-defined]
        for param in cmd.params:
            if getattr(param, "param_type_name", "") != "option":
                continue
            if _kind(param) in (int, float):
                found.append((name, param))
    return found


NUMERIC = _numeric_params()
IDS = [f"{c}:{max(p.opts, key=len)}" for c, p in NUMERIC]


def test_every_command_with_numeric_options_is_covered():
    commands = {c for c, _ in NUMERIC}
    # demo has no numeric option; every other command has some.
    assert commands == {"collect", "preview", "rescore", "stats", "to-parquet", "train-offline", "train-online", "validate"}
    assert len(NUMERIC) >= 30


@pytest.mark.parametrize("command, param", NUMERIC, ids=IDS)
def test_numeric_option_uses_the_shared_callback(command, param):
    bounds = option_bounds(param)
    assert isinstance(bounds, Bounds), f"{command} {param.opts}: numeric option without gymverl.cli.number()"
    # click's own min=/max= would answer before the callback, in another format.
    assert param.min is None and param.max is None, f"{command} {param.opts}: use number(min=, max=), not min=/max="
    if param.default is not None and not callable(param.default):
        assert bounds.accepts(param.default), f"{command} {param.opts}: default {param.default} out of its own range"
    name = max(param.opts, key=len)
    assert bounds.accepts(-1) == (name in NEGATIVE_OK), f"{command} {name}: -1 accepted={bounds.accepts(-1)}"


def _args_for(command: str) -> list[str]:
    """Whatever the command needs to get to parsing the option (paths need not exist: the option
    is checked while parsing, before the command runs)."""
    return {
        "validate": ["in.jsonl"],
        "stats": ["in.jsonl"],
        "to-parquet": ["in.jsonl", "-o", "out"],
        "rescore": ["in.jsonl", "-o", "out.jsonl", "-s", "http://127.0.0.1:9"],
        "collect": ["-i", "tasks.jsonl", "-o", "out.jsonl"],
        "train-offline": ["data.parquet", "-m", "model", "-o", "out"],
        "preview": ["data.parquet", "-t", "tokenizer"],
        "train-online": ["data.parquet", "-m", "model", "-o", "out", "--server", "http://127.0.0.1:9", "--dry-run"],
    }[command]


@pytest.mark.parametrize("command, param", NUMERIC, ids=IDS)
def test_nan_inf_and_out_of_range_are_one_sentence_exit_2(command, param, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    name = max(param.opts, key=len)
    bounds = option_bounds(param)
    assert bounds is not None
    values = ["nan", "inf", "-inf", "1e999"]
    if not bounds.accepts(-1):
        values.append("-1")
    for value in values:
        r = runner.invoke(app, [command, *_args_for(command), name, value])
        assert r.exit_code == 2, (command, name, value, r.output)
        assert r.exception is None or isinstance(r.exception, SystemExit), (command, name, value, r.exception)
        out = r.stderr.strip()
        assert "Traceback" not in r.output
        if _kind(param) is int and value in ("nan", "inf", "-inf", "1e999"):
            assert "valid integer" in r.output, r.output  # not a number at all: the parser's usage error
            continue
        assert out.startswith(f"error: {name} must be ") and out.endswith(".") and "\n" not in out, out
        assert list(tmp_path.iterdir()) == [], "nothing may be written for a bad option"


@pytest.mark.parametrize(
    "bounds, good, bad, text",
    [
        (Bounds(above=0, unit="seconds"), [0.001, 1e9], [0, -1, math.nan, math.inf], "above 0 seconds"),
        (Bounds(0, 1), [0, 0.5, 1], [-0.01, 1.01, math.nan], "between 0 and 1"),
        (Bounds(1, also=(-1,)), [1, 5, -1], [0, -2], "at least 1 (or -1)"),
        (Bounds(), [-1e300, 0, 1e300], [math.nan, math.inf, -math.inf], "a finite number"),
    ],
)
def test_bounds(bounds, good, bad, text):
    assert all(bounds.accepts(v) for v in good)
    assert not any(bounds.accepts(v) for v in bad)
    assert bounds.describe() == text


def test_case_non_finite_numeric_options(tmp_path):
    """The shared case's commands: each now one sentence, exit 2, before anything runs."""
    case = SHARED / "cases" / "non-finite-numeric-options" / "rollouts.jsonl"
    if not case.exists():
        pytest.skip(f"shared case not found: {case}")
    cases = [
        (["validate", str(case), "--max-line-mb", "nan"], "error: --max-line-mb must be a finite number (above 0 and at most 100000 MB), not nan."),
        (["validate", str(case), "--max-line-mb", "inf"], "error: --max-line-mb must be a finite number (above 0 and at most 100000 MB), not inf."),
        (["to-parquet", str(case), "-o", str(tmp_path / "o"), "--max-line-mb", "nan"], "error: --max-line-mb must be a finite number (above 0 and at most 100000 MB), not nan."),
        (["rescore", str(case), "-o", str(tmp_path / "r.jsonl"), "-s", "http://127.0.0.1:9", "--timeout", "inf"],
         "error: --timeout must be a finite number (above 0 and at most 604800 seconds), not inf."),
        (["to-parquet", str(case), "-o", str(tmp_path / "o"), "--min-reward", "nan"], "error: --min-reward must be a finite number, not nan."),
        (["to-parquet", str(case), "-o", str(tmp_path / "o"), "--format", "rl", "--drop-solved", "--solved-threshold", "nan"],
         "error: --solved-threshold must be a finite number, not nan."),
        (["stats", str(case), "--threshold", "nan"], "error: --threshold must be a finite number, not nan."),
    ]
    for args, message in cases:
        r = runner.invoke(app, args)
        assert r.exit_code == 2 and r.stderr.strip() == message, (args, r.output)
    assert list(tmp_path.iterdir()) == []


def test_library_callers_get_usage_errors_for_non_finite_values(tmp_path):
    """Library users bypass the CLI: the same values are refused there (UsageError, one sentence)."""
    from gymverl.convert import ConvertOptions, convert
    from gymverl.errors import UsageError
    from gymverl.select import SelectOptions
    from gymverl.verify import VerifyClient

    src = tmp_path / "in.jsonl"
    src.write_text("{}\n")
    for select in (SelectOptions(min_reward=math.nan), SelectOptions(solved_threshold=math.nan, drop_solved=True),
                   SelectOptions(min_margin=math.inf), SelectOptions(val_fraction=math.nan)):
        with pytest.raises(UsageError, match="must be"):
            convert(src, tmp_path / "o", ConvertOptions(fmt="sft", select=select, input_kind="rollouts"))
    for timeout in (math.inf, math.nan, 0, -1):
        with pytest.raises(UsageError, match="timeout"):
            VerifyClient(["http://127.0.0.1:9"], timeout=timeout)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["validate", "in.jsonl", "--max-line-mb", "1e303"], "error: --max-line-mb must be above 0 and at most 100000 MB, not 1e+303."),
        (["rescore", "in.jsonl", "-o", "o.jsonl", "-s", "http://127.0.0.1:9", "--timeout", "1e300"],
         "error: --timeout must be above 0 and at most 604800 seconds, not 1e+300."),
        (["rescore", "in.jsonl", "-o", "o.jsonl", "-s", "http://127.0.0.1:9", "-c", "1000000000"],
         "error: --concurrency must be between 1 and 4096, not 1000000000."),
        (["to-parquet", "in.jsonl", "-o", "o", "-j", "100000"], "error: --workers must be between 1 and 256, not 100000."),
    ],
)
def test_huge_finite_values_that_would_overflow_or_exhaust_are_refused(args, message, tmp_path, monkeypatch):
    # 1e303 MB is inf bytes (OverflowError); a billion workers or requests in flight exhaust the machine.
    monkeypatch.chdir(tmp_path)
    r = runner.invoke(app, args)
    assert r.exit_code == 2 and r.stderr.strip() == message, r.output


def _fuzz_value():
    from hypothesis import strategies as st

    return st.one_of(
        st.floats(allow_nan=True, allow_infinity=True).map(repr),
        st.integers(min_value=-(2**70), max_value=2**70).map(str),
        st.sampled_from(["nan", "-nan", "NaN", "inf", "+inf", "-Infinity", "1e309", "-0", "0", "0.0", "1e-320", "", " ", "1_000", "0x10", "٣"]),
    )


def test_random_option_values_never_a_traceback(tmp_path, monkeypatch):
    """Any value for any numeric option: exit 0/1/2 with sentences, never a traceback or a hang.
    (The input files do not exist, so an accepted value ends in 'no such file', exit 2.)"""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    monkeypatch.chdir(tmp_path)

    @settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(which=st.integers(min_value=0, max_value=len(NUMERIC) - 1), value=_fuzz_value())
    def run(which: int, value: str) -> None:
        command, param = NUMERIC[which]
        name = max(param.opts, key=len)
        r = runner.invoke(app, [command, *_args_for(command), f"{name}={value}"])
        assert r.exit_code == 2, (command, name, value, r.output)
        assert r.exception is None or isinstance(r.exception, SystemExit), (command, name, value, repr(r.exception))
        assert "Traceback" not in r.output and "internal error" not in r.output, r.output

    run()
