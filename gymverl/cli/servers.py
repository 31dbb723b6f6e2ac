"""`gymverl collect` and `gymverl rescore`: the commands that talk to running NeMo Gym servers."""

from __future__ import annotations

import contextlib
import shlex
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.markup import escape

from gymverl.cli.core import command, console, err_console, error, exiting_interrupted, fail, print_json, warn
from gymverl.cli.options import arg, input_arg, number, opt
from gymverl.cli.progress import progress_bar, showing
from gymverl.cli.render import Breakable, render_rejections, render_rejects_written, render_rescore, render_validation
from gymverl.errors import EXIT_INTERRUPTED, EXIT_REJECTED
from gymverl.jsonl import check_input_path
from gymverl.limits import DEFAULT_CONCURRENCY, DEFAULT_HEAD_URL, DEFAULT_RETRIES, DEFAULT_TIMEOUT, MAX_CONCURRENCY, MAX_RETRIES


@command(
    short_help="Collect rollouts with NeMo Gym's collector and validate them.",
    context_settings={"allow_extra_args": True},
    epilog=(
        "Anything after `--` goes to NeMo Gym's collector unchanged, e.g. "
        "`-- +responses_create_params.temperature=0.7`.\n\n"
        "Examples:\n\n"
        "gymverl collect -i tasks.jsonl -o rollouts.jsonl -n 4   (servers already started with ng_run)\n\n"
        "gymverl collect -i tasks.jsonl -o rollouts.jsonl -n 4 --servers math_with_judge "
        "--policy-url http://127.0.0.1:8000/v1 --policy-model my-model"
    ),
)
def collect(
    ctx: typer.Context,
    input: Annotated[Path, typer.Option("--input", "-i", rich_help_panel="Input", help="NeMo Gym tasks JSONL (one task per line, with `agent_ref`).")],
    output: Annotated[Path, opt("output", rich_help_panel="Output", help="Rollouts JSONL to write (NeMo Gym writes it as it goes).")],
    agent: Annotated[Optional[str], typer.Option("--agent", "-a", rich_help_panel="Input", help="Agent for tasks without `agent_ref`.")] = None,
    num_samples: Annotated[int, typer.Option("--num-samples", "-n", callback=number(min=1), rich_help_panel="Input", help="Rollouts per task (NeMo Gym's repeat option).")] = 1,
    limit: Annotated[Optional[int], opt("limit", callback=number(min=1), rich_help_panel="Input", help="Only the first K tasks.")] = None,
    concurrency: Annotated[Optional[int], opt("concurrency", callback=number(min=1, max=100_000), rich_help_panel="Servers", help="Rollouts in flight at once (default: NeMo Gym's, unlimited).")] = None,
    overwrite: Annotated[bool, opt("overwrite", rich_help_panel="Output", help="Replace an existing output (and its NeMo Gym sidecar files).")] = False,
    resume: Annotated[bool, opt("resume", rich_help_panel="Output", help="Continue an interrupted collection into the same output.")] = False,
    head_url: Annotated[
        str, typer.Option("--head-url", envvar="GYMVERL_HEAD_URL", rich_help_panel="Servers", help="NeMo Gym head server of running servers (ng_run).")
    ] = DEFAULT_HEAD_URL,
    servers: Annotated[
        Optional[list[str]],
        typer.Option(
            "--servers",
            rich_help_panel="Servers", help="Start these NeMo Gym configs with ng_run for the duration (repeatable or comma-separated; "
            "a bare name like `math_with_judge` means that resources server's shipped config).",
        ),
    ] = None,
    policy_url: Annotated[Optional[str], typer.Option("--policy-url", rich_help_panel="Servers", help="With --servers: the model's OpenAI-compatible base URL (…/v1).")] = None,
    policy_model: Annotated[str, typer.Option("--policy-model", rich_help_panel="Servers", help="With --servers: the model name to request.")] = "policy",
    policy_api_key: Annotated[
        str, typer.Option("--policy-api-key", envvar="GYMVERL_POLICY_API_KEY", rich_help_panel="Servers", help="With --servers: the model server's API key.")
    ] = "dummy",
    model_type: Annotated[
        str,
        typer.Option("--model-type", rich_help_panel="Servers", help="With --servers and --policy-url: NeMo Gym model server (openai_model = Responses API, vllm_model = Chat Completions)."),
    ] = "openai_model",
    nemo_gym_env: Annotated[
        Optional[Path], opt("nemo_gym_env", rich_help_panel="Servers", help="NeMo Gym venv (default: $GYMVERL_NEMO_GYM_ENV, else ./.nemo-gym-venv).")
    ] = None,
    log: Annotated[Optional[Path], typer.Option("--log", rich_help_panel="Output", help="Collector's own output (default: <output stem>_collect.log).")] = None,
    rejects: Annotated[Optional[Path], opt("rejects", rich_help_panel="Output", help="Write output lines that fail validation here.")] = None,
    as_json: Annotated[bool, opt("json", rich_help_panel="Output", help="Print the result as JSON (for scripts).")] = False,
) -> None:
    """Collect rollouts with NeMo Gym's own collector, n per task, then validate the output.

    Checks first that every task line is valid, that the NeMo Gym servers and agents answer, and that
    no existing output is overwritten by accident.

    Exit code 0 when every expected rollout was written
    and is valid; 1 when the collector failed or rollouts are missing, failed or invalid (partial output
    is kept: continue with --resume); 2 on usage errors (bad option, missing file, servers not running);
    130 when interrupted.
    """
    from gymverl import collect as C

    out_console = err_console if as_json else console
    progress, on_progress = progress_bar("count", "[bold]collecting[/]", console=out_console, transient=False)
    bar: dict[str, Any] = {}

    def stop_progress() -> None:
        if bar.pop("started", False):
            progress.stop()

    def on_stage(name: str, info: dict[str, Any]) -> None:
        if name == "tasks":
            agents = ", ".join(f"{a} ({n})" for a, n in info["agents"].items())
            out_console.print(escape(f"{info['tasks']} tasks × {num_samples} samples; agents: {agents}"), highlight=False)
        elif name == "servers":
            out_console.print(escape(f"starting NeMo Gym servers (ng_run): {', '.join(info['configs'])}"), highlight=False)
        elif name == "collect":
            out_console.print(f"[dim]$ {escape(shlex.join(info['argv']))}[/]", highlight=False, soft_wrap=True)
            out_console.print(f"[dim]collector log: {escape(info['log'])}[/]", highlight=False)
            bar["started"] = True
            progress.start()
        elif name == "warning":
            warn(info["message"])
        elif name == "validate":
            stop_progress()

    try:
        result = C.collect(
            input,
            output,
            agent=agent,
            num_samples=num_samples,
            limit=limit,
            concurrency=concurrency,
            overwrite=overwrite,
            resume=resume,
            head_url=head_url,
            servers=servers or (),
            policy_url=policy_url,
            policy_model=policy_model,
            policy_api_key=policy_api_key,
            model_type=model_type,
            nemo_gym_env=nemo_gym_env,
            extra=list(ctx.args),
            log_path=log,
            rejects=rejects,
            on_progress=on_progress,
            on_stage=on_stage,
        )
    except C.CollectError as exc:
        stop_progress()
        if exc.details and not as_json:
            render_rejections(exc.details, len(exc.details), {}, title="rejected task lines", out=err_console)
        if as_json:
            print_json({"ok": False, "exit_code": exc.code, "message": str(exc), "rejections": exc.details})
            raise typer.Exit(exc.code)
        fail(str(exc), exc.code)
        return
    except KeyboardInterrupt:
        stop_progress()
        fail(f"interrupted before collection finished; any partial output is in {output}.", EXIT_INTERRUPTED)
        return
    finally:
        stop_progress()
    if as_json:
        print_json(result.to_dict())
    else:
        if result.validation is not None:
            render_validation(result.validation.to_dict(), title="collect")
        if result.validation is not None:
            render_rejects_written(rejects, result.validation.rejected)
        quality = C.quality_sentence(result.quality)
        if quality:
            unhealthy = bool(result.quality and (result.quality.get("unhealthy") or result.quality.get("error")))
            (err_console if unhealthy else console).print(
                f"[{'yellow' if unhealthy else 'dim'}]{escape(quality)}[/]", highlight=False, soft_wrap=True
            )
        if result.ok:
            console.print(f"[bold green]ok:[/] {escape(result.message)}", highlight=False)
        else:
            error(result.message)
    raise typer.Exit(result.code)




@command(short_help="Re-score rollouts against a live NeMo Gym /verify.")
def rescore(
    rollouts: Annotated[Path, arg("rollouts", help="Rollout JSONL written by NeMo Gym (.jsonl or .jsonl.gz).")],
    output: Annotated[Path, opt("output", rich_help_panel="Output", help="Write the rescored rollouts here (input order; old reward kept as reward_before).")],
    server: Annotated[
        Optional[list[str]],
        typer.Option(
            "--server", "-s", envvar="GYMVERL_VERIFY_URL", metavar="URL",
            rich_help_panel="Servers", help="Resources server base URL (POST {URL}/verify). Repeat to load-balance; NAME=URL routes rows whose "
            "agent_ref.name is or starts with NAME (e.g. math_with_judge=http://127.0.0.1:8001).",
        ),
    ] = None,
    failures: Annotated[
        Optional[Path], typer.Option("--failures", rich_help_panel="Output", help="Failure records (invalid rows and failed verifications) go here. Default: OUTPUT's stem + .failures.jsonl.")
    ] = None,
    resume: Annotated[bool, opt("resume", rich_help_panel="Output", help="Continue an interrupted run into the same OUTPUT: skips lines already done, no duplicates, no gaps.")] = False,
    overwrite: Annotated[bool, opt("overwrite", rich_help_panel="Output", help="Start over even if OUTPUT holds an unfinished run (otherwise refused: use --resume) or a file that is not a rescore output.")] = False,
    retry_failed: Annotated[bool, typer.Option("--retry-failed", rich_help_panel="Output", help="Re-send the rows a finished run into OUTPUT recorded as failed verifications; other rows are kept, order too.")] = False,
    tasks: Annotated[
        Optional[Path],
        typer.Option(
            "--tasks",
            rich_help_panel="Task fields", help="Task fields the rollouts lack come from this NeMo Gym tasks JSONL (joined on _ng_task_index = its line) or "
            "materialized inputs (joined on _ng_task_index and _ng_rollout_index); the prompt must match. Default: "
            "<stem>_materialized_inputs.jsonl beside ROLLOUTS when it exists.",
        ),
    ] = None,
    side_files: Annotated[bool, opt("side_files", rich_help_panel="Task fields", help="Look for <stem>_materialized_inputs.jsonl beside ROLLOUTS (without --tasks).")] = True,
    force: Annotated[
        bool,
        typer.Option("--force", rich_help_panel="Servers", help="Re-verify even against servers whose GET /reverify_mode is not \"stateless\" (rewards of a stateful verifier may be wrong)."),
    ] = False,
    concurrency: Annotated[int, opt("concurrency", callback=number(min=1, max=MAX_CONCURRENCY), rich_help_panel="Servers", help="Requests in flight at once (all servers together).")] = DEFAULT_CONCURRENCY,
    timeout: Annotated[float, typer.Option("--timeout", callback=number(above=0, max=7 * 86400, unit='seconds'), rich_help_panel="Servers", help="Seconds per request attempt.")] = DEFAULT_TIMEOUT,
    retries: Annotated[int, typer.Option("--retries", callback=number(min=0, max=MAX_RETRIES), rich_help_panel="Servers", help="Retries per row on timeouts, connection errors, 429 and 5xx (exponential backoff with jitter).")] = DEFAULT_RETRIES,
    strict: Annotated[bool, opt("strict", rich_help_panel="Report", help="Exit 1 when a suspicious share of rewards goes down (likely missing task fields).")] = False,
    flip_threshold: Annotated[float, typer.Option("--flip-threshold", callback=number(min=0, max=1), rich_help_panel="Report", help="Warn when at least this share of rescored rewards went down.")] = 0.25,
    limit: Annotated[Optional[int], opt("limit", callback=number(min=1), rich_help_panel="Output", help="Process at most this many more lines, then stop (resume later with --resume).")] = None,
    as_json: Annotated[bool, opt("json", rich_help_panel="Report")] = False,
    show_tasks: Annotated[int, opt("show_tasks", callback=number(min=0), rich_help_panel="Report", help="Rows in the per-task before/after table (the most changed tasks).")] = 20,
) -> None:
    """Re-score rollouts against a live NeMo Gym /verify and write them with the new rewards.

    A row whose verification finally fails (after retries) goes to the failures file with the reason and is never written with a made-up reward.

    An HTTP 200 answer that reports a failure (NeMo Gym >= 0.5: mask_sample true, judge_failed) is a failure too (--retry-failed re-sends it).
    Task fields the rollouts lack are joined from --tasks or <stem>_materialized_inputs.jsonl beside ROLLOUTS, on _ng_task_index and _ng_rollout_index.
    Each server is asked GET /reverify_mode first: one that does not say "stateless" is refused without --force (as gym eval reverify does; a server without the route, NeMo Gym 0.4, is used).

    Exit code 0 all rows rescored; 1 some rows failed or were rejected, the run stopped early (resume with --resume), or --strict saw a suspicious reward flip; 2 usage error, a --server that does not answer or is no resources server (checked before any row is read), or a server not declared stateless without --force; 130 interrupted (resume with --resume).
    """
    from gymverl.rescore import rescore_file
    from gymverl.verify import VerifyClient

    # Errors (bad input or option, an output that is an input, disk full, ...) are GymverlErrors or
    # OSErrors: _PipelineOrder.invoke turns them into one sentence and the right exit code.
    if not server:
        fail("give at least one --server URL (or NAME=URL), or set GYMVERL_VERIFY_URL.")
    specs = [s for spec in server for s in spec.split()]  # the env var may hold several, space-separated
    client = VerifyClient(specs, concurrency=concurrency, timeout=timeout, retries=retries)
    stack = contextlib.ExitStack()
    # Two passes (the resume fingerprint, then the lines): a pipe is spooled to a temp file,
    # removed when the command ends, however it ends.
    path = input_arg(stack, rollouts, passes=2)
    if tasks is not None:
        check_input_path(tasks)  # a regular file (read by key): missing, a directory, Parquet, a pipe: one sentence
    progress, on_progress = progress_bar("rows", "[bold]rescore[/]", console=err_console, show=not as_json and err_console.is_terminal)
    with stack, showing(progress):
        summary = rescore_file(
            path, output, client=client, failures=failures, resume=resume, overwrite=overwrite, retry_failed=retry_failed, tasks=tasks,
            side_files=side_files, force=force, flip_threshold=flip_threshold, limit=limit, on_progress=on_progress, handle_signals=True,
        )
    data = summary.to_dict()
    warning = data["warning"]
    if as_json:
        print_json(data)
    else:
        render_rescore(data, show_tasks)
        if summary.complete and summary.lines:
            console.print(Breakable(f"rescored rollouts written to [bold]{escape(str(output))}[/]" + (f"; failures in [bold]{escape(str(summary.failures_path))}[/]" if data["failed"] or data["rejected"] else "")))
    if warning:
        warn(warning)
    if summary.interrupted:
        if retry_failed:
            err_console.print(
                f"[bold red]stopped:[/] {summary.interrupted}; {output} and its failures file are unchanged. "
                "Run the same command again to retry.", highlight=False,
            )
        else:
            err_console.print(
                f"[bold red]stopped:[/] {summary.interrupted}; {summary.lines} of the input lines are done. "
                f"Continue with the same command plus --resume.", highlight=False,
            )
        if summary.interrupted.startswith(("interrupted", "terminated")):
            exiting_interrupted()  # rescore has stopped and saved; a second Ctrl-C only exits 130 sooner
            raise typer.Exit(EXIT_INTERRUPTED)
        raise typer.Exit(EXIT_REJECTED)
    if summary.lines == 0:
        fail(f"{rollouts}: file is empty (no rollouts).", EXIT_REJECTED)  # as validate and stats say it
    if summary.failed or summary.rejected or (strict and warning):
        raise typer.Exit(EXIT_REJECTED)
