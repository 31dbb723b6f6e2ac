"""The `gymverl` command line: a thin Typer app over the library; rendering with rich.

Exit codes (all commands): 0 success, 1 the job ran but some input was rejected or failed,
2 usage error (bad option, missing file, ...), 130 interrupted.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import click
import typer
from typer.core import TyperCommand, TyperGroup

try:  # typer >= 0.2x carries its own copy of click; its exceptions are not click's
    from typer._click import exceptions as _typer_click_exc
except ImportError:  # pragma: no cover - older typer uses click itself
    _typer_click_exc = click.exceptions

# Exceptions that already mean "exit with this code and this usage message": let click handle them.
_CLICK_PASS_THROUGH = (
    typer.Exit, typer.Abort, click.exceptions.ClickException, click.exceptions.Abort, click.exceptions.Exit,
    _typer_click_exc.ClickException,
)
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from gymverl import __version__
from gymverl.errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_REJECTED, EXIT_USAGE, GymverlError, Interrupted, UsageError, from_os_error
from gymverl.files import check_outputs, output_lock
from gymverl.inputs import Input, open_input
from gymverl.jsonl import DEFAULT_MAX_LINE_BYTES, check_input_path
from gymverl.limits import DEFAULT_CONCURRENCY, DEFAULT_HEAD_URL, DEFAULT_RETRIES, DEFAULT_TIMEOUT, MAX_CONCURRENCY, MAX_RETRIES
from gymverl.train import TrainOptions
from gymverl.proc import signals_as_interrupt

class _PipelineOrder(TyperGroup):
    """List commands in pipeline order in `--help`; turn every error into one sentence and an exit code.

    This is the one place where exceptions become exit codes (`gymverl.errors`): a `GymverlError`
    prints its sentence, an `OSError` that escaped a command becomes one (disk full: exit 1), Ctrl-C
    exits 130, and anything unexpected prints one line instead of a traceback
    (`GYMVERL_DEBUG=1` shows the traceback).
    """

    ORDER = ("collect", "validate", "rescore", "stats", "to-parquet", "preview", "train-offline", "train-online", "demo")

    def get_params(self, ctx: Any) -> list[Any]:
        return _flags_without_values(super().get_params(ctx))

    def list_commands(self, ctx: Any) -> list[str]:
        names = super().list_commands(ctx)
        return sorted(names, key=lambda n: self.ORDER.index(n) if n in self.ORDER else len(self.ORDER))

    def invoke(self, ctx: Any) -> Any:
        try:
            # SIGTERM / SIGHUP stop every command the way Ctrl-C does (same cleanup, exit 130).
            with signals_as_interrupt():
                return super().invoke(ctx)
        except _CLICK_PASS_THROUGH:
            raise
        except GymverlError as exc:
            _fail_now(str(exc), exc.exit_code)
        except OSError as exc:
            err = from_os_error(exc)
            _fail_now(str(err), err.exit_code)
        except KeyboardInterrupt:
            _fail_now("interrupted.", EXIT_INTERRUPTED)
        except Exception as exc:  # noqa: BLE001 - the last line of defence: never a traceback
            if os.environ.get("GYMVERL_DEBUG"):
                raise
            _fail_now(f"internal error ({type(exc).__name__}: {exc}); set GYMVERL_DEBUG=1 for the traceback.", EXIT_FAILED)


# Old option spellings that still parse (scripts keep working) but are not shown in --help: each
# concept has one spelling across commands (`--output`/`-o` for every output file or directory).
OPTION_ALIASES = {"--out": "--output"}


def _flags_without_values(params: list[Any]) -> list[Any]:
    """Show on/off flags in --help as bare switches (`--json`), not with a `<bool>` value they do not take."""
    for param in params:
        if getattr(param, "is_bool_flag", False) and param.metavar is None:
            param.metavar = ""
    return params


class _Command(TyperCommand):
    """A gymverl command: also accepts the old spellings of OPTION_ALIASES, without listing them."""

    def get_params(self, ctx: Any) -> list[Any]:
        return _flags_without_values(super().get_params(ctx))

    def make_parser(self, ctx: Any) -> Any:
        parser = super().make_parser(ctx)
        for old, new in OPTION_ALIASES.items():
            # click's OptionParser keeps one table of long names; the old name points at the new option.
            if new in parser._long_opt and old not in parser._long_opt:
                parser._long_opt[old] = parser._long_opt[new]
        return parser


app = typer.Typer(
    cls=_PipelineOrder,
    name="gymverl",
    help=(
        "Turn NeMo Gym rollouts into VeRL training data and training runs.\n\n"
        "Exit codes: 0 success; 1 some input rejected or failed; 2 usage error; 130 interrupted."
    ),
    no_args_is_help=True,
    add_completion=True,  # --install-completion / --show-completion (bash, zsh, fish, PowerShell)
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)


def fail(message: str, code: int = EXIT_USAGE) -> None:
    """Print one clear sentence (rich markup allowed) to stderr and exit with `code`."""
    # soft_wrap: a long path must not break the sentence over lines (scripts grep for it).
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _fail_now(message: str, code: int) -> None:
    """`fail` for plain text (library messages hold paths and brackets, never markup)."""
    fail(escape(message), code)


class Bounds:
    """The values a numeric option accepts; `number()` makes the option's typer callback from it.

    Every int and float option of every command uses one (`number(...)`): NaN and infinities are
    refused (click's FLOAT accepts "nan" and "inf", and its min/max let NaN through, since every
    comparison with NaN is false), and so is anything outside the range, with one sentence naming
    the option (`UsageError`, exit 2, printed by `_PipelineOrder.invoke` like every other error).
    `tests/test_options.py` finds every numeric option of the app and checks that it has one.
    """

    def __init__(
        self, min: float | None = None, max: float | None = None, *, above: float | None = None,
        also: tuple[float, ...] = (), unit: str = "",
    ) -> None:
        self.min, self.max, self.above, self.also, self.unit = min, max, above, also, unit

    def accepts(self, value: float) -> bool:
        """True when `value` is allowed."""
        if isinstance(value, float) and not math.isfinite(value):
            return False
        if value in self.also:
            return True
        if self.min is not None and value < self.min:
            return False
        if self.above is not None and value <= self.above:
            return False
        return self.max is None or value <= self.max

    def describe(self) -> str:
        """The allowed range in words, e.g. 'at least 1', 'between 0 and 1', 'above 0 seconds'."""
        parts = []
        if self.min is not None and self.max is not None:
            parts.append(f"between {self.min:g} and {self.max:g}")
        else:
            if self.min is not None:
                parts.append(f"at least {self.min:g}")
            if self.above is not None:
                parts.append(f"above {self.above:g}")
            if self.max is not None:
                parts.append(f"at most {self.max:g}")
        text = " and ".join(parts) or "a finite number"
        if self.unit and parts:
            text += f" {self.unit}"
        if self.also:
            text += " (or " + ", ".join(f"{v:g}" for v in self.also) + ")"
        return text

    def check(self, ctx: Any, param: Any, value: Any) -> Any:
        """Return `value`, or raise UsageError naming the option when it is not accepted."""
        if value is None or ctx.resilient_parsing:
            return value
        if not self.accepts(value):
            name = max(param.opts, key=len) if param.opts else str(param.name)
            shown = f"{value:g}" if isinstance(value, float) else str(value)
            if isinstance(value, float) and not math.isfinite(value):
                rng = self.describe()
                rng = "" if rng == "a finite number" else f" ({rng})"
                raise UsageError(f"{name} must be a finite number{rng}, not {shown}.")
            raise UsageError(f"{name} must be {self.describe()}, not {shown}.")
        return value


def number(min: float | None = None, max: float | None = None, *, above: float | None = None, also: tuple[float, ...] = (), unit: str = "") -> Any:
    """The callback of a numeric option: finite, `min <= value <= max`, `value > above`, or one of `also`."""
    bounds = Bounds(min, max, above=above, also=also, unit=unit)

    # typer reads the callback's signature (type hints): it has to be a plain function.
    def check(ctx: typer.Context, param: typer.CallbackParam, value: Any) -> Any:
        return bounds.check(ctx, param, value)

    check.bounds = bounds  # type: ignore[attr-defined]
    return check  # type: ignore[return-value]


def option_bounds(param: Any) -> Bounds | None:
    """The `Bounds` behind a click parameter built by typer (which wraps the callback), or None."""
    import inspect

    cb = getattr(param, "callback", None)
    if cb is None:
        return None
    if not isinstance(getattr(cb, "bounds", None), Bounds):
        try:
            cb = inspect.getclosurevars(cb).nonlocals.get("callback")
        except TypeError:
            return None
    found = getattr(cb, "bounds", None)
    return found if isinstance(found, Bounds) else None


def input_arg(stack: contextlib.ExitStack, path: Path, *, passes: int = 1, tmp_dir: Optional[Path] = None) -> Input:
    """Open an input argument (path, `-`, pipe, .gz) for the rest of the command; closed with `stack`
    (which removes a pipe's spooled copy). Nothing may `fail()` between this and the `try` whose
    `finally` closes `stack`.

    Errors (missing, directory, Parquet/binary, ...) raise InputError, printed as one sentence."""
    try:
        return stack.enter_context(open_input(path, passes=passes, tmp_dir=tmp_dir))
    except BaseException:
        stack.close()
        raise


def _user_path(inp: Input | None) -> Path | None:
    """The user's file behind an opened input, for output-vs-input checks (a pipe has none)."""
    return None if inp is None or inp.spooled else inp.path


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
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="Print no tables or progress; errors (stderr) and --json output still appear.")
    ] = False,
) -> None:
    """Turn NeMo Gym rollouts into VeRL training data and training runs."""
    # Every command renders through these consoles; the exit code and errors carry the outcome.
    console.quiet = quiet


# ---- validate ----------------------------------------------------------------------------------


def render_rejections(
    examples: list[dict[str, Any]], total: int, by_reason: dict[str, int], *, title: str = "rejected lines", out: Console | None = None
) -> None:
    """Render rejected input lines (line number + reason), how many more there are, and counts by reason."""
    out = out or console
    r = Table(title=title, title_justify="left")
    r.add_column("line", justify="right")
    r.add_column("reason")
    for rej in examples:
        r.add_row(str(rej["line"]), rej["reason"])
    if total > len(examples):
        r.add_row("…", f"{total - len(examples)} more (see --rejects)")
    out.print(r)
    if by_reason:
        out.print("[red]rejected by reason[/]: " + ", ".join(f"{k}: {v}" for k, v in by_reason.items()))


def render_validation(summary: dict[str, Any], title: str = "validate") -> None:
    """Render a validation summary (from `ValidationSummary.to_dict`) as rich tables."""
    t = Table(title=f"{title}: {summary['path']}", show_header=False, title_justify="left")
    t.add_column(style="bold")
    t.add_column(justify="right")
    t.add_row("lines", str(summary["lines"]))
    t.add_row("valid", f"[green]{summary['valid']}[/]")
    t.add_row("rejected", f"[red]{summary['rejected']}[/]" if summary["rejected"] else "0")
    if summary.get("blank"):
        t.add_row("blank lines (skipped)", str(summary["blank"]))
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
    for key, label in (
        ("malformed_tool_calls", "malformed tool calls (arguments not a JSON object)"),
        ("empty_answers", "no final answer (empty or reasoning only)"),
        ("no_prompt", "no prompt (starts with a model turn)"),
    ):
        found = summary.get(key) or {}
        if found.get("rollouts"):
            lines = ", ".join(map(str, found["lines"])) + (", ..." if found["rollouts"] > len(found["lines"]) else "")
            t.add_row(label, f"[yellow]{found['rollouts']}[/] (lines {lines})")
    if summary.get("transitions"):
        t.add_row("aviary transition lists (last step read)", str(summary["transitions"]))
    agents = summary.get("agents") or {}
    if len(agents) > 1 or (agents and "(unnamed)" not in agents):
        t.add_row("agents", ", ".join(f"{k} ({v})" for k, v in agents.items()))
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
        render_rejections(summary["rejections"], summary["rejected"], summary["rejected_by_reason"])


@app.command(cls=_Command)
def validate(
    rollouts: Annotated[Path, typer.Argument(help="Rollout JSONL written by NeMo Gym (.jsonl or .jsonl.gz).")],
    rejects: Annotated[
        Optional[Path], typer.Option("--rejects", help="Write every rejected line as {line, code, reason, raw} JSONL here.")
    ] = None,
    input_kind: Annotated[
        str, typer.Option("--input-kind", help="rollouts, or tasks to check a NeMo Gym tasks (input) file.")
    ] = "rollouts",
    tasks: Annotated[bool, typer.Option("--tasks", hidden=True, help="Old spelling of --input-kind tasks.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON (for scripts).")] = False,
    max_line_mb: Annotated[float, typer.Option("--max-line-mb", callback=number(above=0, max=100_000, unit='MB'), help="Reject lines longer than this (MB).")] = DEFAULT_MAX_LINE_BYTES / 1e6,
) -> None:
    """Check a rollout JSONL file line by line and print a summary.

    Exit code 0 when every line is a valid rollout, 1 when some lines are rejected, 2 on usage errors.
    """
    from gymverl.records import validate_file

    if input_kind not in ("rollouts", "tasks"):
        fail(f"--input-kind must be rollouts or tasks, not {escape(repr(input_kind))}.")
    with contextlib.ExitStack() as stack:
        path = input_arg(stack, rollouts)
        # The rejects file is never the input (nor a link to it), and one run at a time writes it.
        check_outputs([rejects], [_user_path(path)])
        with output_lock(rejects):
            summary = validate_file(path, rejects=rejects, tasks=tasks or input_kind == "tasks", max_line_bytes=int(max_line_mb * 1e6))
    empty = summary.valid + summary.rejected == 0  # blank lines alone are no rollouts either
    data = summary.to_dict()
    if empty:
        data["error"] = "file is empty"
    # NeMo Gym >= 0.5 side files: which of the rollouts asked for failed or are missing, per task.
    from gymverl.sidecars import collection_report

    collection = None if tasks else collection_report(str(path))
    data["collection"] = collection.to_dict() if collection is not None else None
    warning = collection.warning() if collection is not None else None
    if warning:
        data["warnings"] = [warning]
    if as_json:
        print_json(data)
    else:
        render_validation(data)
        render_collection(data["collection"])
        if warning:
            err_console.print(f"[bold yellow]warning:[/] {escape(warning)}", highlight=False, soft_wrap=True)
        if empty:
            err_console.print(f"[bold red]error:[/] {escape(str(path))}: file is empty (no rollouts).", soft_wrap=True)
        if rejects and summary.rejected:
            console.print(f"rejected lines written to [bold]{rejects}[/]")
    if summary.rejected or empty:
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
        rows.append(("masked (left out)", f"[yellow]{d['masked']}[/]"))
    if d.get("malformed_tool_calls"):
        rows.append(("malformed tool calls", f"[yellow]{d['malformed_tool_calls']}[/]"))
    if d.get("empty_answers"):
        rows.append(("no final answer", f"[yellow]{d['empty_answers']}[/]"))
    if d.get("tasks_fully_masked"):
        rows.append(("tasks fully masked", _fmt(d["tasks_fully_masked"])))
    unit = "tokens" if ln["unit"] == "output_tokens" else "chars"
    if ln["count"]:
        rows += [
            (f"{unit} mean / median", f"{_fmt(ln['mean'], 1)} / {_fmt(ln['median'], 1)}"),
            (f"{unit} p90 / max", f"{_fmt(ln['p90'], 1)} / {_fmt(ln['max'], 1)}"),
            (f"{unit} ok / not ok", f"{_fmt(ln['mean_correct'], 1)} / {_fmt(ln['mean_incorrect'], 1)}"),
        ]
    return rows


def render_stats(data: dict[str, Any], show_tasks: int = 30, compact: bool = False) -> None:
    """Render `RolloutStats.to_dict()` as rich tables (`compact`: the summary and per-task tables only)."""
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
    if data.get("blank"):
        console.print(f"[dim]{data['blank']} blank lines skipped (not rollouts, not rejected)[/]")
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
        masked = any(r.get("masked") for r in per_task)
        if masked:
            pt.add_column("masked", justify="right")
        for r in per_task:
            bar = "█" * round(10 * (r["pass_rate"] or 0))
            cells = [
                r["task"], str(r["n"]), str(r["correct"]), _fmt(r["pass_rate"], 3), f"[green]{bar}[/]",
                _fmt(r["mean_reward"], 3), str(r["incomplete"]) if r["incomplete"] else "",
            ]
            if masked:
                cells.append(str(r["masked"]) if r["masked"] else "")
            pt.add_row(*cells)
        console.print(pt)
    if compact:
        return
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


def render_collection(col: dict[str, Any] | None, show_tasks: int = 30, out: Console | None = None) -> None:
    """Render `sidecars.CollectionReport.to_dict()`: expected vs present vs failed rollouts per task."""
    if not col:
        return
    out = out or console
    t = Table(title="collection (NeMo Gym side files)", title_justify="left", show_header=False)
    t.add_column(style="bold")
    t.add_column(justify="right")
    t.add_column(style="dim")
    if col["expected"] is not None:
        t.add_row("expected rollouts", str(col["expected"]), f"{col['tasks_expected']} tasks, from {col['materialized_inputs']}")
    t.add_row("present", str(col["present"]), "in the rollouts file")
    f = col.get("failures")
    if f:
        note = f"from {f['path']}" + (f"; {f['superseded_rollouts']} earlier failures were retried successfully" if f["superseded_rollouts"] else "")
        t.add_row("failed", f"[red]{col['failed']}[/]" if col["failed"] else "0", note)
    if col["expected"] is not None:
        t.add_row("missing", f"[red]{col['missing']}[/]" if col["missing"] else "0", "neither present nor failed")
        t.add_row("tasks without rollouts", f"[red]{col['tasks_without_rollouts']}[/]" if col["tasks_without_rollouts"] else "0", "")
    if col["extra"]:
        t.add_row("not in materialized inputs", f"[yellow]{col['extra']}[/]", "")
    out.print(t)
    rows = col.get("incomplete_tasks") or []
    if rows and len(rows) <= show_tasks:
        pt = Table(title=f"incomplete tasks ({col['tasks_incomplete']})", title_justify="left")
        for name in ("task index", "expected", "present", "failed", "missing"):
            pt.add_column(name, justify="right")
        for r in rows:
            pt.add_row(*(_fmt(r[k]) for k in ("task_index", "expected", "present", "failed", "missing")))
        out.print(pt)


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


def _progress(description: str, *columns: Any, console: Console, transient: bool = True) -> tuple[Any, Any]:
    """A rich progress bar (`description`, a bar, then `columns`) and the `gymverl.progress.OnProgress`
    callback that drives it: the one place library progress events become rich updates.

    Columns may show `{task.fields[rows]}` (lines handled), `{task.fields[rate]}` (lines per second
    in this run) and `{task.fields[failed]}` ("N failed", or empty).
    """
    import time as _time

    from rich.progress import BarColumn, Progress, TextColumn

    progress = Progress(TextColumn("{task.description}"), BarColumn(), *columns, console=console, transient=transient)
    task = progress.add_task(description, total=None, rows=0, rate="-", failed="")
    start: list[tuple[float, int]] = []

    def on_progress(ev: Any) -> None:
        fields: dict[str, Any] = {"failed": f"{ev.failed} failed" if ev.failed else ""}
        if ev.rows is not None:
            fields["rows"] = ev.rows
            now, new = _time.monotonic(), ev.rows if ev.new_rows is None else ev.new_rows
            if not start:
                start.append((now, new))
            t0, r0 = start[0]
            fields["rate"] = f"{(new - r0) / (now - t0) if now > t0 else 0.0:.0f}"
        progress.update(task, completed=ev.done, total=ev.total, **fields)

    return progress, on_progress


def _compute_stats_cli(path: Input, threshold: float, group_by: str, show_progress: bool, tasks: Optional[Path] = None) -> Any:
    """Run `compute_stats` with a transient progress bar on stderr (a terminal only)."""
    from rich.progress import DownloadColumn, TimeRemainingColumn

    from gymverl.stats import compute_stats

    if not show_progress or not err_console.is_terminal:
        return compute_stats(path, threshold=threshold, group_by=group_by, tasks_path=tasks)
    progress, on_progress = _progress(f"[bold]reading {escape(path.stem)}", DownloadColumn(), TimeRemainingColumn(), console=err_console)
    with progress:
        return compute_stats(path, threshold=threshold, group_by=group_by, on_progress=on_progress, tasks_path=tasks)


@app.command(cls=_Command)
def stats(
    rollouts: Annotated[Path, typer.Argument(help="Rollout JSONL (.jsonl or .jsonl.gz), e.g. from `gymverl collect` or `rescore`.")],
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
    as_json: Annotated[bool, typer.Option("--json", help="Print the statistics as JSON (for scripts).")] = False,
    per_task: Annotated[
        bool, typer.Option("--per-task", help="Include every task in --json output (default: only when there are at most 1000).")
    ] = False,
    show_tasks: Annotated[int, typer.Option("--show-tasks", callback=number(min=0), help="Print the per-task table when there are at most this many tasks.")] = 30,
    tasks: Annotated[
        Optional[Path],
        typer.Option("--tasks", help="Task rows for --group-by a task field the rollout lines lack (NeMo Gym >= 0.5 drops them): the original tasks file or <stem>_materialized_inputs.jsonl (used without this option when it is beside ROLLOUTS)."),
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
        check_outputs([plot], [_user_path(path), _user_path(other), tasks])
        result = _compute_stats_cli(path, threshold, group_by, not as_json, tasks)
        before = _compute_stats_cli(other, threshold, group_by, not as_json, tasks) if other is not None else None
    from gymverl.stats import compare_stats, plot_stats

    comparison = compare_stats(before, result) if before is not None else None
    if plot is not None:
        try:
            plot_stats(result, plot, against=before)
        except ImportError:
            fail("--plot needs matplotlib: pip install 'gymverl[plot]'.")
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
        render_collection(data.get("collection"), show_tasks)
        for w in data.get("warnings") or []:
            err_console.print(f"[bold yellow]warning:[/] {w}", highlight=False, soft_wrap=True)
        if comparison is not None:
            render_comparison(comparison)
        if plot is not None:
            console.print(f"plot written to [bold]{plot}[/]")
    def empty(s: Any) -> bool:  # blank lines alone are no rollouts either
        return s.lines - getattr(s, "blank", 0) == 0

    for s in (result, before):
        if s is not None and empty(s):
            err_console.print(f"[bold red]error:[/] {escape(str(s.path))}: file is empty (no rollouts).", soft_wrap=True)
    if result.rejected or empty(result) or (before is not None and (before.rejected or empty(before))):
        raise typer.Exit(EXIT_REJECTED)


# ---- train-offline -----------------------------------------------------------------------------


def _render_train_plan(plan: Any, out: Console) -> None:
    """The planned VeRL command and its data arithmetic."""
    t = Table(title="train-offline plan", show_header=False, title_justify="left")
    t.add_column(style="bold")
    t.add_column()
    o = plan.options
    t.add_row("device", f"{o.device} ({o.nnodes} node(s) x {o.nproc} process(es))")
    t.add_row("train rows", str(plan.train_rows))
    if plan.val_rows is not None:
        t.add_row("val rows", str(plan.val_rows))
    t.add_row("batch size", f"{plan.batch_size} global, micro {o.micro_batch_size} per process")
    t.add_row("steps", f"{plan.steps_per_epoch} per epoch x {o.epochs} epoch(s) = {plan.total_steps}")
    if o.lora_rank:
        t.add_row("LoRA", f"rank {o.lora_rank}, alpha {o.lora_alpha if o.lora_alpha is not None else 2 * o.lora_rank}, modules {o.lora_target_modules}")
    t.add_row("output", str(plan.out))
    for note in plan.notes:
        t.add_row("note", f"[yellow]{note}[/]")
    out.print(t)
    out.print("[bold]command[/]:")
    out.print(plan.shell(), highlight=False, soft_wrap=True)


def _render_train_result(result: Any, out: Console) -> None:
    """Summary of a finished run."""
    t = Table(title="train-offline", show_header=False, title_justify="left")
    t.add_column(style="bold")
    t.add_column()
    t.add_row("steps", str(result.steps))
    if result.first_loss is not None:
        t.add_row("loss", f"{result.first_loss:.4f} -> {result.last_loss:.4f}")
    if result.val_loss is not None:
        t.add_row("validation loss", f"{result.val_loss:.4f}")
    t.add_row("tokens", str(result.tokens))
    if result.tokens_per_second:
        t.add_row("tokens/s", f"{result.tokens_per_second:,.0f} (from step 2 on)")
    if result.peak_memory_gb:
        t.add_row("peak GPU memory", f"{result.peak_memory_gb:.2f} GB")
    t.add_row("wall time", f"{result.wall_seconds:.1f} s")
    if result.checkpoint:
        t.add_row("checkpoint", str(result.checkpoint))
    if result.hf_model:
        t.add_row("Hugging Face model", f"[green]{result.hf_model}[/]")
    t.add_row("log", str(result.log))
    out.print(t)


@app.command("train-offline", cls=_Command)
def train_offline_command(
    data: Annotated[
        Optional[Path], typer.Argument(help="SFT parquet from `gymverl to-parquet --format sft` (omit with --from-rollouts).", show_default=False)
    ] = None,
    overrides: Annotated[
        Optional[list[str]],
        typer.Argument(help="After `--`: VeRL key=value overrides, passed through unchanged (they win over gymverl's).", show_default=False),
    ] = None,
    model: Annotated[str, typer.Option("--model", "-m", help="Base model: a local Hugging Face model directory (or a Hub id).", show_default=False)] = "",
    out: Annotated[Optional[Path], typer.Option("--output", "-o", help="Output directory: checkpoints/, hf_model/, train.log, metrics.jsonl.", show_default=False)] = None,
    val: Annotated[Optional[Path], typer.Option("--val", help="Validation parquet (same format as DATA).")] = None,
    from_rollouts: Annotated[
        Optional[Path], typer.Option("--from-rollouts", help="Rollout JSONL: select the successful rollouts and convert them to SFT parquet first.")
    ] = None,
    min_reward: Annotated[float, typer.Option("--min-reward", callback=number(), help="With --from-rollouts: keep rollouts with reward >= this.")] = 1.0,
    best_of_n: Annotated[
        Optional[int], typer.Option("--best-of-n", callback=number(min=1), help="With --from-rollouts: keep at most the N best rollouts per task.", show_default=False)
    ] = None,
    val_fraction: Annotated[
        float, typer.Option("--val-fraction", callback=number(min=0, max=0.99), help="With --from-rollouts: share of tasks held out as validation data.")
    ] = 0.0,
    epochs: Annotated[int, typer.Option("--epochs", callback=number(min=1), help="Training epochs.")] = TrainOptions.epochs,
    lr: Annotated[float, typer.Option("--lr", callback=number(above=0), help="Learning rate.")] = TrainOptions.lr,
    batch_size: Annotated[
        Optional[int], typer.Option("--batch-size", callback=number(min=1), help="Global batch size (rows per optimizer step). Default: VeRL's 256, capped at the dataset size.", show_default=False)
    ] = None,
    micro_batch_size: Annotated[int, typer.Option("--micro-batch-size", callback=number(min=1), help="Rows per forward pass per process.")] = TrainOptions.micro_batch_size,
    max_length: Annotated[int, typer.Option("--max-length", callback=number(min=1, unit='tokens'), help="Maximum tokens per conversation.")] = TrainOptions.max_length,
    lora_rank: Annotated[int, typer.Option("--lora-rank", callback=number(min=0), help="LoRA rank; 0 trains all weights.")] = TrainOptions.lora_rank,
    lora_alpha: Annotated[Optional[int], typer.Option("--lora-alpha", callback=number(min=1), help="LoRA alpha (default 2 x rank).", show_default=False)] = None,
    lora_target_modules: Annotated[str, typer.Option("--lora-target-modules", help="LoRA target modules (VeRL's model.target_modules).")] = TrainOptions.lora_target_modules,
    nproc: Annotated[int, typer.Option("--nproc", callback=number(min=1), help="Processes (GPUs) per node.")] = TrainOptions.nproc,
    nnodes: Annotated[int, typer.Option("--nnodes", callback=number(min=1), help="Number of nodes (run the same command on each, with its --node-rank).")] = TrainOptions.nnodes,
    node_rank: Annotated[int, typer.Option("--node-rank", callback=number(min=0), help="This node's rank (multi-node).")] = TrainOptions.node_rank,
    master_addr: Annotated[Optional[str], typer.Option("--master-addr", help="Address of node 0 (multi-node).", show_default=False)] = None,
    master_port: Annotated[int, typer.Option("--master-port", callback=number(min=1, max=65535), help="Rendezvous port on node 0 (multi-node).")] = TrainOptions.master_port,
    device: Annotated[str, typer.Option("--device", help="cuda for real training; cpu for a smoke run with gymverl's CPU plugin (tiny models only).")] = TrainOptions.device,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the latest checkpoint in an existing OUTDIR.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Delete an existing gymverl OUTDIR and start over.")] = False,
    export: Annotated[bool, typer.Option("--export/--no-export", help="Export the last checkpoint to OUTDIR/hf_model with verl.model_merger.")] = True,
    save_freq: Annotated[int, typer.Option("--save-freq", callback=number(min=1, also=(-1,)), help="Checkpoint every N steps (-1: only at the end).")] = TrainOptions.save_freq,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Check the inputs, print the VeRL command and stop.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Echo every line VeRL prints.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the plan (with --dry-run) or the result as JSON.")] = False,
) -> None:
    """Fine-tune a model on SFT parquet with VeRL's own trainer (verl.trainer.sft_trainer via torchrun).

    Example: gymverl train-offline sft.parquet -m ./Qwen2.5-0.5B -o runs/sft --epochs 2 -- optim.weight_decay=0.1

    Exit code 0 when training (and the export) finished, 1 when VeRL failed, 2 on usage errors.
    """
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from gymverl import train as tr

    overrides = list(overrides or [])
    if from_rollouts is not None and data is not None:
        if "=" not in str(data):
            fail("give either DATA or --from-rollouts, not both.")
        overrides.insert(0, str(data))  # with --from-rollouts the first pass-through word lands here
        data = None
    if not model:
        fail("--model is required (a local Hugging Face model directory).")
    if out is None:
        fail("--output/-o is required (the output directory).")
    if data is None and from_rollouts is None:
        fail("give an SFT parquet file (DATA) or --from-rollouts ROLLOUTS.jsonl.")
    view = err_console if as_json else console
    opts = tr.TrainOptions(
        train=data or Path("."), model=model, out=out, val=val, epochs=epochs, lr=lr, batch_size=batch_size,
        micro_batch_size=micro_batch_size, max_length=max_length, lora_rank=lora_rank, lora_alpha=lora_alpha,
        lora_target_modules=lora_target_modules, nproc=nproc, nnodes=nnodes, node_rank=node_rank,
        master_addr=master_addr, master_port=master_port, device=device, resume=resume, overwrite=overwrite,
        export=export, save_freq=save_freq, overrides=overrides,
    )
    prepared = None
    if from_rollouts is not None:
        with open_input(from_rollouts) as rollouts_in:
            plan, prepared = tr.plan_from_rollouts(
                opts, rollouts_in, dry_run=dry_run, min_reward=min_reward, best_of_n=best_of_n, val_fraction=val_fraction  # type: ignore[arg-type]
            )
    else:
        plan = tr.plan_training(opts, check_device=not dry_run)
    if prepared is not None and prepared.rejected:
        where = "" if dry_run else f" (see {out / 'data' / 'rejects.jsonl'})"
        err_console.print(f"[yellow]warning[/]: {prepared.rejected} of {prepared.lines} rollout lines rejected{where}.")
    if dry_run:
        if as_json:
            print_json({"argv": plan.argv, "env": plan.env, "train_rows": plan.train_rows, "val_rows": plan.val_rows,
                        "batch_size": plan.batch_size, "steps_per_epoch": plan.steps_per_epoch,
                        "total_steps": plan.total_steps, "notes": plan.notes})
        else:
            _render_train_plan(plan, view)
        raise typer.Exit(EXIT_REJECTED if prepared is not None and prepared.rejected else EXIT_OK)
    _render_train_plan(plan, view)

    progress = Progress(
        SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
        TextColumn("step {task.completed}/{task.total}"), TextColumn("{task.fields[loss]}"),
        TimeElapsedColumn(), console=view, transient=False,
    )

    def on_event(ev: Any) -> None:
        if ev.kind == "step":
            loss = ev.metrics.get("train/loss")
            progress.update(task, completed=ev.step, description="training",
                            loss=f"loss {loss:.4f}" if loss is not None else "")
        elif ev.kind == "val":
            progress.console.print(f"step {ev.step}: validation loss {ev.metrics['val/loss']:.4f}", highlight=False)
        elif ev.kind == "total":
            progress.update(task, total=ev.total)
        elif verbose:
            progress.console.print(ev.line, highlight=False, markup=False)

    try:
        with progress:
            task = progress.add_task("starting VeRL", total=plan.total_steps, loss="")
            result = tr.run_training(plan, on_event)
        if result.returncode != 0:
            # VeRL's own error line, not torchrun's summary box (which says nothing about the cause).
            cause = f": {result.cause}" if result.cause else ""
            _fail_now(f"VeRL exited with code {result.returncode}{cause}; full log: {result.log}.", EXIT_REJECTED)
        if export:
            if result.checkpoint is None:
                fail(f"VeRL finished but wrote no checkpoint under {plan.checkpoints}.", EXIT_REJECTED)
            with view.status("exporting the Hugging Face model (verl.model_merger)"):
                result.hf_model = tr.export_hf(result.checkpoint, plan.out / tr.HF_MODEL, log=result.log)
            tr.record_result(plan, result)
    except tr.TrainError as exc:
        fail(str(exc), EXIT_REJECTED)
    except KeyboardInterrupt:
        ckpt = tr.latest_checkpoint(plan.checkpoints)
        hint = f"continue from {ckpt.name} with --resume" if ckpt else "no checkpoint was saved yet (see --save-freq); start over with --overwrite"
        err_console.print(f"[yellow]interrupted[/]: VeRL stopped; {hint}.")
        raise typer.Exit(EXIT_INTERRUPTED)
    if as_json:
        print_json(result.to_dict())
    else:
        _render_train_result(result, view)
        if result.hf_model:
            view.print(f"Hugging Face model: [bold green]{result.hf_model}[/]")
    if prepared is not None and prepared.rejected:
        # Trained, but some input lines never made it: scripts should notice.
        raise typer.Exit(EXIT_REJECTED)


# ---- train-online ------------------------------------------------------------------------------


@app.command("train-online", cls=_Command)
def train_online_command(
    data: Annotated[Path, typer.Argument(help="RL parquet from `gymverl to-parquet --format rl --agent-loop env`.", show_default=False)],
    overrides: Annotated[
        Optional[list[str]],
        typer.Argument(help="After `--`: VeRL key=value overrides, passed through unchanged (they win over gymverl's).", show_default=False),
    ] = None,
    model: Annotated[str, typer.Option("--model", "-m", help="Base model: a local Hugging Face model directory (or a Hub id).", show_default=False)] = "",
    out: Annotated[Optional[Path], typer.Option("--output", "-o", help="Output directory: checkpoints/, train.log, metrics.jsonl, ng_run.log, the agent-loop YAML.", show_default=False)] = None,
    server: Annotated[
        Optional[list[str]], typer.Option("--server", help="A running NeMo Gym resources server, NAME=URL (repeat per environment); its rows use it instead of starting one.", show_default=False)
    ] = None,
    servers: Annotated[
        Optional[list[str]],
        typer.Option("--servers", help="Start these NeMo Gym resources servers on 127.0.0.1 for the run (repeatable or comma-separated). Default: the ones the rows' agents need that no --server gives.", show_default=False),
    ] = None,
    nemo_gym_env: Annotated[
        Optional[Path], typer.Option("--nemo-gym-env", help="NeMo Gym venv the servers start from (default: $GYMVERL_NEMO_GYM_ENV, else ./.nemo-gym-venv).", show_default=False)
    ] = None,
    val: Annotated[Optional[Path], typer.Option("--val", help="Validation RL parquet (default: DATA).")] = None,
    nproc: Annotated[int, typer.Option("--nproc", callback=number(min=1), help="GPUs per node.")] = 1,
    rollout: Annotated[str, typer.Option("--rollout", help="Rollout engine: vllm or sglang.")] = "vllm",
    algorithm: Annotated[str, typer.Option("--algorithm", help="RL algorithm (grpo).")] = "grpo",
    n_samples: Annotated[int, typer.Option("--n-samples", callback=number(min=1), help="Episodes per task per step (GRPO group size).")] = 4,
    max_turns: Annotated[int, typer.Option("--max-turns", callback=number(min=1), help="Model turns per episode.")] = 8,
    on_failure: Annotated[str, typer.Option("--on-failure", help="A failed episode: raise (stop the step) or mask (exclude the sample).")] = "raise",
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the latest checkpoint in an existing OUTDIR.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Delete an existing gymverl OUTDIR and start over.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Check the inputs, write the agent-loop YAML, print the VeRL command and the servers it would start, and stop (starts nothing).")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Echo every line VeRL prints.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the plan (with --dry-run) or the result as JSON.")] = False,
) -> None:
    """Online RL on NeMo Gym environments: VeRL's main_ppo with gymverl's `gymverl_env` agent loop.

    Starts the resources servers the rows need on 127.0.0.1 (or uses --server NAME=URL), runs VeRL
    (progress, OUTDIR/train.log) and stops the servers after, also on failure and Ctrl-C.

    Example: gymverl train-online rl.parquet -m ./Qwen2.5-0.5B -o runs/grpo --servers example_multi_step

    Exit code 0 when training finished, 1 when VeRL or a server failed, 2 on usage errors (checked before anything starts), 130 interrupted.
    """
    from gymverl import online

    if not model:
        raise UsageError("give the base model with --model PATH.")
    if out is None:
        raise UsageError("give the output directory with -o OUTDIR.")
    opts = online.OnlineOptions(
        data, model, out, list(server or []), val=val, nproc=nproc, rollout=rollout, algorithm=algorithm, n_samples=n_samples,
        max_turns=max_turns, on_failure=on_failure, overrides=list(overrides or []), start=list(servers or []),
        nemo_gym_env=nemo_gym_env, resume=resume, overwrite=overwrite,
    )
    plan = online.plan_online(opts, dry_run=dry_run)
    view = err_console if as_json else console
    if dry_run:
        if as_json:
            print_json({"argv": plan.argv, "start_servers": plan.start, "rows": plan.rows, "notes": plan.notes})
        else:
            _render_online_plan(plan, view)
        return
    _render_online_plan(plan, view)
    progress, on_event, on_servers = _online_progress(view, verbose)
    try:
        with progress:
            result = online.run_online(plan, on_event, on_servers)
    except KeyboardInterrupt:
        err_console.print(f"[yellow]interrupted[/]: VeRL and the NeMo Gym servers stopped; {_resume_hint(plan.checkpoints)}.", highlight=False)
        raise typer.Exit(EXIT_INTERRUPTED)
    if result.returncode != 0:
        cause = f": {result.cause}" if result.cause else ""
        _fail_now(f"VeRL exited with code {result.returncode}{cause}; full log: {result.log}.", EXIT_FAILED)
    if as_json:
        print_json({**result.to_dict(), "servers": plan.servers})
    else:
        _render_online_result(result, view)


def _resume_hint(checkpoints: Path) -> str:
    from gymverl.train import latest_checkpoint

    ckpt = latest_checkpoint(checkpoints)
    return f"continue from {ckpt.name} with --resume" if ckpt else "no checkpoint was saved yet; start over with --overwrite"


def _render_online_plan(plan: Any, out: Console) -> None:
    """train-online's plan: rows, servers (started or given), notes, the main_ppo command."""
    import shlex

    o = plan.options
    t = Table(title="train-online plan", show_header=False, title_justify="left")
    t.add_column(style="bold")
    t.add_column()
    t.add_row("rollout", f"{o.rollout} on {o.nproc} GPU(s), {o.algorithm}, {o.n_samples} episodes per task")
    t.add_row("rows", str(plan.rows))
    if plan.start:
        t.add_row("servers to start", escape(", ".join(plan.start)) + " (NeMo Gym, 127.0.0.1; stopped after the run)")
    for spec in o.servers:
        t.add_row("server", escape(spec))
    t.add_row("output", escape(str(plan.out)))
    for note in plan.notes:
        t.add_row("note", f"[yellow]{escape(note)}[/]")
    out.print(t)
    out.print("[bold]command[/]:")
    out.print(escape(shlex.join(plan.argv)), highlight=False, soft_wrap=True)


def _online_progress(view: Console, verbose: bool) -> tuple[Any, Any, Any]:
    """train-offline's progress view for main_ppo's steps (mean reward instead of loss), and the server stages."""
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    progress = Progress(
        SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
        TextColumn("step {task.completed}/{task.total}"), TextColumn("{task.fields[reward]}"),
        TimeElapsedColumn(), console=view, transient=False,
    )
    task = progress.add_task("starting VeRL", total=None, reward="")

    def on_servers(stage: str, urls: dict[str, str]) -> None:
        if stage == "starting":
            progress.update(task, description="starting NeMo Gym servers")
        else:
            progress.console.print(escape("NeMo Gym servers: " + ", ".join(f"{k} {v}" for k, v in urls.items())), highlight=False)
            progress.update(task, description="starting VeRL")

    def on_event(ev: Any) -> None:
        if ev.kind == "step":
            reward = ev.metrics.get("critic/score/mean")
            progress.update(task, completed=ev.step, description="training", reward=f"reward {reward:.3f}" if reward is not None else "")
        elif ev.kind == "val":
            progress.console.print(escape(f"step {ev.step}: validation " + ", ".join(f"{k} {v:.3f}" for k, v in ev.metrics.items() if k.startswith("val-core/"))), highlight=False)
        elif ev.kind == "total":
            progress.update(task, total=ev.total)
        elif verbose:
            progress.console.print(ev.line, highlight=False, markup=False)

    return progress, on_event, on_servers


def _render_online_result(result: Any, out: Console) -> None:
    """Summary of a finished train-online run."""
    t = Table(title="train-online", show_header=False, title_justify="left")
    t.add_column(style="bold")
    t.add_column()
    t.add_row("steps", str(result.steps))
    if result.rewards:
        t.add_row("mean reward", f"{result.rewards[0]:.3f} -> {result.rewards[-1]:.3f}")
    t.add_row("tokens", str(result.tokens))
    if result.tokens_per_second:
        t.add_row("tokens/s", f"{result.tokens_per_second:,.0f} (from step 2 on)")
    t.add_row("wall time", f"{result.wall_seconds:.1f} s")
    if result.checkpoint:
        t.add_row("checkpoint", escape(str(result.checkpoint)))
    t.add_row("log", escape(str(result.log)))
    out.print(t)


# ---- collect -----------------------------------------------------------------------------------


@app.command(
    cls=_Command,
    context_settings={"allow_extra_args": True},
    epilog=(
        "Anything after `--` goes to NeMo Gym's collector unchanged, e.g. "
        "`-- +responses_create_params.temperature=0.7`.\n\n"
        "Examples:\n\n"
        "gymverl collect -i tasks.jsonl -o rollouts.jsonl -n 4   (servers already started with ng_run)\n\n"
        "gymverl collect -i tasks.jsonl -o rollouts.jsonl -n 4 --servers math_with_judge "
        "--policy-url http://127.0.0.1:8000/v1 --policy-model my-model"
    ),
)
def collect(
    ctx: typer.Context,
    input: Annotated[Path, typer.Option("--input", "-i", help="NeMo Gym tasks JSONL (one task per line, with `agent_ref`).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Rollouts JSONL to write (NeMo Gym writes it as it goes).")],
    agent: Annotated[Optional[str], typer.Option("--agent", "-a", help="Agent for tasks without `agent_ref`.")] = None,
    num_samples: Annotated[int, typer.Option("--num-samples", "-n", callback=number(min=1), help="Rollouts per task (NeMo Gym's repeat option).")] = 1,
    limit: Annotated[Optional[int], typer.Option("--limit", callback=number(min=1), help="Only the first K tasks.")] = None,
    concurrency: Annotated[Optional[int], typer.Option("--concurrency", "-c", callback=number(min=1, max=100_000), help="Rollouts in flight at once (default: NeMo Gym's, unlimited).")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing output (and its NeMo Gym sidecar files).")] = False,
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted collection into the same output.")] = False,
    head_url: Annotated[
        str, typer.Option("--head-url", envvar="GYMVERL_HEAD_URL", help="NeMo Gym head server of running servers (ng_run).")
    ] = DEFAULT_HEAD_URL,
    servers: Annotated[
        Optional[list[str]],
        typer.Option(
            "--servers",
            help="Start these NeMo Gym configs with ng_run for the duration (repeatable or comma-separated; "
            "a bare name like `math_with_judge` means that resources server's shipped config).",
        ),
    ] = None,
    policy_url: Annotated[Optional[str], typer.Option("--policy-url", help="With --servers: the model's OpenAI-compatible base URL (…/v1).")] = None,
    policy_model: Annotated[str, typer.Option("--policy-model", help="With --servers: the model name to request.")] = "policy",
    policy_api_key: Annotated[
        str, typer.Option("--policy-api-key", envvar="GYMVERL_POLICY_API_KEY", help="With --servers: the model server's API key.")
    ] = "dummy",
    model_type: Annotated[
        str,
        typer.Option("--model-type", help="With --servers and --policy-url: NeMo Gym model server (openai_model = Responses API, vllm_model = Chat Completions)."),
    ] = "openai_model",
    nemo_gym_env: Annotated[
        Optional[Path], typer.Option("--nemo-gym-env", help="NeMo Gym venv (default: $GYMVERL_NEMO_GYM_ENV, else ./.nemo-gym-venv).")
    ] = None,
    log: Annotated[Optional[Path], typer.Option("--log", help="Collector's own output (default: <output stem>_collect.log).")] = None,
    rejects: Annotated[Optional[Path], typer.Option("--rejects", help="Write output lines that fail validation here.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON (for scripts).")] = False,
) -> None:
    """Collect rollouts with NeMo Gym's own collector, n per task, then validate the output.

    Checks first that every task line is valid, that the NeMo Gym servers and agents answer, and that
    no existing output is overwritten by accident. Exit code 0 when every expected rollout was written
    and is valid; 1 when the collector failed or rollouts are missing, failed or invalid (partial output
    is kept: continue with --resume); 2 on usage errors (bad option, missing file, servers not running);
    130 when interrupted.
    """
    import shlex

    from rich.progress import MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn


    from gymverl import collect as C

    out_console = err_console if as_json else console
    progress, on_progress = _progress(
        "[bold]collecting[/]", MofNCompleteColumn(), TextColumn("[red]{task.fields[failed]}[/]"), TimeElapsedColumn(),
        TimeRemainingColumn(), console=out_console, transient=False,
    )
    bar: dict[str, Any] = {}

    def stop_progress() -> None:
        if bar.pop("started", False):
            progress.stop()

    def on_stage(name: str, info: dict[str, Any]) -> None:
        if name == "tasks":
            agents = ", ".join(f"{a} ({n})" for a, n in info["agents"].items())
            out_console.print(escape(f"{info['tasks']} tasks × {num_samples} samples; agents: {agents}"), highlight=False)
        elif name == "servers":
            out_console.print(escape(f"starting NeMo Gym servers (ng_run): {', '.join(info['configs'])}"), highlight=False)
        elif name == "collect":
            out_console.print(f"[dim]$ {escape(shlex.join(info['argv']))}[/]", highlight=False)
            out_console.print(f"[dim]collector log: {escape(info['log'])}[/]", highlight=False)
            bar["started"] = True
            progress.start()
        elif name == "warning":
            err_console.print(f"[yellow]warning:[/] {escape(info['message'])}", highlight=False)
        elif name == "validate":
            stop_progress()

    try:
        result = C.collect(
            input,
            output,
            agent=agent,
            num_samples=num_samples,
            limit=limit,
            concurrency=concurrency,
            overwrite=overwrite,
            resume=resume,
            head_url=head_url,
            servers=servers or (),
            policy_url=policy_url,
            policy_model=policy_model,
            policy_api_key=policy_api_key,
            model_type=model_type,
            nemo_gym_env=nemo_gym_env,
            extra=list(ctx.args),
            log_path=log,
            rejects=rejects,
            on_progress=on_progress,
            on_stage=on_stage,
        )
    except C.CollectError as exc:
        stop_progress()
        if exc.details and not as_json:
            render_rejections(exc.details, len(exc.details), {}, title="rejected task lines", out=err_console)
        if as_json:
            print_json({"ok": False, "exit_code": exc.code, "message": str(exc), "rejections": exc.details})
            raise typer.Exit(exc.code)
        fail(escape(str(exc)), exc.code)
        return
    except KeyboardInterrupt:
        stop_progress()
        fail(escape(f"interrupted before collection finished; any partial output is in {output}."), EXIT_INTERRUPTED)
        return
    finally:
        stop_progress()
    if as_json:
        print_json(result.to_dict())
    else:
        if result.validation is not None:
            render_validation(result.validation.to_dict(), title="collect")
        if rejects and result.validation is not None and result.validation.rejected:
            console.print(f"rejected lines written to [bold]{rejects}[/]")
        quality = C.quality_sentence(result.quality)
        if quality:
            unhealthy = bool(result.quality and (result.quality.get("unhealthy") or result.quality.get("error")))
            (err_console if unhealthy else console).print(
                f"[{'yellow' if unhealthy else 'dim'}]{escape(quality)}[/]", highlight=False, soft_wrap=True
            )
        if result.ok:
            console.print(f"[bold green]ok:[/] {escape(result.message)}", highlight=False)
        else:
            err_console.print(f"[bold red]error:[/] {escape(result.message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(result.code)


# ---- demo --------------------------------------------------------------------------------------




class _RichDemoReporter:
    """Renders the demo's steps with rich: a rule per step, details, and a status line."""

    STYLE = {"ok": "green", "skipped": "yellow", "unavailable": "magenta", "failed": "red"}
    MARK = {"ok": "✓", "skipped": "–", "unavailable": "?", "failed": "✗"}

    def __init__(self, quiet_stats: bool = False) -> None:
        self.quiet_stats = quiet_stats

    def start(self, index: int, total: int, name: str, title: str) -> None:
        console.rule(f"[bold][{index}/{total}] {title}", align="left")

    def info(self, message: str) -> None:
        style = "dim" if message.startswith("same as:") else ("yellow" if "warning" in message else "")
        console.print(f"  [{style}]{escape(message)}[/]" if style else f"  {escape(message)}", highlight=False)

    def done(self, result: Any) -> None:
        style = self.STYLE.get(result.status, "")
        console.print(
            f"  [{style}]{self.MARK.get(result.status, '')} {result.status}[/] [dim]({result.seconds:.1f} s)[/] {escape(result.summary)}",
            highlight=False,
        )
        from gymverl.demo import display_path

        for p in result.outputs:
            console.print(f"    [dim]->[/] {escape(display_path(p))}", highlight=False)

    def show_stats(self, data: dict[str, Any]) -> None:
        if not self.quiet_stats:
            render_stats(data, show_tasks=10, compact=True)


@app.command(cls=_Command)
def demo(
    out: Annotated[
        Optional[Path], typer.Option("--output", "-o", help="Output directory (default: a fresh ./gymverl-demo-out, -2, -3, ...).")
    ] = None,
    skip: Annotated[
        Optional[list[str]],
        typer.Option("--skip", help="Skip a step: rescore (and the servers), stats, parquet, reward, train. Repeat or comma-separate."),
    ] = None,
    data: Annotated[
        Optional[Path], typer.Option("--data", help="Directory with rollouts.jsonl and tasks.jsonl (default: the repo's sample_data/); each agent NAME_simple_agent is verified by resources server NAME.")
    ] = None,
    nemo_gym_env: Annotated[
        Optional[Path],
        typer.Option("--nemo-gym-env", help="NeMo Gym venv (default: $GYMVERL_NEMO_GYM_ENV or ./.nemo-gym-venv)."),
    ] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing --output written by an earlier demo.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the step report as JSON at the end (progress goes to stderr).")] = False,
) -> None:
    """Run the whole pipeline on sample_data/: NeMo Gym servers, validate, rescore, stats, parquet, reward function, CPU training.

    Every step prints what it did and where its output is; servers it started are stopped at the
    end, also on Ctrl-C. Exit code 0 when every step worked, 1 when a step failed or is unavailable,
    2 on usage errors, 130 when interrupted.
    """
    global console
    from gymverl.demo import SAMPLE_DATA, DemoOptions, run_demo

    skips = frozenset(s.strip() for item in (skip or []) for s in item.split(",") if s.strip())
    opts = DemoOptions(out=out, data=data or SAMPLE_DATA, skip=skips, nemo_gym_env=nemo_gym_env, overwrite=overwrite)
    saved = console
    if as_json:
        console = err_console  # stdout carries the JSON only
    try:
        report = run_demo(opts, _RichDemoReporter())  # a DemoError becomes its sentence in _PipelineOrder
    except KeyboardInterrupt:
        console = saved
        err_console.print("[yellow]interrupted[/]: NeMo Gym servers and training stopped.")
        raise typer.Exit(EXIT_INTERRUPTED)
    finally:
        console = saved
    if as_json:
        print_json(report.to_dict())
    else:
        t = Table(title=f"demo: {report.seconds:.0f} s, outputs in {report.out}", title_justify="left")
        t.add_column("step")
        t.add_column("status")
        t.add_column("time", justify="right")
        t.add_column("result", overflow="fold")
        for s in report.steps:
            style = _RichDemoReporter.STYLE.get(s.status, "")
            t.add_row(s.name, f"[{style}]{s.status}[/]", f"{s.seconds:.1f} s", escape(s.summary))
        console.print(t)
        console.print(f"step report: [bold]{report.out / 'demo.json'}[/]")
    if not report.ok:
        raise typer.Exit(EXIT_REJECTED)


# ---- rescore -----------------------------------------------------------------------------------


def render_rescore(d: dict[str, Any], show_tasks: int = 20) -> None:
    """Render `RescoreSummary.to_dict()`: totals, per-task before/after, failures, rejections."""
    from gymverl.sidecars import JOIN_REASONS

    t = Table(title=f"rescore: {d['input']} -> {d['output']}", show_header=False, title_justify="left")
    t.add_column(style="bold")
    t.add_column(justify="right")
    t.add_row("lines", str(d["lines"]))
    t.add_row("rescored", f"[green]{d['rescored']}[/]")
    t.add_row("failed (not written)", f"[red]{d['failed']}[/]" if d["failed"] else "0")
    t.add_row("rejected (invalid, not sent)", f"[red]{d['rejected']}[/]" if d["rejected"] else "0")
    if d.get("blank"):
        t.add_row("blank lines (skipped)", str(d["blank"]))
    t.add_row("rewards changed", f"{d['changed']}  (up {d['went_up']}, down {d['went_down']})")
    if d["mean_before"] is not None:
        delta = d["mean_after"] - d["mean_before"]
        color = "green" if delta > 1e-12 else ("red" if delta < -1e-12 else "")
        ds = f"{delta:+.4f}"
        t.add_row("mean reward before -> after", f"{d['mean_before']:.4f} -> {d['mean_after']:.4f}  " + (f"[{color}]{ds}[/]" if color else ds))
    if d.get("task_source"):
        t.add_row("task fields from", f"{d['task_source']} ({d['task_source_kind']})")
    if d["tasks_joined"] or d["tasks_not_found"]:
        t.add_row("task fields re-joined", f"{d['tasks_joined']} rows" + (f", [yellow]{d['tasks_not_found']} rows without a task[/]" if d["tasks_not_found"] else ""))
        for reason, n in (d.get("tasks_not_found_by_reason") or {}).items():
            t.add_row("", f"[yellow]{n} rows {JOIN_REASONS.get(reason, reason)}[/]")
        if d["added_fields"]:
            t.add_row("fields added", ", ".join(f"{k} ({v})" for k, v in d["added_fields"].items()))
    if d.get("duplicate_pairs"):
        t.add_row("repeated (task, rollout) pairs", f"[yellow]{d['duplicate_pairs']} rows[/]")
    modes = d.get("reverify_modes") or {}
    if modes and set(modes.values()) != {"stateless"}:
        t.add_row("GET /reverify_mode", ", ".join(f"{u}: {m}" + (" [yellow](--force)[/]" if u in d.get("forced", []) else "") for u, m in modes.items()))
    if d["resumed_from_line"]:
        t.add_row("resumed after line", str(d["resumed_from_line"]))
    if d["rows_per_second"]:
        t.add_row("this run", f"{d['rows_this_run']} rows in {d['seconds']:.1f} s ({d['rows_per_second']:.0f} rows/s)")
    if len(d["servers"]) > 1 or any(s["failed"] for s in d["servers"]):
        t.add_row("requests per server", ", ".join(f"{s['url']}: {s['sent']}" + (f" ({s['failed']} failed)" if s["failed"] else "") for s in d["servers"]))
    console.print(t)
    tasks = d.get("per_task") or []
    if tasks:
        shown = sorted(tasks, key=lambda r: -abs(r["mean_after"] - r["mean_before"]))[:show_tasks]
        shown.sort(key=lambda r: r["task"])
        title = "per task" if len(tasks) <= show_tasks else f"per task ({show_tasks} most changed of {len(tasks)})"
        pt = Table(title=title, title_justify="left")
        pt.add_column("task", overflow="fold")
        for col in ("rows", "mean before", "mean after", "delta", "rows changed"):
            pt.add_column(col, justify="right")
        for r in shown:
            delta = r["mean_after"] - r["mean_before"]
            color = "green" if delta > 1e-12 else ("red" if delta < -1e-12 else "")
            ds = f"{delta:+.3f}"
            pt.add_row(r["task"], str(r["n"]), f"{r['mean_before']:.3f}", f"{r['mean_after']:.3f}", f"[{color}]{ds}[/]" if color else ds, str(r["changed"]) if r["changed"] else "")
        console.print(pt)
    if d["failed"] or d["rejected"]:
        f = Table(title=f"failures and rejections (all in {d['failures']})", title_justify="left")
        f.add_column("line", justify="right")
        f.add_column("kind")
        f.add_column("reason")
        f.add_column("attempts", justify="right")
        for ex in d["examples"]:
            f.add_row(str(ex["line"]), str(ex["kind"]), str(ex["error"] or ex["reason"]), str(ex["attempts"] or ""))
        more = d["failed"] + d["rejected"] - len(d["examples"])
        if more > 0:
            f.add_row("…", "", f"{more} more in {d['failures']}", "")
        console.print(f)
        if d["failures_by_reason"]:
            console.print("[red]failed by reason[/]: " + ", ".join(f"{k}: {v}" for k, v in d["failures_by_reason"].items()))
        if d["rejected_by_reason"]:
            console.print("[red]rejected by reason[/]: " + ", ".join(f"{k}: {v}" for k, v in d["rejected_by_reason"].items()))


def _rescore_progress(path: Input) -> tuple[Any, Any]:
    """A rich progress bar on stderr (terminal only) and its callback for `rescore_file`."""
    from rich.progress import TextColumn, TimeElapsedColumn, TimeRemainingColumn

    if not err_console.is_terminal:
        return None, None
    return _progress(
        "[bold]rescore[/]", TextColumn("{task.fields[rows]} rows"), TextColumn("{task.fields[rate]} rows/s"),
        TextColumn("[red]{task.fields[failed]}[/]"), TimeElapsedColumn(), TimeRemainingColumn(), console=err_console,
    )


@app.command(cls=_Command)
def rescore(
    rollouts: Annotated[Path, typer.Argument(help="Rollout JSONL written by NeMo Gym (.jsonl or .jsonl.gz).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Write the rescored rollouts here (input order; old reward kept as reward_before).")],
    server: Annotated[
        Optional[list[str]],
        typer.Option(
            "--server", "-s", envvar="GYMVERL_VERIFY_URL", metavar="URL|NAME=URL",
            help="Resources server base URL (POST {URL}/verify). Repeat to load-balance; NAME=URL routes rows whose "
            "agent_ref.name is or starts with NAME (e.g. math_with_judge=http://127.0.0.1:8001). Env: GYMVERL_VERIFY_URL.",
        ),
    ] = None,
    failures: Annotated[
        Optional[Path], typer.Option("--failures", help="Failure records (invalid rows and failed verifications) go here. Default: OUT stem + .failures.jsonl.")
    ] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted run into the same OUTPUT: skips lines already done, no duplicates, no gaps.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Start over even if OUTPUT holds an unfinished run (otherwise refused: use --resume) or a file that is not a rescore output.")] = False,
    retry_failed: Annotated[bool, typer.Option("--retry-failed", help="Re-send the rows a finished run into OUTPUT recorded as failed verifications; other rows are kept, order too.")] = False,
    tasks: Annotated[
        Optional[Path],
        typer.Option(
            "--tasks",
            help="Task fields the rollouts lack come from this NeMo Gym tasks JSONL (joined on _ng_task_index = its line) or "
            "materialized inputs (joined on _ng_task_index and _ng_rollout_index); the prompt must match. Default: "
            "<stem>_materialized_inputs.jsonl beside ROLLOUTS when it exists.",
        ),
    ] = None,
    side_files: Annotated[bool, typer.Option("--side-files/--no-side-files", help="Look for <stem>_materialized_inputs.jsonl beside ROLLOUTS (without --tasks).")] = True,
    force: Annotated[
        bool,
        typer.Option("--force", help="Re-verify even against servers whose GET /reverify_mode is not \"stateless\" (rewards of a stateful verifier may be wrong)."),
    ] = False,
    concurrency: Annotated[int, typer.Option("--concurrency", "-c", callback=number(min=1, max=MAX_CONCURRENCY), help="Requests in flight at once (all servers together).")] = DEFAULT_CONCURRENCY,
    timeout: Annotated[float, typer.Option("--timeout", callback=number(above=0, max=7 * 86400, unit='seconds'), help="Seconds per request attempt.")] = DEFAULT_TIMEOUT,
    retries: Annotated[int, typer.Option("--retries", callback=number(min=0, max=MAX_RETRIES), help="Retries per row on timeouts, connection errors, 429 and 5xx (exponential backoff with jitter).")] = DEFAULT_RETRIES,
    strict: Annotated[bool, typer.Option("--strict", help="Exit 1 when a suspicious share of rewards goes down (likely missing task fields).")] = False,
    flip_threshold: Annotated[float, typer.Option("--flip-threshold", callback=number(min=0, max=1), help="Warn when at least this share of rescored rewards went down.")] = 0.25,
    limit: Annotated[Optional[int], typer.Option("--limit", callback=number(min=1), help="Process at most this many more lines, then stop (resume later with --resume).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON (for scripts).")] = False,
    show_tasks: Annotated[int, typer.Option("--show-tasks", callback=number(min=0), help="Rows in the per-task before/after table (the most changed tasks).")] = 20,
) -> None:
    """Re-score rollouts against a live NeMo Gym /verify and write them with the new rewards.

    A row whose verification finally fails (after retries) goes to the failures file with the reason and is never written with a made-up reward.

    An HTTP 200 answer that reports a failure (NeMo Gym >= 0.5: mask_sample true, judge_failed) is a failure too (--retry-failed re-sends it).
    Task fields the rollouts lack are joined from --tasks or <stem>_materialized_inputs.jsonl beside ROLLOUTS, on _ng_task_index and _ng_rollout_index.
    Each server is asked GET /reverify_mode first: one that does not say "stateless" is refused without --force (as gym eval reverify does; a server without the route, NeMo Gym 0.4, is used).

    Exit code 0 all rows rescored; 1 some rows failed or were rejected, the run stopped early (resume with --resume), or --strict saw a suspicious reward flip; 2 usage error, or a server not declared stateless without --force; 130 interrupted (resume with --resume).
    """
    from gymverl.rescore import rescore_file
    from gymverl.verify import VerifyClient

    # Errors (bad input or option, an output that is an input, disk full, ...) are GymverlErrors or
    # OSErrors: _PipelineOrder.invoke turns them into one sentence and the right exit code.
    if not server:
        fail("give at least one --server URL (or NAME=URL), or set GYMVERL_VERIFY_URL.")
    specs = [s for spec in server for s in spec.split()]  # the env var may hold several, space-separated
    client = VerifyClient(specs, concurrency=concurrency, timeout=timeout, retries=retries)
    stack = contextlib.ExitStack()
    # Two passes (the resume fingerprint, then the lines): a pipe is spooled to a temp file,
    # removed when the command ends, however it ends.
    path = input_arg(stack, rollouts, passes=2)
    if tasks is not None:
        check_input_path(tasks)  # a regular file (read by key): missing, a directory, Parquet, a pipe: one sentence
    progress, on_progress = (None, None) if as_json else _rescore_progress(path)
    try:
        if progress is not None:
            progress.start()
        summary = rescore_file(
            path, output, client=client, failures=failures, resume=resume, overwrite=overwrite, retry_failed=retry_failed, tasks=tasks,
            side_files=side_files, force=force, flip_threshold=flip_threshold, limit=limit, on_progress=on_progress, handle_signals=True,
        )
    finally:
        if progress is not None:
            progress.stop()
        stack.close()
    data = summary.to_dict()
    warning = data["warning"]
    if as_json:
        print_json(data)
    else:
        render_rescore(data, show_tasks)
        if summary.complete:
            console.print(f"rescored rollouts written to [bold]{output}[/]" + (f"; failures in [bold]{summary.failures_path}[/]" if data["failed"] or data["rejected"] else ""))
    if warning:
        err_console.print(f"[bold yellow]warning:[/] {warning}", highlight=False)
    if summary.interrupted:
        if retry_failed:
            err_console.print(
                f"[bold red]stopped:[/] {summary.interrupted}; {output} and its failures file are unchanged. "
                "Run the same command again to retry.", highlight=False,
            )
        else:
            err_console.print(
                f"[bold red]stopped:[/] {summary.interrupted}; {summary.lines} of the input lines are done. "
                f"Continue with the same command plus --resume.", highlight=False,
            )
        raise typer.Exit(EXIT_INTERRUPTED if summary.interrupted.startswith(("interrupted", "terminated")) else EXIT_REJECTED)
    if summary.failed or summary.rejected or summary.lines == 0 or (strict and warning):
        raise typer.Exit(EXIT_REJECTED)


# ---- to-parquet --------------------------------------------------------------------------------


def render_to_parquet(summary: dict[str, Any]) -> None:
    """Render a conversion summary (from `ConvertSummary.to_dict`) as rich tables."""
    from gymverl.select import RULES

    title = f"to-parquet ({summary['format']}{', dry run' if summary['dry_run'] else ''}): {summary['input']}"
    t = Table(title=title, show_header=False, title_justify="left")
    t.add_column(style="bold")
    t.add_column(justify="right")
    t.add_column(style="dim")
    kind = summary["input_kind"]
    if kind == "materialized_inputs":
        kind = "NeMo Gym materialized inputs: one line per (task, repeat), one row per task"
    t.add_row("input lines", str(summary["lines"]), kind)
    t.add_row("rejected", f"[red]{summary['rejected']}[/]" if summary["rejected"] else "0", "unusable lines (see below)")
    if summary.get("blank"):
        t.add_row("blank lines", str(summary["blank"]), "skipped (empty or only whitespace)")
    for rule, n in summary["filtered"].items():
        t.add_row(f"filtered: {rule}", f"[yellow]{n}[/]", RULES.get(rule, ""))
    unit = {"rl": "rollouts summarised into task rows", "dpo": "rollouts used in pairs"}.get(summary["format"], "rollouts written as rows")
    t.add_row("kept", f"[green]{summary['kept_lines']}[/]", unit)
    if summary.get("repeats_merged"):
        t.add_row("repeat lines", str(summary["repeats_merged"]), "further repeats of a task already written (part of kept)")
    rows = summary["rows"]
    t.add_row("rows", str(rows["train"] + rows["val"]), f"train {rows['train']}, val {rows['val']}")
    img = summary.get("images") or {}
    if img.get("rows"):
        t.add_row("with images", str(img["rows"]), f"{img['images']} images in the `images` column, <image> in the text")
    tf = summary.get("task_fields") or {}
    if tf.get("source"):
        not_joined = sum(tf["not_joined"].values())
        t.add_row("task fields joined", f"{tf['joined']}", f"from {tf['source']}" + (f"; {not_joined} rows not joined" if not_joined else ""))
    if summary["tasks"] is not None:
        tb = summary["tasks_by_split"]
        dropped = ", ".join(f"{k} {v}" for k, v in summary["tasks_dropped"].items())
        t.add_row("tasks", str(summary["tasks"]), f"train {tb['train']}, val {tb['val']}" + (f"; no rows: {dropped}" if dropped else ""))
    if summary["lines_per_second"] and summary["seconds"] >= 1.0:
        t.add_row("speed", f"{summary['lines_per_second']:,} lines/s", f"{summary['seconds']:.1f} s")
    console.print(t)
    if summary["rejected"]:
        render_rejections(summary["rejections"], summary["rejected"], summary["rejected_by_reason"])
    for split, paths in summary["files"].items():
        shown = paths[0] if len(paths) == 1 else f"{paths[0]} … ({len(paths)} shards)"
        console.print(f"{split}: [bold]{shown}[/]")


@app.command("to-parquet", cls=_Command)
def to_parquet(
    input_path: Annotated[Path, typer.Argument(metavar="INPUT", help="Rollout JSONL from NeMo Gym (.jsonl or .jsonl.gz); for --format rl also a NeMo Gym tasks file.")],
    tasks: Annotated[Optional[Path], typer.Option("--tasks", rich_help_panel="Input", help="rl: the task rows to join onto the rows: the original NeMo Gym tasks file (by _ng_task_index = its line, prompt checked) or <stem>_materialized_inputs.jsonl (by task and repeat index; found beside INPUT without this option). Its fields are the task fields; every other top-level key is a verifier output.")] = None,
    strict: Annotated[bool, typer.Option("--strict", rich_help_panel="Input", help="rl: stop (exit 2) when rows lack task fields the verifier may need, instead of warning.")] = False,
    side_files: Annotated[bool, typer.Option("--side-files/--no-side-files", rich_help_panel="Input", help="rl: use NeMo Gym's <stem>_materialized_inputs.jsonl beside INPUT for task fields.")] = True,
    input_kind: Annotated[str, typer.Option("--input-kind", rich_help_panel="Input", help="auto, rollouts or tasks (auto: lines with a `response` are rollouts).")] = "auto",
    max_line_mb: Annotated[float, typer.Option("--max-line-mb", rich_help_panel="Input", callback=number(above=0, max=100_000, unit='MB'), help="Reject lines longer than this (MB).")] = DEFAULT_MAX_LINE_BYTES / 1e6,
    fmt: Annotated[str, typer.Option("--format", "-f", rich_help_panel="Rows", help="rl: one row per task for GRPO/PPO (main_ppo); sft: one row per rollout for sft_trainer; dpo: preference pairs in the conversational form TRL's DPOTrainer and OpenRLHF read.")] = "sft",
    ground_truth_field: Annotated[Optional[str], typer.Option("--ground-truth-field", rich_help_panel="Rows", help="Task field holding the expected answer (default: the first of expected_answer, expected_answers, ground_truth, answer, ...).")] = None,
    data_source: Annotated[Optional[str], typer.Option("--data-source", rich_help_panel="Rows", help="data_source of every row (default: the agent name, else the input file's stem).")] = None,
    ability: Annotated[str, typer.Option("--ability", rich_help_panel="Rows", help="The rl `ability` column.")] = "nemo_gym",
    agent_loop: Annotated[str, typer.Option("--agent-loop", rich_help_panel="Rows", help="rl: the agent loop each row names (agent_name column): auto = gymverl_tools for tasks with tools, VeRL's single_turn_agent otherwise (offline prompts, scored by compute_score); env = gymverl_env for every row (online RL that plays the NeMo Gym environment: gymverl train-online).")] = "auto",
    tool_arguments: Annotated[str, typer.Option("--tool-arguments", rich_help_panel="Rows", help="dpo: tool-call arguments as the model's JSON text (string) or as objects (object), as the model's chat template needs; auto = the form the --tokenizer's chat template renders as written, else string (with a warning).")] = "auto",
    include_reasoning: Annotated[bool, typer.Option("--include-reasoning", rich_help_panel="Rows", help="sft/dpo: keep reasoning items as `reasoning_content` on assistant messages.")] = False,
    keep_masked: Annotated[bool, typer.Option("--keep-masked", rich_help_panel="Selection", help="Keep rollouts marked mask_sample: true (NeMo Gym >= 0.5: not a valid measurement); dropped by default under the filter 'masked'.")] = False,
    min_reward: Annotated[Optional[float], typer.Option("--min-reward", rich_help_panel="Selection", callback=number(), help="Drop rollouts whose reward is below this.")] = None,
    best_of_n: Annotated[Optional[int], typer.Option("--best-of-n", rich_help_panel="Selection", callback=number(min=1), help="Keep only the K highest-reward rollouts of each task (ties: input order).")] = None,
    drop_solved: Annotated[bool, typer.Option("--drop-solved", rich_help_panel="Selection", help="Drop tasks every rollout solved (GRPO difficulty filter).")] = False,
    drop_unsolved: Annotated[bool, typer.Option("--drop-unsolved", rich_help_panel="Selection", help="Drop tasks no rollout solved (GRPO difficulty filter).")] = False,
    solved_threshold: Annotated[float, typer.Option("--solved-threshold", rich_help_panel="Selection", callback=number(), help="A rollout solves its task when reward >= this.")] = 1.0,
    dedup: Annotated[bool, typer.Option("--dedup", rich_help_panel="Selection", help="Drop rollouts whose response repeats an earlier one of the same task.")] = False,
    keep_incomplete: Annotated[bool, typer.Option("--keep-incomplete", rich_help_panel="Selection", help="Keep responses that were cut off (status incomplete); dropped by default for sft and dpo.")] = False,
    keep_malformed_calls: Annotated[bool, typer.Option("--keep-malformed-calls", rich_help_panel="Selection", help="sft/dpo: keep rollouts with a tool call whose arguments are not a JSON object (kept as the model wrote them; templates that need object arguments cannot render them); dropped by default under the filter 'malformed_tool_call'.")] = False,
    keep_empty_answers: Annotated[bool, typer.Option("--keep-empty-answers", rich_help_panel="Selection", help="sft/dpo: keep rollouts that end without a final answer (an empty message or reasoning only); dropped by default under the filter 'empty_answer'.")] = False,
    max_tokens: Annotated[Optional[int], typer.Option("--max-tokens", rich_help_panel="Selection", callback=number(min=1), help="Drop rows longer than this many tokens (chat template applied; rl: the prompt with its tools). Needs --tokenizer.")] = None,
    tokenizer: Annotated[Optional[Path], typer.Option("--tokenizer", rich_help_panel="Selection", help="Local Hugging Face tokenizer directory, for --max-tokens (and dpo's --tool-arguments auto).")] = None,
    pairs_per_task: Annotated[int, typer.Option("--pairs-per-task", rich_help_panel="Selection", callback=number(min=1), help="dpo: at most this many pairs per task (best with worst, then next).")] = 1,
    min_margin: Annotated[float, typer.Option("--min-margin", rich_help_panel="Selection", callback=number(min=0), help="dpo: smallest reward gap between chosen and rejected (always above 0).")] = 0.0,
    val_fraction: Annotated[float, typer.Option("--val-fraction", rich_help_panel="Split", callback=number(min=0, max=0.99), help="Share of *tasks* in val.parquet; a hash of the task key decides, so no task is in both splits and every run agrees.")] = 0.0,
    split_seed: Annotated[str, typer.Option("--split-seed", rich_help_panel="Split", help="Changes which tasks land in val (still deterministic).")] = "gymverl",
    output: Annotated[
        Optional[Path],
        typer.Option("--output", "-o", rich_help_panel="Output", help="Output directory (train.parquet, val.parquet, or train-00000-of-0000N.parquet shards), or a .parquet file when there is no val split."),
    ] = None,
    shard_size: Annotated[Optional[int], typer.Option("--shard-size", rich_help_panel="Output", callback=number(min=1), help="Rows per parquet file; writes NAME-00000-of-0000N.parquet shards.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", rich_help_panel="Output", help="Show what would be kept and filtered; write nothing.")] = False,
    rejects: Annotated[Optional[Path], typer.Option("--rejects", rich_help_panel="Output", help="Write every rejected line as {line, code, reason, raw} JSONL here.")] = None,
    as_json: Annotated[bool, typer.Option("--json", rich_help_panel="Output", help="Print the summary as JSON (for scripts).")] = False,
    tmp_dir: Annotated[Optional[Path], typer.Option("--tmp-dir", rich_help_panel="Performance", help="Where to spill rollouts while grouping by task (default: beside the output).")] = None,
    workers: Annotated[int, typer.Option("--workers", "-j", rich_help_panel="Performance", callback=number(min=1, max=256), help="Processes that parse and convert lines (each adds ~100 MB); 1 keeps everything in one process.")] = 1,
) -> None:
    """Convert rollouts into parquet VeRL trains on unchanged, with rejection sampling and a train/val split.

    Every input line is accounted for: written as (part of) a row, removed by a named filter, or
    rejected with its line number and reason. SFT rows store `messages`/`tools` as JSON strings:
    train with data.custom_cls.path=<gymverl/verl_data.py> data.custom_cls.name=GymverlSFTDataset.

    Exit code 0 success; 1 some lines were rejected or no row was kept; 2 usage error; 130 interrupted.
    """
    from gymverl.convert import ConvertOptions, convert
    from gymverl.select import SelectOptions

    if output is None and not dry_run:
        fail("give --output DIR (or --dry-run to only see the summary).")
    if fmt not in ("rl", "sft", "dpo"):
        fail(f"--format must be rl, sft or dpo, not {fmt!r}.")
    if max_tokens is not None and tokenizer is None:
        fail("--max-tokens needs --tokenizer (a local Hugging Face tokenizer directory).")
    if tokenizer is not None and not tokenizer.exists():
        fail(f"{tokenizer}: no such tokenizer directory.")
    stack = contextlib.ExitStack()
    # --input-kind auto looks at the first lines before converting: a pipe is spooled (into
    # --tmp-dir when given) and the copy removed when the command ends, however it ends.
    path = input_arg(stack, input_path, passes=2 if input_kind == "auto" else 1, tmp_dir=tmp_dir)
    options = ConvertOptions(
        fmt=fmt,
        select=SelectOptions(
            min_reward=min_reward,
            best_of_n=best_of_n,
            drop_solved=drop_solved,
            drop_unsolved=drop_unsolved,
            dedup=dedup,
            max_tokens=max_tokens,
            drop_incomplete=not keep_incomplete and fmt != "rl",
            drop_masked=not keep_masked,
            drop_malformed_calls=not keep_malformed_calls,
            drop_empty_answers=not keep_empty_answers,
            solved_threshold=solved_threshold,
            val_fraction=val_fraction,
            split_seed=split_seed,
            pairs_per_task=pairs_per_task,
            min_margin=min_margin,
        ),
        tasks_path=tasks,
        strict=strict,
        side_files=side_files,
        ground_truth_field=ground_truth_field,
        data_source=data_source,
        ability=ability,
        agent_loop=agent_loop,
        tool_arguments=tool_arguments,
        include_reasoning=include_reasoning,
        tokenizer=tokenizer,
        shard_size=shard_size,
        dry_run=dry_run,
        rejects_path=rejects,
        input_kind=input_kind,
        tmp_dir=tmp_dir,
        max_line_bytes=int(max_line_mb * 1e6),
        workers=workers,
    )
    from rich.progress import DownloadColumn, TimeRemainingColumn

    progress, on_progress = (None, None) if as_json else _progress("converting", DownloadColumn(), TimeRemainingColumn(), console=err_console)

    try:
        if progress is not None:
            progress.start()
        summary = convert(path, output, options, on_progress=on_progress)
    except KeyboardInterrupt:  # Ctrl-C, SIGTERM, SIGHUP: convert removed its temp and spill files
        raise Interrupted("interrupted; nothing was written (earlier outputs are unchanged).") from None
    finally:
        if progress is not None:
            progress.stop()
        stack.close()
    data = summary.to_dict()
    if as_json:
        print_json(data)
    else:
        render_to_parquet(data)
        if rejects and summary.rejected:
            console.print(f"rejected lines written to [bold]{rejects}[/]")
        for w in summary.warnings:
            err_console.print(f"[bold yellow]warning:[/] {w}", highlight=False)
    if summary.rejected or sum(summary.rows.values()) == 0:
        raise typer.Exit(EXIT_REJECTED)


# ---- preview -----------------------------------------------------------------------------------

TRAINED_STYLE = "bold black on green"


def render_section(section: Any, out: Console | None = None) -> None:
    """Render one rendered sequence of a preview, its trained spans in TRAINED_STYLE."""
    from rich.panel import Panel
    from rich.text import Text

    out = out or console
    text = Text()
    pos = 0
    for span in section.trained:
        text.append(section.text[pos : span.char_start])
        text.append(section.text[span.char_start : span.char_end], style=TRAINED_STYLE)
        pos = span.char_end
    text.append(section.text[pos:])
    trained = f", {section.trained_tokens} trained" if section.trained else ""
    out.print(Panel(text, title=f"{section.name} ({section.tokens} tokens{trained})", title_align="left"))


def render_preview(pv: Any) -> None:
    """Render a `gymverl.preview.Preview` for the terminal."""
    t = Table(title=f"preview ({pv.format}): {pv.path}", show_header=False, title_justify="left")
    t.add_column(style="bold")
    t.add_column()
    t.add_row("row", f"{pv.row} of {pv.rows} (0-{pv.rows - 1})")
    t.add_row("tokenizer", escape(pv.tokenizer))
    if pv.format == "rl":
        column = pv.agent_name if pv.agent_name is not None else "(no agent_name column)"
        t.add_row("agent loop", f"{escape(pv.agent_loop)}  [dim]agent_name: {escape(column)}[/]")
        names = [str((x.get("function") or x).get("name")) for x in pv.tools or []]
        t.add_row("tools in the prompt", escape(", ".join(names)) if names else (f"[yellow]none[/] (the task has {pv.task_tools})" if pv.task_tools else "none"))
    elif pv.tools:
        t.add_row("tools", escape(", ".join(str((x.get("function") or x).get("name")) for x in pv.tools)))
    for key, value in pv.data.items():
        if value not in (None, "", []):
            t.add_row(key.replace("_", " "), escape(", ".join(map(str, value)) if isinstance(value, list) else str(value)))
    console.print(t)
    for section in pv.sections:
        render_section(section)
    if pv.format == "rl":
        if pv.verify is None:
            console.print("[dim]the policy trains on what it generates; --answer TEXT shows the /verify request compute_score would send for it.[/]")
        else:
            console.print(f"/verify request for --answer (routed by agent [bold]{escape(str(pv.verify.agent))}[/]; not sent):")
            console.print_json(json.dumps(pv.verify.body, default=str))
    elif pv.sections and pv.sections[0].trained is not None:
        console.print(f"[{TRAINED_STYLE}] trained [/] tokens are the ones the loss covers; the rest is context.")
    for w in pv.warnings:
        err_console.print(f"[bold yellow]warning:[/] {escape(w)}", highlight=False, soft_wrap=True)


@app.command(cls=_Command)
def preview(
    data: Annotated[Path, typer.Argument(metavar="DATA", help="A parquet file written by `gymverl to-parquet` (rl, sft or dpo).")],
    tokenizer: Annotated[Path, typer.Option("--tokenizer", "-t", help="The model's local Hugging Face tokenizer (or model) directory.", show_default=False)],
    row: Annotated[int, typer.Option("--row", "-r", callback=number(min=0), help="Row to show (0-based).")] = 0,
    answer: Annotated[Optional[str], typer.Option("--answer", help="rl: a model answer; shows the /verify request compute_score would send for it (nothing is sent).", show_default=False)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the rendered text, token ids and trained spans as JSON (for scripts).")] = False,
) -> None:
    """Show exactly what training sees for one row, rendered with the model's chat template.

    rl: the prompt the policy gets, through VeRL's agent-loop prompt builder (with the row's tools when its agent loop shows them); with --answer also the /verify request of compute_score.

    sft: the conversation as VeRL's MultiTurnSFTDataset tokenizes it, trained spans highlighted.

    dpo: chosen and rejected, each after the shared prompt, completion highlighted.

    Exit code 0 success; 2 usage error (no such file or row, not a gymverl parquet, no tokenizer or chat template).
    """
    from gymverl.preview import preview as make_preview

    pv = make_preview(data, tokenizer, row=row, answer=answer)
    if as_json:
        print_json(pv.to_dict())
    else:
        render_preview(pv)


if __name__ == "__main__":  # pragma: no cover
    app()
