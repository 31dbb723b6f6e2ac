"""A tiny /verify endpoint for FAULT INJECTION ONLY (scoring itself is tested against real NeMo Gym).

It answers `POST /verify` like a NeMo Gym resources server (the request echoed back plus
`reward`), with a recognisable reward that is never 0.0, so a test can tell a real answer from
a silently invented one: reward = 0.1 + (crc32(response.id) % 9) / 10.

Faults follow a per-row plan: `--plan 500,429,ok` makes each row's 1st attempt get HTTP 500, the
2nd HTTP 429, the 3rd and later an answer (the last step repeats). Steps: ok, any HTTP status
(500, 503, 429, 422, 400, ...), `timeout` (answer after --hang seconds), `reset` (drop the
connection without answering), `garbage` (200 with a non-JSON body), `noreward` (200 without a
reward), `judge_failed` (200 as NeMo Gym >= 0.5's judge fail-safe answers: reward 0.0,
mask_sample true, failure_kind and _ng_failure_class `judge_failed`), `masked` (200, reward 0.0,
mask_sample true, no failure kind), `degraded` (200, a real reward with failure_kind set and
mask_sample false: a valid measurement).
`--ng07` makes answers look like NeMo Gym 0.7.0's (mask_sample false, failure_kind and
failure_reason null); `--accepts A,B` serves `/openapi.json` declaring those /verify request fields.
`--reverify-mode MODE` answers `GET /reverify_mode` with "MODE" (stateless, unsupported, unknown;
`none`, the default, has no such route: a 404 as from NeMo Gym 0.4.0). `--every K` applies the plan only to rows with crc32(id) % K == 0 (others: ok).
`--compress gzip|deflate` encodes every answer that way when the request's Accept-Encoding allows
it (like a compressing proxy or FastAPI's GZipMiddleware).
`--latency S` delays every answer (`--jitter S` adds a random extra delay, so answers finish out
of order); `--die-after N` exits the process (no clean shutdown) on the
Nth request, so a test can kill it mid-run and start it again on the same `--port`.

Run: python tests/fake_verify_server.py --port 0 [...]; it prints `PORT <n>` once listening.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import os
import random
import sys
import zlib
from collections import Counter
from typing import Any

import orjson
from aiohttp import web


def row_id(body: dict[str, Any]) -> str:
    """The id the plan is keyed by: response.id, else the task/rollout indices."""
    resp = body.get("response") or {}
    rid = resp.get("id") if isinstance(resp, dict) else None
    return str(rid if rid is not None else (body.get("_ng_task_index"), body.get("_ng_rollout_index")))


def fake_reward(rid: str) -> float:
    """The reward this server gives a row: deterministic and never 0.0."""
    return round(0.1 + (zlib.crc32(rid.encode()) % 9) / 10, 1)


def _dumps(obj: Any) -> bytes:
    """orjson, or the standard library for answers nested deeper than orjson writes (254 levels)."""
    try:
        return orjson.dumps(obj)
    except orjson.JSONEncodeError:
        import json

        sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
        return json.dumps(obj).encode()


def build_app(args: argparse.Namespace) -> web.Application:
    """The aiohttp app implementing the plan."""
    attempts: Counter[str] = Counter()
    plan = [s.strip() for s in args.plan.split(",") if s.strip()] or ["ok"]
    state = {"requests": 0, "in_flight": 0, "max_in_flight": 0}
    rng = random.Random(args.seed)

    async def verify(request: web.Request) -> web.StreamResponse:
        if await request.read() == b"{}":
            # gymverl's preflight probe (`resources_server_problem`): a real resources server refuses
            # the empty body with 422 before doing anything, so it is not a row and is not counted.
            state["probes"] = state.get("probes", 0) + 1
            missing = [{"loc": ["body", k], "msg": "Field required", "type": "missing"} for k in ("responses_create_params", "response")]
            return web.Response(status=422, body=orjson.dumps({"detail": missing}), content_type="application/json")
        state["requests"] += 1
        state["in_flight"] += 1
        state["max_in_flight"] = max(state["max_in_flight"], state["in_flight"])
        try:
            resp = await _verify(request)
            if args.compress and args.compress in request.headers.get("Accept-Encoding", "") and isinstance(resp, web.Response) and resp.body:
                body = bytes(resp.body)  # type: ignore[arg-type]
                data = gzip.compress(body) if args.compress == "gzip" else zlib.compress(body)
                resp = web.Response(status=resp.status, body=data, content_type=resp.content_type, headers={"Content-Encoding": args.compress})
            return resp
        finally:
            state["in_flight"] -= 1

    async def _verify(request: web.Request) -> web.StreamResponse:
        if args.die_after and state["requests"] >= args.die_after:
            os._exit(17)  # simulate a crash: no response, sockets torn down by the OS
        raw = await request.read()
        if args.fast:
            # Benchmark mode: no JSON parsing, a fixed small answer.
            if args.latency:
                await asyncio.sleep(args.latency)
            return web.Response(body=b'{"reward":1.0}', content_type="application/json")
        body = orjson.loads(raw)
        rid = row_id(body)
        attempts[rid] += 1
        n = attempts[rid]
        step = "ok"
        if args.every <= 1 or zlib.crc32(rid.encode()) % args.every == 0:
            step = plan[min(n, len(plan)) - 1]
        delay = args.latency + (rng.uniform(0, args.jitter) if args.jitter else 0.0)
        if delay:
            await asyncio.sleep(delay)
        if step == "ok":
            answer = dict(body)
            answer["reward"] = fake_reward(rid)
            answer["attempt"] = n
            if args.ng07:
                answer.update(mask_sample=False, failure_kind=None, failure_reason=None)
            return web.Response(body=_dumps(answer), content_type="application/json")
        if step == "timeout":
            await asyncio.sleep(args.hang)
            return web.Response(body=b'{"reward": 0.0}', content_type="application/json")
        if step == "reset":
            assert request.transport is not None
            request.transport.abort()
            return web.Response(status=500)
        if step in ("judge_failed", "masked", "degraded"):
            answer = dict(body)
            answer.update(reward=0.0, mask_sample=True, failure_kind=None, failure_reason="injected")
            if step == "judge_failed":
                answer.update(failure_kind="judge_failed", _ng_failure_class="judge_failed", failure_reason="judge endpoint unreachable")
            elif step == "degraded":
                answer.update(reward=fake_reward(rid), mask_sample=False, failure_kind="tool_error")
            return web.Response(body=_dumps(answer), content_type="application/json")
        if step == "garbage":
            return web.Response(body=b"<html>oops</html>", content_type="text/html")
        if step == "noreward":
            return web.Response(body=b'{"detail": "no reward here"}', content_type="application/json")
        status = int(step)
        headers = {"Retry-After": "0"} if status == 429 else None
        detail = [{"loc": ["body", "question"], "msg": "Field required", "type": "missing"}] if status == 422 else f"injected {status}"
        return web.Response(status=status, body=orjson.dumps({"detail": detail}), content_type="application/json", headers=headers)

    async def stats(request: web.Request) -> web.Response:
        data = dict(state, rows=len(attempts), attempts_max=max(attempts.values(), default=0))
        return web.Response(body=orjson.dumps(data), content_type="application/json")

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/verify", verify)
    app.router.add_get("/stats", stats)
    if args.accepts:
        props = {k: {"title": k} for k in ["responses_create_params", "response", *args.accepts.split(",")]}
        spec = {
            "paths": {"/verify": {"post": {"requestBody": {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Req"}}}}}}},
            "components": {"schemas": {"Req": {"properties": props}}},
        }

        async def openapi(request: web.Request) -> web.Response:
            return web.Response(body=orjson.dumps(spec), content_type="application/json")

        app.router.add_get("/openapi.json", openapi)
    if args.reverify_mode != "none":

        async def reverify_mode(request: web.Request) -> web.Response:
            state["reverify_mode_requests"] = state.get("reverify_mode_requests", 0) + 1
            return web.Response(body=orjson.dumps(args.reverify_mode), content_type="application/json")

        app.router.add_get("/reverify_mode", reverify_mode)
    return app


async def serve(args: argparse.Namespace) -> None:
    """Listen on 127.0.0.1 and print `PORT <n>`; run until killed."""
    runner = web.AppRunner(build_app(args), access_log=None, handle_signals=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", args.port, reuse_address=True, backlog=1024)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    print(f"PORT {port}", flush=True)
    await asyncio.Event().wait()


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--plan", default="ok")
    p.add_argument("--every", type=int, default=1)
    p.add_argument("--latency", type=float, default=0.0)
    p.add_argument("--jitter", type=float, default=0.0, help="extra random latency, uniform in [0, S]")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--hang", type=float, default=30.0)
    p.add_argument("--die-after", type=int, default=0)
    p.add_argument("--compress", choices=["gzip", "deflate"], default=None, help="encode answers when the client accepts it")
    p.add_argument("--fast", action="store_true", help="benchmark mode: fixed answer, no parsing")
    p.add_argument("--ng07", action="store_true", help="answers carry 0.7.0's mask_sample/failure_kind/failure_reason")
    p.add_argument("--accepts", default="", help="serve /openapi.json declaring these /verify fields (comma-separated)")
    p.add_argument("--reverify-mode", default="none", help="answer GET /reverify_mode with this (none: no such route)")
    args = p.parse_args(argv)
    try:
        import uvloop  # noqa: F401

        uvloop.install()
    except ImportError:
        pass
    try:
        asyncio.run(serve(args))
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()


class FakeServer:
    """Test helper: run this server as a subprocess on 127.0.0.1 (`url`, `stop()`, `start()` again)."""

    def __init__(self, *args: str, port: int = 0) -> None:
        self.args = list(args)
        self.port = port
        self.proc: Any = None

    @property
    def url(self) -> str:
        """Base URL (POST {url}/verify)."""
        return f"http://127.0.0.1:{self.port}"

    def start(self, *args: str) -> "FakeServer":
        """Start (or restart on the same port, optionally with new args) and wait until listening."""
        import subprocess

        if args:
            self.args = list(args)
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--port", str(self.port), *self.args],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("PORT "):
            self.stop()
            raise RuntimeError(f"fake verify server did not start: {line!r}")
        self.port = int(line.split()[1])
        return self

    def stop(self) -> None:
        """Kill the process (SIGKILL: like a crash) and reap it."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        if self.proc is not None:
            self.proc.wait(timeout=10)
            if self.proc.stdout:
                self.proc.stdout.close()
        self.proc = None

    def __enter__(self) -> "FakeServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def stats(self) -> dict[str, Any]:
        """Requests served, rows seen, highest concurrency seen (GET /stats)."""
        import urllib.request

        with urllib.request.urlopen(self.url + "/stats", timeout=10) as resp:  # noqa: S310 - loopback
            return orjson.loads(resp.read())


class OtherHttpServer:
    """Test helper: something that answers HTTP but is no resources server (a policy model server,
    a wrong port): every request gets `status` (404 as from an OpenAI-compatible server's unknown
    route, 405 where /verify is a GET-only route). Runs in a thread; counts the requests it got."""

    def __init__(self, status: int = 404) -> None:
        import http.server
        import threading

        outer = self
        self.requests = 0

        class Handler(http.server.BaseHTTPRequestHandler):
            def answer(self) -> None:
                outer.requests += 1
                body = b'{"detail": "Not Found"}'
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = answer  # noqa: N815 - http.server's method names

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        """Base URL."""
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> "OtherHttpServer":
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()
