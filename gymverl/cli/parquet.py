"""`gymverl to-parquet` and `gymverl preview`: write the training data, and show what training sees."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Annotated, Optional

import typer

from gymverl.cli.core import command, err_console, fail, print_json, warn
from gymverl.cli.options import MAX_LINE_MB, arg, input_arg, number, opt
from gymverl.cli.progress import progress_bar, showing
from gymverl.cli.render import render_preview, render_rejects_written, render_to_parquet
from gymverl.errors import EXIT_REJECTED, Interrupted


@command("to-parquet", short_help="Convert rollouts into parquet VeRL trains on.")
def to_parquet(
    input_path: Annotated[Path, arg("rollouts", help="Rollout JSONL from NeMo Gym (.jsonl or .jsonl.gz); for --format rl also a NeMo Gym tasks file.")],
    tasks: Annotated[Optional[Path], opt("tasks", rich_help_panel="Input", help="rl: the task rows to join onto the rows: the original NeMo Gym tasks file (by _ng_task_index = its line, prompt checked) or NeMo Gym's materialized inputs (ROLLOUTS' stem + _materialized_inputs.jsonl, by task and repeat index; found beside ROLLOUTS without this option). Its fields are the task fields; every other top-level key is a verifier output.")] = None,
    strict: Annotated[bool, opt("strict", rich_help_panel="Input", help="rl: stop (exit 2) when rows lack task fields the verifier may need, instead of warning.")] = False,
    side_files: Annotated[bool, opt("side_files", rich_help_panel="Input", help="rl: use NeMo Gym's materialized inputs beside ROLLOUTS (its stem + _materialized_inputs.jsonl) for task fields.")] = True,
    input_kind: Annotated[str, opt("input_kind", rich_help_panel="Input", help="auto, rollouts or tasks (auto: lines with a `response` are rollouts).")] = "auto",
    max_line_mb: Annotated[float, opt("max_line_mb", rich_help_panel="Input")] = MAX_LINE_MB,
    fmt: Annotated[str, typer.Option("--format", "-f", rich_help_panel="Rows", help="rl: one row per task for GRPO/PPO (main_ppo); sft: one row per rollout for sft_trainer; dpo: preference pairs in the conversational form TRL's DPOTrainer and OpenRLHF read.")] = "sft",
    ground_truth_field: Annotated[Optional[str], typer.Option("--ground-truth-field", rich_help_panel="Rows", help="Task field holding the expected answer (default: the first of expected_answer, expected_answers, ground_truth, answer, ...).")] = None,
    data_source: Annotated[Optional[str], typer.Option("--data-source", rich_help_panel="Rows", help="data_source of every row (default: the agent name, else the input file's stem).")] = None,
    ability: Annotated[str, typer.Option("--ability", rich_help_panel="Rows", help="The rl `ability` column.")] = "nemo_gym",
    agent_loop: Annotated[str, typer.Option("--agent-loop", rich_help_panel="Rows", help="rl: the agent loop each row names (agent_name column): auto = gymverl_tools for tasks with tools, VeRL's single_turn_agent otherwise (offline prompts, scored by compute_score); env = gymverl_env for every row (online RL that plays the NeMo Gym environment: gymverl train-online).")] = "auto",
    tool_arguments: Annotated[str, typer.Option("--tool-arguments", rich_help_panel="Rows", help="dpo: tool-call arguments as the model's JSON text (string) or as objects (object), as the model's chat template needs; auto = the form the --tokenizer's chat template renders as written, else string (with a warning).")] = "auto",
    include_reasoning: Annotated[bool, typer.Option("--include-reasoning", rich_help_panel="Rows", help="sft/dpo: keep reasoning items as `reasoning_content` on assistant messages.")] = False,
    keep_masked: Annotated[bool, typer.Option("--keep-masked", rich_help_panel="Selection", help="Keep rollouts marked mask_sample: true (NeMo Gym >= 0.5: not a valid measurement); dropped by default under the filter 'masked'.")] = False,
    min_reward: Annotated[Optional[float], opt("min_reward", rich_help_panel="Selection", callback=number(), help="Drop rollouts whose reward is below this.")] = None,
    best_of_n: Annotated[Optional[int], opt("best_of_n", rich_help_panel="Selection", callback=number(min=1), help="Keep only the K highest-reward rollouts of each task (ties: input order).")] = None,
    drop_solved: Annotated[bool, typer.Option("--drop-solved", rich_help_panel="Selection", help="Drop tasks every rollout solved (GRPO difficulty filter).")] = False,
    drop_unsolved: Annotated[bool, typer.Option("--drop-unsolved", rich_help_panel="Selection", help="Drop tasks no rollout solved (GRPO difficulty filter).")] = False,
    solved_threshold: Annotated[float, typer.Option("--solved-threshold", rich_help_panel="Selection", callback=number(), help="A rollout solves its task when reward >= this.")] = 1.0,
    dedup: Annotated[bool, typer.Option("--dedup", rich_help_panel="Selection", help="Drop rollouts whose response repeats an earlier one of the same task.")] = False,
    keep_incomplete: Annotated[bool, typer.Option("--keep-incomplete", rich_help_panel="Selection", help="Keep responses that were cut off (status incomplete); dropped by default for sft and dpo.")] = False,
    keep_malformed_calls: Annotated[bool, typer.Option("--keep-malformed-calls", rich_help_panel="Selection", help="sft/dpo: keep rollouts with a tool call whose arguments are not a JSON object (kept as the model wrote them; templates that need object arguments cannot render them); dropped by default under the filter 'malformed_tool_call'.")] = False,
    keep_empty_answers: Annotated[bool, typer.Option("--keep-empty-answers", rich_help_panel="Selection", help="sft/dpo: keep rollouts that end without a final answer (an empty message or reasoning only); dropped by default under the filter 'empty_answer'.")] = False,
    max_tokens: Annotated[Optional[int], typer.Option("--max-tokens", rich_help_panel="Selection", callback=number(min=1), help="Drop rows longer than this many tokens (chat template applied; rl: the prompt with its tools). Needs --tokenizer.")] = None,
    tokenizer: Annotated[Optional[Path], typer.Option("--tokenizer", rich_help_panel="Selection", help="Local Hugging Face tokenizer directory, for --max-tokens (and dpo's --tool-arguments auto).")] = None,
    pairs_per_task: Annotated[int, typer.Option("--pairs-per-task", rich_help_panel="Selection", callback=number(min=1), help="dpo: at most this many pairs per task (best with worst, then next).")] = 1,
    min_margin: Annotated[float, typer.Option("--min-margin", rich_help_panel="Selection", callback=number(min=0), help="dpo: smallest reward gap between chosen and rejected (always above 0).")] = 0.0,
    val_fraction: Annotated[float, opt("val_fraction", rich_help_panel="Split", callback=number(min=0, max=0.99), help="Share of *tasks* in val.parquet; a hash of the task key decides, so no task is in both splits and every run agrees.")] = 0.0,
    split_seed: Annotated[str, typer.Option("--split-seed", rich_help_panel="Split", help="Changes which tasks land in val (still deterministic).")] = "gymverl",
    output: Annotated[
        Optional[Path],
        opt("output", rich_help_panel="Output", help="Output directory (train.parquet, val.parquet, or train-00000-of-0000N.parquet shards), or a .parquet file when there is no val split."),
    ] = None,
    shard_size: Annotated[Optional[int], typer.Option("--shard-size", rich_help_panel="Output", callback=number(min=1), help="Rows per parquet file; writes NAME-00000-of-0000N.parquet shards.")] = None,
    dry_run: Annotated[bool, opt("dry_run", rich_help_panel="Output", help="Show what would be kept and filtered; write nothing.")] = False,
    rejects: Annotated[Optional[Path], opt("rejects", rich_help_panel="Output")] = None,
    as_json: Annotated[bool, opt("json", rich_help_panel="Output")] = False,
    tmp_dir: Annotated[Optional[Path], typer.Option("--tmp-dir", rich_help_panel="Performance", help="Where to spill rollouts while grouping by task (default: beside the output).")] = None,
    workers: Annotated[int, typer.Option("--workers", "-j", rich_help_panel="Performance", callback=number(min=1, max=256), help="Processes that parse and convert lines (each adds ~100 MB); 1 keeps everything in one process.")] = 1,
) -> None:
    """Convert rollouts into parquet VeRL trains on unchanged, with rejection sampling and a train/val split.

    Every input line is accounted for: written as (part of) a row, removed by a named filter, or
    rejected with its line number and reason. SFT rows store `messages`/`tools` as JSON strings:
    train with data.custom_cls.path=<gymverl/verl_data.py> data.custom_cls.name=GymverlSFTDataset.

    Exit code 0 success; 1 some lines were rejected, no row was kept, or rl rows lack task fields their
    verifier takes (written, with a warning naming them; --strict: exit 2, nothing written, also for
    fields they may lack); 2 usage error; 130 interrupted.
    """
    from gymverl.convert import ConvertOptions, convert
    from gymverl.select import SelectOptions

    if output is None and not dry_run:
        fail("give --output DIR (or --dry-run to only see the summary).")
    if fmt not in ("rl", "sft", "dpo"):
        fail(f"--format must be rl, sft or dpo, not {fmt!r}.")
    if tokenizer is not None and not tokenizer.exists():
        fail(f"{tokenizer}: no such tokenizer directory.")
    stack = contextlib.ExitStack()
    # --input-kind auto looks at the first lines before converting: a pipe is spooled (into
    # --tmp-dir when given) and the copy removed when the command ends, however it ends.
    path = input_arg(stack, input_path, passes=2 if input_kind == "auto" else 1, tmp_dir=tmp_dir)
    options = ConvertOptions(
        fmt=fmt,
        select=SelectOptions(
            min_reward=min_reward,
            best_of_n=best_of_n,
            drop_solved=drop_solved,
            drop_unsolved=drop_unsolved,
            dedup=dedup,
            max_tokens=max_tokens,
            drop_incomplete=not keep_incomplete and fmt != "rl",
            drop_masked=not keep_masked,
            drop_malformed_calls=not keep_malformed_calls,
            drop_empty_answers=not keep_empty_answers,
            solved_threshold=solved_threshold,
            val_fraction=val_fraction,
            split_seed=split_seed,
            pairs_per_task=pairs_per_task,
            min_margin=min_margin,
        ),
        tasks_path=tasks,
        strict=strict,
        side_files=side_files,
        ground_truth_field=ground_truth_field,
        data_source=data_source,
        ability=ability,
        agent_loop=agent_loop,
        tool_arguments=tool_arguments,
        include_reasoning=include_reasoning,
        tokenizer=tokenizer,
        shard_size=shard_size,
        dry_run=dry_run,
        rejects_path=rejects,
        input_kind=input_kind,
        tmp_dir=tmp_dir,
        max_line_bytes=int(max_line_mb * 1e6),
        workers=workers,
    )
    progress, on_progress = progress_bar("bytes", "converting", console=err_console, show=not as_json and err_console.is_terminal)
    try:
        with stack, showing(progress):
            summary = convert(path, output, options, on_progress=on_progress)
    except KeyboardInterrupt:  # Ctrl-C, SIGTERM, SIGHUP: convert removed its temp and spill files
        raise Interrupted("interrupted; nothing was written (earlier outputs are unchanged).") from None
    data = summary.to_dict()
    if as_json:
        print_json(data)
    else:
        render_to_parquet(data)
        render_rejects_written(rejects, summary.rejected)
        for w in summary.warnings:
            warn(w)
    if summary.rejected or sum(summary.rows.values()) == 0 or summary.task_field_problems:
        raise typer.Exit(EXIT_REJECTED)


@command(short_help="Show exactly what training sees for one row.")
def preview(
    data: Annotated[Path, arg("data", help="A parquet file written by `gymverl to-parquet` (rl, sft or dpo).")],
    tokenizer: Annotated[Path, typer.Option("--tokenizer", "-t", help="The model's local Hugging Face tokenizer (or model) directory.", show_default=False)],
    row: Annotated[int, typer.Option("--row", "-r", callback=number(min=0), help="Row to show (0-based).")] = 0,
    answer: Annotated[Optional[str], typer.Option("--answer", help="rl: a model answer; shows the /verify request compute_score would send for it (nothing is sent).", show_default=False)] = None,
    as_json: Annotated[bool, opt("json", help="Print the rendered text, token ids and trained spans as JSON (for scripts).")] = False,
) -> None:
    """Show exactly what training sees for one row, rendered with the model's chat template.

    rl: the prompt the policy gets, through VeRL's agent-loop prompt builder (with the row's tools when its agent loop shows them); with --answer also the /verify request of compute_score.

    sft: the conversation as VeRL's MultiTurnSFTDataset tokenizes it, trained spans highlighted.

    dpo: chosen and rejected, each after the shared prompt, completion highlighted.

    Exit code 0 success; 2 usage error (no such file or row, not a gymverl parquet, no tokenizer or chat template).
    """
    from gymverl.preview import preview as make_preview

    pv = make_preview(data, tokenizer, row=row, answer=answer)
    if as_json:
        print_json(pv.to_dict())
    else:
        render_preview(pv)

