"""VeRL custom reward function that scores answers with NeMo Gym's `/verify`.

Use it with a parquet written by `gymverl to-parquet --format rl` (its `extra_info.nemo_gym`
holds the task's `responses_create_params`, task fields and agent):

    python -m verl.trainer.main_ppo ... \\
        reward.custom_reward_function.path=$(python -c 'import gymverl.reward as r; print(r.__file__)') \\
        reward.custom_reward_function.name=compute_score \\
        +reward.custom_reward_function.reward_kwargs.server=http://127.0.0.1:8000

Settings come from `reward_kwargs` (VeRL passes them as keyword arguments), else environment
variables: `server` / GYMVERL_VERIFY_URL (one URL, several separated by spaces or commas, or
NAME=URL entries routed by agent name), `concurrency` / GYMVERL_VERIFY_CONCURRENCY (32 per reward worker; VeRL runs `reward.num_workers`,
8 by default, so up to 256 requests in flight),
`timeout` / GYMVERL_VERIFY_TIMEOUT (60 s), `retries` / GYMVERL_VERIFY_RETRIES (4),
`on_failure` / GYMVERL_VERIFY_ON_FAILURE, `extra_fields` (verifier outputs to report).

Failure behaviour (after the retries; an HTTP 200 answer that reports a failure, NeMo Gym
>= 0.5's `mask_sample: true` / `_ng_failure_class: judge_failed`, is a failure too, never a 0.0
score): by default (`on_failure="raise"`) compute_score raises
`VerifyFailed`, which stops the training step: no sample is ever trained on a made-up reward.
With `on_failure=<number>` it returns that number as the score *and* flags the sample with
`verify_failed=1.0` (VeRL logs reward_extra_info keys, so the failure rate shows up in metrics).

The returned dict always has the same keys (VeRL builds one array per key across the batch, from
the first sample's keys): `score`, `verify_failed`, `verify_attempts`, and one key per name in
`extra_fields` (None when the verifier did not return it).

One connection pool per event loop is kept for the life of the process and reused across calls.
"""

from __future__ import annotations

import asyncio
import os
import re
import uuid
import weakref
from typing import Any, Mapping

import orjson

from gymverl.jsonl import dumps
from gymverl.messages import response_object
from gymverl.verify import DEFAULT_RETRIES, DEFAULT_TIMEOUT, VerifyClient, VerifyResult, build_request
from gymverl.errors import RunError, UsageError

ENV_URL = "GYMVERL_VERIFY_URL"
DEFAULT_CONCURRENCY = 32  # per reward worker process; VeRL runs reward.num_workers (8) of them
_TOOL_CALL = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.S)
_THINK = re.compile(r"^\s*<think>.*?</think>\s*", re.S)

# id(event loop) -> (weak ref to the loop, {settings -> client}): an aiohttp pool belongs to the
# loop that made it. Entries of closed or collected loops are dropped on the next lookup.
_CLIENTS: dict[int, tuple["weakref.ReferenceType[asyncio.AbstractEventLoop]", dict[tuple[Any, ...], VerifyClient]]] = {}


class VerifyFailed(RunError, RuntimeError):
    """Raised by compute_score when /verify finally failed and `on_failure="raise"` (the default)."""

    def __init__(self, result: VerifyResult, where: str = "") -> None:
        super().__init__(
            f"NeMo Gym /verify failed{where} after {result.attempts} attempt(s): {result.reason}: {result.error}"
        )
        self.result = result


class RewardConfigError(UsageError, ValueError):
    """compute_score cannot run: missing server URL or missing `extra_info.nemo_gym`."""


def _setting(kwargs: Mapping[str, Any], name: str, env: str, default: Any) -> Any:
    value = kwargs.get(name)
    if value is None:
        value = os.environ.get(env)
    return default if value is None or value == "" else value


def _server_specs(kwargs: Mapping[str, Any]) -> tuple[str, ...]:
    value = kwargs.get("server") or kwargs.get("servers") or os.environ.get(ENV_URL)
    if not value:
        raise RewardConfigError(
            f"no NeMo Gym server: set +reward.custom_reward_function.reward_kwargs.server=URL or ${ENV_URL}."
        )
    if isinstance(value, str):
        items = value.replace(",", " ").split()
    elif isinstance(value, Mapping):  # {agent name: url}
        items = [f"{k}={v}" for k, v in value.items()]
    else:  # a list (OmegaConf ListConfig included)
        items = [str(v) for v in value]
    return tuple(items)


def get_client(**kwargs: Any) -> VerifyClient:
    """The shared VerifyClient for these settings on the running event loop (created on first use)."""
    loop = asyncio.get_running_loop()
    specs = _server_specs(kwargs)
    concurrency = int(_setting(kwargs, "concurrency", "GYMVERL_VERIFY_CONCURRENCY", DEFAULT_CONCURRENCY))
    timeout = float(_setting(kwargs, "timeout", "GYMVERL_VERIFY_TIMEOUT", DEFAULT_TIMEOUT))
    retries = int(_setting(kwargs, "retries", "GYMVERL_VERIFY_RETRIES", DEFAULT_RETRIES))
    key = (specs, concurrency, timeout, retries)
    entry = _CLIENTS.get(id(loop))
    if entry is None or entry[0]() is not loop:
        _prune()
        entry = _CLIENTS[id(loop)] = (weakref.ref(loop), {})
    per_loop = entry[1]
    client = per_loop.get(key)
    if client is None:
        client = per_loop[key] = VerifyClient(list(specs), concurrency=concurrency, timeout=timeout, retries=retries)
    return client


def _prune() -> None:
    """Forget the pools of event loops that are closed or gone."""
    for k, (ref, _) in list(_CLIENTS.items()):
        loop = ref()
        if loop is None or loop.is_closed():
            del _CLIENTS[k]


def _json_value(value: Any) -> Any:
    if isinstance(value, (str, bytes)):
        return orjson.loads(value)
    return value


def response_from_text(text: str, params: Mapping[str, Any] | None = None, *, model: str = "verl-policy", keep_think: bool = False) -> dict[str, Any]:
    """A Responses-API `response` object for a decoded model answer.

    `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` blocks (Hermes/Qwen format) become
    `function_call` items; the remaining text becomes the assistant message. A leading
    `<think>...</think>` block is dropped unless `keep_think` (verifiers score the final answer).
    """
    params = params or {}
    if not keep_think:
        text = _THINK.sub("", text, count=1)
    output: list[dict[str, Any]] = []
    calls: list[dict[str, Any]] = []
    kept: list[str] = []  # the text outside parsed tool calls (an unparsable block stays text)
    pos = 0
    for m in _TOOL_CALL.finditer(text):
        try:
            call = orjson.loads(m.group(1))
        except orjson.JSONDecodeError:
            continue
        if isinstance(call, dict) and isinstance(call.get("name"), str):
            kept.append(text[pos : m.start()])
            pos = m.end()
            args = call.get("arguments", {})
            calls.append(
                {
                    "type": "function_call",
                    "id": f"fc_{uuid.uuid4().hex[:24]}",
                    "call_id": f"call_{uuid.uuid4().hex[:24]}",
                    "name": call["name"],
                    "arguments": args if isinstance(args, str) else dumps(args).decode(),
                    "status": "completed",
                }
            )
    message_text = ("".join(kept) + text[pos:]).strip() if calls else text
    if message_text or not calls:
        output.append(
            {
                "id": f"msg_{uuid.uuid4().hex[:24]}",
                "type": "message",
                "role": "assistant",
                "status": "completed",
                "content": [{"type": "output_text", "text": message_text, "annotations": []}],
            }
        )
    output.extend(calls)
    return response_object(output, params, model=model)


def verify_request(solution_str: str, extra_info: Mapping[str, Any] | None, **kwargs: Any) -> tuple[dict[str, Any], str | None]:
    """The /verify body for one VeRL sample and the agent name used for routing."""
    raw = (extra_info or {}).get("nemo_gym")
    if raw is None:
        raise RewardConfigError(
            "extra_info has no 'nemo_gym' entry: write the parquet with `gymverl to-parquet --format rl`."
        )
    ng = _json_value(raw)
    params = ng.get("responses_create_params") or {}
    task = ng.get("task") or {}
    ref = ng.get("agent_ref")
    agent = ref.get("name") if isinstance(ref, dict) else (ref if isinstance(ref, str) else None)
    response = response_from_text(solution_str, params, model=str(kwargs.get("model_name") or "verl-policy"), keep_think=bool(kwargs.get("keep_think", False)))
    record: dict[str, Any] = {"responses_create_params": params, "response": response}
    record.update(task)
    return build_request(record), agent


async def compute_score(
    data_source: str,
    solution_str: str,
    ground_truth: Any,
    extra_info: Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """Score one VeRL sample with NeMo Gym /verify; returns {"score", "verify_failed", "verify_attempts", ...}."""
    body, agent = verify_request(solution_str, extra_info, **kwargs)
    client = get_client(**kwargs)
    result = await client.verify_body(body, agent=agent or data_source)
    extra_fields = kwargs.get("extra_fields") or ()
    if isinstance(extra_fields, str):
        extra_fields = [f for f in extra_fields.replace(",", " ").split() if f]
    if result.ok:
        assert result.answer is not None
        out: dict[str, Any] = {"score": float(result.answer["reward"]), "verify_failed": 0.0, "verify_attempts": result.attempts}
        for name in extra_fields:
            out[name] = result.answer.get(name)
        return out
    on_failure = _setting(kwargs, "on_failure", "GYMVERL_VERIFY_ON_FAILURE", "raise")
    if isinstance(on_failure, str) and on_failure.strip().lower() == "raise":
        index = (extra_info or {}).get("index")
        raise VerifyFailed(result, f" for sample {index}" if index is not None else "")
    out = {"score": float(on_failure), "verify_failed": 1.0, "verify_attempts": result.attempts}
    for name in extra_fields:
        out[name] = None
    return out


__all__ = ["RewardConfigError", "VerifyFailed", "compute_score", "get_client", "response_from_text", "verify_request"]
