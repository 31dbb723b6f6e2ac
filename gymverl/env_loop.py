"""gymverl's VeRL 0.9.1 agent loop `gymverl_env`: one NeMo Gym episode per trajectory, over HTTP.

It plays the task the way NeMo Gym's `simple_agent` does, with VeRL driving generation:

1. `POST /seed_session` on the task's resources server with the task row (its cookies are kept
   for every later request of the episode, which stays on that one server);
2. render the prompt (`raw_prompt`) with the row's tools through the chat template (VeRL's
   Continuous Token builder, as `ToolAgentLoop` does);
3. generate token-in/token-out with VeRL's server client (`LLMServerClient.generate`): the
   trained tokens are exactly the generated ones, logprobs kept;
4. parse tool calls with VeRL's own tool parser (`multi_turn.format`, hermes by default);
5. `POST /<tool_name>` with the JSON arguments and the cookies, for every call, in order; the
   answer body (any status below 500, as simple_agent passes 4xx bodies to the model) is the tool
   output, appended as a `tool` message whose tokens have `response_mask` 0; an output longer than
   `max_tool_output_tokens` is cut and says so in the text the model sees;
6. repeat until the model answers without a tool call, or after `max_turns` model turns (the last
   turn's calls still run, as simple_agent's `max_steps`), or at `rollout.response_length`;
7. build the Responses-API `response` from the turns (`gymverl.messages.messages_to_items`: assistant
   text, `function_call`, `function_call_output` items; tool outputs in full, as simple_agent sends
   them) and `POST /verify` with the task fields and the cookies (`gymverl.verify.VerifyClient`:
   retries, failure classification); the answer's `reward` is the trajectory's `reward_score`;
8. `POST /close_session` (always, once a seed was sent, also after any failure).

A failure is never a reward. A seed, tool or close transport failure or 5xx, a `/verify` that
finally failed or answered `mask_sample` / `_ng_failure_class`: with `on_failure="raise"` (the
default) the loop raises `EnvEpisodeFailed` (the rollout step stops: nothing is trained on a made-up
reward); with `on_failure="mask"` the sample's `response_mask` is all 0 (none of its tokens enter
the loss), `reward_extra_info.env_failed` is 1.0 (VeRL reports it per step) and
`extra_fields["gymverl_env_failure"]` says what failed. VeRL needs a number in `rm_scores` for every
sample of a batch, so a masked sample carries the placeholder `masked_reward` (0.0); its tokens are
not trained, but GRPO's group mean/std still include it (see the README's limits).

Settings: keyword arguments from the loop's entry in `agent.agent_loop_config_path` (hydra passes
the entry's keys to the constructor), else environment variables:
`server` / GYMVERL_ENV_URL, else GYMVERL_VERIFY_URL (`URL` or `NAME=URL` entries routed by the row's
agent name, parsed by `gymverl.verify.parse_servers`, the same specs `gymverl.reward` takes),
`max_turns` / GYMVERL_ENV_MAX_TURNS (else `multi_turn.max_assistant_turns`, else 8),
`max_tool_output_tokens` / GYMVERL_ENV_MAX_TOOL_OUTPUT_TOKENS (1024),
`on_failure` / GYMVERL_ENV_ON_FAILURE (`raise` | `mask`), `timeout` (seconds per HTTP request, 60),
`retries` (`/verify` retries, 4), `tool_parser` (else `multi_turn.format`).

Row format: an RL row of `gymverl to-parquet --format rl` (`gymverl.formats.rl`) with
`agent_name="gymverl_env"`: `extra_info.nemo_gym` (JSON) gives `responses_create_params`, the task
fields and `agent_ref`; the tools come from `extra_info.tools` (chat-template form) when the row has
it, else from `responses_create_params.tools`.
"""

from __future__ import annotations

import json
import logging
import os
import re
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import aiohttp
from yarl import URL

from verl.experimental.agent_loop.agent_loop import AgentLoopBase, AgentLoopOutput, _agent_loop_registry
from verl.experimental.agent_loop.tool_parser import ToolParser
from verl.utils.profiler import simple_timer
from verl.utils.rollout_trace import rollout_trace_op
from verl.workers.rollout.replica import TokenOutput

from gymverl.errors import RunError, UsageError
from gymverl.jsonl import dumps
from gymverl.messages import messages_to_items, prompt_messages, response_object
from gymverl.formats.rl import row_tools
from gymverl.verify import DEFAULT_RETRIES, DEFAULT_TIMEOUT, ECHO_KEYS, VerifyClient, build_request, clean_params, describe_error_body, parse_servers

logger = logging.getLogger(__name__)
logger.setLevel(os.getenv("VERL_LOGGING_LEVEL", "WARN"))

AGENT_NAME = "gymverl_env"
CONFIG_PATH = Path(__file__).with_name("env_loop.yaml")
ENV_URL = "GYMVERL_ENV_URL"
DEFAULT_MAX_TURNS = 8
DEFAULT_MAX_TOOL_OUTPUT_TOKENS = 1024
# Keys of `reward_extra_info` every trajectory of this loop reports (one value each; VeRL builds one
# array per key across the batch and logs them as metrics).
METRIC_KEYS = ("env_failed", "env_turns", "env_tool_calls", "env_tool_outputs_cut", "verify_attempts")
_THINK = re.compile(r"^\s*<think>(.*?)</think>\s*", re.S)

__all__ = ["AGENT_NAME", "CONFIG_PATH", "EnvEpisodeFailed", "EnvLoopSettings", "GymverlEnvAgentLoop", "Episode"]


class EnvEpisodeFailed(RunError, RuntimeError):
    """An episode could not be measured (raised with `on_failure="raise"`): `stage` (seed_session,
    tool, verify, close_session), `reason` (a failure class: connection, timeout, http_5xx,
    judge_failed, masked, ...) and the error text."""

    def __init__(self, stage: str, reason: str, error: str) -> None:
        super().__init__(f"NeMo Gym episode failed at {stage}: {reason}: {error}")
        self.stage, self.reason, self.error = stage, reason, error

    def as_dict(self) -> dict[str, str]:
        """The failure as plain data (for `extra_fields`)."""
        return {"stage": self.stage, "reason": self.reason, "error": self.error}


class EnvLoopConfigError(UsageError, ValueError):
    """A setting of the loop is unusable (one sentence naming it)."""


def _setting(kwargs: Mapping[str, Any], name: str, env: str | None, default: Any) -> Any:
    value = kwargs.get(name)
    if value is None and env:
        value = os.environ.get(env)
    return default if value is None or value == "" else value


@dataclass
class EnvLoopSettings:
    """The loop's settings (see the module doc for where each comes from)."""

    servers: tuple[str, ...]
    max_turns: int = DEFAULT_MAX_TURNS
    max_tool_output_tokens: int = DEFAULT_MAX_TOOL_OUTPUT_TOKENS
    on_failure: str = "raise"
    masked_reward: float = 0.0
    timeout: float = DEFAULT_TIMEOUT
    retries: int = DEFAULT_RETRIES
    tool_parser: str = "hermes"
    pool: list[str] = field(init=False)
    routes: dict[str, list[str]] = field(init=False)

    def __post_init__(self) -> None:
        self.pool, self.routes = parse_servers(self.servers)
        if self.on_failure not in ("raise", "mask"):
            raise EnvLoopConfigError(f"on_failure must be 'raise' or 'mask', not {self.on_failure!r}.")
        if self.max_turns < 1 or self.max_tool_output_tokens < 1:
            raise EnvLoopConfigError("max_turns and max_tool_output_tokens must be 1 or more.")

    @classmethod
    def from_kwargs(cls, kwargs: Mapping[str, Any], multi_turn: Any = None) -> "EnvLoopSettings":
        """Settings from the loop's constructor kwargs, environment variables and VeRL's `multi_turn` config."""
        raw = kwargs.get("server") or kwargs.get("servers") or os.environ.get(ENV_URL) or os.environ.get("GYMVERL_VERIFY_URL")
        if not raw:
            raise EnvLoopConfigError(f"no NeMo Gym resources server for the {AGENT_NAME} loop: set `server` in its agent loop entry or ${ENV_URL}.")
        if isinstance(raw, str):
            specs = tuple(raw.replace(",", " ").split())
        elif isinstance(raw, Mapping):
            specs = tuple(f"{k}={v}" for k, v in raw.items())
        else:
            specs = tuple(str(v) for v in raw)
        mt_turns = getattr(multi_turn, "max_assistant_turns", None) if multi_turn is not None else None
        mt_format = getattr(multi_turn, "format", None) if multi_turn is not None else None
        try:
            return cls(
                servers=specs,
                max_turns=int(_setting(kwargs, "max_turns", "GYMVERL_ENV_MAX_TURNS", mt_turns or DEFAULT_MAX_TURNS)),
                max_tool_output_tokens=int(_setting(kwargs, "max_tool_output_tokens", "GYMVERL_ENV_MAX_TOOL_OUTPUT_TOKENS", DEFAULT_MAX_TOOL_OUTPUT_TOKENS)),
                on_failure=str(_setting(kwargs, "on_failure", "GYMVERL_ENV_ON_FAILURE", "raise")).strip().lower(),
                masked_reward=float(_setting(kwargs, "masked_reward", None, 0.0)),
                timeout=float(_setting(kwargs, "timeout", "GYMVERL_ENV_TIMEOUT", DEFAULT_TIMEOUT)),
                retries=int(_setting(kwargs, "retries", "GYMVERL_ENV_RETRIES", DEFAULT_RETRIES)),
                tool_parser=str(_setting(kwargs, "tool_parser", None, mt_format or "hermes")),
            )
        except (TypeError, ValueError) as exc:
            if isinstance(exc, EnvLoopConfigError):
                raise
            raise EnvLoopConfigError(f"bad {AGENT_NAME} loop setting: {exc}") from None

    def server_for(self, agent: str | None) -> str | None:
        """The resources server URL for a row of agent `agent` (routes by name, a name also
        matching agents it prefixes, as `VerifyClient` routes; else the first pooled URL)."""
        if agent is not None and self.routes:
            if agent in self.routes:
                return self.routes[agent][0]
            prefixes = [n for n in self.routes if agent.startswith(n)]
            if prefixes:
                return self.routes[max(prefixes, key=len)][0]
        return self.pool[0] if self.pool else None


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, (str, bytes)) else value


def row_task(extra_info: Any) -> tuple[dict[str, Any], dict[str, Any], str | None]:
    """(responses_create_params, task fields, agent name) of an RL row's `extra_info.nemo_gym`
    (format: `gymverl.formats.rl`); ValueError naming the fault when it is missing or malformed."""
    raw = extra_info.get("nemo_gym") if isinstance(extra_info, Mapping) else None
    if raw is None:
        raise ValueError("the row's extra_info has no 'nemo_gym' entry: write the parquet with `gymverl to-parquet --format rl`")
    ng = _json(raw)
    if not isinstance(ng, Mapping) or not isinstance(ng.get("responses_create_params"), Mapping):
        raise ValueError("extra_info.nemo_gym has no responses_create_params object")
    ref = ng.get("agent_ref")
    agent = ref.get("name") if isinstance(ref, Mapping) else (ref if isinstance(ref, str) else None)
    return dict(ng["responses_create_params"]), dict(ng.get("task") or {}), agent


@dataclass
class Episode:
    """One episode's HTTP side: the resources server it lives on and its cookies."""

    base_url: str
    session: aiohttp.ClientSession
    session_id: str = field(default_factory=lambda: f"gymverl-{uuid.uuid4().hex}")
    seeded: bool = False
    log: list[str] = field(default_factory=list)  # the endpoints called, in order (for tests and traces)

    def cookie_header(self) -> dict[str, str]:
        """The episode's cookies as a `Cookie` header (for `/verify`, sent by another pool)."""
        cookies = self.session.cookie_jar.filter_cookies(URL(self.base_url))
        text = "; ".join(f"{k}={m.value}" for k, m in cookies.items())
        return {"Cookie": text} if text else {}

    async def post(self, stage: str, path: str, body: Any) -> tuple[int, bytes]:
        """POST JSON `body` to `base_url + path`; (status, body bytes). Raises EnvEpisodeFailed on a
        transport failure or a 5xx (the server, not the model, failed)."""
        self.log.append(path)
        try:
            async with self.session.post(self.base_url + path, data=dumps(body), headers={"Content-Type": "application/json"}) as resp:
                data = await resp.read()
                status = resp.status
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            kind = "timeout" if isinstance(exc, TimeoutError) else "connection"
            raise EnvEpisodeFailed(stage, kind, f"POST {path}: {type(exc).__name__}: {exc}".rstrip(": ")) from None
        if status >= 500:
            raise EnvEpisodeFailed(stage, "http_5xx", f"POST {path}: HTTP {status}: {describe_error_body(data)}")
        return status, data


def _register(name: str):  # noqa: ANN202
    """VeRL's `@register(name)`, except that an entry for this class already loaded from
    `agent.agent_loop_config_path` is kept. VeRL's AgentLoopWorker loads that YAML (with the
    loop's settings: `server`, ...) before any trajectory, and this module is first imported when
    hydra instantiates the first trajectory's loop; VeRL's own `register` would then replace the
    entry with a bare `_target_`, and every later trajectory would be built without its settings."""

    def decorator(cls: type) -> type:
        target = f"{cls.__module__}.{cls.__qualname__}"
        entry = _agent_loop_registry.get(name)
        if entry is None or entry.get("_target_") != target:
            _agent_loop_registry[name] = {"_target_": target}
        return cls

    return decorator


@_register(AGENT_NAME)
class GymverlEnvAgentLoop(AgentLoopBase):
    """Plays one NeMo Gym episode per trajectory (see the module doc); built by VeRL's `AgentLoopWorker`
    for rows with `agent_name="gymverl_env"`. Extra constructor keyword arguments are the loop
    settings (`EnvLoopSettings.from_kwargs`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        settings_kw = {k: kwargs.pop(k) for k in list(kwargs) if k in _SETTING_NAMES}
        kwargs.pop("name", None)  # the YAML entry's own name, passed along by hydra
        super().__init__(*args, **kwargs)
        multi_turn = self.rollout_config.get("multi_turn") if hasattr(self.rollout_config, "get") else None
        self.settings = EnvLoopSettings.from_kwargs(settings_kw, multi_turn)
        self.tool_parser = ToolParser.get_tool_parser(self.settings.tool_parser, self.tokenizer)
        self.prompt_length = self.rollout_config.prompt_length
        self.response_length = self.rollout_config.response_length
        self.last_episode: Episode | None = None  # kept for tests and tracing

    def _cap_text_prompt_length(self, prompt_ids: list[int]) -> list[int]:
        # Left-truncating (VeRL's default) would cut the tool definitions the template puts first.
        if len(prompt_ids) > self.prompt_length:
            raise ValueError(
                f"a prompt with its tools is {len(prompt_ids)} tokens, more than rollout.prompt_length={self.prompt_length}: "
                "raise data.max_prompt_length or drop such rows (`gymverl to-parquet --format rl --max-tokens N`)"
            )
        return prompt_ids

    # ---- pieces ----------------------------------------------------------------------------------
    def cut_tool_output(self, text: str) -> tuple[str, bool]:
        """The tool output as the model sees it: at most `max_tool_output_tokens` tokens of it, and a
        note saying how much was cut when it was longer (VeRL's own loop cuts without a word)."""
        limit = self.settings.max_tool_output_tokens
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        if len(ids) <= limit:
            return text, False
        kept = self.tokenizer.decode(ids[:limit])
        return f"{kept}\n[gymverl: tool output cut to {limit} of {len(ids)} tokens]", True

    async def generate(self, request_id: str, prompt_ids: list[int], sampling_params: dict[str, Any], metrics: dict[str, Any]) -> TokenOutput:
        """One model turn (token in, token out) through VeRL's server client."""
        if self.tool_parser.stop_token_ids:
            stop = list(set((sampling_params.get("stop_token_ids") or []) + self.tool_parser.stop_token_ids))
            sampling_params = {**sampling_params, "stop_token_ids": stop}
        with simple_timer("generate_sequences", metrics):
            output: TokenOutput = await self.server_manager.generate(request_id=request_id, prompt_ids=prompt_ids, sampling_params=sampling_params)
        if metrics.get("num_preempted") is None:
            metrics["num_preempted"] = output.num_preempted if output.num_preempted is not None else -1
        return output

    # ---- the episode -----------------------------------------------------------------------------
    @rollout_trace_op
    async def run(self, sampling_params: dict[str, Any], priority: int = 0, **kwargs: Any) -> AgentLoopOutput:
        """Play the row's episode; returns VeRL's `AgentLoopOutput` with `reward_score` set from `/verify`."""
        extra_info = kwargs.get("extra_info") or {}
        params, task, agent = row_task(extra_info)
        tools = row_tools(extra_info, params)
        messages = list(kwargs.get("raw_prompt") or prompt_messages(params))
        base_url = self.settings.server_for(agent or kwargs.get("data_source"))
        if base_url is None:
            raise EnvLoopConfigError(f"no resources server for agent {agent!r} (servers: {' '.join(self.settings.servers)})")

        metrics: dict[str, Any] = {}
        request_id = f"det-{int(priority)}" if getattr(self.rollout_config, "full_determinism", False) else uuid.uuid4().hex
        prompt_ids = await self.ct_build_initial_tokens(messages, tools=tools)
        runtime_ids = list(prompt_ids)
        response_mask: list[int] = []
        logprobs: list[float] = []
        turns: list[dict[str, Any]] = []  # the assistant and tool messages of the episode (full tool outputs)
        stats = {"turns": 0, "tool_calls": 0, "cut": 0, "tool_rounds": 0}
        failure: EnvEpisodeFailed | None = None
        reward: float | None = None
        verify_attempts = 0
        answer: dict[str, Any] | None = None
        response: dict[str, Any] | None = None

        timeout = aiohttp.ClientTimeout(total=self.settings.timeout)
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True), timeout=timeout) as http:
            ep = self.last_episode = Episode(base_url, http)
            try:
                seed_body = {"responses_create_params": clean_params(params), **task}
                # Closed even when the seed failed: a 5xx or a timeout may have left state behind,
                # and closing a session that was never seeded succeeds by NeMo Gym's contract.
                ep.seeded = True
                status, data = await ep.post("seed_session", "/seed_session", seed_body)
                if status >= 400:
                    raise EnvEpisodeFailed("seed_session", "http_4xx", f"HTTP {status}: {describe_error_body(data)}")

                while True:
                    output = await self.generate(request_id, runtime_ids, sampling_params, metrics)
                    stats["turns"] += 1
                    merge, response_mask, new_lp = await self.ct_merge_assistant_token(
                        runtime_ids, output.token_ids, response_mask, logprobs if (logprobs or output.log_probs) else None,
                        assistant_logprobs=output.log_probs or None,
                    )
                    runtime_ids = merge.token_ids
                    if new_lp is not None:
                        logprobs = new_lp
                    content, calls = await self.tool_parser.extract_tool_calls(self._without_stop(output.token_ids), None)
                    assistant = self._assistant_message(content, calls)
                    turns.append(assistant)
                    messages.append(assistant)
                    if not calls or len(response_mask) >= self.response_length:
                        break  # an answer, or a turn cut at the token budget (simple_agent runs no tools then either)

                    previous = list(messages)
                    stats["tool_rounds"] += 1
                    for call in assistant["tool_calls"]:
                        text = await self._call_tool(ep, call["function"]["name"], call["function"]["arguments"])
                        stats["tool_calls"] += 1
                        shown, cut = self.cut_tool_output(text)
                        stats["cut"] += int(cut)
                        turns.append({"role": "tool", "tool_call_id": call["id"], "content": text})
                        messages.append({"role": "tool", "tool_call_id": call["id"], "content": shown})
                    if stats["turns"] >= self.settings.max_turns:
                        # As simple_agent's max_steps: the last turn's calls still run (a stateful
                        # environment's verifier sees their effect), then no more model turns.
                        break
                    merge, mask, new_lp = await self.ct_merge_context_msg(
                        previous, messages, runtime_ids, response_mask, logprobs or None, tools=tools
                    )
                    if len(mask) >= self.response_length:
                        break  # no room for another model turn; the tool results are still verified
                    runtime_ids, response_mask = merge.token_ids, mask
                    if logprobs:
                        logprobs = new_lp or []

                response = response_object(messages_to_items(turns), params, model=str(kwargs.get("model_name") or "verl-policy"))
                body = build_request({"responses_create_params": params, "response": response, **task})
                client = VerifyClient([base_url], timeout=self.settings.timeout, retries=self.settings.retries, concurrency=1)
                ep.log.append("/verify")
                async with client:
                    result = await client.verify_body(body, server_url=base_url, headers=ep.cookie_header())
                verify_attempts = result.attempts
                answer = result.answer
                if not result.ok:
                    raise EnvEpisodeFailed("verify", result.reason or "failed", result.error or "")
                reward = result.reward
            except EnvEpisodeFailed as exc:
                failure = exc
            finally:
                if ep.seeded:
                    close_failure = await self._close(ep)
                    if failure is None and close_failure is not None:
                        failure = close_failure

        if failure is not None and self.settings.on_failure == "raise":
            raise failure

        response_ids = runtime_ids[len(runtime_ids) - len(response_mask):] if response_mask else []
        prompt_ids = runtime_ids[: len(runtime_ids) - len(response_mask)]
        mask = [0] * len(response_mask) if failure is not None else response_mask
        extra: dict[str, Any] = {
            "turn_scores": [],
            "tool_rewards": [],
            "gymverl_env_failure": failure.as_dict() if failure is not None else None,
            # the verifier's own outputs (without the request it echoes: task fields, the trajectory)
            "gymverl_verify_answer": {k: v for k, v in answer.items() if k not in ECHO_KEYS and k not in task} if answer else None,
            # the trajectory as /verify got it (Responses-API output items)
            "gymverl_response_output": response["output"] if response is not None else None,
            "gymverl_env_calls": list(ep.log),
            "reward_extra_info": {
                "env_failed": 1.0 if failure is not None else 0.0,
                "env_turns": float(stats["turns"]),
                "env_tool_calls": float(stats["tool_calls"]),
                "env_tool_outputs_cut": float(stats["cut"]),
                "verify_attempts": float(verify_attempts),
            },
        }
        return AgentLoopOutput(
            prompt_ids=prompt_ids,
            response_ids=response_ids[: self.response_length],
            response_mask=mask[: self.response_length],
            response_logprobs=logprobs[: self.response_length] if logprobs else None,
            reward_score=reward if failure is None else self.settings.masked_reward,
            num_turns=1 + stats["turns"] + stats["tool_rounds"],  # user + assistant + tool turns, as ToolAgentLoop counts
            metrics=metrics,
            extra_fields=extra,
        )

    def _without_stop(self, ids: list[int]) -> list[int]:
        # The parser decodes special tokens too: the closing <|im_end|> / EOS is not answer text.
        special = set(self.tokenizer.all_special_ids)
        end = len(ids)
        while end and ids[end - 1] in special:
            end -= 1
        return ids[:end]

    def _assistant_message(self, content: str, calls: list[Any]) -> dict[str, Any]:
        msg: dict[str, Any] = {"role": "assistant", "content": content or ""}
        m = _THINK.match(msg["content"])
        if m:  # verifiers score the answer; the reasoning goes to a `reasoning` item
            msg["reasoning_content"] = m.group(1)
            msg["content"] = msg["content"][m.end():]
        if calls:
            msg["content"] = msg["content"].strip()
            msg["tool_calls"] = [
                {"type": "function", "id": c.tool_call_id or f"call_{uuid.uuid4().hex[:24]}", "function": {"name": c.name, "arguments": c.arguments}}
                for c in calls
            ]
        return msg

    async def _call_tool(self, ep: Episode, name: str, arguments: str) -> str:
        """The tool's output text, as simple_agent makes it: the answer body for any status below 500,
        an error object for arguments that are not JSON."""
        try:
            args = json.loads(arguments)
        except (TypeError, ValueError) as exc:
            return json.dumps({"error": f"Invalid tool call arguments: {exc!r}"})
        _, data = await ep.post("tool", "/" + name, args)
        return data.decode("utf-8", errors="replace")

    async def _close(self, ep: Episode) -> EnvEpisodeFailed | None:
        body = {"resources_session_id": ep.session_id, "episode_id": {"rollout_id": ep.session_id, "attempt": 0}}
        try:
            status, data = await ep.post("close_session", "/close_session", body)
        except EnvEpisodeFailed as exc:
            return exc
        if status == 404:  # a server without sessions to close (NeMo Gym < 0.7)
            return None
        if status >= 400:
            return EnvEpisodeFailed("close_session", "http_4xx", f"HTTP {status}: {describe_error_body(data)}")
        return None


_SETTING_NAMES = frozenset(
    {"server", "servers", "max_turns", "max_tool_output_tokens", "on_failure", "masked_reward", "timeout", "retries", "tool_parser"}
)


def loop_config_text(**settings: Any) -> str:
    """The text of an `agent.agent_loop_config_path` YAML declaring this loop with `settings` (e.g.
    `server="math_with_judge=http://..."`; None values are left out). Raises EnvLoopConfigError
    for a setting the loop does not take."""
    import yaml

    entry = {"name": AGENT_NAME, "_target_": f"{__name__}.GymverlEnvAgentLoop"}
    unknown = set(settings) - _SETTING_NAMES
    if unknown:
        raise EnvLoopConfigError(f"unknown {AGENT_NAME} setting(s): {', '.join(sorted(unknown))}")
    entry.update({k: v for k, v in settings.items() if v is not None})
    return yaml.safe_dump([entry], sort_keys=False)


def loop_config(path: str | os.PathLike[str], **settings: Any) -> Path:
    """Write `loop_config_text(**settings)` to `path`; returns the path."""
    out = Path(path)
    out.write_text(loop_config_text(**settings))
    return out
