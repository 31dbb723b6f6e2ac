"""What a rescore run writes into: a fresh or resumed run (`output` and the failures file, in place,
checkpointed) or a `--retry-failed` pass over a finished run (temp files that replace both files only
when the pass completes). `_Run` asks its mode; it never branches on which one it has."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import orjson

from gymverl.inputs import Input

from gymverl.rescore.errors import RescoreError
from gymverl.rescore.checkpoint import _open_output, _write_state, input_fingerprint, read_state, start_point, state_path, state_record
from gymverl.rescore.writer import _Pending


@dataclass
class Start:
    """Where a run starts: the input's fingerprint, lines already done, and the files to write with
    the sizes to cut them back to."""

    fingerprint: dict[str, Any]
    done: int
    out_path: Path
    fail_path: Path
    out_bytes: int
    fail_bytes: int


class Fresh:
    """A new run, or (`resume`) the continuation of an unfinished one, written in place."""

    checkpoints = True  # checkpointed as it goes; an error cuts the files back to the last checkpoint

    def __init__(self, input_path: Input, output: Path, failures: Path, *, resume: bool, overwrite: bool) -> None:
        self.input, self.output, self.failures_path = input_path, output, failures
        self.resume, self.overwrite = resume, overwrite

    def start(self) -> Start:
        """Decide where to start (raises RescoreError for a run that must not start)."""
        fp, done, out_bytes, fail_bytes = start_point(self.input, self.output, self.failures_path, resume=self.resume, overwrite=self.overwrite)
        return Start(fp, done, self.output, self.failures_path, out_bytes, fail_bytes)

    def copy(self, item: _Pending) -> bool:
        """Every line is verified."""
        return False

    def finish(self, start: Start, lines_done: int, servers: dict[str, Any]) -> None:
        """Nothing to swap: the files were written in place."""

    def close(self, start: Start) -> None:
        """Nothing to clean up."""


class RetryFailed:
    """`--retry-failed`: re-send the lines of a finished run whose verification failed, copy every
    other line's outcome, and replace both files (order kept) only if the pass completes."""

    checkpoints = False  # temp files, swapped in at the end: nothing to resume

    def __init__(self, input_path: Input, output: Path, failures: Path) -> None:
        self.input, self.output, self.failures_path = input_path, output, failures
        self._retry_lines: set[int] = set()
        self._old: tuple[IO[bytes], IO[bytes] | None] | None = None  # (old output file, old failures file)
        self._pending_fail: dict[str, Any] | None = None

    def start(self) -> Start:
        """Check the finished run, collect the lines whose verification failed, open the old files."""
        fp = input_fingerprint(self.input)
        state = read_state(self.output)
        if state is None:
            raise RescoreError(f"{self.output} has no rescore run to retry failures of; run without --retry-failed first.")
        old = state.get("input", {})
        if old.get("size") != fp["size"] or old.get("head_sha1") != fp["head_sha1"]:
            raise RescoreError(f"cannot retry: {self.input} is not the input of the run that wrote {self.output}.")
        if not state.get("complete"):
            raise RescoreError(f"{self.output} holds an unfinished run; finish it with --resume before --retry-failed.")
        if self.failures_path.exists():
            with _open_output(self.failures_path) as f:
                for raw in f:
                    if raw.strip():
                        rec = orjson.loads(raw)
                        if rec.get("kind") == "verify":
                            self._retry_lines.add(int(rec["line"]))
        # Rewrite both files beside the old ones; they replace them only when the pass completes.
        out_path = self.output.with_name(f".{self.output.name}.retry.tmp")
        fail_path = self.failures_path.with_name(f".{self.failures_path.name}.retry.tmp")
        for path in (out_path, fail_path):
            path.unlink(missing_ok=True)
        self._old = (_open_output(self.output), _open_output(self.failures_path) if self.failures_path.exists() else None)
        return Start(fp, 0, out_path, fail_path, 0, 0)

    def copy(self, item: _Pending) -> bool:
        """Fill `item` from the finished run unless its verification is to be retried."""
        old_out = self._old[0]  # type: ignore[index]
        if self._pending_fail is None:
            self._next_old_failure()  # peek: failure records are in line order
        fail = self._pending_fail
        if fail is not None and fail["line"] == item.line:
            self._pending_fail = None  # consumed: copied, or replaced by the new outcome
            if item.line in self._retry_lines:
                return False
            item.fail, item.done = fail, True
            return True
        raw = old_out.readline()
        if not raw.strip():
            raise RescoreError(f"{self.output} has fewer rows than its checkpoint says; cannot retry failures.")
        item.out, item.done = orjson.loads(raw), True
        return True

    def _next_old_failure(self) -> None:
        fails = self._old[1] if self._old else None  # type: ignore[index]
        self._pending_fail = None
        while fails is not None:
            raw = fails.readline()
            if not raw:
                return
            if raw.strip():
                self._pending_fail = orjson.loads(raw)
                return

    def finish(self, start: Start, lines_done: int, servers: dict[str, Any]) -> None:
        """Swap the rewritten files in and record the finished run (only when the pass completed)."""
        out_bytes, fail_bytes = start.out_path.stat().st_size, start.fail_path.stat().st_size
        os.replace(start.out_path, self.output)
        os.replace(start.fail_path, self.failures_path)
        _write_state(state_path(self.output), state_record(start.fingerprint, lines_done, out_bytes, fail_bytes, True, servers))

    def close(self, start: Start) -> None:
        """Close the old files and remove the temp files (swapped in already, or abandoned)."""
        if self._old is not None:
            for old in self._old:
                if old is not None:
                    old.close()
        for path in (start.out_path, start.fail_path):
            path.unlink(missing_ok=True)
