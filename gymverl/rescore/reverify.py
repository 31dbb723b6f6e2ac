"""`GET /reverify_mode`: which servers may re-verify stored rollouts (NeMo Gym >= 0.5 `ReverifyMode`)."""

from __future__ import annotations

import asyncio

import orjson

from gymverl.verify import VerifyClient, unreachable_servers

from gymverl.rescore.errors import RescoreError


# What `GET /reverify_mode` may say (NeMo Gym >= 0.5 `ReverifyMode`), plus gymverl's own two:
# `not_declared` (HTTP 404: the server predates the route, NeMo Gym < 0.5) and `unreachable`.
SAFE_MODES = frozenset({"stateless", "not_declared", "unreachable"})


async def fetch_reverify_mode(url: str, timeout: float = 10.0) -> str:
    """What the server at `url` says about re-verifying stored rollouts: "stateless",
    "unsupported", "unknown" (its answer), "not_declared" (HTTP 404: NeMo Gym < 0.5 has no such
    route), "unreachable" (no answer: `check_servers_answer` has refused a server that is down, so
    this is one that went away since; the run itself then reports it), or
    "HTTP <status>" / "unreadable answer" for anything else. Never raises for server trouble."""
    import aiohttp

    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session:
            async with session.get(url + "/reverify_mode") as resp:
                raw = await resp.read()
                status = resp.status
    except (aiohttp.ClientError, OSError, asyncio.TimeoutError):
        return "unreachable"
    if status == 404:
        return "not_declared"
    if status != 200:
        return f"HTTP {status}"
    try:
        mode = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return "unreadable answer"
    return mode.strip().lower() if isinstance(mode, str) and mode.strip() else "unreadable answer"


def check_servers_answer(client: VerifyClient, timeout: float = 10.0) -> None:
    """RescoreError (exit 2, one sentence) when a server of `client` does not answer HTTP at all
    (connection refused, a name that does not resolve, no answer within `timeout` seconds) or
    answers but is no resources server (`POST /verify` is a 404 or 405: a policy model server, a
    wrong port): the same check as train-online's (`gymverl.verify.unreachable_servers`), made
    before any row is read, so such a server is not met row by row, each failed or retried, until
    the run ends. Any other answer counts: a server that fails rows keeps its failure records."""
    specs = [*client.pool, *(f"{name}={url}" for name, urls in client.routes.items() for url in urls)]
    down = unreachable_servers(specs, timeout)
    if down is None:
        return
    spec, why = down
    name = spec.partition("=")[0] if "=" in spec and "://" not in spec.partition("=")[0] else None
    from gymverl.demo import server_for_agent  # agent name -> resources server (`mcqa_simple_agent` -> `mcqa`)

    start = f"python -m gymverl.nemo_gym {server_for_agent(name) if name else 'SERVER_NAME'}"
    raise RescoreError(
        f"--server {spec} {why}; start that NeMo Gym resources server first (`{start}` runs it alone and prints "
        "its URL, or ng_run with its config) and run rescore again: nothing was sent or written."
    )


def check_reverify_modes(client: VerifyClient, force: bool) -> tuple[dict[str, str], list[str]]:
    """Ask every server of `client` `GET /reverify_mode` (concurrently, once per URL).

    Returns ({url: mode}, [urls re-verified although not stateless: only with `force`]).
    Raises RescoreError (exit 2) without `force` when a server is not declared stateless: its
    `/verify` may read session state that `/seed_session` and the rollout's tool calls built, which
    a stored rollout does not carry, so a re-verified reward would be wrong. As `gym eval
    reverify` does, "unknown" (the 0.7.0 default, e.g. math_with_judge and xlam_fc) counts as not
    stateless. A 404 (NeMo Gym < 0.5, no such route) is let through: those servers cannot declare
    anything, and refusing them all would make --force a habit; the summary records it.
    """
    urls = client.urls
    timeout = min(client.timeout, 10.0)

    async def ask() -> list[str]:
        return list(await asyncio.gather(*(fetch_reverify_mode(u, timeout) for u in urls)))

    modes = dict(zip(urls, asyncio.run(ask())))
    unsafe = [u for u, m in modes.items() if m not in SAFE_MODES]
    if unsafe and not force:
        names = {u: [n for n, us in client.routes.items() if u in us] for u in unsafe}
        which = "; ".join(f"{u}{' (' + ', '.join(names[u]) + ')' if names[u] else ''} says {modes[u]!r}" for u in unsafe)
        raise RescoreError(
            f"refusing to re-verify: {which} to GET /reverify_mode, not \"stateless\": re-verifying a stateful "
            "verifier needs the session that /seed_session and the rollout's tool calls built, which a stored rollout "
            "does not carry, so rewards may be wrong; pass --force if this verifier is stateless "
            "(gym eval reverify refuses the same servers without ++force=true)."
        )
    return modes, unsafe
