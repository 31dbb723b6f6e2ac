"""Outputs of to-parquet, validate and stats: atomic, locked, umask permissions, gzip by name, never over
an input, no temp or spill files left after SIGTERM or a full disk (gymverl.files; issue 10)."""

from __future__ import annotations

import fcntl
import gzip
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import orjson
import pyarrow.parquet as pq
import pytest

from conftest import REPO, SAMPLE_DATA, SHARED
from gymverl.convert import ConvertOptions, convert
from gymverl.errors import RunError, UsageError
from gymverl.files import atomic_path, check_outputs, new_temp_file, output_lock, scratch_dir
from gymverl.jsonl import JsonlWriter, RejectsWriter, read_jsonl
from gymverl.select import SelectOptions

ROLLOUTS = SAMPLE_DATA / "rollouts.jsonl"
TASKS = SAMPLE_DATA / "tasks.jsonl"


def _row(i: int, text: str = "The answer is \\boxed{56}.", reward: float = 1.0) -> bytes:
    """One small valid NeMo Gym rollout (our own input, so the kind stays covered without ../shared)."""
    return orjson.dumps(
        {
            "responses_create_params": {"input": [{"role": "user", "content": f"What is {i} + 0?"}]},
            "response": {
                "id": f"r{i}",
                "output": [
                    {"id": f"m{i}", "type": "message", "role": "assistant", "status": "completed",
                     "content": [{"type": "output_text", "text": text, "annotations": []}]}
                ],
                "status": "completed",
            },
            "reward": reward,
            "_ng_task_index": i,
            "_ng_rollout_index": 0,
            "agent_ref": {"type": "responses_api_agents", "name": "math_agent"},
        }
    )


def _write_rollouts(path: Path, n: int, *, random_text: int = 0, bad_every: int = 0) -> Path:
    """`n` rollouts; `random_text` bytes of incompressible text each (to fill a disk); every
    `bad_every`-th line broken JSON (to make a rejects file grow)."""
    rng = random.Random(0)
    with open(path, "wb") as f:
        for i in range(n):
            if bad_every and i % bad_every == 0:
                f.write(b"{broken line " + str(i).encode() + b"\n")
                continue
            text = rng.randbytes(random_text // 2).hex() if random_text else "The answer is \\boxed{56}."
            f.write(_row(i, text) + b"\n")
    return path


def _cli(*args: str | os.PathLike[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    """Run the real CLI in a fresh process (signals, locks and rlimits need a process of their own)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "gymverl.cli", *map(str, args)], capture_output=True, text=True, env=env, timeout=300, **kw)


def _popen(*args: str | os.PathLike[str]) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "gymverl.cli", *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _tree(d: Path) -> list[str]:
    """Every path under `d` (hidden ones included), relative, sorted."""
    return sorted(str(p.relative_to(d)) for p in d.rglob("*")) if d.exists() else []


# ---- files.py itself ---------------------------------------------------------------------------


@pytest.fixture
def umask022() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def test_temp_files_follow_the_umask(tmp_path: Path, umask022: None) -> None:
    assert new_temp_file(tmp_path, prefix="x").stat().st_mode & 0o777 == 0o644
    with atomic_path(tmp_path / "a.txt") as tmp:
        tmp.write_text("hi")
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o644
    os.umask(0o027)
    with atomic_path(tmp_path / "b.txt") as tmp:
        tmp.write_text("hi")
    assert (tmp_path / "b.txt").stat().st_mode & 0o777 == 0o640


def test_every_output_follows_the_umask(tmp_path: Path, umask022: None) -> None:
    # Before: parquet shards were mkstemp files renamed into place, so always 0600.
    src = _write_rollouts(tmp_path / "in.jsonl", 20, bad_every=7)
    convert(src, tmp_path / "dir", ConvertOptions(rejects_path=tmp_path / "rej.jsonl", select=SelectOptions(val_fraction=0.5)))
    convert(src, tmp_path / "one.parquet", ConvertOptions(fmt="rl"))
    convert(src, tmp_path / "shards", ConvertOptions(select=SelectOptions(best_of_n=1), shard_size=3))
    outputs = [*tmp_path.glob("dir/*.parquet"), tmp_path / "one.parquet", *tmp_path.glob("shards/*.parquet"), tmp_path / "rej.jsonl"]
    assert len(outputs) > 5
    assert {p.name: oct(p.stat().st_mode & 0o777) for p in outputs} == {p.name: "0o644" for p in outputs}


def test_scratch_dir_sweeps_only_dead_runs(tmp_path: Path) -> None:
    # A run killed with SIGKILL leaves its scratch directory; the next run removes it. A live run's
    # (owner file still locked) and directories gymverl did not make are left alone.
    dead = tmp_path / ".gymverl-spill-dead"
    dead.mkdir()
    (dead / ".owner").write_text("12345\n")
    (dead / "0.data").write_bytes(b"x" * 100)
    alive = tmp_path / ".gymverl-spill-alive"
    alive.mkdir()
    (alive / ".owner").write_text(f"{os.getpid()}\n")
    fd = os.open(alive / ".owner", os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)  # another open file description: a lock the sweeper cannot take
    foreign = tmp_path / ".gymverl-notes"
    foreign.mkdir()
    (foreign / "mine.txt").write_text("keep")
    try:
        with scratch_dir(tmp_path, kind="spill") as root:
            assert root.is_dir() and root.name.startswith(".gymverl-spill-")
            assert not dead.exists() and alive.exists() and (foreign / "mine.txt").exists()
        assert not root.exists()
    finally:
        os.close(fd)
    assert alive.exists() and (foreign / "mine.txt").exists()


def test_output_lock_removes_temp_files_of_killed_runs(tmp_path: Path) -> None:
    out = tmp_path / "rej.jsonl"
    left = tmp_path / ".rej.jsonl.abcd1234.tmp"  # what atomic_path made for a run that was SIGKILLed
    left.write_text("half")
    other = tmp_path / ".other.jsonl.abcd1234.tmp"
    other.write_text("not this output's")
    with output_lock(out):
        assert not left.exists() and other.exists()


def test_check_outputs_catches_links(tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    src.write_text("{}\n")
    (tmp_path / "hard.jsonl").hardlink_to(src)
    (tmp_path / "soft.jsonl").symlink_to(src)
    for out in (src, tmp_path / "hard.jsonl", tmp_path / "soft.jsonl"):
        with pytest.raises(UsageError, match="the input"):
            check_outputs([out], [src])
    check_outputs([tmp_path / "new.jsonl", None], [src, None])


# ---- gzip by name ------------------------------------------------------------------------------


def test_jsonl_writer_gzips_a_gz_name_and_appends_readably(tmp_path: Path) -> None:
    out = tmp_path / "x.jsonl.gz"
    with JsonlWriter(out) as w:
        w.write({"a": 1})
    with JsonlWriter(out, append=True) as w:  # resume: a second gzip member, one stream to readers
        w.write({"a": 2})
        w.flush()
    assert out.read_bytes()[:2] == b"\x1f\x8b"
    assert [p.obj for p in read_jsonl(out)] == [{"a": 1}, {"a": 2}]
    assert gzip.decompress(out.read_bytes()) == b'{"a":1}\n{"a":2}\n'


@pytest.mark.parametrize("command", ["validate", "to-parquet"])
def test_gz_named_rejects_are_gzip(tmp_path: Path, command: str) -> None:
    # Before: a plain-text file named .gz, which gymverl's own readers then called corrupt.
    src = _write_rollouts(tmp_path / "in.jsonl", 12, bad_every=5)
    rej = tmp_path / "rej.jsonl.gz"
    extra = ["-o", tmp_path / "o"] if command == "to-parquet" else []
    r = _cli(command, src, "--rejects", rej, *extra)
    assert r.returncode == 1, r.stderr
    assert rej.read_bytes()[:2] == b"\x1f\x8b"
    assert [p.obj["line"] for p in read_jsonl(rej)] == [1, 6, 11]
    # gymverl reads it back (validate: every rejects line is a JSON object, not a rollout).
    assert "corrupt" not in _cli("validate", rej).stderr


def test_gz_case_from_the_issue(tmp_path: Path) -> None:
    case = SHARED / "cases" / "gz-named-output-is-plain-text"
    if not case.is_dir():
        pytest.skip(f"shared case {case} not present")
    rej = tmp_path / "rejects.jsonl.gz"
    r = _cli("validate", case / "with_bad_line.jsonl", "--rejects", rej)
    assert r.returncode == 1, r.stderr
    assert [p.obj["line"] for p in read_jsonl(rej)] == [4]


# ---- outputs never overwrite inputs ------------------------------------------------------------


def _collision_cases(tmp_path: Path) -> list[tuple[str, list[Any], Path]]:
    """(name, command line, the input it must not touch) for every output/input pair of our commands."""
    src = tmp_path / "in.jsonl"
    shutil.copy(ROLLOUTS, src)
    tasks = tmp_path / "tasks.jsonl"
    shutil.copy(TASKS, tasks)
    (tmp_path / "hard.jsonl").hardlink_to(src)
    (tmp_path / "soft.jsonl").symlink_to(src)
    (tmp_path / "in.parquet").symlink_to(src)
    (tmp_path / "tasks-link.jsonl").hardlink_to(tasks)
    (tmp_path / "plot.png").symlink_to(src)
    out = tmp_path / "o"
    return [
        ("rejects=input", ["to-parquet", src, "-o", out, "--rejects", src], src),
        ("rejects=hardlink", ["to-parquet", src, "-o", out, "--rejects", tmp_path / "hard.jsonl"], src),
        ("rejects=symlink", ["to-parquet", src, "-o", out, "--rejects", tmp_path / "soft.jsonl"], src),
        ("rejects=tasks", ["to-parquet", src, "-o", out, "-f", "rl", "--tasks", tasks, "--rejects", tasks], tasks),
        ("rejects=tasks-hardlink", ["to-parquet", src, "-o", out, "-f", "rl", "--tasks", tasks, "--rejects", tmp_path / "tasks-link.jsonl"], tasks),
        ("output=symlink", ["to-parquet", src, "-o", tmp_path / "in.parquet"], src),
        ("validate-rejects=hardlink", ["validate", src, "--rejects", tmp_path / "hard.jsonl"], src),
        ("stats-plot=symlink", ["stats", src, "--plot", tmp_path / "plot.png"], src),
    ]


def test_no_output_may_be_an_input(tmp_path: Path) -> None:
    # Before: to-parquet --rejects IN (or the --tasks file) replaced that input with an empty file, exit 0.
    for name, args, victim in _collision_cases(tmp_path):
        before = victim.read_bytes()
        r = _cli(*args)
        assert r.returncode == 2, (name, r.stdout, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: output ") and "the input" in lines[0], (name, r.stderr)
        assert victim.read_bytes() == before, name
        assert not (tmp_path / "o").exists(), name  # refused before anything was written


def test_library_refuses_an_output_that_is_an_input(tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    shutil.copy(ROLLOUTS, src)
    (tmp_path / "hard.jsonl").hardlink_to(src)
    before = src.read_bytes()
    with pytest.raises(UsageError, match="the input"):
        convert(src, tmp_path / "o", ConvertOptions(rejects_path=tmp_path / "hard.jsonl"))
    with pytest.raises(UsageError, match="the input"):
        convert(src, tmp_path / "o", ConvertOptions(fmt="rl", tasks_path=TASKS, rejects_path=TASKS))
    assert src.read_bytes() == before and not (tmp_path / "o").exists()


def test_overwrite_case_from_the_issue(tmp_path: Path) -> None:
    case = SHARED / "cases" / "output-path-overwrites-input"
    if not case.is_dir():
        pytest.skip(f"shared case {case} not present")
    src, tasks = tmp_path / "in.jsonl", tmp_path / "tasks.jsonl"
    shutil.copy(case / "rollouts.jsonl", src)
    shutil.copy(case / "tasks.jsonl", tasks)
    sizes = (src.stat().st_size, tasks.stat().st_size)
    r = _cli("to-parquet", src, "-o", tmp_path / "sft", "--rejects", src)
    assert r.returncode == 2 and "the input" in r.stderr
    r = _cli("to-parquet", src, "-o", tmp_path / "rl", "--format", "rl", "--tasks", tasks, "--rejects", tasks)
    assert r.returncode == 2 and "the input" in r.stderr
    assert (src.stat().st_size, tasks.stat().st_size) == sizes


# ---- locks -------------------------------------------------------------------------------------


def test_a_second_process_on_the_same_output_is_refused(tmp_path: Path) -> None:
    # This test process holds each lock; a real second gymverl process must be told our PID.
    src = _write_rollouts(tmp_path / "in.jsonl", 10, bad_every=4)
    (tmp_path / "o").mkdir()
    cases = [
        (tmp_path / "o", ["to-parquet", src, "-o", tmp_path / "o"]),
        (tmp_path / "one.parquet", ["to-parquet", src, "-o", tmp_path / "one.parquet"]),
        (tmp_path / "rej.jsonl", ["to-parquet", src, "-o", tmp_path / "o2", "--rejects", tmp_path / "rej.jsonl"]),
        (tmp_path / "vrej.jsonl", ["validate", src, "--rejects", tmp_path / "vrej.jsonl"]),
        (tmp_path / "p.png", ["stats", src, "--plot", tmp_path / "p.png"]),
    ]
    for held, args in cases:
        with output_lock(held):
            r = _cli(*args)
        assert r.returncode == 1, (args, r.stderr)
        assert f"is being written by process {os.getpid()}" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert not held.exists() or held.is_dir()
    assert _tree(tmp_path / "o") == []  # nothing written, no lock file left behind
    # Released: the same commands now work.
    assert _cli("to-parquet", src, "-o", tmp_path / "one.parquet").returncode == 1  # some lines rejected
    assert pq.read_metadata(tmp_path / "one.parquet").num_rows == 7


def test_library_holds_the_lock(tmp_path: Path) -> None:
    with output_lock(tmp_path / "rej.jsonl"):
        with pytest.raises(RunError, match=f"process {os.getpid()}"):
            convert(ROLLOUTS, tmp_path / "o", ConvertOptions(rejects_path=tmp_path / "rej.jsonl"))


# ---- signals -----------------------------------------------------------------------------------


def _wait_for(pred: Any, proc: subprocess.Popen[str], timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return
        if proc.poll() is not None:
            pytest.fail(f"the command ended (rc {proc.returncode}) before the signal could be sent: {proc.stderr.read() if proc.stderr else ''}")
        time.sleep(0.01)
    proc.kill()
    pytest.fail("timed out waiting for the command to start writing")


def _children(pid: int) -> list[int]:
    kids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if int((d / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    kids.append(int(d.name))
            except (OSError, ValueError, IndexError):
                pass
    return kids


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.fixture(scope="module")
def big_input(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """~40 MB of rollouts: long enough that a signal lands mid-run."""
    return _write_rollouts(tmp_path_factory.mktemp("big") / "big.jsonl", 60_000, random_text=400)


@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_during_to_parquet_leaves_nothing(tmp_path: Path, big_input: Path, workers: int) -> None:
    # Before: SIGTERM killed the process (exit 143) and left an input-sized .gymverl-spill-* directory.
    out = tmp_path / "o"
    proc = _popen("to-parquet", big_input, "-o", out, "--best-of-n", "1", "--workers", str(workers), "--rejects", out / "rej.jsonl")
    _wait_for(lambda: any(p.name.startswith(".gymverl-spill-") for p in out.glob(".*")) and (workers == 1 or _children(proc.pid)), proc)
    kids = _children(proc.pid)
    time.sleep(0.3)  # well inside the spill pass
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert err.strip() == "error: interrupted; nothing was written (earlier outputs are unchanged)."
    assert not out.exists(), _tree(out)  # no spill, no temp parquet, no rejects temp, no lock, no empty dir
    time.sleep(0.5)
    assert not [k for k in kids if _alive(k)], "worker processes outlived the run"


def test_sigterm_while_writing_parquet_keeps_the_previous_output(tmp_path: Path, big_input: Path) -> None:
    out = tmp_path / "o"
    out.mkdir()
    convert(ROLLOUTS, out, ConvertOptions())
    before = (out / "train.parquet").read_bytes()
    proc = _popen("to-parquet", big_input, "-o", out, "--shard-size", "2000")
    _wait_for(lambda: any(p.name.startswith(".gymverl-parquet-") for p in out.glob(".*")), proc)
    time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert _tree(out) == ["train.parquet"] and (out / "train.parquet").read_bytes() == before


def test_sigterm_during_validate_rejects_leaves_no_temp_file(tmp_path: Path) -> None:
    src = _write_rollouts(tmp_path / "in.jsonl", 200_000, bad_every=1)  # every line rejected
    rej_dir = tmp_path / "r"
    rej_dir.mkdir()
    proc = _popen("validate", src, "--rejects", rej_dir / "rej.jsonl")
    _wait_for(lambda: any(p.name.endswith(".tmp") for p in rej_dir.iterdir()), proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert _tree(rej_dir) == []


def test_sigterm_case_from_the_issue(tmp_path: Path) -> None:
    case = SHARED / "cases" / "to-parquet-sigterm-leaves-spill"
    if not case.is_dir():
        pytest.skip(f"shared case {case} not present")
    seed = (case / "seed_row.jsonl").read_bytes().rstrip(b"\n") + b"\n"
    src = tmp_path / "in.jsonl"
    src.write_bytes(seed * 30_000)
    out = tmp_path / "o"
    proc = _popen("to-parquet", src, "-o", out, "--best-of-n", "1")
    _wait_for(lambda: any(p.name.startswith(".gymverl-spill-") for p in out.glob(".*")), proc)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=120)
    assert proc.returncode == 130 and not out.exists()


# ---- disk full / file-size limit ---------------------------------------------------------------


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 2 MB tmpfs (root only); skipped where mounting is not permitted."""
    d = tmp_path / "small"
    d.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(d)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({r.stderr.strip() or r.returncode}); the RLIMIT_FSIZE tests cover the same paths")
    try:
        yield d
    finally:
        subprocess.run(["umount", "-l", str(d)], check=False)


@pytest.fixture(scope="module")
def random_input(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """~6 MB of incompressible rollouts: more than the small disk holds as parquet or spill."""
    return _write_rollouts(tmp_path_factory.mktemp("rnd") / "rnd.jsonl", 3000, random_text=2000)


def test_full_output_disk(tmp_path: Path, small_fs: Path, random_input: Path) -> None:
    out = small_fs / "o"
    out.mkdir()
    convert(ROLLOUTS, out, ConvertOptions())  # an earlier output that must survive
    before = (out / "train.parquet").read_bytes()
    r = _cli("to-parquet", random_input, "-o", out)
    assert r.returncode == 1, r.stderr
    assert r.stderr.strip() == f"error: output directory {out}: no space left on device."
    assert _tree(out) == ["train.parquet"] and (out / "train.parquet").read_bytes() == before
    r = _cli("to-parquet", random_input, "-o", small_fs / "one.parquet")
    assert r.returncode == 1 and r.stderr.strip() == f"error: output {small_fs / 'one.parquet'}: no space left on device."
    assert _tree(small_fs) == ["o", "o/train.parquet"]


def test_full_spill_disk_names_the_spill(tmp_path: Path, small_fs: Path, random_input: Path) -> None:
    out = tmp_path / "o"
    r = _cli("to-parquet", random_input, "-o", out, "--best-of-n", "1", "--tmp-dir", small_fs)
    assert r.returncode == 1, r.stderr
    assert r.stderr.strip() == (
        f"error: temporary spill directory {small_fs}: no space left on device; free space there or choose another place with --tmp-dir."
    )
    assert _tree(small_fs) == [] and not out.exists()


def test_full_rejects_disk(tmp_path: Path, small_fs: Path) -> None:
    src = _write_rollouts(tmp_path / "in.jsonl", 40_000, bad_every=1)
    rej = small_fs / "rej.jsonl"
    for args in (["to-parquet", src, "-o", tmp_path / "o"], ["validate", src]):
        r = _cli(*args, "--rejects", rej)
        assert r.returncode == 1, r.stderr
        assert r.stderr.strip().splitlines()[-1] == f"error: {rej}: no space left on device."
        assert _tree(small_fs) == []


def _fsize_limit(limit: int) -> Any:
    def setup() -> None:
        # SIGXFSZ would kill the process outright; ignored, the write fails with EFBIG instead.
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return setup


@pytest.mark.parametrize("grouped", [False, True])
def test_file_size_limit_exits_1_and_leaves_nothing(tmp_path: Path, random_input: Path, grouped: bool) -> None:
    out = tmp_path / "o"
    extra = ["--best-of-n", "1", "--tmp-dir", tmp_path / "spill"] if grouped else []
    r = _cli("to-parquet", random_input, "-o", out, *extra, preexec_fn=_fsize_limit(1_000_000))
    assert r.returncode == 1, r.stderr
    reason = "file too large (a file-size limit was reached)"
    where = f"temporary spill directory {tmp_path / 'spill'}" if grouped else f"output directory {out}"
    assert r.stderr.strip().startswith(f"error: {where}: {reason}"), r.stderr
    assert not out.exists() and _tree(tmp_path / "spill") == []


def test_two_real_runs_on_one_output(tmp_path: Path, big_input: Path) -> None:
    out = tmp_path / "o"
    first = _popen("to-parquet", big_input, "-o", out, "--best-of-n", "1")
    try:
        _wait_for(lambda: any(p.name.startswith(".gymverl-spill-") for p in out.glob(".*")), first)
        second = _cli("to-parquet", big_input, "-o", out)
        assert second.returncode == 1
        assert second.stderr.strip() == (
            f"error: {out} is being written by process {first.pid} (another gymverl run); wait for it to finish or choose another output."
        )
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=120)
    assert first.returncode == 130 and not out.exists()


def test_a_later_run_removes_what_a_killed_run_left(tmp_path: Path, big_input: Path) -> None:
    # SIGKILL cannot be cleaned up after; the next run into the same place removes the leftovers.
    out = tmp_path / "o"
    proc = _popen("to-parquet", big_input, "-o", out, "--best-of-n", "1", "--rejects", tmp_path / "rej.jsonl")
    _wait_for(lambda: any(p.name.startswith(".gymverl-spill-") for p in out.glob(".*")), proc)
    proc.kill()
    proc.communicate(timeout=60)
    left = [p.name for p in out.iterdir()] + [p.name for p in tmp_path.glob(".rej.jsonl.*.tmp")]
    assert any(n.startswith(".gymverl-spill-") for n in left) and any(n.endswith(".tmp") for n in left), left
    r = _cli("to-parquet", ROLLOUTS, "-o", out, "--best-of-n", "1", "--rejects", tmp_path / "rej.jsonl")
    assert r.returncode == 0, r.stderr
    assert _tree(out) == ["train.parquet"]
    assert not list(tmp_path.glob(".rej.jsonl.*"))


# ---- outputs that are links, devices or pipes (a rename over them replaced them with a file) -----


def _fifo_reader(fifo: Path) -> tuple[Any, list[bytes]]:
    """Read `fifo` to its end in a thread (a writer's open blocks until a reader comes)."""
    import threading

    got: list[bytes] = []

    def read() -> None:
        with open(fifo, "rb") as f:
            got.append(f.read())

    t = threading.Thread(target=read, daemon=True)
    t.start()
    return t, got


def test_a_symlinked_output_is_written_through_the_link(tmp_path: Path) -> None:
    """`--rejects LINK` turned the link into a plain file and left its target stale."""
    (tmp_path / "far").mkdir()
    target = tmp_path / "far" / "rejects.jsonl"
    target.write_text("old\n")
    link = tmp_path / "rejects.jsonl"
    link.symlink_to(target)
    with JsonlWriter(link) as w:
        w.write({"line": 1})
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert target.read_bytes() == b'{"line":1}\n'
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp file or lock left beside the link
    pq_target = tmp_path / "far" / "data.parquet"
    pq_link = tmp_path / "data.parquet"
    pq_link.symlink_to(pq_target)
    convert(ROLLOUTS, pq_link, ConvertOptions(fmt="sft"))
    assert pq_link.is_symlink() and pq.read_table(pq_target).num_rows > 0


def test_a_pipe_given_as_rejects_is_written_in_place(tmp_path: Path) -> None:
    """A named pipe (or /dev/stdout, /dev/null) given as a rejects file became a regular file, and its
    reader got nothing. Now the rejects go into the pipe, and it stays a pipe."""
    src = tmp_path / "in.jsonl"
    src.write_bytes(ROLLOUTS.read_bytes() + b"{broken\n")
    for command in (["validate", src], ["to-parquet", src, "-o", tmp_path / "o"]):
        fifo = tmp_path / "rejects.fifo"
        os.mkfifo(fifo)
        reader, got = _fifo_reader(fifo)
        r = _cli(*command, "--rejects", fifo)
        reader.join(30)
        assert r.returncode == 1, (command, r.stderr)
        assert fifo.is_fifo(), command
        assert [orjson.loads(line)["code"] for line in got[0].splitlines()] == ["invalid_json"], command
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], command  # no lock file beside the pipe
        fifo.unlink()


def test_outputs_that_must_be_files_refuse_a_pipe(tmp_path: Path) -> None:
    """Parquet and rescore outputs are renamed into place (or resumed): a pipe there is one sentence, exit 2."""
    fifo = tmp_path / "out.parquet"
    os.mkfifo(fifo)
    link = tmp_path / "link.jsonl"
    link.symlink_to(fifo)
    for args in (["to-parquet", ROLLOUTS, "-o", fifo], ["rescore", ROLLOUTS, "-o", link, "-s", "http://127.0.0.1:9"]):
        r = _cli(*args)
        assert r.returncode == 2 and r.stderr.strip().splitlines() == [
            f"error: output {args[3]} is a named pipe, not a regular file: this output is written whole and renamed into place (or resumed), so give it a file path."
        ], (args, r.stderr)
        assert fifo.is_fifo() and link.is_symlink()
    with pytest.raises(UsageError, match="is a named pipe"):
        check_outputs([fifo], [])
    check_outputs([], [], streams=[fifo, link])  # rejects files and plots may share one stream
    with output_lock(fifo):
        assert sorted(p.name for p in tmp_path.iterdir()) == ["link.jsonl", "out.parquet"]  # a stream is not locked
    with atomic_path(link) as p:
        assert p == link  # written in place, through the link


def test_rejects_never_replace_a_file_that_is_not_a_rejects_file(tmp_path: Path) -> None:
    """`validate in.jsonl --rejects tasks.jsonl` emptied tasks.jsonl (exit 0); rescore refused the same
    slip for its output. Now --rejects refuses an existing file that is not an earlier rejects file."""
    src = _write_rollouts(tmp_path / "in.jsonl", 6, bad_every=3)
    victim = tmp_path / "tasks.jsonl"
    shutil.copy(TASKS, victim)
    for command in (["validate", src], ["to-parquet", src, "-o", tmp_path / "o"]):
        r = _cli(*command, "--rejects", victim)
        assert r.returncode == 2 and r.stderr.strip() == (
            f"error: {victim} already exists and is not a rejects file gymverl wrote; choose another --rejects path or remove it."
        ), (command, r.stderr)
        assert victim.read_bytes() == TASKS.read_bytes()
        assert not (tmp_path / "o").exists()  # refused before anything was made
    for name in ("rejects.jsonl", "rejects.jsonl.gz"):  # an earlier rejects file (plain or gzip) is replaced
        for _ in range(2):
            r = _cli("validate", src, "--rejects", tmp_path / name)
            assert r.returncode == 1, r.stderr
        assert [p.obj["line"] for p in read_jsonl(tmp_path / name)] == [1, 4]
