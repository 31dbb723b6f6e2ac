"""Single-pass conversion, row by row: sft without task-level rules, or rl from a tasks file."""

from __future__ import annotations

from array import array
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.compute as pc

from gymverl.formats import RowError
from gymverl.formats import fast as fast_fmt
from gymverl.jsonl import Line
from gymverl.records import Checked, is_incomplete
from gymverl.sidecars import prompt_key
from gymverl.select import record_status, split_of

from gymverl.convert.results import Filtered, LineResult, Rejected, RowResult
from gymverl.convert.rows import _Ctx, _content_facts, _fast_sft_row, _key_of, _rl_row, _rl_too_long, _sft_build


def _fast_stream_result(ctx: _Ctx, reader: fast_fmt.FastSFT, line: Line) -> LineResult | None:
    """`_stream_result` for sft, or None (then the exact path handles the line)."""
    got = reader.decode(line.data)
    if got is None:
        return None
    sel = ctx.opts.select
    split = split_of(got.key, sel.val_fraction, sel.split_seed)
    status = record_status(got.reward, got.incomplete, sel, got.masked, got.malformed, got.empty)
    if status:
        return Filtered(status, None if got.rollout_index is None else (got.key, got.rollout_index))
    row = _fast_sft_row(ctx, reader, got, line.number)
    return None if row is None else RowResult(split, row, line.number)


def _stream_result(ctx: _Ctx, c: Checked) -> LineResult:
    """Streaming: one line -> a row, a filter verdict or a rejection."""
    if c.record is None:
        return Rejected(c.line, c.code or "unknown", c.reason or "", c.raw)
    rec = c.record
    sel = ctx.opts.select
    key = _key_of(c, ctx.tasks_input)
    split = split_of(key, sel.val_fraction, sel.split_seed)
    try:
        if ctx.opts.fmt == "rl":
            row: dict[str, Any] | None = _rl_row(ctx, rec, key, None)
            status = "max_tokens" if _rl_too_long(ctx, row) else None  # type: ignore[arg-type]
        else:
            status = record_status(float(rec["reward"]), is_incomplete(rec), sel, rec.get("mask_sample") is True, *_content_facts(rec, sel))
            row = None
            if status is None:
                row, status = _sft_build(ctx, rec, c.line, key)
    except RowError as exc:
        return Rejected(c.line, exc.code, exc.reason, c.raw)
    if status or row is None:
        ri = rec.get("_ng_rollout_index")
        return Filtered(status or "unknown", (key, ri) if ctx.opts.fmt == "sft" and type(ri) is int else None)
    if ctx.tasks_input:
        # Materialized inputs repeat each task once per repeat: the converter keeps one row per
        # (task index, prompt), so it needs the prompt (computed here, in the worker).
        return RowResult(split, row, c.line, prompt_key(rec))
    return RowResult(split, row, c.line)


class RepeatedRollouts(Exception):
    """Streaming sft met a (task key, rollout index) pair twice: the grouped conversion, which
    settles repeats (`repeated_rollout`, or a refusal for two prompts), must convert the input."""


def _convert_streaming(ctx: _Ctx, results: Iterator[LineResult]) -> None:
    """One pass, row by row: sft without task-level rules, or rl from a tasks file.

    sft: every valid rollout's (task, rollout index) is kept as a 64-bit hash (8 bytes a line, never
    the lines); when one occurs twice (concatenated collections, a file written twice),
    RepeatedRollouts is raised at the end, before anything is committed: the streaming rows would
    train on that rollout twice.
    """
    s = ctx.summary
    seen: dict[str, str] = {}  # rl from tasks: task key -> prompt key (bounded by the task count)
    pairs = array("q") if ctx.opts.fmt == "sft" else None
    for r in results:
        s.lines += 1
        kind = type(r)
        if kind is Rejected:
            ctx.reject(r.line, r.code, r.reason, r.raw)
            continue
        if kind is Filtered:
            s.filtered[r.rule] += 1
            if r.pair is not None and pairs is not None:
                pairs.append(hash(r.pair))
            continue
        split, row = r.split, r.row
        s.kept_lines += 1
        if pairs is not None:
            info = row["extra_info"]
            ri = info["rollout_index"]
            if ri is not None:
                pairs.append(hash((info["task_key"], ri)))
        if ctx.tasks_input:
            split = _one_row_per_task(ctx, seen, row, split, r.prompt)
            if split is None:
                continue
        if ctx.opts.fmt == "rl":
            s.tasks = (s.tasks or 0) + 1
            s.tasks_by_split[split] += 1
            if not row["reward_model"]["ground_truth"]:
                s.missing_ground_truth += 1
        ctx.write(split, row)
    if pairs is not None and _repeats(pairs):
        raise RepeatedRollouts


def _repeats(hashes: array) -> bool:  # type: ignore[type-arg]
    """True when two of `hashes` are equal (sorted in C by pyarrow; a collision of two different
    pairs only costs the exact, grouped conversion)."""
    if len(hashes) < 2:
        return False
    values = pa.Array.from_buffers(pa.int64(), len(hashes), [None, pa.py_buffer(hashes)]).sort()
    return bool(pc.any(pc.equal(values[1:], values[:-1])).as_py())


def _one_row_per_task(ctx: _Ctx, seen: dict[str, str], row: dict[str, Any], split: str, prompt: str) -> str | None:
    """rl from a tasks file: the split of a new task's row, or None for another line of a task
    already written (materialized inputs hold one line per repeat). The same task index with
    another prompt is another task (concatenated collections): keyed by (index, prompt)."""
    info = row["extra_info"]
    key = info["task_key"]
    known = seen.get(key)
    if known is None:
        seen[key] = prompt
        return split
    if known == prompt:
        ctx.summary.repeats_merged += 1
        return None
    key = f"{key}@{prompt}"
    if key in seen:
        ctx.summary.repeats_merged += 1
        return None
    seen[key] = prompt
    info["task_key"] = key
    sel = ctx.opts.select
    return split_of(key, sel.val_fraction, sel.split_seed)
