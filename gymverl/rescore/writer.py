"""The ordered writer: rows finish in any order, and are written to the output and failures files in
input order (a bounded reorder window, `pending`, holds those that finish early)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gymverl.files import ResumableFile
from gymverl.jsonl import dumps
from gymverl.records import task_key

from gymverl.rescore.summary import RescoreSummary


@dataclass
class _Pending:
    line: int
    record: dict[str, Any] | None = None
    size: int = 0
    out: dict[str, Any] | None = None  # output row when verified
    fail: dict[str, Any] | None = None  # failures record otherwise
    done: bool = False
    transient: bool = False


class OrderedWriter:
    """Writes finished `_Pending` rows in line order from `next_write` on, folding each into `summary`.

    `bytes_done` counts the input bytes of the lines written (for progress).
    """

    def __init__(self, summary: RescoreSummary, next_write: int) -> None:
        self.summary = summary
        self.next_write = next_write
        self.pending: dict[int, _Pending] = {}
        self.bytes_done = 0
        self.out: ResumableFile | None = None
        self.fails: ResumableFile | None = None

    def add(self, item: _Pending) -> None:
        """Hold `item` (a line being worked on) until it is its turn to be written."""
        self.pending[item.line] = item

    def drain(self, final: bool = False) -> bool:
        """Write finished rows in input order; True when any was written. A run of transient failures
        is held back until a later row succeeds (or the run ends normally), so that if the verifier
        went down and the run stops, those rows are retried on --resume instead of being recorded as failures."""
        out, fails = self.out, self.fails
        assert out is not None and fails is not None
        wrote = False
        while True:
            item = self.pending.get(self.next_write)
            if item is None or not item.done:
                break
            if item.transient and not final:
                # Look ahead: is this streak followed by a finished non-transient row?
                n = self.next_write
                while (nxt := self.pending.get(n)) is not None and nxt.done and nxt.transient:
                    n += 1
                if nxt is None or not nxt.done:
                    break
            del self.pending[self.next_write]
            if item.out is not None:
                out.write(dumps(item.out) + b"\n")
                o = item.out
                self.summary.add_ok(task_key(o), o.get("reward_before"), float(o["reward"]))
                self.summary.note_pair(o, item.line)
            elif item.fail is not None:
                fails.write(dumps(item.fail) + b"\n")
                self.summary.add_failure(item.fail)
                self.summary.note_pair(item.fail, item.line)
            else:  # a blank line: skipped, counted
                self.summary.lines += 1
                self.summary.blank += 1
            self.summary.rows_this_run += 1
            self.bytes_done += item.size
            self.next_write += 1
            wrote = True
        return wrote
