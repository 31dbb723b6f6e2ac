"""The one runner of VeRL trainers (train-offline's sft_trainer, train-online's main_ppo).

It runs a planned command (`RunPlan`: argv, added environment, options with `out` and
`overwrite`) under gymverl's process supervision (`gymverl.proc`), streams VeRL's console lines as
`Event`s (log lines, `step:N - key:value` metrics, validation, the total step count), keeps
everything in OUTDIR/train.log, and records the command and a `TrainResult` in
OUTDIR/gymverl-train.json. Which metrics are the loss, tokens and reward differs per trainer
(`StepKeys`). OUTDIR's checkpoints are VeRL's (`latest_checkpoint`, `resume_hint`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from gymverl import proc
from gymverl.jsonl import jsonable

MARKER = "gymverl-train.json"
CHECKPOINTS = "checkpoints"
LOG = "train.log"
METRICS = "metrics.jsonl"
TORCHRUN_GRACE = 20.0  # seconds torchrun gets after SIGINT to stop its workers itself


@dataclass
class RunPlan:
    """What `run_training` runs: a VeRL command, the environment variables it adds, and the options
    (a dataclass with `out` and `overwrite`) it came from. TrainPlan (SFT) and
    `gymverl.online.OnlinePlan` (RL) extend it."""

    options: Any
    argv: list[str]
    env: dict[str, str]  # only the variables gymverl adds to the current environment

    @property
    def out(self) -> Path:
        """The output directory."""
        return self.options.out

    @property
    def checkpoints(self) -> Path:
        """VeRL's `trainer.default_local_dir`."""
        return self.options.out / CHECKPOINTS

    def shell(self) -> str:
        """The command as one copy-pasteable shell line (environment included)."""
        import shlex

        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in self.env.items())
        # VeRL's file logger opens OUTDIR/metrics.jsonl without creating its directory.
        mkdir = f"mkdir -p {shlex.quote(str(self.out.resolve()))} && "
        return mkdir + (env + " " if env else "") + shlex.join(self.argv)



@dataclass
class TrainResult:
    """What a finished run produced."""

    returncode: int
    steps: int = 0
    first_loss: Optional[float] = None
    last_loss: Optional[float] = None
    losses: list[float] = field(default_factory=list)
    val_loss: Optional[float] = None  # the last validation loss VeRL logged
    tokens: int = 0
    train_seconds: float = 0.0
    tokens_per_second: Optional[float] = None
    peak_memory_gb: Optional[float] = None
    wall_seconds: float = 0.0
    checkpoint: Optional[Path] = None
    hf_model: Optional[Path] = None
    log: Optional[Path] = None
    cause: Optional[str] = None  # when VeRL failed: its error line from the log (not torchrun's summary box)
    tail: list[str] = field(default_factory=list)
    # RL runs only (None for SFT): the mean reward of every step's rollouts (StepKeys.reward).
    rewards: Optional[list[float]] = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form (`rewards` only for RL runs)."""
        d = asdict(self)
        d.pop("tail")
        if d["rewards"] is None:
            d.pop("rewards")
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in d.items()}

    def failure(self) -> Optional[str]:
        """The sentence for a run VeRL did not finish (None when it did): the exit code, VeRL's own
        error line (not torchrun's summary box, which says nothing about the cause) and the log."""
        if self.returncode == 0:
            return None
        cause = f": {self.cause}" if self.cause else ""
        return f"VeRL exited with code {self.returncode}{cause}; full log: {self.log}"


@dataclass(frozen=True)
class StepKeys:
    """Which metrics of a VeRL `step:N - key:value` line `run_training` reads (they differ per trainer)."""

    loss: str  # TrainResult.losses
    tokens: str  # tokens per step, for the token count and tokens/s
    val_prefix: str  # a line with such keys and no `loss` is a validation line
    val_loss: Optional[str] = None  # TrainResult.val_loss
    reward: Optional[str] = None  # TrainResult.rewards (RL)


# verl.trainer.sft_trainer's console lines.
SFT_KEYS = StepKeys(loss="train/loss", tokens="train/global_tokens", val_prefix="val/", val_loss="val/loss")


@dataclass
class Event:
    """One thing seen while VeRL runs: a log line, a step's metrics, or the total step count."""

    kind: str  # "line" | "step" (training metrics) | "val" (validation loss) | "total" (step count) | "export" (starts)
    line: str = ""
    step: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    total: int = 0


# ---- running --------------------------------------------------------------------------------------

_STEP = re.compile(r"(?:^|[^\w/])step:(\d+) - (.*)$")
_TOTAL = re.compile(r"Total (?:training )?steps: (\d+)")
# main_ppo logs some values as numpy reprs: `actor/grad_norm:np.float64(0.5)`, `num_turns/min:np.int32(2)`.
_NUMPY_SCALAR = re.compile(r"^np\.\w+\((.*)\)$")


def parse_step_line(line: str) -> Optional[tuple[int, dict[str, float]]]:
    """(step, metrics) from a VeRL console-logger line `step:N - key:value - ...`, else None."""
    m = _STEP.search(line)
    if not m:
        return None
    metrics: dict[str, float] = {}
    for part in m.group(2).split(" - "):
        key, sep, value = part.strip().partition(":")
        if not sep:
            continue
        value = value.strip()
        wrapped = _NUMPY_SCALAR.match(value)
        try:
            metrics[key] = float(wrapped.group(1) if wrapped else value)
        except ValueError:
            continue
    return int(m.group(1)), metrics


def _lines(stream: Any) -> Iterator[tuple[bytes, str]]:
    """(raw chunk, line) pairs; tqdm redraws with \\r, so both \\r and \\n end a line."""
    buf = b""
    fd = stream.fileno()
    while True:
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        yield chunk, ""
        buf += chunk
        *complete, buf = re.split(rb"[\r\n]", buf)
        for raw in complete:
            if raw.strip():
                yield b"", raw.decode("utf-8", "replace")
    if buf.strip():
        yield b"", buf.decode("utf-8", "replace")


def run_training(
    plan: RunPlan,
    on_event: Optional[Callable[[Event], None]] = None,
    *,
    keys: StepKeys = SFT_KEYS,
    grace: float = TORCHRUN_GRACE,
) -> TrainResult:
    """Run the planned command, stream its output as events, and collect step metrics.

    The one runner of both trainers: `plan` is a TrainPlan or a `gymverl.online.OnlinePlan`. OUTDIR rules: `--overwrite` empties it first, an earlier metrics.jsonl is kept as
    metrics.N.jsonl, everything the command prints goes to OUTDIR/train.log, and OUTDIR/gymverl-train.json
    records the command and the result. `keys`: which step metrics are the loss, tokens, validation
    and reward. `grace`: seconds the command gets after SIGINT (Ctrl-C) to stop its own workers
    before `gymverl.proc`'s SIGTERM/SIGKILL ladder. Ctrl-C/SIGTERM: the command is stopped, then
    KeyboardInterrupt propagates.
    """
    emit = on_event or (lambda _e: None)
    out = plan.out
    if plan.options.overwrite and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    metrics = out / METRICS
    if metrics.exists():
        # VeRL's file logger truncates its file; keep the earlier run's metrics (resume) beside it.
        n = 1
        while (out / f"metrics.{n}.jsonl").exists():
            n += 1
        metrics.rename(out / f"metrics.{n}.jsonl")
    # Written first: it marks OUTDIR as gymverl's, so a later --overwrite may delete it.
    _write_json(out / MARKER, {"argv": plan.argv, "env": plan.env, "options": jsonable(asdict(plan.options)), "result": None})
    log_path = out / LOG
    result = TrainResult(returncode=-1, log=log_path)
    t0 = time.monotonic()
    first_step_t: Optional[float] = None
    last_step_t: Optional[float] = None
    tokens_after_first = 0
    tail: list[str] = []
    env = {**os.environ, **plan.env}
    if keys.reward is not None:
        result.rewards = []
    # torchrun forwards SIGINT to its workers (in sessions of their own) and gets TORCHRUN_GRACE
    # seconds to stop them (main_ppo: Ray's); then proc's ladder reaches every worker with SIGTERM and SIGKILL.
    with open(log_path, "ab", buffering=0) as log, proc.start(  # unbuffered log: `tail -f` works
        plan.argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, grace=grace
    ) as child:
        try:
            for chunk, line in _lines(child.popen.stdout):
                if chunk:
                    log.write(chunk)
                    continue
                tail.append(line)
                del tail[:-40]
                parsed = parse_step_line(line)
                if parsed and keys.loss not in parsed[1] and any(k.startswith(keys.val_prefix) for k in parsed[1]):
                    # VeRL logs validation as its own `step:N - val/loss:x` line (main_ppo: `val-core/...`).
                    if keys.val_loss and keys.val_loss in parsed[1]:
                        result.val_loss = parsed[1][keys.val_loss]
                    emit(Event("val", line=line, step=parsed[0], metrics=parsed[1]))
                    continue
                if parsed:
                    step, metrics = parsed
                    now = time.monotonic()
                    result.steps = step
                    loss = metrics.get(keys.loss)
                    if loss is not None:
                        result.losses.append(loss)
                    if result.rewards is not None and keys.reward in metrics:
                        result.rewards.append(metrics[keys.reward])
                    tok = int(metrics.get(keys.tokens, 0))
                    result.tokens += tok
                    if first_step_t is None:
                        first_step_t = now
                    else:
                        tokens_after_first += tok
                    last_step_t = now
                    mem = metrics.get("perf/max_memory_allocated_gb")
                    if mem is not None:
                        result.peak_memory_gb = max(result.peak_memory_gb or 0.0, mem)
                    emit(Event("step", line=line, step=step, metrics=metrics))
                    continue
                m = _TOTAL.search(line)
                if m:
                    emit(Event("total", line=line, total=int(m.group(1))))
                emit(Event("line", line=line))
            child.wait()
        except BaseException:
            child.stop()
            raise
    result.returncode = child.returncode
    if result.returncode != 0:
        result.cause = proc.log_file_cause(log_path)
    result.wall_seconds = time.monotonic() - t0
    result.tail = tail
    if result.losses:
        result.first_loss, result.last_loss = result.losses[0], result.losses[-1]
    if first_step_t is not None and last_step_t is not None and last_step_t > first_step_t:
        # Throughput from step 2 on: step 1 carries start-up costs.
        result.train_seconds = last_step_t - first_step_t
        result.tokens_per_second = tokens_after_first / result.train_seconds
    result.checkpoint = latest_checkpoint(plan.checkpoints)
    record_result(plan, result)
    return result


def record_result(plan: RunPlan, result: TrainResult) -> None:
    """Store the command and the run's summary in OUTDIR/gymverl-train.json."""
    _write_json(
        plan.out / MARKER,
        {"argv": plan.argv, "env": plan.env, "options": jsonable(asdict(plan.options)), "result": result.to_dict()},
    )


def latest_checkpoint(checkpoints: Path) -> Optional[Path]:
    """The `global_step_N` directory VeRL recorded as its latest, if any."""
    tracker = checkpoints / "latest_checkpointed_iteration.txt"
    if tracker.is_file():
        step = tracker.read_text().strip()
        path = checkpoints / f"global_step_{step}"
        if path.is_dir():
            return path
    steps = sorted(checkpoints.glob("global_step_*"), key=lambda p: int(p.name.rsplit("_", 1)[1]))
    return steps[-1] if steps else None


def resume_hint(checkpoints: Path, save_setting: str = "--save-freq") -> str:
    """What to do after an interrupted run: continue from the latest checkpoint in `checkpoints`
    (`--resume`), or start over (`--overwrite`) when none was saved (`save_setting` says how often
    the trainer saves)."""
    ckpt = latest_checkpoint(checkpoints)
    if ckpt is not None:
        return f"continue from {ckpt.name} with --resume"
    return f"no checkpoint was saved yet (see {save_setting}); start over with --overwrite"


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)
