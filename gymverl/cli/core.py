"""The Typer app every command registers on, the two consoles, and the one place errors become exit codes.

Exit codes (all commands): 0 success, 1 the job ran but some input was rejected or failed,
2 usage error (bad option, missing file, ...), 130 interrupted, 141 the output pipe was closed.
"""

from __future__ import annotations

import inspect
import json
import math
import os
import sys
from dataclasses import dataclass
from typing import Annotated, Any, Optional

import click
import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperCommand, TyperGroup

from gymverl import __version__
from gymverl.errors import EXIT_BROKEN_PIPE, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_USAGE, GymverlError, UsageError, from_os_error
from gymverl.proc import exit_now_on_stop_signals, signals_as_interrupt

try:  # typer >= 0.2x carries its own copy of click; its exceptions are not click's
    from typer._click import exceptions as _typer_click_exc
except ImportError:  # pragma: no cover - older typer uses click itself
    _typer_click_exc = click.exceptions

# click's own usage errors (an unknown option, a value of the wrong type, a missing argument) become
# one sentence like every other error (`_usage_sentence`); "no arguments: here is the help" stays click's.
_USAGE_ERRORS = (_typer_click_exc.UsageError, click.exceptions.UsageError)
_HELP_NOT_ERRORS = tuple(getattr(m, "NoArgsIsHelpError") for m in (_typer_click_exc, click.exceptions) if hasattr(m, "NoArgsIsHelpError"))

# Exceptions that already mean "exit with this code and this usage message": let click handle them.
_CLICK_PASS_THROUGH = (
    typer.Exit, typer.Abort, click.exceptions.ClickException, click.exceptions.Abort, click.exceptions.Exit,
    _typer_click_exc.ClickException,
)

# Old option spellings that still parse (scripts keep working) but are not shown in --help: each
# concept has one spelling across commands (`--output`/`-o` for every output file or directory).
OPTION_ALIASES = {"--out": "--output"}


def _flags_without_values(params: list[Any]) -> list[Any]:
    """Show on/off flags in --help as bare switches (`--json`), not with a `<bool>` value they do not take."""
    for param in params:
        if getattr(param, "is_bool_flag", False) and param.metavar is None:
            param.metavar = ""
    return params


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

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        # gymverl's own options (`gymverl --bogus validate`): one sentence too
        try:
            return super().parse_args(ctx, args)
        except _HELP_NOT_ERRORS:
            raise
        except _USAGE_ERRORS as exc:
            INVOCATION.start(wants_json=_wants_json(args))
            _fail_now(_usage_sentence(exc), exc.exit_code)
            raise  # (unreachable: _fail_now exits)

    def invoke(self, ctx: Any) -> Any:
        # (read before click hands the arguments to the command; "--" ends gymverl's own)
        INVOCATION.start(wants_json=_wants_json([*getattr(ctx, "protected_args", []), *ctx.args]))
        try:
            # SIGTERM / SIGHUP stop every command the way Ctrl-C does (same cleanup, exit 130).
            with signals_as_interrupt():
                return super().invoke(ctx)
        except _HELP_NOT_ERRORS:
            raise
        except _USAGE_ERRORS as exc:
            _fail_now(_usage_sentence(exc), exc.exit_code)
        except _CLICK_PASS_THROUGH:
            raise
        except GymverlError as exc:
            _fail_now(str(exc), exc.exit_code)
        except BrokenPipeError:  # a plain print() or json.dump to a closed pipe (the consoles: _Console)
            exit_broken_pipe()
        except OSError as exc:
            err = from_os_error(exc)
            _fail_now(str(err), err.exit_code)
        except KeyboardInterrupt:
            _fail_now("interrupted.", EXIT_INTERRUPTED)
        except Exception as exc:  # noqa: BLE001 - the last line of defence: never a traceback
            if os.environ.get("GYMVERL_DEBUG"):
                raise
            _fail_now(f"internal error ({type(exc).__name__}: {exc}); set GYMVERL_DEBUG=1 for the traceback.", EXIT_FAILED)


def _wants_json(args: list[str]) -> bool:
    """Whether a command line asks for `--json` ("--" ends gymverl's own arguments)."""
    return "--json" in (args[: args.index("--")] if "--" in args else args)


def _usage_sentence(exc: Any) -> str:
    """A click usage error as one sentence that says where the help is
    ("No such option: --bogus; see `gymverl to-parquet --help`.")."""
    where = exc.ctx.command_path if exc.ctx is not None else "gymverl"
    return f"{exc.format_message().strip().rstrip('.')}; see `{where} --help`."


def reflow(text: str | None) -> str | None:
    """`text` (a docstring) with the line breaks inside each paragraph turned into spaces, so that
    --help wraps it at the terminal's width (rich keeps single newlines of a command's help, and a
    docstring hard-wrapped at 100 characters broke mid-sentence at 80). Paragraphs are separated by
    blank lines; one that starts with `\\b` (click's "do not rewrap" mark) keeps its lines."""
    if not text:
        return text
    paragraphs = inspect.cleandoc(text).split("\n\n")
    return "\n\n".join(p if p.startswith("\b") else " ".join(line.strip() for line in p.splitlines()) for p in paragraphs)


_GLOBAL_FLAGS = ("-q", "--quiet", "-v", "--verbose")


class _Command(TyperCommand):
    """A gymverl command: also accepts the old spellings of OPTION_ALIASES, without listing them;
    its help reflows at the terminal's width (`reflow`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.help = reflow(self.help)

    def get_params(self, ctx: Any) -> list[Any]:
        return _flags_without_values(super().get_params(ctx))

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except _typer_click_exc.NoSuchOption as exc:
            if exc.possibilities:  # an old spelling (OPTION_ALIASES) is never suggested: its new one is
                exc.possibilities = list(dict.fromkeys(OPTION_ALIASES.get(p, p) for p in exc.possibilities))  # type: ignore[misc]
            if exc.option_name in _GLOBAL_FLAGS:  # `gymverl validate x -q`: say where it goes
                exc.message = (
                    f"{exc.message} ({exc.option_name} is an option of gymverl itself: it goes before the command, "
                    f"as in `gymverl {exc.option_name} {ctx.info_name} ...`)."
                )
            raise

    def make_parser(self, ctx: Any) -> Any:
        parser = super().make_parser(ctx)
        for old, new in OPTION_ALIASES.items():
            # click's OptionParser keeps one table of long names; the old name points at the new option.
            if new in parser._long_opt and old not in parser._long_opt:
                parser._long_opt[old] = parser._long_opt[new]
        return parser


class _App(typer.Typer):
    """The `gymverl` Typer app. Called as a program (`app()`: the console script, `python -m
    gymverl.cli`), the process ends when the command does; invoked in-process (tests, `CliRunner`)
    it does not, so only then may an interrupted command change process-wide signal handling."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        global _AS_PROGRAM
        _AS_PROGRAM = True
        try:
            return super().__call__(*args, **kwargs)
        except BrokenPipeError:
            exit_broken_pipe()
        except OSError as exc:
            # Raised outside a command's own handler (`_PipelineOrder.invoke`): --help or --version
            # written to a full disk (`> /dev/full`). One sentence, never a traceback.
            err = from_os_error(exc)
            error(str(err))
            raise SystemExit(err.exit_code) from None


_AS_PROGRAM = False  # set by `_App.__call__`: this process exits when the command is done


app = _App(
    cls=_PipelineOrder,
    name="gymverl",
    help=(
        "Turn NeMo Gym rollouts into VeRL training data and training runs.\n\n"
        "Exit codes: 0 success; 1 some input rejected or failed; 2 usage error; 130 interrupted; 141 the output pipe was closed (`| head`)."
    ),
    no_args_is_help=True,
    add_completion=True,  # --install-completion / --show-completion (bash, zsh, fish, PowerShell)
    pretty_exceptions_enable=False,
)


def command(name: str | None = None, **kw: Any) -> Any:
    """Register a gymverl command (`_Command`: old option spellings, bare flags) on the app."""
    return app.command(name, cls=_Command, **kw)


def exit_broken_pipe() -> None:
    """stdout's reader went away (`gymverl stats x | head -1`): exit 141 (128 + SIGPIPE) at once and
    quietly, as `cat` does; stdout now points at /dev/null so that the interpreter's last flush
    cannot raise again. (Python ignores SIGPIPE, and rich's own handler exits 1, which here means
    "some input was rejected".)"""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # (no real stdout: nothing to protect)
        pass
    raise SystemExit(EXIT_BROKEN_PIPE)


class _Console(Console):
    """rich's Console, with the exit status of a closed output pipe that the exit codes document."""

    def on_broken_pipe(self) -> None:
        self.quiet = True
        exit_broken_pipe()


console = _Console()
err_console = _Console(stderr=True)


def _help_consoles_exit_141() -> None:
    """Typer prints --help (and its usage errors) through consoles of its own, whose broken-pipe
    handler is rich's (exit 1): give them ours, so `gymverl --help | head -1` exits 141 too.
    (typer has no setting for it; its one console factory is wrapped, and left alone if absent.)"""
    try:
        from typer import rich_utils
    except ImportError:  # pragma: no cover - typer without rich
        return
    make = getattr(rich_utils, "_get_rich_console", None)
    if make is None or getattr(make, "_gymverl", False):
        return

    def make_console(*args: Any, **kwargs: Any) -> Console:
        made = make(*args, **kwargs)
        made.on_broken_pipe = exit_broken_pipe  # type: ignore[method-assign]
        return made

    make_console._gymverl = True  # type: ignore[attr-defined]
    rich_utils._get_rich_console = make_console


_help_consoles_exit_141()


@dataclass
class Verbosity:
    """How much every command prints, set by the global `--quiet/-q` and `--verbose/-v`.

    The outcome never depends on it: exit codes, errors (stderr) and `--json` output are the same.

    quiet: no tables, summaries or progress on stdout (`console.quiet`).
    verbose: nothing is cut short. Lists print in full (every task of a per-task table, every
    shard written, every incomplete task), rejected lines show their code, and train-offline /
    train-online echo every line VeRL prints. Tracebacks still need GYMVERL_DEBUG=1.
    """

    quiet: bool = False
    verbose: bool = False

    def set(self, *, quiet: bool = False, verbose: bool = False) -> None:
        """Turn `quiet` and/or `verbose` on; both on is a usage error (UsageError, exit 2)."""
        self.quiet, self.verbose = self.quiet or quiet, self.verbose or verbose
        if self.quiet and self.verbose:
            raise UsageError("--quiet and --verbose contradict each other; give one of them.")
        console.quiet = self.quiet

    def reset(self) -> None:
        """Back to the defaults (each invocation starts from them: tests run many in one process)."""
        self.quiet = self.verbose = False
        console.quiet = False


# The one verbosity every command and render function reads (`VERBOSITY.verbose`).
VERBOSITY = Verbosity()

# Help of the global flags (the train commands also take --verbose/-v after their name, hidden).
QUIET_HELP = "Print no tables or progress; errors (stderr) and --json output still appear."
VERBOSE_HELP = (
    "Print more detail: lists in full (tasks, shards), the code of each rejected line, every line VeRL prints "
    "(train-offline, train-online). Not with --quiet."
)
OLD_VERBOSE_HELP = "Same as the global --verbose/-v (gymverl -v train-...): echo every line VeRL prints."


@dataclass
class Invocation:
    """What this command line asked for and printed, for `fail`: a command run with `--json` that
    fails before printing its JSON prints `{"ok": false, "exit_code", "message"}` on stdout too, so a
    script reading stdout always gets JSON (`collect --json` adds its rejected task lines)."""

    wants_json: bool = False
    json_written: bool = False

    def start(self, *, wants_json: bool) -> None:
        self.wants_json, self.json_written = wants_json, False


INVOCATION = Invocation()


def fail(message: str, code: int = EXIT_USAGE) -> None:
    """Print one clear sentence to stderr and exit with `code` (with `--json`, also as JSON on stdout
    unless the command printed its JSON already: `Invocation`).

    `message` is plain text, never markup: messages hold paths, option values and commands to paste
    (`pip install 'gymverl[plot]'`), whose brackets rich would otherwise eat as styles."""
    if code == EXIT_INTERRUPTED:
        exiting_interrupted()
    error(message)
    if INVOCATION.wants_json and not INVOCATION.json_written:
        print_json({"ok": False, "exit_code": code, "message": message})
    raise typer.Exit(code)


_fail_now = fail  # the name the error handler above has always used


def exiting_interrupted() -> None:
    """Call when an interrupted command has cleaned up and only exits (130) now: run as a program,
    a further Ctrl-C, SIGTERM or SIGHUP then exits 130 at once instead of dying of SIGINT (-2).
    In-process (tests, CliRunner) nothing changes: the process goes on there."""
    if _AS_PROGRAM:
        exit_now_on_stop_signals()


def exit_interrupted(sentence: str) -> None:
    """After a command's Ctrl-C (or SIGTERM/SIGHUP) cleanup: print "interrupted: `sentence`." on
    stderr and exit 130; run as a program, a further Ctrl-C from here on also exits 130 at once."""
    exiting_interrupted()
    err_console.print(f"[yellow]interrupted[/]: {escape(sentence)}.")
    raise typer.Exit(EXIT_INTERRUPTED)


def error(message: str) -> None:
    """One error sentence (plain text) on stderr; with `fail` it also exits."""
    # soft_wrap: a long path must not break the sentence over lines (scripts grep for it).
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)


def warn(message: str) -> None:
    """One warning sentence (plain text, never markup) on stderr."""
    err_console.print(f"[bold yellow]warning:[/] {escape(message)}", highlight=False, soft_wrap=True)


def _finite(data: Any) -> Any:
    # Rewards are finite, but a sum or variance of rewards near 1.8e308 overflows a double.
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {k: _finite(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [_finite(v) for v in data]
    return data


def print_json(data: Any) -> None:
    """Machine-readable output for `--json` (stdout, nothing else on it): strict JSON, so a statistic
    that overflowed a double (the mean of rewards near 1.8e308) is null, never `Infinity` or `NaN`."""
    INVOCATION.json_written = True
    sys.stdout.write(json.dumps(_finite(data), indent=2, default=str, allow_nan=False) + "\n")


def version_callback(value: bool) -> None:
    """`--version`: print it and exit."""
    if value:
        console.print(f"gymverl {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        Optional[bool], typer.Option("--version", callback=version_callback, is_eager=True, help="Show the version and exit.")
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help=QUIET_HELP)] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help=VERBOSE_HELP)] = False,
) -> None:
    """Turn NeMo Gym rollouts into VeRL training data and training runs."""
    # Every command renders through these consoles; the exit code and errors carry the outcome.
    VERBOSITY.reset()
    VERBOSITY.set(quiet=quiet, verbose=verbose)
