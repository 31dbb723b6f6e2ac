"""The rescore run: a producer and a pool of async workers around the verifier client, rows written in
input order, checkpointed, stopped at once by any error; `rescore_file` is the entry point."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from pathlib import Path
from typing import Any

from gymverl.errors import RunError, from_os_error
from gymverl.files import ResumableFile, check_outputs, is_gzip_name, output_lock
from gymverl.inputs import Input, InputError, as_input
from gymverl.progress import BYTES, OnProgress, ProgressEvent
from gymverl.jsonl import iter_lines
from gymverl.records import agent_name, check_line
from gymverl.sidecars import TaskSource
from gymverl.verify import ECHO_KEYS, VerifyClient, build_request

from gymverl.rescore.errors import RescoreError
from gymverl.rescore.summary import RescoreSummary, is_bookkeeping
from gymverl.rescore.rows import failure_record, rejected_record, rescored_row
from gymverl.rescore.checkpoint import Checkpoints, default_failures_path, replay, state_path
from gymverl.rescore.writer import OrderedWriter, _Pending
from gymverl.rescore.modes import Fresh, RetryFailed
from gymverl.rescore.reverify import check_reverify_modes, check_servers_answer
from gymverl.rescore.tasks import TaskFields, task_source_for

TRANSIENT = frozenset({"timeout", "connection", "http_429", "http_5xx"})


class _Run:
    """One rescore run: a producer reads lines into a bounded window, workers verify them, the
    ordered writer writes them in line order; `mode` decides where it starts and what it writes into."""

    def __init__(
        self,
        input_path: Input,
        output: Path,
        failures: Path,
        client: VerifyClient,
        *,
        mode: Fresh | RetryFailed,
        tasks: TaskSource | None,
        window: int,
        max_failures_in_a_row: int,
        flip_threshold: float,
        on_progress: OnProgress | None,
        handle_signals: bool,
        limit: int | None,
    ) -> None:
        self.input, self.output, self.failures_path, self.client = input_path, output, failures, client
        self.mode, self.window = mode, window
        self.max_failures_in_a_row = max_failures_in_a_row
        self.on_progress, self.handle_signals, self.limit = on_progress, handle_signals, limit
        self.summary = RescoreSummary(str(input_path), str(output), str(failures), flip_threshold=flip_threshold)
        self.writer = OrderedWriter(self.summary, 1)
        self.bytes_total = input_path.progress_total  # for progress; None for a gzip
        self.in_a_row = 0
        self.stop_reason: str | None = None
        self.stop = asyncio.Event()
        self.advanced = asyncio.Event()
        self._last_progress = 0.0
        self.fields = TaskFields(client, tasks, self.summary)
        self._input_exhausted = False
        self._checkpoints: Checkpoints | None = None
        # The first exception raised in any background task (worker, producer, checkpoint writer):
        # it stops the run at once and is raised by `run()`, never left for nobody to await.
        self._error: BaseException | None = None

    def _checkpoint(self, *, complete: bool = False, force: bool = False) -> None:
        """Record progress (`Checkpoints.write`), in a mode that checkpoints as it goes."""
        if self._checkpoints is None:
            return  # a retry pass writes temp files that replace the old ones at the end
        out, fails = self.writer.out, self.writer.fails
        assert out is not None and fails is not None
        self._checkpoints.write(out, fails, self.writer.next_write - 1, complete=complete, force=force)

    async def _settle(self) -> None:
        """Wait for a checkpoint being written in the background (raises what it raised)."""
        if self._checkpoints is not None:
            await self._checkpoints.settle()

    def _background_done(self, fut: "asyncio.Future[Any]") -> None:
        """Done-callback of every background task: its exception stops the whole run at once."""
        if fut.cancelled():
            return
        exc = fut.exception()  # retrieved here, so asyncio never reports it as unretrieved
        if exc is not None and self._error is None:
            self._error = exc
            self.stop.set()

    # -- main ----------------------------------------------------------------------------------
    async def run(self) -> RescoreSummary:
        start_time = time.monotonic()
        start = self.mode.start()
        done = self.summary.resumed_from = start.done
        servers = {"pool": self.client.pool, "routes": self.client.routes}
        if self.mode.checkpoints:
            self._checkpoints = Checkpoints(state_path(self.output), start.fingerprint, servers, self._background_done, (start.out_bytes, start.fail_bytes))
        self.writer.next_write = done + 1
        loop = asyncio.get_running_loop()
        signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
        # Restored afterwards: asyncio's remove_signal_handler would leave SIGTERM/SIGHUP at their
        # defaults, dropping the CLI's "stop like Ctrl-C" handlers (gymverl.proc).
        previous = {sig: signal.getsignal(sig) for sig in signals} if self.handle_signals else {}
        if self.handle_signals:
            for sig in signals:
                loop.add_signal_handler(sig, self._interrupt, sig)
        try:
            try:
                # Opening cuts each file back to the checkpoint: anything written after it is dropped.
                self.writer.out = ResumableFile(start.out_path, start.out_bytes, compress=is_gzip_name(self.output))
                self.writer.fails = ResumableFile(start.fail_path, start.fail_bytes, compress=is_gzip_name(self.failures_path))
                if done:
                    replay(self.summary, self.output, self.failures_path)
                self._checkpoint(force=True)
                await self.client.open()
                await self.fields.fetch_schemas()
                await self._process(done)
                await self._settle()
                self._checkpoint(complete=self.summary.complete, force=True)
            except InputError as exc:
                await self._abandon()
                if not self.mode.checkpoints:
                    raise
                # The rows before the bad spot stay (cut back to the checkpoint), but --resume
                # continues only the very input it started on, so a fixed input starts over.
                raise InputError(
                    f"{str(exc).rstrip('.')}; the rows before it are saved in {self.output}: fix the input and start over "
                    "with --overwrite (--resume continues an unchanged input only).",
                    code=exc.exit_code,
                ) from None
            except BaseException:
                await self._abandon()
                raise
            for f in (self.writer.out, self.writer.fails):
                f.close()
            if self.summary.complete:
                self.mode.finish(start, self.writer.next_write - 1, servers)
            if self.summary.complete and self.failures_path.exists() and self.failures_path.stat().st_size == 0:
                self.failures_path.unlink()  # nothing failed: no empty failures file left behind
        finally:
            self.mode.close(start)
            if self.handle_signals:
                for sig in signals:
                    loop.remove_signal_handler(sig)
                    if previous[sig] is not None:
                        signal.signal(sig, previous[sig])
            await self.client.close()
        self.summary.seconds = time.monotonic() - start_time
        self.summary.servers = self.client.server_stats()
        self._report_progress(force=True)
        return self.summary

    async def _process(self, done: int) -> None:
        """Run the producer and the workers until the input is done, the run is stopped, or any
        of them fails; in every case all of them are cancelled and awaited before returning."""
        queue: asyncio.Queue[_Pending | None] = asyncio.Queue(maxsize=self.client.concurrency * 2)
        workers = [asyncio.create_task(self._worker(queue)) for _ in range(self.client.concurrency)]
        producer = asyncio.create_task(self._produce(queue, done))
        for t in (producer, *workers):
            t.add_done_callback(self._background_done)
        stopper = asyncio.create_task(self.stop.wait())
        tasks: list[asyncio.Task[Any]] = [producer, *workers, stopper]
        try:
            # A failing task sets `stop` (its done-callback), so every wait below ends at once then.
            await asyncio.wait({producer, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if not self.stop.is_set():
                finisher = asyncio.create_task(self._finish_workers(queue, len(workers), workers))
                tasks.append(finisher)
                await asyncio.wait({finisher, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            fetches = list(self.fields.accepted.values())
            for t in (*tasks, *fetches):
                t.cancel()
            # Awaiting them all retrieves every exception: nothing is left "never retrieved".
            await asyncio.gather(*tasks, *fetches, return_exceptions=True)
        if self._error is None:
            for t in tasks:
                if not t.cancelled() and t.exception() is not None:
                    self._error = t.exception()
                    break
        if self._error is not None:
            raise self._error
        if self.stop.is_set():
            self.summary.interrupted = self.stop_reason
            self._drain(final=False)
        else:
            self._drain(final=True)
            self.summary.complete = self._input_exhausted and not self.writer.pending
            if not self.summary.complete:
                self.summary.interrupted = f"stopped after {self.limit} rows (--limit)"

    @staticmethod
    async def _finish_workers(queue: "asyncio.Queue[_Pending | None]", n: int, workers: list["asyncio.Task[None]"]) -> None:
        for _ in range(n):
            await queue.put(None)
        await asyncio.gather(*workers)

    async def _abandon(self) -> None:
        """After an error: write nothing more, cut both files back to the last checkpoint on disk
        (so they hold whole lines only, and `--resume` continues from there), close them."""
        with contextlib.suppress(Exception):
            await self._settle()  # never cut a file under a checkpoint being written
        durable = self._checkpoints.durable if self._checkpoints is not None else None
        for i, f in enumerate((self.writer.out, self.writer.fails)):
            if f is None:
                continue
            if durable is not None:  # a retry pass's temp files are removed whole
                with contextlib.suppress(OSError):
                    f.truncate(durable[i])
            with contextlib.suppress(OSError):
                f.close(discard=True)

    def _interrupt(self, sig: int) -> None:
        self.stop_reason = "interrupted (Ctrl-C)" if sig == signal.SIGINT else f"terminated ({signal.Signals(sig).name})"
        self.stop.set()

    async def _produce(self, queue: asyncio.Queue[_Pending | None], done: int) -> None:
        taken = 0
        # Blank lines keep their numbers (rows are written in line order) and are written nowhere.
        for ln in iter_lines(self.input, skip_blank=False):
            if ln.number <= done:
                self.writer.bytes_done += ln.size + 1
                if ln.blank:  # done by an earlier run, written nowhere: `replay` cannot see it
                    self.summary.lines += 1
                    self.summary.blank += 1
                continue
            if self.limit is not None and taken >= self.limit:
                return
            taken += 1
            # Bound memory: never run more than `window` lines ahead of the oldest unwritten one.
            while ln.number - self.writer.next_write >= self.window:
                self.advanced.clear()
                await self.advanced.wait()
            item = _Pending(ln.number, size=ln.size + 1)
            self.writer.add(item)
            if ln.blank:
                item.done = True
                self._drain()
                continue
            if self.mode.copy(item):
                self._drain()
                continue
            c = check_line(ln)
            if c.record is None:
                item.fail, item.done = rejected_record(ln.number, c.code or "invalid", c.reason or "", c.raw), True
                self._drain()
                continue
            item.record = c.record
            if self.client.routes == {} and len(self.summary.agents) < 8:
                # one pool for every row: remember a few agent names (`RescoreSummary.warning`)
                self.summary.agents.add(agent_name(c.record))
            await queue.put(item)
        self._input_exhausted = True

    async def _worker(self, queue: asyncio.Queue[_Pending | None]) -> None:
        while True:
            item = await queue.get()
            if item is None:
                return
            try:
                await self._rescore_item(item)
            except Exception as exc:
                # A bug met on one line must name that line, and stops the run (never a hang).
                raise RunError(
                    f"{self.input}: line {item.line}: gymverl failed on this line ({type(exc).__name__}: {exc}); "
                    "please report it with the line. Lines before it are saved; continue with --resume."
                ) from exc
            item.record = None  # free the row early; the output row holds what is needed
            item.done = True
            self._drain()

    async def _rescore_item(self, item: _Pending) -> None:
        record = item.record
        assert record is not None
        added = self.fields.join(record)
        body = build_request(record, added, self.fields.rule(agent_name(record)))
        result = await self.client.verify_body(body, agent=agent_name(record))
        if result.ok:
            assert result.answer is not None
            self.in_a_row = 0
            item.out = rescored_row(record, result.answer, added)
            before, after = record.get("reward"), result.answer["reward"]
            if isinstance(before, (int, float)) and after < before:
                # Diagnose rewards that went down: nulls in the answer, fields the server takes but the row lacks.
                for k, v in result.answer.items():
                    if v is None and body.get(k) is None and k not in ECHO_KEYS and not is_bookkeeping(k):
                        self.summary.null_echoed[k] += 1
                await self.fields.note_absent(result.server, body)
        else:
            item.fail = failure_record(item.line, record, result)
            item.transient = result.reason in TRANSIENT
            if item.transient:
                self.in_a_row += 1
                if self.in_a_row >= self.max_failures_in_a_row and not self.stop.is_set():
                    self.stop_reason = (
                        f"verifier unreachable: {self.in_a_row} rows in a row failed ({result.reason}: {result.error})"
                    )
                    self.stop.set()
            else:
                self.in_a_row = 0

    def _drain(self, final: bool = False) -> None:
        """Write the rows that are ready (`OrderedWriter.drain`); then wake the producer, checkpoint, report."""
        if self.writer.drain(final):
            self.advanced.set()
            self._checkpoint()
            self._report_progress()

    def _report_progress(self, force: bool = False) -> None:
        if self.on_progress is None:
            return
        now = time.monotonic()
        if force or now - self._last_progress >= 0.1:
            self._last_progress = now
            s = self.summary
            self.on_progress(ProgressEvent(self.writer.bytes_done, self.bytes_total, BYTES, rows=s.lines, new_rows=s.rows_this_run, failed=s.failed + s.rejected))


def rescore_file(
    input_path: str | os.PathLike[str],
    output: str | os.PathLike[str],
    servers: list[str] | str | None = None,
    *,
    client: VerifyClient | None = None,
    failures: str | os.PathLike[str] | None = None,
    resume: bool = False,
    overwrite: bool = False,
    retry_failed: bool = False,
    tasks: str | os.PathLike[str] | TaskSource | None = None,
    side_files: bool = True,
    force: bool = False,
    check_reverify: bool = True,
    concurrency: int | None = None,
    timeout: float | None = None,
    retries: int | None = None,
    window: int | None = None,
    max_failures_in_a_row: int | None = None,
    flip_threshold: float = 0.25,
    limit: int | None = None,
    on_progress: OnProgress | None = None,
    handle_signals: bool = False,
) -> RescoreSummary:
    """Re-score a rollout file against NeMo Gym `/verify` servers (see the module docstring).

    `resume` continues an unfinished run into `output`; without it, an unfinished run there is
    refused unless `overwrite` (a finished one is simply replaced). `retry_failed` re-sends the rows
    of a finished run whose verification failed, copies every other row, and replaces the output
    and failures files (order kept) only if that pass completes.

    Task fields the rollouts lack are joined from `tasks` (an original NeMo Gym tasks file, joined
    on `_ng_task_index` = its 0-based line, or materialized inputs, joined on
    (`_ng_task_index`, `_ng_rollout_index`); either way the prompt must match), else from
    `<stem>_materialized_inputs.jsonl` beside the input when it exists (`side_files=False`: not
    looked for). Never on line position or prompt text alone (`gymverl.sidecars.TaskSource`).

    Every server must answer HTTP before a row is read (`check_servers_answer`: one that does not,
    e.g. connection refused, is a RescoreError, exit 2, for a fresh run, `resume` and `retry_failed`
    alike); a server that goes away during the run stops it after `max_failures_in_a_row`
    transient failures in a row (resume with `resume=True`).

    Unless `check_reverify` is False, every server is asked `GET /reverify_mode` first; servers
    that are not declared stateless are refused without `force` (see `check_reverify_modes`).

    Outputs (`output`, the failures file, the checkpoint) are checked against the inputs (the
    rollouts and the task file) before anything is written, and locked for the whole run.

    Raises (each one sentence, `exit_code` set): InputError / RescoreError (exit 2) for problems
    found before any row is sent, an output that is an input, or an existing file that is not a
    rescore run's output; RunError (exit 1) when another process is writing the same output (its
    PID named), when the disk fills or a file-size limit is reached, or when a line cannot be
    processed: the run stops at once, both files are cut back to the last checkpoint (whole lines
    only) and `resume=True` continues from there.
    """
    # Two passes (fingerprint, then lines): a pipe is spooled to a temp file (see gymverl.inputs).
    path = as_input(input_path, passes=2)
    assert path.path is not None
    out = Path(output)
    fails = Path(failures) if failures is not None else default_failures_path(out)
    # A pipe (spooled) has no folder to find side files in.
    source = task_source_for(path.path, tasks, side_files and not path.spooled)
    if source is not None and len(source) == 0:
        raise RescoreError(f"{source.path}: no valid NeMo Gym task rows to join.")
    # Before anything is opened for writing: no output may be an input (path, symlink, hard link).
    check_outputs([out, fails, state_path(out)], [None if path.spooled else path.path, source.path if source is not None else None])
    if retry_failed and (resume or overwrite):
        raise RescoreError("--retry-failed works on a finished run; do not combine it with --resume or --overwrite.")
    if client is None:
        if not servers:
            raise RescoreError("no verifier server given (use --server URL or NAME=URL).")
        kw: dict[str, Any] = {}
        if concurrency is not None:
            kw["concurrency"] = concurrency
        if timeout is not None:
            kw["timeout"] = timeout
        if retries is not None:
            kw["retries"] = retries
        client = VerifyClient([servers] if isinstance(servers, str) else list(servers), **kw)
    check_servers_answer(client)
    modes, forced = check_reverify_modes(client, force) if check_reverify else ({}, [])
    try:
        # Held for the whole run: a second rescore into the same files stops at once, naming this one.
        with output_lock(out, fails):
            summary = _rescore_locked(
                path, out, fails, client, source, window, max_failures_in_a_row, flip_threshold, on_progress,
                handle_signals, limit, resume=resume, overwrite=overwrite, retry_failed=retry_failed,
            )
        summary.reverify_modes, summary.forced = modes, forced
        if source is not None:
            summary.task_source, summary.task_source_kind = str(source.path), source.kind
        return summary
    except OSError as exc:
        # Disk full or a file-size limit: exit 1 (the command line was fine); anything else: exit 2.
        raise from_os_error(exc, None if exc.filename else str(out)) from None


def _rescore_locked(
    path: Input,
    out: Path,
    fails: Path,
    client: VerifyClient,
    task_index: TaskSource | None,
    window: int | None,
    max_failures_in_a_row: int | None,
    flip_threshold: float,
    on_progress: OnProgress | None,
    handle_signals: bool,
    limit: int | None,
    *,
    resume: bool,
    overwrite: bool,
    retry_failed: bool,
) -> RescoreSummary:
    win = window or max(1024, 16 * client.concurrency)
    # A held-back run of failures must be able to trip the breaker before it fills the window.
    breaker = min(max_failures_in_a_row or max(10, 2 * client.concurrency), max(1, win - 1))
    run = _Run(
        path,
        out,
        fails,
        client,
        mode=RetryFailed(path, out, fails) if retry_failed else Fresh(path, out, fails, resume=resume, overwrite=overwrite),
        tasks=task_index,
        window=win,
        max_failures_in_a_row=breaker,
        flip_threshold=flip_threshold,
        on_progress=on_progress,
        handle_signals=handle_signals,
        limit=limit,
    )
    return asyncio.run(run.run())
