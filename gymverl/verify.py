"""Async client for NeMo Gym's `POST /verify`: one connection pool, bounded concurrency, retries.

Used by `gymverl rescore` and by the VeRL reward function (`gymverl.reward`). The rules:
- Retry (exponential backoff with full jitter, `Retry-After` honoured) on timeouts, connection
  errors, HTTP 429 and 5xx; never on other 4xx (a 422 means the request itself is wrong, so
  sending it again cannot help); never on a 200 whose body is not a verify answer.
- A request that finally fails becomes a `VerifyResult` with `ok=False` and the reason (status,
  error text, attempts). Callers must never turn it into a reward.
- Since NeMo Gym 0.5 an HTTP 200 answer can itself be a failure: the judge fail-safe answers
  `reward: 0.0` with `failure_kind`/`_ng_failure_class` (e.g. `judge_failed`) and
  `mask_sample: true` (lost sessions, killed sandboxes set `mask_sample` too). Such an answer is a
  failed `VerifyResult` (reason = the failure kind, or `masked`; `answer` kept), never a 0.0
  reward. (`failure_kind` with `mask_sample: false` is a valid, degraded measurement: kept.)
  It is not retried: the server's own fail-safe already retried its judge.
- Several servers: rows are routed by agent name (`NAME=URL`) and spread over a pool of URLs
  (least requests in flight first), so one slow replica does not hold the others back.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import random
import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

import aiohttp
import orjson
from yarl import URL

from gymverl.errors import UsageError
from gymverl.jsonl import dumps
from gymverl.records import agent_name, is_ng_key

from gymverl.limits import DEFAULT_CONCURRENCY, DEFAULT_RETRIES, DEFAULT_TIMEOUT, MAX_CONCURRENCY, MAX_RETRIES  # noqa: F401 (re-exported)
# Keys gymverl itself adds to a rescored row; never sent back to a verifier.
GYMVERL_KEYS = frozenset({"reward_before"})
# The previous verification's verdict on a stored rollout (NeMo Gym >= 0.5): never sent back (a
# server may echo a stored `mask_sample: true` into the new answer), replaced by the new answer's.
VERDICT_KEYS = frozenset({"mask_sample", "failure_kind", "failure_reason", "_ng_failure_class", "_ng_failure_message", "_ng_failure_judge_error"})
# Keys of a /verify answer that echo the request rather than report on it.
ECHO_KEYS = frozenset({"responses_create_params", "response"})
# `reward_components` is the previous verdict too (multi-reward servers): never sent back.
_NOT_SENT = GYMVERL_KEYS | VERDICT_KEYS | {"reward", "reward_components"}
_ERROR_TEXT_CHARS = 500
# A failure kind becomes a failure reason (a label in summaries): short identifiers only.
_KIND = re.compile(r"^[A-Za-z][\w.-]{0,63}$")
# Reasons a 200 failure answer may not take: they name transport failures, which callers treat as
# transient (held back and retried on --resume).
_TRANSPORT_REASONS = frozenset({"timeout", "connection", "http_429", "http_5xx", "http_4xx", "http_other", "bad_response", "no_server"})


def answer_failure(answer: Mapping[str, Any]) -> tuple[str, str] | None:
    """(reason, error text) when an HTTP 200 `/verify` answer reports a failure, else None.

    NeMo Gym >= 0.5 marks an answer whose reward is not a measurement with `mask_sample: true`
    (a lost session, an unavailable judge, a killed sandbox); its judge fail-safe also sets
    `_ng_failure_class` (`judge_failed`). `failure_kind` alone does not make a failure: NeMo Gym
    documents it as orthogonal to `mask_sample` (a degraded sample can still be validly measured).
    The reason is the failure kind when it is a short identifier, else `masked`.
    """
    cls = answer.get("_ng_failure_class")
    if answer.get("mask_sample") is not True and not cls:
        return None
    kind = cls or answer.get("failure_kind")
    reason = kind if isinstance(kind, str) and _KIND.match(kind) and kind not in _TRANSPORT_REASONS else "masked"
    detail = answer.get("failure_reason") or answer.get("_ng_failure_message")
    text = f"HTTP 200 but the verifier reports a failure (failure_kind={answer.get('failure_kind')!r}, mask_sample={answer.get('mask_sample')!r})"
    if detail:
        text += f": {str(detail)[:_ERROR_TEXT_CHARS]}"
    return reason, text


class VerifyConfigError(UsageError, ValueError):
    """Bad client settings (e.g. an unusable server URL): one clear sentence."""


@dataclass(slots=True)
class VerifyResult:
    """The outcome of one /verify call: `answer` (the server's JSON) when `ok`, else why it failed."""

    ok: bool
    answer: dict[str, Any] | None = None  # also kept for a 200 answer that reports a failure
    reason: str | None = None  # failure class: timeout, connection, http_429, http_5xx, http_4xx, bad_response,
    # no_server; or, for an HTTP 200 answer reporting a failure, its failure kind (e.g. judge_failed) or `masked`
    status: int | None = None  # last HTTP status, if a response came back
    error: str | None = None  # error text (server `detail`, exception message)
    attempts: int = 0
    server: str | None = None
    seconds: float = 0.0

    @property
    def reward(self) -> float | None:
        """The verifier's reward (only when `ok`)."""
        return float(self.answer["reward"]) if self.ok and self.answer is not None else None

    def failure(self) -> dict[str, Any]:
        """The failure as plain data (for a failures file)."""
        return {
            "reason": self.reason,
            "status": self.status,
            "error": self.error,
            "attempts": self.attempts,
            "server": self.server,
        }


def normalize_url(url: str) -> str:
    """A server base URL without trailing `/` or `/verify`; raises VerifyConfigError (a UsageError,
    exit 2) when unusable: no http(s) scheme, no host, a port that is not a number in 0-65535."""
    u = url.strip().rstrip("/")
    if u.endswith("/verify"):
        u = u[: -len("/verify")]
    if not (u.startswith("http://") or u.startswith("https://")) or len(u.split("://", 1)[1]) == 0:
        raise VerifyConfigError(f"server URL {url!r} must start with http:// or https:// (e.g. http://127.0.0.1:8000).")
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(u)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number in 0-65535
    except ValueError as exc:
        why = str(exc)
        raise VerifyConfigError(f"server URL {url!r} is not a valid URL: {why[:1].lower()}{why[1:]} (e.g. http://127.0.0.1:8000).") from None
    if not parts.hostname:
        raise VerifyConfigError(f"server URL {url!r} names no host (e.g. http://127.0.0.1:8000).")
    return u


def server_specs(value: Any) -> tuple[str, ...]:
    """Server specs (`URL` or `NAME=URL`) from any form gymverl accepts them in, one spec per item.

    A string holds specs separated by commas or whitespace (`--server a=URL,b=URL`, $GYMVERL_VERIFY_URL,
    a VeRL reward_kwargs string); a mapping is {agent name: URL}; any other iterable (a repeated CLI
    option, an OmegaConf list) holds strings, each again split like a string.
    """
    if isinstance(value, Mapping):
        return tuple(f"{name}={url}" for name, url in value.items())
    items = [value] if isinstance(value, (str, bytes)) else list(value)
    specs: list[str] = []
    for item in items:
        text = item.decode() if isinstance(item, bytes) else str(item)
        specs += [part for part in text.replace(",", " ").split() if part]
    return tuple(specs)


def parse_servers(specs: Any) -> tuple[list[str], dict[str, list[str]]]:
    """Split `URL` and `NAME=URL` specs (any form `server_specs` reads) into a default pool and routes."""
    pool: list[str] = []
    routes: dict[str, list[str]] = {}
    for part in server_specs(specs):
        name, sep, url = part.partition("=")
        if sep and "://" not in name:
            if not name:
                raise VerifyConfigError(f"server spec {part!r} has an empty name before '='.")
            routes.setdefault(name.strip(), []).append(normalize_url(url))
        else:
            pool.append(normalize_url(part))
    if not pool and not routes:
        raise VerifyConfigError("no verifier server given (use --server URL or NAME=URL).")
    return pool, routes


def _probe(target: Any, timeout: float) -> tuple[int | None, str | None]:
    """(HTTP status, None) when something answers `target` (a URL or a urllib Request), else
    (None, why not). Connects directly, as `VerifyClient` and the env loop do (aiohttp ignores
    $http_proxy), so a proxy setting cannot make a running server look down. Never raises."""
    import urllib.error
    import urllib.request

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(target, timeout=timeout) as resp:  # noqa: S310 - a user-given server URL
            return resp.status, None
    except urllib.error.HTTPError as exc:
        return exc.code, None  # it answered
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return None, str(getattr(exc, "reason", exc))


def server_answers(url: str, timeout: float = 5.0) -> str | None:
    """None when something answers HTTP at `url` (any status counts: the routes differ per server),
    else why not (connection refused, a name that does not resolve, no answer within `timeout`
    seconds). Connects directly (`_probe`). Never raises."""
    return _probe(url, timeout)[1]


NOT_A_RESOURCES_SERVER = (404, 405)  # what POST /verify answers where no resources server listens


def resources_server_problem(url: str, timeout: float = 5.0) -> str | None:
    """None when `url` (a server base URL) looks like a NeMo Gym resources server, else what is
    wrong, as a predicate for "--server SPEC ...": "does not answer (connection refused)" when
    nothing answers HTTP there, "answers 404 at /verify: not a NeMo Gym resources server" when
    something answers but has no `POST /verify` (a policy model server, a wrong port or path).

    It POSTs `{}` to `{url}/verify`: every resources server (NeMo Gym 0.4 and 0.7) refuses that
    body with 422 before doing any work, so the probe changes nothing there; a 404 or 405 means no
    such route. Any other answer counts as a resources server (its rows report their own failures).
    Connects directly (`_probe`). Never raises; waits at most `timeout` seconds."""
    import urllib.request

    request = urllib.request.Request(
        url.rstrip("/") + "/verify", data=b"{}", headers={"Content-Type": "application/json"}, method="POST"
    )
    status, why = _probe(request, timeout)
    if why is not None:
        return f"does not answer ({why})"
    if status in NOT_A_RESOURCES_SERVER:
        return f"answers {status} at /verify: not a NeMo Gym resources server"
    return None


def unreachable_servers(specs: Any, timeout: float = 5.0) -> tuple[str, str] | None:
    """The first server spec (`URL` or `NAME=URL`, any form `parse_servers` reads) that is not a
    running NeMo Gym resources server, and what is wrong (`resources_server_problem`: "does not
    answer (...)" or "answers 404 at /verify: not a NeMo Gym resources server"); None when every
    one is. The preflight of the commands given running resources servers (`gymverl rescore`,
    `gymverl train-online`): a server that is down, or a URL where something else answers, is one
    sentence before anything starts, not a failure per row. No specs: None."""
    if not server_specs(specs):
        return None
    pool, routes = parse_servers(specs)
    for part, url in [*((u, u) for u in pool), *((f"{n}={u}", u) for n, us in routes.items() for u in us)]:
        why = resources_server_problem(url, timeout)
        if why is not None:
            return part, why
    return None


def clean_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """`responses_create_params` without null-valued keys: older NeMo Gym writes explicit nulls that
    the current server's pydantic models reject with HTTP 422 (e.g. `parallel_tool_calls: null`)."""
    return {k: v for k, v in params.items() if v is not None}


def build_request(
    record: Mapping[str, Any],
    extra: Mapping[str, Any] | None = None,
    task_field: Callable[[str], bool] | None = None,
) -> dict[str, Any]:
    """The /verify body for a rollout: the row minus `reward`, gymverl's own keys and the stored
    verdict (`VERDICT_KEYS`, `reward_components`), null optional fields dropped from
    `responses_create_params`, plus `extra` task fields. With `task_field`, a top-level key that
    is not NeMo Gym's own (`records.is_ng_key`) is sent only when `task_field(key)` is true, so old
    verifier outputs are not sent back as task fields. The row is not modified."""
    body = {
        k: v
        for k, v in record.items()
        if k not in _NOT_SENT and (task_field is None or is_ng_key(k) or task_field(k))
    }
    rcp = body.get("responses_create_params")
    if isinstance(rcp, dict):
        body["responses_create_params"] = clean_params(rcp)
    if extra:
        body.update(extra)
    return body


def encode_body(body: Mapping[str, Any]) -> bytes:
    """The JSON bytes POSTed for a /verify body (orjson; rows nested deeper than the 254 levels
    orjson writes go through the standard library, so any row validate accepts can be sent)."""
    return dumps(body)


def describe_error_body(data: bytes) -> str:
    """Short text for an error response: FastAPI `detail` entries as `loc: msg`, else the body."""
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        return data[:_ERROR_TEXT_CHARS].decode("utf-8", errors="replace").strip() or "(empty body)"
    detail = obj.get("detail") if isinstance(obj, dict) else None
    if isinstance(detail, list):
        parts = []
        for d in detail:
            if isinstance(d, dict):
                loc = ".".join(str(x) for x in d.get("loc", []) if x != "body")
                parts.append(f"{loc}: {d.get('msg', '')}" if loc else str(d.get("msg", "")))
            else:
                parts.append(str(d))
        text = "; ".join(parts)
    elif detail is not None:
        text = str(detail)
    else:
        text = data.decode("utf-8", errors="replace")
    return text[:_ERROR_TEXT_CHARS]


class _Retryable(Exception):
    """Internal: one attempt failed in a way worth retrying."""

    def __init__(self, reason: str, error: str, status: int | None = None, retry_after: float | None = None) -> None:
        super().__init__(error)
        self.reason, self.error, self.status, self.retry_after = reason, error, status, retry_after


class _Final(Exception):
    """Internal: one attempt failed in a way that retrying cannot fix."""

    def __init__(self, reason: str, error: str, status: int | None = None, answer: dict[str, Any] | None = None) -> None:
        super().__init__(error)
        self.reason, self.error, self.status, self.answer = reason, error, status, answer


@dataclass
class _Server:
    url: str
    in_flight: int = 0
    sent: int = 0
    failed: int = 0

    def __post_init__(self) -> None:
        self.verify_url = URL(self.url + "/verify")  # parsed once, not per request


@dataclass
class VerifyClient:
    """An async /verify client: `async with VerifyClient(["http://..."]) as c: await c.verify(row)`.

    `servers` are `URL` or `NAME=URL` specs. A row goes to the servers named after its agent
    (`agent_ref.name`; a name also matches agents it prefixes, so `math_with_judge=URL` serves
    `math_with_judge_simple_agent`), else to the unnamed pool. Within a pool the server with the
    fewest requests in flight gets the next one; a retry prefers another server.
    """

    servers: Iterable[str]
    concurrency: int = DEFAULT_CONCURRENCY
    timeout: float = DEFAULT_TIMEOUT
    retries: int = DEFAULT_RETRIES
    backoff: float = 0.5  # first retry waits up to this long (full jitter), doubling each time
    max_backoff: float = 30.0
    seed: int | None = None
    pool: list[str] = field(init=False)
    routes: dict[str, list[str]] = field(init=False)

    def __post_init__(self) -> None:
        if not 1 <= self.concurrency <= MAX_CONCURRENCY:
            raise VerifyConfigError(f"concurrency must be between 1 and {MAX_CONCURRENCY}, not {self.concurrency}.")
        if not (self.timeout > 0 and math.isfinite(self.timeout)):
            # inf would overflow inside aiohttp's timer, in every request (a hang with a long input).
            raise VerifyConfigError(f"timeout must be a positive, finite number of seconds, not {self.timeout}.")
        if not (math.isfinite(self.backoff) and math.isfinite(self.max_backoff) and self.backoff >= 0 and self.max_backoff >= 0):
            raise VerifyConfigError("backoff times must be finite numbers of seconds, 0 or more.")
        if not 0 <= self.retries <= MAX_RETRIES:
            raise VerifyConfigError(f"retries must be between 0 and {MAX_RETRIES}, not {self.retries}.")
        self.pool, self.routes = parse_servers(self.servers if not isinstance(self.servers, str) else [self.servers])
        self._servers: dict[str, _Server] = {}
        for url in itertools.chain(self.pool, *self.routes.values()):
            self._servers.setdefault(url, _Server(url))
        self._route_cache: dict[str | None, list[_Server] | None] = {}
        self._rr = itertools.count()
        self._rng = random.Random(self.seed)
        self._session: aiohttp.ClientSession | None = None
        self._sem: asyncio.Semaphore | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # ---- lifecycle -----------------------------------------------------------------------------
    async def open(self) -> "VerifyClient":
        """Create the connection pool (bound to the running event loop)."""
        if self._session is None:
            # Idle connections are dropped after 4 s, before a server with uvicorn's default 5 s
            # keep-alive closes them (NeMo Gym's own servers use 30 s): reusing a connection the
            # server is closing costs a failed attempt and a retry.
            connector = aiohttp.TCPConnector(
                limit=self.concurrency, limit_per_host=0, keepalive_timeout=4.0, ttl_dns_cache=300
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                cookie_jar=aiohttp.DummyCookieJar(),
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                headers={"Content-Type": "application/json"},
                skip_auto_headers=("User-Agent",),
                # aiohttp asks for gzip/deflate on every request (Accept-Encoding), so it must also
                # decode such answers (a compressing proxy, FastAPI's GZipMiddleware); an
                # uncompressed answer costs nothing extra.
                auto_decompress=True,
            )
            self._sem = asyncio.Semaphore(self.concurrency)
            self._loop = asyncio.get_running_loop()
        return self

    async def close(self) -> None:
        """Close the connection pool."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> "VerifyClient":
        return await self.open()

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    @property
    def closed(self) -> bool:
        """True when no pool is open."""
        return self._session is None or self._session.closed

    # ---- routing -------------------------------------------------------------------------------
    def servers_for(self, agent: str | None) -> list[str] | None:
        """The URLs a row of agent `agent` may go to (None: no server for it)."""
        chosen = self._candidates(agent)
        return [s.url for s in chosen] if chosen else None

    def _candidates(self, agent: str | None) -> list[_Server] | None:
        if agent in self._route_cache:
            return self._route_cache[agent]
        urls: list[str] | None = None
        if agent is not None and self.routes:
            if agent in self.routes:
                urls = self.routes[agent]
            else:
                prefixes = [n for n in self.routes if agent.startswith(n)]
                if prefixes:
                    urls = self.routes[max(prefixes, key=len)]
        if urls is None:
            urls = self.pool or None
        found = [self._servers[u] for u in urls] if urls else None
        self._route_cache[agent] = found
        return found

    def _pick(self, candidates: list[_Server], avoid: _Server | None) -> _Server:
        if len(candidates) == 1:
            return candidates[0]
        pool = [s for s in candidates if s is not avoid] or candidates
        low = min(s.in_flight for s in pool)
        best = [s for s in pool if s.in_flight == low]
        return best[next(self._rr) % len(best)]

    # ---- requests ------------------------------------------------------------------------------
    async def verify(self, record: Mapping[str, Any], *, extra: Mapping[str, Any] | None = None) -> VerifyResult:
        """Verify one rollout row (its body is built with `build_request`)."""
        return await self.verify_body(build_request(record, extra), agent=agent_name(record))

    async def verify_body(
        self,
        body: Mapping[str, Any] | bytes,
        *,
        agent: str | None = None,
        server_url: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> VerifyResult:
        """POST an already-built body (dict or JSON bytes) to /verify, with retries; never raises for
        server or network trouble, returns a failed VerifyResult instead.

        `server_url` pins the request to that base URL instead of routing by `agent` (a stateful
        episode must be verified by the replica that holds its session); `headers` are sent with
        every attempt (e.g. the episode's `Cookie`)."""
        if self._session is None:
            await self.open()
        assert self._session is not None and self._sem is not None
        if server_url is not None:
            url = normalize_url(server_url)
            candidates: list[_Server] | None = [self._servers.setdefault(url, _Server(url))]
        else:
            candidates = self._candidates(agent)
        if not candidates:
            names = ", ".join(sorted(self.routes)) or "(none)"
            who = f"agent {agent!r}" if agent else "rollouts without an agent (no agent_ref)"
            return VerifyResult(False, reason="no_server", error=f"no --server for {who} (routes: {names})")
        data = body if isinstance(body, bytes) else encode_body(body)
        start = time.monotonic()
        last: _Retryable | None = None
        server: _Server | None = None
        attempt = 0
        async with self._sem:
            while True:
                attempt += 1
                server = self._pick(candidates, server if last is not None else None)
                server.in_flight += 1
                server.sent += 1
                try:
                    answer = await self._attempt(server, data, headers)
                    return VerifyResult(True, answer, status=200, attempts=attempt, server=server.url, seconds=time.monotonic() - start)
                except _Final as exc:
                    server.failed += 1
                    return VerifyResult(
                        False, exc.answer, reason=exc.reason, status=exc.status, error=exc.error, attempts=attempt,
                        server=server.url, seconds=time.monotonic() - start,
                    )
                except _Retryable as exc:
                    server.failed += 1
                    last = exc
                finally:
                    server.in_flight -= 1
                if attempt > self.retries:
                    return VerifyResult(
                        False, reason=last.reason, status=last.status, error=last.error, attempts=attempt,
                        server=server.url, seconds=time.monotonic() - start,
                    )
                await asyncio.sleep(self._delay(attempt, last.retry_after))

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        cap = min(self.max_backoff, self.backoff * (2 ** (attempt - 1)))
        delay = self._rng.uniform(0, cap)  # full jitter: spreads a thundering herd of retries
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.max_backoff))
        return delay

    async def _attempt(self, server: _Server, data: bytes, headers: Mapping[str, str] | None = None) -> dict[str, Any]:
        assert self._session is not None
        try:
            async with self._session.post(server.verify_url, data=data, headers=headers) as resp:
                raw = await resp.read()
                status = resp.status
                retry_after = resp.headers.get("Retry-After")
        except asyncio.TimeoutError:
            raise _Retryable("timeout", f"no answer within {self.timeout:g} s") from None
        except aiohttp.ClientResponseError as exc:  # e.g. malformed HTTP from the server
            raise _Retryable("connection", f"{type(exc).__name__}: {exc.message}", exc.status or None) from None
        except (aiohttp.ClientError, OSError) as exc:
            raise _Retryable("connection", f"{type(exc).__name__}: {exc}".rstrip(": ")) from None
        if status == 200:
            try:
                answer = orjson.loads(raw)
            except orjson.JSONDecodeError:
                raise _Final("bad_response", f"HTTP 200 but the body is not JSON: {raw[:200]!r}", status) from None
            reward = answer.get("reward") if isinstance(answer, dict) else None
            if isinstance(reward, bool) or not isinstance(reward, (int, float)) or reward != reward:
                raise _Final("bad_response", f"HTTP 200 but no numeric 'reward' in the answer: {raw[:200]!r}", status)
            # Three dict lookups on the common path: 0.7.0 answers carry mask_sample false, failure_kind null.
            if answer.get("mask_sample") is True or answer.get("_ng_failure_class"):
                failed = answer_failure(answer)
                if failed is not None:
                    raise _Final(failed[0], failed[1], status, answer)
            return answer
        text = describe_error_body(raw)
        if status == 429 or status >= 500:
            ra: float | None = None
            if retry_after:
                try:
                    ra = float(retry_after)
                except ValueError:
                    ra = None
            raise _Retryable("http_429" if status == 429 else "http_5xx", f"HTTP {status}: {text}", status, ra)
        raise _Final("http_4xx" if 400 <= status < 500 else "http_other", f"HTTP {status}: {text}", status)

    @property
    def urls(self) -> list[str]:
        """Every server URL this client may send to, once each (the pool's first, then the routes')."""
        return list(self._servers)

    def server_stats(self) -> list[dict[str, Any]]:
        """Requests sent / failed per server URL (attempts, retries included)."""
        return [{"url": s.url, "sent": s.sent, "failed": s.failed} for s in self._servers.values()]


@dataclass(frozen=True)
class RequestSchema:
    """What a server's `/verify` request model declares (from FastAPI's `/openapi.json`).

    `fields`: the declared top-level fields except the echoed request parts (`ECHO_KEYS`).
    `open`: the model takes undeclared fields too (pydantic `extra="allow"`, JSON schema
    `additionalProperties: true`), so the declared ones are not all it may read."""

    fields: tuple[str, ...]  # in the schema's order
    open: bool


async def fetch_request_schema(session_or_url: str, timeout: float = 10.0) -> RequestSchema | None:
    """The `/verify` request schema of the server at `session_or_url`, or None when it has none
    to give (no `/openapi.json`, not FastAPI, unreachable): never raises for server trouble."""
    url = normalize_url(session_or_url) + "/openapi.json"
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as s:
            async with s.get(url) as resp:
                if resp.status != 200:
                    return None
                spec = orjson.loads(await resp.read())
        ref = spec["paths"]["/verify"]["post"]["requestBody"]["content"]["application/json"]["schema"]
        if "$ref" in ref:
            ref = spec["components"]["schemas"][ref["$ref"].rsplit("/", 1)[-1]]
        props = ref.get("properties")
        if not isinstance(props, dict):
            return None
        return RequestSchema(tuple(k for k in props if k not in ECHO_KEYS), ref.get("additionalProperties") not in (None, False))
    except Exception:  # noqa: BLE001 - any server may lack the schema; callers then fall back
        return None


async def fetch_request_fields(session_or_url: str, timeout: float = 10.0) -> list[str] | None:
    """The task fields a server's /verify accepts (from its FastAPI `/openapi.json`), or None."""
    schema = await fetch_request_schema(session_or_url, timeout)
    return list(schema.fields) if schema is not None else None


__all__ = [
    "DEFAULT_CONCURRENCY",
    "DEFAULT_RETRIES",
    "DEFAULT_TIMEOUT",
    "ECHO_KEYS",
    "VerifyClient",
    "VerifyConfigError",
    "VERDICT_KEYS",
    "VerifyResult",
    "answer_failure",
    "build_request",
    "clean_params",
    "describe_error_body",
    "encode_body",
    "fetch_request_fields",
    "fetch_request_schema",
    "RequestSchema",
    "normalize_url",
    "parse_servers",
    "server_answers",
    "server_specs",
    "resources_server_problem",
    "unreachable_servers",
]
