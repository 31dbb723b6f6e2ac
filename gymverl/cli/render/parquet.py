"""What to-parquet and preview print: the conversion summary, and one row as training sees it.
"""

from __future__ import annotations

import json
from typing import Any

from rich.console import Console
from rich.markup import escape

from gymverl.cli import core
from gymverl.cli.render.tables import Breakable, _facts, _out, _red, _verbose, render_rejections


def render_to_parquet(summary: dict[str, Any], out: Console | None = None) -> None:
    """Render a conversion summary (from `ConvertSummary.to_dict`) as rich tables."""
    from gymverl.select import RULES

    out = _out(out)
    t = _facts(f"to-parquet ({summary['format']}{', dry run' if summary['dry_run'] else ''}): {summary['input']}", notes=True)
    kind = summary["input_kind"]
    if kind == "materialized_inputs":
        kind = "NeMo Gym materialized inputs: one line per (task, repeat), one row per task"
    t.add_row("input lines", str(summary["lines"]), kind)
    t.add_row("rejected", _red(summary["rejected"]), "unusable lines (see below)" if summary["rejected"] else "unusable lines")
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
                out.print(Breakable(f"{split}: [bold]{escape(path)}[/]"))
            continue
        shown = paths[0] if len(paths) == 1 else f"{paths[0]} … ({len(paths)} shards)"
        out.print(Breakable(f"{split}: [bold]{escape(shown)}[/]"))


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
