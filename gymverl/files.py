"""Every output gymverl writes goes through this module: atomic, locked, never over an input.

The guarantees (stated once, in the README too):

- **Atomic.** An output is written to a temp file in its own directory, flushed and fsync'ed, then
  renamed over the final path (`os.replace`), and the directory entry is fsync'ed. A reader sees
  the old file or the whole new one, never half of one; on any error the temp file is removed and
  an existing output is left as it was.
- **Permissions** follow the user's umask, like a plain `open()` (mkstemp alone would give 0600).
- **Compressed by name.** An output whose name ends in `.gz` is written gzip-compressed.
- **Never over an input.** `check_outputs` refuses, in one sentence, an output that is the same file
  as an input of the same command: the same path, a symlink to it, or a hard link (same inode).
- **Locked.** `output_lock` holds an advisory `flock` on a sidecar `.NAME.lock` beside the output for
  the whole run, so two processes can never write the same output at once; the second one is told
  the first one's PID. The sidecar is removed on release. (An output directory holds its lock
  inside: `DIR/.gymverl.lock`.) Holding the lock, a run removes the temp files of that output
  left by a killed run.
- **Links and streams.** An output that is a symlink is written through it: the new file replaces
  the link's final target (beside it, on its filesystem), and the link stays a link. An output that
  exists and is neither a regular file nor a directory (`/dev/null`, `/dev/stdout`, a named pipe)
  is a stream: JSONL outputs (rejects files) and plots are written into it in place; outputs that
  must be files (parquet, rescore's resumable files) refuse it in one sentence (`check_outputs`).
  Renaming over such a path would replace the device or pipe with a regular file.
- **No leftovers.** Work files (to-parquet's spill, unfinished parquet shards) live in a
  `scratch_dir` that is removed on any exit; one left by a SIGKILLed run is removed by the next
  run that makes a scratch directory in the same place.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import gzip
import os
import re
import shutil
import stat
import tempfile
from pathlib import Path
from typing import IO, Iterable, Iterator

from gymverl.errors import RunError, UsageError
from gymverl.proc import shielded as _shielded


def is_gzip_name(path: str | os.PathLike[str]) -> bool:
    """True when an output named `path` is to be gzip-compressed (its name ends in `.gz`)."""
    return str(path).lower().endswith(".gz")


def _umask() -> int:
    # os.umask can only be read by setting it; set it straight back.
    mask = os.umask(0)
    os.umask(mask)
    return mask


def fsync_dir(directory: str | os.PathLike[str]) -> None:
    """fsync a directory so a rename inside it survives a crash (best effort where unsupported)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def new_temp_file(directory: str | os.PathLike[str], *, prefix: str, suffix: str = ".tmp") -> Path:
    """Create an empty temp file in `directory` (made if missing) with the permissions a plain `open()` gives.

    mkstemp alone would give 0600, which the final file would keep after the rename.
    """
    Path(directory).mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=directory)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
    finally:
        os.close(fd)
    return Path(tmp)


def output_path(path: str | os.PathLike[str]) -> Path:
    """Where an output named `path` is written: a symlink's final target (so the link stays a link and
    the rename happens beside the target, on its filesystem), else `path` itself."""
    p = Path(path)
    if not p.is_symlink() or stream_kind(p) is not None:
        # (a link to a device or pipe, such as /proc/self/fd/1, is opened through the link itself:
        # its "real path" names no file)
        return p
    return Path(os.path.realpath(p))


_SPECIAL_KINDS = ((stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a named pipe"), (stat.S_ISSOCK, "a socket"))


def stream_kind(path: str | os.PathLike[str]) -> str | None:
    """"a character device", "a named pipe", ... when `path` (symlinks followed) exists and is neither a
    regular file nor a directory: an output there is written in place, never renamed over; else None."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return None
    for test, kind in _SPECIAL_KINDS:
        if test(mode):
            return kind
    return None


def _write_in_place(tmp: Path, final: Path) -> None:
    # A device or pipe cannot be replaced atomically: its reader gets the bytes, in one pass.
    with open(tmp, "rb") as src, open(final, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
    remove_quietly(tmp)


def commit_temp(tmp: str | os.PathLike[str], final: str | os.PathLike[str]) -> None:
    """fsync the finished temp file `tmp`, rename it over `final` (same filesystem) and fsync the directory.

    A `final` that is a device or pipe (`stream_kind`) is written into instead, and `tmp` removed."""
    if stream_kind(final) is not None:
        _write_in_place(Path(tmp), Path(final))
        return
    _fsync_file(Path(tmp))
    os.replace(tmp, final)
    fsync_dir(Path(final).parent)


def remove_quietly(*paths: str | os.PathLike[str]) -> None:
    """Delete files that may already be gone (cleanup after an error or interrupt)."""
    for p in paths:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(p)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], *, prefix: str | None = None) -> Iterator[Path]:
    """Yield a temp path beside `path`; on success it replaces `path` atomically, on error it is removed.

    The caller writes the temp path itself (any library that takes a path: pyarrow, matplotlib).
    The file is fsync'ed before the rename and given the permissions a plain `open()` would give.
    Raises whatever writing raised; the final path is untouched then. A symlink is written through
    (`output_path`); a device or pipe (`stream_kind`) is yielded itself, to be written in place.
    """
    final = output_path(path)
    if stream_kind(final) is not None:
        yield final
        return
    tmp_path = new_temp_file(final.parent, prefix=prefix or f".{final.name}.")
    try:
        yield tmp_path
        commit_temp(tmp_path, final)
    except BaseException:
        with _shielded():
            remove_quietly(tmp_path)
        raise


def _fsync_file(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], *, compress: bool | None = None, buffering: int = -1) -> Iterator[IO[bytes]]:
    """Open a binary stream whose bytes become `path` atomically when the block ends without error.

    `compress=None` gzips when the name ends in `.gz`; True/False force it. `buffering` is passed to
    `open()`. Errors while writing or closing (disk full) propagate and leave no file behind.
    """
    gz = is_gzip_name(path) if compress is None else compress
    with atomic_path(path) as tmp:
        with open(tmp, "wb", buffering=buffering) as raw:
            if gz:
                # mtime=0: the same rows give the same bytes (reproducible outputs).
                with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as stream:
                    yield stream  # type: ignore[misc]
            else:
                yield raw


def open_append(path: str | os.PathLike[str], *, compress: bool | None = None) -> IO[bytes]:
    """Open `path` for appending in place (resumable outputs), gzip by name like `atomic_open`.

    A gzip file gets a new gzip member, which every gzip reader (gymverl's included) reads as one
    stream; `flush()` on it makes every line written so far readable. Not atomic by design: the
    caller flushes whole lines, so a crash loses at most the line in flight.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    gz = is_gzip_name(path) if compress is None else compress
    if gz:
        return gzip.open(final, "ab")  # type: ignore[return-value]
    return open(final, "ab")


def _identity(path: str | os.PathLike[str]) -> tuple[int, int] | None:
    try:
        st = os.stat(path)  # follows symlinks: a link to an input is that input
    except OSError:
        return None
    return st.st_dev, st.st_ino


def check_outputs(
    outputs: Iterable[str | os.PathLike[str] | None],
    inputs: Iterable[str | os.PathLike[str] | None],
    *,
    streams: Iterable[str | os.PathLike[str] | None] = (),
) -> None:
    """Refuse (UsageError, exit 2) an output that is an input of the same command, or two outputs that are one file.

    Compares resolved paths and (device, inode), so a symlink or hard link to an input is caught.
    `None` entries and `-` (stdin/stdout) are ignored. Call it before anything is written.
    `outputs` must be regular files (or directories): a device or named pipe there is refused.
    `streams` (rejects files, plots) may also be one (`/dev/null`, `/dev/stdout`: written in place,
    and two streams may share it).
    """
    ins = [Path(p) for p in inputs if p is not None and str(p) != "-"]
    outs = [Path(p) for p in outputs if p is not None and str(p) != "-"]
    for out in outs:
        kind = stream_kind(out)
        if kind is not None:
            raise UsageError(f"output {out} is {kind}, not a regular file: this output is written whole and renamed into place (or resumed), so give it a file path.")
    for p in streams:
        if p is not None and str(p) != "-" and stream_kind(p) is None:
            outs.append(Path(p))
    in_ids = {}
    for p in ins:
        ident = _identity(p)
        if ident is not None:
            in_ids[ident] = p
    seen: dict[object, Path] = {}
    for out in outs:
        keys: list[object] = [("path", os.path.realpath(out))]
        ident = _identity(out)
        if ident is not None:
            keys.append(ident)
            if ident in in_ids:
                what = "is" if os.path.realpath(out) == os.path.realpath(in_ids[ident]) else "is the same file as"
                raise UsageError(f"output {out} {what} the input {in_ids[ident]}; choose another output path (inputs are never overwritten).")
        for inp in ins:
            if os.path.realpath(out) == os.path.realpath(inp):
                raise UsageError(f"output {out} is the input {inp}; choose another output path (inputs are never overwritten).")
        for key in keys:
            if key in seen:
                raise UsageError(f"outputs {seen[key]} and {out} are the same file; give each output its own path.")
        for key in keys:
            seen[key] = out


def _lock_path(output: Path) -> Path:
    if output.is_dir():
        # An output directory (to-parquet -o DIR) holds its own lock: DIR may be "." or a mount point.
        return output / ".gymverl.lock"
    return output.parent / f".{output.name}.lock"


def _leftover_temps(output: Path) -> list[Path]:
    """Temp files `atomic_path` made for `output` (`.NAME.XXXXXXXX.tmp`): only a dead run leaves them."""
    pat = re.compile(rf"^\.{re.escape(output.name)}\.[A-Za-z0-9_]{{8}}\.tmp$")
    try:
        return [p for p in output.parent.iterdir() if pat.match(p.name) and p.is_file() and not p.is_symlink()]
    except OSError:
        return []


class OutputLock:
    """An exclusive advisory lock on one output path, held by this process until `release()`.

    Implemented as `flock` on a sidecar `.NAME.lock` in the output's directory holding the owner's
    PID. Locks are advisory: they stop other gymverl processes, not other programs.
    """

    def __init__(self, output: str | os.PathLike[str]) -> None:
        self.output = output_path(output)  # a symlink's target: the file really written
        self.path = _lock_path(self.output)
        self._fd: int | None = None

    def acquire(self) -> "OutputLock":
        """Take the lock or raise `RunError` (exit 1) naming the PID that holds it. Never blocks.

        A device or pipe (`/dev/null`) is not locked: it is a stream, and its directory is not ours."""
        if stream_kind(self.output) is not None:
            return self
        self.output.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666 & ~_umask())
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                owner = _read_pid(fd)
                os.close(fd)
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise
                who = f"process {owner}" if owner else "another process"
                raise RunError(f"{self.output} is being written by {who} (another gymverl run); wait for it to finish or choose another output.") from None
            # The previous owner may have removed the sidecar between our open and our flock: then
            # we hold a lock on an unlinked file and must try again on the new one.
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        if not self.output.is_dir():
            # We hold the lock, so no live gymverl run is writing this output: a temp file of its
            # name was left by a run that was killed (SIGKILL, power loss) and is removed now.
            remove_quietly(*_leftover_temps(self.output))
        return self

    def release(self) -> None:
        """Remove the sidecar and drop the lock (unlink first, so no one can lock a stale file)."""
        if self._fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> "OutputLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read_pid(fd: int) -> int | None:
    try:
        data = os.pread(fd, 32, 0)
        return int(data.strip() or b"0") or None
    except (OSError, ValueError):
        return None


@contextlib.contextmanager
def output_lock(*outputs: str | os.PathLike[str] | None) -> Iterator[None]:
    """Hold `OutputLock`s on every given output (None skipped) for the duration of the block."""
    with contextlib.ExitStack() as stack:
        for out in outputs:
            if out is not None and str(out) != "-":
                stack.enter_context(OutputLock(out))
        yield


# ---- scratch directories -------------------------------------------------------------------------

_SCRATCH_OWNER = ".owner"


@contextlib.contextmanager
def scratch_dir(parent: str | os.PathLike[str], *, kind: str = "tmp") -> Iterator[Path]:
    """A private temp directory `.gymverl-KIND-XXXXXXXX` in `parent`, removed with everything in it on exit.

    Used for to-parquet's spill partitions and unfinished parquet shards: a directory beside the
    output is on the same filesystem, so finished files are renamed out of it. The directory holds a
    `flock`ed owner file for as long as it lives; on entry, every `.gymverl-*` directory in `parent`
    whose owner file is no longer locked (its run was killed with SIGKILL, or the machine died) is
    removed, so leftovers never pile up. Directories without an owner file are never touched.
    Removal ignores Ctrl-C/SIGTERM, so a second signal cannot cut it short.
    """
    base = Path(parent)
    base.mkdir(parents=True, exist_ok=True)
    _sweep_scratch(base)
    root = Path(tempfile.mkdtemp(prefix=f".gymverl-{kind}-", dir=base))
    fd = -1
    try:
        fd = os.open(root / _SCRATCH_OWNER, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)  # blocks only while a sweeper looks at it (never long)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield root
    finally:
        with _shielded():
            shutil.rmtree(root, ignore_errors=True)
            if fd >= 0:
                os.close(fd)


def _sweep_scratch(base: Path) -> None:
    try:
        candidates = [p for p in base.iterdir() if p.name.startswith(".gymverl-") and p.is_dir() and not p.is_symlink()]
    except OSError:
        return
    for d in candidates:
        try:
            fd = os.open(d / _SCRATCH_OWNER, os.O_RDWR)
        except OSError:
            continue  # not ours, or its owner has not created the file yet
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # its run is alive
            # An empty owner file: the owner has created it but not locked it yet (it blocks on us).
            if _read_pid(fd) is not None:
                shutil.rmtree(d, ignore_errors=True)
        finally:
            os.close(fd)


# ---- resumable outputs (appended in place) -------------------------------------------------------
# `gymverl rescore` writes its output and failures files in place, appending, so that a run cut short
# can be continued: a checkpoint records sizes that are known to be on disk, and a resumed (or
# failed) run cuts each file back to that size. `ResumableFile` is that kind of output; the
# checkpoint itself goes through `atomic_open` like every other file.


class ResumableFile:
    """An output appended to in place, cut back to a known size when opened or after a failure.

    `compress=None` gzips when the name ends in `.gz` (True/False force it): each `flush` then
    writes one complete gzip member, so every size `flush` leaves (the sizes a checkpoint records)
    ends a valid gzip file, and cutting back to one keeps it valid (gzip readers read concatenated
    members as one stream).

    Bytes are buffered here (`write` costs one `bytearray` append) and written with `os.write` in
    chunks of `buffer_bytes`. A failed write raises `OSError` naming the file (disk full: ENOSPC,
    a file-size limit: EFBIG); the buffered bytes are then dropped, never written twice, and the file
    is left for the caller to `truncate` back to its last checkpoint. `close(discard=True)` closes
    without writing what is buffered (the path taken after an error: nothing more is written).
    The file's permissions follow the umask, like a plain `open()`.
    """

    def __init__(self, path: str | os.PathLike[str], size: int = 0, *, compress: bool | None = None, buffer_bytes: int = 1 << 20) -> None:
        """Open `path` (created if missing) and cut it to `size` bytes; raises OSError naming the path."""
        self.path = Path(path)
        self.compress = is_gzip_name(path) if compress is None else compress
        self.buffer_bytes = buffer_bytes
        self._buf = bytearray()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd: int | None = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o666)
        try:
            os.ftruncate(self._fd, size)
        except OSError as exc:
            os.close(self._fd)
            self._fd = None
            raise self._named(exc) from None
        self.size = size  # bytes handed to the OS so far (what `tell` reports after `flush`)

    def _named(self, exc: OSError) -> OSError:
        return OSError(exc.errno, exc.strerror or str(exc), str(self.path))

    def write(self, data: bytes) -> None:
        """Append bytes (buffered; written out once `buffer_bytes` have gathered)."""
        self._buf += data
        if len(self._buf) >= self.buffer_bytes:
            self.flush()

    def flush(self) -> None:
        """Hand everything buffered to the OS; on failure the buffer is dropped and OSError raised."""
        if not self._buf or self._fd is None:
            return
        if self.compress:
            # mtime=0: the same rows give the same bytes; level 6: most of 9's ratio, far faster.
            self._buf[:] = gzip.compress(self._buf, compresslevel=6, mtime=0)
        view = memoryview(self._buf)
        try:
            while view:
                n = os.write(self._fd, view)
                self.size += n
                view = view[n:]
        except OSError as exc:
            raise self._named(exc) from None
        finally:
            view.release()
            self._buf.clear()

    def tell(self) -> int:
        """The file's size once everything buffered is written (before compression)."""
        return self.size + len(self._buf)

    def fileno(self) -> int:
        """The OS file descriptor (for an fsync in another thread)."""
        assert self._fd is not None, "file is closed"
        return self._fd

    def sync(self) -> None:
        """fsync the file (after `flush`)."""
        if self._fd is not None:
            try:
                os.fsync(self._fd)
            except OSError as exc:
                raise self._named(exc) from None

    def truncate(self, size: int) -> None:
        """Drop what is buffered and cut the file back to `size` bytes (frees room on a full disk)."""
        self._buf.clear()
        if self._fd is not None:
            os.ftruncate(self._fd, size)
            self.size = size

    def close(self, *, discard: bool = False) -> None:
        """Flush and fsync (unless `discard`), then close; the descriptor is closed even when that fails."""
        if self._fd is None:
            return
        try:
            if not discard:
                self.flush()
                self.sync()
        finally:
            self._buf.clear()
            os.close(self._fd)
            self._fd = None
