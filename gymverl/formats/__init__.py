"""Output row builders, one module per VeRL format (rl, sft, dpo); each is a pure `record -> row` function.

This package also holds what the builders share: telling task fields from verifier outputs,
picking the ground truth, naming the data source, and the JSON encoding of nested columns.

Why nested columns (messages, tools) are JSON strings: parquet stores a list of dicts as one struct
type merged over all rows, so a row read back gains `null` keys that only other rows had (another
tool's parameters, `tool_calls: null`, ...) and those keys render into the chat template. A JSON
string column round-trips each row exactly; `gymverl/verl_data.py` decodes it for VeRL.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Iterable

import orjson

from gymverl.jsonl import dumps
from gymverl.ng_fields import REQUEST_FIELDS, RESPONSE_ONLY_FIELDS
from gymverl.records import agent_name, is_ng_key

FORMATS = ("rl", "sft", "dpo")

# Fields the verifiers of NeMo Gym's environments add to a rollout line (seen in the real rollouts
# of math_with_judge, mcqa, xlam_fc, instruction_following, code_gen, reasoning_gym, blackjack,
# example_multi_step). Used only when nothing authoritative (a tasks file, the materialized inputs,
# the server's /verify schema) says which fields are task fields; `verifier_metadata` is a task
# field (NeMo Gym's conventional carrier of the ground truth: evalplus, example_mcp_weather).
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


def json_cell(obj: Any) -> bytes:
    """Compact JSON text, as UTF-8 bytes (not ASCII-escaped), for a JSON-string column cell.

    The format builders keep JSON cells (sft `messages`, `tools`, ...) as bytes: `ParquetSink`
    stores them as Arrow strings as they are, where a str would be decoded here and encoded again
    there. `gymverl.jsonl.dumps`: orjson (always valid UTF-8), and the standard library only for
    values nested deeper than the 254 levels orjson writes (any line validate accepts, up to
    orjson's 1024 read levels, converts)."""
    try:  # orjson directly first: this runs for every row's messages and tools
        # (without OPT_NON_STR_KEYS, which costs half again: keys read from JSON are strings, and
        # anything else, a non-str key or deep nesting, takes `dumps` below with the same output)
        return orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY)
    except orjson.JSONEncodeError:
        return dumps(obj)


def dumps_str(obj: Any) -> str:
    """`json_cell` as a str (a value that is text in its own right, e.g. a ground truth)."""
    return json_cell(obj).decode()


# The columns gymverl writes as JSON text (or, dpo, one JSON text per message); `decode_row` reads them.
JSON_COLUMNS = ("messages", "tools", "prompt", "chosen", "rejected")


def decode_json(value: Any) -> Any:
    """Decode a JSON cell: a JSON string (sft `messages`/`tools`), or a list of JSON strings (dpo's
    `prompt`/`chosen`/`rejected`, one per message, as pyarrow/pandas read them). Anything else
    (lists already decoded by `datasets`, None) passes through."""
    if isinstance(value, (str, bytes)):
        return json.loads(value)
    if hasattr(value, "tolist") and not isinstance(value, (list, tuple)):
        value = value.tolist()  # a numpy array (pandas) or an Arrow array
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, (str, bytes)) for v in value):
        return [json.loads(v) for v in value]
    return value


def decode_row(row: dict[str, Any]) -> dict[str, Any]:
    """A gymverl parquet row with its JSON columns (messages, tools, prompt, chosen, rejected) decoded.

    Accepts rows as `pyarrow.Table.to_pylist()`, pandas or `datasets` return them; the JSON-string
    columns of gymverl 0.1.0's dpo rows decode too.
    """
    out = dict(row)
    for key in JSON_COLUMNS:
        if key in out:
            out[key] = decode_json(out[key])
    return out


def looks_like_verifier_output(key: str) -> bool:
    """The fallback heuristic: is this top-level key a verifier output rather than a task field?

    In order: a name some NeMo Gym 0.7.0 `/verify` request model declares (`gymverl.ng_fields`:
    `verifier_metadata`, `expected_answer`, `options`, ...) is a task field; a name only response
    models declare (`extracted_answer`, `base_status`, `expected_weather`, ...) or one in
    `VERIFIER_OUTPUT_KEYS` is an output; else the prefixes/suffixes decide. A guess: it cannot know
    the server, so callers warn when they use it (`FieldRules.guess_warning`).
    """
    if key in REQUEST_FIELDS:
        return False
    if key in RESPONSE_ONLY_FIELDS or key in VERIFIER_OUTPUT_KEYS:
        return True
    return key.startswith(VERIFIER_OUTPUT_PREFIXES) or key.endswith(VERIFIER_OUTPUT_SUFFIXES)


def _names(keys: Iterable[str], limit: int = 12) -> str:
    keys = sorted(keys)
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return (", ".join(keys[:limit]) + more) if keys else "none"


@dataclass(frozen=True)
class FieldRules:
    """Decides which top-level keys of a rollout are task fields (sent to /verify again) and the ground truth.

    Task fields are what the server's `/verify` request model declares. Where that can be learned it
    decides alone: `task_keys` are the field names of the tasks file or the materialized inputs
    (`--tasks`, `<stem>_materialized_inputs.jsonl`), or the fields the server's `/openapi.json`
    declares for `/verify` (`declared_by` names the source). Without it, `looks_like_verifier_output`
    guesses per name, and every guess is recorded (`guessed`) so the caller warns once
    (`guess_warning`), naming the fields.
    """

    task_keys: frozenset[str] | None = None
    ground_truth_field: str | None = None
    keep_all: bool = False  # the input *is* a tasks file: every non-NeMo-Gym key is a task field
    declared_by: str | None = None  # where task_keys came from, for messages
    # name -> kept as a task field? for every name decided by the heuristic (per process).
    guessed: dict[str, bool] = field(default_factory=dict, compare=False, hash=False, repr=False)

    def is_task_field(self, key: str) -> bool:
        """True when `key` (a top-level key, not a NeMo Gym one) is a task field."""
        if self.keep_all:
            return True
        if self.task_keys is not None:
            return key in self.task_keys
        kept = self.guessed.get(key)  # each name is guessed once (this runs for every key of every row)
        if kept is None:
            kept = self.guessed[key] = not looks_like_verifier_output(key)
        return kept

    def task_fields(self, record: dict[str, Any]) -> dict[str, Any]:
        """The task fields of `record` (what the verifier needs besides the response)."""
        return {
            k: v
            for k, v in record.items()
            if not (is_ng_key(k) or k == "responses_create_params") and self.is_task_field(k)
        }

    def guess_warning(self, *, sent: bool = True) -> str | None:
        """One sentence naming the fields decided by the heuristic, or None when none was guessed.

        `sent`: the fields went to a running server's /verify (rescore), which could have declared
        them; False: they were written into rows for a later /verify (to-parquet reads no server)."""
        if not self.guessed:
            return None
        kept = [k for k, v in self.guessed.items() if v]
        dropped = [k for k, v in self.guessed.items() if not v]
        # (to-parquet: the installed NeMo Gym's request models, when found, only check the rows for
        # fields they lack: a warning of its own)
        unknown = "no tasks file or materialized inputs lists them" + (", and no running server's /verify schema was read" if sent else "")
        verb = "sent as task fields" if sent else "kept as task fields (extra_info.nemo_gym.task)"
        return (
            f"task fields were guessed from field names ({unknown}): {verb}: {_names(kept)}; left out as verifier outputs: {_names(dropped)}; "
            "pass --tasks with the NeMo Gym input file (or keep <stem>_materialized_inputs.jsonl beside the rollouts) to decide exactly."
        )

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
