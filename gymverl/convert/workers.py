"""Where per-line handlers run: in this process (`_local_results`, with the fast path first) or in a
pool of worker processes (`_parallel_results`), results yielded in input order either way."""

from __future__ import annotations

import functools
import signal
from typing import Any, Callable, Iterator

from gymverl.formats import FieldRules
from gymverl.inputs import Input
from gymverl.jsonl import Line, iter_lines
from gymverl.records import check_line, check_record, check_task
from gymverl.progress import BYTES, OnProgress, ProgressEvent

from gymverl.convert.options import ConvertError, ConvertOptions
from gymverl.convert.results import LineResult
from gymverl.convert.rows import TokenCounter, _Ctx
from gymverl.convert.stream import _fast_stream_result, _stream_result
from gymverl.convert.grouped import _FastPass1, _pass1_result


def _local_results(ctx: _Ctx, src: Input, handler: Any, on_progress: OnProgress | None, total: int | None) -> Iterator[LineResult]:
    """Handle every line in this process, in order: the fast path when it is sure, else the exact one."""
    check = check_task if ctx.tasks_input else check_record
    max_line_bytes = ctx.opts.max_line_bytes
    fast = _fast_handler(ctx, handler)
    done = 0
    every = 0
    lines = iter_lines(src, max_line_bytes)
    for line in lines:
        if on_progress is not None:
            done += line.size + 1
            every += 1
            if every >= 2000:
                on_progress(ProgressEvent(done, total, BYTES))
                every = 0
        r = fast(line) if fast is not None and not line.oversize else None
        yield r if r is not None else handler(ctx, check_line(line, check, max_line_bytes))
    # Blank lines were skipped by the reader; count them so that every line is accounted for.
    ctx.summary.blank = lines.blank
    ctx.summary.lines += lines.blank
    if on_progress is not None:
        on_progress(ProgressEvent(total if total is not None else done, total, BYTES))


# ---- fast path ---------------------------------------------------------------------------------
# For valid rollouts (nearly every line of a real file), msgspec + simdjson read only what selection
# and the SFT row need (gymverl.formats.fast). A handler returns None whenever the fast reader is not
# certain, and that line takes the exact path above: same results either way (tests/test_convert_fast.py).


def _fast_handler(ctx: _Ctx, handler: Any) -> Callable[[Line], LineResult | None] | None:
    """The fast twin of `handler` for this conversion, or None when it does not apply."""
    if handler is _stream_result:
        if ctx.opts.fmt != "sft":
            return None
        reader = ctx.fast_reader()
        # (a partial, not a lambda: no Python frame of its own per line)
        return None if reader is None else functools.partial(_fast_stream_result, ctx, reader)
    if ctx.opts.select.dedup:  # the dedup key needs the whole parsed response
        return None
    reader = ctx.fast_reader()
    return None if reader is None else _FastPass1(ctx, reader)


_WORKER: dict[str, Any] = {}


def _init_worker(opts: ConvertOptions, rules: FieldRules, default_source: str, tasks_input: bool, handler: str) -> None:
    # Ctrl-C reaches the whole process group: the parent stops the pool and cleans up; a worker
    # that raised KeyboardInterrupt itself would only print a traceback and break the pool.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    counter = TokenCounter(opts.tokenizer) if opts.select.max_tokens is not None and opts.tokenizer else None
    _WORKER["ctx"] = _Ctx(opts, rules, default_source, tasks_input, None, None, None, counter)  # type: ignore[arg-type]
    _WORKER["handler"] = _pass1_result if handler == "pass1" else _stream_result
    _WORKER["check"] = check_task if tasks_input else check_record
    _WORKER["max_line_bytes"] = opts.max_line_bytes


def _work(batch: list[tuple[int, bytes, int, bool, bool]]) -> list[LineResult]:
    """Worker: handle a batch of raw lines (the same steps as `_local_results`)."""
    ctx, handler, check = _WORKER["ctx"], _WORKER["handler"], _WORKER["check"]
    if "fast" not in _WORKER:
        _WORKER["fast"] = _fast_handler(ctx, handler)
    fast, max_line_bytes = _WORKER["fast"], _WORKER["max_line_bytes"]
    out = []
    for fields in batch:
        line = Line(*fields)
        r = fast(line) if fast is not None and not line.oversize else None
        out.append(r if r is not None else handler(ctx, check_line(line, check, max_line_bytes)))
    return out


def _parallel_results(
    ctx: _Ctx, src: Input, handler: Any, workers: int, on_progress: OnProgress | None, total: int | None, batch_lines: int = 256
) -> Iterator[LineResult]:
    """Handle lines in `workers` processes, yielding results in input order with a bounded window in flight."""
    import multiprocessing as mp
    from collections import deque
    from concurrent.futures import Future, ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    # spawn, not fork: a forked child would inherit Arrow's thread pools and locks mid-state.
    pool = ProcessPoolExecutor(
        workers,
        mp_context=mp.get_context("spawn"),
        initializer=_init_worker,
        initargs=(ctx.opts, ctx.rules, ctx.default_source, ctx.tasks_input, "pass1" if handler is _pass1_result else "stream"),
    )
    try:
        pending: deque[Future[list[LineResult]]] = deque()
        done = 0
        # Lines travel as plain tuples: pickling a tuple is several times cheaper than a dataclass.
        batch: list[tuple[int, bytes, int, bool, bool]] = []
        lines = iter_lines(src, ctx.opts.max_line_bytes)
        for line in lines:
            batch.append((line.number, line.data, line.size, line.oversize, line.unterminated))
            done += line.size + 1
            if len(batch) >= batch_lines:
                pending.append(pool.submit(_work, batch))
                batch = []
                if on_progress is not None:
                    on_progress(ProgressEvent(done, total, BYTES))
                while len(pending) >= workers * 4:
                    yield from pending.popleft().result()
        if batch:
            pending.append(pool.submit(_work, batch))
        ctx.summary.blank = lines.blank  # skipped by the reader, still accounted for
        ctx.summary.lines += lines.blank
        while pending:
            yield from pending.popleft().result()
        if on_progress is not None:
            on_progress(ProgressEvent(total if total is not None else done, total, BYTES))
    except BrokenProcessPool:
        raise ConvertError("a worker process died (out of memory or killed); rerun with --workers 1.") from None
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
