"""NeMo Gym rollout records: the one place that knows the rollout JSONL schema.

A record is the plain dict parsed from one JSONL line; it flows through gymverl unchanged (unknown
keys are kept). This module says whether a dict is a usable rollout, and how to read the parts
the rest of gymverl needs (task key, reward, task fields, completion status).

Schema (what `ng_collect_rollouts` writes, one JSON object per line):
- `responses_create_params`: object; `input` is a string or a list of items (messages with `role`
  and `content`, `function_call`, `function_call_output`, `reasoning`), `tools` a list or null.
- `response`: an OpenAI Responses-API object; `output` is a list of items (same item types), or,
  from NeMo Gym's aviary agent (`return_transitions=true`, `response.contains_transitions`), a list
  of per-step transitions: one cumulative item list per step, the last holding the whole
  conversation (seed question included); `output_items` reads either.
- `reward`: a finite number (usually 0.0-1.0; some environments, e.g. blackjack, use -1.0).
- optional: `_ng_task_index`, `_ng_rollout_index` (ints), `agent_ref` ({type, name} or str),
  plus any task fields (`expected_answer`, `options`, ...) and verifier outputs at top level.
"""

from __future__ import annotations

import hashlib
import math
import os
from bisect import bisect_right
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional, Union


import orjson

from gymverl.inputs import as_input
from gymverl.jsonl import DEFAULT_MAX_LINE_BYTES, MAX_SHOWN, InputError, Line, Parsed, Rejections, RejectsWriter, Tally, dumps, iter_lines, parse_line, read_jsonl
from gymverl.progress import OnProgress, track_lines

try:  # optional accelerators for validate_file: the same results without them, about 3x slower
    import msgspec as _msgspec
    import simdjson as _simdjson
except ImportError:  # pragma: no cover
    _msgspec = _simdjson = None

REQUIRED_KEYS = ("responses_create_params", "response", "reward")
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


def is_ng_key(key: str) -> bool:
    """True for a key NeMo Gym itself writes on a rollout line (`ROLLOUT_KEYS`, or any `_ng_*`:
    0.7.0 adds e.g. `_ng_attempt_index`, `_ng_rollout_id`, `_ng_failure_*`): never a task field."""
    return key in ROLLOUT_KEYS or key.startswith("_ng_")


# The Responses-API item types NeMo Gym reads and writes (nemo_gym.openai_utils.NeMoGymResponseInputItem);
# gymverl.messages converts exactly these, so a record that validates also converts.
ITEM_TYPES = frozenset({"message", "function_call", "function_call_output", "reasoning"})
_MESSAGE_ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})


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


def _check_items(items: list[Any], where: str) -> None:
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            if isinstance(item, list) and where == "response.output":
                # A mix of items and item lists: not the aviary transitions form either.
                raise RecordError(
                    "wrong_type",
                    f"'{where}[{i}]' is an array in a list of items (NeMo Gym's aviary agent writes per-step transitions "
                    "as a list of arrays only, contains_transitions=true)",
                )
            raise RecordError("wrong_type", f"'{where}[{i}]' must be an object, got {_type_name(item)}")
        t = item.get("type")
        role = item.get("role")
        if t is None:
            # Responses-API "easy input message": {role, content} without a type.
            if isinstance(role, str) and role in _MESSAGE_ROLES:
                continue
            raise RecordError("bad_item", f"'{where}[{i}]' has no 'type' and no message 'role'")
        if not isinstance(t, str) or t not in ITEM_TYPES:
            raise RecordError("bad_item", f"'{where}[{i}]' has unknown item type {_short(t)}")
        if t == "message":
            if not isinstance(role, str) or role not in _MESSAGE_ROLES:
                raise RecordError("bad_item", f"'{where}[{i}]' is a message with role {_short(role)}")
        elif t == "function_call":
            if not isinstance(item.get("name"), str) or not isinstance(item.get("call_id"), str):
                raise RecordError("bad_item", f"'{where}[{i}]' is a function_call without a string 'name' and 'call_id'")
        elif t == "function_call_output":
            if not isinstance(item.get("call_id"), str):
                raise RecordError("bad_item", f"'{where}[{i}]' is a function_call_output without a string 'call_id'")


def check_record(obj: Any) -> None:
    """Raise RecordError with a one-sentence reason when `obj` is not a usable rollout."""
    if not isinstance(obj, dict):
        raise RecordError("not_object", f"line is a JSON {_type_name(obj)}, not an object")
    for key in REQUIRED_KEYS:
        if key not in obj:
            raise RecordError("missing_key", f"missing required key '{key}'")
    check_task(obj)
    response = obj["response"]
    if not isinstance(response, dict):
        raise RecordError("wrong_type", f"'response' must be an object, got {_type_name(response)}")
    output = response.get("output")
    if not isinstance(output, list):
        if "output" not in response:
            raise RecordError("missing_key", "missing required key 'response.output'")
        raise RecordError("wrong_type", f"'response.output' must be an array, got {_type_name(output)}")
    if is_transitions(output):
        _check_items(output[-1], "response.output[-1]")
    else:
        _check_items(output, "response.output")
    reward = obj["reward"]
    if isinstance(reward, bool) or not isinstance(reward, (int, float)):
        raise RecordError("wrong_type", f"'reward' must be a number, got {_type_name(reward)}")
    if not math.isfinite(reward):
        raise RecordError("non_finite_number", f"'reward' is {reward}, not a finite number")


def check_task(obj: Any) -> None:
    """Raise RecordError unless `obj` is a valid NeMo Gym task (input row): the part shared with rollouts."""
    if not isinstance(obj, dict):
        raise RecordError("not_object", f"line is a JSON {_type_name(obj)}, not an object")
    if "responses_create_params" not in obj:
        raise RecordError("missing_key", "missing required key 'responses_create_params'")
    rcp = obj["responses_create_params"]
    if not isinstance(rcp, dict):
        raise RecordError("wrong_type", f"'responses_create_params' must be an object, got {_type_name(rcp)}")
    if "input" not in rcp:
        raise RecordError("missing_key", "missing required key 'responses_create_params.input'")
    inp = rcp["input"]
    if isinstance(inp, list):
        _check_items(inp, "responses_create_params.input")
    elif not isinstance(inp, str):
        raise RecordError(
            "wrong_type", f"'responses_create_params.input' must be a string or an array, got {_type_name(inp)}"
        )
    tools = rcp.get("tools")
    if tools is not None and not isinstance(tools, list):
        raise RecordError("wrong_type", f"'responses_create_params.tools' must be an array, got {_type_name(tools)}")
    for key in ("_ng_task_index", "_ng_rollout_index"):
        v = obj.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
            raise RecordError("wrong_type", f"'{key}' must be a non-negative integer, got {_short(v)}")


# ---- reading parts of a record -----------------------------------------------------------------


def is_transitions(output: Any) -> bool:
    """True when `response.output` is a list of per-step transitions (NeMo Gym's aviary agent with
    `return_transitions=true`): a non-empty list whose every element is an item list."""
    return isinstance(output, list) and bool(output) and all(isinstance(step, list) for step in output)


def output_items(record: dict[str, Any]) -> list[Any]:
    """The response's items: `response.output`, or the last transition of the aviary form (the whole
    conversation: the seed question, every call and output, the final answer)."""
    output = (record.get("response") or {}).get("output") or []
    return output[-1] if is_transitions(output) else output


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
    try:
        return isinstance(orjson.loads(value), dict)
    except orjson.JSONDecodeError:
        return False


def malformed_calls(record: dict[str, Any]) -> int:
    """Function calls (task input and response) whose `arguments` are not a JSON object (a missing
    `arguments` reads as `{}`, as `gymverl.messages` converts it)."""
    inp = (record.get("responses_create_params") or {}).get("input")
    n = 0
    for items in (inp if isinstance(inp, list) else (), output_items(record)):
        for item in items:
            if isinstance(item, dict) and item.get("type") == "function_call" and "arguments" in item:
                n += not is_json_object_text(item["arguments"])
    return n


def _is_message(item: dict[str, Any]) -> bool:
    kind = item.get("type", "message")
    return kind == "message" or (kind is None and "role" in item)


def empty_answer(record: dict[str, Any]) -> bool:
    """True when the response ends without a final answer: its last model turn is an assistant
    message with no text, or it has no assistant message or call at all (reasoning only, nothing)."""
    last = None
    for item in output_items(record):
        if isinstance(item, dict) and (item.get("type") == "function_call" or (_is_message(item) and item.get("role") == "assistant")):
            last = item
    if last is None:
        return True
    return last.get("type") != "function_call" and not content_text(last.get("content")).strip()


def starts_without_prompt(record: dict[str, Any]) -> bool:
    """True when the conversation has no prompt: no instructions, an empty input, and the response
    does not begin with a user/system message either (aviary's flat form keeps the question only in
    its environment), so it would start with a model turn."""
    rcp = record.get("responses_create_params") or {}
    if rcp.get("instructions") or rcp.get("input"):
        return False
    items = output_items(record)
    first = items[0] if items else None
    return not (isinstance(first, dict) and _is_message(first) and first.get("role") in ("user", "system", "developer"))


def task_fields(record: dict[str, Any]) -> dict[str, Any]:
    """Top-level keys that are not NeMo Gym rollout keys: task fields and verifier outputs."""
    return {k: v for k, v in record.items() if not is_ng_key(k)}


def prompt_hash(record: dict[str, Any]) -> str:
    """A stable hash of the task prompt (`input` + `tools` + `instructions`) for grouping rollouts."""
    rcp = record.get("responses_create_params") or {}
    key = {"input": rcp.get("input"), "tools": rcp.get("tools"), "instructions": rcp.get("instructions")}
    seed = transition_seed(record)
    if seed:
        # aviary's request input is [] for every task: its question is the seed of the transitions.
        key["seed"] = seed
    return hashlib.sha1(dumps(key, sort_keys=True)).hexdigest()[:16]


def transition_seed(record: dict[str, Any]) -> list[Any]:
    """The items of aviary's last transition before the model's first turn (the task's question);
    [] for a plain `response.output`."""
    output = (record.get("response") or {}).get("output")
    if not is_transitions(output):
        return []
    seed = []
    for item in output[-1]:
        if not isinstance(item, dict) or item.get("type") in ("function_call", "reasoning") or (_is_message(item) and item.get("role") == "assistant"):
            break
        seed.append(item)
    return seed


def task_key(record: dict[str, Any]) -> str:
    """The task a rollout belongs to: `_ng_task_index` when present, else the prompt hash."""
    idx = record.get("_ng_task_index")
    agent = agent_name(record)
    if isinstance(idx, int) and not isinstance(idx, bool):
        return f"{agent}#{idx}" if agent else f"#{idx}"
    return f"{agent}@{prompt_hash(record)}" if agent else f"@{prompt_hash(record)}"


def agent_name(record: dict[str, Any]) -> str | None:
    """The agent that produced a rollout (`agent_ref.name`), if recorded."""
    ref = record.get("agent_ref")
    if isinstance(ref, dict):
        name = ref.get("name")
        return name if isinstance(name, str) else None
    return ref if isinstance(ref, str) else None


def is_incomplete(record: dict[str, Any]) -> bool:
    """True when the response was cut short (`status` not completed, or `incomplete_details` set)."""
    response = record.get("response") or {}
    status = response.get("status")
    return bool(response.get("incomplete_details")) or (status is not None and status != "completed")


def output_tokens(record: dict[str, Any]) -> int | None:
    """Output tokens from `response.usage`, when the collector recorded them."""
    usage = (record.get("response") or {}).get("usage")
    if isinstance(usage, dict):
        n = usage.get("output_tokens")
        if isinstance(n, int) and not isinstance(n, bool):
            return n
    return None


def final_text(record: dict[str, Any]) -> str:
    """The text of the last assistant message in the response output ('' if none)."""
    for item in reversed(output_items(record)):
        if isinstance(item, dict) and item.get("type", "message") == "message" and item.get("role") == "assistant":
            return content_text(item.get("content"))
    return ""


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


# ---- streaming validation ----------------------------------------------------------------------


@dataclass(slots=True)
class Checked:
    """One input line after validation: a usable `record`, or a rejection (`code`, `reason`)."""

    line: int
    record: dict[str, Any] | None
    code: str | None = None
    reason: str | None = None
    raw: bytes = b""


def iter_checked(
    path: Any, *, tasks: bool = False, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES
) -> Iterator[Checked]:
    """Yield every non-blank line of a rollout (or, with `tasks=True`, a task) file, validated, in order.

    `path` is a path, `-`, an `Input`, or a `LineReader` (from `iter_lines`, to read its `blank` count)."""
    check = check_task if tasks else check_record
    for p in read_jsonl(path, max_line_bytes):
        yield _checked(p, check)


def check_line(line: Line, check: Callable[[Any], None] = check_record, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> Checked:
    """One raw line parsed (orjson) and validated: the exact path every fast path falls back to."""
    return _checked(parse_line(line, max_line_bytes), check)


def _checked(p: Parsed, check: Any) -> Checked:
    if not p.ok:
        return Checked(p.number, None, p.code, p.reason, p.raw)
    try:
        check(p.obj)
    except RecordError as exc:
        return Checked(p.number, None, exc.code, exc.reason, p.raw)
    return Checked(p.number, p.obj, raw=p.raw)


# The reward histogram of every report (validate, stats, stats --plot): tenths of [0, 1], binned by
# `reward_bin`. What is counted differs by design: validate counts every valid rollout with a reward
# (masked ones too, as in its mean; rewards outside [0, 1] under `out_of_0_1`), stats the measured
# rollouts (masked and repeated lines left out; min-max bins when a reward lies outside [0, 1]).
REWARD_EDGES: tuple[float, ...] = tuple(i / 10 for i in range(11))


def reward_bin(r: float, edges: tuple[float, ...] | list[float] = REWARD_EDGES) -> int | None:
    """The histogram bin of `r`: bin i holds edges[i] <= r < edges[i+1], the last bin also r == edges[-1].

    The one binning of `gymverl validate` and `gymverl stats` (edges ascending; None outside them, NaN
    included). Compared with the edges, not with `int(r * 10)`: 0.3 * 3 == 0.8999999999999999 lies in
    0.8-0.9, where the multiplication would round it into 0.9-1.0.
    """
    if not edges[0] <= r <= edges[-1]:
        return None
    return min(bisect_right(edges, r), len(edges) - 1) - 1


@dataclass
class ValidationSummary(Rejections):
    """Counts gathered while streaming a rollout file; the report `gymverl validate` prints."""

    path: str
    lines: int = 0
    valid: int = 0
    blank: int = 0  # blank lines: skipped, not rejected; lines = valid + rejected + blank
    rejects: Tally = field(default_factory=Tally)  # rejected lines: `rejected`, `rejected_by_code`, `rejections`
    reward_sum: float = 0.0
    reward_min: float | None = None
    reward_max: float | None = None
    reward_values: Counter[float] = field(default_factory=Counter)
    reward_hist: list[int] = field(default_factory=lambda: [0] * 10)
    reward_out_of_range: int = 0
    incomplete: int = 0
    masked: int = 0
    rollouts_per_task: Counter[str] = field(default_factory=Counter)
    agents: Counter[str] = field(default_factory=Counter)
    max_examples: int = MAX_SHOWN
    # Content facts of valid rollouts (SFT/DPO conversion drops the first two under named filters).
    malformed_calls: int = 0  # rollouts with a tool call whose arguments are not a JSON object
    malformed_call_lines: list[int] = field(default_factory=list)  # the first few of their line numbers
    empty_answers: int = 0  # rollouts whose response ends without a final answer ("" or reasoning only)
    empty_answer_lines: list[int] = field(default_factory=list)
    transitions: int = 0  # aviary per-step transition lists (the last step is read)
    no_prompt: int = 0  # conversations that start with a model turn (no question anywhere)
    no_prompt_lines: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.rejects.limit = self.max_examples

    @property
    def first_rejections(self) -> list[dict[str, Any]]:
        """The first `max_examples` rejected lines (`rejections`, under the name validate used first)."""
        return self.rejects.shown

    def add(self, c: Checked) -> None:
        """Fold one checked line into the summary."""
        if c.record is None:
            self.lines += 1
            self.rejects.add(c.code or "unknown", {"line": c.line, "code": c.code, "reason": c.reason})
            return
        rec = c.record
        reward = rec.get("reward")
        if isinstance(reward, bool) or not isinstance(reward, (int, float)):
            # A tasks file: no reward yet.
            self._add_valid(None, task_key(rec), agent_name(rec), False, False)
        else:
            self._add_valid(
                float(reward), task_key(rec), agent_name(rec), is_incomplete(rec), rec.get("mask_sample") is True,
                malformed_calls(rec), empty_answer(rec), starts_without_prompt(rec),
                line=c.line, transitions=is_transitions(rec["response"].get("output")),
            )

    def _add_valid(
        self,
        reward: float | None,
        key: str,
        agent: str | None,
        incomplete: bool,
        masked: bool,
        malformed: int = 0,
        empty: bool = False,
        no_prompt: bool = False,
        *,
        line: int = 0,
        transitions: bool = False,
    ) -> None:
        self.lines += 1
        self.valid += 1
        self.rollouts_per_task[key] += 1
        self.agents[agent or "(unnamed)"] += 1
        if reward is None:
            return
        self.transitions += transitions
        for flag, lines, name in ((malformed, self.malformed_call_lines, "malformed_calls"), (empty, self.empty_answer_lines, "empty_answers"), (no_prompt, self.no_prompt_lines, "no_prompt")):
            if flag:
                setattr(self, name, getattr(self, name) + 1)
                if len(lines) < self.max_examples:
                    lines.append(line)
        r = reward
        self.reward_sum += r
        if self.reward_min is None or r < self.reward_min:
            self.reward_min = r
        if self.reward_max is None or r > self.reward_max:
            self.reward_max = r
        if len(self.reward_values) < 50 or r in self.reward_values:
            self.reward_values[r] += 1
        if 0.0 <= r <= 1.0:
            # reward_bin(r), inlined: this runs once per valid line.
            self.reward_hist[min(bisect_right(REWARD_EDGES, r), 10) - 1] += 1
        else:
            self.reward_out_of_range += 1
        if incomplete:
            self.incomplete += 1
        if masked:
            self.masked += 1

    @property
    def reward_mean(self) -> float | None:
        """Mean reward of the valid rows."""
        n = sum(self.reward_hist) + self.reward_out_of_range
        return self.reward_sum / n if n else None

    def to_dict(self) -> dict[str, Any]:
        """The summary as plain JSON-able data (`--json`)."""
        per_task = list(self.rollouts_per_task.values())
        dist = Counter(per_task)
        return {
            "path": self.path,
            **self.line_counts(),
            "reward": {
                "mean": self.reward_mean,
                "min": self.reward_min,
                "max": self.reward_max,
                "histogram": {f"{lo:.1f}-{hi:.1f}": n for lo, hi, n in zip(REWARD_EDGES, REWARD_EDGES[1:], self.reward_hist)},
                "out_of_0_1": self.reward_out_of_range,
                "values": {str(k): v for k, v in sorted(self.reward_values.items())} if len(self.reward_values) <= 20 else None,
            },
            "tasks": len(self.rollouts_per_task),
            "rollouts_per_task": {
                "min": min(per_task) if per_task else 0,
                "max": max(per_task) if per_task else 0,
                "mean": (sum(per_task) / len(per_task)) if per_task else 0.0,
                "distribution": {str(k): v for k, v in sorted(dist.items())},
            },
            "incomplete": self.incomplete,
            "masked": self.masked,
            "malformed_tool_calls": {"rollouts": self.malformed_calls, "lines": self.malformed_call_lines},
            "empty_answers": {"rollouts": self.empty_answers, "lines": self.empty_answer_lines},
            "no_prompt": {"rollouts": self.no_prompt, "lines": self.no_prompt_lines},
            "transitions": self.transitions,
            "agents": dict(self.agents.most_common()),
        }


if _msgspec is not None:
    # The keys `check_record` reads, typed; msgspec skips everything else without building it.

    _RAW_MISSING = _msgspec.Raw(b"null")

    class _FItem(_msgspec.Struct):
        type: Optional[str] = None
        role: Optional[str] = None
        name: Optional[str] = None
        call_id: Optional[str] = None
        # Raw: read (for the content facts) only where needed, never built for every item. A missing
        # key hands back the very default object, so `is _RAW_MISSING` tells "absent" from "null".
        arguments: _msgspec.Raw = _RAW_MISSING
        content: _msgspec.Raw = _RAW_MISSING

    class _FAgent(_msgspec.Struct):
        name: Any = None

    class _FPart(_msgspec.Struct):
        # What `content_text` reads of a content part, raw: whether a text is blank is mostly
        # known from its first character, without building the (often long) string; everything
        # else (annotations, logprobs) is skipped in C.
        type: Any = None
        text: _msgspec.Raw = _RAW_MISSING
        refusal: _msgspec.Raw = _RAW_MISSING

    # Parts of another JSON type (numbers, lists) fail the decode: the exact path then decides.
    _decode_content = _msgspec.json.Decoder(Union[str, list[Union[str, _FPart]], None]).decode
    # A tool call's arguments: the JSON text of an object, as a string; the string only, no object.
    _decode_json_string = _msgspec.json.Decoder(str).decode

    class _FParams(_msgspec.Struct):
        input: Union[str, list[_FItem]]
        tools: Optional[list[_msgspec.Raw]] = None

    class _FResponse(_msgspec.Struct):
        output: list[_FItem]
        status: Any = None
        incomplete_details: Any = None

    class _FRecord(_msgspec.Struct):
        responses_create_params: _FParams
        response: _FResponse
        reward: float
        task_index: Optional[int] = _msgspec.field(default=None, name="_ng_task_index")
        rollout_index: Optional[int] = _msgspec.field(default=None, name="_ng_rollout_index")
        agent_ref: Union[_FAgent, str, None] = None
        mask_sample: Any = None


class _FastRollouts:
    """Confirms that a line is a valid rollout without building Python objects for all of it.

    Two C parsers share the work: simdjson checks the whole line (JSON syntax, UTF-8, escapes,
    number range, depth limit 1024: as strict as orjson or stricter) and msgspec decodes only the
    keys `check_record` looks at, typed, keeping the last of repeated keys as orjson does. Only
    "valid" is trusted: any other outcome sends the line down the orjson path, which has the final
    word and the exact reason, so results are identical with or without these packages. A byte
    order mark at the start of a line (simdjson skips it, orjson does not) also goes that way.
    """

    def __init__(self) -> None:
        assert _simdjson is not None and _msgspec is not None
        self._parser = _simdjson.Parser()
        self._decode = _msgspec.json.Decoder(_FRecord).decode

    def __call__(self, data: bytes) -> tuple[float, str, str | None, bool, bool, int, bool, bool] | None:
        """`_fast_summary`'s facts when `data` is certainly valid, else None."""
        if data[:3] == b"\xef\xbb\xbf":
            return None
        try:
            self._parser.parse(data)  # validation only: the lazy document is dropped at once
            rec = self._decode(data)
        except Exception:
            return None
        return _fast_summary(rec)


# msgspec reads any integer as an int; orjson reads those beyond 64 bits as floats (not a valid index).
_U64_MAX = 2**64 - 1


def _fast_items(items: list[Any]) -> bool:
    for item in items:
        t = item.type
        if t is None:
            if item.role in _MESSAGE_ROLES:
                continue
            return False
        if t not in ITEM_TYPES:
            return False
        if t == "message":
            if item.role not in _MESSAGE_ROLES:
                return False
        elif t == "function_call":
            if item.name is None or item.call_id is None:
                return False
        elif t == "function_call_output" and item.call_id is None:
            return False
    return True


def _fast_summary(rec: Any, facts: bool = True) -> tuple[float, str, str | None, bool, bool, int, bool, bool] | None:
    """The rest of `check_record` on a typed record, plus what the summary needs: (reward, task key,
    agent, incomplete, masked, malformed calls, empty answer, starts without prompt).

    `facts=False` skips the content checks (malformed calls, empty answer, prompt) and reports
    (0, False, False): rl rows never use them, and they parse every tool call's arguments."""
    inp = rec.responses_create_params.input
    if type(inp) is list and not _fast_items(inp):
        return None
    response = rec.response
    if not _fast_items(response.output):
        return None
    reward = rec.reward
    if not math.isfinite(reward):
        return None
    index = rec.task_index
    if index is None or index < 0 or index > _U64_MAX:
        return None  # no task index: the prompt hash needs the whole record (orjson path)
    if rec.rollout_index is not None and not 0 <= rec.rollout_index <= _U64_MAX:
        return None
    ref = rec.agent_ref
    agent = ref if type(ref) is str else (ref.name if ref is not None and type(ref.name) is str else None)
    status = response.status
    incomplete = bool(response.incomplete_details) or (status is not None and status != "completed")
    key = f"{agent}#{index}" if agent else f"#{index}"
    if not facts:
        return (reward, key, agent, incomplete, rec.mask_sample is True, 0, False, False)
    found = _fast_facts(inp, response.output)
    if found is None:
        return None
    return (reward, key, agent, incomplete, rec.mask_sample is True, *found)


def _fast_facts(inp: Any, output: list[Any]) -> tuple[int, bool, bool] | None:
    """(`malformed_calls`, `empty_answer`, `starts_without_prompt`) of typed items; None when unsure.

    Runs on every valid line of validate, stats and sft/dpo conversion, so it is written for speed:
    one pass over the output, the input only for its (rare) tool calls, and each value decoded by
    msgspec into just what the check reads.
    """
    if not inp:
        return None  # rare (aviary's flat form): the exact path reads instructions too
    malformed = 0
    if type(inp) is list:
        for item in inp:
            if item.type == "function_call":
                args = item.arguments
                if args is not _RAW_MISSING and not _raw_is_object(args):  # missing reads as {}
                    malformed += 1
    last = None
    for item in output:
        t = item.type
        if t == "function_call":
            args = item.arguments
            # inlined `_raw_is_object` for the common case: arguments given as an object
            if args is not _RAW_MISSING and memoryview(args)[:1] != b"{" and not _raw_is_object(args):
                malformed += 1
            last = item
        elif item.role == "assistant" and (t is None or t == "message"):
            last = item
    if last is None:
        return malformed, True, False
    if last.type == "function_call":
        return malformed, False, False
    raw = last.content
    try:
        head = memoryview(raw)[:2]
        if head[:1] == b'"':  # plain string content: no parts to walk
            c = head[1:2]
            # inlined `_raw_text_nonblank`'s first-character test (the usual answer ends here)
            nonblank = (bool(c) and 0x21 <= c[0] <= 0x7E and c[0] != 0x5C and c[0] != 0x22) or _raw_text_nonblank(raw)
        else:
            nonblank = _parts_nonblank(_decode_content(raw))
    except Exception:  # noqa: BLE001 - any doubt goes to the exact path
        return None
    return malformed, not nonblank, False


def _raw_text_nonblank(raw: Any) -> bool:
    """Whether a raw JSON string holds a non-whitespace character (`text.strip() != ""`).

    A printable ASCII character other than a quote or a backslash right after the opening quote
    settles it (it is never whitespace); anything else is decoded and stripped like the exact path.
    """
    first = memoryview(raw)[1:2]
    if first and 0x21 <= first[0] <= 0x7E and first[0] != 0x5C and first[0] != 0x22:  # not `\` or the closing `"`
        return True
    return bool(_decode_json_string(raw).strip())


def _parts_nonblank(content: Any) -> bool:
    """`content_text(content).strip() != ""` for content decoded by `_decode_content`."""
    if content is None:
        return False
    if isinstance(content, str):
        return bool(content.strip())
    for part in content:
        if type(part) is str:
            if part.strip():
                return True
            continue
        text = part.text
        if (text is _RAW_MISSING or bytes(text) == b"null") and part.type == "refusal":
            text = part.refusal
        if text is _RAW_MISSING:
            continue
        head = memoryview(text)[:2]
        if head[:1] != b'"':
            continue  # not a string: content_text ignores it
        c = head[1:2]
        if (c and 0x21 <= c[0] <= 0x7E and c[0] != 0x5C and c[0] != 0x22) or _raw_text_nonblank(text):
            return True
    return False


def _raw_is_object(raw: Any) -> bool:
    """`is_json_object_text` of the raw JSON of an `arguments` value (a string holding JSON, or an object)."""
    first = memoryview(raw)[:1]
    if first == b"{":
        return True  # an object given as such (simdjson validated the line)
    if first != b'"':
        return False  # a number, null, a list, ...: not the text of an object
    try:
        text = _decode_json_string(raw)
    except Exception:  # noqa: BLE001 - cannot happen on a validated line; judged like the exact path would
        return is_json_object_text(orjson.loads(bytes(raw)))
    # Only text that starts with "{" can be an object; everything else needs no second parse.
    return text.lstrip()[:1] == "{" and is_json_object_text(text)


def validate_file(
    path: str | os.PathLike[str],
    *,
    rejects: str | os.PathLike[str] | None = None,
    tasks: bool = False,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
    on_line: Any = None,
    on_progress: OnProgress | None = None,
) -> ValidationSummary:
    """Validate every line of a rollout file (streaming); write rejected lines to `rejects` if given.

    `on_line(checked)` sees every line (and turns the fast check off); `on_progress` hears the input
    bytes read (`gymverl.progress`)."""
    src = as_input(path)  # a path, `-`, a pipe, or an Input the caller opened
    if rejects is not None and src.path is not None and os.path.exists(rejects) and os.path.samefile(rejects, src.path):
        # The rejects file replaces its path when done: that would overwrite the input.
        raise InputError(f"{rejects}: the rejects file cannot be the input file.")
    summary = ValidationSummary(str(src))
    check = check_task if tasks else check_record
    # The fast path only confirms valid rollouts; tasks files and callers that want each parsed
    # record (on_line) take the orjson path for every line.
    fast = _FastRollouts() if _msgspec is not None and not tasks and on_line is None else None
    with RejectsWriter(rejects) as rw:
        lines = iter_lines(src, max_line_bytes)
        for line in lines if on_progress is None else track_lines(lines, on_progress, src.progress_total):
            if fast is not None and not line.oversize:
                found = fast(line.data)
                if found is not None:
                    summary._add_valid(*found, line=line.number)
                    continue
            c = check_line(line, check, max_line_bytes)
            summary.add(c)
            if c.record is None:
                rw.add(c.line, c.code or "unknown", c.reason or "", c.raw)
            if on_line is not None:
                on_line(c)
    summary.blank = lines.blank  # skipped, not rejected; still accounted for in `lines`
    summary.lines += lines.blank
    return summary

