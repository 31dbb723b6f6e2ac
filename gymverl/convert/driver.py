"""`convert`: checks the options, sets up the sink, the task source and the locks, runs the stream or
grouped conversion, and fills in the summary's warnings."""

from __future__ import annotations

import contextlib
import copy
import gc
import os
import time
from collections import Counter
import dataclasses
from pathlib import Path
from typing import Iterator

from gymverl.formats import FORMATS, FieldRules
from gymverl.formats import rl as rl_fmt
from gymverl.inputs import Input, InputError, as_input
from gymverl.jsonl import RejectsWriter, read_jsonl, refuse_foreign_rejects
from gymverl.sidecars import JOIN_REASONS, TaskSource, is_materialized_inputs, sidecar_paths, stem_of
from gymverl.select import needs_grouping
from gymverl.errors import from_os_error
from gymverl.files import check_outputs, output_lock
from gymverl.progress import OnProgress

from gymverl.convert.options import ConvertError, ConvertOptions
from gymverl.convert.summary import ConvertSummary
from gymverl.convert.parquet import ParquetSink, SCHEMAS, SPLITS, refuse_foreign_parquet
from gymverl.convert.rows import TokenCounter, _Ctx
from gymverl.convert.stream import RepeatedRollouts, _convert_streaming, _stream_result
from gymverl.convert.grouped import _convert_grouped, _pass1_result
from gymverl.convert.workers import _local_results, _parallel_results


# ---- inputs ------------------------------------------------------------------------------------


def detect_input_kind(path: str | os.PathLike[str], max_lines: int = 50) -> str:
    """'rollouts' when the first JSON objects carry a `response`, 'tasks' when they only have the task input."""
    for n, p in enumerate(read_jsonl(path)):
        if n >= max_lines:
            break
        if p.ok and isinstance(p.obj, dict):
            if "response" in p.obj:
                return "rollouts"
            if "responses_create_params" in p.obj:
                return "tasks"
    return "rollouts"


def _task_source(opts: ConvertOptions, src: Input, tasks_input: bool) -> TaskSource | None:
    """The task rows joined onto rl rows: --tasks, else the materialized inputs beside a rollouts file."""
    if tasks_input or opts.fmt != "rl":
        return None  # sft/dpo rows hold no task fields (`convert` says so of --tasks); a tasks file has its own
    if opts.tasks_path is not None:
        return TaskSource(opts.tasks_path)
    if not opts.side_files:
        return None
    found = sidecar_paths(src).materialized
    return TaskSource(found, "materialized") if found is not None else None


def _task_field_problems(s: ConvertSummary, src: Input, source: TaskSource | None, side_files: bool = True) -> list[tuple[str, bool]]:
    """Truthful warnings about rl rows that may lack task fields /verify needs (errors with --strict),
    each with whether it names fields the rows are known to lack (a tasks file or the installed
    server's request model says so: the CLI then exits 1) rather than fields they may lack."""
    out: list[tuple[str, bool]] = []
    if s.rows_without_source:
        side = f"{stem_of(str(src))}_materialized_inputs.jsonl"
        # With --no-side-files the file may well be there: say it was skipped, not missing.
        why = f"--no-side-files skipped any {side} beside {src}" if not side_files else f"no {side} is beside {src}"
        out.append((
            f"{s.rows_without_source} RL rows come from NeMo Gym >= 0.5 rollouts, whose lines keep only the task fields "
            "the verifier echoes (0.7.0 drops e.g. math_with_judge's question, mcqa's options, xlam_fc's expected_answers); "
            f"{why} and no --tasks was given, so their "
            "extra_info.nemo_gym.task may lack fields /verify needs: give --tasks with the materialized inputs or the original tasks file.",
            False,
        ))
    if source is None:
        out += _fields_the_verifier_takes(s)
    if source is not None and s.rows_missing_fields:
        fields = ", ".join(f"{k} ({n} rows)" for k, n in s.missing_task_fields.most_common())
        why = "; ".join(f"{n} {JOIN_REASONS.get(r, r)}" for r, n in s.not_joined.most_common())
        out.append((
            f"{s.rows_missing_fields} RL rows lack task fields that {source.path} has for their agent: {fields}"
            + (f" (no task row joined: {why})" if why else "")
            + "; /verify gets only the fields in extra_info.nemo_gym.task, so these rows may score wrongly.",
            True,
        ))
    elif source is not None and s.not_joined:
        why = "; ".join(f"{n} {JOIN_REASONS.get(r, r)}" for r, n in s.not_joined.most_common())
        out.append((f"{sum(s.not_joined.values())} RL rows found no task row in {source.path} ({why}); they keep the task fields of their rollout line.", False))
    return out


def _fields_the_verifier_takes(s: ConvertSummary) -> list[tuple[str, bool]]:
    """With no task file joined: rows of an agent that lack fields its resources server's /verify
    declares in the installed NeMo Gym (`ng_fields.server_request_fields`: what rescore reads from a
    running server's /openapi.json), and rows that name no agent, whose verifier cannot be known."""
    from gymverl.demo import server_for_agent  # agent -> resources server (`mcqa_simple_agent` -> `mcqa`)
    from gymverl.ng_fields import server_request_fields
    from gymverl.records import is_ng_key

    out = []
    fix = "give --tasks with the NeMo Gym input file these rollouts were collected from (or its materialized inputs)"
    for agent, rows in sorted(s.unjoined_by_agent.items(), key=lambda kv: (kv[0] is not None, kv[0] or "")):
        have = s.unjoined_fields.get(agent, Counter())
        if agent is None:
            carried = f"they carry only: {', '.join(sorted(have))}" if have else "they carry no task field"
            out.append((
                f"{rows} RL rows name no agent (agent_ref), so gymverl cannot tell which verifier grades them or check "
                f"that they carry the task fields it reads; {carried}, and a verifier that reads fields "
                f"they lack (NeMo Gym's mcqa reads options and grading_mode, for one) scores them wrongly; {fix}.",
                False,
            ))
            continue
        server = server_for_agent(agent)
        takes = server_request_fields(server)
        absent = sorted((k for k in takes or () if have[k] < rows and not is_ng_key(k)), key=lambda k: (have[k], k))
        if absent:
            fields = ", ".join(f"{k} (absent from {rows - have[k]} rows)" for k in absent)
            out.append((
                f"{rows} RL rows of agent {agent} lack task fields that {server}'s /verify takes in the installed NeMo Gym: "
                f"{fields}; /verify gets only the fields in extra_info.nemo_gym.task, so these rows may score wrongly; {fix}.",
                True,
            ))
    return out


def _verifier_fields_unchecked(s: ConvertSummary) -> str | None:
    """A note when `_fields_the_verifier_takes` could not check any agent's rows because no NeMo Gym
    venv is found (silence would read as "nothing missing"); None otherwise."""
    from gymverl.nemo_gym import ENV_VAR, NemoGymError, find_env

    agents = sorted(a for a in s.unjoined_by_agent if a is not None)
    if not agents:
        return None
    try:
        find_env(None)
        return None
    except NemoGymError:
        pass
    return (
        f"could not check which task fields the verifiers of {', '.join(agents)} take: no NeMo Gym venv was found "
        f"(set ${ENV_VAR} to one, or give --tasks with the NeMo Gym input file these rollouts were collected from)."
    )


def convert(
    input_path: str | os.PathLike[str],
    output: str | os.PathLike[str] | None,
    options: ConvertOptions | None = None,
    *,
    on_progress: OnProgress | None = None,
) -> ConvertSummary:
    """Convert a rollout (or, for rl, tasks) JSONL file to VeRL parquet under `output`; see module doc.

    `output` may be None only with `options.dry_run` (nothing is written then anyway).
    """
    opts = options or ConvertOptions()
    started = time.perf_counter()
    src = as_input(input_path)  # a path, `-`, a pipe, or an Input the caller opened
    if output is None and not opts.dry_run:
        raise ConvertError("an output directory is needed unless this is a dry run.")
    out = Path(output) if output is not None else Path("(dry-run)")
    if opts.fmt not in FORMATS:
        raise ConvertError(f"unknown format {opts.fmt!r}; choose one of {', '.join(FORMATS)}.")
    if opts.agent_loop not in rl_fmt.AGENT_LOOPS:
        raise ConvertError(f"unknown agent loop {opts.agent_loop!r}; choose one of {', '.join(rl_fmt.AGENT_LOOPS)}.")
    if opts.agent_loop != "auto" and opts.fmt != "rl":
        raise ConvertError("--agent-loop applies to --format rl only.")
    if opts.tool_arguments not in ("auto", "string", "object"):
        raise ConvertError(f"unknown tool-argument form {opts.tool_arguments!r}; choose one of auto, string, object.")
    if opts.tool_arguments != "auto" and opts.fmt != "dpo":
        raise ConvertError("--tool-arguments applies to --format dpo only (sft rows choose the form when VeRL loads them).")
    arguments_guessed = False
    counter: TokenCounter | None = None  # the user's tokenizer, loaded once for every use below
    if opts.fmt == "dpo" and opts.tool_arguments == "auto":
        # Resolved once here, so every worker process writes the same form.
        if opts.tokenizer:
            counter = TokenCounter(opts.tokenizer)
            try:
                form = "object" if counter.object_arguments else "string"
            except ConvertError as exc:
                raise ConvertError(f"{exc} (for dpo rows: --tool-arguments string|object)") from None
        else:
            form, arguments_guessed = "string", True
        opts = dataclasses.replace(opts, tool_arguments=form)
    try:
        opts.select.check()
    except ValueError as exc:
        raise ConvertError(str(exc)) from None
    if opts.shard_size is not None and opts.shard_size < 1:
        raise ConvertError("--shard-size must be at least 1.")
    if out.suffix == ".parquet" and opts.select.val_fraction > 0:
        raise ConvertError("with --val-fraction, --output must be a directory (train.parquet and val.parquet go into it).")
    if out.exists() and not out.is_dir() and out.suffix != ".parquet":
        check_outputs([out], [src.path])  # `-o` naming the input itself: that sentence, not this one
        raise ConvertError(f"{out}: exists and is not a directory.")
    if out.suffix == ".parquet" and out.is_dir():
        raise ConvertError(f"{out}: is a directory; give a directory without the .parquet suffix or a file path.")
    if opts.select.max_tokens is not None and not opts.tokenizer:
        raise ConvertError("--max-tokens needs --tokenizer (a local Hugging Face tokenizer directory).")
    tmp = Path(opts.tmp_dir) if opts.tmp_dir is not None else None
    if tmp is not None and not tmp.is_dir() and not tmp.parent.is_dir():
        # A new directory is made for the spill, but not a whole mistyped path (`/nonexistent/x`
        # was created, parents and all, and left behind).
        raise ConvertError(f"--tmp-dir {tmp}: neither it nor its parent directory exists; give a directory to spill into.")
    # Detection reads the first lines, conversion all of them: a pipe is spooled first.
    kind = opts.input_kind if opts.input_kind != "auto" else detect_input_kind(src.reusable(opts.tmp_dir))
    if kind not in ("rollouts", "tasks"):
        raise ConvertError(f"unknown input kind {kind!r}; choose auto, rollouts or tasks.")
    tasks_input = kind == "tasks"
    if tasks_input and opts.fmt != "rl":
        raise ConvertError(
            f"{src} looks like a NeMo Gym tasks file (no 'response' in its lines): only --format rl converts tasks; "
            "collect rollouts first for sft or dpo."
        )
    sel = opts.select
    if opts.fmt == "rl":
        unused = [n for n, v in (("--min-reward", sel.min_reward), ("--best-of-n", sel.best_of_n), ("--dedup", sel.dedup)) if v]
        if unused:
            verb = "select" if len(unused) > 1 else "selects"
            raise ConvertError(f"{', '.join(unused)} {verb} rollouts, but --format rl writes one row per task; use --drop-solved/--drop-unsolved.")
    if tasks_input and (sel.drop_solved or sel.drop_unsolved):
        raise ConvertError("--drop-solved/--drop-unsolved need rollouts with rewards, not a tasks file.")

    task_keys = None
    if tasks_input and opts.fmt == "rl" and is_materialized_inputs(src.reusable(opts.tmp_dir).path):
        kind = "materialized_inputs"  # one line per (task, repeat): rows are grouped by task below
    summary = ConvertSummary(str(src), str(output) if output is not None else None, opts.fmt, input_kind=kind, dry_run=opts.dry_run)
    source = _task_source(opts, src, tasks_input)
    if opts.tasks_path is not None and source is None:
        # It read as "task fields joined 0" before: as if the join had failed.
        summary.warnings.append(f"--tasks {opts.tasks_path} was not read: {opts.fmt} rows hold no task fields (only --format rl joins them).")
    if source is not None:
        task_keys = frozenset(source.field_names)
        summary.task_source, summary.task_source_kind = str(source.path), source.kind
        if source.bad_lines:
            summary.warnings.append(f"{source.bad_lines} lines of {source.path} are not valid NeMo Gym task rows and were ignored.")
    rules = FieldRules(task_keys=task_keys, ground_truth_field=opts.ground_truth_field, keep_all=tasks_input)
    # The user's file (a pipe has no path to protect; its spooled copy is ours).
    inputs = (None if src.spooled else src.path, opts.tasks_path, source.path if source is not None else None)
    def new_sink() -> ParquetSink:
        return ParquetSink(out, SCHEMAS[opts.fmt], shard_size=opts.shard_size, dry_run=opts.dry_run, batch_rows=opts.batch_rows, protect=inputs)

    sink = new_sink()
    # No output may be an input (same path, symlink or hard link): refused before anything is written.
    splits = SPLITS if sel.val_fraction > 0 else ("train",)
    check_outputs([] if opts.dry_run else sink.planned_outputs(splits), inputs, streams=[opts.rejects_path])
    if not opts.dry_run:
        refuse_foreign_parquet(sink.planned_outputs(splits))
    if opts.rejects_path:
        refuse_foreign_rejects(Path(opts.rejects_path))  # (RejectsWriter checks again; here nothing is made yet)
    if sel.max_tokens is None or not opts.tokenizer:
        counter = None
    elif counter is None:
        counter = TokenCounter(opts.tokenizer)
    summary.grouped = needs_grouping(opts.fmt, sel, tasks_input=tasks_input)
    total = src.progress_total
    made_dir = not opts.dry_run and not sink.single_file and not out.is_dir()
    if made_dir:
        try:
            out.mkdir(parents=True, exist_ok=True)  # the directory holds its own lock
        except OSError as exc:
            raise from_os_error(exc, str(out)) from None
    try:
        # Held for the whole run: a second gymverl writing the same output (or rejects file) is refused.
        with output_lock(None if opts.dry_run else out, opts.rejects_path):
            try:
                before = copy.deepcopy(summary)  # (small yet: no line read)
                try:
                    with _fewer_gc_passes():
                        _run(opts, src, summary, rules, sink, counter, tasks_input, on_progress, total, source)
                except RepeatedRollouts:
                    # Rare: a (task, rollout) pair occurs twice. Nothing is committed yet; the grouped
                    # conversion reads the input again and settles them as rl and dpo do.
                    sink.abort()
                    sink, summary = new_sink(), before
                    summary.grouped = True
                    _reread(src, opts)
                    with _fewer_gc_passes():
                        _run(opts, src, summary, rules, sink, counter, tasks_input, on_progress, total, source)
                problems = _task_field_problems(summary, src, source, opts.side_files) if opts.fmt == "rl" and not tasks_input else []
                if problems and opts.strict:
                    raise ConvertError(f"--strict: {problems[0][0]}")
                summary.warnings.extend(text for text, _ in problems)
                summary.task_field_problems = sum(known for _, known in problems)
                guess = rules.guess_warning(sent=False) if opts.fmt == "rl" else None
                if guess:  # once per run, naming every field the name heuristic decided
                    summary.warnings.append(guess)
                unchecked = _verifier_fields_unchecked(summary) if opts.fmt == "rl" and not tasks_input and source is None else None
                if unchecked:
                    summary.warnings.append(unchecked)
                summary.files = sink.commit()
            except BaseException:
                sink.abort()
                raise
    finally:
        if made_dir and not summary.files:
            # A failed run, or one that kept no row, leaves no trace: not even the directory it made.
            with contextlib.suppress(OSError):
                out.rmdir()
    summary.warnings.extend(sink.warnings)
    if summary.mixed_prompt_tasks:
        n = summary.mixed_prompt_tasks
        summary.warnings.append(
            f"{n} task{'s hold' if n != 1 else ' holds'} rollouts with different prompts ({', '.join(summary.mixed_prompt_examples)}"
            f"{', ...' if n > len(summary.mixed_prompt_examples) else ''}): "
            + ("each rl row keeps its task's first prompt" if opts.fmt == "rl" else "pairs and --best-of-n choose across them")
            + ". An environment that deals each rollout its own start (blackjack) writes them so; "
            "collections each numbered from 0 and concatenated do too: convert each collection on its own."
        )
    summary.rows = Counter(sink.counts)
    summary.image_rows, summary.images = sink.image_rows, sink.images
    if sel.val_fraction > 0 and summary.rows["train"] and not summary.rows["val"]:
        # The split is by a hash of the task key: with few tasks a small fraction may draw none.
        tasks = f" of {summary.tasks} tasks" if summary.tasks else ""
        summary.warnings.append(
            f"--val-fraction {sel.val_fraction:g} put no row in val (tasks are split by a hash of their key, and none{tasks} "
            "fell in val): no val.parquet was written; raise --val-fraction or change --split-seed."
        )
    if summary.unsolved_rows and sel.min_reward is None:
        n, t = summary.unsolved_rows, sel.solved_threshold
        summary.warnings.append(
            f"{n} of {sum(summary.rows.values())} sft rows come from rollouts with a reward below {t:g} (answers the verifier failed): "
            f"SFT trains on them as targets. --min-reward {t:g} keeps only solved rollouts (rejection sampling)."
        )
    if arguments_guessed and sink.tool_rows:
        summary.warnings.append(
            f"{sink.tool_rows} dpo rows have tools; their tool-call arguments are written as the model's JSON text, "
            "which chat templates that JSON-encode or iterate arguments (Qwen2.5, Llama 3.1, Qwen3-Coder, Gemma) "
            "render double-encoded or not at all: pass --tokenizer MODEL (the form is taken from its chat template) "
            "or --tool-arguments object."
        )
    summary.bytes_written = sum(os.path.getsize(p) for ps in summary.files.values() for p in ps)
    summary.seconds = time.perf_counter() - started
    if summary.accounted != summary.lines:  # pragma: no cover - an internal bug, never user input
        raise AssertionError(f"accounting mismatch: {summary.accounted} of {summary.lines} lines")
    if opts.fmt == "rl" and summary.missing_ground_truth:
        which = f"field {opts.ground_truth_field!r}" if opts.ground_truth_field else "expected-answer field"
        # Only what is true in every case: compute_score ignores ground_truth, and /verify gets the
        # task fields the row holds (extra_info.nemo_gym.task), which may or may not be enough.
        summary.warnings.append(
            f"{summary.missing_ground_truth} RL rows have no {which}; their reward_model.ground_truth is empty "
            "(gymverl.reward.compute_score does not read that column: /verify gets the task fields in "
            "extra_info.nemo_gym.task, which are only complete when no warning above names missing ones)."
        )
    if sum(summary.rows.values()) == 0:
        summary.warnings.append("no rows were kept, so nothing was written.")
        if opts.fmt == "dpo" and opts.select.min_reward is not None and summary.filtered.get("min_reward"):
            # Pairs need a worse rollout of the same task: --min-reward removed them before pairing.
            summary.warnings.append(
                f"--min-reward removed {summary.filtered['min_reward']} rollouts before pairing, and dpo pairs each "
                "task's better rollouts with its worse ones (the rejected answers): drop --min-reward, or use --min-margin."
            )
    return summary


def _run(
    opts: ConvertOptions,
    src: Input,
    summary: ConvertSummary,
    rules: FieldRules,
    sink: ParquetSink,
    counter: TokenCounter | None,
    tasks_input: bool,
    on_progress: OnProgress | None,
    total: int | None,
    source: TaskSource | None = None,
) -> None:
    with RejectsWriter(opts.rejects_path) as rejects:
        ctx = _Ctx(opts, rules, opts.data_source or src.stem, tasks_input, summary, sink, rejects, counter, source=source)
        workers = max(1, opts.workers)
        handler = _pass1_result if summary.grouped else _stream_result
        if workers > 1:
            results = _parallel_results(ctx, src, handler, workers, on_progress, total)
        else:
            results = _local_results(ctx, src, handler, on_progress, total)
        # closing: on an error or Ctrl-C/SIGTERM the worker pool is shut down here and now, not
        # whenever the traceback that holds the generator is freed.
        with contextlib.closing(results):
            if summary.grouped:
                _convert_grouped(ctx, results, total)
            else:
                _convert_streaming(ctx, results)


def _reread(src: Input, opts: ConvertOptions) -> None:
    """Make `src` readable again for a second conversion, or say why it cannot be."""
    try:
        src.reusable(opts.tmp_dir)
    except InputError:
        raise ConvertError(
            f"{src}: some lines repeat a (task, rollout) pair, and settling them reads the input again, but it is a pipe "
            "already read; write it to a file first (or leave --input-kind at auto, which keeps a copy)."
        ) from None


@contextlib.contextmanager
def _fewer_gc_passes() -> Iterator[None]:
    """Run the cyclic GC less often while converting: every record allocates many short-lived dicts
    (freed by reference counting; they form no cycles), and frequent generation-0 passes cost ~20% CPU."""
    old = gc.get_threshold()
    gc.set_threshold(max(old[0], 50_000), old[1], old[2])
    try:
        yield
    finally:
        gc.set_threshold(*old)
