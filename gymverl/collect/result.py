"""What a collection came to: `CollectResult` and its verdict (ok, exit code, one sentence)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gymverl.collect.run import RunResult
from gymverl.records import ValidationSummary
from gymverl.sidecars import FailureReport


@dataclass
class CollectResult:
    """Outcome of `collect`: the run, the validation of its output, and a verdict with its exit code."""

    output: str
    log: str
    argv: list[str]
    expected: int
    run: RunResult
    validation: ValidationSummary | None
    failures_path: str | None
    ok: bool
    code: int
    message: str
    servers: dict[str, str] = field(default_factory=dict)
    failures: FailureReport | None = None  # the failures file settled against the rollouts present
    quality: dict[str, Any] | None = None  # `quality_report`: NeMo Gym 0.7.0's health check

    @property
    def failed(self) -> int:
        """(task, repeat)s that failed and never succeeded later (the failures file, settled)."""
        return len(self.failures.failed) if self.failures is not None else 0

    @property
    def retried(self) -> int:
        """Earlier failed attempts whose (task, repeat) later succeeded (history, not failures)."""
        return self.failures.superseded_attempts if self.failures is not None else 0

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data for `--json`."""
        return {
            "ok": self.ok,
            "exit_code": self.code,
            "message": self.message,
            "output": self.output,
            "log": self.log,
            "argv": self.argv,
            "expected_rollouts": self.expected,
            "written": self.run.written,
            "failed_rollouts": self.failed,
            "failed_attempts_this_run": self.run.failed,
            "retried_failed_attempts": self.retried,
            "failures": self.failures.to_dict() if self.failures is not None else None,
            "failures_file": self.failures_path,
            "collector_exit_code": self.run.returncode,
            "interrupted": self.run.interrupted,
            "seconds": round(self.run.seconds, 3),
            "validation": self.validation.to_dict() if self.validation else None,
            "servers": self.servers,
            "quality": self.quality,
        }


def _verdict(r: CollectResult) -> None:
    """Set ok/code/message: one sentence a user can act on."""
    v = r.validation
    valid = v.valid if v else 0
    rejected = v.rejected if v else 0
    kept = f"{valid} valid rollouts of {r.expected} expected kept in {r.output}"
    if r.run.interrupted:
        r.code, r.message = 130, f"interrupted: {kept}; continue with --resume."
        return
    if r.run.returncode != 0:
        why = f": {r.run.reason}" if r.run.reason else ""
        r.message = (
            f"NeMo Gym's collector failed (exit code {r.run.returncode}){why}; {kept}"
            + ("; continue with --resume" if valid else "")
            + f"; its log: {r.log}."
        )
        return
    problems = []
    if rejected:
        problems.append(f"{rejected} lines rejected by validation")
    if r.failed:
        problems.append(f"{r.failed} rollouts failed (see {r.failures_path})")
    if valid < r.expected and valid + r.failed < r.expected:
        problems.append(f"{r.expected - valid - r.failed} rollouts missing")
    retried = (
        f"; {r.retried} earlier failed attempt{'s were' if r.retried != 1 else ' was'} retried and succeeded"
        if r.retried else ""
    )
    if problems:
        r.message = f"collection finished with problems: {', '.join(problems)}; {kept}{retried}."
        return
    r.ok, r.code = True, 0
    tasks = f"({len(v.rollouts_per_task) if v else 0} tasks)"
    added = r.run.written - r.run.earlier
    if not r.run.earlier:
        r.message = f"collected {valid} rollouts {tasks} into {r.output}{retried}."
    elif added <= 0:  # a --resume with nothing left: "collected 20" read as if this run had
        r.message = f"nothing was left to collect: {r.output} already holds all {valid} rollouts {tasks}{retried}."
    else:
        r.message = f"collected {added} more rollout{'s' if added != 1 else ''}: {r.output} holds {valid} rollouts {tasks}{retried}."
