"""What validate, collect and stats print: validation summaries, the collection report, reward statistics and their comparison.
"""

from __future__ import annotations

import math

from typing import Any

from rich.cells import cell_len
from rich.console import Console
from rich.markup import escape

from gymverl.cli.render.tables import Titled, _bars, _facts, _fmt, _name_column, _number_columns, _out, _red, _verbose, _wrap_name, render_rejections


def render_validation(summary: dict[str, Any], title: str = "validate", out: Console | None = None) -> None:
    """Render a validation summary (from `ValidationSummary.to_dict`) as rich tables. A tasks file's
    (`input_kind` "tasks") has no rollouts per task and no responses: those rows are left out."""
    out = _out(out)
    rollouts = summary.get("input_kind") != "tasks"
    t = _facts(f"{title}: {summary['path']}")
    t.add_row("lines", str(summary["lines"]))
    t.add_row("valid", f"[green]{summary['valid']}[/]")
    t.add_row("rejected", _red(summary["rejected"]))
    if summary.get("blank"):
        t.add_row("blank lines (skipped)", str(summary["blank"]))
    t.add_row("tasks", str(summary["tasks"]))
    rpt = summary["rollouts_per_task"]
    if summary["tasks"] and rollouts:
        t.add_row("rollouts per task", f"min {rpt['min']}  mean {rpt['mean']:.2f}  max {rpt['max']}")
    rw = summary["reward"]
    if rw["mean"] is not None:
        mean = f"{rw['mean']:.4f}" if math.isfinite(rw["mean"]) else "overflow"  # (a sum of rewards near 1.8e308)
        t.add_row("reward", f"mean {mean}  min {rw['min']:g}  max {rw['max']:g}")
        if rw["out_of_0_1"]:
            t.add_row("rewards outside 0-1", str(rw["out_of_0_1"]))
    if rollouts:
        t.add_row("incomplete responses", f"[yellow]{summary['incomplete']}[/]" if summary["incomplete"] else "0")
    if summary.get("masked"):
        t.add_row("mask_sample", str(summary["masked"]))
    for key, label in (
        ("malformed_tool_calls", "malformed tool calls (arguments not a JSON object)"),
        ("empty_answers", "no final answer (empty or reasoning only)"),
        ("no_prompt", "no prompt (blank, or starts with a model turn)"),
    ):
        found = summary.get(key) or {}
        if found.get("rollouts"):
            lines = ", ".join(map(str, found["lines"])) + (", ..." if found["rollouts"] > len(found["lines"]) else "")
            t.add_row(label, f"[yellow]{found['rollouts']}[/] ({'line' if found['rollouts'] == 1 else 'lines'} {lines})")
    uncarried = summary.get("uncarried_prompts") or {}
    if uncarried.get("rollouts"):
        n, lines = uncarried["rollouts"], ", ".join(map(str, uncarried["lines"]))
        why = ", ".join(f"{code} {k}" for code, k in uncarried["by_reason"].items())
        more = ", ..." if n > len(uncarried["lines"]) else ""
        t.add_row("prompt no row can carry (to-parquet rejects)", f"[yellow]{n}[/] ({why}; {'line' if n == 1 else 'lines'} {lines}{more})")
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
        t.add_row("failed (side file)", _red(col["failed"]), note)
    if col["expected"] is not None:
        t.add_row("missing", _red(col["missing"]), "neither present nor failed")
        t.add_row("tasks without rollouts", _red(col["tasks_without_rollouts"]), "")
    if col["extra"]:
        t.add_row("not in materialized inputs", f"[yellow]{col['extra']}[/]", "")
    out.print(t)
    rows = col.get("incomplete_tasks") or []
    if rows and (len(rows) <= show_tasks or _verbose()):
        pt = Titled(title=f"incomplete tasks ({col['tasks_incomplete']})", title_justify="left")
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
        ("failed in file", _red(d["failed"])),
    ]
    if d["masked"]:
        rows.append(("masked (left out)", f"[yellow]{d['masked']}[/]"))
    if d.get("malformed_tool_calls"):
        rows.append(("malformed tool calls", f"[yellow]{d['malformed_tool_calls']}[/]"))
    if d.get("empty_answers"):
        rows.append(("no final answer", f"[yellow]{d['empty_answers']}[/]"))
    if d.get("no_prompt"):
        rows.append(("no prompt", f"[yellow]{d['no_prompt']}[/]"))
    if d.get("tasks_fully_masked"):
        rows.append(("tasks fully masked", _fmt(d["tasks_fully_masked"])))
    unit = "tokens" if ln["unit"] == "output_tokens" else "chars"
    if ln["count"]:
        rows += [
            (f"{unit} mean / median", f"{_fmt(ln['mean'], 1)} / {_fmt(ln['median'], 1)}"),
            (f"{unit} p90 / max", f"{_fmt(ln['p90'], 1)} / {_fmt(ln['max'], 1)}"),
            (f"{unit} right / wrong", f"{_fmt(ln['mean_correct'], 1)} / {_fmt(ln['mean_incorrect'], 1)}"),
        ]
    return rows


def render_stats(data: dict[str, Any], show_tasks: int = 30, compact: bool = False, out: Console | None = None) -> None:
    """Render `RolloutStats.to_dict()` as rich tables (`compact`: the summary and per-task tables only)."""
    out = _out(out)
    o = data["overall"]
    title = f"stats: {data['path']}  (correct = reward >= {data['threshold']:g})"
    t = Titled(title=title, title_justify="left")
    metric_width, all_width = 19, 11
    t.add_column("metric", style="bold", no_wrap=True, min_width=metric_width)
    t.add_column("all", justify="right", no_wrap=True, min_width=all_width)
    groups = data["groups"]
    columns = [_stats_rows(o)] + [_stats_rows(g) for g in groups]
    # Group names head their columns; on a narrow terminal they wrap at their own separators, in
    # the room the two no_wrap columns leave: each column costs its text, 2 of padding and 1 of border.
    metric_width = max(metric_width, *(cell_len(label) for label, _ in columns[0]))
    all_width = max(all_width, *(cell_len(value) for _, value in columns[0]))
    used = 1 + (3 + metric_width) + (3 + all_width)
    room = (out.width - used - 3 * len(groups)) // max(len(groups), 1)
    for g in groups:
        t.add_column(escape(_wrap_name(g["name"], max(room, 1))), justify="right", overflow="fold")
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
        out.print(f"[dim]length = {note}; right / wrong: mean of each[/]")

    per_task = data.get("per_task") or []
    if per_task and (len(per_task) <= show_tasks or _verbose()):
        pt = Titled(title="per task", title_justify="left")
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
    t = Titled(title=f"before: {cmp['before']}  ->  after: {cmp['after']}", title_justify="left")
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
        c = Titled(title="largest per-task changes (pass rate and mean reward: was -> now)", title_justify="left")
        _name_column(c)
        # Short headers that never wrap: the task names get the width (they were folded mid-word at 80 columns).
        _number_columns(c, "pass was", "now", "reward was", "now")
        for ch in cmp["top_changes"]:
            c.add_row(
                escape(ch["task"]), _fmt(ch["pass_rate_before"], 3), _fmt(ch["pass_rate_after"], 3),
                _fmt(ch["mean_reward_before"], 3), _fmt(ch["mean_reward_after"], 3),
            )
        out.print(c)
