"""Re-score rollouts against a live NeMo Gym `/verify`: concurrent, retried, resumable, lossless.

Every input line ends as exactly one of: an output row (the rollout with the verifier's new
`reward`, the old one kept as `reward_before`, other verifier outputs updated) or a record in the
failures file (a row that failed validation, or whose verification finally failed). A failure is
never written as a reward.

Both files are written in input order (a bounded reorder window holds rows that finish early), so
the pair is always a prefix of the input. A checkpoint beside the output (`.<OUT>.rescore-state`)
records, after both files are flushed, how many input lines are done and each file's size; a
resumed run truncates the files to those sizes (dropping anything written after the last
checkpoint) and continues with the next line: no duplicates, no gaps, order kept.

Task fields the rollouts lack (NeMo Gym >= 0.5 keeps only what the verifier's request model
declares) are joined from `--tasks` or from `<stem>_materialized_inputs.jsonl` beside the input,
on (`_ng_task_index`, `_ng_rollout_index`) via `gymverl.sidecars.TaskSource`. Before any row is
sent each server is asked `GET /reverify_mode`; one not declared stateless is refused without
`--force`. An HTTP 200 answer that reports a failure (`mask_sample: true`, `judge_failed`) is a
failure record, never a reward. Rows repeating a (task, rollout) pair are counted and reported.

Both files are locked for the whole run (`gymverl.files.output_lock`: a second run into them stops
at once, naming this one's PID) and checked against the inputs before anything is written. An
output named `.gz` is gzip-compressed, one gzip member per checkpoint, so it resumes the same way.
Any error inside the run (disk full, a file-size limit, a bug met on one line, a failed checkpoint
write) stops every task at once, cuts both files back to the last checkpoint and is raised as one
sentence (`RunError`, exit 1, for disk full); the run never waits on a task that has died.

Layout: `run` (`rescore_file` and the run: producer, workers, stop), `writer` (rows written in input
order), `checkpoint` (the state file, where a run starts), `modes` (a fresh or resumed run, or
`--retry-failed`), `tasks` (task join and which fields /verify gets), `reverify` (`GET
/reverify_mode`), `rows` (output and failure records), `summary`.
"""

from __future__ import annotations

# Every name imported from `gymverl.rescore` before it became a package stays importable here.
from gymverl.rescore.errors import RescoreError
from gymverl.rescore.summary import BOOKKEEPING_FIELDS, RescoreSummary, is_bookkeeping
from gymverl.rescore.rows import failure_record, rejected_record, rescored_row
from gymverl.rescore.checkpoint import default_failures_path, input_fingerprint, read_state, state_path
from gymverl.rescore.reverify import SAFE_MODES, check_reverify_modes, fetch_reverify_mode
from gymverl.rescore.tasks import task_source_for
from gymverl.rescore.run import TRANSIENT, rescore_file

__all__ = [
    "RescoreError",
    "RescoreSummary",
    "BOOKKEEPING_FIELDS",
    "check_reverify_modes",
    "fetch_reverify_mode",
    "is_bookkeeping",
    "task_source_for",
    "default_failures_path",
    "failure_record",
    "read_state",
    "rejected_record",
    "rescore_file",
    "rescored_row",
    "state_path",
]
