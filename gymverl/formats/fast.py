"""A faster route from a rollout line to its SFT conversation, for the common case only.

Same pattern as `gymverl.records._FastRollouts` (what `validate` uses): simdjson checks the whole
line (syntax, UTF-8, escapes, number range, depth: as strict as orjson or stricter) and msgspec
decodes only the keys an SFT row needs, typed, in C. The prompt and the tools, shared by the n
rollouts of a task, are kept as raw JSON bytes and converted once per distinct value.

Only a clean result is trusted: whenever anything is unusual (a line `check_record` would reject,
a conversion error, no assistant turn, a value whose reading could depend on the parser, any image
or other non-text content part: `prompt_messages` without an images list refuses those) these
functions return None and the caller takes the exact orjson path for that line, which has the final
word and the exact reasons. So conversions give the same rows with or without this module (or
without msgspec/pysimdjson installed).
"""

from __future__ import annotations

import math
from typing import Any, Optional, Union

import orjson

from gymverl.jsonl import UTF8_BOM
from gymverl.messages import IMAGE_PART_TYPES, ROLE_MAP, UNSUPPORTED_PART_TYPES, MessageError, _reasoning_text, chat_tools, prompt_messages
from gymverl.records import RecordError, _check_items, _fast_items, content_text, is_json_object_text, malformed_calls, prompt_hash

try:
    import msgspec
    import simdjson
except ImportError:  # pragma: no cover - optional accelerators
    msgspec = simdjson = None  # type: ignore[assignment]

_NO_TOOLS: list[dict[str, Any]] = []  # shared, read-only
_U64_MAX = 2**64 - 1  # orjson reads larger integers as floats (then not a valid index): leave those to it

if msgspec is not None:
    _NULL = msgspec.Raw(b"null")
    # gc=False: decoded JSON cannot form reference cycles, so the collector need not track these.

    class _Item(msgspec.Struct, gc=False):
        type: Optional[str] = None
        role: Optional[str] = None
        content: Any = None
        name: Optional[str] = None
        call_id: Optional[str] = None
        # Strings only: a missing value has a default in `items_to_messages`, and anything else would
        # be re-encoded, which is orjson's business.
        arguments: Union[str, msgspec.UnsetType] = msgspec.UNSET
        output: Union[str, msgspec.UnsetType] = msgspec.UNSET
        summary: Any = None

    class _Agent(msgspec.Struct, gc=False):
        name: Any = None

    class _Params(msgspec.Struct, gc=False):
        input: msgspec.Raw
        instructions: msgspec.Raw = _NULL
        tools: msgspec.Raw = _NULL

    class _Response(msgspec.Struct, gc=False):
        output: list[_Item]
        status: Any = None
        incomplete_details: Any = None

    class _Record(msgspec.Struct, gc=False):
        responses_create_params: _Params
        response: _Response
        reward: float
        task_index: Optional[int] = msgspec.field(default=None, name="_ng_task_index")
        rollout_index: Optional[int] = msgspec.field(default=None, name="_ng_rollout_index")
        agent_ref: Union[_Agent, str, None] = None
        mask_sample: Any = None


def available() -> bool:
    """True when msgspec and pysimdjson are installed (otherwise every line takes the orjson path)."""
    return msgspec is not None and simdjson is not None


class FastRollout:
    """What the fast decoder read from one valid rollout line."""

    __slots__ = ("rec", "key", "agent", "reward", "incomplete", "masked", "rollout_index", "prompt", "tools", "malformed", "empty")

    def __init__(
        self, rec: Any, key: str, agent: str | None, incomplete: bool, prompt: tuple[list[dict[str, Any]], bool], tools: list[dict[str, Any]]
    ) -> None:
        self.rec = rec
        self.key = key
        self.agent = agent
        self.reward: float = rec.reward
        self.incomplete = incomplete
        self.masked: bool = rec.mask_sample is True
        self.rollout_index: int | None = rec.rollout_index
        self.prompt = prompt  # (converted prompt messages, whether one is an assistant turn)
        self.tools = tools  # chat tools ([] when none)
        self.malformed = 0  # tool calls whose arguments are not a JSON object (records.malformed_calls)
        self.empty = False  # no final answer (records.empty_answer)


class FastSFT:
    """Decodes valid rollout lines and builds their chat conversation; None means "use the exact path"."""

    def __init__(self, *, include_reasoning: bool = False, cache_size: int = 512) -> None:
        assert available()
        self.include_reasoning = include_reasoning
        self.cache_size = cache_size
        self._parser = simdjson.Parser()
        self._decode = msgspec.json.Decoder(_Record).decode
        self._prompts: dict[Any, tuple[list[dict[str, Any]], bool] | None] = {}
        self._tools: dict[bytes, list[dict[str, Any]] | None] = {}
        self._inputs: dict[bytes, bool] = {}
        self._hashes: dict[tuple[bytes, bytes, bytes], str] = {}
        self._input_malformed: dict[bytes, int] = {}

    def decode(self, data: bytes, *, validated: bool = False, rows: bool = True) -> FastRollout | None:
        """The rollout facts when `data` is certainly a valid rollout, else None.

        `validated=True` skips the JSON syntax check (the line passed it already, e.g. in pass 1);
        `rows=False` only checks the prompt and tools instead of converting them (selection only).
        """
        if not validated:
            if data[:3] == UTF8_BOM:  # simdjson skips a byte order mark, orjson rejects it
                return None
            try:
                self._parser.parse(data)  # validation only: the lazy document is dropped at once
            except Exception:  # noqa: BLE001 - any doubt goes to the exact path
                return None
        try:
            rec = self._decode(data)
        except Exception:  # noqa: BLE001
            return None
        if not _fast_items(rec.response.output) or not math.isfinite(rec.reward):
            return None
        index = rec.task_index
        if index is not None and (index < 0 or index > _U64_MAX):
            return None
        ri = rec.rollout_index
        if ri is not None and (ri < 0 or ri > _U64_MAX):
            return None
        ref = rec.agent_ref
        agent = ref if type(ref) is str else (ref.name if ref is not None and type(ref.name) is str else None)
        status = rec.response.status
        incomplete = bool(rec.response.incomplete_details) or (status is not None and status != "completed")
        # The prompt and tools are checked here too, so a None later means "cannot convert", not "invalid".
        rcp = rec.responses_create_params
        if rows:
            prompt = self._prompt(rcp)
            tools = self._chat_tools(rcp.tools)
            if prompt is None or tools is None:
                return None
        else:
            prompt = tools = None  # type: ignore[assignment]
            if not self._input_ok(rcp.input) or not self._tools_ok(rcp.tools):
                return None
        if index is not None:
            key = f"{agent}#{index}" if agent else f"#{index}"
        else:  # the task is named by a hash of its prompt (records.task_key)
            digest = self._prompt_hash(rcp)
            if digest is None:
                return None
            key = f"{agent}@{digest}" if agent else f"@{digest}"
        got = FastRollout(rec, key, agent, incomplete, prompt, tools)  # type: ignore[arg-type]
        facts = self._content_facts(rec)
        if facts is None:
            return None
        got.malformed, got.empty = facts
        return got

    def _content_facts(self, rec: Any) -> tuple[int, bool] | None:
        """(`records.malformed_calls`, `records.empty_answer`) of a decoded rollout; None when unsure."""
        inp = bytes(rec.responses_create_params.input)
        malformed = 0
        if b"function_call" in inp:
            malformed = self._input_malformed.get(inp, -1)
            if malformed < 0:
                try:
                    malformed = malformed_calls({"responses_create_params": {"input": orjson.loads(inp)}, "response": {}})
                except orjson.JSONDecodeError:
                    return None
                if len(self._input_malformed) >= self.cache_size:
                    self._input_malformed.clear()
                self._input_malformed[inp] = malformed
        last = None
        for item in rec.response.output:
            if item.type == "function_call":
                if item.arguments is not msgspec.UNSET:
                    malformed += not is_json_object_text(item.arguments)
                last = item
            elif item.type in (None, "message") and item.role == "assistant":
                last = item
        if last is None:
            empty = True
        else:
            empty = last.type != "function_call" and not content_text(last.content).strip()
        return malformed, empty

    def _input_ok(self, raw: Any) -> bool:
        """`check_task`'s verdict on `responses_create_params.input` (cached by its JSON)."""
        key = bytes(raw)
        ok = self._inputs.get(key)
        if ok is None:
            try:
                inp = orjson.loads(key)
                if isinstance(inp, list):
                    _check_items(inp, "responses_create_params.input")
                ok = isinstance(inp, (str, list))
            except (orjson.JSONDecodeError, RecordError):
                ok = False
            if len(self._inputs) >= self.cache_size:
                self._inputs.clear()
            self._inputs[key] = ok
        return ok

    def _tools_ok(self, raw: Any) -> bool:
        """`check_task`'s verdict on `responses_create_params.tools`: an array or null."""
        if raw is _NULL:
            return True
        return bytes(memoryview(raw)[:1]) in (b"[", b"n")  # valid JSON starting so: an array, or null

    def _prompt_hash(self, rcp: Any) -> str | None:
        """`records.prompt_hash` from the raw JSON of input, tools and instructions (cached)."""
        key = (bytes(rcp.input), bytes(rcp.tools), bytes(rcp.instructions))
        digest = self._hashes.get(key)
        if digest is None:
            try:
                params = {"input": orjson.loads(key[0]), "tools": orjson.loads(key[1]), "instructions": orjson.loads(key[2])}
            except orjson.JSONDecodeError:
                return None
            digest = prompt_hash({"responses_create_params": params})
            if len(self._hashes) >= self.cache_size:
                self._hashes.clear()
            self._hashes[key] = digest
        return digest

    def conversation(self, got: FastRollout) -> tuple[list[dict[str, Any]], list[dict[str, Any]]] | None:
        """(messages, tools) exactly as `sft.conversation` builds them, or None (exact path decides)."""
        response = _response_messages(got.rec.response.output, self.include_reasoning)
        if response is None:
            return None
        messages, prompt_has_assistant = got.prompt
        if not prompt_has_assistant and not any(m["role"] == "assistant" for m in response):
            return None  # no assistant turn: the exact path rejects it with its reason
        conv = messages + response
        if conv[0]["role"] in ("assistant", "tool"):
            return None  # no prompt (aviary's flat form): the exact path rejects it with its reason
        return conv, got.tools

    def _prompt(self, rcp: Any) -> tuple[list[dict[str, Any]], bool] | None:
        # Keyed by the raw JSON of input (+ instructions when present: msgspec hands back the very
        # default object when the key is missing).
        instructions = rcp.instructions
        inp_json = bytes(rcp.input)
        key: Any = inp_json if instructions is _NULL else (bytes(instructions), inp_json)
        try:
            return self._prompts[key]
        except KeyError:
            pass
        value: tuple[list[dict[str, Any]], bool] | None = None
        try:
            inp = orjson.loads(inp_json)
            ok = isinstance(inp, str)
            if isinstance(inp, list):
                _check_items(inp, "responses_create_params.input")
                ok = True
            if ok:
                messages = prompt_messages({"instructions": orjson.loads(bytes(instructions)), "input": inp}, include_reasoning=self.include_reasoning)
                value = (messages, any(m.get("role") == "assistant" for m in messages))
        except (orjson.JSONDecodeError, RecordError, MessageError):
            value = None
        if len(self._prompts) >= self.cache_size:
            self._prompts.clear()
        self._prompts[key] = value
        return value

    def _chat_tools(self, raw: Any) -> list[dict[str, Any]] | None:
        if raw is _NULL:  # no tools key
            return _NO_TOOLS
        key = bytes(raw)
        try:
            return self._tools[key]
        except KeyError:
            pass
        value: list[dict[str, Any]] | None = None
        try:
            tools = orjson.loads(key)
            if tools is None or isinstance(tools, list):
                value = chat_tools(tools) if tools else []
        except (orjson.JSONDecodeError, MessageError):
            value = None
        if len(self._tools) >= self.cache_size:
            self._tools.clear()
        self._tools[key] = value
        return value


_NON_TEXT = IMAGE_PART_TYPES | UNSUPPORTED_PART_TYPES


def _response_messages(items: list[Any], include_reasoning: bool) -> list[dict[str, Any]] | None:
    """`messages.items_to_messages` for decoded items that passed `_fast_items`; None when unsure."""
    messages: list[dict[str, Any]] = []
    pending: list[str] = []
    open_assistant: dict[str, Any] | None = None
    for item in items:
        kind = item.type
        if kind is None or kind == "message":  # a typeless item passed validation only with a message role
            role = ROLE_MAP.get(item.role, item.role)
            content = item.content
            if type(content) is list and any(type(p) is dict and p.get("type") in _NON_TEXT for p in content):
                return None  # images (or parts refused): the exact path carries or rejects them
            text = content_text(content)
            if role == "assistant":
                open_assistant = {"role": "assistant", "content": text}
                if include_reasoning and pending:
                    open_assistant["reasoning_content"] = "\n".join(pending)
                pending.clear()
                messages.append(open_assistant)
            else:
                messages.append({"role": role, "content": text})
                open_assistant = None
        elif kind == "function_call":
            if not item.call_id:
                return None  # "" falls back to the item id: rare, left to the exact path
            args = item.arguments
            call = {
                "type": "function",
                "id": item.call_id,
                "function": {"name": item.name, "arguments": "{}" if args is msgspec.UNSET else args},
            }
            if open_assistant is None:
                open_assistant = {"role": "assistant", "content": ""}
                if include_reasoning and pending:
                    open_assistant["reasoning_content"] = "\n".join(pending)
                pending.clear()
                messages.append(open_assistant)
            open_assistant.setdefault("tool_calls", []).append(call)
        elif kind == "function_call_output":
            out = item.output
            messages.append({"role": "tool", "tool_call_id": item.call_id, "content": "" if out is msgspec.UNSET else out})
            open_assistant = None
        elif kind == "reasoning":
            text = _reasoning_text({"summary": item.summary, "content": item.content})
            if text:
                pending.append(text)
        else:
            return None
    return messages
