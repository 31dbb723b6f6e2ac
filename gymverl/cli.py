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


if __name__ == "__main__":  # pragma: no cover
    app()
