"""The one progress helper: rich bars driven by the library's one callback shape (`gymverl.progress`).

Every long-running command (validate's reading, stats, rescore, to-parquet, collect, train-offline,
train-online) gets its bar here, from a preset of columns per kind of work; the library only ever
calls an `OnProgress` with `ProgressEvent`s and draws nothing. The two train commands share one
step view (`steps_view`) of VeRL's run events (`gymverl.runner.Event`).
"""

from __future__ import annotations

import contextlib
import time
from typing import Any, Callable, Iterator

from rich.console import Console
from rich.progress import (
    BarColumn, DownloadColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn,
    TimeRemainingColumn,
)

from gymverl.errors import RunError
from gymverl.progress import OnProgress, ProgressEvent

# kind of work -> the columns after the description and the bar.
PRESETS: dict[str, Any] = {
    # reading a file: bytes read of its size
    "bytes": lambda: (DownloadColumn(), TimeRemainingColumn()),
    # lines sent somewhere (rescore): lines done, this run's rate, failures
    "rows": lambda: (
        TextColumn("{task.fields[rows]} rows"), TextColumn("{task.fields[rate]} rows/s"),
        TextColumn("[red]{task.fields[failed]}[/]"), TimeElapsedColumn(), TimeRemainingColumn(),
    ),
    # items of a known count (collect's rollouts): M/N, failures
    "count": lambda: (MofNCompleteColumn(), TextColumn("[red]{task.fields[failed]}[/]"), TimeElapsedColumn(), TimeRemainingColumn()),
    # training steps, with a note (the loss)
    "steps": lambda: (SpinnerColumn(), TextColumn("step {task.completed}/{task.total}"), TextColumn("{task.fields[note]}"), TimeElapsedColumn()),
}


def _progress(description: str, *columns: Any, console: Console, transient: bool = True) -> tuple[Progress, OnProgress]:
    """A rich progress bar (`description`, a bar, then `columns`) and the `gymverl.progress.OnProgress`
    callback that drives it: the one place library progress events become rich updates.

    Columns may show `{task.fields[rows]}` (lines handled), `{task.fields[rate]}` (lines per second
    in this run), `{task.fields[failed]}` ("N failed", or empty) and `{task.fields[note]}` (set by
    the command with `progress.update`).
    """
    progress = Progress(TextColumn("{task.description}"), BarColumn(), *columns, console=console, transient=transient)
    task = progress.add_task(description, total=None, rows=0, rate="-", failed="", note="")
    start: list[tuple[float, int]] = []

    def on_progress(ev: ProgressEvent) -> None:
        fields: dict[str, Any] = {"failed": f"{ev.failed} failed" if ev.failed else ""}
        if ev.rows is not None:
            fields["rows"] = ev.rows
            now, new = time.monotonic(), ev.rows if ev.new_rows is None else ev.new_rows
            if not start:
                start.append((now, new))
            t0, r0 = start[0]
            fields["rate"] = f"{(new - r0) / (now - t0) if now > t0 else 0.0:.0f}"
        progress.update(task, completed=ev.done, total=ev.total, **fields)

    return progress, on_progress


def progress_bar(
    kind: str, description: str, *, console: Console, show: bool = True, transient: bool = True
) -> tuple[Progress | None, OnProgress | None]:
    """A bar of preset `kind` (`PRESETS`) on `console` and its callback; (None, None) when not `show`n
    (`--json`, or a bar that only makes sense on a terminal and `console.is_terminal` is false)."""
    if not show:
        return None, None
    return _progress(description, *PRESETS[kind](), console=console, transient=transient)


@contextlib.contextmanager
def showing(progress: Progress | None) -> Iterator[None]:
    """Draw `progress` (if any) for the duration of the block, and stop it however the block ends."""
    if progress is None:
        yield
        return
    progress.start()
    try:
        yield
    finally:
        progress.stop()


def steps_view(
    view: Console, *, note: tuple[str, str], val: Callable[[dict[str, float]], str], total: int | None = None,
    stages: dict[str, str] | None = None, verbose: bool = False,
) -> tuple[Progress, Callable[[Any], None]]:
    """The step bar of a VeRL run (train-offline, train-online) and the `on_event` that drives it
    from `gymverl.runner.Event`s; the bar is not yet started (`showing(progress)` draws it).

    note: (metric key, format) of the note beside the step count, e.g. ("train/loss", "loss {:.4f}");
        no note when a step's metrics lack the key.
    val: the text after "step N: " printed for a validation event, from its metrics.
    total: steps planned (None: unknown until VeRL's "total" event).
    stages: event kind -> bar description (e.g. {"export": "exporting ..."}) for the run's other stages.
    verbose: echo every other line VeRL prints (`--verbose`).
    """
    progress, on_progress = _progress("starting VeRL", *PRESETS["steps"](), console=view, transient=False)
    task = progress.tasks[0].id
    steps: list[int | None] = [total]
    key, fmt = note
    stages = stages or {}

    def on_event(ev: Any) -> None:
        if ev.kind == "step":
            value = ev.metrics.get(key)
            on_progress(ProgressEvent(ev.step, steps[0], "steps"))
            progress.update(task, description="training", note=fmt.format(value) if value is not None else "")
        elif ev.kind == "val":
            progress.console.print(f"step {ev.step}: {val(ev.metrics)}", highlight=False, markup=False)
        elif ev.kind == "total":
            steps[0] = ev.total
            progress.update(task, total=ev.total)
        elif ev.kind in stages:
            progress.update(task, description=stages[ev.kind])
        elif verbose:
            progress.console.print(ev.line, highlight=False, markup=False)

    progress.update(task, total=total)
    return progress, on_event


def run_steps(progress: Progress, run: Callable[[], Any], stopped: Callable[[], str]) -> Any:
    """`run()` (a VeRL run, its result has `returncode` and `failure()`) with `progress` drawn.

    Ctrl-C (or SIGTERM/SIGHUP) prints "interrupted: `stopped()`." on stderr and exits 130: called
    then, not before the run, because what it says (e.g. whether a checkpoint exists to resume
    from) is only known at that moment. A run VeRL did not finish raises its one sentence
    (RunError, exit 1). Returns the result otherwise."""
    from gymverl.cli.core import exit_interrupted

    try:
        with showing(progress):
            result = run()
    except KeyboardInterrupt:
        exit_interrupted(stopped())
    if result.returncode != 0:
        raise RunError(f"{result.failure()}.")
    return result
