"""A tiny scripted OpenAI-compatible policy server for tests: it stands in for the model.

No weights can be downloaded here, so NeMo Gym's own model servers are pointed at this one:
- `POST /v1/responses` (Responses API) for NeMo Gym's `openai_model` server config;
- `POST /v1/chat/completions` (Chat Completions) for its `vllm_model` config;
- `GET /v1/models`.

Answers are scripted and deterministic: each script entry matches the last user message by
substring and lists answers; the i-th first-turn request for a prompt gets `answers[i % len]`, so
with N samples per task every answer is used exactly once per cycle whatever the request order.
An answer is either final text (`{"text": ..., "truncated": bool}`) or a tool call
(`{"tool_call": {"name": ..., "arguments": {...}}, "then": "final text"}`); once the tool result is
in the input, the server answers with the `then` text of the call it made. A multi-step answer is
`{"steps": [answer, answer, ...]}`: the model turn after k tool results gets `steps[k]` (the last
repeats), each a text or a tool-call answer.

Fault injection (for collector-crash tests): `fail_after=N` answers HTTP 400 to every request after
the N-th (NeMo Gym's model server does not retry 4xx, so the rollout -- and the collector -- fail);
`delay` seconds before each answer slows a run down so it can be interrupted.

Run standalone: `python tests/policy_server.py [--port P] [--script script.json]`.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import threading
import time
from collections import Counter
from typing import Any

from aiohttp import web

MATH_PROMPT = "Solve the following math problem. Make sure to put the answer (and only answer) inside \\boxed{}.\n\n"

# Answers for sample_data/tasks.jsonl, 4 per task; rewards from the real verifiers are
# 4/4, 2/4, 1/4 (math_with_judge, math-verify) and 3/4, 2/4 (xlam_fc, call matching).
SAMPLE_SCRIPT: list[dict[str, Any]] = [
    {
        "match": "What is $7 \\times 8$?",
        "answers": [
            {"text": "$7 \\times 8 = 56$.\n\n\\boxed{56}"},
            {"text": "Seven eights are fifty-six: \\boxed{56}"},
            {"text": "\\boxed{56}"},
            {"text": "7 * 8 = 56, so \\boxed{56}."},
        ],
    },
    {
        "match": "Solve for $x$: $2x + 6 = 14$.",
        "answers": [
            {"text": "Subtract 6: $2x = 8$, so $x = 4$.\n\n\\boxed{4}"},
            {"text": "$2x = 20$, so \\boxed{10}"},
            {"text": "$2x = 8$ and therefore \\boxed{4}"},
            {"text": "First subtract 6 from both sides to get $2x = 8$. Then divide both", "truncated": True},
        ],
    },
    {
        "match": "What is $\\frac{1}{2} + \\frac{1}{3}$?",
        "answers": [
            {"text": "$\\frac{3}{6} + \\frac{2}{6} = \\frac{5}{6}$. \\boxed{\\frac{5}{6}}"},
            {"text": "Adding numerators and denominators: \\boxed{\\frac{2}{5}}"},
            {"text": "\\boxed{\\frac{1}{6}}"},
            {"text": "The sum is \\boxed{0.8}"},
        ],
    },
    {
        "match": "What's the weather like in Paris right now?",
        "answers": [
            {"tool_call": {"name": "get_weather", "arguments": {"city": "Paris"}}, "then": "It is cloudy in Paris."},
            {"tool_call": {"name": "get_weather", "arguments": {"city": "Paris"}}, "then": "Paris: cloudy."},
            {"tool_call": {"name": "get_weather", "arguments": {"city": "London"}}, "then": "It rains in London."},
            {"tool_call": {"name": "get_weather", "arguments": {"city": "Paris"}}, "then": "Cloudy in Paris."},
        ],
    },
    {
        "match": "How much is 100 US dollars in euros?",
        "answers": [
            {
                "tool_call": {"name": "convert_currency", "arguments": {"amount": 100, "from_currency": "USD", "to_currency": "EUR"}},
                "then": "About 92 EUR.",
            },
            {
                "tool_call": {"name": "convert_currency", "arguments": {"amount": 100, "from_currency": "EUR", "to_currency": "USD"}},
                "then": "About 108 USD.",
            },
            {
                "tool_call": {"name": "convert_currency", "arguments": {"amount": 100, "from_currency": "USD", "to_currency": "EUR"}},
                "then": "That's about 92 euros.",
            },
            {
                "tool_call": {"name": "convert_currency", "arguments": {"amount": 10, "from_currency": "USD", "to_currency": "EUR"}},
                "then": "About 9 EUR.",
            },
        ],
    },
]
# The rewards NeMo Gym's verifiers give SAMPLE_SCRIPT's answers, per task in sample_data/tasks.jsonl order.
SAMPLE_REWARDS: list[list[float]] = [[1.0] * 4, [1.0, 0.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 0.0, 1.0], [1.0, 0.0, 1.0, 0.0]]
DEFAULT_ANSWER = {"text": "I do not know."}


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


class ScriptedPolicy:
    """The scripted answers and request bookkeeping, independent of the HTTP API spoken."""

    def __init__(self, script: list[dict[str, Any]] | None = None, *, fail_after: int | None = None, delay: float = 0.0) -> None:
        self.script = SAMPLE_SCRIPT if script is None else script
        self.fail_after = fail_after
        self.delay = delay
        self.counts: Counter[str] = Counter()
        self.requests = 0
        self.failed = 0
        self.pending_calls: dict[str, str] = {}  # call_id -> final text to give after the tool result
        self.pending_steps: dict[str, list[dict[str, Any]]] = {}  # call_id -> the multi-step answer it belongs to
        self._ids = itertools.count()
        self._lock = threading.Lock()

    def should_fail(self) -> bool:
        """Count a request; True when fault injection says to answer it with an error."""
        with self._lock:
            self.requests += 1
            if self.fail_after is not None and self.requests > self.fail_after:
                self.failed += 1
                return True
            return False

    def next_id(self) -> int:
        """A fresh number for response / item ids."""
        with self._lock:
            return next(self._ids)

    def answer(self, user_text: str, tool_result_for: str | None, step: int = 0) -> dict[str, Any]:
        """The scripted answer: the next one for this prompt, or the follow-up after a tool result
        (`step` = tool results so far, which picks a multi-step answer's step)."""
        with self._lock:
            if tool_result_for is not None:
                steps = self.pending_steps.get(tool_result_for)
                if steps is not None:
                    return self._step(steps, step)
                return {"text": self.pending_calls.get(tool_result_for, "Done.")}
            for entry in self.script:
                if entry["match"] in user_text:
                    i = self.counts[entry["match"]]
                    self.counts[entry["match"]] += 1
                    ans = entry["answers"][i % len(entry["answers"])]
                    return self._step(ans["steps"], step) if "steps" in ans else ans
            return DEFAULT_ANSWER

    @staticmethod
    def _step(steps: list[dict[str, Any]], step: int) -> dict[str, Any]:
        ans = dict(steps[min(step, len(steps) - 1)])
        ans["_steps"] = steps
        return ans

    def remember_call(self, call_id: str, then: str, steps: list[dict[str, Any]] | None = None) -> None:
        """Remember what to say once the result of `call_id` comes back."""
        with self._lock:
            self.pending_calls[call_id] = then
            if steps is not None:
                self.pending_steps[call_id] = steps


# ---- Responses API -----------------------------------------------------------------------------


def _responses_turn(items: Any) -> tuple[str, str | None]:
    """(last user text, call_id of a trailing tool result or None) from a Responses-API `input`."""
    if isinstance(items, str):
        return items, None
    user, tool_for = "", None
    for item in items or []:
        if not isinstance(item, dict):
            continue
        if item.get("type") == "function_call_output":
            tool_for = item.get("call_id")
        elif item.get("role") == "user":
            user, tool_for = _text_of(item.get("content")), None
    return user, tool_for


def responses_body(policy: ScriptedPolicy, body: dict[str, Any]) -> dict[str, Any]:
    """A Responses-API response object for a `POST /v1/responses` body."""
    user, tool_for = _responses_turn(body.get("input"))
    items = body.get("input") if isinstance(body.get("input"), list) else []
    step = sum(1 for i in items if isinstance(i, dict) and i.get("type") == "function_call_output")
    ans = policy.answer(user, tool_for, step)
    n = policy.next_id()
    truncated = bool(ans.get("truncated"))
    if "tool_call" in ans:
        call_id = f"call_{n}"
        policy.remember_call(call_id, ans.get("then", "Done."), ans.get("_steps"))
        output = [
            {
                "arguments": json.dumps(ans["tool_call"]["arguments"]),
                "call_id": call_id,
                "name": ans["tool_call"]["name"],
                "type": "function_call",
                "id": f"fc_{n}",
                "status": "completed",
            }
        ]
    else:
        output = [
            {
                "id": f"msg_{n}",
                "content": [{"annotations": [], "text": ans["text"], "type": "output_text", "logprobs": None}],
                "role": "assistant",
                "status": "incomplete" if truncated else "completed",
                "type": "message",
            }
        ]
    out_tokens = max(1, len(json.dumps(output)) // 4)
    return {
        "id": f"resp_{n}",
        "created_at": time.time(),
        "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if truncated else None,
        "instructions": body.get("instructions"),
        "metadata": {},
        "model": body.get("model") or "scripted-policy",
        "object": "response",
        "output": output,
        "parallel_tool_calls": True,
        "temperature": body.get("temperature", 1.0),
        "tool_choice": body.get("tool_choice", "auto"),
        "tools": body.get("tools") or [],
        "top_p": body.get("top_p", 1.0),
        "max_output_tokens": body.get("max_output_tokens"),
        "status": "incomplete" if truncated else "completed",
        "text": {"format": {"type": "text"}},
        "truncation": "disabled",
        "usage": {
            "input_tokens": 50,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": out_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": 50 + out_tokens,
        },
    }


# ---- Chat Completions --------------------------------------------------------------------------


def _chat_turn(messages: Any) -> tuple[str, str | None]:
    user, tool_for = "", None
    for m in messages or []:
        if not isinstance(m, dict):
            continue
        if m.get("role") == "tool":
            tool_for = m.get("tool_call_id")
        elif m.get("role") == "user":
            user, tool_for = _text_of(m.get("content")), None
    return user, tool_for


def chat_body(policy: ScriptedPolicy, body: dict[str, Any]) -> dict[str, Any]:
    """A Chat Completions response for a `POST /v1/chat/completions` body."""
    user, tool_for = _chat_turn(body.get("messages"))
    step = sum(1 for m in body.get("messages") or [] if isinstance(m, dict) and m.get("role") == "tool")
    ans = policy.answer(user, tool_for, step)
    n = policy.next_id()
    if "tool_call" in ans:
        call_id = f"call_{n}"
        policy.remember_call(call_id, ans.get("then", "Done."), ans.get("_steps"))
        message: dict[str, Any] = {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": call_id,
                    "type": "function",
                    "function": {"name": ans["tool_call"]["name"], "arguments": json.dumps(ans["tool_call"]["arguments"])},
                }
            ],
        }
        finish = "tool_calls"
    else:
        message = {"role": "assistant", "content": ans["text"]}
        finish = "length" if ans.get("truncated") else "stop"
    out_tokens = max(1, len(json.dumps(message)) // 4)
    return {
        "id": f"chatcmpl_{n}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model") or "scripted-policy",
        "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}],
        "usage": {"prompt_tokens": 50, "completion_tokens": out_tokens, "total_tokens": 50 + out_tokens},
    }


# ---- HTTP server -------------------------------------------------------------------------------


def make_app(policy: ScriptedPolicy) -> web.Application:
    """The aiohttp application serving `policy`."""

    async def handle(request: web.Request, build: Any) -> web.Response:
        if policy.delay:
            await asyncio.sleep(policy.delay)
        if policy.should_fail():
            return web.json_response({"error": {"message": "scripted failure", "type": "invalid_request_error"}}, status=400)
        try:
            body = await request.json()
        except json.JSONDecodeError:
            return web.json_response({"error": {"message": "body is not JSON"}}, status=400)
        return web.json_response(build(policy, body))

    async def responses(request: web.Request) -> web.Response:
        return await handle(request, responses_body)

    async def chat(request: web.Request) -> web.Response:
        return await handle(request, chat_body)

    async def models(_: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "scripted-policy", "object": "model"}]})

    app = web.Application()
    app.router.add_post("/v1/responses", responses)
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/v1/models", models)
    return app


class PolicyServer:
    """The scripted policy on 127.0.0.1 in a background thread; `base_url` ends in `/v1`."""

    def __init__(self, policy: ScriptedPolicy | None = None, port: int = 0) -> None:
        self.policy = policy or ScriptedPolicy()
        self.port = port
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    @property
    def base_url(self) -> str:
        """`http://127.0.0.1:PORT/v1`, what NeMo Gym's `policy_base_url` wants."""
        return f"http://127.0.0.1:{self.port}/v1"

    async def _start(self) -> None:
        self._runner = web.AppRunner(make_app(self.policy), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    def start(self) -> "PolicyServer":
        """Start serving; returns self."""
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=10)
        return self

    def stop(self) -> None:
        """Stop serving and end the thread."""
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    def __enter__(self) -> "PolicyServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def main() -> None:
    """Serve the scripted policy until Ctrl-C."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--script", help="JSON file: a list of {match, answers} entries (default: sample_data answers).")
    ap.add_argument("--fail-after", type=int, default=None)
    ap.add_argument("--delay", type=float, default=0.0)
    args = ap.parse_args()
    script = json.loads(open(args.script).read()) if args.script else None
    server = PolicyServer(ScriptedPolicy(script, fail_after=args.fail_after, delay=args.delay), args.port).start()
    print(server.base_url, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()
