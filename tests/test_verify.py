"""gymverl.verify: request building, routing, and the retry/failure rules under injected faults.

Faults come from tests/fake_verify_server.py (a separate process on 127.0.0.1); real scoring is
tested against real NeMo Gym servers in test_rescore_real.py.
"""

from __future__ import annotations

import asyncio
import copy
import json
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import SAMPLE_DATA
from fake_verify_server import FakeServer, OtherHttpServer, fake_reward
from gymverl.verify import (
    VerifyClient,
    VerifyConfigError,
    answer_failure,
    build_request,
    clean_params,
    describe_error_body,
    normalize_url,
    parse_servers,
    server_answers,
    unreachable_servers,
)


def sample_rows() -> list[dict[str, Any]]:
    return [json.loads(line) for line in (SAMPLE_DATA / "rollouts.jsonl").read_text().splitlines()]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def verify_all(client: VerifyClient, rows: list[dict[str, Any]]) -> list[Any]:
    async with client:
        return await asyncio.gather(*(client.verify(r) for r in rows))


# ---- request body --------------------------------------------------------------------------------


def test_build_request_drops_reward_and_null_params_without_touching_the_row() -> None:
    row = sample_rows()[0]
    row["responses_create_params"].update({"parallel_tool_calls": None, "tool_choice": None, "temperature": 0.5})
    row["reward_before"] = 0.25
    original = copy.deepcopy(row)
    body = build_request(row, {"options": [{"A": "x"}]})
    assert row == original  # the row itself is unchanged
    assert "reward" not in body and "reward_before" not in body
    assert "parallel_tool_calls" not in body["responses_create_params"]
    assert "tool_choice" not in body["responses_create_params"]
    assert body["responses_create_params"]["temperature"] == 0.5
    assert body["responses_create_params"]["input"] == row["responses_create_params"]["input"]
    assert body["options"] == [{"A": "x"}]
    assert body["expected_answer"] == row["expected_answer"] and body["response"] == row["response"]


def test_clean_params_keeps_falsy_values_that_are_not_null() -> None:
    assert clean_params({"a": None, "b": False, "c": 0, "d": "", "e": []}) == {"b": False, "c": 0, "d": "", "e": []}


def test_describe_error_body_summarises_fastapi_details() -> None:
    body = json.dumps({"detail": [{"loc": ["body", "question"], "msg": "Field required", "input": {"huge": "x" * 10_000}}]})
    assert describe_error_body(body.encode()) == "question: Field required"
    assert describe_error_body(b'{"detail": "Not Found"}') == "Not Found"
    assert describe_error_body(b"<html>bad gateway</html>") == "<html>bad gateway</html>"


# ---- servers and routing -------------------------------------------------------------------------


def test_parse_servers_pool_routes_and_errors() -> None:
    pool, routes = parse_servers(["http://a:1/", "math=http://m:2/verify", "http://b:3,xlam=http://x:4"])
    assert pool == ["http://a:1", "http://b:3"]
    assert routes == {"math": ["http://m:2"], "xlam": ["http://x:4"]}
    with pytest.raises(VerifyConfigError, match="must start with http"):
        parse_servers(["localhost:8000"])
    with pytest.raises(VerifyConfigError, match="no verifier server"):
        parse_servers([])


def test_urls_lists_every_server_once_pool_first() -> None:
    """What rescore asks GET /reverify_mode and /openapi.json of: each URL once, none left out."""
    c = VerifyClient(["http://127.0.0.1:1", "a=http://127.0.0.1:3", "b=http://127.0.0.1:1", "a=http://127.0.0.1:2"])
    assert c.urls == ["http://127.0.0.1:1", "http://127.0.0.1:3", "http://127.0.0.1:2"]
    assert VerifyClient(["a=http://127.0.0.1:2"]).urls == ["http://127.0.0.1:2"]  # routes only, no pool


def test_routing_by_agent_name_exact_then_longest_prefix_then_pool() -> None:
    c = VerifyClient(["http://pool:1", "math=http://m:1", "math_with_judge=http://mj:1", "xlam_fc_simple_agent=http://x:1"])
    assert c.servers_for("math_with_judge_simple_agent") == ["http://mj:1"]
    assert c.servers_for("math_other_agent") == ["http://m:1"]
    assert c.servers_for("xlam_fc_simple_agent") == ["http://x:1"]
    assert c.servers_for("mcqa_simple_agent") == ["http://pool:1"]
    assert c.servers_for(None) == ["http://pool:1"]
    assert VerifyClient(["math=http://m:1"]).servers_for("mcqa") is None


def test_row_without_a_route_is_a_failure_not_a_request() -> None:
    row = sample_rows()[0]  # math_with_judge_simple_agent
    (res,) = run(verify_all(VerifyClient(["xlam_fc=http://127.0.0.1:9"]), [row]))
    assert not res.ok and res.reason == "no_server" and res.attempts == 0 and res.reward is None
    assert "math_with_judge_simple_agent" in res.error


def test_backoff_is_jittered_capped_and_honours_retry_after() -> None:
    c = VerifyClient(["http://a:1"], backoff=0.5, max_backoff=4.0, seed=1)
    delays = [c._delay(attempt, None) for attempt in (1, 2, 3, 4, 5, 6) for _ in range(50)]
    assert all(0 <= d <= 4.0 for d in delays)
    assert max(delays[:50]) <= 0.5 and max(delays[-50:]) > 2.0  # grows with the attempt number
    assert len(set(delays)) > 250  # jittered, not a fixed schedule
    assert c._delay(1, 3.0) >= 3.0 and c._delay(1, 100.0) == 4.0


def test_bad_settings_are_refused() -> None:
    for kw in ({"concurrency": 0}, {"timeout": 0}, {"retries": -1}):
        with pytest.raises(VerifyConfigError):
            VerifyClient(["http://a:1"], **kw)


# ---- faults --------------------------------------------------------------------------------------


def test_retries_500_429_and_connection_reset_then_succeeds() -> None:
    rows = sample_rows()[:6]
    with FakeServer("--plan", "500,429,reset,503,ok") as srv:
        results = run(verify_all(VerifyClient([srv.url], retries=4, backoff=0.01), rows))
        stats = srv.stats()
    for row, res in zip(rows, results):
        assert res.ok, res
        assert res.attempts == 5
        assert res.reward == fake_reward(row["response"]["id"])
    assert stats["requests"] == 5 * len(rows)


def test_422_is_not_retried_and_carries_the_servers_detail() -> None:
    with FakeServer("--plan", "422") as srv:
        (res,) = run(verify_all(VerifyClient([srv.url], retries=5, backoff=0.01), sample_rows()[:1]))
        assert srv.stats()["requests"] == 1
    assert not res.ok and res.reward is None
    assert (res.reason, res.status, res.attempts) == ("http_4xx", 422, 1)
    assert res.error == "HTTP 422: question: Field required"


def test_other_4xx_is_not_retried_either() -> None:
    with FakeServer("--plan", "404") as srv:
        (res,) = run(verify_all(VerifyClient([srv.url], retries=5, backoff=0.01), sample_rows()[:1]))
    assert (res.ok, res.status, res.attempts) == (False, 404, 1)


def test_persistent_5xx_gives_up_after_the_retries() -> None:
    with FakeServer("--plan", "503") as srv:
        (res,) = run(verify_all(VerifyClient([srv.url], retries=2, backoff=0.01), sample_rows()[:1]))
        assert srv.stats()["requests"] == 3
    assert not res.ok and (res.reason, res.status, res.attempts) == ("http_5xx", 503, 3)
    assert res.failure() == {"reason": "http_5xx", "status": 503, "error": "HTTP 503: injected 503", "attempts": 3, "server": srv.url}


def test_timeouts_are_retried_and_then_reported() -> None:
    with FakeServer("--plan", "timeout", "--hang", "20") as srv:
        t0 = time.monotonic()
        (res,) = run(verify_all(VerifyClient([srv.url], timeout=0.3, retries=1, backoff=0.01), sample_rows()[:1]))
        elapsed = time.monotonic() - t0
    assert not res.ok and (res.reason, res.attempts) == ("timeout", 2)
    assert elapsed < 5


def test_timeout_then_answer_on_retry() -> None:
    with FakeServer("--plan", "timeout,ok", "--hang", "20") as srv:
        (res,) = run(verify_all(VerifyClient([srv.url], timeout=0.3, retries=2, backoff=0.01), sample_rows()[:1]))
    assert res.ok and res.attempts == 2


def test_a_200_without_a_reward_is_a_failure_not_a_zero() -> None:
    for step in ("garbage", "noreward"):
        with FakeServer("--plan", step) as srv:
            (res,) = run(verify_all(VerifyClient([srv.url], retries=3, backoff=0.01), sample_rows()[:1]))
        assert not res.ok and res.reason == "bad_response" and res.attempts == 1 and res.reward is None


def test_a_200_that_reports_a_failure_is_a_failure_not_a_zero() -> None:
    """NeMo Gym >= 0.5: the judge fail-safe answers 200 with reward 0.0, mask_sample true and
    failure_kind judge_failed; any mask_sample true answer is no measurement. Never retried."""
    for step, reason in (("judge_failed", "judge_failed"), ("masked", "masked")):
        with FakeServer("--plan", step) as srv:
            (res,) = run(verify_all(VerifyClient([srv.url], retries=3, backoff=0.01), sample_rows()[:1]))
        assert not res.ok and res.reason == reason and res.status == 200 and res.attempts == 1
        assert res.reward is None and res.answer is not None and res.answer["mask_sample"] is True
        assert "mask_sample=True" in (res.error or "")
    # failure_kind with mask_sample false: NeMo Gym's "degraded but validly measured": a reward.
    with FakeServer("--plan", "degraded") as srv:
        (res,) = run(verify_all(VerifyClient([srv.url]), sample_rows()[:1]))
    assert res.ok and res.reward is not None and res.reward > 0


def test_answer_failure_reasons() -> None:
    assert answer_failure({"reward": 1.0, "mask_sample": False, "failure_kind": None}) is None
    assert answer_failure({"reward": 0.5, "mask_sample": False, "failure_kind": "tool_error"}) is None
    assert answer_failure({"reward": 0.0, "_ng_failure_class": "judge_failed"})[0] == "judge_failed"  # type: ignore[index]
    assert answer_failure({"reward": 0.0, "mask_sample": True, "failure_kind": "sandbox_oom"})[0] == "sandbox_oom"  # type: ignore[index]
    # A kind that is no identifier, or names a transport failure, is reported as `masked`.
    assert answer_failure({"reward": 0.0, "mask_sample": True, "failure_kind": "x y"})[0] == "masked"  # type: ignore[index]
    assert answer_failure({"reward": 0.0, "mask_sample": True, "failure_kind": "timeout"})[0] == "masked"  # type: ignore[index]


def test_the_stored_verdict_is_never_sent_back() -> None:
    row = dict(sample_rows()[0], mask_sample=True, failure_kind="judge_failed", failure_reason="x", _ng_failure_class="judge_failed")
    body = build_request(row)
    assert not {"mask_sample", "failure_kind", "failure_reason", "_ng_failure_class"} & set(body)


def test_connection_refused_is_retried_then_reported() -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    (res,) = run(verify_all(VerifyClient([url], retries=2, backoff=0.01), sample_rows()[:1]))
    assert not res.ok and (res.reason, res.attempts, res.status) == ("connection", 3, None)


def test_concurrency_is_bounded() -> None:
    rows = [dict(r, response=dict(r["response"], id=f"r{i}")) for i, r in enumerate(sample_rows() * 2)]
    with FakeServer("--latency", "0.15") as srv:
        t0 = time.monotonic()
        results = run(verify_all(VerifyClient([srv.url], concurrency=4), rows))
        elapsed = time.monotonic() - t0
        stats = srv.stats()
    assert all(r.ok for r in results)
    assert stats["max_in_flight"] == 4
    assert elapsed >= 0.15 * len(rows) / 4 * 0.9


def test_load_balancing_and_failover_to_a_healthy_server() -> None:
    rows = [dict(r, response=dict(r["response"], id=f"r{i}")) for i, r in enumerate(sample_rows() * 2)]
    with FakeServer("--latency", "0.02") as a, FakeServer("--latency", "0.02") as b:
        results = run(verify_all(VerifyClient([a.url, b.url], concurrency=8), rows))
        sa, sb = a.stats()["requests"], b.stats()["requests"]
    assert all(r.ok for r in results)
    assert sa + sb == len(rows) and sa >= 8 and sb >= 8
    with FakeServer("--plan", "503") as bad, FakeServer() as good:
        results = run(verify_all(VerifyClient([bad.url, good.url], concurrency=4, retries=3, backoff=0.01), rows[:12]))
    assert all(r.ok and r.server == good.url for r in results)


# ---- compressed answers --------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_compressed_answers_are_decoded(encoding: str) -> None:
    """aiohttp sends `Accept-Encoding: gzip, deflate`, so an answer encoded that way (a compressing
    proxy, FastAPI's GZipMiddleware) must be read; before the fix every row failed as bad_response."""
    rows = sample_rows()[:4]
    with FakeServer("--compress", encoding) as srv:
        results = run(verify_all(VerifyClient([srv.url], retries=0), rows))
    for row, res in zip(rows, results):
        assert res.ok, res
        assert res.reward == fake_reward(row["response"]["id"]) and res.attempts == 1


def test_a_row_nested_deeper_than_orjson_writes_is_still_sent() -> None:
    """orjson reads 1024 levels but writes 254: a valid row nested 300 deep must reach the server."""
    row = sample_rows()[0]
    deep: Any = "x"
    for _ in range(300):
        deep = [deep]
    row["expected_answer"] = deep
    with FakeServer() as srv:
        (res,) = run(verify_all(VerifyClient([srv.url], retries=0), [row]))
    assert res.ok, res
    assert res.answer["expected_answer"] == deep


def test_server_specs_one_reading_for_every_form():
    """--server, $GYMVERL_VERIFY_URL and VeRL reward_kwargs all read specs the same way (one parser)."""
    from gymverl.verify import server_specs

    want = ("http://a:1", "math=http://m:2")
    assert server_specs("http://a:1,math=http://m:2") == want
    assert server_specs("http://a:1 math=http://m:2") == want  # the env var form the demo writes
    assert server_specs(["http://a:1", "math=http://m:2"]) == want
    assert server_specs(["http://a:1, math=http://m:2"]) == want
    assert server_specs({"math": "http://m:2"}) == ("math=http://m:2",)
    assert parse_servers("http://a:1 math=http://m:2") == (["http://a:1"], {"math": ["http://m:2"]})
    from gymverl.reward import _server_specs

    assert _server_specs({"server": "http://a:1 math=http://m:2"}) == want
    assert _server_specs({"servers": {"math": "http://m:2"}}) == ("math=http://m:2",)


def test_unreachable_servers_names_the_first_server_that_does_not_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    """The preflight rescore and train-online share: any HTTP status is an answer (a FakeServer's
    GET / is a 404), connection refused is not; servers are reached directly, as VerifyClient
    reaches them (aiohttp ignores $http_proxy), so a dead proxy setting does not make a live
    server look down."""
    dead = f"http://127.0.0.1:{closed_port()}"
    assert unreachable_servers([]) is None
    with FakeServer() as srv:
        assert server_answers(srv.url + "/") is None
        assert unreachable_servers([srv.url, f"mcqa={srv.url}"]) is None
        down = unreachable_servers(f"{srv.url},mcqa={dead}")
        assert down is not None and down[0] == f"mcqa={dead}" and "refused" in down[1].lower()
        for var in ("http_proxy", "HTTP_PROXY"):
            monkeypatch.setenv(var, dead)
        for var in ("no_proxy", "NO_PROXY"):
            monkeypatch.delenv(var, raising=False)
        assert unreachable_servers([srv.url]) is None
    assert server_answers(dead + "/") is not None


@pytest.mark.parametrize("status", [404, 405])
def test_unreachable_servers_names_a_server_that_answers_but_is_no_resources_server(status: int) -> None:
    """--server given a policy model server's port: GET /reverify_mode's 404 read as NeMo Gym < 0.5,
    every row failed `http_4xx (404)` and rescore still said its output was written. The shared
    preflight POSTs `{}` to /verify: a resources server refuses it with 422 (NeMo Gym 0.4.0 and
    0.7.0, checked against `python -m gymverl.nemo_gym mcqa`; the fault server answers so too),
    something else answers 404 or 405 there."""
    with OtherHttpServer(status) as other, FakeServer() as srv:
        down = unreachable_servers([srv.url, f"mcqa={other.url}"])
        assert down == (f"mcqa={other.url}", f"answers {status} at /verify: not a NeMo Gym resources server")
        assert unreachable_servers([srv.url]) is None
        assert srv.stats()["requests"] == 0 and srv.stats()["probes"] == 2  # the probe is not a row


@pytest.mark.parametrize("url, says", [
    ("http://127.0.0.1:99999", "is not a valid URL: port out of range 0-65535"),
    ("http://127.0.0.1:80x", "is not a valid URL: port could not be cast to integer"),
    ("http://:8000", "names no host"),
])
def test_a_server_url_with_a_bad_port_or_no_host_is_a_usage_error_for_every_command(url: str, says: str, tmp_path: Path) -> None:
    """`rescore -s http://127.0.0.1:99999` said "internal error (ValueError: Port out of range
    0-65535)": parse_servers, the one spec parser, now checks port and host, so every command that
    takes --server (rescore, train-online) says one plain sentence, exit 2."""
    from typer.testing import CliRunner

    from gymverl.cli import app

    with pytest.raises(VerifyConfigError, match=says):
        parse_servers(f"mcqa={url}")
    assert normalize_url("http://[::1]:8000/verify") == "http://[::1]:8000"
    data = tmp_path / "in.jsonl"
    data.write_text((SAMPLE_DATA / "rollouts.jsonl").read_text())
    runner = CliRunner()
    for cmd in (
        ["rescore", str(data), "-o", str(tmp_path / "o.jsonl"), "-s", url],
        ["train-online", str(data), "-m", str(tmp_path / "model"), "-o", str(tmp_path / "run"), "--server", f"mcqa={url}", "--dry-run"],
    ):
        res = runner.invoke(app, cmd, env={"GYMVERL_VERIFY_URL": ""})
        lines = [x for x in res.output.splitlines() if x.strip()]
        assert res.exit_code == 2 and len(lines) == 1 and says in lines[0] and "internal error" not in lines[0], res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]


def test_a_row_without_an_agent_and_no_route_says_so() -> None:
    # It said "no --server for agent None".
    row = {k: v for k, v in sample_rows()[0].items() if k != "agent_ref"}
    (res,) = run(verify_all(VerifyClient(["xlam_fc=http://127.0.0.1:9"]), [row]))
    assert not res.ok and res.reason == "no_server"
    assert "rollouts without an agent (no agent_ref)" in res.error and "None" not in res.error, res.error
