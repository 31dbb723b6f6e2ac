"""What `convert` is asked to do: `ConvertOptions`, and `ConvertError` for a request it refuses."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from gymverl.jsonl import DEFAULT_MAX_LINE_BYTES
from gymverl.select import SelectOptions
from gymverl.errors import UsageError


class ConvertError(UsageError):
    """A problem that stops the whole conversion (bad option combination, unreadable tokenizer, ...)."""


@dataclass
class ConvertOptions:
    """Everything `convert` needs besides the paths; defaults match `gymverl to-parquet`."""

    fmt: str = "sft"
    select: SelectOptions = field(default_factory=SelectOptions)
    # Task rows to join onto rl rows: an original NeMo Gym tasks file or `<stem>_materialized_inputs.jsonl`
    # (default: the latter when it is beside the input). Its field names are the task fields.
    tasks_path: str | os.PathLike[str] | None = None
    side_files: bool = True  # look for `<stem>_materialized_inputs.jsonl` beside the input
    strict: bool = False  # rl rows that lack task fields the verifier may need are an error, not a warning
    ground_truth_field: str | None = None
    data_source: str | None = None  # default: the agent name, else the input file's stem
    ability: str = "nemo_gym"
    agent_loop: str = "auto"  # rl: the agent_name column (gymverl.formats.rl.AGENT_LOOPS)
    # dpo: tool-call arguments as the model's JSON text ("string") or as objects ("object"); "auto"
    # = the form the chat template of `tokenizer` renders as written, else "string" (with a warning
    # when rows have tools). SFT rows decide at load time instead (GymverlSFTDataset).
    tool_arguments: str = "auto"
    include_reasoning: bool = False
    tokenizer: str | os.PathLike[str] | None = None  # needed by select.max_tokens
    shard_size: int | None = None
    dry_run: bool = False
    rejects_path: str | os.PathLike[str] | None = None
    input_kind: str = "auto"  # auto | rollouts | tasks
    tmp_dir: str | os.PathLike[str] | None = None
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES
    partition_bytes: int = 32 * 1024 * 1024
    batch_rows: int = 1000
    # Processes that parse, validate and build rows; 1 = all in this process (constant ~150 MB).
    # Each extra worker adds roughly 100 MB and scales throughput on multi-core machines.
    workers: int = 1
