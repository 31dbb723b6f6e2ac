"""Every rich table and summary the commands print (`gymverl.cli.render`, one package).

Each `render_*` takes a command's summary (the library's `to_dict()`, the same data `--json` prints)
and an optional `out` console (default: stdout's, `core.console`). Names (tasks, agents, groups)
are never folded mid-word: their columns keep them whole and the numbers give way (80 columns and
up); text that is data (paths, reasons, library sentences) is escaped, never read as markup.
The global `--verbose` (`core.VERBOSITY`) prints lists in full.

    tables.py     shared table helpers, the rejected-lines listing
    rollouts.py   validate, collect, stats (and --against's comparison)
    rescore.py    rescore
    parquet.py    to-parquet, preview
    training.py   train-offline, train-online, demo
"""

from __future__ import annotations

from gymverl.cli.render.parquet import TRAINED_STYLE, render_preview, render_section, render_to_parquet
from gymverl.cli.render.rescore import render_rescore
from gymverl.cli.render.rollouts import render_collection, render_comparison, render_stats, render_validation
from gymverl.cli.render.tables import Breakable, _wrap_name, render_rejections, render_rejects_written
from gymverl.cli.render.training import (
    DemoReporter, render_demo, render_online_plan, render_online_result, render_train_plan, render_train_result,
)

__all__ = [
    "Breakable", "TRAINED_STYLE", "DemoReporter", "render_collection", "render_comparison", "render_demo", "render_online_plan",
    "render_online_result", "render_preview", "render_rejections", "render_rejects_written", "render_rescore",
    "render_section", "render_stats", "render_to_parquet", "render_train_plan", "render_train_result",
    "render_validation", "_wrap_name",
]
