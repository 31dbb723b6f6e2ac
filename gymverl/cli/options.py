"""Option definitions shared by the commands: one spelling per concept, checked numbers, input arguments.

`opt("output", help=...)` is `--output/-o` in every command that writes a file or directory; the
spellings (and, for options whose meaning is the same everywhere, the help text) live in
`SPELLINGS`/`HELP` once, and the input arguments' names (`arg("rollouts")` is ROLLOUTS) in `ARGUMENTS`. Old spellings still parse through `core.OPTION_ALIASES`. Every numeric
option takes `callback=number(...)` (finite, in range; `tests/test_options.py` checks all of them).
"""

from __future__ import annotations

import contextlib
import inspect
import math
from pathlib import Path
from typing import Any, Optional

import typer

from gymverl.errors import UsageError
from gymverl.inputs import Input, open_input
from gymverl.jsonl import DEFAULT_MAX_LINE_BYTES

# concept -> its option names, the same in every command that has it.
SPELLINGS: dict[str, tuple[str, ...]] = {
    "output": ("--output", "-o"),
    "json": ("--json",),
    "rejects": ("--rejects",),
    "overwrite": ("--overwrite",),
    "resume": ("--resume",),
    "dry_run": ("--dry-run",),
    "tasks": ("--tasks",),
    "side_files": ("--side-files/--no-side-files",),
    "strict": ("--strict",),
    "model": ("--model", "-m"),
    "val": ("--val",),
    "nproc": ("--nproc",),
    "nemo_gym_env": ("--nemo-gym-env",),
    "show_tasks": ("--show-tasks",),
    "max_line_mb": ("--max-line-mb",),
    "input_kind": ("--input-kind",),
    "concurrency": ("--concurrency", "-c"),
    "limit": ("--limit",),
    "min_reward": ("--min-reward",),
    "best_of_n": ("--best-of-n",),
    "val_fraction": ("--val-fraction",),
}

# Help text of the concepts that mean the same in every command (others say what they mean there).
HELP = {
    "json": "Print the summary as JSON (for scripts).",
    "rejects": "Write every rejected line as {line, code, reason, raw} JSONL here.",
    "max_line_mb": "Reject lines longer than this (MB).",
    "model": "Base model: a local Hugging Face model directory (or a Hub id).",
}

# input argument concept -> its name in usage lines, help and errors, the same in every command:
# ROLLOUTS is a rollout (or tasks) JSONL file, DATA a parquet file gymverl wrote, OVERRIDES VeRL's
# key=value words after `--`.
ARGUMENTS = {"rollouts": "ROLLOUTS", "data": "DATA", "overrides": "OVERRIDES"}


def arg(concept: str, help: str, **kw: Any) -> Any:
    """A `typer.Argument` named `ARGUMENTS[concept]` in --help and errors, with `help`; `kw` passes on."""
    kw.setdefault("show_default", False)
    return typer.Argument(metavar=ARGUMENTS[concept], help=help, **kw)


# --max-line-mb's default, from the library's one constant.
MAX_LINE_MB = DEFAULT_MAX_LINE_BYTES / 1e6


def opt(concept: str, help: str | None = None, **kw: Any) -> Any:
    """A `typer.Option` spelt as `SPELLINGS[concept]`, with `help` (default: `HELP[concept]`).

    Options with fixed bounds get their `number()` callback here too (`max_line_mb`); `kw` passes on
    to typer (callback, rich_help_panel, show_default, envvar, ...)."""
    if concept == "max_line_mb":
        kw.setdefault("callback", number(above=0, max=100_000, unit="MB"))
    return typer.Option(*SPELLINGS[concept], help=help if help is not None else HELP[concept], **kw)


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


def user_path(inp: Input | None) -> Path | None:
    """The user's file behind an opened input, for output-vs-input checks (a pipe has none)."""
    return None if inp is None or inp.spooled else inp.path
