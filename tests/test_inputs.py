"""gymverl.inputs: one way to open an input (path, `-`, pipes, FIFOs, `<(...)`, gzip by magic bytes);
Parquet / binary / directory inputs refused in one sentence; blank lines skipped and counted.

The pipe tests use real pipes (subprocess stdin=PIPE, os.mkfifo, bash process substitution) and
run every command in a subprocess with a time limit: a hang fails the test instead of blocking it.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import REPO, SAMPLE_DATA, SHARED
from fake_verify_server import FakeServer
from gymverl.errors import UsageError
from gymverl.inputs import Input, InputError, open_input, regular_file, sniff
from gymverl.jsonl import iter_lines, read_jsonl

ROLLOUTS = SAMPLE_DATA / "rollouts.jsonl"  # 20 valid rollouts, 19 kept by to-parquet --format sft
DATA = ROLLOUTS.read_bytes()
N = DATA.count(b"\n")
# A hang fails the test (pytest-timeout) instead of blocking the suite.
pytestmark = pytest.mark.timeout(300)
LIMIT = 90  # seconds for any one command: far above what it needs, far below "hangs forever"


def gymverl(*args: str, stdin: bytes | None = None, env: dict[str, str] | None = None, cwd: Path | None = None,
            shell: bool = False) -> subprocess.CompletedProcess[str]:
    """Run the CLI in a subprocess (real fds, real pipes), bounded in time."""
    full_env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "300", "NO_COLOR": "1", **(env or {})}
    if shell:  # for bash process substitution: args[0] is the whole command line after `gymverl`
        cmd: list[str] | str = ["bash", "-c", f"{sys.executable} -m gymverl.cli {args[0]}"]
    else:
        cmd = [sys.executable, "-m", "gymverl.cli", *args]
    return subprocess.run(cmd, input=stdin.decode() if stdin is not None else None, capture_output=True, text=True,
                          env=full_env, cwd=cwd, timeout=LIMIT, stdin=None if stdin is not None else subprocess.DEVNULL)


def feed_fifo(path: Path, data: bytes, delay: float = 0.0) -> threading.Thread:
    """Write `data` into the FIFO `path` from a thread (opening blocks until the reader opens it)."""

    def run() -> None:
        time.sleep(delay)
        with open(path, "wb") as f:
            f.write(data)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def spools(d: Path) -> list[Path]:
    return sorted(d.glob(".gymverl-input-*"))


# ---- open_input on regular files -----------------------------------------------------------------


def test_regular_file_plain_and_gzip_detected_by_magic_not_name(tmp_path):
    plain_gz_name = tmp_path / "plain.jsonl.gz"  # plain text under a .gz name
    plain_gz_name.write_bytes(b'{"a": 1}\n')
    gz_plain_name = tmp_path / "packed.jsonl"  # gzip under a plain name
    gz_plain_name.write_bytes(gzip.compress(b'{"a": 2}\n'))
    assert [p.obj for p in read_jsonl(plain_gz_name)] == [{"a": 1}]
    assert [p.obj for p in read_jsonl(gz_plain_name)] == [{"a": 2}]
    with open_input(gz_plain_name) as src:
        assert src.compressed and not src.is_pipe and src.progress_total is None
        assert src.path == gz_plain_name and src.stem == "packed"
        # A regular file can be opened any number of times.
        for _ in range(2):
            with src.open() as f:
                assert f.read() == b'{"a": 2}\n'


@pytest.mark.parametrize(
    "head, expect",
    [
        (b"PAR1\x15\x04\x15\x80", r"is a Parquet file, not JSONL"),
        (b"ARROW1\x00\x00", r"is an Arrow/Feather file, not JSONL"),
        (b"PK\x03\x04\x14\x00", r"is a zip archive, not JSONL"),
        (b"\x28\xb5\x2f\xfd\x24\x00", r"is zstd-compressed data, not JSONL; .*zstd -d"),
        (b"BZh91AY&SY\x00\x01", r"is bzip2-compressed data, not JSONL"),
        (b"\xfd7zXZ\x00\x00\x04", r"is xz-compressed data, not JSONL"),
        (b'{"a": 1}\n{"b": \x00}\n', r"is a binary file \(NUL byte at offset 15\), not JSONL"),
        ("{\"a\": 1}\n".encode("utf-16"), r"is UTF-16 text \(NUL byte at offset 3\), not JSONL"),
        (gzip.compress(b"PAR1" + b"\x00" * 100), r"is a Parquet file \(inside gzip\), not JSONL"),
        (gzip.compress(b"\x00\x01\x02 binary"), r"is a binary file \(NUL byte at offset 0, inside gzip\), not JSONL"),
    ],
)
def test_binary_inputs_refused_in_one_sentence(tmp_path, head, expect):
    p = tmp_path / "x.jsonl"
    p.write_bytes(head + b"\n" * 3)
    with pytest.raises(InputError, match=expect) as err:
        open_input(p)
    msg = str(err.value)
    assert msg.startswith(f"{p} is ") and msg.count(". ") == 0 and "\n" not in msg
    with pytest.raises(InputError):  # every reader goes through the same check
        list(iter_lines(p))
    assert isinstance(err.value, UsageError) and err.value.exit_code == 2


@pytest.mark.parametrize(
    "text",
    [b"BZh is how a line may start\n", b'{"text": "PAR1 is a word here"}\n', b"", b"\n\n", b"\xef\xbb\xbf{}\n"],
)
def test_text_that_merely_looks_like_magic_is_not_refused(tmp_path, text):
    p = tmp_path / "t.jsonl"
    p.write_bytes(text)
    open_input(p).close()
    sniff(text, "t.jsonl")


def test_missing_directory_and_unreadable(tmp_path):
    with pytest.raises(InputError, match=r"nope.jsonl: no such file\.$"):
        open_input(tmp_path / "nope.jsonl")
    with pytest.raises(InputError, match=r": no such file\.$"):
        open_input(tmp_path / "file" / "below")  # a path through a missing directory
    with pytest.raises(InputError, match=r"is a directory, not a JSONL file\.$"):
        open_input(tmp_path)
    with pytest.raises(InputError, match=r"is not a valid path\.$"):
        open_input("bad\x00name.jsonl")
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    with pytest.raises(UsageError, match=r"loop: Too many levels of symbolic links\.$"):
        open_input(loop)


def test_unreadable_file(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root reads any file: the permission case cannot be made here")
    p = tmp_path / "secret.jsonl"
    p.write_text("{}\n")
    p.chmod(0)
    with pytest.raises(InputError, match=r"secret.jsonl: cannot be read \(permission denied\)\.$"):
        open_input(p)


def test_regular_file_helper_refuses_pipes_without_opening_them(tmp_path):
    fifo = tmp_path / "f"
    os.mkfifo(fifo)
    started = time.monotonic()
    with pytest.raises(InputError, match=r"f is a pipe, not a regular file; .*write it to a file first\.$"):
        regular_file(fifo)  # must not block waiting for a writer
    assert time.monotonic() - started < 5
    with pytest.raises(InputError, match=r"<stdin> is a pipe"):
        regular_file("-")
    good = tmp_path / "g.jsonl"
    good.write_text("{}\n")
    assert regular_file(good) == good


# ---- open_input on pipes -------------------------------------------------------------------------


def test_fifo_read_once_streaming(tmp_path):
    fifo = tmp_path / "f"
    os.mkfifo(fifo)
    feed_fifo(fifo, DATA)
    with open_input(fifo) as src:
        assert src.is_pipe and src.path is None and src.progress_total is None
        lines = iter_lines(src)
        assert sum(1 for _ in lines) == N
        # A pipe cannot be read a second time: one sentence, not silently zero lines.
        with pytest.raises(InputError, match="pipe that was already read"):
            list(iter_lines(src))


def test_fifo_spooled_for_two_passes_and_spool_removed(tmp_path):
    fifo = tmp_path / "f"
    os.mkfifo(fifo)
    gz = gzip.compress(DATA)
    feed_fifo(fifo, gz)
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir()
    with open_input(fifo, passes=2, tmp_dir=spool_dir) as src:
        assert src.spooled and src.compressed and src.path is not None and src.path.parent == spool_dir
        assert src.path.read_bytes() == gz  # the bytes as they came (still compressed)
        first = [ln.data for ln in iter_lines(src)]
        second = [ln.data for ln in iter_lines(src)]
        assert first == second == DATA.splitlines()
        assert spools(spool_dir)
    assert spools(spool_dir) == []


def test_spool_removed_when_the_input_is_dropped_without_close(tmp_path):
    fifo = tmp_path / "f"
    os.mkfifo(fifo)
    feed_fifo(fifo, DATA)
    src = open_input(fifo, passes=2, tmp_dir=tmp_path)
    assert spools(tmp_path)
    del src  # a library caller that never closes it
    import gc

    gc.collect()
    assert spools(tmp_path) == []


def test_same_pipe_twice_is_refused(tmp_path):
    fifo = tmp_path / "f"
    os.mkfifo(fifo)
    feed_fifo(fifo, DATA)
    with open_input(fifo) as first:
        assert isinstance(first, Input)
        other = tmp_path / "link"
        other.symlink_to(fifo)
        with pytest.raises(InputError, match="are the same pipe"):
            open_input(other)
    feed_fifo(fifo, DATA)
    open_input(fifo).close()  # released on close: a new reader may open it again


def test_pipe_holding_parquet_is_refused(tmp_path):
    fifo = tmp_path / "f"
    os.mkfifo(fifo)
    feed_fifo(fifo, b"PAR1" + b"\x00" * 5000)
    with pytest.raises(InputError, match=r"f is a Parquet file, not JSONL"):
        open_input(fifo)


# ---- every command reads -, /dev/stdin, FIFOs and <(...) (fault: pipe-input-read-twice) --------


def summary_lines(r: subprocess.CompletedProcess[str]) -> int:
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Traceback" not in r.stderr
    return json.loads(r.stdout)["lines"]


@pytest.mark.parametrize("arg", ["-", "/dev/stdin"])
@pytest.mark.parametrize(
    "command",
    [
        ["validate"],
        ["stats"],
        ["to-parquet", "--format", "sft"],  # --input-kind auto reads the head first: spooled
        ["to-parquet", "--format", "rl"],
        ["to-parquet", "--format", "dpo", "--workers", "2"],
        ["to-parquet", "--format", "sft", "--input-kind", "rollouts"],  # one pass: streamed
    ],
    ids=["validate", "stats", "sft", "rl", "dpo-2-workers", "sft-streamed"],
)
def test_commands_read_stdin_completely(tmp_path, command, arg):
    out = ["-o", str(tmp_path / "out")] if command[0] == "to-parquet" else []
    spool_dir = tmp_path / "tmp"
    spool_dir.mkdir()
    r = gymverl(command[0], arg, *command[1:], *out, "--json", stdin=DATA, env={"TMPDIR": str(spool_dir)})
    assert summary_lines(r) == N
    assert list(spool_dir.iterdir()) == []  # the spooled copy is gone
    if command[0] == "to-parquet":
        assert (tmp_path / "out" / "train.parquet").exists()


@pytest.mark.parametrize("fmt", ["sft", "rl", "dpo"])
def test_to_parquet_reads_process_substitution(tmp_path, fmt):
    r = gymverl(f"to-parquet <(cat {ROLLOUTS}) --format {fmt} -o {tmp_path / 'out'} --json", shell=True)
    assert summary_lines(r) == N
    assert json.loads(r.stdout)["input"].startswith("/dev/fd/")


@pytest.mark.parametrize("command", [["validate"], ["stats"], ["to-parquet", "--format", "sft"], ["to-parquet", "--format", "rl", "-j", "2"]])
def test_commands_read_a_fifo(tmp_path, command):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    feed_fifo(fifo, gzip.compress(DATA), delay=0.2)  # gzip through a pipe: detected by magic
    out = ["-o", str(tmp_path / "out")] if command[0] == "to-parquet" else []
    r = gymverl(command[0], str(fifo), *command[1:], *out, "--json", env={"TMPDIR": str(tmp_path)})
    assert summary_lines(r) == N
    assert spools(tmp_path) == []


def test_to_parquet_pipe_gives_the_same_parquet_as_the_file(tmp_path):
    import pyarrow.parquet as pq

    a = gymverl("to-parquet", str(ROLLOUTS), "--format", "rl", "-o", str(tmp_path / "a"), "--json")
    b = gymverl("to-parquet", "-", "--format", "rl", "-o", str(tmp_path / "b"), "--json", stdin=DATA)
    assert summary_lines(a) == summary_lines(b) == N
    ta, tb = pq.read_table(tmp_path / "a" / "train.parquet"), pq.read_table(tmp_path / "b" / "train.parquet")
    assert ta.drop(["data_source"]).equals(tb.drop(["data_source"]))


def test_spool_goes_to_tmp_dir_and_is_removed_on_sigterm(tmp_path):
    """SIGTERM while a pipe is being spooled: exit 130, no spool left behind."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    spill = tmp_path / "spill"
    spill.mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "gymverl.cli", "to-parquet", str(fifo), "-o", str(tmp_path / "out"), "--tmp-dir", str(spill)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    writer = open(fifo, "wb")  # noqa: SIM115 - held open: the pipe never ends
    try:
        writer.write(DATA * 50)
        writer.flush()
        deadline = time.monotonic() + LIMIT
        while not spools(spill):
            assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=LIMIT)
    finally:
        writer.close()
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert spools(spill) == [] and not (tmp_path / "out").exists()


def test_fifo_without_writer_stops_on_sigterm(tmp_path):
    """Opening a FIFO waits for a writer (pipe semantics), but SIGTERM still ends it: exit 130."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "gymverl.cli", "validate", str(fifo)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env=env,
    )
    time.sleep(3)  # let it reach open()
    proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130 and "Traceback" not in err


# ---- rescore on pipes -------------------------------------------------------------------------------


def test_rescore_reads_stdin_and_a_fifo_and_resumes_from_a_pipe(tmp_path):
    spool_dir = tmp_path / "tmp"
    spool_dir.mkdir()
    env = {"TMPDIR": str(spool_dir)}
    with FakeServer() as srv:
        r = gymverl("rescore", "-", "-o", str(tmp_path / "a.jsonl"), "-s", srv.url, "--json", stdin=DATA, env=env)
        assert summary_lines(r) == N
        assert len((tmp_path / "a.jsonl").read_bytes().splitlines()) == N

        fifo = tmp_path / "fifo"
        os.mkfifo(fifo)
        blanky = DATA.replace(b"\n", b"\n\n", 3)  # 3 blank lines among the first rows: done before the resume
        feed_fifo(fifo, blanky, delay=0.2)
        r = gymverl("rescore", str(fifo), "-o", str(tmp_path / "b.jsonl"), "-s", srv.url, "--limit", "8", "--json", env=env)
        assert r.returncode == 1 and json.loads(r.stdout)["lines"] == 8, r.stderr  # stopped by --limit
        feed_fifo(fifo, blanky, delay=0.2)  # the same data again, through the pipe
        r = gymverl("rescore", str(fifo), "-o", str(tmp_path / "b.jsonl"), "-s", srv.url, "--resume", "--json", env=env)
        assert summary_lines(r) == N + 3
        s = json.loads(r.stdout)
        assert (s["blank"], s["rescored"], s["failed"], s["rejected"]) == (3, N, 0, 0)

        def rows(p: Path) -> list[tuple[str, float]]:  # the fake server also echoes a per-row attempt counter
            return [(r["response"]["id"], r["reward"]) for r in map(json.loads, p.read_bytes().splitlines())]

        assert rows(tmp_path / "b.jsonl") == rows(tmp_path / "a.jsonl")  # no duplicates, no gaps, same order
        assert len(rows(tmp_path / "a.jsonl")) == N
    assert list(spool_dir.iterdir()) == []


# ---- Parquet / directory / binary given as JSONL (fault: parquet-given-as-jsonl) ----------------


def _parquet(tmp_path: Path) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    p = tmp_path / "train.parquet"
    pq.write_table(pa.table({"messages": ["[]"] * 5, "n": list(range(5))}), p)
    return p


def _all_commands(target: str, tmp_path: Path, url: str) -> list[list[str]]:
    return [
        ["validate", target],
        ["stats", target],
        ["to-parquet", target, "-o", str(tmp_path / "out")],
        ["to-parquet", target, "-o", str(tmp_path / "out"), "--input-kind", "rollouts"],
        ["rescore", target, "-o", str(tmp_path / "r.jsonl"), "-s", url],
        ["stats", str(ROLLOUTS), "--against", target],
        ["to-parquet", str(ROLLOUTS), "--format", "rl", "--tasks", target, "-o", str(tmp_path / "out2")],
    ]


@pytest.mark.parametrize("kind", ["parquet", "directory", "binary", "gzip-parquet"])
def test_non_jsonl_input_one_sentence_exit_2_every_command(tmp_path, kind):
    if kind == "parquet":
        target, expect = _parquet(tmp_path), "is a Parquet file, not JSONL"
    elif kind == "gzip-parquet":
        target = tmp_path / "train.parquet.gz"
        target.write_bytes(gzip.compress(_parquet(tmp_path).read_bytes()))
        expect = "is a Parquet file (inside gzip), not JSONL"
    elif kind == "directory":
        target, expect = tmp_path / "adir", "is a directory, not a JSONL file."
        target.mkdir()
    else:
        target, expect = tmp_path / "blob.jsonl", "is a binary file (NUL byte at offset"
        target.write_bytes(bytes(range(256)) * 40)
    for args in _all_commands(str(target), tmp_path, "http://127.0.0.1:9"):
        r = gymverl(*args)
        assert r.returncode == 2, (args, r.stderr)
        assert "Traceback" not in r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"error: {target}") and expect in lines[0], (args, r.stderr)
        assert "not valid UTF-8" not in r.stdout + r.stderr
    # Nothing was written for any of them.
    assert not (tmp_path / "out").exists() and not (tmp_path / "r.jsonl").exists()


def test_parquet_piped_in_is_refused_too(tmp_path):
    p = _parquet(tmp_path)  # through bash: the text-mode helper cannot carry NUL bytes
    r = subprocess.run(["bash", "-c", f"cat {p} | {sys.executable} -m gymverl.cli stats -"], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=LIMIT)
    assert r.returncode == 2 and r.stderr.strip() == "error: <stdin> is a Parquet file, not JSONL; this command reads NeMo Gym JSONL (.jsonl or .jsonl.gz)."


def test_shared_case_parquet_given_as_jsonl(tmp_path):
    case = SHARED / "cases" / "parquet-given-as-jsonl" / "rollouts.jsonl"
    if not case.exists():
        pytest.skip(f"shared case not found: {case}")
    r = gymverl("to-parquet", str(case), "-o", str(tmp_path / "sft"))
    assert r.returncode == 0, r.stderr
    pq_file = tmp_path / "sft" / "train.parquet"
    for args in _all_commands(str(pq_file), tmp_path, "http://127.0.0.1:9")[:5]:
        r = gymverl(*args)
        assert r.returncode == 2 and r.stderr.strip() == (
            f"error: {pq_file} is a Parquet file, not JSONL; this command reads NeMo Gym JSONL (.jsonl or .jsonl.gz)."
        ), (args, r.stderr)


def test_shared_case_pipe_input_read_twice(tmp_path):
    case = SHARED / "cases" / "pipe-input-read-twice" / "rollouts.jsonl"
    if not case.exists():
        pytest.skip(f"shared case not found: {case}")
    r = gymverl(f"to-parquet /dev/stdin -o {tmp_path / 'a'} --json < {case}", shell=True)
    assert summary_lines(r) == 20 and json.loads(r.stdout)["kept_lines"] == 19
    r = gymverl(f"to-parquet <(cat {case}) -o {tmp_path / 'b'} --json", shell=True)
    assert summary_lines(r) == 20 and json.loads(r.stdout)["kept_lines"] == 19
    r = subprocess.run(["bash", "-c", f"cat {case} | {sys.executable} -m gymverl.cli to-parquet /dev/stdin -o {tmp_path / 'c'} --json"],
                       capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=LIMIT)
    assert summary_lines(r) == 20


# ---- blank lines: skipped, counted, accounted for -------------------------------------------------


def test_blank_lines_counted_by_every_command(tmp_path):
    rows = DATA.splitlines()
    data = b"\n".join(rows[:5]) + b"\n\n   \n" + b"\n".join(rows[5:]) + b"\n\r\n\n"  # 4 blank lines
    src = tmp_path / "r.jsonl"
    src.write_bytes(data)
    physical = N + 4
    v = gymverl("validate", str(src), "--json")
    s = json.loads(v.stdout)
    assert v.returncode == 0 and (s["lines"], s["valid"], s["rejected"], s["blank"]) == (physical, N, 0, 4)
    text = gymverl("validate", str(src))
    assert text.returncode == 0 and "blank lines (skipped)" in text.stdout
    st = json.loads(gymverl("stats", str(src), "--json").stdout)
    assert (st["lines"], st["rejected"], st["blank"]) == (physical, 0, 4)
    c = gymverl("to-parquet", str(src), "-o", str(tmp_path / "o"), "--json")
    cs = json.loads(c.stdout)
    assert c.returncode == 0 and cs["lines"] == physical and cs["blank"] == 4
    assert cs["kept_lines"] + sum(cs["filtered"].values()) + cs["rejected"] + cs["blank"] == physical


def test_only_blank_lines_is_an_empty_file(tmp_path):
    src = tmp_path / "r.jsonl"
    src.write_bytes(b"\n  \n\n")
    r = gymverl("validate", str(src))
    assert r.returncode == 1 and r.stderr.strip() == f"error: {src}: file is empty (no rollouts)."
    r = gymverl("stats", str(src))
    assert r.returncode == 1 and r.stderr.strip() == f"error: {src}: file is empty (no rollouts)."


def test_spool_that_does_not_fit_is_one_sentence_exit_1_and_removed(tmp_path):
    """A file-size limit (like a full disk) while spooling a pipe: exit 1 (not a usage error), no spool left."""
    import resource

    def small_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (10_000, 10_000))  # Python ignores SIGXFSZ: EFBIG

    spool_dir = tmp_path / "spool"
    r = subprocess.run(
        [sys.executable, "-m", "gymverl.cli", "to-parquet", "-", "-o", str(tmp_path / "out"), "--tmp-dir", str(spool_dir)],
        input=DATA, capture_output=True, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=LIMIT, preexec_fn=small_files,
    )
    err = r.stderr.decode()
    assert r.returncode == 1, err
    assert err.count("\n") == 1 and err.startswith("error: ") and "file too large" in err and "Traceback" not in err
    assert spools(spool_dir) == [] and not (tmp_path / "out").exists()


def test_sft_repeats_in_a_pipe_read_once_are_refused_in_one_sentence(tmp_path: Path) -> None:
    """Settling repeated (task, rollout) pairs reads the input again (streaming sft hands it to the
    grouped conversion): a pipe given with --input-kind rollouts (not kept by detection) cannot be
    read again, and says so (exit 2), writing nothing; with detection (auto) the copy it keeps serves."""
    data = DATA * 2
    r = gymverl("to-parquet", "-", "-o", str(tmp_path / "o"), "--input-kind", "rollouts", stdin=data)
    assert r.returncode == 2 and "repeat a (task, rollout) pair" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "o").exists()
    r = gymverl("to-parquet", "-", "-o", str(tmp_path / "o"), "--json", stdin=data)
    assert r.returncode == 0 and json.loads(r.stdout)["filtered"]["repeated_rollout"] == 19, r.stderr
