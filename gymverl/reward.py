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
`on_failure` / GYMVERL_VERIFY_ON_FAILURE, `extra_fields` (verifier outputs to report),
`reasoning_markers` / GYMVERL_REASONING_MARKERS and `reward_components` /
GYMVERL_REWARD_COMPONENTS (below).

Reasoning: /verify gets only the final answer, split off the way NeMo Gym does
(`gymverl.reasoning`): everything up to the last closing marker is reasoning (sent as a
`reasoning` item, as NeMo Gym's model server returns it); an unclosed block, or no closing marker
when the chat template opens the block itself, leaves no final answer (a completion cut off mid-
reasoning is never graded on an intermediate `\\boxed{}`). Markers per model family:
`reasoning_markers=think` (default: `<think>`/`</think>` opened by the model: Qwen3, QwQ, GLM),
`deepseek_r1` / `qwen3_thinking` (template opens `<think>`), `seed_oss`, `mistral` (`[THINK]`),
`thinking`, `none`, or an explicit `"OPEN CLOSE"` pair, with `+opened` when the template opens it.
With `tokenizer=<the policy's tokenizer directory>` (and `chat_template_kwargs`, as VeRL's
`data.apply_chat_template_kwargs`), whether the template opens the block is read from it instead.

Multi-reward servers (NeMo Gym's `BaseMultiRewardVerifyResponse.reward_components`, a
`{name: float}` map): `reward_components=correctness,schema_valid,format` returns each named
component as a flat float key `reward_<name>` (prefix: `reward_component_prefix`) for VeRL's GDPO,
`algorithm.gdpo_reward_keys=[reward_correctness,...]`. An answer lacking a configured component
raises RewardConfigError; a failed sample under `on_failure=<number>` gets that number.

Failure behaviour (after the retries; an HTTP 200 answer that reports a failure, NeMo Gym
>= 0.5's `mask_sample: true` / `_ng_failure_class: judge_failed`, is a failure too, never a 0.0
score): by default (`on_failure="raise"`) compute_score raises
`VerifyFailed`, which stops the training step: no sample is ever trained on a made-up reward.
With `on_failure=<number>` it returns that number as the score *and* flags the sample with
`verify_failed=1.0` (VeRL logs reward_extra_info keys, so the failure rate shows up in metrics).

The returned dict always has the same keys (VeRL builds one array per key across the batch, from
the first sample's keys): `score`, `verify_failed`, `verify_attempts`, and one key per name in
`extra_fields` (None when the verifier did not return it), and one per configured reward component.

One connection pool per event loop is kept for the life of the process and reused across calls.
"""

from __future__ import annotations

import asyncio
import os
import re
import uuid
import weakref
from typing import Any, AsyncIterator, Mapping

import orjson

from gymverl.jsonl import dumps
from gymverl.messages import response_object
from gymverl.reasoning import NO_REASONING, ReasoningMarkers, markers_from_settings, parse_markers, split_reasoning
# DEFAULT_CONCURRENCY applies per reward worker process (VeRL runs reward.num_workers, 8, of them).
from gymverl.limits import DEFAULT_CONCURRENCY, DEFAULT_RETRIES, DEFAULT_TIMEOUT
from gymverl.verify import VerifyClient, VerifyResult, build_request, server_specs
from gymverl.errors import RunError, UsageError

ENV_URL = "GYMVERL_VERIFY_URL"
_TOOL_CALL = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.S)

# id(event loop) -> (weak ref to the loop, {settings -> client}): an aiohttp pool belongs to the
# loop that made it. Entries of closed or collected loops are dropped on the next lookup.
# The third item is the loop's closer (see _close_at_loop_shutdown), kept alive here: a collected
# async generator would be finalized, and close the pools, at once.
_CLIENTS: dict[int, tuple["weakref.ReferenceType[asyncio.AbstractEventLoop]", dict[tuple[Any, ...], VerifyClient], Any]] = {}


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
    return server_specs(value)


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
        per_loop: dict[tuple[Any, ...], VerifyClient] = {}
        entry = _CLIENTS[id(loop)] = (weakref.ref(loop), per_loop, _close_at_loop_shutdown(loop, per_loop))
    per_loop = entry[1]
    client = per_loop.get(key)
    if client is None:
        client = per_loop[key] = VerifyClient(list(specs), concurrency=concurrency, timeout=timeout, retries=retries)
    return client


def _close_at_loop_shutdown(loop: asyncio.AbstractEventLoop, per_loop: dict[tuple[Any, ...], VerifyClient]) -> AsyncIterator[None]:
    """Close this loop's pools when the loop shuts down.

    A plain script's `asyncio.run(compute_score(...))` (or any loop that ends with
    `shutdown_asyncgens()`, as `asyncio.run` does) would otherwise leave the aiohttp sessions open and
    aiohttp prints "Unclosed client session" at exit. The loop has no shutdown callback, but it
    finalizes the async generators it started: one that is parked at its `yield` runs its `finally`
    there, on the still-running loop, where the sessions can be closed properly.
    """

    async def closer() -> AsyncIterator[None]:
        try:
            yield
        finally:
            for client in list(per_loop.values()):
                await client.close()

    agen = closer()
    # Started in its own task so that the loop's asyncgen hooks see it; it parks at `yield` at once.
    loop.create_task(agen.__anext__())
    return agen


def _prune() -> None:
    """Forget the pools of event loops that are closed or gone."""
    for k, (ref, _, _) in list(_CLIENTS.items()):
        loop = ref()
        if loop is None or loop.is_closed():
            del _CLIENTS[k]


def _json_value(value: Any) -> Any:
    if isinstance(value, (str, bytes)):
        return orjson.loads(value)
    return value


def response_from_text(
    text: str,
    params: Mapping[str, Any] | None = None,
    *,
    model: str = "verl-policy",
    keep_think: bool = False,
    markers: ReasoningMarkers | str | None = None,
) -> dict[str, Any]:
    """A Responses-API `response` object for a decoded model answer, shaped like NeMo Gym's.

    The reasoning is split off by `gymverl.reasoning.split_reasoning` (everything up to the last
    closing marker; an unclosed block or, when the template opens it, no closing marker at all
    means no final answer) and becomes a `reasoning` item, as NeMo Gym's model server returns it
    (`nemo_gym/responses_converter.py` `postprocess_assistant_message_dict`). In the final answer,
    `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` blocks (Hermes/Qwen format) become
    `function_call` items and the remaining text the assistant message; a message is written when
    it has text or when the output would otherwise be empty (NeMo Gym's rule). `markers`: a
    `ReasoningMarkers` or a `reasoning_markers` setting (default `think`); `keep_think=True`
    disables the split (the older setting).
    """
    params = params or {}
    split = split_reasoning(text, NO_REASONING if keep_think else parse_markers(markers))
    text = split.answer
    reasoning_items: list[dict[str, Any]] = []
    if split.reasoning:
        reasoning_items.append(
            {
                "id": f"rs_{uuid.uuid4().hex[:24]}",
                "type": "reasoning",
                "summary": [{"type": "summary_text", "text": split.reasoning}],
                "status": "completed",
            }
        )
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
    output.extend(reasoning_items)
    if message_text or not (calls or reasoning_items):
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
    response = response_from_text(solution_str, params, model=str(kwargs.get("model_name") or "verl-policy"), markers=markers_from_settings(kwargs))
    record: dict[str, Any] = {"responses_create_params": params, "response": response}
    record.update(task)
    return build_request(record), agent


# Keys compute_score always returns, and VeRL's own non_tensor_batch columns (reward_extra_info keys
# land in the same dict, so a component of one of these names would overwrite them).
_OWN_KEYS = frozenset({"score", "verify_failed", "verify_attempts"})
_VERL_KEYS = frozenset({"data_source", "reward_model", "extra_info", "uid", "index", "raw_prompt", "raw_prompt_ids", "agent_name", "tools_kwargs", "interaction_kwargs", "multi_modal_data", "multi_modal_inputs", "acc"})


def _names(value: Any) -> list[str]:
    if not value:
        return []
    if isinstance(value, str):
        return [f for f in value.replace(",", " ").split() if f]
    return [str(v) for v in value]


def component_keys(kwargs: Mapping[str, Any]) -> dict[str, str]:
    """{component name -> returned key} from `reward_components` / $GYMVERL_REWARD_COMPONENTS
    (names separated by spaces or commas, or a list) and `reward_component_prefix` (default
    `reward_`). Raises RewardConfigError when a key would clash with compute_score's own keys,
    an `extra_fields` name or a VeRL batch column."""
    names = _names(_setting(kwargs, "reward_components", "GYMVERL_REWARD_COMPONENTS", None))
    prefix = str(_setting(kwargs, "reward_component_prefix", "GYMVERL_REWARD_COMPONENT_PREFIX", "reward_"))
    keys = {n: f"{prefix}{n}" for n in dict.fromkeys(names)}
    clash = sorted(k for k in keys.values() if k in _OWN_KEYS or k in _VERL_KEYS or k in set(_names(kwargs.get("extra_fields"))))
    if clash:
        raise RewardConfigError(
            f"reward component key(s) {', '.join(clash)} clash with compute_score's own keys, extra_fields or VeRL's "
            "batch columns: set reward_component_prefix."
        )
    return keys


def _components(answer: Mapping[str, Any], keys: Mapping[str, str], where: str) -> dict[str, float]:
    """The configured components of a /verify answer's `reward_components` (NeMo Gym 0.7.0
    `BaseMultiRewardVerifyResponse.reward_components: dict[str, float]`) as flat float keys."""
    got = answer.get("reward_components")
    out: dict[str, float] = {}
    for name, key in keys.items():
        value = got.get(name) if isinstance(got, Mapping) else None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            have = sorted(got) if isinstance(got, Mapping) else None
            raise RewardConfigError(
                f"the /verify answer{where} has no numeric reward component {name!r} "
                f"(its reward_components: {have if have is not None else 'none'}): check reward_components."
            )
        out[key] = float(value)
    return out


async def compute_score(
    data_source: str,
    solution_str: str,
    ground_truth: Any,
    extra_info: Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """Score one VeRL sample with NeMo Gym /verify.

    Returns {"score", "verify_failed", "verify_attempts", <extra_fields>..., <component keys>...}:
    the same keys on every call for one configuration (see the module doc). Raises VerifyFailed
    (on_failure="raise") and RewardConfigError (settings, or a configured reward component the
    answer lacks).
    """
    body, agent = verify_request(solution_str, extra_info, **kwargs)
    keys = component_keys(kwargs)
    client = get_client(**kwargs)
    result = await client.verify_body(body, agent=agent or data_source)
    extra_fields = _names(kwargs.get("extra_fields"))
    index = (extra_info or {}).get("index")
    where = f" for sample {index}" if index is not None else ""
    if result.ok:
        assert result.answer is not None
        out: dict[str, Any] = {"score": float(result.answer["reward"]), "verify_failed": 0.0, "verify_attempts": result.attempts}
        for name in extra_fields:
            out[name] = result.answer.get(name)
        out.update(_components(result.answer, keys, where))
        return out
    on_failure = _setting(kwargs, "on_failure", "GYMVERL_VERIFY_ON_FAILURE", "raise")
    if isinstance(on_failure, str) and on_failure.strip().lower() == "raise":
        raise VerifyFailed(result, where)
    out = {"score": float(on_failure), "verify_failed": 1.0, "verify_attempts": result.attempts}
    for name in extra_fields:
        out[name] = None
    # The components of a failed sample take the on_failure value too (GDPO needs numbers; the
    # sample is flagged by verify_failed=1.0).
    out.update({key: float(on_failure) for key in keys.values()})
    return out


__all__ = ["RewardConfigError", "VerifyFailed", "component_keys", "compute_score", "get_client", "response_from_text", "verify_request"]
