"""Offline training: launch VeRL's own SFT trainer (`verl.trainer.sft_trainer`) on gymverl parquet.

gymverl never trains anything itself. This module
- checks the inputs (rows vs batch size, output directory, model path, GPUs) with one-sentence errors,
- builds the `torchrun ... -m verl.trainer.sft_trainer key=value ...` argv and its environment
  (`build_command`, pure, so `--dry-run` and tests see exactly what would run),
- runs it with the runner both trainers share (`gymverl.runner.run_training`: VeRL's
  `step:N - train/loss:...` console lines as events, OUTDIR/train.log, gymverl-train.json),
- exports the last checkpoint as a Hugging Face model directory with VeRL's `verl.model_merger`
  (`export_hf`).

`--device cpu` adds the CPU platform plugin (`gymverl.verl_cpu`) through VeRL's external-module
hook: a smoke mode for pipelines and tests, not for real training.

Output directory layout (OUTDIR):
    checkpoints/global_step_N/   VeRL's FSDP checkpoints (resume from here with --resume)
    hf_model/                    the exported Hugging Face model (+ lora_adapter/ with LoRA)
    train.log                    everything VeRL printed
    metrics.jsonl                VeRL's own file logger: {"step", "data": {...}} per step
                                 (an earlier run's file is kept as metrics.1.jsonl, ... on --resume)
    gymverl-train.json           the command, environment additions and a summary of the run
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from gymverl import proc
from gymverl.errors import UsageError
from gymverl.overrides import override, override_key
# The runner both trainers share lives in gymverl.runner; its names stay importable from here.
from gymverl.runner import (  # noqa: F401 - re-exported
    CHECKPOINTS, LOG, MARKER, METRICS, SFT_KEYS, TORCHRUN_GRACE, Event, RunPlan, StepKeys, TrainResult,
    latest_checkpoint, parse_step_line, record_result, resume_hint, run_training,
)

TRAINER_MODULE = "verl.trainer.sft_trainer"
MERGER_MODULE = "verl.model_merger"
VERL_DEFAULT_BATCH_SIZE = 256
# VeRL's data.max_token_len_per_gpu (the token budget of one dynamic batch): no row may be longer.
VERL_DEFAULT_MAX_TOKEN_LEN = 8192
HF_MODEL = "hf_model"
DATA_MODULE = Path(__file__).with_name("verl_data.py")
# VeRL's `data.custom_cls` for JSON-string SFT rows: gymverl.verl_data.GymverlSFTDataset, named by
# file and class so planning never imports VeRL (the test suite imports it and checks the name).
DATA_CLASS = (str(DATA_MODULE), "GymverlSFTDataset")

# CPU smoke mode: load gymverl's platform plugin (gymverl/verl_cpu.py) inside every worker.
CPU_ENV = {
    "VERL_USE_EXTERNAL_MODULES": "gymverl.verl_cpu",
    "VERL_PLATFORM": "cpu",
    # The FSDP engine is registered for cuda/npu only; this picks its class, not the device.
    "VERL_ENGINE_DEVICE": "cuda",
}
CPU_OVERRIDES = [
    "trainer.device=cpu",
    "engine.strategy=fsdp2",
    "+model.override_config.attn_implementation=sdpa",
    # VeRL's 8 dataloader workers would only compete with training for the cores.
    "data.num_workers=0",
]


class TrainError(UsageError):
    """A problem with the training inputs or run, described in one sentence."""


@dataclass
class TrainOptions:
    """Everything `gymverl train-offline` needs (the CLI options, as a plain dataclass)."""

    train: Path
    model: str
    out: Path
    val: Optional[Path] = None
    epochs: int = 1
    lr: float = 1e-5
    batch_size: Optional[int] = None  # global; None: VeRL's 256, capped at the dataset size
    micro_batch_size: int = 4  # per GPU
    max_length: int = 1024
    lora_rank: int = 0
    lora_alpha: Optional[int] = None
    lora_target_modules: str = "all-linear"
    nproc: int = 1
    nnodes: int = 1
    node_rank: int = 0
    master_addr: Optional[str] = None
    master_port: int = 29500
    device: str = "cuda"
    resume: bool = False
    overwrite: bool = False
    export: bool = True
    save_freq: int = -1
    project: str = "gymverl"
    experiment: Optional[str] = None
    overrides: list[str] = field(default_factory=list)


@dataclass
class TrainPlan(RunPlan):
    """A checked, ready-to-run training command."""

    options: TrainOptions
    train_rows: int
    val_rows: Optional[int]
    batch_size: int
    steps_per_epoch: int
    total_steps: int
    data_class: Optional[tuple[str, str]]  # (path, class name) of the dataset class, when used
    notes: list[str] = field(default_factory=list)


# ---- inputs ---------------------------------------------------------------------------------------


def parquet_info(path: Path) -> tuple[int, dict[str, str]]:
    """Row count and {column: arrow type} of a parquet file, from its footer only."""
    import pyarrow.parquet as pq

    if not path.is_file():
        raise TrainError(f"{path}: no such parquet file.")
    try:
        pf = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several types for a bad file
        try:
            with path.open("rb") as f:
                head = f.read(64).lstrip()
        except OSError:
            head = b""
        if head[:1] == b"{" or path.name.endswith((".jsonl", ".jsonl.gz", ".json")):
            # A rollout file where parquet goes: the fix is one option away.
            raise TrainError(f"{path}: not a parquet file but JSON lines; to train on rollouts, give them with --from-rollouts {path}.") from None
        raise TrainError(f"{path}: not a readable parquet file ({exc}).") from None
    schema = pf.schema_arrow
    return pf.metadata.num_rows, {f.name: str(f.type) for f in schema}


def _looks_like_hub_id(model: str) -> bool:
    return (
        re.fullmatch(r"[A-Za-z0-9][\w.\-]*/[\w.\-]+", model) is not None
        and not model.startswith((".", "/", "~"))
    )


def check_model(model: str) -> Optional[str]:
    """Raise TrainError unless `model` is a local model directory; returns a note for a Hub id."""
    p = Path(model).expanduser()
    if p.exists():
        if not (p / "config.json").is_file():
            raise TrainError(f"{model}: not a Hugging Face model directory (no config.json).")
        return None
    if _looks_like_hub_id(model):
        return f"{model} is not a local directory; VeRL will load it as a Hugging Face Hub id."
    raise TrainError(f"{model}: model path does not exist.")


def check_out_dir(out: Path, resume: bool, overwrite: bool) -> Optional[str]:
    """Refuse an existing non-empty OUTDIR unless --resume or --overwrite (VeRL would silently resume)."""
    if resume and overwrite:
        raise TrainError("--resume and --overwrite exclude each other.")
    if not out.exists():
        if resume:
            raise TrainError(f"{out}: nothing to resume (directory does not exist).")
        return None
    if not out.is_dir():
        raise TrainError(f"{out}: exists and is not a directory.")
    if not any(out.iterdir()):
        return None
    ours = (out / MARKER).exists() or (out / CHECKPOINTS).exists()
    if resume:
        if not (out / CHECKPOINTS).exists():
            raise TrainError(f"{out}: no {CHECKPOINTS}/ to resume from.")
        return f"resuming from the latest checkpoint in {out / CHECKPOINTS}"
    if overwrite:
        if not ours:
            # Never delete a directory gymverl did not write.
            raise TrainError(f"{out}: not a gymverl training directory; refusing to overwrite it.")
        return f"overwriting {out}"
    raise TrainError(
        f"{out}: output directory exists; VeRL would silently resume from it, "
        "pass --resume to continue training or --overwrite to start over."
    )


def check_gpus(nproc: int, *, none_visible: str = "--device cuda but no CUDA GPU is visible here; use --device cpu for a smoke run.") -> None:
    """Raise TrainError unless this machine has at least `nproc` CUDA GPUs (`none_visible`: the
    sentence when there is none, naming the caller's way out)."""
    import torch

    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if n == 0:
        raise TrainError(none_visible)
    if n < nproc:
        raise TrainError(f"--nproc {nproc} but only {n} CUDA GPU(s) are visible.")




def check_overrides(overrides: list[str]) -> None:
    """Raise TrainError for a pass-through argument that is not a Hydra `key=value` override."""
    for o in overrides:
        if o.startswith("-"):
            raise TrainError(f"{o!r}: VeRL overrides are key=value (options go before `--`).")
        if "=" not in o and not o.startswith("~"):
            raise TrainError(f"{o!r}: a VeRL override must look like key=value.")


def steps_per_epoch(rows: int, batch_size: int, world: int) -> int:
    """Optimizer steps per epoch the way VeRL counts them (DistributedSampler + drop_last)."""
    per_rank_rows = rows // world
    per_rank_batch = batch_size // world
    return per_rank_rows // per_rank_batch if per_rank_batch else 0


def load_tokenizer(model: str) -> Any:
    """The tokenizer of local model directory `model` as a `gymverl.convert.TokenCounter`.

    Raises TrainError when there is none or it has no chat template (VeRL renders every SFT row
    with it), so `--dry-run` catches it before torchrun starts.
    """
    from gymverl.convert import ConvertError, TokenCounter

    try:
        return TokenCounter(Path(model).expanduser())
    except ConvertError as exc:
        if "no chat template" in str(exc):
            raise TrainError(f"the tokenizer in {model} has no chat template; SFT needs one.") from None
        if "no tokenizer files" in str(exc):
            raise TrainError(str(exc)) from None
        raise TrainError(f"{model}: no usable tokenizer ({exc}).") from None


def check_tool_arguments(paths: list[Path], counter: Any, mode: Optional[str]) -> None:
    """Raise TrainError when gymverl's VeRL dataset would stop on the tool-call argument form.

    The same decision as `gymverl.verl_data.GymverlSFTDataset` (`mode`: the `data.tool_arguments`
    override, None/auto = probe the template), taken before torchrun starts: a template that renders
    neither form, or object arguments asked for rows whose arguments are not a JSON object.
    Sets the counter's form so `check_lengths` counts tokens the same way.
    """
    import pyarrow.parquet as pq

    from gymverl.convert import ConvertError
    from gymverl.formats.sft import has_tool_calls, non_object_arguments

    if mode not in (None, "auto", "object", "string"):
        raise TrainError(f"data.tool_arguments must be auto, object or string, got {mode!r}.")
    rows: list[tuple[Path, int, Any]] = []
    for path in paths:
        if "messages" not in pq.read_schema(path).names:
            continue
        for i, value in enumerate(pq.read_table(path, columns=["messages"]).column("messages").to_pylist()):
            if has_tool_calls(value):
                rows.append((path, i, value))
    if not rows:
        return
    if mode in ("object", "string"):
        counter.set_form(mode)
    try:
        wants_objects = counter.object_arguments
    except ConvertError as exc:
        raise TrainError(f"{rows[0][0]}: {exc}") from None
    if not wants_objects:
        return
    for path, i, value in rows:
        bad = non_object_arguments(json.loads(value) if isinstance(value, (str, bytes)) else value)
        if bad:
            raise TrainError(
                f"{path}: row {i + 1} has a tool call whose arguments are not a JSON object ({bad[0][:60]!r}), which the model's "
                "chat template (it needs object arguments) cannot render as written; rebuild the data without --keep-malformed-calls."
            )


def check_lengths(path: Path, counter: Any, max_length: int) -> None:
    """Raise TrainError when a row of SFT parquet `path` has more than `max_length` chat-template tokens.

    VeRL (truncation=error) would stop at the first such row with a traceback deep in its log; this
    names the longest row (its position and the rollout line it came from) and the option to change.
    Counts the way VeRL's dataset does (the model's chat template, tools included).
    """
    import pyarrow.parquet as pq

    from gymverl.formats import decode_json  # gymverl's parquet holds JSON text; native lists pass through

    table = pq.read_table(path, columns=[c for c in ("messages", "tools", "extra_info") if c in pq.read_schema(path).names])
    from transformers.utils import logging as hf_logging

    long_rows: list[tuple[int, int]] = []  # (tokens, row index)
    columns = {name: table.column(name).to_pylist() for name in table.column_names}
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "sequence length is longer than ..." is what we report, once
    try:
        for i, messages in enumerate(columns["messages"]):
            tools = decode_json(columns["tools"][i]) if "tools" in columns else None
            n = counter.count(decode_json(messages), tools or None)
            if n > max_length:
                long_rows.append((n, i))
    finally:
        hf_logging.set_verbosity(verbosity)
    if not long_rows:
        return
    n, i = max(long_rows)
    extra = columns.get("extra_info", [None] * (i + 1))[i]
    source = f" from input line {extra['line']}" if isinstance(extra, dict) and extra.get("line") else ""
    raise TrainError(
        f"{path}: {len(long_rows)} of {table.num_rows} rows are longer than --max-length {max_length} tokens "
        f"(the longest, row {i + 1}{source}, has {n:,}); raise --max-length or drop long rows with "
        "`gymverl to-parquet --max-tokens`."
    )


def _override_value(overrides: list[str], key: str) -> Optional[str]:
    """The value the user's pass-through overrides give `key`, if any (the last one wins)."""
    values = [o.split("=", 1)[1] for o in overrides if "=" in o and override_key(o) == key]
    return values[-1] if values else None


def _override_int(overrides: list[str], key: str, default: int) -> int:
    value = _override_value(overrides, key)
    return int(value) if value is not None and value.isdigit() else default


def token_budget(opts: TrainOptions) -> int | None:
    """Tokens per micro batch and process (VeRL's `data.max_token_len_per_gpu`) when VeRL packs
    micro batches by tokens (`data.use_dynamic_bsz`, on by default in its SFT trainer); None when an
    override turns that off and `--micro-batch-size` rows make a micro batch instead."""
    if str(_override_value(opts.overrides, "data.use_dynamic_bsz")).lower() in ("false", "0"):
        return None
    default = max(VERL_DEFAULT_MAX_TOKEN_LEN, _override_int(opts.overrides, "data.max_length", opts.max_length))
    return _override_int(opts.overrides, "data.max_token_len_per_gpu", default)


# ---- the command ----------------------------------------------------------------------------------


def torchrun_path() -> str:
    """The `torchrun` beside this Python (so the trainer runs in the same environment)."""
    beside = Path(sys.executable).with_name("torchrun")
    return str(beside) if beside.exists() else (shutil.which("torchrun") or "torchrun")


def target_modules(text: str) -> str | list[str]:
    """--lora-target-modules as VeRL's model.target_modules: `all-linear` stays a string; a list,
    written `[q_proj,v_proj]` (Hydra's form) or `q_proj,v_proj`, becomes a list of module names."""
    inner = text.strip()
    if inner.startswith("[") and inner.endswith("]"):
        inner = inner[1:-1]
    elif "," not in inner:
        return text
    return [m.strip().strip("'\"") for m in inner.split(",") if m.strip()]


def build_command(
    opts: TrainOptions,
    *,
    batch_size: int,
    data_class: Optional[tuple[str, str]] = None,
    torchrun: Optional[str] = None,
) -> tuple[list[str], dict[str, str]]:
    """The torchrun argv and the environment variables to add; pure (no checks, no I/O)."""
    launcher = [torchrun or torchrun_path()]
    if opts.nnodes == 1:
        launcher += ["--standalone", "--nnodes=1", f"--nproc_per_node={opts.nproc}"]
    else:
        launcher += [
            f"--nnodes={opts.nnodes}",
            f"--nproc_per_node={opts.nproc}",
            f"--node_rank={opts.node_rank}",
            f"--master_addr={opts.master_addr}",
            f"--master_port={opts.master_port}",
        ]
    out = opts.out.resolve()
    cfg: list[tuple[str, Any]] = [
        ("data.train_files", opts.train.resolve()),
        ("data.val_files", opts.val.resolve() if opts.val else None),
        ("data.messages_key", "messages"),
        ("data.tools_key", "tools"),
        ("data.train_batch_size", batch_size),
        ("data.micro_batch_size_per_gpu", opts.micro_batch_size),
        ("data.max_length", opts.max_length),
        # Dynamic batching packs rows up to this many tokens; a row longer than it fails VeRL's
        # assertion, so any --max-length above VeRL's 8192 must raise it too.
        ("data.max_token_len_per_gpu", token_budget(opts)),
        ("model.path", opts.model if _looks_like_hub_id(opts.model) and not Path(opts.model).exists() else Path(opts.model).expanduser().resolve()),
        ("optim.lr", opts.lr),
        ("trainer.total_epochs", opts.epochs),
        ("trainer.default_local_dir", out / CHECKPOINTS),
        ("trainer.project_name", opts.project),
        ("trainer.experiment_name", opts.experiment or opts.out.name),
        ("trainer.logger", ["console", "file"]),
        ("trainer.nnodes", opts.nnodes),
        ("trainer.n_gpus_per_node", opts.nproc),
        ("trainer.save_freq", opts.save_freq),
        # gymverl checks OUTDIR itself: resume only when asked, never by accident.
        ("trainer.resume_mode", "auto" if opts.resume else "disable"),
        # Hydra would otherwise write outputs/<date>/<time>/ into the user's working directory.
        ("hydra.run.dir", out / "hydra"),
    ]
    if data_class:
        cfg += [("data.custom_cls.path", Path(data_class[0])), ("data.custom_cls.name", data_class[1])]
    if opts.lora_rank > 0:
        cfg += [
            ("model.lora_rank", opts.lora_rank),
            ("model.lora_alpha", opts.lora_alpha if opts.lora_alpha is not None else 2 * opts.lora_rank),
            ("model.target_modules", target_modules(opts.lora_target_modules)),
        ]
    env = {
        "PYTHONUNBUFFERED": "1",  # step lines must reach the progress view as they happen
        "VERL_FILE_LOGGER_PATH": str(out / METRICS),
    }
    overrides = [override(k, v) for k, v in cfg]
    if opts.device == "cpu":
        env.update(CPU_ENV)
        overrides += CPU_OVERRIDES
    # The user's pass-through overrides win: drop ours for the same key (Hydra rejects duplicates).
    user_keys = {override_key(o) for o in opts.overrides}
    overrides = [o for o in overrides if override_key(o) not in user_keys] + list(opts.overrides)
    return launcher + ["-m", TRAINER_MODULE] + overrides, env


def plan_training(opts: TrainOptions, *, check_device: bool = True, check_out: bool = True) -> TrainPlan:
    """Check the inputs and build the command; raises TrainError with one clear sentence."""
    if opts.device not in ("cuda", "cpu"):
        raise TrainError(f"--device must be cuda or cpu, not {opts.device!r}.")
    for name in ("epochs", "nproc", "nnodes", "micro_batch_size", "max_length", "batch_size"):
        if getattr(opts, name) is not None and getattr(opts, name) < 1:
            raise TrainError(f"--{name.replace('_', '-')} must be at least 1.")
    if opts.lora_rank < 0:
        raise TrainError("--lora-rank must be 0 (off) or positive.")
    if not opts.lr > 0:
        raise TrainError("--lr must be positive.")
    if opts.nnodes > 1 and not opts.master_addr:
        raise TrainError("--nnodes > 1 needs --master-addr (the address of the node with --node-rank 0).")
    if not 0 <= opts.node_rank < opts.nnodes:
        raise TrainError(f"--node-rank must be between 0 and {opts.nnodes - 1}.")
    check_overrides(opts.overrides)
    notes: list[str] = []

    rows, columns = parquet_info(opts.train)
    if "messages" not in columns:
        raise TrainError(f"{opts.train}: no `messages` column; write it with `gymverl to-parquet --format sft`.")
    if rows == 0:
        raise TrainError(f"{opts.train} has no rows.")
    val_rows = None
    if opts.val:
        val_rows, val_columns = parquet_info(opts.val)
        if "messages" not in val_columns:
            raise TrainError(f"{opts.val}: no `messages` column.")
        if val_rows == 0:
            raise TrainError(f"{opts.val} has no rows.")
    world = opts.nproc * opts.nnodes
    if opts.batch_size is None:
        # VeRL's default, but never more than the data: a 20-row smoke set (and its validation
        # split, which VeRL reads in batches of the same size) should just work.
        fewest, what = (val_rows, "validation") if val_rows is not None and val_rows < rows else (rows, "training")
        batch_size = min(VERL_DEFAULT_BATCH_SIZE, fewest - fewest % world)
        if batch_size != VERL_DEFAULT_BATCH_SIZE:
            notes.append(f"batch size {batch_size} (VeRL's default {VERL_DEFAULT_BATCH_SIZE} capped at the {fewest} {what} rows)")
    else:
        batch_size = opts.batch_size
    if batch_size < world or batch_size % world:
        raise TrainError(f"batch size {batch_size} must be a multiple of the {world} training processes.")
    if rows < batch_size:
        raise TrainError(
            f"{opts.train}: {rows} training rows, fewer than the batch size {batch_size}; "
            "VeRL would run 0 steps and fail, lower --batch-size."
        )
    if val_rows is not None and val_rows < batch_size:
        raise TrainError(
            f"{opts.val}: {val_rows} validation rows, fewer than the batch size {batch_size} "
            "(VeRL validates in batches of that size), lower --batch-size or add rows."
        )
    per_rank = batch_size // world
    if token_budget(opts) is None and per_rank % opts.micro_batch_size:
        # VeRL asserts this ("data size must be divisible by ... micro_batch_size_per_gpu") mid-run.
        raise TrainError(
            f"with data.use_dynamic_bsz=false each of the {world} training processes splits its {per_rank} rows "
            f"per step into micro batches of --micro-batch-size {opts.micro_batch_size}, which must divide {per_rank}."
        )
    per_epoch = steps_per_epoch(rows, batch_size, world)
    if per_epoch == 0:
        raise TrainError(f"{rows} training rows over {world} processes give no full batch of {batch_size}.")
    left_out = rows - per_epoch * batch_size
    if left_out > 0:
        notes.append(f"{left_out} of the {rows} training rows are left out of each epoch (VeRL drops the last incomplete batch of {batch_size})")

    data_class = DATA_CLASS if columns["messages"] in ("string", "large_string") else None

    note = check_model(opts.model)
    if note:
        notes.append(note)
    else:
        counter = load_tokenizer(opts.model)
        check_tool_arguments([p for p in (opts.train, opts.val) if p], counter, _override_value(opts.overrides, "data.tool_arguments"))
        max_length = _override_int(opts.overrides, "data.max_length", opts.max_length)
        if _override_value(opts.overrides, "data.truncation") in (None, "error"):
            for path in filter(None, (opts.train, opts.val)):
                check_lengths(path, counter, max_length)
    if check_out:
        note = check_out_dir(opts.out, opts.resume, opts.overwrite)
        if note:
            notes.append(note)
    if opts.device == "cuda" and check_device:
        check_gpus(opts.nproc)

    argv, env = build_command(opts, batch_size=batch_size, data_class=data_class)
    total = per_epoch * opts.epochs
    for o in opts.overrides:
        if override_key(o) == "trainer.total_training_steps" and o.split("=", 1)[1].isdigit():
            total = int(o.split("=", 1)[1])
    return TrainPlan(
        options=opts,
        argv=argv,
        env=env,
        train_rows=rows,
        val_rows=val_rows,
        batch_size=batch_size,
        steps_per_epoch=per_epoch,
        total_steps=total,
        data_class=data_class,
        notes=notes,
    )


# ---- --from-rollouts -----------------------------------------------------------------------------


@dataclass
class PreparedData:
    """SFT parquet made from rollouts by `sft_from_rollouts` (gymverl.convert)."""

    train: Path
    val: Optional[Path]
    rows: int
    val_rows: int
    lines: int
    rejected: int
    summary: dict[str, Any]


def sft_from_rollouts(
    rollouts: Path,
    out_dir: Path,
    *,
    min_reward: Optional[float] = 1.0,
    best_of_n: Optional[int] = None,
    dedup: bool = False,
    val_fraction: float = 0.0,
    rejects: Optional[Path] = None,
) -> PreparedData:
    """Rejection sampling + SFT conversion (`gymverl to-parquet --format sft`) into `out_dir`."""
    from gymverl.convert import ConvertError, ConvertOptions, convert
    from gymverl.jsonl import InputError
    from gymverl.select import SelectOptions

    select = SelectOptions(min_reward=min_reward, best_of_n=best_of_n, dedup=dedup, val_fraction=val_fraction)
    try:
        summary = convert(rollouts, out_dir, ConvertOptions(fmt="sft", select=select, rejects_path=rejects))
    except (ConvertError, InputError) as exc:
        raise TrainError(str(exc)) from None
    files = summary.files
    if not files.get("train"):
        raise TrainError(
            f"{rollouts}: no rollout passed the selection ({summary.lines} lines, {summary.rejected} rejected); "
            "nothing to train on."
        )
    if len(files["train"]) != 1 or len(files.get("val", [])) > 1:  # pragma: no cover - no shard_size given
        raise TrainError("expected one train parquet file.")
    return PreparedData(
        train=Path(files["train"][0]),
        val=Path(files["val"][0]) if files.get("val") else None,
        rows=summary.rows.get("train", 0),
        val_rows=summary.rows.get("val", 0),
        lines=summary.lines,
        rejected=summary.rejected,
        summary=summary.to_dict(),
    )


def plan_from_rollouts(
    opts: TrainOptions, rollouts: Path, *, dry_run: bool = False, **select: Any
) -> tuple[TrainPlan, PreparedData]:
    """Check OUTDIR, convert the rollouts into OUTDIR/data (a temporary copy for a dry run), plan."""
    import tempfile

    note = check_out_dir(opts.out, opts.resume, opts.overwrite)
    data_dir = opts.out / "data"
    user_val = opts.val
    if dry_run:
        with tempfile.TemporaryDirectory(prefix="gymverl-dry-") as tmp:
            prepared = sft_from_rollouts(rollouts, Path(tmp), **select)
            opts.train, opts.val = prepared.train, user_val or prepared.val
            plan = plan_training(opts, check_device=False, check_out=False)
        # Show the paths the real run will use.
        plan.argv = [a.replace(tmp, str(data_dir.resolve())) for a in plan.argv]
        prepared.train = data_dir / prepared.train.name
        prepared.val = data_dir / prepared.val.name if prepared.val else None
        opts.train, opts.val = prepared.train, user_val or prepared.val
    else:
        if opts.overwrite and opts.out.exists():
            shutil.rmtree(opts.out)  # check_out_dir made sure it is a gymverl directory
            opts.overwrite = False
        data_dir.mkdir(parents=True, exist_ok=True)
        prepared = sft_from_rollouts(rollouts, data_dir, rejects=data_dir / "rejects.jsonl", **select)
        opts.train, opts.val = prepared.train, user_val or prepared.val
        plan = plan_training(opts, check_out=False)
    if note:
        plan.notes.append(note)
    plan.notes.insert(0, f"{prepared.rows} train + {prepared.val_rows} val rows selected from {prepared.lines} rollout lines")
    if select.get("val_fraction") and not prepared.val_rows and user_val is None:
        # The split is by task: with few tasks a small fraction can hold none of them.
        plan.notes.insert(1, f"--val-fraction {select['val_fraction']:g} put no task in the validation split, so this run validates nothing; raise it or give --val")
    if dry_run:
        plan.notes.append(f"the command reads {data_dir.resolve()}, which a real run writes first (a dry run writes nothing)")
    return plan, prepared


def export_hf(checkpoint: Path, target: Path, *, merge_lora: bool = True, log: Optional[Path] = None) -> Path:
    """Merge a VeRL FSDP checkpoint into a Hugging Face model directory with `verl.model_merger`.

    With LoRA, VeRL's merger writes the base weights plus `lora_adapter/`; when `merge_lora` and
    peft is installed, the adapter is also folded into the weights so `target` loads as a plain model.
    """
    tmp = target.with_name(f".{target.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    argv = [sys.executable, "-m", MERGER_MODULE, "merge", "--backend", "fsdp",
            "--local_dir", str(checkpoint), "--target_dir", str(tmp)]
    with proc.start(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) as merger:  # stopped on Ctrl-C/SIGTERM
        output = merger.popen.communicate()[0]
    if log is not None:
        with open(log, "ab") as f:
            f.write(b"\n$ " + " ".join(argv).encode() + b"\n" + output)
    if merger.returncode != 0:
        text = output.decode("utf-8", "replace")
        last = proc.log_cause(text.splitlines()) or (text.strip().splitlines()[-1:] or ["no output"])[0]
        raise TrainError(f"verl.model_merger failed on {checkpoint} ({last}).")
    if merge_lora and (tmp / "lora_adapter" / "adapter_config.json").is_file():
        _fold_lora(tmp)
    if target.exists():
        shutil.rmtree(target)
    tmp.rename(target)
    return target


def _fold_lora(model_dir: Path) -> None:
    """Fold `model_dir/lora_adapter` into the base weights in `model_dir` (peft's merge_and_unload)."""
    try:
        from peft import PeftModel
    except ImportError:
        return  # the adapter stays beside the base weights, loadable with peft
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # keep the CLI's own output clean
    base = AutoModelForCausalLM.from_pretrained(str(model_dir), torch_dtype="auto")
    merged = PeftModel.from_pretrained(base, str(model_dir / "lora_adapter")).merge_and_unload()
    merged.save_pretrained(str(model_dir), safe_serialization=True)



def train_offline(
    opts: TrainOptions, on_event: Optional[Callable[[Event], None]] = None, *, plan: Optional[TrainPlan] = None
) -> TrainResult:
    """Plan, run and export in one call (the library form of `gymverl train-offline`).

    `plan`: one already made for `opts` (by `plan_training` or `plan_from_rollouts`), run as it is.
    A run VeRL did not finish is returned (`result.failure()` says why); export problems raise
    TrainError. `on_event` also gets Event("export") when the export starts."""
    plan = plan if plan is not None else plan_training(opts)
    result = run_training(plan, on_event)
    if result.returncode == 0 and opts.export:
        if result.checkpoint is None:
            raise TrainError(f"VeRL finished but wrote no checkpoint under {plan.checkpoints}.")
        if on_event is not None:
            on_event(Event("export"))
        result.hf_model = export_hf(result.checkpoint, plan.out / HF_MODEL, log=result.log)
        record_result(plan, result)
    return result
