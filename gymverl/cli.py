"""The `gymverl` command line: a thin Typer app over the library; rendering with rich.

Exit codes (all commands): 0 success, 1 the job ran but some input was rejected or failed,
2 usage error (bad option, missing file, ...), 130 interrupted.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from gymverl import __version__
from gymverl.jsonl import DEFAULT_MAX_LINE_BYTES, InputError, check_input_path

app = typer.Typer(
    name="gymverl",
    help=(
        "Turn NeMo Gym rollouts into VeRL training data and training runs.\n\n"
        "Exit codes: 0 success; 1 some input rejected or failed; 2 usage error; 130 interrupted."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)

EXIT_OK, EXIT_REJECTED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def fail(message: str, code: int = EXIT_USAGE) -> None:
    """Print one clear sentence to stderr and exit with `code`."""
    err_console.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)


def existing_file(path: Path) -> Path:
    """Exit 2 with a clear message unless `path` is a readable file."""
    try:
        return check_input_path(path)
    except InputError as exc:
        fail(str(exc))
    raise AssertionError  # unreachable


def print_json(data: Any) -> None:
    """Machine-readable output for `--json` (stdout, nothing else on it)."""
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def version_callback(value: bool) -> None:
    if value:
        console.print(f"gymverl {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        Optional[bool], typer.Option("--version", callback=version_callback, is_eager=True, help="Show the version and exit.")
    ] = None,
) -> None:
    """Turn NeMo Gym rollouts into VeRL training data and training runs."""


# ---- validate ----------------------------------------------------------------------------------


def render_validation(summary: dict[str, Any], title: str = "validate") -> None:
    """Render a validation summary (from `ValidationSummary.to_dict`) as rich tables."""
    t = Table(title=f"{title}: {summary['path']}", show_header=False, title_justify="left")
    t.add_column(style="bold")
    t.add_column(justify="right")
    t.add_row("lines", str(summary["lines"]))
    t.add_row("valid", f"[green]{summary['valid']}[/]")
    t.add_row("rejected", f"[red]{summary['rejected']}[/]" if summary["rejected"] else "0")
    t.add_row("tasks", str(summary["tasks"]))
    rpt = summary["rollouts_per_task"]
    if summary["tasks"]:
        t.add_row("rollouts per task", f"min {rpt['min']}  mean {rpt['mean']:.2f}  max {rpt['max']}")
    rw = summary["reward"]
    if rw["mean"] is not None:
        t.add_row("reward", f"mean {rw['mean']:.4f}  min {rw['min']:g}  max {rw['max']:g}")
        if rw["out_of_0_1"]:
            t.add_row("rewards outside 0-1", str(rw["out_of_0_1"]))
    t.add_row("incomplete responses", f"[yellow]{summary['incomplete']}[/]" if summary["incomplete"] else "0")
    if summary.get("masked"):
        t.add_row("mask_sample", str(summary["masked"]))
    if len(summary.get("agents", {})) > 1 or "(unnamed)" not in summary.get("agents", {}):
        t.add_row("agents", ", ".join(f"{k} ({v})" for k, v in summary["agents"].items()))
    console.print(t)
    if rw["mean"] is not None and any(rw["histogram"].values()):
        h = Table(title="reward histogram", title_justify="left", show_header=False)
        h.add_column()
        h.add_column(justify="right")
        h.add_column()
        peak = max(rw["histogram"].values()) or 1
        for label, n in rw["histogram"].items():
            h.add_row(label, str(n), "█" * round(20 * n / peak))
        console.print(h)
    if summary["rejected"]:
        r = Table(title="rejected lines", title_justify="left")
        r.add_column("line", justify="right")
        r.add_column("reason")
        for rej in summary["rejections"]:
            r.add_row(str(rej["line"]), rej["reason"])
        if summary["rejected"] > len(summary["rejections"]):
            r.add_row("…", f"{summary['rejected'] - len(summary['rejections'])} more (see --rejects)")
        console.print(r)
        by = ", ".join(f"{k}: {v}" for k, v in summary["rejected_by_reason"].items())
        console.print(f"[red]rejected by reason[/]: {by}")


@app.command()
def validate(
    rollouts: Annotated[Path, typer.Argument(help="Rollout JSONL written by NeMo Gym (.jsonl or .jsonl.gz).")],
    rejects: Annotated[
        Optional[Path], typer.Option("--rejects", help="Write every rejected line as {line, code, reason, raw} JSONL here.")
    ] = None,
    tasks: Annotated[bool, typer.Option("--tasks", help="Check a NeMo Gym *tasks* (input) file instead of rollouts.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON (for scripts).")] = False,
    max_line_mb: Annotated[float, typer.Option("--max-line-mb", help="Reject lines longer than this (MB).")] = DEFAULT_MAX_LINE_BYTES / 1e6,
) -> None:
    """Check a rollout JSONL file line by line and print a summary.

    Exit code 0 when every line is a valid rollout, 1 when some lines are rejected, 2 on usage errors.
    """
    from gymverl.records import validate_file

    path = existing_file(rollouts)
    try:
        summary = validate_file(path, rejects=rejects, tasks=tasks, max_line_bytes=int(max_line_mb * 1e6))
    except InputError as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"{path}: {exc.strerror or exc}.")
    data = summary.to_dict()
    if summary.lines == 0:
        data["error"] = "file is empty"
    if as_json:
        print_json(data)
    else:
        render_validation(data)
        if summary.lines == 0:
            err_console.print(f"[bold red]error:[/] {path}: file is empty (no rollouts).")
        if rejects and summary.rejected:
            console.print(f"rejected lines written to [bold]{rejects}[/]")
    if summary.rejected or summary.lines == 0:
        raise typer.Exit(EXIT_REJECTED)


# ---- stats -------------------------------------------------------------------------------------


def _fmt(x: Any, digits: int = 4) -> str:
    """A number for a table cell ('-' when missing)."""
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.{digits}f}".rstrip("0").rstrip(".") if x != int(x) or abs(x) >= 1e15 else f"{x:.0f}"
    return str(x)


def _stats_rows(d: dict[str, Any]) -> list[tuple[str, str]]:
    """(metric, value) rows for one group summary from `GroupStats.to_dict`."""
    rw, ln = d["reward"], d["length"]
    rows = [
        ("rollouts", _fmt(d["rollouts"])),
        ("tasks", _fmt(d["tasks"])),
        ("rollouts per task", f"{d['rollouts_per_task']['min']}-{d['rollouts_per_task']['max']}"),
        ("pass rate", _fmt(d["pass_rate"])),
    ]
    for p in d["pass_at_k"]:
        rows.append((f"pass@{p['k']}", _fmt(p["pass_at_k"]) + ("" if p["tasks"] == d["tasks"] else f" ({p['tasks']} tasks)")))
    rows += [
        ("reward mean ± std", f"{_fmt(rw['mean'])} ± {_fmt(rw['std'])}"),
        ("reward median", _fmt(rw["median"])),
        ("reward min / max", f"{_fmt(rw['min'])} / {_fmt(rw['max'])}"),
        ("tasks all solved", _fmt(d["tasks_all_solved"])),
        ("tasks all failed", _fmt(d["tasks_all_failed"])),
        ("tasks zero variance", _fmt(d["tasks_zero_variance"])),
        ("incomplete", f"[yellow]{d['incomplete']}[/]" if d["incomplete"] else "0"),
        ("failed", f"[red]{d['failed']}[/]" if d["failed"] else "0"),
    ]
    if d["masked"]:
        rows.append(("mask_sample", _fmt(d["masked"])))
    unit = "tokens" if ln["unit"] == "output_tokens" else "chars"
    if ln["count"]:
        rows += [
            (f"{unit} mean / median", f"{_fmt(ln['mean'], 1)} / {_fmt(ln['median'], 1)}"),
            (f"{unit} p90 / max", f"{_fmt(ln['p90'], 1)} / {_fmt(ln['max'], 1)}"),
            (f"{unit} ok / not ok", f"{_fmt(ln['mean_correct'], 1)} / {_fmt(ln['mean_incorrect'], 1)}"),
        ]
    return rows


def render_stats(data: dict[str, Any], show_tasks: int = 30) -> None:
    """Render `RolloutStats.to_dict()` as rich tables."""
    o = data["overall"]
    title = f"stats: {data['path']}  (correct = reward >= {data['threshold']:g})"
    t = Table(title=title, title_justify="left")
    t.add_column("metric", style="bold", no_wrap=True, min_width=19)
    t.add_column("all", justify="right", no_wrap=True, min_width=11)
    groups = data["groups"]
    for g in groups:
        t.add_column(g["name"], justify="right", overflow="fold")
    columns = [_stats_rows(o)] + [_stats_rows(g) for g in groups]
    labels = [label for label, _ in columns[0]]
    for label in labels:
        cells = [dict(col).get(label, "-") for col in columns]
        t.add_row(label, *cells)
    console.print(t)
    ln = o["length"]
    if ln["count"]:
        note = (
            "output tokens from response.usage"
            if ln["unit"] == "output_tokens"
            else "characters of response text (not every rollout has response.usage.output_tokens)"
        )
        console.print(f"[dim]length = {note}[/]")

    per_task = data.get("per_task") or []
    if per_task and len(per_task) <= show_tasks:
        pt = Table(title="per task", title_justify="left")
        pt.add_column("task", overflow="fold")
        pt.add_column("n", justify="right")
        pt.add_column("ok", justify="right")
        pt.add_column("pass", justify="right")
        pt.add_column("", no_wrap=True, min_width=10)
        pt.add_column("reward", justify="right")
        pt.add_column("cut", justify="right")
        for r in per_task:
            bar = "█" * round(10 * r["pass_rate"])
            pt.add_row(
                r["task"], str(r["n"]), str(r["correct"]), _fmt(r["pass_rate"], 3), f"[green]{bar}[/]",
                _fmt(r["mean_reward"], 3), str(r["incomplete"]) if r["incomplete"] else "",
            )
        console.print(pt)
    dist = data["pass_rate_distribution"]
    if o["tasks"]:
        h = Table(title="tasks by pass rate", title_justify="left", show_header=False)
        h.add_column()
        h.add_column(justify="right")
        h.add_column()
        peak = max(dist.values()) or 1
        for label, n in dist.items():
            h.add_row(label, str(n), "█" * round(20 * n / peak))
        console.print(h)
    hist = o["reward"]["histogram"]
    if o["rollouts"] and o["reward"]["values"] is None:
        rh = Table(title="reward histogram", title_justify="left", show_header=False)
        rh.add_column()
        rh.add_column(justify="right")
        rh.add_column()
        peak = max(b["count"] for b in hist) or 1
        for b in hist:
            rh.add_row(f"{b['lo']:.3g} - {b['hi']:.3g}", str(b["count"]), "█" * round(20 * b["count"] / peak))
        console.print(rh)
    elif o["rollouts"]:
        vals = ", ".join(f"{k}: {v}" for k, v in o["reward"]["values"].items())
        console.print(f"reward values: {vals}")
    if data["rejected"]:
        r = Table(title=f"rejected lines ({data['rejected']}, not counted above)", title_justify="left")
        r.add_column("line", justify="right")
        r.add_column("reason")
        for rej in data["rejections"]:
            r.add_row(str(rej["line"]), rej["reason"])
        if data["rejected"] > len(data["rejections"]):
            r.add_row("…", f"{data['rejected'] - len(data['rejections'])} more (`gymverl validate --rejects FILE` lists all)")
        console.print(r)


def render_comparison(cmp: dict[str, Any]) -> None:
    """Render `compare_stats()` as a before/after table."""
    t = Table(title=f"before: {cmp['before']}  ->  after: {cmp['after']}", title_justify="left")
    t.add_column("metric", style="bold")
    t.add_column("before", justify="right")
    t.add_column("after", justify="right")
    t.add_column("delta", justify="right")
    for m in cmp["metrics"]:
        d = m["delta"]
        color = "" if not d else ("green" if d > 0 else "red")
        # More incomplete/failed/all-failed tasks is worse, so flip the colour for those.
        if color and any(w in m["metric"] for w in ("incomplete", "failed", "zero variance")):
            color = "red" if color == "green" else "green"
        if m["metric"] in ("rollouts", "tasks") or m["metric"].startswith("mean length"):
            color = ""
        ds = "-" if d is None else (f"{d:+.4f}".rstrip("0").rstrip(".") if isinstance(d, float) else f"{d:+d}")
        t.add_row(m["metric"], _fmt(m["before"]), _fmt(m["after"]), f"[{color}]{ds}[/]" if color else ds)
    console.print(t)
    tk = cmp["tasks"]
    console.print(
        f"tasks in both files: {tk['in_both']}  improved [green]{tk['improved']}[/]  regressed [red]{tk['regressed']}[/]"
        f"  unchanged {tk['unchanged']}"
        + (f"  only before {tk['only_before']}" if tk["only_before"] else "")
        + (f"  only after {tk['only_after']}" if tk["only_after"] else "")
    )
    if cmp["top_changes"]:
        c = Table(title="largest per-task changes", title_justify="left")
        c.add_column("task", overflow="fold")
        c.add_column("pass rate before", justify="right")
        c.add_column("after", justify="right")
        c.add_column("mean reward before", justify="right")
        c.add_column("after", justify="right")
        for ch in cmp["top_changes"]:
            c.add_row(
                ch["task"], _fmt(ch["pass_rate_before"], 3), _fmt(ch["pass_rate_after"], 3),
                _fmt(ch["mean_reward_before"], 3), _fmt(ch["mean_reward_after"], 3),
            )
        console.print(c)


def _compute_stats_cli(path: Path, threshold: float, group_by: str, show_progress: bool) -> Any:
    """Run `compute_stats` with a transient progress bar on stderr (a terminal only)."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

    from gymverl.stats import compute_stats

    size = path.stat().st_size if path.suffix != ".gz" else None
    if not show_progress or not err_console.is_terminal:
        return compute_stats(path, threshold=threshold, group_by=group_by)
    with Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), DownloadColumn(), TimeRemainingColumn(),
        console=err_console, transient=True,
    ) as progress:
        task = progress.add_task(f"reading {path.name}", total=size)
        done = 0

        def on_line(c: Any) -> None:
            nonlocal done
            done += len(c.raw) + 1
            if c.line % 2000 == 0:
                progress.update(task, completed=done)

        return compute_stats(path, threshold=threshold, group_by=group_by, on_line=on_line)


@app.command()
def stats(
    rollouts: Annotated[Path, typer.Argument(help="Rollout JSONL (.jsonl or .jsonl.gz), e.g. from `gymverl collect` or `rescore`.")],
    threshold: Annotated[
        float,
        typer.Option(
            "--threshold",
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
    as_json: Annotated[bool, typer.Option("--json", help="Print the statistics as JSON (for scripts).")] = False,
    per_task: Annotated[
        bool, typer.Option("--per-task", help="Include every task in --json output (default: only when there are at most 1000).")
    ] = False,
    show_tasks: Annotated[int, typer.Option("--show-tasks", help="Print the per-task table when there are at most this many tasks.")] = 30,
) -> None:
    """Reward statistics: pass rate and pass@k per task, reward and length distributions, truncations.

    pass@k is the unbiased estimator 1 - C(n-c, k)/C(n, k) per task (n rollouts, c correct),
    averaged over the tasks with at least k rollouts. Exit code 0 ok, 1 some lines rejected
    (they are listed and not counted) or the file is empty, 2 usage error.
    """
    import math

    if not math.isfinite(threshold):
        fail("--threshold must be a finite number.")
    if plot is not None and plot.suffix.lower() != ".png":
        fail(f"--plot writes a PNG file; give a path ending in .png, not {plot}.")
    path = existing_file(rollouts)
    other = existing_file(against) if against is not None else None
    try:
        result = _compute_stats_cli(path, threshold, group_by, not as_json)
        before = _compute_stats_cli(other, threshold, group_by, not as_json) if other is not None else None
    except InputError as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"{exc.filename or path}: {exc.strerror or exc}.")
    from gymverl.stats import compare_stats, plot_stats

    comparison = compare_stats(before, result) if before is not None else None
    if plot is not None:
        try:
            plot_stats(result, plot, against=before)
        except ImportError:
            fail("--plot needs matplotlib: pip install 'gymverl[plot]'.")
        except OSError as exc:
            fail(f"{plot}: cannot write the plot ({exc.strerror or exc}).")
    data = result.to_dict(per_task=per_task or len(result.tasks) <= 1000)
    if as_json:
        out: dict[str, Any] = data
        if before is not None:
            out = {"after": data, "before": before.to_dict(per_task=per_task or len(before.tasks) <= 1000), "comparison": comparison}
        if plot is not None:
            out["plot"] = str(plot)
        print_json(out)
    else:
        render_stats(data, show_tasks)
        if comparison is not None:
            render_comparison(comparison)
        if plot is not None:
            console.print(f"plot written to [bold]{plot}[/]")
    for s in (result, before):
        if s is not None and s.lines == 0:
            err_console.print(f"[bold red]error:[/] {s.path}: file is empty (no rollouts).")
    if result.rejected or result.lines == 0 or (before is not None and (before.rejected or before.lines == 0)):
        raise typer.Exit(EXIT_REJECTED)


if __name__ == "__main__":  # pragma: no cover
    app()
