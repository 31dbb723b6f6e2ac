"""Running the collector: a subprocess in its own group, progress from its growing output, Ctrl-C."""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from gymverl import proc
from gymverl.collect.output import sidecar_paths
from gymverl.nemo_gym import subprocess_env
from gymverl.progress import ROWS, OnProgress, ProgressEvent


class LineCounter:
    """Counts the lines of a file another process appends to (survives it being removed and recreated)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.count = 0
        self._offset = 0
        self._ino: int | None = None

    def update(self) -> int:
        """Read what was appended since the last call; return the number of complete lines."""
        try:
            st = self.path.stat()
        except FileNotFoundError:
            self.count, self._offset, self._ino = 0, 0, None
            return 0
        if st.st_ino != self._ino or st.st_size < self._offset:
            self.count, self._offset, self._ino = 0, 0, st.st_ino
        if st.st_size > self._offset:
            with open(self.path, "rb") as f:
                f.seek(self._offset)
                while chunk := f.read(1 << 20):
                    self.count += chunk.count(b"\n")
                    self._offset += len(chunk)
        return self.count


@dataclass
class RunResult:
    """How the collector process ended and what it had written."""

    returncode: int | None
    interrupted: bool
    written: int
    failed: int  # failed attempts this run (lines it appended to the failures file)
    seconds: float
    reason: str | None = None
    earlier: int = 0  # lines the output already held when this run started (--resume)


def failure_reason(log_path: Path, max_bytes: int = 256 * 1024) -> str | None:
    """The most telling error line in the collector's log (last exception or argparse error)."""
    return proc.log_file_cause(log_path, max_bytes)


def run_collector(
    argv: Sequence[str],
    *,
    env: Path,
    output: str | os.PathLike[str],
    log_path: str | os.PathLike[str],
    on_progress: OnProgress | None = None,
    total: int | None = None,
    poll: float = 0.25,
    grace: float = 15.0,
) -> RunResult:
    """Run the collector until it exits; report progress from the output file (`on_progress`: rows
    written of `total`, this run's failures as `failed`).

    Ctrl-C, SIGTERM or SIGHUP (or any error here) stops it with `gymverl.proc`'s ladder: SIGINT
    first, so NeMo Gym keeps what it wrote (`grace` seconds), then SIGTERM/SIGKILL.
    """
    out = Path(output)
    written, failures = LineCounter(out), LineCounter(sidecar_paths(out)["failures"])
    # The failures file is appended across --resume runs: count this run's attempts only.
    earlier = failures.update()
    held = written.update()  # (--resume) what this run adds is told apart from what was there
    log = Path(log_path)
    start = time.monotonic()
    interrupted = False
    with open(log, "wb") as logf, proc.start(
        argv, stdout=logf, stderr=subprocess.STDOUT, env=subprocess_env(env), grace=grace
    ) as child:
        try:
            while child.poll() is None:
                if on_progress is not None:
                    on_progress(ProgressEvent(written.update(), total, ROWS, failed=failures.update() - earlier))
                time.sleep(poll)
        except KeyboardInterrupt:
            interrupted = True
            child.stop()
    n, f = written.update(), failures.update() - earlier
    if on_progress is not None:
        on_progress(ProgressEvent(n, total, ROWS, failed=f))
    rc = child.returncode
    return RunResult(rc, interrupted, n, f, time.monotonic() - start, None if rc == 0 else failure_reason(log), earlier=held)
