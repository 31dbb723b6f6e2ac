"""gymverl.jsonl: line-numbered streaming reads, precise parse failures, atomic writes, rejects file."""

from __future__ import annotations

import gzip
import os
import stat
import tracemalloc
from pathlib import Path

import orjson
import pytest

from gymverl.files import atomic_path
from gymverl.jsonl import (
    DEFAULT_MAX_LINE_BYTES,
    RAW_KEEP_BYTES,
    InputError,
    JsonlWriter,
    RejectsWriter,
    check_input_path,
    dumps,
    iter_lines,
    read_jsonl,
)


def write(tmp_path: Path, data: bytes, name: str = "in.jsonl") -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


def parsed(tmp_path: Path, data: bytes, **kw) -> list:
    return list(read_jsonl(write(tmp_path, data), **kw))


# ---- reading ------------------------------------------------------------------------------------


def test_lines_numbered_from_one_with_objects(tmp_path):
    out = parsed(tmp_path, b'{"a": 1}\n{"a": 2}\r\n{"a": 3}')
    assert [(p.number, p.obj, p.ok) for p in out] == [(1, {"a": 1}, True), (2, {"a": 2}, True), (3, {"a": 3}, True)]
    assert out[1].raw == b'{"a": 2}'  # CRLF stripped


@pytest.mark.parametrize(
    "data, number, code, reason",
    [
        (b'{"a": 1}\n{"a": 2', 2, "truncated", "truncated JSON at end of file (the file ends mid-record)"),
        (b'{"a": "caf\xc3', 1, "truncated", "truncated JSON at end of file (the file ends mid-record)"),
        (b'{"a": 2\n{"a": 1}\n', 1, "invalid_json", "invalid JSON: the line ends mid-record"),
        (b'{"a": 1} x\n', 1, "invalid_json", "invalid JSON at column 10 (unexpected content after document)"),
        (b"{'a': 1}\n", 1, "invalid_json", "invalid JSON at column 2 (unexpected character, expected a string key)"),
        (b'{"a": 1,}\n', 1, "invalid_json", "invalid JSON at column 8 (trailing comma is not allowed)"),
        (b'{"a": "\xff"}\n', 1, "invalid_utf8", "not valid UTF-8 (byte 0xff at column 8)"),
        (b'{"a": "caf\xc3"}\n', 1, "invalid_utf8", "not valid UTF-8 (byte 0xc3 at column 11)"),
        (b'{"reward": NaN}\n', 1, "non_finite_number", "'reward' is NaN, which is not a finite number (JSON has no NaN or Infinity)"),
        (b'{"reward": -Infinity}\n', 1, "non_finite_number", "'reward' is -Infinity, which is not a finite number (JSON has no NaN or Infinity)"),
        (b'{"a": [1, {"b": Infinity}]}\n', 1, "non_finite_number", "'a[1].b' is Infinity, which is not a finite number (JSON has no NaN or Infinity)"),
        (b'{"reward": 1e400}\n', 1, "non_finite_number", "'reward' is 1e400, too large to be a finite number"),
        (b"NaN\n", 1, "non_finite_number", "the line is NaN, which is not a finite number (JSON has no NaN or Infinity)"),
    ],
)
def test_parse_failures_have_line_code_and_reason(tmp_path, data, number, code, reason):
    bad = [p for p in parsed(tmp_path, data) if not p.ok]
    assert [(p.number, p.code, p.reason) for p in bad] == [(number, code, reason)]
    assert bad[0].obj is None


def test_utf8_bom_on_first_line_is_accepted(tmp_path):
    out = parsed(tmp_path, b'\xef\xbb\xbf{"a": 1}\n{"a": 2}\n')
    assert [(p.number, p.obj) for p in out] == [(1, {"a": 1}), (2, {"a": 2})]


def test_bom_on_a_later_line_is_rejected(tmp_path):
    out = parsed(tmp_path, b'{"a": 1}\n\xef\xbb\xbf{"a": 2}\n')
    assert out[1].code == "invalid_json" and "byte order mark" in out[1].reason


def test_every_cut_of_a_record_at_end_of_file_reads_as_truncated(tmp_path):
    line = dumps({"x": "héllo \\u00e9 中文", "n": [1.5e3, -2, True, None], "o": {"k": "v"}})
    codes = set()
    for cut in range(1, len(line)):
        (p,) = parsed(tmp_path, line[:cut])
        codes.add((p.code, p.reason))
    assert codes == {("truncated", "truncated JSON at end of file (the file ends mid-record)")}


def test_oversize_line_is_rejected_and_the_next_line_still_read(tmp_path):
    big = b'{"x": "' + b"a" * 5000 + b'"}'
    out = parsed(tmp_path, b'{"a": 1}\n' + big + b'\n{"a": 3}\n', max_line_bytes=1000)
    assert [(p.number, p.code) for p in out] == [(1, None), (2, "line_too_long"), (3, None)]
    assert out[1].reason == "line is 5 KB, over the 1 KB limit per line"
    assert out[1].raw == big[:1002]  # what was read before the limit was hit (room for "\r\n")
    assert out[2].obj == {"a": 3}


def test_line_exactly_at_the_limit_is_read(tmp_path):
    line = b'{"x": "' + b"a" * 93 + b'"}'
    assert len(line) == 102
    out = parsed(tmp_path, line + b"\n" + line + b"x\n", max_line_bytes=102)
    assert [p.code for p in out] == [None, "line_too_long"]


def test_oversize_last_line_without_newline(tmp_path):
    out = parsed(tmp_path, b'{"a": 1}\n' + b"b" * 3000, max_line_bytes=1000)
    assert [(p.number, p.code) for p in out] == [(1, None), (2, "line_too_long")]
    assert out[1].reason == "line is 3 KB, over the 1 KB limit per line"


def test_50mb_line_is_rejected_without_holding_it_in_memory(tmp_path):
    p = tmp_path / "big.jsonl"
    with open(p, "wb") as f:
        f.write(b'{"a": 1}\n{"x": "')
        chunk = b"y" * (1 << 20)
        for _ in range(50):
            f.write(chunk)
        f.write(b'"}\n{"a": 3}\n')
    size = 50 * (1 << 20) + len(b'{"x": "') + 2
    tracemalloc.start()
    try:
        out = [(q.number, q.code, q.reason, len(q.raw)) for q in read_jsonl(p)]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert out == [
        (1, None, None, 8),
        (2, "line_too_long", f"line is {size / 1e6:.1f} MB, over the 16 MB limit per line", RAW_KEEP_BYTES),
        (3, None, None, 8),
    ]
    # At most the per-line limit (16 MB) plus one 1 MB read in memory, never the 52 MB line.
    assert peak < DEFAULT_MAX_LINE_BYTES + 3 * (1 << 20)


def test_empty_file_has_no_lines(tmp_path):
    assert parsed(tmp_path, b"") == []


@pytest.mark.parametrize(
    "data, numbers, blank",
    [
        (b'{"a": 1}\n\n{"a": 2}\n', [1, 3], 1),
        (b'{"a": 1}\n   \t\n', [1], 1),  # whitespace only
        (b'{"a": 1}\n\n', [1], 1),  # a trailing empty line
        (b'{"a": 1}\r\n\r\n  ', [1], 2),  # CRLF blank line, then spaces without a newline
        (b"\n\n\n", [], 3),
        (b'\xef\xbb\xbf\n{"a": 1}\n', [2], 1),  # a BOM, then an empty first line
    ],
)
def test_blank_lines_are_skipped_and_counted_not_rejected(tmp_path, data, numbers, blank):
    reader = iter_lines(write(tmp_path, data))
    got = list(read_jsonl(reader))
    assert [p.number for p in got] == numbers and all(p.ok for p in got)
    assert reader.blank == blank
    assert reader.lines == len(numbers) + blank  # every physical line accounted for


def test_blank_lines_kept_when_asked_keep_their_numbers(tmp_path):
    lines = list(iter_lines(write(tmp_path, b'{"a": 1}\n \n{"a": 2}\n'), skip_blank=False))
    assert [(ln.number, ln.blank) for ln in lines] == [(1, False), (2, True), (3, False)]


def test_form_feed_line_is_not_blank_but_invalid(tmp_path):
    # Only JSON whitespace makes a line blank; anything else is a rejected line with its reason.
    got = parsed(tmp_path, b'{"a": 1}\n\x0c\n')
    assert [(p.number, p.code) for p in got] == [(1, None), (2, "invalid_json")]


def test_gzip_input(tmp_path):
    p = tmp_path / "r.jsonl.gz"
    p.write_bytes(gzip.compress(b'{"a": 1}\n{"a": 2\n'))
    assert [(q.number, q.code) for q in read_jsonl(p)] == [(1, None), (2, "invalid_json")]


def test_corrupt_gzip_is_one_input_error(tmp_path):
    p = tmp_path / "r.jsonl.gz"
    p.write_bytes(gzip.compress(b'{"a": 1}\n' * 1000)[:-30])
    with pytest.raises(InputError, match=r"r\.jsonl\.gz: corrupt or truncated gzip data after line \d+"):
        list(read_jsonl(p))


def test_non_positive_line_limit_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="per-line size limit must be positive, got 0 bytes"):
        list(iter_lines(write(tmp_path, b"{}\n"), max_line_bytes=0))


@pytest.mark.parametrize("limit", [float("nan"), float("inf"), -float("inf"), 1.5, "10", True])
def test_non_finite_or_non_integer_line_limit_is_a_usage_error(tmp_path, limit):
    # Library callers bypass the CLI's option checks (fault: nan -> ValueError traceback).
    from gymverl.errors import UsageError

    with pytest.raises(UsageError, match="per-line size limit"):
        list(iter_lines(write(tmp_path, b"{}\n"), max_line_bytes=limit))


def test_missing_path_and_directory(tmp_path):
    with pytest.raises(InputError) as missing:
        list(read_jsonl(tmp_path / "nope.jsonl"))
    assert str(missing.value) == f"{tmp_path / 'nope.jsonl'}: no such file."
    with pytest.raises(InputError) as directory:
        check_input_path(tmp_path)
    assert str(directory.value) == f"{tmp_path}: is a directory, not a JSONL file."


# ---- writing ------------------------------------------------------------------------------------


def test_jsonl_writer_is_atomic_and_replaces_on_success(tmp_path):
    out = tmp_path / "sub" / "out.jsonl"
    with JsonlWriter(out) as w:
        w.write({"a": 1})
        w.write_raw(b'{"b":2}')
        assert not out.exists()  # nothing visible until closed
    assert out.read_bytes() == b'{"a":1}\n{"b":2}\n'
    assert w.count == 2
    assert [p.name for p in out.parent.iterdir()] == ["out.jsonl"]


def test_jsonl_writer_leaves_old_file_on_error(tmp_path):
    out = write(tmp_path, b"old\n", "out.jsonl")
    with pytest.raises(RuntimeError):
        with JsonlWriter(out) as w:
            w.write({"a": 1})
            raise RuntimeError("boom")
    assert out.read_bytes() == b"old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["out.jsonl"]


def test_atomic_output_gets_umask_permissions_not_0600(tmp_path):
    old = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "o.txt") as tmp:
            tmp.write_text("x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "o.txt").stat().st_mode) == 0o644


def test_jsonl_writer_append(tmp_path):
    out = write(tmp_path, b'{"a":0}\n', "out.jsonl")
    with JsonlWriter(out, append=True) as w:
        w.write({"a": 1})
        w.flush()
        assert out.read_bytes() == b'{"a":0}\n{"a":1}\n'
    assert out.read_bytes() == b'{"a":0}\n{"a":1}\n'


def test_rejects_writer_records_line_code_reason_raw(tmp_path):
    out = tmp_path / "rej.jsonl"
    with RejectsWriter(out) as rw:
        rw.add(3, "invalid_json", "bad", b'{"a": \xff')
        rw.add(9, "line_too_long", "long", b"z" * (RAW_KEEP_BYTES + 10))
        rw.add(11, "missing_key", "m", b"{}", source="f.jsonl")
    rows = [orjson.loads(x) for x in out.read_bytes().splitlines()]
    assert rows[0] == {"line": 3, "code": "invalid_json", "reason": "bad", "raw": '{"a": \ufffd'}
    assert rows[1]["raw"] == "z" * RAW_KEEP_BYTES and rows[1]["raw_truncated"] is True
    assert rows[2] == {"line": 11, "code": "missing_key", "reason": "m", "source": "f.jsonl", "raw": "{}"}
    assert rw.count == 3


def test_rejects_writer_without_path_only_counts(tmp_path):
    with RejectsWriter(None) as rw:
        rw.add(1, "x", "y", b"z")
    assert rw.count == 1
    assert list(tmp_path.iterdir()) == []


def test_dumps_keeps_non_str_keys_and_unicode():
    assert dumps({1: "é"}) == '{"1":"é"}'.encode()


@pytest.mark.parametrize("limit_extra, code", [(0, None), (-1, "line_too_long")])
def test_multi_megabyte_line_read_in_pieces(tmp_path, limit_extra, code):
    line = dumps({"x": "é" * 1_300_000})  # 2.6 MB: read in several 1 MB pieces
    out = parsed(tmp_path, line + b'\n{"a": 2}\n', max_line_bytes=len(line) + limit_extra)
    assert [(p.number, p.code) for p in out] == [(1, code), (2, None)]
    if code is None:
        assert out[0].obj == {"x": "é" * 1_300_000}


@pytest.mark.parametrize("end", [b"\n", b"\r\n", b""])
@pytest.mark.parametrize("extra, code", [(0, None), (1, "line_too_long"), (2, "line_too_long")])
def test_the_limit_is_on_the_content_whatever_the_line_end(tmp_path, end, extra, code):
    """A 2,000-byte record ending in CRLF was rejected by --max-line-mb 0.002 while the same record
    ending in LF passed (the "\\r" counted): the limit is on a line's content, "\\r\\n", "\\n" or none."""
    record = b'{"a": "' + b"x" * (2000 + extra - 9) + b'"}'
    assert len(record) == 2000 + extra
    if end:
        out = parsed(tmp_path, record + end + b'{"b": 2}' + end, max_line_bytes=2000)
        assert [p.code for p in out] == [code, None]
    else:  # the last line, unterminated
        out = parsed(tmp_path, record, max_line_bytes=2000)
        assert [p.code for p in out] == [code]
    if code:  # (the size is the bytes on disk but the "\n": readers add sizes up to file offsets)
        size = 2000 + extra + (end == b"\r\n")
        assert out[0].reason == f"line is {size:,} bytes, over the 2,000-byte limit per line"


@pytest.mark.parametrize(
    "value, where",
    [(b"158456325028528675187087900672", "'expected_answer'"), (b"18446744073709551616", "'expected_answer'"),
     (b"-9223372036854775809", "'expected_answer'"), (b'[1, {"x": 100000000000000000000000}]', "'expected_answer[1].x'")],
)
def test_an_integer_beyond_64_bits_is_rejected_not_rounded(tmp_path, value, where):
    """orjson reads an integer beyond 64 bits as a float, silently: an expected answer of 2**97 was
    written to the rl rows and sent to the verifier as 1.5845632502852868e+29."""
    line = b'{"expected_answer": ' + value + b', "id": "12345678901234567890123"}'
    (p,) = parsed(tmp_path, line + b"\n")
    assert p.code == "integer_too_large" and p.reason.startswith(f"{where} is "), p.reason
    assert "an integer beyond 64 bits" in p.reason and p.reason.endswith("write it as a string")
    # the largest 64-bit values, and long digit runs in strings or decimals, are read as they are
    for fine in (b"18446744073709551615", b"-9223372036854775808", b'"158456325028528675187087900672"', b"1584563250285286751870.5"):
        (p,) = parsed(tmp_path, b'{"expected_answer": ' + fine + b"}\n")
        assert p.code is None and p.obj["expected_answer"] == orjson.loads(fine)
