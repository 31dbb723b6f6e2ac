"""One progress-callback shape for the library (validate, stats, to-parquet, rescore, collect).

A long-running library function takes `on_progress: OnProgress | None` and calls it, now and then,
with a `ProgressEvent`: how much of the work is done (`done` of `total`, in `unit`), and the counts a
progress view shows beside it. The library never draws anything; the CLI turns events into rich
progress bars in one helper (`gymverl.cli.progress`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

from gymverl.jsonl import Line

BYTES = "bytes"  # of the input read (bars show them as sizes)
ROWS = "rows"  # of the output written (bars show "M/N")
EVERY_LINES = 2000  # how often a line-streaming function reports (a callback per line would cost)


@dataclass(frozen=True, slots=True)
class ProgressEvent:
    """Where a long-running function stands.

    done: units done so far; total: all units (None while unknown, e.g. a pipe or a growing file);
    unit: `BYTES` or `ROWS`; rows: lines handled so far (for byte progress; None when not counted);
    new_rows: of those, the lines handled by this run (a resumed run's rate counts these; None when
    all are new); failed: lines that failed or were rejected so far.
    """

    done: int
    total: int | None
    unit: str = BYTES
    rows: int | None = None
    new_rows: int | None = None
    failed: int = 0


OnProgress = Callable[[ProgressEvent], None]


def track_lines(lines: Iterable[Line], on_progress: OnProgress, total: int | None, every: int = EVERY_LINES) -> Iterator[Line]:
    """Yield `lines` unchanged, reporting the input bytes read (`line.size` + its newline) every
    `every` lines and once at the end (`total` when known: blank lines and a gzip's compression make
    the sum of line sizes differ from it). Wrap a reader only when there is a callback: the plain
    loop stays as fast as it was."""
    done = n = 0
    for line in lines:
        done += line.size + 1
        n += 1
        if n >= every:
            on_progress(ProgressEvent(done, total, BYTES))
            n = 0
        yield line
    on_progress(ProgressEvent(total if total is not None else done, total, BYTES))
