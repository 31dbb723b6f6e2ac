"""Fuzz the CLI end to end: random bytes, random mutations of real NeMo Gym files and random option
values never produce a traceback, a hang, an exit code outside 0/1/2, or an unaccounted line —
for validate, stats, to-parquet (every format, 1 and 2 workers) and rescore.

Commands run in-process through Typer's CliRunner (fast enough for hundreds of examples); rescore
talks to the fault-injection /verify stand-in (tests/fake_verify_server.py): what is fuzzed here is
the input and the options, not the verifier.
"""

from __future__ import annotations

import json
import random
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from conftest import FIXTURE_FILES, SAMPLE_DATA
from fake_verify_server import FakeServer
from gymverl.cli import app

# Per-example wall-clock bound: far above what any example needs, far below "hangs".
EXAMPLE_SECONDS = 45
# No shrinking: a hang costs EXAMPLE_SECONDS per shrink step; the first failing example is reported as is.
SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
                    phases=[Phase.explicit, Phase.reuse, Phase.generate])

SAMPLE_LINES = (SAMPLE_DATA / "rollouts.jsonl").read_bytes().splitlines(keepends=True)


def _corpus() -> list[bytes]:
    """Real rollout lines to mutate: sample_data always, the shared NeMo Gym fixtures when present."""
    lines = list(SAMPLE_LINES)
    for p in FIXTURE_FILES:
        lines.extend(p.read_bytes().splitlines(keepends=True)[:5])
    return lines


CORPUS = _corpus()


def _mutate(line: bytes, rnd: random.Random) -> bytes:
    """One random structural or byte-level change to a JSONL line."""
    kind = rnd.randrange(8)
    if kind == 0 and line:  # flip a byte
        i = rnd.randrange(len(line))
        return line[:i] + bytes([rnd.randrange(256)]) + line[i + 1 :]
    if kind == 1 and line:  # cut
        return line[: rnd.randrange(len(line))] + b"\n"
    if kind == 2:  # duplicate a chunk
        i, j = sorted(rnd.randrange(len(line) + 1) for _ in range(2))
        return line[:j] + line[i:j] + line[j:]
    if kind in (3, 4, 5):  # change a value inside the JSON
        try:
            obj = json.loads(line)
        except ValueError:
            return line
        _mutate_json(obj, rnd)
        return json.dumps(obj, ensure_ascii=rnd.random() < 0.5).encode() + b"\n"
    if kind == 6:
        return b"\n" if rnd.random() < 0.5 else b"   \r\n"
    return line


_WEIRD: list[Any] = [None, True, 0, -1, 2**70, 1.5, -0.0, 1e308, "", "x", "\ud7ff", [], {}, [[[[]]]], {"a": None}]


def _mutate_json(obj: Any, rnd: random.Random) -> None:
    """Replace, drop or add one value somewhere in a JSON document (in place)."""
    node = obj
    for _ in range(rnd.randrange(1, 6)):
        if isinstance(node, dict) and node:
            key = rnd.choice(list(node))
            child = node[key]
            if not isinstance(child, (dict, list)) or not child or rnd.random() < 0.3:
                action = rnd.randrange(3)
                if action == 0:
                    node[key] = rnd.choice(_WEIRD)
                elif action == 1:
                    del node[key]
                else:
                    node["_fuzz"] = rnd.choice(_WEIRD)
                return
            node = child
        elif isinstance(node, list) and node:
            i = rnd.randrange(len(node))
            child = node[i]
            if not isinstance(child, (dict, list)) or not child or rnd.random() < 0.3:
                node[i] = rnd.choice(_WEIRD)
                return
            node = child
        else:
            return


@st.composite
def fuzzed_files(draw: Any) -> bytes:
    """A file of real lines, some mutated, sometimes with raw random bytes mixed in."""
    seed = draw(st.integers(0, 2**32 - 1))
    rnd = random.Random(seed)
    n = draw(st.integers(0, 12))
    lines = [rnd.choice(CORPUS) for _ in range(n)]
    lines = [(_mutate(x, rnd) if rnd.random() < 0.5 else x) for x in lines]
    if draw(st.booleans()):
        lines.append(draw(st.binary(max_size=200)))
    data = b"".join(lines)
    if data and draw(st.booleans()):
        data = data.rstrip(b"\n")  # no trailing newline
    return data


# Option values the fuzzer mixes in: ordinary, edge and nonsense values, as strings.
FLOATS = ["0", "0.5", "1", "-1", "nan", "inf", "-inf", "1e309", "abc", ""]
INTS = ["0", "1", "2", "-1", "99999999999999999999", "x"]


def _opt(rnd: random.Random, name: str, values: list[str]) -> list[str]:
    return [name, rnd.choice(values)] if rnd.random() < 0.35 else []


class Hang(BaseException):
    """Raised by the alarm in a command that runs too long (a BaseException: no `except Exception` eats it)."""


def _alarm(signum: int, frame: Any) -> None:
    raise Hang


def _invoke(args: list[str]) -> Any:
    start = time.monotonic()
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(EXAMPLE_SECONDS)
    try:
        result = CliRunner().invoke(app, args, catch_exceptions=True)
    except Hang:
        raise AssertionError(f"{args} hung (no answer within {EXAMPLE_SECONDS} s)") from None
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    elapsed = time.monotonic() - start
    if isinstance(result.exception, Hang):
        raise AssertionError(f"{args} hung (no answer within {EXAMPLE_SECONDS} s)")
    assert elapsed < EXAMPLE_SECONDS, f"{args} took {elapsed:.0f} s"
    out = result.output
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"{args} raised {type(result.exception).__name__}: {result.exception}\n{out}")
    assert "Traceback" not in out, f"{args} printed a traceback:\n{out}"
    # The CLI's last line of defence turns an unexpected exception into one line: still a bug.
    assert "internal error" not in out, f"{args}: {out}"
    assert "never retrieved" not in out, out
    assert result.exit_code in (0, 1, 2), f"{args} exited {result.exit_code}:\n{out}"
    return result


def _json_out(result: Any) -> dict[str, Any] | None:
    """The --json summary, or None when the command stopped with one `error:` sentence instead (on
    stderr, and as `{"ok": false, "exit_code", "message"}` on stdout)."""
    text = result.stdout
    if "{" not in text:
        assert result.exit_code != 0 and result.output.count("error:") == 1, result.output
        return None
    data = json.loads(text[text.index("{") :])
    if data.get("ok") is False and set(data) == {"ok", "exit_code", "message"}:
        assert data["exit_code"] == result.exit_code != 0 and result.output.count("error:") == 1, result.output
        return None
    return data


def _physical_lines(data: bytes) -> int:
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    return data.count(b"\n") + (1 if data and not data.endswith(b"\n") else 0)


def _accounted(summary: dict[str, Any]) -> int:
    """valid-or-kept + filtered + rejected + blank, as a summary reports them."""
    blank = summary.get("blank", summary.get("blank_lines", 0)) or 0
    return blank + summary["rejected"] + (summary.get("valid") if "kept_lines" not in summary else
                                          summary["kept_lines"] + sum(summary["filtered"].values()))


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@SETTINGS
@given(data=fuzzed_files(), seed=st.integers(0, 2**16))
def test_validate_and_stats(work: Path, data: bytes, seed: int) -> None:
    rnd = random.Random(seed)
    src = work / "in.jsonl"
    src.write_bytes(data)
    r = _invoke(["validate", str(src), "--json", "--rejects", str(work / "rej.jsonl"), *_opt(rnd, "--max-line-mb", FLOATS)])
    s = _json_out(r)
    if s is not None:
        assert s["lines"] == _physical_lines(data) or s["lines"] == s["valid"] + s["rejected"] + (s.get("blank") or 0)
        assert _accounted(s) == s["lines"]
    r = _invoke(["stats", str(src), "--json", *_opt(rnd, "--threshold", FLOATS)])
    s = _json_out(r)
    if s is not None and "lines" in s:
        assert s["rejected"] <= s["lines"]


@SETTINGS
@given(data=fuzzed_files(), seed=st.integers(0, 2**16), fmt=st.sampled_from(["sft", "rl", "dpo"]), workers=st.sampled_from(["1", "2"]))
def test_to_parquet(work: Path, data: bytes, seed: int, fmt: str, workers: str) -> None:
    rnd = random.Random(seed)
    src = work / "in.jsonl"
    src.write_bytes(data)
    out = work / f"out-{fmt}"
    args = ["to-parquet", str(src), "-o", str(out), "-f", fmt, "--workers", workers, "--json",
            "--rejects", str(work / "tp-rej.jsonl"),
            *_opt(rnd, "--min-reward", FLOATS), *_opt(rnd, "--val-fraction", FLOATS), *_opt(rnd, "--best-of-n", INTS),
            *_opt(rnd, "--solved-threshold", FLOATS), *(["--dedup"] if rnd.random() < 0.3 else []),
            *(["--drop-solved"] if rnd.random() < 0.2 else [])]
    r = _invoke(args)
    s = _json_out(r)
    if s is not None:
        assert _accounted(s) == s["lines"], s


@pytest.fixture(scope="module")
def verify_server() -> Any:
    with FakeServer() as srv:
        yield srv


@settings(SETTINGS, max_examples=60)
@given(data=fuzzed_files(), seed=st.integers(0, 2**16))
def test_rescore(work: Path, verify_server: FakeServer, data: bytes, seed: int) -> None:
    rnd = random.Random(seed)
    src = work / "in.jsonl"
    src.write_bytes(data)
    out = work / "rescored.jsonl"
    args = ["rescore", str(src), "-o", str(out), "-s", verify_server.url, "--overwrite", "--json",
            *_opt(rnd, "--concurrency", INTS), *_opt(rnd, "--timeout", FLOATS), *_opt(rnd, "--retries", INTS)]
    r = _invoke(args)
    s = _json_out(r)
    if s is not None:
        assert s["rescored"] + s["failed"] + s["rejected"] + (s.get("blank") or 0) == s["lines"], s
