"""The NeMo Gym rollout schema, declared once: its checks, its reading rules and its typed form.

A rollout line (what `ng_collect_rollouts` writes) is one JSON object:
- `responses_create_params`: object; `input` is a string or a list of items (messages with `role`
  and `content`, `function_call`, `function_call_output`, `reasoning`), `tools` a list or null.
- `response`: an OpenAI Responses-API object; `output` is a list of items (same item types), or,
  from NeMo Gym's aviary agent (`return_transitions=true`, `response.contains_transitions`), a list
  of per-step transitions: one cumulative item list per step, the last holding the whole
  conversation (seed question included).
- `reward`: a finite number (usually 0.0-1.0; some environments, e.g. blackjack, use -1.0).
- optional: `_ng_task_index`, `_ng_rollout_index` (ints), `agent_ref` ({type, name} or str),
  plus any task fields (`expected_answer`, `options`, ...) and verifier outputs at top level.

That is declared once, as msgspec Structs (`Rollout`, `Task`, the item kinds of `InputItem`), and
everything else reads rollouts through this module, in one of two shapes:
- the plain dict orjson parses: `check_record` / `check_task` / `check_items` give the exact
  rejection reasons; they are compiled from the declaration (`compile_checks`), as are the tables
  `REQUIRED_KEYS`, `ITEM_TYPES`, `MESSAGE_ROLES`; `gymverl.records` reads the parts; and
- the lenient msgspec Structs below (`Record`), which decode only the keys gymverl reads, typed, in
  C (one Struct for every item kind, prompt and tools kept raw: faster than the declaration's
  tagged union). They reuse the declaration's types (`Finite`, `Index`), `items_ok` is compiled
  from it too, and `compile_checks` refuses an item rule they do not decode. Only a clean decode is
  trusted: `rollout_facts` returns None whenever anything is unusual and the caller takes the dict
  path, which has the final word. Results are the same either way (tests/test_schema.py tries every
  declared rule on both paths; the property tests in tests/test_validate_property.py and
  tests/test_convert_fast.py hold them equal on arbitrary input).

Both shapes meet in the same rules: `agent_of`, `incomplete_of`, `task_key_of` (and `prompt_hash`),
`is_object_text` (a tool call's arguments), `content_blank` (no final answer) and `prompt_state`
(no prompt: nothing with text or an image before the first model turn).
"""


import hashlib
import struct
import sys
from typing import Annotated, Any, Callable, ClassVar, Generic, Literal, Optional, TypeVar, Union

import msgspec
import msgspec.structs
import orjson

from gymverl.jsonl import dumps
from gymverl.schemacheck import compile_schema, field_type, json_starts

# Keys NeMo Gym itself writes on a rollout line; everything else at top level is a task field or a
# verifier output.
ROLLOUT_KEYS = frozenset(
    {
        "responses_create_params",
        "response",
        "reward",
        "_ng_task_index",
        "_ng_rollout_index",
        "agent_ref",
        "_ng_environment_server",
        "_ng_result_type",
        "mask_sample",
        "failure_kind",
        "failure_reason",
        "reward_components",
        "skills_ref",
        "_ng_failure_class",
        "_ng_no_persist",
    }
)
# msgspec reads any integer as an int; orjson reads those beyond 64 bits as floats (not a valid index).
_U64_MAX = 2**64 - 1


def is_ng_key(key: str) -> bool:
    """True for a key NeMo Gym itself writes on a rollout line (`ROLLOUT_KEYS`, or any `_ng_*`:
    0.7.0 adds e.g. `_ng_attempt_index`, `_ng_rollout_id`, `_ng_failure_*`): never a task field."""
    return key in ROLLOUT_KEYS or key.startswith("_ng_")


# ---- the declaration: what a usable task line and rollout line are ----------------------------------
#
# Declared once, as msgspec Structs (no line is decoded with them: they are the rules). `compile_checks`
# (gymverl.schemacheck) derives from them, with msgspec.inspect, the dict checker with its exact reasons (`check_record`,
# `check_task`, `check_items`), the typed item check of the fast path (`items_ok`) and the tables
# (`REQUIRED_KEYS`, `ITEM_TYPES`, `MESSAGE_ROLES`); the fast path's own Structs (`Record`) decode
# the constrained fields with these very types, so msgspec enforces their bounds in C. What the
# compiler understands: objects (Structs: a required field must be present), strings, arrays (of
# anything, or of items), numbers (`Finite`), non-negative integers (`Index`), null (Optional), and
# unions of those; items tagged by `type` with required string or Literal fields, and one optional
# field of content parts (a string or a list of parts tagged by `type`, with required string
# fields the lenient `Part` decodes raw). Anything else
# fails at import, so a rule cannot be declared without being enforced.

# A finite JSON number: the bounds leave out inf and nan (a number too big for a double fails the fast decode).
Finite = Annotated[float, msgspec.Meta(ge=-sys.float_info.max, le=sys.float_info.max)]
# A task or rollout index: a non-negative integer. (Also at most 64 bits, as orjson reads bigger ones
# as floats, so the dict path rejects them: the fast path, whose msgspec reads any integer, checks it.)
Index = Annotated[int, msgspec.Meta(ge=0)]
Role = Literal["system", "developer", "user", "assistant", "tool"]


# Content parts of a message (a `content` list), as NeMo Gym's pydantic models accept them
# (nemo_gym.openai_utils: ResponseInputContentParam, NeMoGymInputVideoPart, NeMoGymContent), so a
# part NeMo Gym would refuse (422) is refused here rather than read as empty text: a text part
# must hold its text as a string. `image_url` (chat-style) is accepted too, as gymverl carries its
# image (gymverl.messages). Other types (`input_audio`, `file`, an unknown one) are refused.
class InputTextPart(msgspec.Struct, tag_field="type", tag="input_text", kw_only=True):
    text: str


class OutputTextPart(msgspec.Struct, tag_field="type", tag="output_text", kw_only=True):
    text: str


class RefusalPart(msgspec.Struct, tag_field="type", tag="refusal", kw_only=True):
    refusal: str


class InputImagePart(msgspec.Struct, tag_field="type", tag="input_image", kw_only=True):
    pass


class ImageUrlPart(msgspec.Struct, tag_field="type", tag="image_url", kw_only=True):
    pass


class InputFilePart(msgspec.Struct, tag_field="type", tag="input_file", kw_only=True):
    pass


class InputVideoPart(msgspec.Struct, tag_field="type", tag="input_video", kw_only=True):
    pass


ContentPart = Union[InputTextPart, OutputTextPart, RefusalPart, InputImagePart, ImageUrlPart, InputFilePart, InputVideoPart]


class MessageItem(msgspec.Struct, tag_field="type", tag="message", kw_only=True):
    """A message; also the Responses API's "easy input message" (`{role, content}`, no or a null `type`)."""

    untyped: ClassVar[bool] = True  # an item without a type is checked as this kind
    role: Role
    content: Union[str, list[ContentPart], None] = None


class FunctionCallItem(msgspec.Struct, tag_field="type", tag="function_call", kw_only=True):
    name: str
    call_id: str


class FunctionCallOutputItem(msgspec.Struct, tag_field="type", tag="function_call_output", kw_only=True):
    call_id: str


class ReasoningItem(msgspec.Struct, tag_field="type", tag="reasoning", kw_only=True):
    pass


# The Responses-API item types NeMo Gym reads and writes (nemo_gym.openai_utils.NeMoGymResponseInputItem);
# gymverl.messages converts exactly these, so a record that validates also converts.
InputItem = Union[MessageItem, FunctionCallItem, FunctionCallOutputItem, ReasoningItem]


class TaskParams(msgspec.Struct, kw_only=True):
    input: Union[str, list[InputItem]]
    tools: Optional[list[Any]] = None


class Task(msgspec.Struct, kw_only=True):
    """A NeMo Gym task (input row): the part of a rollout line it shares."""

    responses_create_params: TaskParams
    task_index: Optional[Index] = msgspec.field(default=None, name="_ng_task_index")
    rollout_index: Optional[Index] = msgspec.field(default=None, name="_ng_rollout_index")


class RolloutResponse(msgspec.Struct, kw_only=True):
    # `transitions`: the list may instead be aviary's per-step transitions (`is_transitions`), whose
    # last step is checked as the items.
    output: Annotated[list[InputItem], msgspec.Meta(extra={"transitions": True})]


class Rollout(Task, kw_only=True):
    """A rollout line (checked in field order: the task's fields, then these)."""

    response: RolloutResponse
    reward: Finite
    # NeMo Gym marks a rollout whose verification failed `mask_sample: true` (not a measurement);
    # any other type would read as "not masked" and turn that failure into a trained reward.
    mask_sample: Optional[bool] = None


# ---- the rules both shapes share -----------------------------------------------------------------


def agent_of(ref: Any) -> str | None:
    """The agent name of an `agent_ref` value: the string itself, or its `name` when that is a string."""
    if type(ref) is str:
        return ref
    name = ref.get("name") if isinstance(ref, dict) else getattr(ref, "name", None)
    return name if type(name) is str else None


def incomplete_of(status: Any, incomplete_details: Any) -> bool:
    """True when a response was cut short: `status` set and not "completed", or `incomplete_details` set."""
    return bool(incomplete_details) or (status is not None and status != "completed")


def task_key_of(agent: str | None, index: int | None, digest: str | None = None) -> str:
    """The task key: `<agent>#<task index>`, or `<agent>@<prompt hash>` without an index (no agent: no prefix)."""
    if index is not None:
        return f"{agent}#{index}" if agent else f"#{index}"
    return f"{agent}@{digest}" if agent else f"@{digest}"


def is_transitions(output: Any) -> bool:
    """True when `response.output` is a list of per-step transitions (NeMo Gym's aviary agent with
    `return_transitions=true`): a non-empty list whose every element is an item list."""
    return isinstance(output, list) and bool(output) and all(isinstance(step, list) for step in output)


def is_message(item: dict[str, Any]) -> bool:
    """True for a message item: `type` "message", or no type (an "easy input message") with a role."""
    kind = item.get("type", "message")
    return kind == "message" or (kind is None and "role" in item)


def transition_seed(record: dict[str, Any]) -> list[Any]:
    """The items of aviary's last transition before the model's first turn (the task's question);
    [] for a plain `response.output`."""
    output = (record.get("response") or {}).get("output")
    if not is_transitions(output):
        return []
    seed = []
    for item in output[-1]:
        if not isinstance(item, dict) or item.get("type") in ("function_call", "reasoning") or (is_message(item) and item.get("role") == "assistant"):
            break
        seed.append(item)
    return seed


def prompt_hash(record: dict[str, Any]) -> str:
    """A stable hash of the task prompt (`input` + `tools` + `instructions`) for grouping rollouts."""
    rcp = record.get("responses_create_params") or {}
    key = {"input": rcp.get("input"), "tools": rcp.get("tools"), "instructions": rcp.get("instructions")}
    seed = transition_seed(record)
    if seed:
        # aviary's request input is [] for every task: its question is the seed of the transitions.
        key["seed"] = seed
    return hashlib.sha1(dumps(key, sort_keys=True)).hexdigest()[:16]


def is_json_object_text(value: Any) -> bool:
    """True when tool-call `arguments` are a JSON object: a dict, or JSON text that parses to one.

    OpenAI and NeMo Gym write arguments as the JSON text of an object; anything else (invalid JSON
    such as a cut-off `{"city": "Par`, a JSON string like `"Paris"`, a number, null, "") is a
    malformed call (NeMo Gym's simple agent returns the parse error to the model and goes on).
    """
    if isinstance(value, dict):
        return True
    if not isinstance(value, (str, bytes)):
        return False
    if type(value) is str and value[:1] != "{" and value.lstrip()[:1] != "{":
        return False  # JSON's white space is str's too: only text starting with "{" can be an object
    try:
        return isinstance(orjson.loads(value), dict)
    except orjson.JSONDecodeError:
        return False


def tool_fault(tool: Any) -> str | None:
    """Why one entry of a task's `tools` cannot be offered to a chat model, or None when it can.

    gymverl renders tools with the model's chat template (`messages.chat_tools`), which knows function
    tools only: a Responses-API one (`{"type": "function", "name": ...}`, `type` may be left out) or a
    chat-completions one (`{"type": "function", "function": {"name": ...}}`), named by a non-empty
    string. Other kinds (`web_search`, `mcp`, ...) and nameless tools cannot be rendered, and the
    model could never call them; the rollout then teaches nothing true about its tools.
    """
    if not isinstance(tool, dict):
        return f"is {_type_name(tool)}, not a tool object"
    kind = tool.get("type", "function")
    if kind != "function":
        return f"has type {'null' if kind is None else _short(kind)}: only function tools can be given to a chat model"
    fn = tool.get("function")
    name = fn.get("name") if isinstance(fn, dict) else tool.get("name")
    if not isinstance(name, str) or not name:
        return "has no name"
    return None


def tools_fault(tools: Any) -> str | None:
    """The first `tool_fault` of a task's `tools` (a list, or None for none), with its place."""
    for i, tool in enumerate(tools or ()):
        fault = tool_fault(tool)
        if fault is not None:
            return f"'responses_create_params.tools[{i}]' {fault}"
    return None


def content_text(content: Any) -> str:
    """Concatenate the text parts of a Responses-API message `content` (string or parts list)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    parts: list[str] = []
    if isinstance(content, list):
        for part in content:
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, dict):
                text = part.get("text")
                if text is None and part.get("type") == "refusal":
                    text = part.get("refusal")
                if isinstance(text, str):
                    parts.append(text)
    return "".join(parts)


def content_blank(content: Any) -> bool:
    """True when a message `content` holds no text but white space (`content_text(...).strip() == ""`).

    Reads both shapes: plain JSON values, and the typed parts of `Record[TextParts]` (whose texts
    stay raw JSON: a blank text is mostly told from its first character, without building it).
    """
    if type(content) is not list or not content or type(content[0]) is dict:
        if type(content) is not list:
            return not content_text(content).strip()
        # Plain parts: the first text holding a non-space character settles it (no join, no strip).
        for part in content:
            if isinstance(part, dict):
                text = part.get("text")
                if text is None and part.get("type") == "refusal":
                    text = part.get("refusal")
            else:
                text = part
            if isinstance(text, str) and text and (not text[0].isspace() or text.strip()):
                return False
        return True
    for part in content:
        if type(part) is str:
            if part.strip():
                return False
            continue
        if type(part) is not Part:
            return not content_text(content).strip()
        text = part.text
        if text is _RAW_MISSING or (len(text) == 4 and bytes(text) == b"null"):  # (never copy a long text)
            if part.type != "refusal" or part.refusal is _RAW_MISSING:
                continue
            text = part.refusal
        # `_raw_text_nonblank`'s first-character test, inlined: the usual answer ends here
        if len(text) > 2:
            quote, c = _first_two(text)
            if quote == 0x22 and 0x21 <= c <= 0x7E and c != 0x5C and c != 0x22:
                return False
        if _raw_text_nonblank(text):
            return False
    return True


# The first two bytes of a raw JSON value (at least 2 long), without copying it: faster than a memoryview.
_first_two = struct.Struct("2B").unpack_from
_TEXT_PART_TYPES = frozenset({"input_text", "output_text", "refusal"})
# Content parts that are not text (`messages.content_with_images`): images are carried inline, the
# other kinds are refused rather than silently dropped.
IMAGE_PART_TYPES = frozenset({"input_image", "image_url"})
UNSUPPORTED_PART_TYPES = frozenset({"input_file", "input_audio", "input_video", "file", "audio", "video"})
MEDIA_PART_TYPES = IMAGE_PART_TYPES | UNSUPPORTED_PART_TYPES


def content_says(content: Any) -> bool:
    """True when a message `content` holds something to read: text (not only white space) or a
    non-text part (an image, a file: `ContentPart`). Reads both shapes, like `content_blank`."""
    if not content_blank(content):
        return True
    if type(content) is not list:
        return False
    for part in content:
        kind = part.get("type") if type(part) is dict else getattr(part, "type", None)
        if type(kind) is str and kind not in _TEXT_PART_TYPES:
            return True
    return False


def prompt_state(items: Any) -> bool | None:
    """Whether a list of items (either shape) asks something before its first model turn, the rule
    for "no prompt": True when a user/system/developer message holding text or an image
    (`content_says`) comes first; False when a model turn does (an assistant or tool message, a
    call, a call's output); None when neither does (blank messages, reasoning, nothing: read on)."""
    for item in items:
        if type(item) is dict:
            kind, role, content = item.get("type", "message"), item.get("role"), item.get("content")
        else:
            kind, role, content = item.type, item.role, item.content
        if kind == "reasoning":
            continue
        if (kind == "message" or kind is None) and role in ("user", "system", "developer"):
            if content_says(content):
                return True
            continue
        return False
    return None


def _raw_text_nonblank(raw: Any) -> bool:
    """Whether a raw JSON value is a string holding a non-whitespace character (`text.strip() != ""`).

    Its first character settles it unless that is white space (or a `\\u` escape): a printable
    ASCII character, a UTF-8 character that `str.isspace()` denies (the white space `strip()`
    removes) or the escapes of `"`, `\\`, `/` and backspace. Only then is the text decoded.
    """
    head = bytes(memoryview(raw)[:5])  # the quote and at most one UTF-8 character
    if head[:1] != b'"':
        return False  # not a string: content_text ignores it
    c = head[1] if len(head) > 1 else 0
    if 0x21 <= c <= 0x7E and c != 0x5C and c != 0x22:  # not `\` or the closing `"`
        return True
    if c >= 0xC0:  # a UTF-8 lead byte: decode that one character (2 to 4 bytes)
        try:
            if not head[1 : 3 if c < 0xE0 else 4 if c < 0xF0 else 5].decode("utf-8").isspace():
                return True
        except UnicodeDecodeError:
            pass  # (a line simdjson validated never gets here) the full decode has the word
    elif c == 0x5C and head[2:3] in (b'"', b"\\", b"/", b"b"):
        return True
    return bool(_decode_str(raw).strip())


# ---- checks of the dict shape: the exact rejection reasons ---------------------------------------


class RecordError(ValueError):
    """A line that is JSON but not a usable rollout; `code` groups reasons in summaries."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _short(value: Any) -> str:
    """`repr` of a value for a reason, cut so one odd line cannot flood a report."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# ---- the typed shape (msgspec) -------------------------------------------------------------------

C = TypeVar("C")  # how an item's `content` / `summary` is decoded: `TextParts` or `Any`

# gc=False: decoded JSON cannot form reference cycles, so the collector need not track these.
_RAW_MISSING = msgspec.Raw(b"null")  # a missing key hands back this very object: `is` tells absent from null
_decode_str = msgspec.json.Decoder(str).decode


class Part(msgspec.Struct, gc=False):
    """What `content_text` reads of a content part; texts raw (see `content_blank`)."""

    type: Any = None
    text: msgspec.Raw = _RAW_MISSING
    refusal: msgspec.Raw = _RAW_MISSING


# Content as validation reads it (only to tell a blank answer); content of another JSON type
# fails the decode, and that line takes the dict path.
TextParts = Union[str, list[Union[str, Part]], None]


class Item(msgspec.Struct, Generic[C], gc=False):
    """A Responses-API item, lenient: every item kind in one Struct (faster than the declaration's
    tagged union), the keys the declaration constrains (checked by `items_ok`), the rules and
    `messages.convert_items` read.

    Defaults are the dict path's readings of a missing key (`type` "message", `arguments` "{}",
    `output` ""); values of another type than declared fail the decode (the dict path decides).
    `compile_checks` refuses a declaration whose item fields this Struct does not decode as
    None-when-missing.
    """

    # (in the order `messages.convert_items` reads them: `item_fields` is `astuple`)
    type: Optional[str] = "message"
    role: Optional[Role] = None  # the declared roles, checked in C (any other fails the decode)
    content: C = None  # type: ignore[assignment]
    name: Optional[str] = None
    call_id: Optional[str] = None
    id: Optional[str] = None
    arguments: str = "{}"
    output: str = ""
    summary: C = None  # type: ignore[assignment]


class Agent(msgspec.Struct, gc=False):
    name: Any = None


class Params(msgspec.Struct, gc=False):
    # Raw: the prompt is shared by the n rollouts of a task, so it is read once per distinct
    # value (`_input_facts`, `prompt_digest`, and the row builders' own caches).
    input: msgspec.Raw
    instructions: msgspec.Raw = _RAW_MISSING
    tools: msgspec.Raw = _RAW_MISSING


class Response(msgspec.Struct, Generic[C], gc=False):
    output: list[Item[C]]
    status: Any = None
    incomplete_details: Any = None


class Record(msgspec.Struct, Generic[C], gc=False):
    """A rollout line, typed. `Record[TextParts]` for its facts, `Record[Any]` to convert it too.

    `reward` and the indexes have the declaration's types (`Rollout`): msgspec checks their bounds."""

    responses_create_params: Params
    response: Response[C]
    reward: Finite
    task_index: Optional[Index] = msgspec.field(default=None, name="_ng_task_index")
    rollout_index: Optional[Index] = msgspec.field(default=None, name="_ng_rollout_index")
    agent_ref: Union[Agent, str, None] = None
    mask_sample: Optional[bool] = None


# The fields `messages.convert_items` reads of an item, in its order: a typed item's fields, copied
# in C (`Item` declares them in that order; an attrgetter of the nine names cost five times more).
item_fields: Callable[[Any], tuple[Any, ...]] = msgspec.structs.astuple
if Item.__struct_fields__ != ("type", "role", "content", "name", "call_id", "id", "arguments", "output", "summary"):
    raise TypeError("schema.Item must declare its fields in the order messages.convert_items reads them")
_decode_input = msgspec.json.Decoder(Union[str, list[Item[TextParts]]]).decode


def record_decoder(content: Any = None) -> Any:
    """A msgspec decode function for rollout lines: `Record[TextParts]` (facts only) by default,
    `Record[Any]` with `content=Any` (items complete enough to convert)."""
    return msgspec.json.Decoder(Record[TextParts if content is None else content]).decode


# ---- the checks, compiled from the declaration (gymverl.schemacheck) ------------------------------


def compile_checks(rollout: type = Rollout, task: type = Task, item: type = Item) -> dict[str, Any]:
    """The checks and tables of a declaration (`gymverl.schemacheck.compile_schema`): by default this
    module's, whose functions and tables are bound below."""
    helpers = {"RecordError": RecordError, "_type_name": _type_name, "_short": _short, "_is_transitions": is_transitions, "_Part": Part}
    return compile_schema(rollout, task, item, helpers)


_CHECKS = compile_checks()
REQUIRED_KEYS: tuple[str, ...] = _CHECKS["REQUIRED_KEYS"]  # the keys every rollout line has
ITEM_TYPES: frozenset[str] = _CHECKS["ITEM_TYPES"]
MESSAGE_ROLES: frozenset[str] = _CHECKS["MESSAGE_ROLES"]
_check_rollout: Callable[[Any], None] = _CHECKS["check_record"]


def check_record(obj: Any) -> None:
    """Raise RecordError with a one-sentence reason when `obj` is not a usable rollout (`Rollout`,
    and tools a chat model can be given: `tools_fault`, code "bad_tools")."""
    _check_rollout(obj)
    tools = obj["responses_create_params"].get("tools")
    if tools:
        fault = tools_fault(tools)
        if fault is not None:
            raise RecordError("bad_tools", fault)


check_task: Callable[[Any], None] = _CHECKS["check_task"]
check_task.__doc__ = """Raise RecordError unless `obj` is a valid NeMo Gym task (input row, `Task`): the part shared with rollouts."""
check_items: Callable[[list[Any], str], None] = _CHECKS["check_items"]
check_items.__doc__ = """Raise RecordError unless every element of `items` is a Responses-API item gymverl reads
(`InputItem`); `where` names the list in reasons ("response.output")."""
items_ok: Callable[[list[Any]], bool] = _CHECKS["items_ok"]
items_ok.__doc__ = """`check_items` on typed items (`Item`): True when it would pass."""


# `Params.tools` stays raw JSON in the fast path; the declared type (`TaskParams.tools`) is checked
# by its first byte.
_TOOLS_STARTS = json_starts(field_type(_CHECKS["info"], "responses_create_params", "tools"))


def checks_source() -> str:
    """The Python source the checks were compiled to (for reading; `compile_checks`)."""
    return _CHECKS["source"]


class _Cache(dict):  # type: ignore[type-arg]
    """A dict that empties itself when full: keyed by a prompt's raw JSON, shared by many rollouts."""

    def __init__(self, size: int = 512) -> None:
        super().__init__()
        self.size = size

    def put(self, key: Any, value: Any) -> Any:
        if len(self) >= self.size:
            self.clear()
        self[key] = value
        return value


class RawCache:
    """Values keyed by a raw JSON value (a `msgspec.Raw` from the typed decode, or bytes): the
    prompts and tools the n rollouts of a task share, converted once per distinct value.

    `get` finds a value first by the JSON's length, compared whole with the copy kept (a memcmp),
    and only then copies and hashes the JSON: a hash of a long prompt cost more than its other facts.
    Each table empties itself when it holds `size` entries.
    """

    MISSING: ClassVar[Any] = object()

    def __init__(self, size: int = 512) -> None:
        self.by_len: _Cache = _Cache(size)  # length -> (Raw copy, value): the last one seen of that length
        self._by_json: _Cache = _Cache(size)  # bytes -> (Raw copy, value)

    def get(self, raw: Any) -> Any:
        """The value stored for JSON equal to `raw`, or `RawCache.MISSING`."""
        seen = self.by_len.get(len(raw))
        if seen is not None and seen[0] == raw:
            return seen[1]
        seen = self._by_json.get(bytes(raw))
        if seen is None:
            return RawCache.MISSING
        self.by_len.put(len(raw), seen)
        return seen[1]

    def put(self, raw: Any, value: Any) -> Any:
        """Store `value` for `raw` (a copy of it: never keeps a line alive); returns `value`."""
        key = bytes(raw)
        entry = (msgspec.Raw(key), value)
        self._by_json.put(key, entry)
        self.by_len.put(len(key), entry)
        return value


# (malformed tool calls, asks something, prompt fault code) of a task input: `input_facts`.
InputFacts = tuple[int, bool, Optional[str]]
_INPUTS = RawCache()
_DIGESTS = _Cache()
_TOOLS = RawCache()


def _input_facts(raw: Any) -> InputFacts | None:
    """`input_facts` of `responses_create_params.input` as raw JSON; None when `check_task` would
    reject it or the typed decode is unsure (cached by the JSON)."""
    value = _INPUTS.get(raw)
    if value is RawCache.MISSING:
        value = _INPUTS.put(raw, _input_facts_of(bytes(raw)))
    return value


def _input_facts_of(key: bytes) -> InputFacts | None:
    value: InputFacts | None = None
    try:
        inp = _decode_input(key)
    except Exception:  # noqa: BLE001 - any doubt goes to the dict path
        inp = None
    if type(inp) is str:
        value = (0, bool(inp.strip()), None)
    elif inp is not None and items_ok(inp):
        malformed = sum(1 for item in inp if item.type == "function_call" and not is_json_object_text(item.arguments))
        try:
            value = (malformed, prompt_state(inp) is True, _input_fault(orjson.loads(key)) if _has_media(inp) else None)
        except orjson.JSONDecodeError:
            value = None  # (what msgspec reads and orjson does not: the dict path has the word)
    return value


def _has_media(inp: list[Any]) -> bool:
    """True when typed input items hold a part that is not text (`MEDIA_PART_TYPES`): only then can
    a row fail to carry the prompt, so text prompts are never converted here."""
    for item in inp:
        content = item.content
        if type(content) is list:
            for part in content:
                if type(part) is Part and type(part.type) is str and part.type in MEDIA_PART_TYPES:
                    return True
    return False


# An input with images and no fault of its own: whether its prompt can be carried also reads the
# instructions (`<image>` written there is a placeholder too); `rollout_facts` asks `_prompt_fault`.
_WITH_INSTRUCTIONS = "(instructions decide)"


def _input_fault(inp: Any) -> str | None:
    """The `messages.prompt_fault` code of a parsed input list alone (or `_WITH_INSTRUCTIONS`)."""
    from gymverl.messages import prompt_fault  # (messages reads this module: imported when first needed)

    images: list[dict[str, Any]] = []
    fault = prompt_fault({"input": inp}, images)
    return fault[0] if fault is not None else (_WITH_INSTRUCTIONS if images else None)


_FAULTS = _Cache()


def _prompt_fault(params: Any) -> str | None:
    """The `messages.prompt_fault` code of a typed record's prompt (input and instructions), cached."""
    from gymverl.messages import prompt_fault

    key = (bytes(params.input), bytes(params.instructions))
    try:
        return _FAULTS[key]
    except KeyError:
        pass
    fault = prompt_fault({"input": orjson.loads(key[0]), "instructions": orjson.loads(key[1])})
    return _FAULTS.put(key, fault[0] if fault is not None else None)


def _tools_ok(raw: Any) -> bool:
    """True when the raw JSON `tools` of a task has the declared type (`TaskParams.tools`, told by
    its first byte) and no `tools_fault` (cached by the JSON: the rollouts of a task, and often all
    tasks of an environment, share their tools)."""
    ok = _TOOLS.get(raw)
    if ok is RawCache.MISSING:
        key = bytes(raw)
        if key[0] not in _TOOLS_STARTS:
            ok = False
        else:
            try:
                tools = orjson.loads(key)
            except orjson.JSONDecodeError:
                tools = None
            ok = (tools is None or type(tools) is list) and tools_fault(tools) is None
        _TOOLS.put(key, ok)
    return ok


def prompt_digest(params: Any) -> str | None:
    """`prompt_hash` of a typed record (plain output only: its transition seed is []), cached."""
    key = (bytes(params.input), bytes(params.tools), bytes(params.instructions))
    digest = _DIGESTS.get(key)
    if digest is None:
        try:
            rcp = {"input": orjson.loads(key[0]), "tools": orjson.loads(key[1]), "instructions": orjson.loads(key[2])}
        except orjson.JSONDecodeError:
            return None
        digest = _DIGESTS.put(key, prompt_hash({"responses_create_params": rcp}))
    return digest


# The facts of one rollout: (reward, task key, agent, incomplete, masked, malformed tool calls,
# no final answer, starts without a prompt, why no row can carry its prompt), as `gymverl.records`
# reads them from the dict.
Facts = tuple[float, str, Optional[str], bool, bool, int, bool, bool, Optional[str]]


def input_facts(inp: str | list[dict[str, Any]], fault: bool = True) -> InputFacts:
    """(malformed tool calls, asks something, prompt fault) of a parsed `responses_create_params.input`
    that `check_task` accepts (a string or a list of items), read as `records.malformed_calls`,
    `records.starts_without_prompt` and `messages.prompt_fault` read it: asks something when the
    string is not blank, or `prompt_state` of the items is True (otherwise the whole record
    decides, on the dict path); the fault is a code, `_WITH_INSTRUCTIONS` when images leave it to
    the instructions, or None (always with `fault=False`: for a caller whose own conversion refuses
    every prompt that is not plain text)."""
    if type(inp) is str:
        return (0, bool(inp.strip()), None)
    malformed = 0
    for item in inp:
        if item.get("type") == "function_call" and "arguments" in item:
            malformed += not is_json_object_text(item["arguments"])
    return (malformed, prompt_state(inp) is True, _input_fault(inp) if fault else None)


def rollout_facts(rec: Any, content: bool = True, inp: InputFacts | None = None, tools: bool = True) -> Facts | None:
    """The rest of `check_record` on a typed record (from a line simdjson validated), and its facts;
    None when the dict path must decide.

    `content=False` skips the content checks (malformed calls, empty answer, prompt, prompt fault)
    and reports (0, False, False, None): rl rows never use them. `inp`: the caller's `input_facts` of this record's
    input when it has them already (the fast SFT path parses each distinct prompt once, for its
    conversion: keying and decoding it again here cost it more than the rest of the facts).
    `tools=False`: the caller has checked the tools already (the fast SFT path converts them with
    `messages.chat_tools`, which refuses what `tools_fault` does).
    """
    params = rec.responses_create_params
    if inp is None:
        # `_INPUTS.get`'s first lookup, inlined: once per line
        raw = params.input
        seen = _INPUTS.by_len.get(len(raw))
        inp = seen[1] if seen is not None and seen[0] == raw else _input_facts(raw)
    if inp is None or (tools and params.tools is not _RAW_MISSING and not _tools_ok(params.tools)):
        return None
    response = rec.response
    output = response.output
    if not items_ok(output):
        return None
    # (the decode checked the reward is finite and the indexes non-negative: `Finite`, `Index`)
    reward = rec.reward
    index = rec.task_index
    if index is not None and index > _U64_MAX:
        return None
    if rec.rollout_index is not None and rec.rollout_index > _U64_MAX:
        return None
    # agent_of and incomplete_of, inlined for the typed shape (`Agent`, str or None): once per line
    ref = rec.agent_ref
    agent = ref if type(ref) is str else (ref.name if ref is not None and type(ref.name) is str else None)
    status = response.status
    incomplete = bool(response.incomplete_details) or (status is not None and status != "completed")
    if index is None:
        digest = prompt_digest(params)
        if digest is None:
            return None
        key = task_key_of(agent, None, digest)
    else:
        key = f"{agent}#{index}" if agent else f"#{index}"  # task_key_of, inlined: once per line
    masked = rec.mask_sample is True
    if not content:
        return (reward, key, agent, incomplete, masked, 0, False, False, None)
    malformed, asks, fault = inp
    if fault is _WITH_INSTRUCTIONS:
        fault = None if params.instructions is _RAW_MISSING else _prompt_fault(params)
    if not asks:
        return None  # rare (a blank prompt, aviary's flat form): whether there is a prompt reads instructions and output too
    last = None
    for item in output:
        t = item.type
        if t == "function_call":
            if not is_json_object_text(item.arguments):
                malformed += 1
            last = item
        elif item.role == "assistant" and (t == "message" or t is None):
            last = item
    if last is None:
        empty = True
    elif last.type == "function_call":
        empty = False
    else:
        empty = content_blank(last.content)
    return (reward, key, agent, incomplete, masked, malformed, empty, False, fault)
