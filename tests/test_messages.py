"""gymverl.messages: every Responses-API item type -> chat messages (table-driven), and tools."""

from __future__ import annotations

import json
from pathlib import Path

import orjson
import pytest

from conftest import FIXTURE_FILES, SAMPLE_DATA
from gymverl.messages import (
    MessageError,
    chat_tools,
    items_to_messages,
    prompt_messages,
    response_messages,
    rollout_messages,
)
from gymverl.records import check_record


def text(t: str) -> list[dict]:
    return [{"type": "output_text", "text": t, "annotations": []}]


def asst(t: str) -> dict:
    return {"type": "message", "role": "assistant", "id": "m", "status": "completed", "content": text(t)}


def call(name: str, cid: str, args: str = "{}") -> dict:
    return {"type": "function_call", "name": name, "call_id": cid, "arguments": args, "id": f"fc_{cid}"}


def out(cid: str, output: object) -> dict:
    return {"type": "function_call_output", "call_id": cid, "output": output}


def reasoning(*summary: str) -> dict:
    return {"type": "reasoning", "id": "rs", "summary": [{"type": "summary_text", "text": s} for s in summary]}


def tc(name: str, cid: str, args: str = "{}") -> dict:
    return {"type": "function", "id": cid, "function": {"name": name, "arguments": args}}


ITEM_CASES = [
    ("user_string_content", [{"type": "message", "role": "user", "content": "hi"}], {}, [{"role": "user", "content": "hi"}]),
    ("easy_message_without_type", [{"role": "user", "content": "hi"}], {}, [{"role": "user", "content": "hi"}]),
    ("type_null_with_role", [{"type": None, "role": "user", "content": "hi"}], {}, [{"role": "user", "content": "hi"}]),
    ("parts_content_joined", [asst("a"), {"type": "message", "role": "assistant", "content": text("b") + text("c")}], {},
     [{"role": "assistant", "content": "a"}, {"role": "assistant", "content": "bc"}]),
    ("input_text_parts", [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "q?"}]}], {},
     [{"role": "user", "content": "q?"}]),
    ("refusal_part", [{"type": "message", "role": "assistant", "content": [{"type": "refusal", "refusal": "no"}]}], {},
     [{"role": "assistant", "content": "no"}]),
    ("developer_to_system", [{"type": "message", "role": "developer", "content": "rules"}], {},
     [{"role": "system", "content": "rules"}]),
    ("system_kept", [{"role": "system", "content": "sys"}], {}, [{"role": "system", "content": "sys"}]),
    ("call_merged_into_preceding_assistant", [asst("Let me check."), call("get_weather", "c1", '{"city":"Paris"}')], {},
     [{"role": "assistant", "content": "Let me check.", "tool_calls": [tc("get_weather", "c1", '{"city":"Paris"}')]}]),
    ("call_without_text_opens_assistant", [call("f", "c1")], {},
     [{"role": "assistant", "content": "", "tool_calls": [tc("f", "c1")]}]),
    ("several_calls_one_turn", [asst("two"), call("f", "c1", '{"a":1}'), call("g", "c2", '{"b":2}'), out("c1", "r1"), out("c2", "r2")], {},
     [{"role": "assistant", "content": "two", "tool_calls": [tc("f", "c1", '{"a":1}'), tc("g", "c2", '{"b":2}')]},
      {"role": "tool", "tool_call_id": "c1", "content": "r1"},
      {"role": "tool", "tool_call_id": "c2", "content": "r2"}]),
    ("call_after_tool_result_is_a_new_turn", [call("f", "c1"), out("c1", "r"), call("f", "c2")], {},
     [{"role": "assistant", "content": "", "tool_calls": [tc("f", "c1")]},
      {"role": "tool", "tool_call_id": "c1", "content": "r"},
      {"role": "assistant", "content": "", "tool_calls": [tc("f", "c2")]}]),
    ("call_after_user_is_a_new_turn", [asst("a"), {"role": "user", "content": "u"}, call("f", "c1")], {},
     [{"role": "assistant", "content": "a"}, {"role": "user", "content": "u"},
      {"role": "assistant", "content": "", "tool_calls": [tc("f", "c1")]}]),
    ("dict_arguments_become_json_string", [call("f", "c1", {"x": [1, "é"]})], {},  # type: ignore[arg-type]
     [{"role": "assistant", "content": "", "tool_calls": [tc("f", "c1", '{"x":[1,"é"]}')]}]),
    ("call_id_falls_back_to_id", [{"type": "function_call", "name": "f", "id": "fc9", "arguments": "{}"}], {},
     [{"role": "assistant", "content": "", "tool_calls": [tc("f", "fc9")]}]),
    ("function_call_output_to_tool", [out("c1", "42 degrees")], {}, [{"role": "tool", "tool_call_id": "c1", "content": "42 degrees"}]),
    ("function_call_output_object_as_json", [out("c1", {"temp": 42})], {},
     [{"role": "tool", "tool_call_id": "c1", "content": '{"temp":42}'}]),
    ("function_call_output_parts_as_text", [out("c1", [{"type": "input_text", "text": "a"}, {"type": "input_text", "text": "b"}])], {},
     [{"role": "tool", "tool_call_id": "c1", "content": "ab"}]),
    ("reasoning_off_by_default", [reasoning("think"), asst("done")], {}, [{"role": "assistant", "content": "done"}]),
    ("reasoning_on", [reasoning("step 1", "step 2"), asst("done")], {"include_reasoning": True},
     [{"role": "assistant", "content": "done", "reasoning_content": "step 1\nstep 2"}]),
    ("reasoning_content_parts", [{"type": "reasoning", "summary": [], "content": [{"type": "reasoning_text", "text": "r"}]}, asst("x")],
     {"include_reasoning": True}, [{"role": "assistant", "content": "x", "reasoning_content": "r"}]),
    ("reasoning_goes_to_the_call_turn", [reasoning("plan"), call("f", "c1"), out("c1", "r"), reasoning("wrap"), asst("ok")],
     {"include_reasoning": True},
     [{"role": "assistant", "content": "", "reasoning_content": "plan", "tool_calls": [tc("f", "c1")]},
      {"role": "tool", "tool_call_id": "c1", "content": "r"},
      {"role": "assistant", "content": "ok", "reasoning_content": "wrap"}]),
    ("empty_reasoning_adds_nothing", [{"type": "reasoning", "summary": [], "encrypted_content": "xx"}, asst("a")],
     {"include_reasoning": True}, [{"role": "assistant", "content": "a"}]),
    ("empty", [], {}, []),
]


@pytest.mark.parametrize("name, items, kw, expected", ITEM_CASES, ids=[c[0] for c in ITEM_CASES])
def test_items_to_messages(name, items, kw, expected):
    assert items_to_messages(items, **kw) == expected


@pytest.mark.parametrize(
    "items, message",
    [
        ([{"type": "web_search_call", "id": "x"}], "unsupported item type 'web_search_call'"),
        (["just text"], "item is a str, not an object"),
        ([{"type": "message", "content": "no role"}], "message item without a role"),
        ([{"content": "no type, no role"}], "message item without a role"),
        ([{"type": None, "content": "null type, no role"}], "unsupported item type None"),
    ],
)
def test_unconvertible_items_raise_message_error(items, message):
    with pytest.raises(MessageError) as exc:
        items_to_messages(items)
    assert str(exc.value) == message


@pytest.mark.parametrize(
    "rcp, expected",
    [
        ({"input": "What is 2+2?"}, [{"role": "user", "content": "What is 2+2?"}]),
        ({"input": "q", "instructions": "Be brief."}, [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "q"}]),
        ({"input": [{"role": "developer", "content": "d"}, {"role": "user", "content": "u"}], "instructions": None},
         [{"role": "system", "content": "d"}, {"role": "user", "content": "u"}]),
        ({"input": [], "instructions": ""}, []),
    ],
)
def test_prompt_messages(rcp, expected):
    assert prompt_messages(rcp) == expected


def test_rollout_and_response_messages():
    rec = {
        "responses_create_params": {"input": [{"role": "user", "content": "Weather?"}], "instructions": "Sys."},
        "response": {"output": [reasoning("hmm"), call("w", "c1"), out("c1", "sun"), asst("Sunny.")]},
        "reward": 1.0,
    }
    full = rollout_messages(rec)
    assert [m["role"] for m in full] == ["system", "user", "assistant", "tool", "assistant"]
    assert full[2]["tool_calls"] == [tc("w", "c1")]
    assert response_messages(rec) == full[2:]
    assert rollout_messages(rec, include_reasoning=True)[2]["reasoning_content"] == "hmm"
    assert "reasoning_content" not in full[2]


TOOL_CASES = [
    ("responses_form",
     [{"type": "function", "name": "get_weather", "description": "Weather.", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}, "strict": True}],
     [{"type": "function", "function": {"name": "get_weather", "description": "Weather.", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]),
    ("no_description_no_parameters", [{"type": "function", "name": "ping"}],
     [{"type": "function", "function": {"name": "ping", "parameters": {"type": "object", "properties": {}}}}]),
    ("already_chat_form", [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
     [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]),
    ("type_defaults_to_function", [{"name": "f", "parameters": {"type": "object"}}],
     [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]),
    ("none", None, []),
    ("empty", [], []),
]


@pytest.mark.parametrize("name, tools, expected", TOOL_CASES, ids=[c[0] for c in TOOL_CASES])
def test_chat_tools(name, tools, expected):
    assert chat_tools(tools) == expected


@pytest.mark.parametrize(
    "tools, message",
    [
        ([{"type": "web_search"}], "'responses_create_params.tools[0]' has type 'web_search': only function tools can be given to a chat model"),
        (["f"], "'responses_create_params.tools[0]' is string, not a tool object"),
        ([{"type": "function", "name": "f"}, {"type": "function", "function": {"name": ""}}], "'responses_create_params.tools[1]' has no name"),
    ],
)
def test_chat_tools_errors(tools, message):
    with pytest.raises(MessageError) as exc:
        chat_tools(tools)
    assert str(exc.value) == message
    assert exc.value.code == "bad_tools"


def _real_rollouts():
    for path in [*FIXTURE_FILES, SAMPLE_DATA / "rollouts.jsonl"]:
        for n, raw in enumerate(path.read_bytes().splitlines(), 1):
            yield f"{path.name}:{n}", orjson.loads(raw)


def test_real_rollouts_convert_to_well_formed_conversations(fixture_files: list[Path]) -> None:
    seen_calls = 0
    for where, rec in _real_rollouts():
        check_record(rec)
        rcp = rec["responses_create_params"]
        msgs = rollout_messages(rec, include_reasoning=True)
        tools = chat_tools(rcp.get("tools"))
        json.dumps(msgs)
        json.dumps(tools)
        assert msgs, where
        open_ids: set[str] = set()
        for m in msgs:
            assert m["role"] in {"system", "user", "assistant", "tool"}, where
            assert isinstance(m["content"], str), where
            for t in m.get("tool_calls", []):
                assert t["type"] == "function" and isinstance(t["function"]["name"], str), where
                json.loads(t["function"]["arguments"])
                open_ids.add(t["id"])
                seen_calls += 1
            if m["role"] == "tool":
                assert m["tool_call_id"] in open_ids, where  # every result answers an earlier call
        # Every function_call item is accounted for, none duplicated.
        n_calls = sum(1 for i in rec["response"]["output"] if i.get("type") == "function_call")
        assert sum(len(m.get("tool_calls", [])) for m in response_messages(rec)) == n_calls, where
    assert seen_calls >= 40  # the fixtures hold 41 function calls


def test_messages_to_items_reverses_items_to_messages() -> None:
    """An agent loop's turns -> Responses-API items -> the same chat messages back."""
    from gymverl.messages import messages_to_items, response_object

    turns = [
        {"role": "assistant", "content": "", "reasoning_content": "I should look.",
         "tool_calls": [{"type": "function", "id": "call_1", "function": {"name": "lookup", "arguments": '{"key": "k"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": '{"value": 42}'},
        {"role": "assistant", "content": "Two calls.", "tool_calls": [
            {"type": "function", "id": "call_2", "function": {"name": "a", "arguments": "{}"}},
            {"type": "function", "id": "call_3", "function": {"name": "b", "arguments": '{"x": [1]}'}}]},
        {"role": "tool", "tool_call_id": "call_2", "content": "A"},
        {"role": "tool", "tool_call_id": "call_3", "content": "B"},
        {"role": "assistant", "content": "The value is 42."},
    ]
    items = messages_to_items(turns)
    assert [i["type"] for i in items] == ["reasoning", "function_call", "function_call_output", "message", "function_call",
                                          "function_call", "function_call_output", "function_call_output", "message"]
    assert items_to_messages(items, include_reasoning=True) == turns
    resp = response_object(items, {"tools": [{"type": "function", "name": "lookup"}], "parallel_tool_calls": False})
    assert resp["output"] is items and resp["parallel_tool_calls"] is False and resp["tool_choice"] == "auto"
    with pytest.raises(MessageError):
        messages_to_items([{"role": "user", "content": "hi"}])


def test_content_with_images_reads_text_only_parts_as_content_text() -> None:
    """`content_with_images` reads a list of text parts in one loop of its own: it must give what
    `content_text` gives for every mix of parts it does not refuse (str parts, refusals, missing or
    non-string texts, dict subclasses, unknown types)."""
    import random
    from collections import OrderedDict

    from gymverl.messages import content_with_images
    from gymverl.schema import content_text

    rng = random.Random(3)
    pool = [
        "plain", "", {"type": "output_text", "text": "a"}, {"type": "input_text", "text": " b "},
        {"type": "refusal", "refusal": "no"}, {"type": "refusal", "text": None, "refusal": "r"},
        {"type": "output_text"}, {"type": "output_text", "text": 5}, {"text": "untyped"}, {"type": "unknown", "text": "u"},
        OrderedDict(type="output_text", text="sub"), 7, None,
    ]
    for _ in range(500):
        content = [rng.choice(pool) for _ in range(rng.randint(0, 5))]
        assert content_with_images(content, []) == content_text(content), content
