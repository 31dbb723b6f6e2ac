"""A faster route from a rollout line to its SFT conversation, for the common case only.

Same pattern as `gymverl.records._FastRollouts` (what `validate` uses): simdjson checks the whole
line (syntax, UTF-8, escapes, number range, depth: as strict as orjson or stricter) and msgspec
decodes the rollout into the schema's typed form (`gymverl.schema.Record[Any]`): this module only
decodes. The facts (task key, agent, content checks) are the schema's (`rollout_facts`) and the
conversation is built by the one converter (`gymverl.messages.convert_items`). The prompt and the
tools, shared by the n rollouts of a task, are kept as raw JSON bytes and converted once per
distinct value.

Only a clean result is trusted: whenever anything is unusual (a line `check_record` would reject,
a conversion error, no assistant turn, a value whose reading could depend on the parser, any image
or other non-text content part: `prompt_messages` without an images list refuses those) these
functions return None and the caller takes the exact orjson path for that line, which has the final
word and the exact reasons. So conversions give the same rows with or without this module (or
without pysimdjson installed).
"""

from __future__ import annotations

from typing import Any, Optional

import msgspec  # (required: gymverl.schema is built on it)
import orjson

from gymverl import schema
from gymverl.messages import MessageError, chat_tools, convert_items, prompt_messages
from gymverl.schema import RecordError, check_items

try:
    import simdjson
except ImportError:  # pragma: no cover - the optional accelerator
    simdjson = None

_NO_TOOLS: list[dict[str, Any]] = []  # shared, read-only
_MISSING: Any = schema.RawCache.MISSING  # not in a cache (None is a cached "cannot convert")
# A converted prompt: (chat messages, whether one is an assistant turn, `schema.input_facts` of its input).
_Prompt = tuple[list[dict[str, Any]], bool, schema.InputFacts]


def available() -> bool:
    """True when pysimdjson is installed (otherwise every line takes the orjson path)."""
    return simdjson is not None


class FastRollout(msgspec.Struct, gc=False):
    """What the fast decoder read from one valid rollout line (`gymverl.schema.rollout_facts`).

    (A msgspec Struct: one is built per line, and its C constructor costs less than an `__init__`.)
    """

    rec: Any
    reward: float
    key: str
    agent: Optional[str]
    incomplete: bool
    masked: bool
    malformed: int
    empty: bool
    rollout_index: Optional[int]
    prompt: Any = None  # (converted prompt messages, whether one is an assistant turn, input facts)
    tools: Optional[list[dict[str, Any]]] = None  # chat tools ([] when none)

    @classmethod
    def of(cls, rec: Any, facts: schema.Facts, prompt: _Prompt | None = None, tools: list[dict[str, Any]] | None = None) -> "FastRollout":
        """The rollout `rec` with its `facts`."""
        reward, key, agent, incomplete, masked, malformed, empty, _, _ = facts
        return cls(rec, reward, key, agent, incomplete, masked, malformed, empty, rec.rollout_index, prompt, tools)


class FastSFT:
    """Decodes valid rollout lines and builds their chat conversation; None means "use the exact path"."""

    def __init__(self, *, include_reasoning: bool = False, cache_size: int = 512) -> None:
        assert available()
        self.include_reasoning = include_reasoning
        self.cache_size = cache_size
        self._parser = simdjson.Parser()
        self._decode = schema.record_decoder(Any)
        # input JSON, or (instructions JSON, input JSON) -> _Prompt | None. Keyed by the JSON's bytes,
        # not a RawCache: the rollouts of different tasks, interleaved by the collector, have prompts
        # of one length (only the question differs), where its lookup by length only costs more.
        self._prompts = schema._Cache(cache_size)
        self._tools = schema.RawCache(cache_size)  # tools JSON -> chat tools | None

    def decode(self, data: bytes, *, validated: bool = False, rows: bool = True) -> FastRollout | None:
        """The rollout facts when `data` is certainly a valid rollout, else None.

        `validated=True` skips the JSON syntax check (the line passed it already, e.g. in pass 1);
        `rows=False` only checks the prompt and tools instead of converting them (selection only).
        """
        try:
            if not validated:
                self._parser.parse(data)  # validation only: the lazy document is dropped at once
            # (a byte order mark, which simdjson skips and orjson rejects, fails this decode)
            rec = self._decode(data)
        except Exception:  # noqa: BLE001 - any doubt goes to the exact path
            return None
        if not rows:
            facts = schema.rollout_facts(rec)
            return None if facts is None else FastRollout.of(rec, facts)
        # Converted here too, so a None later means "cannot convert", not "invalid". The prompt's
        # input facts come from its cached conversion: each distinct prompt is keyed and parsed once.
        rcp = rec.responses_create_params
        prompt = self._prompt(rcp)
        if prompt is None:
            return None
        tools = self._chat_tools(rcp.tools)
        if tools is None:
            return None
        facts = schema.rollout_facts(rec, True, prompt[2], tools=False)  # (_chat_tools checked them)
        if facts is None:
            return None
        return FastRollout.of(rec, facts, prompt, tools)

    def conversation(self, got: FastRollout) -> tuple[list[dict[str, Any]], list[dict[str, Any]]] | None:
        """(messages, tools) exactly as `sft.conversation` builds them, or None (exact path decides)."""
        try:
            # images=None: a row with images (or parts refused) is the exact path's to carry or reject
            response = convert_items(got.rec.response.output, schema.item_fields, include_reasoning=self.include_reasoning)
        except MessageError:
            return None
        messages, prompt_has_assistant, _ = got.prompt  # type: ignore[misc]
        if not prompt_has_assistant:
            for m in response:  # (a loop, not any(...): a generator per line cost more)
                if m["role"] == "assistant":
                    break
            else:
                return None  # no assistant turn: the exact path rejects it with its reason
        conv = messages + response
        if conv[0]["role"] in ("assistant", "tool"):
            return None  # no prompt (aviary's flat form): the exact path rejects it with its reason
        return conv, got.tools  # type: ignore[return-value]

    def _prompt(self, rcp: Any) -> _Prompt | None:
        # Keyed by the raw JSON of input (+ instructions when present: msgspec hands back the very
        # default object when the key is missing).
        instructions = rcp.instructions
        inp = bytes(rcp.input)
        key: Any = inp if instructions is schema._RAW_MISSING else (bytes(instructions), inp)
        value = self._prompts.get(key, _MISSING)
        if value is _MISSING:
            value = self._prompts.put(key, self._convert_prompt(inp, instructions))
        return value

    def _convert_prompt(self, inp_json: bytes, instructions: Any) -> _Prompt | None:
        value: _Prompt | None = None
        try:
            inp = orjson.loads(inp_json)
            ok = isinstance(inp, str)
            if isinstance(inp, list):
                check_items(inp, "responses_create_params.input")
                ok = True
            if ok:
                messages = prompt_messages({"instructions": orjson.loads(bytes(instructions)), "input": inp}, include_reasoning=self.include_reasoning)
                value = (messages, any(m.get("role") == "assistant" for m in messages), schema.input_facts(inp, fault=False))  # (a prompt with media parts failed prompt_messages above)
        except (orjson.JSONDecodeError, RecordError, MessageError):
            value = None
        return value

    def _chat_tools(self, raw: Any) -> list[dict[str, Any]] | None:
        if raw is schema._RAW_MISSING:  # no tools key
            return _NO_TOOLS
        value = self._tools.get(raw)
        if value is schema.RawCache.MISSING:
            value = self._tools.put(raw, self._convert_tools(bytes(raw)))
        return value

    @staticmethod
    def _convert_tools(key: bytes) -> list[dict[str, Any]] | None:
        try:
            tools = orjson.loads(key)
            if tools is None or isinstance(tools, list):
                return chat_tools(tools) if tools else []
        except (orjson.JSONDecodeError, MessageError):
            pass
        return None
