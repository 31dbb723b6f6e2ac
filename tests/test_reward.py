"""gymverl.reward.compute_score: request building, settings, pool reuse and the failure modes.

Faults come from tests/fake_verify_server.py; scoring real rows through VeRL's own reward loader
against real NeMo Gym servers is in test_rescore_real.py.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from fake_verify_server import FakeServer
from gymverl import reward
from gymverl.reward import RewardConfigError, VerifyFailed, compute_score, get_client, response_from_text, verify_request

PARAMS = {
    "input": [{"role": "user", "content": "What's the weather in Paris?"}],
    "tools": [{"type": "function", "name": "get_weather", "parameters": {"type": "object", "properties": {}}}],
    "parallel_tool_calls": None,
    "tool_choice": None,
}


def extra_info(task: dict[str, Any] | None = None, agent: str = "xlam_fc_simple_agent", as_string: bool = True) -> dict[str, Any]:
    ng = {"responses_create_params": PARAMS, "task": task or {"expected_answers": [{"name": "get_weather", "arguments": {"city": "Paris"}}]},
          "agent_ref": {"type": "responses_api_agents", "name": agent}}
    return {"split": "train", "index": 7, "task_key": "k", "nemo_gym": json.dumps(ng) if as_string else ng}


@pytest.fixture(autouse=True)
def no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("GYMVERL_VERIFY_URL", "GYMVERL_VERIFY_ON_FAILURE", "GYMVERL_VERIFY_CONCURRENCY", "GYMVERL_VERIFY_TIMEOUT", "GYMVERL_VERIFY_RETRIES"):
        monkeypatch.delenv(var, raising=False)


def test_response_from_text_plain_answer() -> None:
    r = response_from_text("The answer is \\boxed{4}.", {"tool_choice": "none", "parallel_tool_calls": False})
    assert [o["type"] for o in r["output"]] == ["message"]
    assert r["output"][0]["content"][0] == {"type": "output_text", "text": "The answer is \\boxed{4}.", "annotations": []}
    assert (r["tool_choice"], r["parallel_tool_calls"], r["tools"], r["object"]) == ("none", False, [], "response")
    # defaults for the fields NeMo Gym's response model requires
    r = response_from_text("x", {"tool_choice": None})
    assert (r["tool_choice"], r["parallel_tool_calls"]) == ("auto", True)


def test_response_from_text_tool_calls_and_think() -> None:
    text = (
        "<think>I should call the tool.</think>Let me check.\n"
        '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>\n'
        '<tool_call>{"name": "get_time", "arguments": "{\\"tz\\": \\"CET\\"}"}</tool_call>'
        "<tool_call>not json</tool_call>"
    )
    r = response_from_text(text, PARAMS)
    kinds = [o["type"] for o in r["output"]]
    # The reasoning is a `reasoning` item, as NeMo Gym's model server returns it (issue 12).
    assert kinds == ["reasoning", "message", "function_call", "function_call"]
    assert r["output"][0]["summary"][0]["text"] == "I should call the tool."
    r["output"].pop(0)
    msg = r["output"][0]["content"][0]["text"]
    assert "think" not in msg and msg.startswith("Let me check.") and "not json" in msg
    fc = r["output"][1]
    assert fc["name"] == "get_weather" and json.loads(fc["arguments"]) == {"city": "Paris"} and fc["call_id"]
    assert json.loads(r["output"][2]["arguments"]) == {"tz": "CET"}
    only_call = response_from_text('<tool_call>{"name": "get_weather", "arguments": {}}</tool_call>', PARAMS)
    assert [o["type"] for o in only_call["output"]] == ["function_call"]
    kept = response_from_text("<think>hmm</think>4", PARAMS, keep_think=True)
    assert kept["output"][0]["content"][0]["text"] == "<think>hmm</think>4"


def test_verify_request_from_extra_info() -> None:
    for as_string in (True, False):
        body, agent = verify_request("hi", extra_info(as_string=as_string))
        assert agent == "xlam_fc_simple_agent"
        assert body["expected_answers"] == [{"name": "get_weather", "arguments": {"city": "Paris"}}]
        assert "parallel_tool_calls" not in body["responses_create_params"]  # nulls dropped
        assert body["responses_create_params"]["input"] == PARAMS["input"]
        assert body["response"]["output"][0]["content"][0]["text"] == "hi"
    with pytest.raises(RewardConfigError, match="to-parquet --format rl"):
        verify_request("hi", {"index": 1})


def test_no_server_configured_is_a_clear_error() -> None:
    with pytest.raises(RewardConfigError, match="reward_kwargs.server"):
        asyncio.run(compute_score("xlam", "hi", "", extra_info()))


def test_scores_and_reports_extra_fields_with_a_stable_key_set() -> None:
    with FakeServer() as srv:
        async def go() -> list[dict[str, Any]]:
            return [
                await compute_score("xlam", "hi", "", extra_info(), server=srv.url, extra_fields=["expected_answers", "attempt", "missing"]),
                await compute_score("math", "hi", "", extra_info({"expected_answer": "4"}, agent="math"), server=srv.url, extra_fields="attempt missing"),
            ]

        a, b = asyncio.run(go())
    assert 0.1 <= a["score"] <= 0.9 and a["verify_failed"] == 0.0 and a["verify_attempts"] == 1
    assert a["expected_answers"] == [{"name": "get_weather", "arguments": {"city": "Paris"}}]  # the task reached the server
    assert a["attempt"] == 1 and a["missing"] is None
    assert set(b) == {"score", "verify_failed", "verify_attempts", "attempt", "missing"}


def test_failure_raises_by_default_and_never_returns_a_made_up_score() -> None:
    with FakeServer("--plan", "503") as srv:
        with pytest.raises(VerifyFailed, match=r"for sample 7 after 2 attempt\(s\): http_5xx: HTTP 503"):
            asyncio.run(compute_score("xlam", "hi", "", extra_info(), server=srv.url, retries=1))
        out = asyncio.run(compute_score("xlam", "hi", "", extra_info(), server=srv.url, retries=1, on_failure=0.0, extra_fields=["x"]))
        assert out == {"score": 0.0, "verify_failed": 1.0, "verify_attempts": 2, "x": None}


def test_a_judge_failure_answered_with_http_200_is_a_failure_like_a_transport_one() -> None:
    """NeMo Gym >= 0.5 answers a failed judge with HTTP 200, reward 0.0 and mask_sample true:
    compute_score raises (default) or flags it, exactly as for a transport failure; never 0.0 as a score."""
    for step in ("judge_failed", "masked"):
        with FakeServer("--plan", step) as srv:
            with pytest.raises(VerifyFailed, match=rf"for sample 7 after 1 attempt\(s\): {step}: HTTP 200"):
                asyncio.run(compute_score("xlam", "hi", "", extra_info(), server=srv.url, retries=3))
            out = asyncio.run(compute_score("xlam", "hi", "", extra_info(), server=srv.url, on_failure=-1, extra_fields=["mask_sample"]))
            assert out == {"score": -1.0, "verify_failed": 1.0, "verify_attempts": 1, "mask_sample": None}


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    with FakeServer("--plan", "500") as srv:
        monkeypatch.setenv("GYMVERL_VERIFY_URL", f"nothing=http://127.0.0.1:9 {srv.url}")
        monkeypatch.setenv("GYMVERL_VERIFY_RETRIES", "0")
        monkeypatch.setenv("GYMVERL_VERIFY_ON_FAILURE", "-1")
        out = asyncio.run(compute_score("xlam", "hi", "", extra_info()))
        assert out["score"] == -1.0 and out["verify_failed"] == 1.0 and out["verify_attempts"] == 1
        assert srv.stats()["requests"] == 1


def test_one_pool_per_event_loop_reused_across_calls_and_bounded() -> None:
    with FakeServer("--latency", "0.05") as srv:
        async def go() -> tuple[Any, Any, list[dict[str, Any]]]:
            first = get_client(server=srv.url, concurrency=4)
            outs = await asyncio.gather(*(compute_score("xlam", f"a{i}", "", extra_info(), server=srv.url, concurrency=4) for i in range(24)))
            second = get_client(server=srv.url, concurrency=4)
            assert first is second and first._session is second._session and not first.closed
            return first, first._session, outs

        c1, s1, outs = asyncio.run(go())
        c2, s2, _ = asyncio.run(go())  # a new loop (VeRL worker) gets its own working pool
        stats = srv.stats()
    assert all(o["verify_failed"] == 0.0 for o in outs)
    assert c1 is not c2 and s1 is not s2
    assert stats["requests"] == 48 and stats["max_in_flight"] <= 4
    reward._prune()
    assert not reward._CLIENTS  # both loops are closed: their pools are not kept forever


def test_scores_through_a_server_that_gzips_its_answers() -> None:
    with FakeServer("--compress", "gzip") as srv:
        async def go() -> dict[str, Any]:
            try:
                return await compute_score("xlam", "hi", "", extra_info(), server=srv.url, retries=0)
            finally:
                await get_client(server=srv.url, retries=0).close()  # no pool left open at exit

        out = asyncio.run(go())
    assert 0.1 <= out["score"] <= 0.9 and out["verify_failed"] == 0.0 and out["verify_attempts"] == 1


def test_deeply_nested_tool_call_arguments_do_not_crash_the_reward() -> None:
    """Arguments parsed from the model's text may nest up to orjson's read limit (1024)."""
    args: Any = 1
    for _ in range(300):
        args = {"a": args}
    text = "<tool_call>" + json.dumps({"name": "get_weather", "arguments": args}) + "</tool_call>"
    resp = response_from_text(text)
    (call,) = [o for o in resp["output"] if o["type"] == "function_call"]
    assert json.loads(call["arguments"]) == args


def test_asyncio_run_of_compute_score_closes_its_pool() -> None:
    """A plain script's `asyncio.run(compute_score(...))` leaves no aiohttp session open (it printed
    "Unclosed client session" at exit): the loop's shutdown closes the pools it made."""
    with FakeServer() as srv:
        made: list[Any] = []

        async def go() -> dict[str, Any]:
            out = await compute_score("xlam", "hi", "", extra_info(), server=srv.url, retries=0)
            made.append(get_client(server=srv.url, retries=0))
            assert not made[0].closed  # open while the loop runs: later calls reuse it
            return out

        out = asyncio.run(go())
    assert out["verify_failed"] == 0.0
    assert made[0].closed
