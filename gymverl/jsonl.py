"""Streaming JSONL: line-numbered reading, atomic writing, and a rejects file.

Nothing here holds a whole file in memory: lines are read one at a time with a byte limit, so a
multi-gigabyte rollout file or a single 50 MB line costs a bounded amount of memory.

Every reader takes a path, ``-`` (standard input) or an already opened `gymverl.inputs.Input`;
opening goes through `gymverl.inputs` (pipes, gzip by magic bytes, Parquet/binary refused).
Blank lines (empty or only spaces/tabs/CR) are skipped and counted (`LineReader.blank`), never
rejected: a trailing empty line is not a broken record.
"""

from __future__ import annotations

import contextlib
import gzip
import math
import os
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Iterator, Union

import msgspec
import orjson
from gymverl.errors import UsageError, from_os_error
from gymverl.files import atomic_open, is_gzip_name, open_append
from gymverl.inputs import READ_CHUNK, Input, InputError, as_input, regular_file

# How many counted items (rejected lines, failures, duplicates) a report shows; all are counted.
MAX_SHOWN = 20
DEFAULT_MAX_LINE_BYTES = 16_000_000  # 16 MB: far above any real rollout, far below what would hurt
# How much of a rejected line is copied into the rejects file; enough to find and fix it.
RAW_KEEP_BYTES = 64 * 1024
UTF8_BOM = b"\xef\xbb\xbf"
# JSON's whitespace on a line (the newline is already gone); a line of only these is blank.
_BLANK = b" \t\r"

InputSource = Union[str, "os.PathLike[str]", Input]


class Line(msgspec.Struct, gc=False):
    """One physical line of an input file, before parsing.

    (A msgspec Struct: one is made per line, and its C constructor costs a third of a dataclass's.)
    """

    number: int
    data: bytes  # without the trailing newline; cut to RAW_KEEP_BYTES when oversize
    size: int  # full size in bytes, without the newline
    oversize: bool = False
    unterminated: bool = False  # last line of the file, with no trailing newline
    blank: bool = False  # only whitespace (yielded only by LineReader(skip_blank=False))


@dataclass(slots=True)
class Parsed:
    """A parsed line: `obj` on success, else `code` + `reason` say why it could not be used."""

    number: int
    obj: Any = None
    code: str | None = None
    reason: str | None = None
    raw: bytes = b""

    @property
    def ok(self) -> bool:
        """True when the line parsed as JSON."""
        return self.code is None


def check_input_path(path: str | os.PathLike[str]) -> Path:
    """Return `path` as a Path when it is a readable regular JSONL file (plain or gzip).

    For inputs that must be a real file (e.g. handed on to another program); readers that can
    stream take `open_input` / `iter_lines` instead. Raises InputError (one sentence) when it is
    missing, a directory, unreadable, a Parquet or other binary file, or a pipe.
    """
    return regular_file(path)


def open_binary(source: InputSource) -> IO[bytes]:
    """Open an input for binary reading, decompressing gzip (detected by magic bytes)."""
    return as_input(source).open()


def _max_line_bytes(max_line_bytes: Any) -> int:
    # Library callers bypass the CLI's option checks: a NaN/inf/float limit must not get further.
    if isinstance(max_line_bytes, bool) or not isinstance(max_line_bytes, int):
        if isinstance(max_line_bytes, float) and math.isfinite(max_line_bytes) and max_line_bytes == int(max_line_bytes):
            max_line_bytes = int(max_line_bytes)
        else:
            raise UsageError(f"the per-line size limit must be a whole number of bytes, got {max_line_bytes!r}.")
    if max_line_bytes < 1:
        raise InputError(f"the per-line size limit must be positive, got {max_line_bytes} bytes.")
    return max_line_bytes


class LineReader:
    """Iterate over the lines of an input with their 1-based physical numbers (see `iter_lines`).

    After (or during) iteration, `lines` is the number of physical lines read and `blank` how
    many of them were blank: skipped (the default) or yielded with `Line.blank` set.
    """

    def __init__(self, source: InputSource, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES, *, skip_blank: bool = True) -> None:
        self.max_line_bytes = _max_line_bytes(max_line_bytes)
        self.input = as_input(source)
        self.skip_blank = skip_blank
        self.lines = 0
        self.blank = 0
        self._it: Iterator[Line] | None = None

    @property
    def name(self) -> str:
        """The input's name for messages."""
        return self.input.name

    def __iter__(self) -> Iterator[Line]:
        # The generator itself: `for line in reader` then costs no Python call per line.
        if self._it is None:
            self._it = self._read()
        return self._it

    def __next__(self) -> Line:
        return next(iter(self))

    def _read(self) -> Iterator[Line]:
        # One generator (a second one wrapping it cost a resume per line): physical lines, with
        # blank ones counted and skipped (or marked) where they are yielded.
        max_line_bytes = self.max_line_bytes
        src = self.input
        skip = self.skip_blank
        # The limit is on a line's content: "\r\n" may follow it (+2), and one byte more tells a
        # longer line (read no further: a huge line never sits in memory).
        limit = max_line_bytes + 2
        first = min(limit, READ_CHUNK)
        number = 0
        try:
            with src.open() as f:
                if f.peek(len(UTF8_BOM))[: len(UTF8_BOM)] == UTF8_BOM:  # type: ignore[attr-defined]
                    # Some editors and Windows tools start UTF-8 files with a byte order mark.
                    f.read(len(UTF8_BOM))
                while True:
                    chunk = f.readline(first)
                    if not chunk:
                        return
                    number += 1
                    if len(chunk) == first and not chunk.endswith(b"\n"):
                        # A long line: read on in pieces, never more than the limit (+1 byte to know).
                        pieces = [chunk]
                        size = len(chunk)
                        while size < limit:
                            more = f.readline(min(READ_CHUNK, limit - size))
                            if not more:
                                break
                            pieces.append(more)
                            size += len(more)
                            if more.endswith(b"\n"):
                                break
                        if size >= limit and not pieces[-1].endswith(b"\n"):
                            kept = pieces[0][:RAW_KEEP_BYTES]
                            del pieces, chunk
                            ended = False
                            while True:  # skip the rest of the line, 1 MB at a time
                                rest = f.readline(READ_CHUNK)
                                if not rest:
                                    break
                                if rest.endswith(b"\n"):
                                    size += len(rest) - 1
                                    ended = True
                                    break
                                size += len(rest)
                            yield Line(number, kept, size, oversize=True, unterminated=not ended)
                            if not ended:
                                return
                            continue
                        chunk = b"".join(pieces)
                        del pieces
                    ended = chunk.endswith(b"\n")
                    data = chunk[:-1].rstrip(b"\r") if ended else chunk
                    # `size` stays the bytes on disk but the "\n" (readers add it up to file offsets);
                    # the limit is on the content.
                    size = len(chunk) - ended
                    if len(data) > max_line_bytes:  # (at most 2 bytes over: the cases above stop sooner)
                        yield Line(number, data[:RAW_KEEP_BYTES], size, oversize=True, unterminated=not ended)
                        if not ended:
                            return
                        continue
                    # Cheap first: a JSON line starts with '{' (or another non-blank byte).
                    if (not data or data[0] in _BLANK) and not data.strip(_BLANK):
                        self.blank += 1
                        if not skip:
                            yield Line(number, data, size, unterminated=not ended, blank=True)
                    elif ended:
                        yield Line(number, data, size)
                        continue
                    else:
                        yield Line(number, data, size, unterminated=True)
                    if not ended:
                        return
        except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
            # Only compressed input gets here: a cut or corrupt .gz cannot be read past this point.
            raise InputError(f"{src.name}: corrupt or truncated gzip data after line {number} ({exc}).") from None
        finally:
            self.lines = number


def iter_lines(
    source: InputSource, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES, *, skip_blank: bool = True
) -> LineReader:
    """Every line of `source` with its 1-based physical number, reading at most `max_line_bytes` of each.

    `source` is a path, ``-`` or an `Input` (a pipe is read once). Blank lines are skipped and
    counted in the returned reader's `blank` (with `skip_blank=False` they are yielded with
    `Line.blank` set, for callers that need every number). Raises InputError for an input that
    cannot be read as JSONL (see `gymverl.inputs`) or a corrupt gzip stream.
    """
    return LineReader(source, max_line_bytes, skip_blank=skip_blank)


class _NonFinite:
    """Stands in for a NaN/Infinity literal or an overflowing number while locating it."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text


def _parse_float(text: str) -> Any:
    value = float(text)
    return value if math.isfinite(value) else _NonFinite(text)


def _parse_int(text: str) -> Any:
    value = int(text)
    # orjson reads integers beyond 64 bits as doubles; past ~1.8e308 that is infinity.
    if len(text) > 300 and not math.isfinite(float(text)):
        return _NonFinite(text)
    return value


def _find_nonfinite(obj: Any, path: str) -> tuple[str, str] | None:
    stack: list[tuple[Any, str]] = [(obj, path)]
    while stack:
        value, where = stack.pop()
        if isinstance(value, _NonFinite):
            return where, value.text
        if isinstance(value, dict):
            items = [(v, f"{where}.{k}" if where else str(k)) for k, v in value.items()]
            stack.extend(reversed(items))
        elif isinstance(value, list):
            stack.extend(reversed([(v, f"{where}[{i}]") for i, v in enumerate(value)]))
    return None


def _nonfinite_reason(data: bytes) -> str | None:
    """When `data` is JSON apart from NaN/Infinity or a number too large for a double, say where."""
    import json

    try:
        obj = json.loads(data, parse_constant=_NonFinite, parse_float=_parse_float, parse_int=_parse_int)
    except (ValueError, RecursionError):
        return None
    found = _find_nonfinite(obj, "")
    if found is None:
        return None
    where, text = found
    what = f"'{where}'" if where else "the line"
    if text in ("NaN", "Infinity", "-Infinity"):
        return f"{what} is {text}, which is not a finite number (JSON has no NaN or Infinity)"
    shown = text if len(text) <= 24 else text[:20] + "..."
    return f"{what} is {shown}, too large to be a finite number"


def _describe_json_error(line: Line, exc: Exception) -> tuple[str, str]:
    data = line.data
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as ude:
        if line.unterminated and ude.end == len(data) and ude.reason == "unexpected end of data":
            return "truncated", "truncated JSON at end of file (the file ends mid-record)"
        return "invalid_utf8", f"not valid UTF-8 (byte 0x{data[ude.start]:02x} at column {ude.start + 1})"
    if not data.strip(_BLANK):  # only reached by callers that parse blank lines themselves
        return "empty_line", "empty line"
    nonfinite = _nonfinite_reason(data)
    if nonfinite:
        return "non_finite_number", nonfinite
    msg = str(exc).rsplit(": line ", 1)[0].strip() or "invalid JSON"
    if msg.startswith("unexpected end of data"):
        if line.unterminated:
            return "truncated", "truncated JSON at end of file (the file ends mid-record)"
        return "invalid_json", "invalid JSON: the line ends mid-record"
    pos = getattr(exc, "pos", None)
    at = f" at column {pos + 1}" if isinstance(pos, int) else ""
    if msg[1:2].islower():  # "Unexpected x" -> "unexpected x", but keep "UTF-8 ..." as it is
        msg = msg[:1].lower() + msg[1:]
    return "invalid_json", f"invalid JSON{at} ({msg})"


def _size(n: int) -> str:
    if n >= 1_000_000:
        return f"{n / 1e6:.1f}".removesuffix(".0") + " MB"
    if n >= 1_000:
        return f"{n / 1e3:.1f}".removesuffix(".0") + " KB"
    return f"{n} bytes"


def _too_long(size: int, limit: int) -> str:
    shown, cap = _size(size), _size(limit)
    if shown == cap:  # "2 KB, over the 2 KB limit" says nothing: give the bytes
        shown, cap = f"{size:,} bytes", f"{limit:,}-byte"
    return f"line is {shown}, over the {cap} limit per line"


def parse_line(line: Line, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> Parsed:
    """Parse one line as JSON; failures carry a stable code and a one-sentence reason."""
    if line.oversize:
        return Parsed(
            line.number,
            code="line_too_long",
            reason=_too_long(line.size, max_line_bytes),
            raw=line.data,
        )
    try:
        obj = orjson.loads(line.data)
    except orjson.JSONDecodeError as exc:
        code, reason = _describe_json_error(line, exc)
        return Parsed(line.number, code=code, reason=reason, raw=line.data)
    if _DIGIT_RUN in line.data.translate(_DIGITS_ONLY):  # (C speed; rare: a run of 19 digits)
        reason = _big_int_reason(line.data)
        if reason is not None:
            return Parsed(line.number, code="integer_too_large", reason=reason, raw=line.data)
    return Parsed(line.number, obj=obj, raw=line.data)


# orjson reads an integer beyond 64 bits (above 2**64 - 1, below -2**63) as a float, silently: an
# expected answer of 2**97 would reach the verifier and the rows as 1.5845632502852868e+29. Such
# a literal has at least 19 digits in a row; every digit maps to "0" and every other byte to " ".
_DIGITS_ONLY = bytes(0x30 if 0x30 <= i <= 0x39 else 0x20 for i in range(256))
_DIGIT_RUN = b"0" * 19


class _BigInt(_NonFinite):
    """Stands in for an integer beyond 64 bits while locating it."""

    __slots__ = ()


def _big_int_reason(data: bytes) -> str | None:
    """When `data` holds an integer orjson cannot keep exactly (beyond 64 bits), say where."""
    import json

    def parse_int(text: str) -> Any:
        value = int(text)
        return _BigInt(text) if not -(2**63) <= value <= 2**64 - 1 else value

    try:
        found = _find_nonfinite(json.loads(data, parse_int=parse_int), "")
    except (ValueError, RecursionError):
        return None
    if found is None:
        return None
    where, text = found
    what = f"'{where}'" if where else "the line"
    shown = text if len(text) <= 40 else text[:36] + "..."
    said = f"{what} is {shown}, an integer beyond 64 bits that would be read as {float(text)!r}"
    # NeMo Gym's own numbers (reward, _ng_* indexes) must stay numbers: no advice to quote them.
    return said if where == "reward" or where.startswith("_ng_") else said + "; write it as a string"


def read_jsonl(source: InputSource | LineReader, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> Iterator[Parsed]:
    """Yield each non-blank line of `source` parsed (or with the reason it failed), in order, streaming.

    `source` may be a `LineReader` (from `iter_lines`) when the caller wants its `blank` count.
    """
    lines = source if isinstance(source, LineReader) else iter_lines(source, max_line_bytes)
    limit = lines.max_line_bytes
    for line in lines:
        yield parse_line(line, limit)


_DUMPS = orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY


def dumps(obj: Any, *, sort_keys: bool = False) -> bytes:
    """Serialize one JSON line (no newline); keeps non-str dict keys, numpy scalars and deep nesting working."""
    try:
        return orjson.dumps(obj, option=_DUMPS | orjson.OPT_SORT_KEYS if sort_keys else _DUMPS)
    except orjson.JSONEncodeError as exc:
        # orjson writes at most 254 nested levels but reads up to 1024: a record read from a file
        # must always be writable again, so deeper ones go through the standard library.
        if "ecursion" not in str(exc):
            raise
        return _dumps_deep(obj, sort_keys)


def _dumps_deep(obj: Any, sort_keys: bool) -> bytes:
    import json
    import sys

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 10_000))
    try:
        text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"), sort_keys=sort_keys, allow_nan=False)
    finally:
        sys.setrecursionlimit(limit)
    return text.encode()


class JsonlWriter:
    """Write JSON lines to a temp file that becomes `path` only when closed without error.

    A name ending in `.gz` is written gzip-compressed (also when appending). Any `OSError` while
    writing (disk full, file-size limit) is raised as one sentence naming `path` (`from_os_error`:
    exit 1 for out-of-space, else 2). Locking and the input/output check are the caller's
    (`gymverl.files.output_lock`, `check_outputs`): they cover a whole run, not one file object.
    """

    def __init__(self, path: str | os.PathLike[str], *, append: bool = False) -> None:
        self.path = Path(path)
        self.count = 0
        self._append = append
        self._ctx: contextlib.AbstractContextManager[IO[bytes]] | None = None
        self._f: IO[bytes] | None = None

    def __enter__(self) -> "JsonlWriter":
        try:
            if self._append:
                # Appending (resume) writes in place: every line is flushed whole, so a crash loses
                # at most the line in flight, which resume logic re-does.
                self._f = open_append(self.path)
            else:
                self._ctx = atomic_open(self.path, buffering=READ_CHUNK)
                self._f = self._ctx.__enter__()
        except OSError as exc:
            raise from_os_error(exc, str(self.path)) from None
        return self

    def write(self, obj: Any) -> None:
        """Append one record as a JSON line."""
        self.write_raw(dumps(obj))

    def write_raw(self, line: bytes) -> None:
        """Append an already-serialized JSON line (no newline)."""
        assert self._f is not None
        try:
            self._f.write(line + b"\n")
        except OSError as exc:
            raise from_os_error(exc, str(self.path)) from None
        self.count += 1

    def flush(self) -> None:
        """Flush buffered lines to the OS (used by resumable writers)."""
        assert self._f is not None
        try:
            self._f.flush()
        except OSError as exc:
            raise from_os_error(exc, str(self.path)) from None

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        assert self._f is not None
        f, self._f = self._f, None
        try:
            if self._ctx is not None:
                # atomic_open closes, fsyncs and renames (or removes the temp file on error).
                self._ctx.__exit__(exc_type, exc, tb)
            else:
                try:
                    f.flush()
                    if exc_type is None:
                        os.fsync(f.fileno())  # a GzipFile's fileno() is its file's
                finally:
                    f.close()
        except OSError as err:
            if exc_type is not None:
                # Already failing (often the same full disk, hit again by the final flush): the
                # temp file is gone either way, and the first error is the one to report.
                return
            raise from_os_error(err, str(self.path)) from None


@dataclass(slots=True)
class Tally:
    """Count items by code and keep the first `limit` of them as examples (the rest are only counted).

    The one "count rejections, keep the first 20" of every report (validate, stats, to-parquet,
    rescore, collect): `count` is every item added, `by_code` the count per code (items added with
    code None are counted but not by code), `shown` the first `limit` examples, as given.
    """

    count: int = 0
    by_code: Counter[str] = field(default_factory=Counter)
    shown: list[dict[str, Any]] = field(default_factory=list)
    limit: int = MAX_SHOWN

    def add(self, code: str | None, example: dict[str, Any]) -> None:
        """Count one item under `code`; keep `example` while fewer than `limit` are kept."""
        self.count += 1
        if code is not None:
            self.by_code[code] += 1
        if len(self.shown) < self.limit:
            self.shown.append(example)

    def reject(self, line: int | None, code: str, reason: str) -> None:
        """Count one rejected line: code + the example `{"line", "code", "reason"}` the reports print."""
        self.add(code, {"line": line, "code": code, "reason": reason})

    def by_code_desc(self) -> dict[str, int]:
        """Counts per code, most common first (the reports' `rejected_by_reason`)."""
        return dict(self.by_code.most_common())


def jsonable(obj: Any) -> Any:
    """`obj` as plain JSON data for `json.dumps`: dict keys as strings, tuples as lists, paths as
    strings, NaN as null (JSON has no NaN); anything else as is."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, float) and obj != obj:
        return None
    return obj


class Rejections:
    """Mixin for a report dataclass with a `rejects: Tally` field: the names every report reads.

    `rejected` (settable: a report may be filled in by hand), `rejected_by_code`, `rejections`.
    """

    rejects: Tally

    @property
    def rejected(self) -> int:
        """Rejected lines, all of them."""
        return self.rejects.count

    @rejected.setter
    def rejected(self, n: int) -> None:
        self.rejects.count = n

    @property
    def rejected_by_code(self) -> Counter[str]:
        """Rejected lines per reason code."""
        return self.rejects.by_code

    @property
    def rejections(self) -> list[dict[str, Any]]:
        """The first `MAX_SHOWN` rejected lines: `{"line", "code", "reason"}`."""
        return self.rejects.shown

    def line_counts(self) -> dict[str, Any]:
        """The head of the validate and to-parquet reports (their `lines`, `valid` and `blank` fields):
        lines, valid, rejected, blank, rejected_by_reason (most common first), rejections."""
        return {
            "lines": self.lines,  # type: ignore[attr-defined]
            "valid": self.valid,  # type: ignore[attr-defined]
            "rejected": self.rejected,
            "blank": self.blank,  # type: ignore[attr-defined]
            "rejected_by_reason": self.rejects.by_code_desc(),
            "rejections": self.rejects.shown,
        }


def refuse_foreign_rejects(path: Path) -> None:
    """Raise UsageError when `path` holds something other than a rejects file (rescore's output guard,
    for `--rejects`): a typo such as `--rejects tasks.jsonl` must not replace that file. An empty
    file, a stream (`/dev/null`) and an earlier rejects file (`{line, code, reason, ...}` lines) may
    be replaced."""
    try:
        if not path.is_file() or path.stat().st_size == 0:
            return
        opener = gzip.open if is_gzip_name(path) else open
        with opener(path, "rb") as f:  # type: ignore[operator]
            first = f.readline(RAW_KEEP_BYTES * 8)
        rec = orjson.loads(first)
        if isinstance(rec, dict) and {"line", "code", "reason"} <= rec.keys():
            return
    except (OSError, EOFError, zlib.error, orjson.JSONDecodeError):
        pass  # unreadable or not JSON: not a rejects file
    raise UsageError(f"{path} already exists and is not a rejects file gymverl wrote; choose another --rejects path or remove it.")


class RejectsWriter:
    """Record every unusable input line as `{line, code, reason, raw}` in a JSONL file (atomic; gzip when named .gz)."""

    def __init__(self, path: str | os.PathLike[str] | None) -> None:
        self._writer = JsonlWriter(path) if path else None
        self.count = 0

    def __enter__(self) -> "RejectsWriter":
        if self._writer:
            refuse_foreign_rejects(self._writer.path)
            self._writer.__enter__()
        return self

    def add(self, line: int, code: str, reason: str, raw: bytes = b"", source: str | None = None) -> None:
        """Record one rejected line."""
        self.count += 1
        if not self._writer:
            return
        rec: dict[str, Any] = {"line": line, "code": code, "reason": reason}
        if source is not None:
            rec["source"] = source
        rec["raw"] = raw[:RAW_KEEP_BYTES].decode("utf-8", errors="replace")
        if len(raw) > RAW_KEEP_BYTES or code == "line_too_long":
            rec["raw_truncated"] = True
        self._writer.write(rec)

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if self._writer:
            self._writer.__exit__(exc_type, exc, tb)
