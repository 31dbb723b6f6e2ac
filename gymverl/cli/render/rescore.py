"""What rescore prints: totals, the per-task before/after table, failures and rejections.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.markup import escape

from gymverl.cli.render.tables import Titled, _by_reason, _facts, _name_column, _number_columns, _out, _red, _signed, _verbose


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
        which = "" if len(tasks) <= show_tasks else f"; the {show_tasks} most changed of {len(tasks)}"
        pt = Titled(title=f"per task (mean reward before -> after, rows changed{which})", title_justify="left")
        _name_column(pt)
        # Short headers that never wrap: the task names get the width (they were folded mid-word at 80 columns).
        _number_columns(pt, "rows", "before", "after", "delta", "changed")
        for r in shown:
            delta = r["mean_after"] - r["mean_before"]
            pt.add_row(escape(r["task"]), str(r["n"]), f"{r['mean_before']:.3f}", f"{r['mean_after']:.3f}", _signed(delta, 3), str(r["changed"]) if r["changed"] else "")
        out.print(pt)
    if d["failed"] or d["rejected"]:
        f = Titled(title=f"failures and rejections (all in {d['failures']})", title_justify="left")
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
