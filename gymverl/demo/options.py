"""What `gymverl demo` takes and where it reads and writes: options, steps, data and output folders."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from gymverl.errors import UsageError

REPO_DIR = Path(__file__).resolve().parent.parent.parent
SAMPLE_DATA = REPO_DIR / "sample_data"
DEFAULT_OUT = Path("gymverl-demo-out")
STEPS = ("servers", "model", "validate", "rescore", "stats", "parquet", "preview", "reward", "train")
# What `--skip` accepts; skipping rescore also skips the servers it needs.
SKIPPABLE = ("rescore", "stats", "parquet", "reward", "train")


class DemoError(UsageError):
    """A problem with the demo's options (bad output directory, missing sample data): one sentence."""


@dataclass
class DemoOptions:
    """Everything `gymverl demo` takes (the CLI options)."""

    out: Path | None = None  # None: a fresh ./gymverl-demo-out[-N]
    data: Path = SAMPLE_DATA
    skip: frozenset[str] = frozenset()
    nemo_gym_env: Path | None = None
    overwrite: bool = False
    server_timeout: float = 600.0
    train_epochs: int = 2
    train_batch_size: int = 2
    train_max_length: int = 1024
    val_fraction: float = 0.2


def fresh_out_dir(base: Path = DEFAULT_OUT) -> Path:
    """`base` if it does not exist or is empty, else the first free `base-2`, `base-3`, ..."""
    if not base.exists() or (base.is_dir() and not any(base.iterdir())):
        return base
    n = 2
    while True:
        cand = base.with_name(f"{base.name}-{n}")
        if not cand.exists():
            return cand
        n += 1


def prepare_out_dir(opts: DemoOptions) -> Path:
    """The output directory to use (created); raises DemoError for an unusable one."""
    if opts.out is None:
        out = fresh_out_dir()
    else:
        out = opts.out
        if out.exists() and not out.is_dir():
            raise DemoError(f"--output {out} is a file, not a directory.")
        if out.is_dir() and any(out.iterdir()):
            if not opts.overwrite:
                raise DemoError(f"--output {out} is not empty; pass --overwrite to replace it or choose another directory.")
            if not (out / "demo.json").exists():
                raise DemoError(f"--output {out} was not written by `gymverl demo` (no demo.json); refusing to delete it.")
            import shutil

            shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    return out


def check_data(data: Path) -> tuple[Path, Path]:
    """The (tasks, rollouts) files of a demo data directory; raises DemoError when missing."""
    rollouts, tasks = data / "rollouts.jsonl", data / "tasks.jsonl"
    if not rollouts.is_file():
        raise DemoError(
            f"{rollouts}: sample rollouts not found; run the demo from a gymverl checkout or pass --data DIR."
        )
    return tasks, rollouts
