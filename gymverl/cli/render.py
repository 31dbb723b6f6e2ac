"""Every rich table and summary the commands print, in one place.

Each `render_*` takes a command's summary (the library's `to_dict()`, the same data `--json` prints)
and an optional `out` console (default: stdout's, `core.console`). Names (tasks, agents, groups)
are never folded mid-word: their columns keep them whole and the numbers give way (80 columns and
up); text that is data (paths, reasons, library sentences) is escaped, never read as markup.
"""

from __future__ import annotations

import json
from typing import Any, Iterable

from rich.console import Console
from rich.markup import escape
from rich.table import Table

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
        return f"{x:.{digits}f}".rstrip("0").rstrip(".") if x != int(x) or abs(x) >= 1e15 else f"{x:.0f}"
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
    """A headerless two-column table (bold label, value; `notes`: a third, dim column)."""
    t = Table(title=title, show_header=False, title_justify="left")
    t.add_column(style="bold")
    t.add_column(justify="right" if right else "left")
    if notes:
        t.add_column(style="dim")
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
    (`math_with_` / `judge_simple_` / `agent`), never mid-word; a piece wider than `width` stays whole."""
    pieces, piece = [], ""
    for ch in name:
        piece += ch
        if ch in _SEPARATORS:
            pieces.append(piece)
            piece = ""
    if piece:
        pieces.append(piece)
    lines = [""]
    for piece in pieces:
        if lines[-1] and len(lines[-1]) + len(piece) > width:
            lines.append("")
        lines[-1] += piece
    return "\n".join(lines)


def _bars(title: str, rows: Iterable[tuple[str, int]], width: int = 20) -> Table:
    """A histogram: label, count, and a bar scaled so the largest count is `width` blocks."""
    rows = list(rows)
    t = Table(title=title, title_justify="left", show_header=False)
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
    r = Table(title=title, title_justify="left")
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
        _out(out).print(f"rejected lines written to [bold]{escape(str(rejects))}[/]")


# ---- validate, collect -------------------------------------------------------------------------


def render_validation(summary: dict[str, Any], title: str = "validate", out: Console | None = None) -> None:
    """Render a validation summary (from `ValidationSummary.to_dict`) as rich tables."""
    out = _out(out)
    t = _facts(f"{title}: {summary['path']}")
    t.add_row("lines", str(summary["lines"]))
    t.add_row("valid", f"[green]{summary['valid']}[/]")
    t.add_row("rejected", _red(summary["rejected"]))
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
        t.add_row("agents", escape(", ".join(f"{k} ({v})" for k, v in agents.items())))
    out.print(t)
    if rw["mean"] is not None and any(rw["histogram"].values()):
        out.print(_bars("reward histogram", rw["histogram"].items()))
    if summary["rejected"]:
        render_rejections(summary["rejections"], summary["rejected"], summary["rejected_by_reason"], out=out)


def render_collection(col: dict[str, Any] | None, show_tasks: int = 30, out: Console | None = None) -> None:
    """Render `sidecars.CollectionReport.to_dict()`: expected vs present vs failed rollouts per task."""
    if not col:
        return
    out = _out(out)
    t = _facts("collection (NeMo Gym side files)", notes=True)
    if col["expected"] is not None:
        t.add_row("expected rollouts", str(col["expected"]), f"{col['tasks_expected']} tasks, from {col['materialized_inputs']}")
    t.add_row("present", str(col["present"]), "in the rollouts file")
    f = col.get("failures")
    if f:
        note = f"from {f['path']}" + (f"; {f['superseded_rollouts']} earlier failures were retried successfully" if f["superseded_rollouts"] else "")
        t.add_row("failed", _red(col["failed"]), note)
    if col["expected"] is not None:
        t.add_row("missing", _red(col["missing"]), "neither present nor failed")
        t.add_row("tasks without rollouts", _red(col["tasks_without_rollouts"]), "")
    if col["extra"]:
        t.add_row("not in materialized inputs", f"[yellow]{col['extra']}[/]", "")
    out.print(t)
    rows = col.get("incomplete_tasks") or []
    if rows and (len(rows) <= show_tasks or _verbose()):
        pt = Table(title=f"incomplete tasks ({col['tasks_incomplete']})", title_justify="left")
        keys = ("task_index", "expected", "present", "failed", "missing")
        for key in keys:
            pt.add_column(key.replace("_", " "), justify="right")
        for r in rows:
            pt.add_row(*(_fmt(r[k]) for k in keys))
        out.print(pt)


# ---- stats -------------------------------------------------------------------------------------


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
        ("failed", _red(d["failed"])),
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


def render_stats(data: dict[str, Any], show_tasks: int = 30, compact: bool = False, out: Console | None = None) -> None:
    """Render `RolloutStats.to_dict()` as rich tables (`compact`: the summary and per-task tables only)."""
    out = _out(out)
    o = data["overall"]
    title = f"stats: {data['path']}  (correct = reward >= {data['threshold']:g})"
    t = Table(title=title, title_justify="left")
    t.add_column("metric", style="bold", no_wrap=True, min_width=19)
    t.add_column("all", justify="right", no_wrap=True, min_width=11)
    groups = data["groups"]
    # Group names head their columns; on a narrow terminal they wrap at their own separators.
    room = (out.width - 19 - 13 - 3 * (len(groups) + 2)) // max(len(groups), 1)
    for g in groups:
        t.add_column(escape(_wrap_name(g["name"], max(room, 8))), justify="right", overflow="fold")
    columns = [_stats_rows(o)] + [_stats_rows(g) for g in groups]
    for label, _ in columns[0]:
        t.add_row(label, *(dict(col).get(label, "-") for col in columns))
    out.print(t)
    if data.get("blank"):
        out.print(f"[dim]{data['blank']} blank lines skipped (not rollouts, not rejected)[/]")
    ln = o["length"]
    if ln["count"]:
        note = (
            "output tokens from response.usage"
            if ln["unit"] == "output_tokens"
            else "characters of response text (not every rollout has response.usage.output_tokens)"
        )
        out.print(f"[dim]length = {note}[/]")

    per_task = data.get("per_task") or []
    if per_task and (len(per_task) <= show_tasks or _verbose()):
        pt = Table(title="per task", title_justify="left")
        _name_column(pt)
        _number_columns(pt, "n", "ok", "pass")
        pt.add_column("", no_wrap=True, min_width=10)
        _number_columns(pt, "reward", "cut")
        masked = any(r.get("masked") for r in per_task)
        if masked:
            _number_columns(pt, "masked")
        for r in per_task:
            bar = "█" * round(10 * (r["pass_rate"] or 0))
            cells = [
                escape(r["task"]), str(r["n"]), str(r["correct"]), _fmt(r["pass_rate"], 3), f"[green]{bar}[/]",
                _fmt(r["mean_reward"], 3), str(r["incomplete"]) if r["incomplete"] else "",
            ]
            if masked:
                cells.append(str(r["masked"]) if r["masked"] else "")
            pt.add_row(*cells)
        out.print(pt)
    if compact:
        return
    if o["tasks"]:
        out.print(_bars("tasks by pass rate", data["pass_rate_distribution"].items()))
    hist = o["reward"]["histogram"]
    if o["rollouts"] and o["reward"]["values"] is None:
        out.print(_bars("reward histogram", ((f"{b['lo']:.3g} - {b['hi']:.3g}", b["count"]) for b in hist)))
    elif o["rollouts"]:
        vals = ", ".join(f"{k}: {v}" for k, v in o["reward"]["values"].items())
        out.print(f"reward values: {vals}")
    if data["rejected"]:
        render_rejections(
            data["rejections"], data["rejected"], {}, title=f"rejected lines ({data['rejected']}, not counted above)", out=out,
            more="more (`gymverl validate --rejects FILE` lists all)",
        )


def render_comparison(cmp: dict[str, Any], out: Console | None = None) -> None:
    """Render `compare_stats()` as a before/after table."""
    out = _out(out)
    t = Table(title=f"before: {cmp['before']}  ->  after: {cmp['after']}", title_justify="left")
    t.add_column("metric", style="bold")
    for name in ("before", "after", "delta"):
        t.add_column(name, justify="right")
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
    out.print(t)
    tk = cmp["tasks"]
    out.print(
        f"tasks in both files: {tk['in_both']}  improved [green]{tk['improved']}[/]  regressed [red]{tk['regressed']}[/]"
        f"  unchanged {tk['unchanged']}"
        + (f"  only before {tk['only_before']}" if tk["only_before"] else "")
        + (f"  only after {tk['only_after']}" if tk["only_after"] else "")
    )
    if cmp["top_changes"]:
        c = Table(title="largest per-task changes", title_justify="left")
        _name_column(c)
        for name in ("pass rate before", "after", "mean reward before", "after"):
            c.add_column(name, justify="right")  # headers wrap at their spaces
        for ch in cmp["top_changes"]:
            c.add_row(
                escape(ch["task"]), _fmt(ch["pass_rate_before"], 3), _fmt(ch["pass_rate_after"], 3),
                _fmt(ch["mean_reward_before"], 3), _fmt(ch["mean_reward_after"], 3),
            )
        out.print(c)


# ---- rescore -----------------------------------------------------------------------------------


def render_rescore(d: dict[str, Any], show_tasks: int = 20, out: Console | None = None) -> None:
    """Render `RescoreSummary.to_dict()`: totals, per-task before/after, failures, rejections."""
    from gymverl.sidecars import JOIN_REASONS

    out = _out(out)
    t = _facts(f"rescore: {d['input']} -> {d['output']}")
    t.add_row("lines", str(d["lines"]))
    t.add_row("rescored", f"[green]{d['rescored']}[/]")
    t.add_row("failed (not written)", _red(d["failed"]))
    t.add_row("rejected (invalid, not sent)", _red(d["rejected"]))
    if d.get("blank"):
        t.add_row("blank lines (skipped)", str(d["blank"]))
    t.add_row("rewards changed", f"{d['changed']}  (up {d['went_up']}, down {d['went_down']})")
    if d["mean_before"] is not None:
        delta = d["mean_after"] - d["mean_before"]
        t.add_row("mean reward before -> after", f"{d['mean_before']:.4f} -> {d['mean_after']:.4f}  " + _signed(delta, 4))
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
    out.print(t)
    tasks = d.get("per_task") or []
    if tasks:
        show_tasks = len(tasks) if _verbose() else show_tasks
        shown = sorted(tasks, key=lambda r: -abs(r["mean_after"] - r["mean_before"]))[:show_tasks]
        shown.sort(key=lambda r: r["task"])
        title = "per task" if len(tasks) <= show_tasks else f"per task ({show_tasks} most changed of {len(tasks)})"
        pt = Table(title=title, title_justify="left")
        _name_column(pt)
        for col in ("rows", "mean before", "mean after", "delta", "rows changed"):
            pt.add_column(col, justify="right")  # headers wrap at their spaces
        for r in shown:
            delta = r["mean_after"] - r["mean_before"]
            pt.add_row(escape(r["task"]), str(r["n"]), f"{r['mean_before']:.3f}", f"{r['mean_after']:.3f}", _signed(delta, 3), str(r["changed"]) if r["changed"] else "")
        out.print(pt)
    if d["failed"] or d["rejected"]:
        f = Table(title=f"failures and rejections (all in {d['failures']})", title_justify="left")
        f.add_column("line", justify="right")
        f.add_column("kind")
        f.add_column("reason")
        f.add_column("attempts", justify="right")
        for ex in d["examples"]:
            f.add_row(str(ex["line"]), str(ex["kind"]), escape(str(ex["error"] or ex["reason"])), str(ex["attempts"] or ""))
        more = d["failed"] + d["rejected"] - len(d["examples"])
        if more > 0:
            f.add_row("…", "", f"{more} more in {d['failures']}", "")
        out.print(f)
        _by_reason("failed", d["failures_by_reason"], out)
        _by_reason("rejected", d["rejected_by_reason"], out)


# ---- to-parquet, preview -----------------------------------------------------------------------


def render_to_parquet(summary: dict[str, Any], out: Console | None = None) -> None:
    """Render a conversion summary (from `ConvertSummary.to_dict`) as rich tables."""
    from gymverl.select import RULES

    out = _out(out)
    t = _facts(f"to-parquet ({summary['format']}{', dry run' if summary['dry_run'] else ''}): {summary['input']}", notes=True)
    kind = summary["input_kind"]
    if kind == "materialized_inputs":
        kind = "NeMo Gym materialized inputs: one line per (task, repeat), one row per task"
    t.add_row("input lines", str(summary["lines"]), kind)
    t.add_row("rejected", _red(summary["rejected"]), "unusable lines (see below)")
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
    out.print(t)
    if summary["rejected"]:
        render_rejections(summary["rejections"], summary["rejected"], summary["rejected_by_reason"], out=out)
    for split, paths in summary["files"].items():
        if _verbose():  # every shard, one per line
            for path in paths:
                out.print(f"{split}: [bold]{escape(path)}[/]", soft_wrap=True)
            continue
        shown = paths[0] if len(paths) == 1 else f"{paths[0]} … ({len(paths)} shards)"
        out.print(f"{split}: [bold]{escape(shown)}[/]")


TRAINED_STYLE = "bold black on green"


def render_section(section: Any, out: Console | None = None) -> None:
    """Render one rendered sequence of a preview, its trained spans in TRAINED_STYLE."""
    from rich.panel import Panel
    from rich.text import Text

    text = Text()
    pos = 0
    for span in section.trained:
        text.append(section.text[pos : span.char_start])
        text.append(section.text[span.char_start : span.char_end], style=TRAINED_STYLE)
        pos = span.char_end
    text.append(section.text[pos:])
    trained = f", {section.trained_tokens} trained" if section.trained else ""
    _out(out).print(Panel(text, title=f"{section.name} ({section.tokens} tokens{trained})", title_align="left"))


def render_preview(pv: Any, out: Console | None = None) -> None:
    """Render a `gymverl.preview.Preview` for the terminal."""
    out = _out(out)
    t = _facts(f"preview ({pv.format}): {pv.path}", right=False)
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
    out.print(t)
    for section in pv.sections:
        render_section(section, out)
    if pv.format == "rl":
        if pv.verify is None:
            out.print("[dim]the policy trains on what it generates; --answer TEXT shows the /verify request compute_score would send for it.[/]")
        else:
            out.print(f"/verify request for --answer (routed by agent [bold]{escape(str(pv.verify.agent))}[/]; not sent):")
            out.print_json(json.dumps(pv.verify.body, default=str))
    elif pv.sections and pv.sections[0].trained is not None:
        out.print(f"[{TRAINED_STYLE}] trained [/] tokens are the ones the loss covers; the rest is context.")
    for w in pv.warnings:
        core.warn(w)


# ---- train-offline, train-online, demo ----------------------------------------------------------


def render_train_plan(plan: Any, out: Console | None = None) -> None:
    """The planned VeRL command and its data arithmetic; the command prints as one line to paste back."""
    out = _out(out)
    t = _facts("train-offline plan", right=False)
    o = plan.options
    t.add_row("device", f"{o.device} ({o.nnodes} node(s) x {o.nproc} process(es))")
    t.add_row("train rows", str(plan.train_rows))
    if plan.val_rows is not None:
        t.add_row("val rows", str(plan.val_rows))
    t.add_row("batch size", f"{plan.batch_size} global, micro {o.micro_batch_size} per process")
    t.add_row("steps", f"{plan.steps_per_epoch} per epoch x {o.epochs} epoch(s) = {plan.total_steps}")
    if o.lora_rank:
        t.add_row("LoRA", f"rank {o.lora_rank}, alpha {o.lora_alpha if o.lora_alpha is not None else 2 * o.lora_rank}, modules {o.lora_target_modules}")
    t.add_row("output", escape(str(plan.out)))
    for note in plan.notes:
        t.add_row("note", f"[yellow]{escape(note)}[/]")
    out.print(t)
    out.print("[bold]command[/]:")
    # markup=False: an override like trainer.logger=[console] is shell text, not a rich style.
    out.print(plan.shell(), highlight=False, soft_wrap=True, markup=False)


def render_train_result(result: Any, out: Console | None = None) -> None:
    """Summary of a finished run."""
    out = _out(out)
    t = _facts("train-offline", right=False)
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
        t.add_row("checkpoint", escape(str(result.checkpoint)))
    if result.hf_model:
        t.add_row("Hugging Face model", f"[green]{escape(str(result.hf_model))}[/]")
    t.add_row("log", escape(str(result.log)))
    out.print(t)
    if result.hf_model:
        out.print(f"Hugging Face model: [bold green]{escape(str(result.hf_model))}[/]")


def render_online_plan(plan: Any, out: Console | None = None) -> None:
    """train-online's plan: rows, servers (started or given), notes, the main_ppo command (one line to paste back)."""
    out = _out(out)
    o = plan.options
    t = _facts("train-online plan", right=False)
    from gymverl.online import ROLLOUT_ENGINES

    where = f"on {o.nproc} GPU(s)" if ROLLOUT_ENGINES[o.rollout].gpu else "on the CPU (smoke mode)"
    t.add_row("rollout", f"{o.rollout} {where}, {o.algorithm}, {o.n_samples} episodes per task")
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
    out.print(plan.shell(), highlight=False, soft_wrap=True, markup=False)


def render_online_result(result: Any, out: Console | None = None) -> None:
    """Summary of a finished train-online run."""
    out = _out(out)
    t = _facts("train-online", right=False)
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


class DemoReporter:
    """Renders the demo's steps with rich: a rule per step, details, and a status line."""

    STYLE = {"ok": "green", "skipped": "yellow", "unavailable": "magenta", "failed": "red"}
    MARK = {"ok": "✓", "skipped": "–", "unavailable": "?", "failed": "✗"}

    def __init__(self, out: Console | None = None, quiet_stats: bool = False) -> None:
        self.out = _out(out)
        self.quiet_stats = quiet_stats

    def start(self, index: int, total: int, name: str, title: str) -> None:
        self.out.rule(f"[bold][{index}/{total}] {title}", align="left")

    def info(self, message: str) -> None:
        style = "dim" if message.startswith("same as:") else ("yellow" if "warning" in message else "")
        self.out.print(f"  [{style}]{escape(message)}[/]" if style else f"  {escape(message)}", highlight=False, soft_wrap=True)

    def done(self, result: Any) -> None:
        from gymverl.demo import display_path

        style = self.STYLE.get(result.status, "")
        self.out.print(
            f"  [{style}]{self.MARK.get(result.status, '')} {result.status}[/] [dim]({result.seconds:.1f} s)[/] {escape(result.summary)}",
            highlight=False,
        )
        for p in result.outputs:
            self.out.print(f"    [dim]->[/] {escape(display_path(p))}", highlight=False)

    def show_stats(self, data: dict[str, Any]) -> None:
        if not self.quiet_stats:
            render_stats(data, show_tasks=10, compact=True, out=self.out)


def render_demo(report: Any, out: Console | None = None) -> None:
    """The demo's closing table: one row per step, and where the step report is."""
    out = _out(out)
    t = Table(title=f"demo: {report.seconds:.0f} s, outputs in {report.out}", title_justify="left")
    t.add_column("step", no_wrap=True)
    t.add_column("status", no_wrap=True)
    t.add_column("time", justify="right", no_wrap=True)
    t.add_column("result")
    for s in report.steps:
        style = DemoReporter.STYLE.get(s.status, "")
        t.add_row(s.name, f"[{style}]{s.status}[/]", f"{s.seconds:.1f} s", escape(s.summary))
    out.print(t)
    out.print(f"step report: [bold]{escape(str(report.out / 'demo.json'))}[/]")
