"""`ConvertSummary`: what a conversion did, every input line in exactly one bucket."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from gymverl.jsonl import Rejections, Tally
from gymverl.select import RULES

from gymverl.convert.parquet import SPLITS


@dataclass
class ConvertSummary(Rejections):
    """What a conversion did: every input line accounted for, rows and files per split."""

    input: str
    output: str | None
    fmt: str
    input_kind: str = "rollouts"
    dry_run: bool = False
    grouped: bool = False
    lines: int = 0
    blank: int = 0  # blank lines: skipped, counted in `lines`
    rejects: Tally = field(default_factory=Tally)  # rejected lines: `rejected`, `rejected_by_code`, `rejections`
    filtered: Counter[str] = field(default_factory=Counter)  # rule -> input lines removed by it
    kept_lines: int = 0  # input lines that went into a row
    rows: Counter[str] = field(default_factory=Counter)  # split -> rows
    tasks: int | None = None  # counted when rollouts are grouped by task
    tasks_by_split: Counter[str] = field(default_factory=Counter)  # tasks with at least one row
    tasks_dropped: Counter[str] = field(default_factory=Counter)  # reason -> tasks without rows
    missing_ground_truth: int = 0
    task_source: str | None = None  # the file task fields were joined from
    task_source_kind: str | None = None  # "materialized" or "tasks"
    joined: int = 0  # rl rows whose task row was found
    not_joined: Counter[str] = field(default_factory=Counter)  # sidecars.JOIN_REASONS code -> rl rows
    missing_task_fields: Counter[str] = field(default_factory=Counter)  # field -> rl rows without it
    rows_missing_fields: int = 0
    rows_without_source: int = 0  # rl rows of NeMo Gym >= 0.5 rollouts with no task file to join
    # rl rows with no task file to join, per agent (None: the row names none), and the non-null task
    # fields they carry: checked against the fields the agent's verifier takes (convert.driver).
    unjoined_by_agent: Counter[str | None] = field(default_factory=Counter)
    unjoined_fields: dict[str | None, Counter[str]] = field(default_factory=dict)
    mixed_prompt_tasks: int = 0  # task keys whose rollouts hold different prompts (`grouped._check_one_prompt`)
    mixed_prompt_examples: list[str] = field(default_factory=list)  # the first few: "KEY (lines A and B)"
    repeats_merged: int = 0  # materialized-input lines that repeat a task already written
    unsolved_rows: int = 0  # sft rows from rollouts below --solved-threshold (`_Ctx.write`)
    # rl: warnings that name task fields rows lack, known from a tasks file or the installed server's
    # request model (`driver._task_field_problems`; the CLI exits 1 for them: such rows score wrongly,
    # e.g. a right tool call 0.0 and "not sure" 1.0). Fields rows only may lack: a warning alone.
    task_field_problems: int = 0
    image_rows: int = 0  # rows that carry images (the `images` column)
    images: int = 0  # images in those rows
    files: dict[str, list[str]] = field(default_factory=dict)
    bytes_written: int = 0
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)

    def reject(self, line: int, code: str, reason: str) -> None:
        """Count one rejected input line (keeping the first few as examples)."""
        self.rejects.reject(line, code, reason)

    @property
    def valid(self) -> int:
        """Rollouts that became rows or were filtered: every line that is neither rejected (as a record
        or while its row was built) nor blank, so lines = valid + rejected + blank, as in `validate`."""
        return self.lines - self.rejected - self.blank

    @property
    def accounted(self) -> int:
        """Lines in some bucket; equals `lines` after a finished run."""
        return self.rejected + sum(self.filtered.values()) + self.kept_lines + self.blank

    def to_dict(self) -> dict[str, Any]:
        """The summary as plain JSON-able data (`--json`)."""
        return {
            "input": self.input,
            "output": self.output,
            "format": self.fmt,
            "input_kind": self.input_kind,
            "dry_run": self.dry_run,
            **self.line_counts(),
            "filtered": {k: self.filtered[k] for k in RULES if self.filtered.get(k)},
            "kept_lines": self.kept_lines,
            "rows": {s: self.rows.get(s, 0) for s in SPLITS},
            "tasks": self.tasks,
            "tasks_by_split": {s: self.tasks_by_split.get(s, 0) for s in SPLITS} if self.tasks is not None else None,
            "tasks_dropped": dict(self.tasks_dropped),
            "missing_ground_truth": self.missing_ground_truth,
            "task_fields": {
                "source": self.task_source,
                "source_kind": self.task_source_kind,
                "joined": self.joined,
                "not_joined": dict(self.not_joined),
                "rows_missing_fields": self.rows_missing_fields,
                "missing": dict(self.missing_task_fields.most_common()),
                "rows_without_source": self.rows_without_source,
            },
            "repeats_merged": self.repeats_merged,
            "unsolved_rows": self.unsolved_rows,
            "task_field_problems": self.task_field_problems,
            "images": {"rows": self.image_rows, "images": self.images},
            "files": self.files,
            "bytes_written": self.bytes_written,
            "seconds": round(self.seconds, 3),
            "lines_per_second": round(self.lines / self.seconds) if self.seconds > 0 else None,
            "warnings": self.warnings,
        }
