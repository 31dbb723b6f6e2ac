"""What a per-line handler returns (inline or from a worker process): one named type per outcome."""

from __future__ import annotations

from typing import Any, Union

import msgspec

# Per-line handlers return one of these; they run inline or in worker processes (so: picklable),
# one per line: msgspec Structs, whose C constructor costs a fraction of a NamedTuple's. gc=False:
# they hold plain values and rows, which never refer back to them.


class Rejected(msgspec.Struct, gc=False):
    """A line that becomes no row: not a valid record, or a valid one no row can be built from."""

    line: int
    code: str
    reason: str
    raw: bytes


class Filtered(msgspec.Struct, gc=False):
    """A valid rollout removed by a per-rollout rule (`select.RULES`); streaming sft also gives its
    (task key, rollout index) `pair`, to tell a repeated rollout (`stream.RepeatedRollouts`)."""

    rule: str
    pair: tuple[str, int] | None = None


class RowResult(msgspec.Struct, gc=False):
    """Streaming: a finished row of `split`; `prompt` (the prompt key) only for rl rows from a tasks file."""

    split: str
    row: dict[str, Any]
    line: int
    prompt: str | None = None


class MetaResult(msgspec.Struct, gc=False):
    """Grouped pass 1: the selection facts of a valid rollout (spilled by `spill._Partitions`) and
    its raw line to spill (b"" once a rule removed it). `status` is the rule that removed it, if any;
    `dedup` its dedup key (only with --dedup); `rollout` its `_ng_rollout_index` when usable;
    `prompt` a fingerprint of its prompt (equal prompts as written: equal fingerprints)."""

    key: str
    line: int
    reward: float
    status: str | None
    dedup: str | None
    rollout: int | None
    prompt: int | None
    raw: bytes


LineResult = Union[Rejected, Filtered, RowResult, MetaResult]
