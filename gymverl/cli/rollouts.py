"""`gymverl validate` and `gymverl stats`: read a rollout file and report on it."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.markup import escape

from gymverl.cli.core import command, console, err_console, error, fail, print_json, warn
from gymverl.cli.options import MAX_LINE_MB, arg, input_arg, number, opt, user_path
from gymverl.cli.progress import progress_bar, showing
from gymverl.cli.render import render_collection, render_comparison, render_rejects_written, render_stats, render_validation
from gymverl.errors import EXIT_REJECTED
from gymverl.files import check_outputs, output_lock
from gymverl.inputs import Input
from gymverl.jsonl import check_input_path


@command(short_help="Check a rollout JSONL file line by line.")
def validate(
    rollouts: Annotated[Path, arg("rollouts", help="Rollout JSONL written by NeMo Gym (.jsonl or .jsonl.gz).")],
    rejects: Annotated[Optional[Path], opt("rejects")] = None,
    input_kind: Annotated[
        str, opt("input_kind", help="rollouts, or tasks to check a NeMo Gym tasks (input) file.")
    ] = "rollouts",
    tasks: Annotated[bool, typer.Option("--tasks", hidden=True, help="Old spelling of --input-kind tasks.")] = False,
    as_json: Annotated[bool, opt("json")] = False,
    max_line_mb: Annotated[float, opt("max_line_mb")] = MAX_LINE_MB,
) -> None:
    """Check a rollout JSONL file line by line and print a summary.

    Exit code 0 when every line is a valid rollout, 1 when some lines are rejected, 2 on usage errors.
    """
    from gymverl.records import validate_file

    if input_kind not in ("rollouts", "tasks"):
        fail(f"--input-kind must be rollouts or tasks, not {input_kind!r}.")
    tasks_file = tasks or input_kind == "tasks"
    with contextlib.ExitStack() as stack:
        path = input_arg(stack, rollouts)
        # The rejects file is never the input (nor a link to it), and one run at a time writes it.
        check_outputs([], [user_path(path)], streams=[rejects])
        with output_lock(rejects):
            summary = validate_file(path, rejects=rejects, tasks=tasks_file, max_line_bytes=int(max_line_mb * 1e6))
        warnings: list[str] = []
        hint = _tasks_file_hint(path, "check it with --input-kind tasks") if summary.rejected and not tasks_file else None
        if hint:
            warnings.append(hint)
    empty = summary.valid + summary.rejected == 0  # blank lines alone are no rollouts either
    data = summary.to_dict()
    data["input_kind"] = "tasks" if tasks_file else "rollouts"
    if empty:
        data["error"] = "file is empty"
    # NeMo Gym >= 0.5 side files: which of the rollouts asked for failed or are missing, per task.
    from gymverl.sidecars import collection_report

    collection = None if tasks else collection_report(str(path))
    data["collection"] = collection.to_dict() if collection is not None else None
    warning = collection.warning() if collection is not None else None
    if warning:
        warnings.insert(0, warning)
    if warnings:
        data["warnings"] = warnings
    if as_json:
        print_json(data)
    else:
        render_validation(data)
        render_collection(data["collection"])
        for w in warnings:
            warn(w)
        if empty:
            error(f"{path}: file is empty (no rollouts).")
        render_rejects_written(rejects, summary.rejected)
    if summary.rejected or empty:
        raise typer.Exit(EXIT_REJECTED)


# ---- stats -------------------------------------------------------------------------------------


def _tasks_file_hint(path: Input, advice: str) -> str | None:
    """The warning for a file of rejected lines that is a NeMo Gym tasks file (to-parquet's test,
    `detect_input_kind`, so the commands agree), ending with `advice`; None otherwise."""
    if path.path is None:
        return None  # (a pipe cannot be read again)
    from gymverl.convert import detect_input_kind

    if detect_input_kind(path.path) != "tasks":
        return None
    return f"{path.name} looks like a NeMo Gym tasks file (no 'response' in its lines): {advice}."


def _compute_stats(path: Input, threshold: float, group_by: str, show_progress: bool, tasks: Optional[Path] = None) -> Any:
    """Run `compute_stats` with a transient progress bar on stderr (a terminal only)."""
    from gymverl.stats import compute_stats

    progress, on_progress = progress_bar(
        "bytes", f"[bold]reading {escape(path.stem)}", console=err_console, show=show_progress and err_console.is_terminal
    )
    with showing(progress):
        return compute_stats(path, threshold=threshold, group_by=group_by, on_progress=on_progress, tasks_path=tasks)


@command(short_help="Reward statistics: pass rate, pass@k, distributions.")
def stats(
    rollouts: Annotated[Path, arg("rollouts", help="Rollout JSONL (.jsonl or .jsonl.gz), e.g. from `gymverl collect` or `rescore`.")],
    threshold: Annotated[
        float,
        typer.Option(
            "--threshold",
            callback=number(),
            help="A rollout is correct when reward >= this (pass rate, pass@k, all-solved/all-failed). "
            "NeMo Gym verifiers give 1.0 for a solved task; blackjack's -1/0/1 counts only wins.",
        ),
    ] = 1.0,
    group_by: Annotated[
        str,
        typer.Option(
            "--group-by",
            help="Report groups side by side: 'agent' (agent_ref.name, else data_source), 'none', or any top-level field name.",
        ),
    ] = "agent",
    against: Annotated[
        Optional[Path],
        typer.Option("--against", help="Compare with this rollout file (shown as 'before'; ROLLOUTS is 'after')."),
    ] = None,
    plot: Annotated[
        Optional[Path], typer.Option("--plot", help="Write a PNG: reward histogram and pass rate per task.")
    ] = None,
    as_json: Annotated[bool, opt("json", help="Print the statistics as JSON (for scripts).")] = False,
    per_task: Annotated[
        bool, typer.Option("--per-task", help="Include every task in --json output (default: only when there are at most 1000).")
    ] = False,
    show_tasks: Annotated[int, opt("show_tasks", callback=number(min=0), help="Print the per-task table when there are at most this many tasks.")] = 30,
    tasks: Annotated[
        Optional[Path],
        opt("tasks", help="Task rows for --group-by a task field the rollout lines lack (NeMo Gym >= 0.5 drops them): the original tasks file or <stem>_materialized_inputs.jsonl (used without this option when it is beside ROLLOUTS)."),
    ] = None,
) -> None:
    """Reward statistics: pass rate and pass@k per task, reward and length distributions, truncations.

    pass@k is the unbiased estimator 1 - C(n-c, k)/C(n, k) per task (n rollouts, c correct),
    averaged over the tasks with at least k rollouts. Masked rollouts (mask_sample: true) are left
    out of every mean, pass rate and pass@k and counted separately; std is the sample std (ddof=1),
    as NeMo Gym's `gym eval profile`. With NeMo Gym's <stem>_materialized_inputs.jsonl and
    <stem>_failures.jsonl beside ROLLOUTS, failed and missing rollouts are reported per task.

    Exit code 0 ok, 1 some lines rejected (they are listed and not counted) or the file is empty,
    2 usage error.
    """
    if plot is not None and plot.suffix.lower() != ".png":
        fail(f"--plot writes a PNG file; give a path ending in .png, not {plot}.")
    with contextlib.ExitStack() as stack:
        path = input_arg(stack, rollouts)
        other = input_arg(stack, against) if against is not None else None
        if tasks is not None:
            check_input_path(tasks)  # a regular file (read by key): missing, a directory, Parquet, a pipe: one sentence
        # Checked up front (plot_stats checks again): a bad --plot path must not cost a full read first.
        check_outputs([], [user_path(path), user_path(other), tasks], streams=[plot])
        result = _compute_stats(path, threshold, group_by, not as_json, tasks)
        before = _compute_stats(other, threshold, group_by, not as_json, tasks) if other is not None else None
    from gymverl.stats import compare_stats, plot_stats

    comparison = compare_stats(before, result) if before is not None else None
    if plot is not None:
        try:
            plot_stats(result, plot, against=before)
        except ImportError:
            fail("--plot needs matplotlib: pip install 'gymverl[plot]'.")
    data = result.to_dict(per_task=per_task or len(result.tasks) <= 1000)
    hint = _tasks_file_hint(path, "stats reads rollouts; collect them first (gymverl collect)") if result.rejected else None
    if hint:
        data["warnings"] = [*(data.get("warnings") or []), hint]
    if as_json:
        out: dict[str, Any] = data
        if before is not None:
            out = {"after": data, "before": before.to_dict(per_task=per_task or len(before.tasks) <= 1000), "comparison": comparison}
        if plot is not None:
            out["plot"] = str(plot)
        print_json(out)
    else:
        render_stats(data, show_tasks)
        render_collection(data.get("collection"), show_tasks)
        for w in data.get("warnings") or []:
            warn(w)
        if comparison is not None:
            render_comparison(comparison)
        if plot is not None:
            console.print(f"plot written to [bold]{plot}[/]")
    def empty(s: Any) -> bool:  # blank lines alone are no rollouts either
        return s.lines - getattr(s, "blank", 0) == 0

    for s in (result, before):
        if s is not None and empty(s):
            error(f"{s.path}: file is empty (no rollouts).")
    if result.rejected or empty(result) or (before is not None and (before.rejected or empty(before))):
        raise typer.Exit(EXIT_REJECTED)
