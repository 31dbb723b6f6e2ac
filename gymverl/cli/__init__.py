"""The `gymverl` command line: wiring only. Each command parses its options and calls the library.

    core.py       the Typer app, the consoles, the one place errors become exit codes
    options.py    option spellings shared by the commands, checked numbers, input arguments
    progress.py   the one progress helper (rich bars fed by `gymverl.progress` events)
    render/       every table and summary printed (tables, rollouts, rescore, parquet, training)
    rollouts.py   validate, stats
    servers.py    collect, rescore
    parquet.py    to-parquet, preview
    training.py   train-offline
    online.py     train-online
    demo.py       demo

Exit codes (all commands): 0 success, 1 the job ran but some input was rejected or failed,
2 usage error (bad option, missing file, ...), 130 interrupted, 141 the output pipe was closed.
"""

from __future__ import annotations

# Importing a command module registers its commands on `app` (the order in --help is core's ORDER).
from gymverl.cli import demo as _demo  # noqa: F401
from gymverl.cli import online as _online  # noqa: F401
from gymverl.cli import parquet as _parquet  # noqa: F401
from gymverl.cli import rollouts as _rollouts  # noqa: F401
from gymverl.cli import servers as _servers  # noqa: F401
from gymverl.cli import training as _training  # noqa: F401
from gymverl.cli.core import OPTION_ALIASES, app, console, err_console, fail, print_json
from gymverl.cli.options import Bounds, input_arg, number, option_bounds
from gymverl.cli.progress import _progress
from gymverl.cli.render import (
    TRAINED_STYLE, render_collection, render_comparison, render_preview, render_rejections, render_rescore,
    render_section, render_stats, render_to_parquet, render_validation,
)

__all__ = [
    "OPTION_ALIASES", "Bounds", "TRAINED_STYLE", "app", "console", "err_console", "fail", "input_arg", "number",
    "option_bounds", "print_json", "render_collection", "render_comparison", "render_preview", "render_rejections",
    "render_rescore", "render_section", "render_stats", "render_to_parquet", "render_validation", "_progress",
]
