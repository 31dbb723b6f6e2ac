"""What rescore writes per line: the rescored rollout, or a failures-file record."""

from __future__ import annotations

from typing import Any, Mapping

from gymverl.jsonl import RAW_KEEP_BYTES
from gymverl.records import agent_name, task_key
from gymverl.sidecars import ROLLOUT_INDEX, TASK_INDEX
from gymverl.verify import ECHO_KEYS, VERDICT_KEYS, VerifyResult


def rescored_row(record: Mapping[str, Any], answer: Mapping[str, Any], added: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The rollout with the verifier's answer applied: new `reward`, old one as `reward_before`
    (placed right after it), other verifier outputs updated; echoed request parts are ignored."""
    out: dict[str, Any] = {}
    for k, v in record.items():
        # The old verdict (mask_sample, failure_kind, ...) belongs to the old reward: the answer's replaces it.
        if k == "reward_before" or k in VERDICT_KEYS:
            continue
        out[k] = v
        if k == "reward":
            out["reward_before"] = v
    if added:
        out.update(added)
    for k, v in answer.items():
        if k in ECHO_KEYS or (v is None and k not in out):
            continue
        out[k] = v
    out["reward"] = answer["reward"]
    return out


def failure_record(line: int, record: Mapping[str, Any] | None, result: VerifyResult) -> dict[str, Any]:
    """A failures-file record for a row whose verification failed."""
    rec: dict[str, Any] = {"line": line, "kind": "verify"}
    rec.update(result.failure())
    if record is not None:
        rec["task"] = task_key(dict(record))
        for k in (TASK_INDEX, ROLLOUT_INDEX):
            if k in record:
                rec[k] = record[k]
        rec["agent"] = agent_name(dict(record))
        rec["reward_before"] = record.get("reward")
    return rec


def rejected_record(line: int, code: str, reason: str, raw: bytes) -> dict[str, Any]:
    """A failures-file record for a line that is not a usable rollout (not sent)."""
    rec: dict[str, Any] = {"line": line, "kind": "invalid", "reason": code, "status": None, "error": reason, "attempts": 0}
    rec["raw"] = raw[:RAW_KEEP_BYTES].decode("utf-8", errors="replace")
    if len(raw) > RAW_KEEP_BYTES or code == "line_too_long":
        rec["raw_truncated"] = True
    return rec
