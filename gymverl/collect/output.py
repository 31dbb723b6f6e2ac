"""The collector's output file and the files beside it: sidecars, the log, what may be replaced.

The collector writes its output file itself, incrementally (that is what makes NeMo Gym's resume
work and keeps partial output after a crash), so that file is not written atomically by gymverl.
"""

from __future__ import annotations

import os
from pathlib import Path

from gymverl.collect.errors import CollectError


def sidecar_paths(output: str | os.PathLike[str]) -> dict[str, Path]:
    """Files NeMo Gym's collector writes beside `output`: materialized inputs, failures, aggregate metrics."""
    out = Path(output)
    return {
        "materialized_inputs": out.with_name(out.stem + "_materialized_inputs.jsonl"),
        "failures": out.with_name(out.stem + "_failures.jsonl"),
        "aggregate_metrics": out.with_name(out.stem + "_aggregate_metrics.json"),
    }


def prepare_output(output: str | os.PathLike[str], *, overwrite: bool = False, resume: bool = False) -> None:
    """Refuse to clobber an existing output unless told; on overwrite remove it and its sidecars."""
    out = Path(output)
    if overwrite and resume:
        raise CollectError("--overwrite and --resume contradict each other; pass one.")
    if out.exists() and out.is_dir():
        raise CollectError(f"{out}: is a directory; give a file path for the rollouts.")
    if not out.parent.exists():
        raise CollectError(f"{out.parent}: no such directory for the output.")
    if out.exists() and not (overwrite or resume):
        raise CollectError(f"{out} already exists: pass --resume to continue that collection or --overwrite to replace it.")
    if overwrite:
        # NeMo Gym appends to its failures sidecar even on a fresh run: stale failures would be miscounted.
        for p in [out, *sidecar_paths(out).values()]:
            p.unlink(missing_ok=True)


def default_log_path(output: str | os.PathLike[str]) -> Path:
    """Where the collector's own output goes: `<stem>_collect.log` beside the rollouts."""
    out = Path(output)
    return out.with_name(out.stem + "_collect.log")
