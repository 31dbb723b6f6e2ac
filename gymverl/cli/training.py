"""`gymverl train-offline`: SFT with VeRL's own trainer; planning, running and export are `gymverl.train`'s."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console

from gymverl.cli.core import OLD_VERBOSE_HELP, VERBOSITY, command, console, err_console, fail, print_json, warn
from gymverl.cli.options import arg, number, opt
from gymverl.cli.progress import run_steps, steps_view
from gymverl.cli.render import render_train_plan, render_train_result
from gymverl.errors import EXIT_OK, EXIT_REJECTED, RunError
from gymverl.inputs import open_input
from gymverl.train import TrainOptions


@command("train-offline", short_help="Fine-tune a model on SFT parquet with VeRL's trainer.")
def train_offline_command(
    data: Annotated[
        Optional[Path], arg("data", help="SFT parquet from `gymverl to-parquet --format sft` (omit with --from-rollouts).")
    ] = None,
    overrides: Annotated[
        Optional[list[str]],
        arg("overrides", help="After `--`: VeRL key=value overrides, passed through unchanged (they win over gymverl's)."),
    ] = None,
    model: Annotated[str, opt("model", rich_help_panel="Input", show_default=False)] = "",
    out: Annotated[Optional[Path], opt("output", rich_help_panel="Output", help="Output directory: checkpoints/, hf_model/, train.log, metrics.jsonl.", show_default=False)] = None,
    val: Annotated[Optional[Path], opt("val", rich_help_panel="Input", help="Validation parquet (same format as DATA).")] = None,
    from_rollouts: Annotated[
        Optional[Path], typer.Option("--from-rollouts", rich_help_panel="From rollouts", help="Rollout JSONL: select the successful rollouts and convert them to SFT parquet first.")
    ] = None,
    min_reward: Annotated[float, opt("min_reward", callback=number(), rich_help_panel="From rollouts", help="With --from-rollouts: keep rollouts with reward >= this.")] = 1.0,
    best_of_n: Annotated[
        Optional[int], opt("best_of_n", callback=number(min=1), rich_help_panel="From rollouts", help="With --from-rollouts: keep at most the N best rollouts per task.", show_default=False)
    ] = None,
    val_fraction: Annotated[
        float, opt("val_fraction", callback=number(min=0, max=0.99), rich_help_panel="From rollouts", help="With --from-rollouts: share of tasks held out as validation data.")
    ] = 0.0,
    epochs: Annotated[int, typer.Option("--epochs", callback=number(min=1), rich_help_panel="Training", help="Training epochs.")] = TrainOptions.epochs,
    lr: Annotated[float, typer.Option("--lr", callback=number(above=0), rich_help_panel="Training", help="Learning rate.")] = TrainOptions.lr,
    batch_size: Annotated[
        Optional[int], typer.Option("--batch-size", callback=number(min=1), rich_help_panel="Training", help="Global batch size (rows per optimizer step). Default: VeRL's 256, capped at the dataset size.", show_default=False)
    ] = None,
    micro_batch_size: Annotated[int, typer.Option("--micro-batch-size", callback=number(min=1), rich_help_panel="Training", help="Rows per micro batch and process, used only when VeRL's token packing is off (-- data.use_dynamic_bsz=false); by default VeRL packs micro batches up to data.max_token_len_per_gpu tokens.")] = TrainOptions.micro_batch_size,
    max_length: Annotated[int, typer.Option("--max-length", callback=number(min=1, unit='tokens'), rich_help_panel="Training", help="Maximum tokens per conversation.")] = TrainOptions.max_length,
    lora_rank: Annotated[int, typer.Option("--lora-rank", callback=number(min=0), rich_help_panel="Training", help="LoRA rank; 0 trains all weights.")] = TrainOptions.lora_rank,
    lora_alpha: Annotated[Optional[int], typer.Option("--lora-alpha", callback=number(min=1), rich_help_panel="Training", help="LoRA alpha (default 2 x rank).", show_default=False)] = None,
    lora_target_modules: Annotated[str, typer.Option("--lora-target-modules", rich_help_panel="Training", help="LoRA target modules (VeRL's model.target_modules).")] = TrainOptions.lora_target_modules,
    nproc: Annotated[int, opt("nproc", callback=number(min=1), rich_help_panel="Nodes", help="Processes (GPUs) per node.")] = TrainOptions.nproc,
    nnodes: Annotated[int, typer.Option("--nnodes", callback=number(min=1), rich_help_panel="Nodes", help="Number of nodes (run the same command on each, with its --node-rank).")] = TrainOptions.nnodes,
    node_rank: Annotated[int, typer.Option("--node-rank", callback=number(min=0), rich_help_panel="Nodes", help="This node's rank (multi-node).")] = TrainOptions.node_rank,
    master_addr: Annotated[Optional[str], typer.Option("--master-addr", rich_help_panel="Nodes", help="Address of node 0 (multi-node).", show_default=False)] = None,
    master_port: Annotated[int, typer.Option("--master-port", callback=number(min=1, max=65535), rich_help_panel="Nodes", help="Rendezvous port on node 0 (multi-node).")] = TrainOptions.master_port,
    device: Annotated[str, typer.Option("--device", rich_help_panel="Training", help="cuda for real training; cpu for a smoke run with gymverl's CPU plugin (tiny models only).")] = TrainOptions.device,
    resume: Annotated[bool, opt("resume", rich_help_panel="Output", help="Continue from the latest checkpoint in an existing OUTDIR.")] = False,
    overwrite: Annotated[bool, opt("overwrite", rich_help_panel="Output", help="Delete an existing gymverl OUTDIR and start over.")] = False,
    export: Annotated[bool, typer.Option("--export/--no-export", rich_help_panel="Output", help="Export the last checkpoint to OUTDIR/hf_model with verl.model_merger.")] = True,
    save_freq: Annotated[int, typer.Option("--save-freq", callback=number(min=1, also=(-1,)), rich_help_panel="Training", help="Checkpoint every N steps (-1: only at the end).")] = TrainOptions.save_freq,
    dry_run: Annotated[bool, opt("dry_run", rich_help_panel="Output", help="Check the inputs, print the VeRL command and stop.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", hidden=True, help=OLD_VERBOSE_HELP)] = False,
    as_json: Annotated[bool, opt("json", rich_help_panel="Output", help="Print the plan (with --dry-run) or the result as JSON.")] = False,
) -> None:
    """Fine-tune a model on SFT parquet with VeRL's own trainer (verl.trainer.sft_trainer via torchrun).

    Example: gymverl train-offline sft.parquet -m ./Qwen2.5-0.5B -o runs/sft --epochs 2 -- optim.weight_decay=0.1

    Exit code 0 when training (and the export) finished, 1 when VeRL failed, 2 on usage errors, 130 interrupted.
    """
    from gymverl import train as tr

    VERBOSITY.set(verbose=verbose)  # the old place of the global -v still works
    overrides = list(overrides or [])
    if from_rollouts is not None and data is not None:
        if "=" not in str(data):
            fail("give either DATA or --from-rollouts, not both.")
        overrides.insert(0, str(data))  # with --from-rollouts the first pass-through word lands here
        data = None
    if not model:
        fail("--model is required (a local Hugging Face model directory).")
    if out is None:
        fail("--output/-o is required (the output directory).")
    if data is None and from_rollouts is None:
        fail("give an SFT parquet file (DATA) or --from-rollouts ROLLOUTS.jsonl.")
    view = err_console if as_json else console
    opts = tr.TrainOptions(
        train=data or Path("."), model=model, out=out, val=val, epochs=epochs, lr=lr, batch_size=batch_size,
        micro_batch_size=micro_batch_size, max_length=max_length, lora_rank=lora_rank, lora_alpha=lora_alpha,
        lora_target_modules=lora_target_modules, nproc=nproc, nnodes=nnodes, node_rank=node_rank,
        master_addr=master_addr, master_port=master_port, device=device, resume=resume, overwrite=overwrite,
        export=export, save_freq=save_freq, overrides=overrides,
    )
    prepared = None
    if from_rollouts is not None:
        with open_input(from_rollouts) as rollouts_in:
            plan, prepared = tr.plan_from_rollouts(
                opts, rollouts_in, dry_run=dry_run, min_reward=min_reward, best_of_n=best_of_n, val_fraction=val_fraction  # type: ignore[arg-type]
            )
    else:
        plan = tr.plan_training(opts, check_device=not dry_run)
    rejected = prepared is not None and prepared.rejected
    if rejected:
        where = "" if dry_run else f" (see {out / 'data' / 'rejects.jsonl'})"
        warn(f"{prepared.rejected} of {prepared.lines} rollout lines rejected{where}.")
    if dry_run:
        if as_json:
            print_json({"argv": plan.argv, "env": plan.env, "train_rows": plan.train_rows, "val_rows": plan.val_rows,
                        "batch_size": plan.batch_size, "steps_per_epoch": plan.steps_per_epoch,
                        "total_steps": plan.total_steps, "notes": plan.notes})
        else:
            render_train_plan(plan, view)
        raise typer.Exit(EXIT_REJECTED if rejected else EXIT_OK)
    render_train_plan(plan, view)
    result = _run(plan, view, VERBOSITY.verbose)
    if as_json:
        print_json(result.to_dict())
    else:
        render_train_result(result, view)
    if rejected:
        # Trained, but some input lines never made it: scripts should notice.
        raise typer.Exit(EXIT_REJECTED)


def _run(plan: Any, view: Console, verbose: bool) -> Any:
    """Run and export `plan` (`train.train_offline`) with a step bar; VeRL's failure is one sentence, exit 1."""
    from gymverl import train as tr

    progress, on_event = steps_view(
        view, note=("train/loss", "loss {:.4f}"), val=lambda m: f"validation loss {m['val/loss']:.4f}",
        total=plan.total_steps, stages={"export": "exporting the Hugging Face model (verl.model_merger)"}, verbose=verbose,
    )

    def run() -> Any:
        try:
            return tr.train_offline(plan.options, on_event, plan=plan)
        except tr.TrainError as exc:  # the export failed: the run happened, so not a usage error
            raise RunError(str(exc)) from None

    return run_steps(progress, run, lambda: f"VeRL stopped; {tr.resume_hint(plan.checkpoints)}")
