"""`gymverl train-online`: online RL on NeMo Gym environments (the command is built in `gymverl.online`).

The command below is the old `gymverl/cli.py` text unchanged (decorator included), so edits made to
it there re-apply here as they are.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

from gymverl.cli.core import _Command, app, console, print_json
from gymverl.cli.options import number
from gymverl.errors import UsageError


@app.command("train-online", cls=_Command)
def train_online_command(
    data: Annotated[Path, typer.Argument(help="RL parquet from `gymverl to-parquet --format rl --agent-loop env`.", show_default=False)],
    overrides: Annotated[
        Optional[list[str]],
        typer.Argument(help="After `--`: VeRL key=value overrides, passed through unchanged (they win over gymverl's).", show_default=False),
    ] = None,
    model: Annotated[str, typer.Option("--model", "-m", help="Base model: a local Hugging Face model directory (or a Hub id).", show_default=False)] = "",
    out: Annotated[Optional[Path], typer.Option("--output", "-o", help="Output directory (checkpoints/, the agent-loop YAML).", show_default=False)] = None,
    server: Annotated[
        Optional[list[str]], typer.Option("--server", help="A running NeMo Gym resources server, NAME=URL (repeat per environment).", show_default=False)
    ] = None,
    val: Annotated[Optional[Path], typer.Option("--val", help="Validation RL parquet (default: DATA).")] = None,
    nproc: Annotated[int, typer.Option("--nproc", callback=number(min=1), help="GPUs per node.")] = 1,
    rollout: Annotated[str, typer.Option("--rollout", help="Rollout engine: vllm or sglang.")] = "vllm",
    algorithm: Annotated[str, typer.Option("--algorithm", help="RL algorithm (grpo).")] = "grpo",
    n_samples: Annotated[int, typer.Option("--n-samples", callback=number(min=1), help="Episodes per task per step (GRPO group size).")] = 4,
    max_turns: Annotated[int, typer.Option("--max-turns", callback=number(min=1), help="Model turns per episode.")] = 8,
    on_failure: Annotated[str, typer.Option("--on-failure", help="A failed episode: raise (stop the step) or mask (exclude the sample).")] = "raise",
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Write the agent-loop YAML, print the VeRL command and stop.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the plan as JSON.")] = False,
) -> None:
    """Online RL on NeMo Gym environments: VeRL's main_ppo with gymverl's `gymverl_env` agent loop.

    Example: gymverl train-online rl.parquet -m ./Qwen2.5-0.5B -o runs/grpo --server example_multi_step=http://127.0.0.1:8001 --dry-run
    """
    import shlex

    from gymverl.online import OnlineOptions, build_online_command, check_with_verl_config

    if not model:
        raise UsageError("give the base model with --model PATH.")
    if out is None:
        raise UsageError("give the output directory with -o OUTDIR.")
    if not dry_run:
        raise UsageError("train-online only builds the VeRL command so far: add --dry-run and run the printed command on a GPU machine.")
    opts = OnlineOptions(data, model, out, list(server or []), val=val, nproc=nproc, rollout=rollout, algorithm=algorithm,
                         n_samples=n_samples, max_turns=max_turns, on_failure=on_failure, overrides=list(overrides or []))
    argv = build_online_command(opts)
    check_with_verl_config(argv)  # a typo'd override fails here, not on the GPU machine
    if as_json:
        print_json({"argv": argv})
    else:
        console.print(escape(shlex.join(argv)), highlight=False, soft_wrap=True)
