"""What train-offline, train-online and demo print: plans (with a command to paste back), results, the demo's steps.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.text import Text
from rich.table import Table

from gymverl.cli.render.rollouts import render_stats
from gymverl.cli.render.tables import Breakable, Titled, _facts, _out
from gymverl.train import token_budget


def _print_plan(t: Table, plan: Any, out: Console) -> None:
    """The end of a train plan: its output directory and notes in `t`, then the VeRL command as one
    line to paste back."""
    t.add_row("output", escape(str(plan.out)))
    for note in plan.notes:
        t.add_row("note", f"[yellow]{escape(note)}[/]")
    out.print(t)
    out.print("[bold]command[/]:")
    # markup=False: an override like trainer.logger=[console] is shell text, not a rich style.
    out.print(plan.shell(), highlight=False, soft_wrap=True, markup=False)


def render_train_plan(plan: Any, out: Console | None = None) -> None:
    """The planned VeRL command and its data arithmetic; the command prints as one line to paste back."""
    out = _out(out)
    t = _facts("train-offline plan", right=False)
    o = plan.options
    t.add_row("device", f"{o.device} ({o.nnodes} node(s) x {o.nproc} process(es))")
    t.add_row("train rows", str(plan.train_rows))
    if plan.val_rows is not None:
        t.add_row("val rows", str(plan.val_rows))
    per_rank = plan.batch_size // (o.nproc * o.nnodes)
    budget = token_budget(o)
    # VeRL packs micro batches by tokens by default (data.use_dynamic_bsz): --micro-batch-size rows
    # make a micro batch only when an override turns that off.
    micro = f"micro batches packed up to {budget} tokens" if budget is not None else f"micro batches of {o.micro_batch_size} rows"
    t.add_row("batch size", f"{plan.batch_size} global ({per_rank} per process, {micro})")
    t.add_row("steps", f"{plan.steps_per_epoch} per epoch x {o.epochs} epoch(s) = {plan.total_steps}")
    if o.lora_rank:
        t.add_row("LoRA", f"rank {o.lora_rank}, alpha {o.lora_alpha if o.lora_alpha is not None else 2 * o.lora_rank}, modules {o.lora_target_modules}")
    _print_plan(t, plan, out)


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
        out.print(Breakable(f"Hugging Face model: [bold green]{escape(str(result.hf_model))}[/]"))


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
    if plan.loop_yaml:
        from gymverl.online import LOOP_YAML

        # The command names this file; the run writes it when it starts (a dry run writes nothing).
        t.add_row("agent-loop YAML", escape(f"{plan.out / LOOP_YAML} (written when the run starts):\n{plan.loop_yaml.rstrip()}"))
    _print_plan(t, plan, out)


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
        if message.startswith(("same as:", "in VeRL")):
            # A command to paste: one line whatever the width (a wrapped one would paste as two).
            self.out.print(f"  [dim]{escape(message)}[/]", highlight=False, soft_wrap=True)
            return
        self._indented(f"[yellow]{escape(message)}[/]" if "warning" in message else escape(message))

    def _indented(self, markup: str) -> None:
        # Indented as a block: a line longer than the terminal wraps under itself, not at column 0.
        for part in Text.from_markup(markup).wrap(self.out, max(self.out.width - 2, 20)):
            part.rstrip()
            self.out.print(Text("  ") + part, highlight=False, soft_wrap=True)

    def done(self, result: Any) -> None:
        from gymverl.demo import display_path

        style = self.STYLE.get(result.status, "")
        self._indented(f"[{style}]{self.MARK.get(result.status, '')} {result.status}[/] [dim]({result.seconds:.1f} s)[/] {escape(result.summary)}")
        for p in result.outputs:
            self.out.print(f"    [dim]->[/] {escape(display_path(p))}", highlight=False)

    def show_stats(self, data: dict[str, Any]) -> None:
        if not self.quiet_stats:
            render_stats(data, show_tasks=10, compact=True, out=self.out)


def render_demo(report: Any, out: Console | None = None) -> None:
    """The demo's closing table: one row per step, and where the step report is."""
    out = _out(out)
    t = Titled(title=f"demo: {report.seconds:.0f} s, outputs in {report.out}", title_justify="left")
    t.add_column("step", no_wrap=True)
    t.add_column("status", no_wrap=True)
    t.add_column("time", justify="right", no_wrap=True)
    t.add_column("result")
    for s in report.steps:
        style = DemoReporter.STYLE.get(s.status, "")
        t.add_row(s.name, f"[{style}]{s.status}[/]", f"{s.seconds:.1f} s", escape(s.summary))
    out.print(t)
    out.print(Breakable(f"step report: [bold]{escape(str(report.out / 'demo.json'))}[/]"))
