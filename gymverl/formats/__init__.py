"""Output row builders, one module per VeRL format (rl, sft, dpo); each is a pure `record -> row` function.

This package also holds what the builders share: telling task fields from verifier outputs,
picking the ground truth, naming the data source, and the JSON encoding of nested columns.

Why nested columns (messages, tools) are JSON strings: parquet stores a list of dicts as one struct
type merged over all rows, so a row read back gains `null` keys that only other rows had (another
tool's parameters, `tool_calls: null`, ...) and those keys render into the chat template. A JSON
string column round-trips each row exactly; `gymverl/verl_data.py` decodes it for VeRL.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gymverl.jsonl import dumps
from gymverl.records import agent_name, is_ng_key

FORMATS = ("rl", "sft", "dpo")

# Fields the verifiers of NeMo Gym's environments add to a rollout line (seen in the real rollouts
# of math_with_judge, mcqa, xlam_fc, instruction_following, code_gen, reasoning_gym, blackjack,
# example_multi_step). Used only when no tasks file says which fields are task fields.
VERIFIER_OUTPUT_KEYS = frozenset(
    {
        "extracted_answer",
        "judge_evaluations",
        "library_reward",
        "num_correct",
        "num_expected",
        "num_predicted",
        "predicted_calls",
        "follow_all_instructions",
        "follow_instruction_list",
        "extracted_model_code",
        "extracted_model_output",
        "result",
        "score",
        "accuracy",
        "set_overlap",
        "parsed_synonym_values",
        "order_instruction_following_failure",
        "original_term_minefield_hit",
        "terminated",
        "truncated",
        "info",
        "is_correct",
        "correct",
        "judge_response",
        "verifier_metadata",
    }
)
VERIFIER_OUTPUT_PREFIXES = ("extracted_", "judge_", "predicted_", "num_", "follow_", "parsed_", "verifier_")
VERIFIER_OUTPUT_SUFFIXES = ("_reward", "_score", "_failure", "_hit")

# Where the expected answer usually lives in NeMo Gym tasks, most specific first.
GROUND_TRUTH_KEYS = (
    "expected_answer",
    "expected_answers",
    "ground_truth",
    "answer",
    "gold",
    "solution",
    "target",
    "label",
    "expected_output",
)


def dumps_str(obj: Any) -> str:
    """Compact JSON text (UTF-8, not ASCII-escaped) for a JSON-string column.

    `gymverl.jsonl.dumps`: orjson, and the standard library only for values nested deeper than the
    254 levels orjson writes (any line validate accepts, up to orjson's 1024 read levels, converts)."""
    return dumps(obj).decode()


def looks_like_verifier_output(key: str) -> bool:
    """The documented heuristic: is this top-level key a verifier output rather than a task field?"""
    return (
        key in VERIFIER_OUTPUT_KEYS
        or key.startswith(VERIFIER_OUTPUT_PREFIXES)
        or key.endswith(VERIFIER_OUTPUT_SUFFIXES)
    )


@dataclass(frozen=True)
class FieldRules:
    """Decides which top-level keys of a rollout are task fields (kept for re-scoring) and the ground truth.

    `task_keys`: the field names of the NeMo Gym tasks file, when given (`--tasks`); it then decides
    alone. Without it, `looks_like_verifier_output` is the rule.
    """

    task_keys: frozenset[str] | None = None
    ground_truth_field: str | None = None
    keep_all: bool = False  # the input *is* a tasks file: every non-NeMo-Gym key is a task field

    def task_fields(self, record: dict[str, Any]) -> dict[str, Any]:
        """The task fields of `record` (what the verifier needs besides the response)."""
        out: dict[str, Any] = {}
        for k, v in record.items():
            if is_ng_key(k) or k == "responses_create_params":
                continue
            if self.keep_all:
                out[k] = v
            elif self.task_keys is not None:
                if k in self.task_keys:
                    out[k] = v
            elif not looks_like_verifier_output(k):
                out[k] = v
        return out

    def ground_truth(self, fields: dict[str, Any]) -> str | None:
        """The expected answer as a string (JSON text for non-strings), or None when there is none."""
        keys = (self.ground_truth_field,) if self.ground_truth_field else GROUND_TRUTH_KEYS
        for k in keys:
            if k in fields and fields[k] is not None:
                v = fields[k]
                return v if isinstance(v, str) else dumps_str(v)
        return None


def data_source_of(record: dict[str, Any], default: str) -> str:
    """The row's `data_source`: the NeMo Gym agent name, else `default` (the input file's stem)."""
    return agent_name(record) or default


class RowError(ValueError):
    """A valid rollout that cannot become a row of the chosen format (reported as a rejection)."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
