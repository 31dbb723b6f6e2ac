"""Inputs: the one way gymverl opens a file it reads.

`open_input(source)` accepts what a user can type for an input:

- a path to a regular file, plain or gzip-compressed (gzip is recognised by its magic bytes, not
  by the name: a `.gz` file holding plain text is read as plain text, and the other way round);
- ``-`` for standard input;
- a pipe: ``/dev/stdin``, a named pipe (FIFO), bash process substitution ``<(...)``
  (``/dev/fd/63``), a character device.

Before anything is read for real, the first block of the input is looked at, so that a Parquet
file, a zip/zstd/bzip2/xz archive or any other binary file (NUL bytes in the first block) is
refused with one sentence (`UsageError`, exit 2) instead of a page of "not valid UTF-8" lines.
A directory, a missing path and an unreadable one get one sentence too.

A pipe can be read only once. A command that reads its input once (validate, stats, to-parquet
with ``--input-kind`` given) streams it. A command that needs two passes (to-parquet's input-kind
detection, rescore's resume fingerprint) asks for `passes=2` (or calls `Input.reusable()`); a pipe
is then copied ("spooled") to a temporary file first, which is removed when the `Input` is
closed: at the end of the `with` block, on an error, on Ctrl-C / SIGTERM (the CLI turns those into
`KeyboardInterrupt`, which runs the same `with` exit), and, as a last resort, when the object is
garbage-collected or the interpreter exits.

Typical use::

    with open_input(path, passes=1) as src:
        with src.open() as f:          # binary, decompressed, with .peek() and .readline(limit)
            ...

Library functions accept a path or an `Input` (`as_input`), so the CLI can open the input once,
early (errors before any output is touched), and hand the same object on.
"""

from __future__ import annotations

import gzip
import io
import os
import shutil
import stat
import tempfile
import weakref
import zlib
from pathlib import Path
from typing import IO, Any, Union

from gymverl.errors import UsageError, from_os_error


class InputError(UsageError):
    """A problem with an input path or file that stops the whole run (one clear sentence, exit 2)."""


STDIN = "-"
# How much of an input is looked at before it is read as JSONL (also what a pipe has buffered).
HEAD_BYTES = 64 * 1024
READ_CHUNK = 1024 * 1024  # the buffer size of every read and copy of an input
GZIP_MAGIC = b"\x1f\x8b"

# Magic bytes of formats someone may plausibly hand gymverl by mistake -> what to call them and
# what to do instead. Checked in order, on the raw first bytes (and on the first decompressed
# bytes of a gzip file).
_MAGIC: tuple[tuple[bytes, str, str], ...] = (
    (b"PAR1", "a Parquet file", "this command reads NeMo Gym JSONL (.jsonl or .jsonl.gz)"),
    (b"ARROW1", "an Arrow/Feather file", "this command reads NeMo Gym JSONL (.jsonl or .jsonl.gz)"),
    (b"PK\x03\x04", "a zip archive", "unzip it and give the .jsonl file inside"),
    (b"\x28\xb5\x2f\xfd", "zstd-compressed data", "gymverl reads plain or gzip JSONL: decompress it first (zstd -d FILE), or pipe it in (zstd -dc FILE | gymverl COMMAND -)"),
    (b"BZh", "bzip2-compressed data", "gymverl reads plain or gzip JSONL: decompress it first (bunzip2 -k FILE), or pipe it in (bzcat FILE | gymverl COMMAND -)"),
    (b"\xfd7zXZ\x00", "xz-compressed data", "gymverl reads plain or gzip JSONL: decompress it first (xz -dk FILE), or pipe it in (xzcat FILE | gymverl COMMAND -)"),
    (b"\x93NUMPY", "a NumPy array file", "this command reads NeMo Gym JSONL (.jsonl or .jsonl.gz)"),
    (b"SQLite format 3\x00", "an SQLite database", "this command reads NeMo Gym JSONL (.jsonl or .jsonl.gz)"),
)

Source = Union[str, "os.PathLike[str]", "Input"]


def _is_blank_bzip(head: bytes) -> bool:
    # "BZh" starts plenty of text lines too; a bzip2 stream continues with a block size digit and
    # the block magic 0x314159265359.
    return not (len(head) >= 10 and head[3:4].isdigit() and head[4:10] == b"1AY&SY")


def sniff(head: bytes, name: str) -> None:
    """Raise `UsageError` (one sentence) when `head`, the first bytes of input `name`, is not text.

    Recognises Parquet, Arrow, zip, zstd, bzip2, xz, NumPy and SQLite by their magic bytes, and any
    other binary data (or UTF-16 text) by a NUL byte; JSONL never contains a raw NUL. A gzip head is
    decompressed as far as it goes and checked the same way (a corrupt one is left to the reader,
    which reports the line where it breaks).
    """
    _sniff_plain(head, name, "")
    if head.startswith(GZIP_MAGIC):
        try:
            inner = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(head, HEAD_BYTES)
        except zlib.error:
            return
        _sniff_plain(inner, name, "gzip-compressed ")


def _sniff_plain(head: bytes, name: str, wrapped: str) -> None:
    for magic, what, hint in _MAGIC:
        if head.startswith(magic):
            if magic == b"BZh" and _is_blank_bzip(head):
                continue
            inside = " (inside gzip)" if wrapped else ""
            raise InputError(f"{name} is {what}{inside}, not JSONL; {hint}.")
    if head.startswith(GZIP_MAGIC):
        return  # compressed bytes: the decompressed head is checked by the caller
    nul = head.find(b"\x00")
    if nul >= 0:
        utf16 = head.startswith((b"\xff\xfe", b"\xfe\xff"))
        what = "UTF-16 text" if utf16 else "a binary file"
        inside = ", inside gzip" if wrapped else ""
        raise InputError(
            f"{name} is {what} (NUL byte at offset {nul}{inside}), not JSONL; gymverl reads UTF-8 JSON lines (.jsonl or .jsonl.gz)."
        )


class Input:
    """An input opened by `open_input`: a reusable file, or a pipe that can be read once.

    Attributes:
        name: how messages name it: the path as given, or ``<stdin>`` for ``-``.
        path: a regular file that can be opened any number of times (the input itself, or the
            spooled copy of a pipe); None for a pipe not spooled.
        compressed: the bytes are gzip (by magic), `open()` decompresses them.
        spooled: `path` is a temporary copy of a pipe, removed by `close()`.
    """

    def __init__(
        self, name: str, *, path: Path | None, compressed: bool, stream: IO[bytes] | None = None,
        head: bytes = b"", spool: Path | None = None, identity: tuple[int, int] | None = None,
    ) -> None:
        self.name = name
        self.path = path
        self.compressed = compressed
        self._stream = stream  # unbuffered raw pipe (the head already taken from it)
        self._head = head
        self._spool = spool
        self._identity = identity
        self._finalizer: Any = None
        if stream is not None or spool is not None:
            self._finalizer = weakref.finalize(self, _release, stream, spool, identity)

    # -- what it is ------------------------------------------------------------------------------
    @property
    def is_pipe(self) -> bool:
        """True when the input is a pipe/stream (spooled or not), not a regular file."""
        return self._spool is not None or self.path is None

    @property
    def spooled(self) -> bool:
        """True when `path` is a temporary copy of a pipe."""
        return self._spool is not None

    @property
    def size(self) -> int | None:
        """Bytes on disk (the compressed size for gzip); None for a pipe not spooled."""
        if self.path is None:
            return None
        try:
            return self.path.stat().st_size
        except OSError:
            return None

    @property
    def progress_total(self) -> int | None:
        """The number of (decompressed) bytes `open()` will give, when known: for progress bars."""
        return None if self.compressed else self.size

    @property
    def stem(self) -> str:
        """The file name without .gz/.jsonl/.json (``stdin`` for standard input): a default label."""
        if self.name == "<stdin>":
            return "stdin"
        name = Path(self.name).name
        for suffix in (".gz", ".jsonl", ".json"):
            name = name.removesuffix(suffix)
        return name or "nemo_gym"

    def __str__(self) -> str:
        return self.name

    def __repr__(self) -> str:
        return f"Input({self.name!r}, path={str(self.path) if self.path else None!r}, compressed={self.compressed})"

    # -- reading ---------------------------------------------------------------------------------
    def reusable(self, tmp_dir: str | os.PathLike[str] | None = None) -> "Input":
        """Make sure the input can be read more than once: a pipe not yet read is spooled to a
        temporary file in `tmp_dir` (default: the system's temp directory). Returns self."""
        if self.path is not None:
            return self
        if self._stream is None:
            raise InputError(f"{self.name} is a pipe that was already read; gymverl can read a pipe only once.")
        stream, head = self._stream, self._head
        self._stream, self._head = None, b""
        tmp = "(temp file)"
        spool: Path | None = None
        try:
            if tmp_dir is not None:
                Path(tmp_dir).mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".gymverl-input-", suffix=".spool", dir=tmp_dir)
            spool = Path(tmp)
            with os.fdopen(fd, "wb") as out:
                out.write(head)
                shutil.copyfileobj(stream, out, READ_CHUNK)
        except BaseException as exc:  # Ctrl-C/SIGTERM included: never leave a half spool behind
            if spool is not None:
                spool.unlink(missing_ok=True)
            stream.close()
            _forget(self._identity)
            if isinstance(exc, OSError):
                raise from_os_error(exc, f"{tmp} (copy of {self.name})") from None
            raise
        stream.close()
        _forget(self._identity)
        self._identity = None
        self.path = self._spool = spool
        if self._finalizer is not None:
            self._finalizer.detach()
        self._finalizer = weakref.finalize(self, _release, None, spool, None)
        return self

    def open(self) -> IO[bytes]:
        """A binary stream of the (decompressed) content, with `peek` and `readline(limit)`.

        A regular file (or spool) may be opened any number of times; a pipe only once (then
        `UsageError`). The caller closes the stream."""
        if self.path is not None:
            try:
                f: IO[bytes] = open(self.path, "rb", buffering=READ_CHUNK)
            except OSError as exc:
                raise from_os_error(exc, self.name) from None
        else:
            if self._stream is None:
                raise InputError(f"{self.name} is a pipe that was already read; gymverl can read a pipe only once.")
            raw = _Prefixed(self._head, self._stream)
            self._stream, self._head = None, b""
            f = io.BufferedReader(raw, READ_CHUNK)
        if self.compressed:
            return _GzipReader(f)
        return f

    def close(self) -> None:
        """Release the pipe and remove the spooled copy, if any (idempotent)."""
        if self._finalizer is not None:
            self._finalizer()
        self._stream = None
        if self._spool is not None:
            self.path = None
            self._spool = None

    def __enter__(self) -> "Input":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Prefixed(io.RawIOBase):
    """A raw stream that first returns `head` (already read from `raw` for sniffing), then `raw`."""

    def __init__(self, head: bytes, raw: IO[bytes]) -> None:
        self._head = memoryview(head)
        self._raw = raw

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        if self._head:
            n = min(len(b), len(self._head))
            b[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        return self._raw.readinto(b)  # type: ignore[attr-defined]

    def close(self) -> None:
        try:
            self._raw.close()
        finally:
            super().close()


class _GzipReader(gzip.GzipFile):
    """GzipFile over an open binary stream that also closes that stream."""

    def __init__(self, f: IO[bytes]) -> None:
        super().__init__(fileobj=f, mode="rb")
        self._owned = f

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._owned.close()


# Pipes currently open in this process, by (device, inode): the same pipe given twice (``-`` and
# ``/dev/stdin``, or ``--tasks /dev/stdin``) would hand all its data to the first reader and
# nothing to the second, so the second is refused.
_OPEN_PIPES: dict[tuple[int, int], str] = {}


def _check_pipe_unused(identity: tuple[int, int], name: str) -> None:
    other = _OPEN_PIPES.get(identity)
    if other is not None:
        raise InputError(f"{name} and {other} are the same pipe; its data can be read only once, so give it once.")


def _forget(identity: tuple[int, int] | None) -> None:
    if identity is not None:
        _OPEN_PIPES.pop(identity, None)


def _release(stream: IO[bytes] | None, spool: Path | None, identity: tuple[int, int] | None) -> None:
    if stream is not None:
        try:
            stream.close()
        except OSError:
            pass
    if spool is not None:
        try:
            spool.unlink(missing_ok=True)
        except OSError:
            pass
    _forget(identity)


def _read_head(f: IO[bytes], n: int) -> bytes:
    """Up to `n` bytes from a raw stream: a pipe hands out what is there, so read until n or EOF."""
    parts: list[bytes] = []
    got = 0
    while got < n:
        b = f.read(n - got)
        if not b:
            break
        parts.append(b)
        got += len(b)
    return b"".join(parts)


def _name_of(source: str | os.PathLike[str]) -> str:
    s = os.fspath(source)
    return "<stdin>" if s == STDIN else s


def open_input(
    source: Source, *, passes: int = 1, tmp_dir: str | os.PathLike[str] | None = None, what: str = "JSONL"
) -> Input:
    """Check and open an input (see the module docstring); use the result as a context manager.

    Args:
        source: a path, ``-`` for standard input, or an `Input` (returned as it is, spooled first
            when `passes` > 1 and it is an unread pipe).
        passes: how many times the caller will read it; > 1 spools a pipe to a temporary file.
        tmp_dir: where a spool goes (default: the system's temp directory).
        what: what kind of file the command expects, for the directory message.

    Raises:
        UsageError: missing, a directory, unreadable, Parquet/binary, or the same pipe twice.
        RunError: the spool could not be written for lack of space.
    """
    if isinstance(source, Input):
        return source.reusable(tmp_dir) if passes > 1 else source
    name = _name_of(source)
    if name == "<stdin>":
        try:
            st = os.fstat(0)
            fd = os.dup(0)
        except OSError:
            raise InputError("standard input is closed; give a file, or pipe the data in.") from None
        stream: IO[bytes] = io.FileIO(fd, "rb", closefd=True)
        return _from_stream(name, stream, st, passes, tmp_dir)
    p = Path(source)  # type: ignore[arg-type]
    try:
        st = os.stat(p)
    except (FileNotFoundError, NotADirectoryError):
        raise InputError(f"{name}: no such file.") from None
    except PermissionError:
        raise InputError(f"{name}: cannot be read (permission denied).") from None
    except OSError as exc:
        raise from_os_error(exc, name) from None
    except ValueError:  # e.g. an embedded NUL byte
        raise InputError(f"{name!r} is not a valid path.") from None
    if stat.S_ISDIR(st.st_mode):
        raise InputError(f"{name}: is a directory, not a {what} file.")
    if stat.S_ISFIFO(st.st_mode):
        # Before open(): a second open of a FIFO whose writer is gone would wait forever.
        _check_pipe_unused((st.st_dev, st.st_ino), name)
    try:
        # A FIFO blocks here until a writer opens it: normal pipe semantics (Ctrl-C/SIGTERM stop it).
        f: IO[bytes] = open(p, "rb", buffering=0)
    except PermissionError:
        raise InputError(f"{name}: cannot be read (permission denied).") from None
    except IsADirectoryError:
        raise InputError(f"{name}: is a directory, not a {what} file.") from None
    except OSError as exc:
        raise from_os_error(exc, name) from None
    if stat.S_ISREG(st.st_mode):
        try:
            with f:
                head = f.read(HEAD_BYTES)
        except OSError as exc:
            raise from_os_error(exc, name) from None
        sniff(head, name)
        return Input(name, path=p, compressed=head.startswith(GZIP_MAGIC))
    return _from_stream(name, f, os.fstat(f.fileno()), passes, tmp_dir)


def _from_stream(name: str, stream: IO[bytes], st: os.stat_result, passes: int, tmp_dir: Any) -> Input:
    identity = (st.st_dev, st.st_ino)
    if stat.S_ISFIFO(st.st_mode) or stat.S_ISSOCK(st.st_mode):
        try:
            _check_pipe_unused(identity, name)
        except InputError:
            stream.close()
            raise
        _OPEN_PIPES[identity] = name
    else:
        identity = None  # type: ignore[assignment]
    try:
        head = _read_head(stream, HEAD_BYTES)
        sniff(head, name)
    except BaseException as exc:
        stream.close()
        _forget(identity)
        if isinstance(exc, OSError):
            raise from_os_error(exc, name) from None
        raise
    src = Input(name, path=None, compressed=head.startswith(GZIP_MAGIC), stream=stream, head=head, identity=identity)
    if passes > 1:
        src.reusable(tmp_dir)
    return src


def as_input(source: Source, *, passes: int = 1, tmp_dir: str | os.PathLike[str] | None = None) -> Input:
    """`source` as an `Input`: an `Input` is returned as it is (made reusable when `passes` > 1),
    anything else goes through `open_input`. For library functions that take "a path or an Input"."""
    return open_input(source, passes=passes, tmp_dir=tmp_dir)


def regular_file(source: str | os.PathLike[str], *, why: str = "this command reads it more than once") -> Path:
    """A path that must be a regular file (e.g. one handed on to another program), checked like
    `open_input` (missing, directory, unreadable, Parquet/binary); a pipe or ``-`` is refused with
    one sentence, without opening it (opening a FIFO would wait for a writer)."""
    name = _name_of(source)
    if name != "<stdin>":
        try:
            mode = os.stat(source).st_mode
        except OSError:
            mode = None
        if mode is None or stat.S_ISREG(mode) or stat.S_ISDIR(mode):
            src = open_input(source)  # the one sentence for missing, directory, unreadable, binary
            assert src.path is not None
            return src.path
    raise InputError(f"{name} is a pipe, not a regular file; {why}: write it to a file first.")


__all__ = ["HEAD_BYTES", "Input", "InputError", "STDIN", "as_input", "open_input", "regular_file", "sniff"]
