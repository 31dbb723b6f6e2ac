"""`gymverl demo`: the whole pipeline on sample data (the steps live in `gymverl.demo`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from gymverl.cli.core import command, console, err_console, exit_interrupted, print_json
from gymverl.cli.options import opt
from gymverl.cli.render import DemoReporter, render_demo
from gymverl.errors import EXIT_REJECTED


@command(short_help="Run the whole pipeline on sample data.")
def demo(
    out: Annotated[
        Optional[Path], opt("output", help="Output directory (default: a fresh ./gymverl-demo-out, -2, -3, ...).")
    ] = None,
    skip: Annotated[
        Optional[list[str]],
        typer.Option("--skip", help="Skip a step: rescore (and the servers), stats, parquet, reward, train. Repeat or comma-separate."),
    ] = None,
    data: Annotated[
        Optional[Path], typer.Option("--data", help="Directory with rollouts.jsonl and tasks.jsonl (default: the repo's sample_data/); each agent NAME_simple_agent is verified by resources server NAME.")
    ] = None,
    nemo_gym_env: Annotated[
        Optional[Path],
        opt("nemo_gym_env", help="NeMo Gym venv (default: $GYMVERL_NEMO_GYM_ENV or ./.nemo-gym-venv)."),
    ] = None,
    overwrite: Annotated[bool, opt("overwrite", help="Replace an existing --output written by an earlier demo.")] = False,
    as_json: Annotated[bool, opt("json", help="Print the step report as JSON at the end (progress goes to stderr).")] = False,
) -> None:
    """Run the whole pipeline on sample_data/: NeMo Gym servers, validate, rescore, stats, parquet, reward function, CPU training.

    Every step prints what it did and where its output is; servers it started are stopped at the
    end, also on Ctrl-C.

    Exit code 0 when every step worked, 1 when a step failed or is unavailable,
    2 on usage errors, 130 when interrupted.
    """
    from gymverl.demo import SAMPLE_DATA, DemoOptions, run_demo

    skips = frozenset(s.strip() for item in (skip or []) for s in item.split(",") if s.strip())
    opts = DemoOptions(out=out, data=data or SAMPLE_DATA, skip=skips, nemo_gym_env=nemo_gym_env, overwrite=overwrite)
    view = err_console if as_json else console  # with --json, stdout carries the JSON only
    try:
        report = run_demo(opts, DemoReporter(view))  # a DemoError becomes its sentence in _PipelineOrder
    except KeyboardInterrupt:
        exit_interrupted("the demo stopped, and the NeMo Gym servers it started with it")
    if as_json:
        print_json(report.to_dict())
    else:
        render_demo(report, view)
    if not report.ok:
        raise typer.Exit(EXIT_REJECTED)
