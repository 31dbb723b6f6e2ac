"""`gymverl train-online`: online RL on NeMo Gym environments (the plan and the run are `gymverl.online`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console

from gymverl.cli.core import OLD_VERBOSE_HELP, VERBOSITY, command, console, err_console, print_json
from gymverl.cli.options import arg, number, opt
from gymverl.cli.progress import run_steps, steps_view
from gymverl.cli.render import render_online_plan, render_online_result
from gymverl.errors import UsageError
from gymverl.runner import resume_hint


@command("train-online", short_help="Online RL on NeMo Gym environments with VeRL.")
def train_online_command(
    data: Annotated[Path, arg("data", help="RL parquet from `gymverl to-parquet --format rl --agent-loop env`.")],
    overrides: Annotated[
        Optional[list[str]],
        arg("overrides", help="After `--`: VeRL key=value overrides, passed through unchanged (they win over gymverl's)."),
    ] = None,
    model: Annotated[str, opt("model", rich_help_panel="Input", show_default=False)] = "",
    out: Annotated[Optional[Path], opt("output", rich_help_panel="Output", help="Output directory: checkpoints/, train.log, metrics.jsonl, ng_run.log, the agent-loop YAML.", show_default=False)] = None,
    server: Annotated[
        Optional[list[str]], typer.Option("--server", rich_help_panel="Servers", help="A running NeMo Gym resources server, NAME=URL (repeat per environment); its rows use it instead of starting one.", show_default=False)
    ] = None,
    servers: Annotated[
        Optional[list[str]],
        typer.Option("--servers", rich_help_panel="Servers", help="Start these NeMo Gym resources servers on 127.0.0.1 for the run (repeatable or comma-separated). Default: the ones the rows' agents need that no --server gives.", show_default=False),
    ] = None,
    nemo_gym_env: Annotated[
        Optional[Path], opt("nemo_gym_env", rich_help_panel="Servers", help="NeMo Gym venv the servers start from (default: $GYMVERL_NEMO_GYM_ENV, else ./.nemo-gym-venv).", show_default=False)
    ] = None,
    val: Annotated[Optional[Path], opt("val", rich_help_panel="Input", help="Validation RL parquet (default: DATA).")] = None,
    nproc: Annotated[int, opt("nproc", callback=number(min=1), rich_help_panel="Training", help="GPUs per node.")] = 1,
    rollout: Annotated[str, typer.Option("--rollout", rich_help_panel="Training", help="Rollout engine: vllm or sglang (GPUs), or cpu (gymverl's CPU replica: smoke runs with tiny models).")] = "vllm",
    algorithm: Annotated[str, typer.Option("--algorithm", rich_help_panel="Training", help="RL algorithm (grpo).")] = "grpo",
    n_samples: Annotated[int, typer.Option("--n-samples", callback=number(min=1), rich_help_panel="Training", help="Episodes per task per step (GRPO group size).")] = 4,
    max_turns: Annotated[int, typer.Option("--max-turns", callback=number(min=1), rich_help_panel="Training", help="Model turns per episode.")] = 8,
    on_failure: Annotated[str, typer.Option("--on-failure", rich_help_panel="Training", help="A failed episode: raise (stop the step) or mask (exclude the sample).")] = "raise",
    resume: Annotated[bool, opt("resume", rich_help_panel="Output", help="Continue from the latest checkpoint in an existing OUTDIR.")] = False,
    overwrite: Annotated[bool, opt("overwrite", rich_help_panel="Output", help="Delete an existing gymverl OUTDIR and start over.")] = False,
    dry_run: Annotated[bool, opt("dry_run", rich_help_panel="Output", help="Check the inputs, print the VeRL command, the agent-loop YAML and the servers it would start, and stop (writes and starts nothing).")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", hidden=True, help=OLD_VERBOSE_HELP)] = False,
    as_json: Annotated[bool, opt("json", rich_help_panel="Output", help="Print the plan (with --dry-run) or the result as JSON.")] = False,
) -> None:
    """Online RL on NeMo Gym environments: VeRL's main_ppo with gymverl's `gymverl_env` agent loop.

    Starts the resources servers the rows need on 127.0.0.1 (or uses --server NAME=URL), runs VeRL
    (progress, OUTDIR/train.log) and stops the servers after, also on failure and Ctrl-C.

    Example: gymverl train-online rl.parquet -m ./Qwen2.5-0.5B -o runs/grpo --servers example_multi_step

    Exit code 0 when training finished, 1 when VeRL or a server failed, 2 on usage errors (checked before anything starts), 130 interrupted.
    """
    from gymverl import online

    VERBOSITY.set(verbose=verbose)  # the old place of the global -v still works
    if not model:
        raise UsageError("give the base model with --model PATH.")
    if out is None:
        raise UsageError("give the output directory with -o OUTDIR.")
    opts = online.OnlineOptions(
        data, model, out, list(server or []), val=val, nproc=nproc, rollout=rollout, algorithm=algorithm, n_samples=n_samples,
        max_turns=max_turns, on_failure=on_failure, overrides=list(overrides or []), start=list(servers or []),
        nemo_gym_env=nemo_gym_env, resume=resume, overwrite=overwrite,
    )
    plan = online.plan_online(opts, dry_run=dry_run)
    view = err_console if as_json else console
    if dry_run:
        if as_json:
            loop_yaml = {"path": str(plan.out / online.LOOP_YAML), "content": plan.loop_yaml}
            print_json({"argv": plan.argv, "start_servers": plan.start, "rows": plan.rows, "notes": plan.notes, "loop_yaml": loop_yaml})
        else:
            render_online_plan(plan, view)
        return
    render_online_plan(plan, view)
    result = _run(plan, view, VERBOSITY.verbose)
    if as_json:
        print_json({**result.to_dict(), "servers": plan.servers})
    else:
        render_online_result(result, view)


def _run(plan: Any, view: Console, verbose: bool) -> Any:
    """Start the servers, run main_ppo (`online.run_online`) with a step bar, stop the servers; VeRL's
    failure is one sentence (exit 1), Ctrl-C exits 130 with a resume hint."""
    from gymverl import online

    progress, on_event = steps_view(
        view, note=("critic/score/mean", "reward {:.3f}"),
        val=lambda m: "validation " + ", ".join(f"{k} {v:.3f}" for k, v in m.items() if k.startswith("val-core/")), verbose=verbose,
    )
    task = progress.tasks[0].id

    def on_servers(stage: str, urls: dict[str, str]) -> None:
        if stage == "starting":
            progress.update(task, description="starting NeMo Gym servers")
        else:
            progress.console.print("NeMo Gym servers: " + ", ".join(f"{k} {v}" for k, v in urls.items()), highlight=False, markup=False)
            progress.update(task, description="starting VeRL")

    return run_steps(
        progress, lambda: online.run_online(plan, on_event, on_servers),
        lambda: f"VeRL and the NeMo Gym servers stopped; {resume_hint(plan.checkpoints, 'trainer.save_freq')}",
    )
