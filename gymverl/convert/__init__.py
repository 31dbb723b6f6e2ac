"""Rollouts (or NeMo Gym tasks) -> VeRL parquet: stream, select, build rows, write shards atomically.

`convert(input, output, ConvertOptions(...)) -> ConvertSummary` is the library entry point behind
`gymverl to-parquet` (and what `train-offline --from-rollouts` and the demo call).

Memory stays constant in the input size:
- formats whose rows depend on one rollout only (sft without task-level filters, rl from a tasks
  file) stream straight from the input to the parquet writer;
- task-level work (rl rows per task, dpo pairs, best-of-n, solved/unsolved, dedup) first spills
  every valid rollout to temporary partition files by a hash of its task key (a small metadata
  line and the ready-built row payload), then handles one partition at a time. A partition holds
  roughly `partition_bytes` of input, so the working set does not grow with the file.
NeMo Gym >= 0.5 files (`gymverl.sidecars`): rl rows get their task fields joined by value from
`<stem>_materialized_inputs.jsonl` beside the input (or `tasks_path`), on the task and repeat
index, with a prompt check; rows that still lack fields the verifier may need are a truthful
warning (an error with `strict`). A materialized-inputs file as input gives one rl row per task.
`mask_sample: true` rollouts are filtered as `masked` unless `select.drop_masked` is off. A (task,
repeat) that occurs twice is filtered as `repeated_rollout`; the same pair with two prompts
(collections numbered from 0 and concatenated) stops the conversion with one sentence.
Every input line ends up in exactly one bucket of the summary: a row, a selection rule, or a
rejection with its line number and reason. Rows are built after selection, so a rollout that a
rule removes is counted under that rule even if it could not have been converted; rollouts that
are kept but cannot become a row (e.g. no assistant turn) are rejections.

Outputs follow `gymverl.files`: no output (parquet, rejects) may be an input (UsageError before
anything is written); each is locked for the run; parquet is renamed into place only when the
whole run succeeded, with the umask's permissions; the spill and unfinished shards live in private
scratch directories that are removed on any error, Ctrl-C or SIGTERM (worker processes included),
and that a later run sweeps if a run was SIGKILLed. A full disk or file-size limit is a `RunError`
(exit 1) naming the spill directory or the output, whichever filled up.

Layout: `driver` (`convert`: checks, sink, locks, warnings), `stream` (single pass), `grouped`
(two passes, with `spill`), `workers` (where per-line handlers run: inline or a process pool),
`results` (what a handler returns), `rows` (row builders, `TokenCounter`), `parquet` (`ParquetSink`
and the column builder), `options` and `summary`.
"""

from __future__ import annotations

# Every name imported from `gymverl.convert` before it became a package stays importable here
# (tests and callers patch or call a few private ones: `sft_fmt`, `_to_table`, ...).
from gymverl.formats import sft as sft_fmt  # noqa: F401
from gymverl.convert.options import ConvertError, ConvertOptions
from gymverl.convert.summary import ConvertSummary
from gymverl.convert.parquet import SCHEMAS, SPLITS, ParquetSink, _is_gymverl_output, _storage_schema, _to_table  # noqa: F401
from gymverl.convert.results import Filtered, LineResult, MetaResult, Rejected, RowResult
from gymverl.convert.rows import TokenCounter
from gymverl.convert.driver import convert, detect_input_kind

__all__ = [
    "ConvertError",
    "ConvertOptions",
    "ConvertSummary",
    "Filtered",
    "LineResult",
    "MetaResult",
    "ParquetSink",
    "Rejected",
    "RowResult",
    "SCHEMAS",
    "SPLITS",
    "TokenCounter",
    "convert",
    "detect_input_kind",
]
