"""Where a run stands on disk: the checkpoint beside the output (`.<OUT>.rescore-state`), the input's
fingerprint, and the decision where a run starts (fresh, resumed, or refused)."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import os
import time
from pathlib import Path
from typing import Any, Callable

import orjson

from gymverl.files import ResumableFile, atomic_open, is_gzip_name
from gymverl.inputs import Input, as_input
from gymverl.records import task_key

from gymverl.rescore.errors import RescoreError
from gymverl.rescore.summary import RescoreSummary


STATE_VERSION = 1
CHECKPOINT_SECONDS = 1.0


def default_failures_path(output: str | os.PathLike[str]) -> Path:
    """`out.jsonl` -> `out.failures.jsonl` (same folder)."""
    p = Path(output)
    name = p.name
    for suffix in (".jsonl.gz", ".jsonl", ".json"):
        if name.endswith(suffix):
            return p.with_name(name[: -len(suffix)] + ".failures.jsonl")
    return p.with_name(name + ".failures.jsonl")


def state_path(output: str | os.PathLike[str]) -> Path:
    """The checkpoint file beside `output`."""
    p = Path(output)
    return p.with_name(f".{p.name}.rescore-state")


def input_fingerprint(path: Path | Input) -> dict[str, Any]:
    """Size and a hash of the first MB: enough to refuse resuming against a different input."""
    src = as_input(path, passes=2)  # a pipe's spooled copy: same bytes, same fingerprint
    assert src.path is not None
    with open(src.path, "rb") as f:
        head = f.read(1 << 20)
    where = src.name if src.spooled else str(src.path.resolve())
    return {"path": where, "size": src.path.stat().st_size, "head_sha1": hashlib.sha1(head).hexdigest()}


def _open_output(path: Path) -> Any:
    """Read back one of rescore's own outputs (gzip when named `.gz`, as it was written)."""
    return gzip.open(path, "rb") if is_gzip_name(path) else open(path, "rb")


def _write_state(path: Path, state: dict[str, Any]) -> None:
    # Atomic (temp beside it, fsync, rename): a crash leaves the previous checkpoint or this one.
    with atomic_open(path, compress=False) as f:
        f.write(orjson.dumps(state, option=orjson.OPT_INDENT_2))


def read_state(output: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The checkpoint of a previous run into `output`, if any."""
    p = state_path(output)
    if not p.exists():
        return None
    try:
        state = orjson.loads(p.read_bytes())
    except orjson.JSONDecodeError:
        raise RescoreError(f"{p}: checkpoint is corrupt; delete it and the output to start over.") from None
    if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
        raise RescoreError(f"{p}: checkpoint from another gymverl version; run without --resume to start over.")
    return state


def state_record(fingerprint: dict[str, Any], lines_done: int, output_bytes: int, failures_bytes: int, complete: bool, servers: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint's content: how many input lines are done and the size of each file then."""
    return {
        "version": STATE_VERSION,
        "input": fingerprint,
        "lines_done": lines_done,
        "output_bytes": output_bytes,
        "failures_bytes": failures_bytes,
        "complete": complete,
        "servers": servers,
    }


def start_point(input_path: Input, output: Path, failures: Path, *, resume: bool, overwrite: bool) -> tuple[dict[str, Any], int, int, int]:
    """Decide where a (possibly resumed) run starts: (input fingerprint, lines done, output bytes,
    failures bytes). Raises RescoreError for a run that must not start (see `rescore_file`)."""
    fp = input_fingerprint(input_path)
    if not resume and not overwrite:
        old_state = read_state(output) if output.exists() else None
        if old_state is not None and not old_state.get("complete"):
            raise RescoreError(
                f"{output} holds an unfinished rescore run ({old_state.get('lines_done', 0)} lines done); "
                "continue it with --resume, or start over with --overwrite."
            )
        if old_state is not None and output.exists() and output.stat().st_size > 0:
            # A finished run's rows cost a /verify call each: a re-run (a pasted command, servers
            # that are down) must not empty them unless asked.
            raise RescoreError(
                f"{output} holds a finished rescore run ({old_state.get('lines_done', 0)} lines); pass --overwrite to "
                "replace it, --retry-failed to re-send only its failures, or choose another path."
            )
        if old_state is None:
            # A file that is not a rescore run's output is never replaced without being asked.
            for path in (output, failures):
                if path.exists() and path.stat().st_size > 0:
                    raise RescoreError(
                        f"{path} already exists and is not from a gymverl rescore run; "
                        "choose another path, or pass --overwrite to replace it."
                    )
    state = read_state(output) if resume else None
    if state is None:
        if resume and (output.exists() and output.stat().st_size > 0):
            raise RescoreError(
                f"{output} exists but has no rescore checkpoint to resume from; start over with --overwrite instead of --resume."
            )
        return fp, 0, 0, 0
    old = state.get("input", {})
    if old.get("size") != fp["size"] or old.get("head_sha1") != fp["head_sha1"]:
        raise RescoreError(
            f"cannot resume: {input_path} is not the input the interrupted run used ({old.get('path')}); "
            "start over with --overwrite instead of --resume."
        )
    out_bytes, fail_bytes = int(state["output_bytes"]), int(state["failures_bytes"])
    for path, size in ((output, out_bytes), (failures, fail_bytes)):
        have = path.stat().st_size if path.exists() else 0
        if have < size:
            raise RescoreError(f"cannot resume: {path} is shorter than the checkpoint says; start over with --overwrite instead of --resume.")
    return fp, int(state["lines_done"]), out_bytes, fail_bytes


class Checkpoints:
    """Writes the checkpoint of a run into `path`: after both files are flushed, at most every
    CHECKPOINT_SECONDS, with fsync and the write off the event loop (unless forced), so that it
    never names an offset past durable data. `durable` is the (output, failures) sizes named by
    the last checkpoint known to be on disk; a background write's failure goes to `on_done`."""

    def __init__(self, path: Path, fingerprint: dict[str, Any], servers: dict[str, Any], on_done: Callable[["asyncio.Future[Any]"], None], durable: tuple[int, int]) -> None:
        self.path, self.fingerprint, self.servers, self.on_done = path, fingerprint, servers, on_done
        self.durable = durable
        self._last = 0.0
        self._persisting: asyncio.Future[None] | None = None

    def write(self, out: ResumableFile, fails: ResumableFile, lines_done: int, *, complete: bool = False, force: bool = False) -> None:
        """Record progress: flush both files, then (off the event loop unless `force`) fsync them
        and write the checkpoint naming the offsets flushed."""
        now = time.monotonic()
        busy = self._persisting is not None and not self._persisting.done()
        if not force and (busy or now - self._last < CHECKPOINT_SECONDS):
            return
        self._last = now
        out.flush()
        fails.flush()
        state = state_record(self.fingerprint, lines_done, out.size, fails.size, complete, self.servers)
        if force:
            assert not busy, "await settle() before a forced checkpoint"
            self._persist(out, fails, state)
        else:
            # fsync can take tens of ms on a busy disk: not on the loop that keeps requests flowing.
            fut = asyncio.get_running_loop().run_in_executor(None, self._persist, out, fails, state)
            fut.add_done_callback(self.on_done)
            self._persisting = fut

    def _persist(self, out: ResumableFile, fails: ResumableFile, state: dict[str, Any]) -> None:
        out.sync()
        fails.sync()
        _write_state(self.path, state)
        self.durable = (state["output_bytes"], state["failures_bytes"])

    async def settle(self) -> None:
        """Wait for a checkpoint being written in the background (raises what it raised)."""
        if self._persisting is not None:
            fut, self._persisting = self._persisting, None
            await fut


def replay(summary: RescoreSummary, output: Path, failures: Path) -> None:
    """Rebuild the summary of lines done by earlier runs from the output and failures files
    (already cut back to the checkpoint, so all they hold is done)."""
    s = summary
    def add_ok(r: dict[str, Any]) -> None:
        s.add_ok(task_key(r), r.get("reward_before"), float(r["reward"]))
        s.note_pair(r)

    def add_failure(r: dict[str, Any]) -> None:
        s.add_failure(r)
        s.note_pair(r, r.get("line"))

    for path, add in ((output, add_ok), (failures, add_failure)):
        if not path.exists() or path.stat().st_size == 0:
            continue
        with _open_output(path) as f:
            for raw in f:
                if raw.strip():
                    add(orjson.loads(raw))
