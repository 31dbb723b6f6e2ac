"""The table helpers every render module uses, and the rejected-lines listing all commands print.

Names (tasks, agents, groups) are never folded mid-word: name columns keep them whole and the
number columns give way (80 columns and up), and a name heading a column wraps only after its own
separators (`_wrap_name`). Text that is data (paths, reasons, library sentences) is escaped.
"""

from __future__ import annotations

import math
import re
from typing import Any, Iterable

from rich.console import Console, ConsoleOptions, RenderResult
from rich.measure import Measurement
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from gymverl.cli import core


def _out(out: Console | None) -> Console:
    # Looked up at call time: `--quiet` sets core.console.quiet after this module is imported.
    return out if out is not None else core.console


def _verbose() -> bool:
    """The global `--verbose` (`core.VERBOSITY`): lists print in full, rejected lines with their code."""
    return core.VERBOSITY.verbose


def _fmt(x: Any, digits: int = 4) -> str:
    """A number for a table cell ('-' when missing)."""
    if x is None:
        return "-"
    if isinstance(x, float):
        if not math.isfinite(x):
            return "overflow"  # (rewards are finite: only a sum or variance of huge ones gets here)
        if abs(x) >= 1e15:
            return f"{x:.{digits}g}"
        return f"{x:.{digits}f}".rstrip("0").rstrip(".") if x != int(x) else f"{x:.0f}"
    return str(x)


def _red(n: int) -> str:
    """A count that is bad news when not 0."""
    return f"[red]{n}[/]" if n else "0"


def _signed(delta: float, digits: int) -> str:
    """`delta` with its sign, green when up, red when down (nothing for a change below 1e-12)."""
    ds = f"{delta:+.{digits}f}"
    color = "green" if delta > 1e-12 else ("red" if delta < -1e-12 else "")
    return f"[{color}]{ds}[/]" if color else ds


def _facts(title: str, *, notes: bool = False, right: bool = True) -> Table:
    """A headerless two-column table (bold label, value; `notes`: a third, dim column, whose paths
    break only after their separators: `Breakable`)."""
    t = (_Noted if notes else Titled)(title=title, show_header=False, title_justify="left")
    t.add_column(style="bold")
    t.add_column(justify="right" if right else "left")
    if notes:
        # fold: a path in a note is shown whole over several lines, never cut with "…" (`_Noted`
        # breaks it after its separators; only a piece wider than the column is folded)
        t.add_column(style="dim", overflow="fold")
    return t


def _name_column(t: Table, header: str = "task") -> None:
    """A column of names: the other columns of such tables are short numbers that never wrap
    (`_number_columns`), so names get all the width left; only a name wider than that is folded."""
    t.add_column(header, overflow="fold")


def _number_columns(t: Table, *headers: str) -> None:
    """Right-aligned columns of short numbers, never wrapped (the name column gets the width)."""
    for header in headers:
        t.add_column(header, justify="right", no_wrap=True)


_SEPARATORS = "_/-.:#"


def _wrap_name(name: str, width: int) -> str:
    """`name` as lines of at most `width` characters, broken only after its own separators
    (`math_with_` / `judge_simple_` / `agent`), never mid-word; a piece wider than `width` stays whole.
    A path breaks between its directories first (`.../out/` / `train.parquet`, not `train.` / `parquet`)."""
    pieces = _pieces(name, "/") if "/" in name else [name]
    pieces = [q for p in pieces for q in (_pieces(p, _SEPARATORS) if len(p) > width else [p])]
    lines = [""]
    for piece in pieces:
        if lines[-1] and len(lines[-1]) + len(piece) > width:
            lines.append("")
        lines[-1] += piece
    return "\n".join(lines)


def _pieces(name: str, separators: str) -> list[str]:
    """`name` cut after each of its `separators`."""
    pieces, piece = [], ""
    for ch in name:
        piece += ch
        if ch in separators:
            pieces.append(piece)
            piece = ""
    if piece:
        pieces.append(piece)
    return pieces


def _breaks(plain: str, width: int) -> list[int]:
    """Offsets in `plain` where a word wider than `width` (a path, a long name) is broken: only after
    its own separators (`_wrap_name`); rich wraps everything else at its spaces."""
    offsets: list[int] = []
    for m in _WORD.finditer(plain):
        if m.end() - m.start() > width:
            at = m.start()
            for line in _wrap_name(m.group(), width).split("\n")[:-1]:
                at += len(line)
                offsets.append(at)
    return offsets


_WORD = re.compile(r"\S+")


class Breakable:
    """Text (rich markup, or a `Text`) that wraps at spaces and breaks a word wider than the line
    (a path, a long name) only after its own separators, never mid-word.

    rich folds such a word wherever the line ends (`train.parqu` / `et` at 80 columns). Used for
    paths printed on their own line, for note cells, and for `Titled` titles: its width is the
    cell's or the console's, known only when rendered."""

    def __init__(self, text: str | Text, style: str = "") -> None:
        self.text = text if isinstance(text, Text) else Text.from_markup(text)
        self.style = style

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        text = self.text.copy()
        if self.style:
            text.stylize(self.style)
        offsets = _breaks(text.plain, options.max_width)
        if not offsets:
            yield text
            return
        # Each break becomes a new line (a line's style runs on); rich wraps the rest at spaces.
        yield Text("\n").join(text.divide(offsets))

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        plain = self.text.plain
        pieces = [p for word in plain.split() for p in _pieces(word, _SEPARATORS)]
        longest = max((len(line) for line in plain.splitlines()), default=0)
        return Measurement(min(max((len(p) for p in pieces), default=0), longest), longest)


class Titled(Table):
    """A rich Table whose title is printed above it at the console's width, as text (never markup).

    rich wraps a table's title at the table's own width, often narrow (a two-column summary), so the
    path in `stats: PATH` or `rescore: IN -> OUT` was folded mid-word at 80 columns; here it is a
    `Breakable` line of the console's width."""

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        title, self.title = self.title, None
        try:
            if title:
                yield from Breakable(Text(str(title)), style="table.title").__rich_console__(console, options)
            yield from super().__rich_console__(console, options)
        finally:
            self.title = title


class _Noted(Titled):
    """A `_facts` table with notes: a note (rich markup) is a `Breakable` cell."""

    def add_row(self, *cells: Any, **kwargs: Any) -> None:
        *head, note = cells
        super().add_row(*head, Breakable(note) if isinstance(note, str) and note else note, **kwargs)


def _bars(title: str, rows: Iterable[tuple[str, int]], width: int = 20) -> Table:
    """A histogram: label, count, and a bar scaled so the largest count is `width` blocks."""
    rows = list(rows)
    t = Titled(title=title, title_justify="left", show_header=False)
    t.add_column()
    t.add_column(justify="right")
    t.add_column()
    peak = max((n for _, n in rows), default=0) or 1
    for label, n in rows:
        t.add_row(label, str(n), "█" * round(width * n / peak))
    return t


def _by_reason(label: str, counts: dict[str, int], out: Console) -> None:
    if counts:
        out.print(f"[red]{label} by reason[/]: " + ", ".join(f"{k}: {v}" for k, v in counts.items()))


def render_rejections(
    examples: list[dict[str, Any]], total: int, by_reason: dict[str, int], *, title: str = "rejected lines",
    out: Console | None = None, more: str = "more (see --rejects)",
) -> None:
    """Render rejected input lines (line number + reason), how many more there are, and counts by reason."""
    out = _out(out)
    codes = _verbose() and any(rej.get("code") for rej in examples)
    r = Titled(title=title, title_justify="left")
    r.add_column("line", justify="right")
    if codes:  # --verbose: the code a script would match on (as in --rejects and --json)
        r.add_column("code", no_wrap=True)
    r.add_column("reason")
    for rej in examples:
        r.add_row(str(rej["line"]), *([escape(str(rej.get("code") or ""))] if codes else []), escape(rej["reason"]))
    if total > len(examples):
        r.add_row("…", *([""] if codes else []), f"{total - len(examples)} {more}")
    out.print(r)
    _by_reason("rejected", by_reason, out)


def render_rejects_written(rejects: Any, rejected: int, out: Console | None = None) -> None:
    """Where `--rejects` put the rejected lines (nothing when there were none or no --rejects)."""
    if rejects and rejected:
        _out(out).print(Breakable(f"rejected lines written to [bold]{escape(str(rejects))}[/]"))
