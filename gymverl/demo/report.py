"""How the demo reports: each step's result, the whole report, the reporters, printed paths and commands."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

from gymverl.jsonl import jsonable

OK, SKIPPED, UNAVAILABLE, FAILED = "ok", "skipped", "unavailable", "failed"


class Unavailable(Exception):
    """A gymverl part a step needs is not in this install (the step is reported, not faked)."""


@dataclass
class StepResult:
    """The outcome of one step: status, duration, a one-line summary, its outputs."""

    name: str
    title: str
    status: str = OK
    seconds: float = 0.0
    summary: str = ""
    outputs: list[Path] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {
            "name": self.name,
            "title": self.title,
            "status": self.status,
            "seconds": round(self.seconds, 2),
            "summary": self.summary,
            "outputs": [str(p) for p in self.outputs],
            "details": jsonable(self.details),
        }


@dataclass
class DemoReport:
    """All step results, in order, and where everything was written."""

    out: Path
    steps: list[StepResult] = field(default_factory=list)
    seconds: float = 0.0
    interrupted: bool = False

    @property
    def ok(self) -> bool:
        """True when no step failed or was unavailable (and the run was not interrupted)."""
        return not self.interrupted and all(s.status in (OK, SKIPPED) for s in self.steps)

    def step(self, name: str) -> StepResult | None:
        """The result of step `name`, if it ran."""
        return next((s for s in self.steps if s.name == name), None)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (also written to OUT/demo.json)."""
        return {
            "out": str(self.out),
            "ok": self.ok,
            "interrupted": self.interrupted,
            "seconds": round(self.seconds, 2),
            "steps": [s.to_dict() for s in self.steps],
        }


class Reporter(Protocol):
    """Where the demo tells the user what is happening (the CLI renders it with rich)."""

    def start(self, index: int, total: int, name: str, title: str) -> None: ...
    def info(self, message: str) -> None: ...
    def done(self, result: StepResult) -> None: ...
    def show_stats(self, data: dict[str, Any]) -> None: ...


class PlainReporter:
    """A Reporter printing plain lines (library use, logs)."""

    def __init__(self, write: Callable[[str], None] = print) -> None:
        self.write = write

    def start(self, index: int, total: int, name: str, title: str) -> None:
        """A step begins."""
        self.write(f"[{index}/{total}] {title}")

    def info(self, message: str) -> None:
        """A line of detail inside a step."""
        self.write(f"    {message}")

    def done(self, result: StepResult) -> None:
        """A step ended."""
        self.write(f"    -> {result.status} ({result.seconds:.1f} s): {result.summary}")
        for p in result.outputs:
            self.write(f"       {display_path(p)}")

    def show_stats(self, data: dict[str, Any]) -> None:
        """The stats step's numbers (a few lines here; the CLI shows its tables)."""
        o = data["overall"]
        pk = ", ".join(f"pass@{r['k']} {r['pass_at_k']:.3f}" for r in o["pass_at_k"] if r["pass_at_k"] is not None)
        self.write(f"    {o['rollouts']} rollouts, {o['tasks']} tasks, mean reward {o['reward']['mean']:.3f}, {pk}")


def display_path(p: str | os.PathLike[str]) -> str:
    """`p` relative to the working directory when it lies below it (shorter to read), else as is."""
    path = Path(p)
    with contextlib.suppress(ValueError):
        if path.is_absolute():
            return str(path.relative_to(Path.cwd())) or "."
    return str(path)


def _shell(*args: Any) -> str:
    import shlex

    return shlex.join(display_path(a) if isinstance(a, Path) else str(a) for a in args)
