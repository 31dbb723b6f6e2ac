"""NeMo Gym rollout records: validating a rollout file, and reading the parts of a record.

A record is the plain dict parsed from one JSONL line; it flows through gymverl unchanged (unknown
keys are kept). The schema itself (what a usable rollout is, the rejection reasons, the typed form
the fast path decodes, and the rules for the task key, the agent and "incomplete") is declared once
in `gymverl.schema`; its names are importable from here too. This module reads the parts the rest
of gymverl needs (task key, reward, task fields, completion status, content facts) from the dict,
and streams whole files through validation (`validate_file`, `iter_checked`).
"""

from __future__ import annotations

import os
from bisect import bisect_right
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from gymverl.inputs import as_input
from gymverl.messages import prompt_fault
from gymverl.jsonl import DEFAULT_MAX_LINE_BYTES, MAX_SHOWN, InputError, Line, Parsed, Rejections, RejectsWriter, Tally, iter_lines, parse_line, read_jsonl
from gymverl.progress import OnProgress, track_lines

try:  # optional accelerators for validate_file: the same results without them, about 3x slower
    import msgspec as _msgspec
    import simdjson as _simdjson
except ImportError:  # pragma: no cover
    _msgspec = _simdjson = None

from gymverl.schema import (  # noqa: F401 - the schema's names, where callers have always found them
    ITEM_TYPES,
    REQUIRED_KEYS,
    ROLLOUT_KEYS,
    RecordError,
    agent_of,
    check_record,
    check_task,
    content_blank,
    content_text,
    incomplete_of,
    is_json_object_text,
    is_message as _is_message,
    is_ng_key,
    is_transitions,
    prompt_hash,
    task_key_of,
    transition_seed,
)
from gymverl import schema as _schema

# ---- reading parts of a record -----------------------------------------------------------------


def output_items(record: dict[str, Any]) -> list[Any]:
    """The response's items: `response.output`, or the last transition of the aviary form (the whole
    conversation: the seed question, every call and output, the final answer)."""
    output = (record.get("response") or {}).get("output") or []
    return output[-1] if is_transitions(output) else output


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


def empty_answer(record: dict[str, Any]) -> bool:
    """True when the response ends without a final answer: its last model turn is an assistant
    message with no text, or it has no assistant message or call at all (reasoning only, nothing)."""
    last = None
    for item in output_items(record):
        if isinstance(item, dict) and (item.get("type") == "function_call" or (_is_message(item) and item.get("role") == "assistant")):
            last = item
    if last is None:
        return True
    return last.get("type") != "function_call" and content_blank(last.get("content"))


def starts_without_prompt(record: dict[str, Any], request_only: bool = False) -> bool:
    """True when the conversation has no prompt: nothing with text or an image (`schema.prompt_state`)
    before its first model turn, in the instructions, the input, or (when the input asks nothing
    and has no model turn) the response (aviary's forms: the flat one keeps the question only in
    its environment). An empty input, a blank one ("", a user message of white space or an empty
    input_text part) and an input that starts with a model turn all count.

    `request_only`: read only the request (instructions and input): the RL prompt. The policy
    continues the whole input, so there a user/system/developer message that says something
    anywhere in it is a prompt (an input may open with a model turn, e.g. a scripted greeting).
    """
    rcp = record.get("responses_create_params") or {}
    instructions = rcp.get("instructions")
    if isinstance(instructions, str) and instructions.strip():
        return False
    inp = rcp.get("input")
    if request_only and isinstance(inp, list):
        return not any(_schema.prompt_state((item,)) is True for item in inp)
    state = (bool(inp.strip()) or None) if isinstance(inp, str) else _schema.prompt_state(inp) if isinstance(inp, list) else None
    if state is None and not request_only:
        state = _schema.prompt_state(output_items(record))
    return state is not True


def task_fields(record: dict[str, Any]) -> dict[str, Any]:
    """Top-level keys that are not NeMo Gym rollout keys: task fields and verifier outputs."""
    return {k: v for k, v in record.items() if not is_ng_key(k)}


def task_key(record: dict[str, Any]) -> str:
    """The task a rollout belongs to: `_ng_task_index` when present, else the prompt hash."""
    idx = record.get("_ng_task_index")
    if isinstance(idx, int) and not isinstance(idx, bool):
        return task_key_of(agent_name(record), idx)
    return task_key_of(agent_name(record), None, prompt_hash(record))


def agent_name(record: dict[str, Any]) -> str | None:
    """The agent that produced a rollout (`agent_ref.name`), if recorded."""
    return agent_of(record.get("agent_ref"))


def is_incomplete(record: dict[str, Any]) -> bool:
    """True when the response was cut short (`status` not completed, or `incomplete_details` set)."""
    response = record.get("response") or {}
    return incomplete_of(response.get("status"), response.get("incomplete_details"))


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


# Valid lines are counted in batches of this many (`ValidationSummary.fold`): the counters update in
# C (`Counter.update`, `sum`, `min`), where counting one line at a time in Python took longer than
# checking it.
_FOLD_EVERY = 1024


def reward_key(reward: float) -> str:
    """A reward as a JSON object key (the `values` of validate's and stats' summaries): the shortest
    text that reads back as the same float (`repr`), without a trailing ".0" ("1", "0.5", "1e-07").
    Exact, so two distinct rewards never share a key."""
    text = repr(float(reward))
    return text[:-2] if text.endswith(".0") else text


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
    no_prompt: int = 0  # conversations without a prompt: blank, or starting with a model turn (starts_without_prompt)
    no_prompt_lines: list[int] = field(default_factory=list)
    # Prompts no training row can carry (`messages.prompt_fault`: an image URL, a file part, ...), by
    # code: to-parquet rejects these rollouts, so validate names them first.
    uncarried_prompts: Counter[str] = field(default_factory=Counter)
    uncarried_prompt_lines: list[int] = field(default_factory=list)
    # Valid lines' facts and line numbers not yet counted (`add_facts`, `fold`).
    _pending: list[tuple[Any, ...]] = field(default_factory=list, repr=False, compare=False)
    _pending_lines: list[int] = field(default_factory=list, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.rejects.limit = self.max_examples

    @property
    def first_rejections(self) -> list[dict[str, Any]]:
        """The first `max_examples` rejected lines (`rejections`, under the name validate used first)."""
        return self.rejects.shown

    def add(self, c: Checked) -> None:
        """Fold one checked line into the summary (valid ones are counted at the next `fold`)."""
        if c.record is None:
            self.lines += 1
            self.rejects.add(c.code or "unknown", {"line": c.line, "code": c.code, "reason": c.reason})
            return
        rec = c.record
        reward = rec.get("reward")
        fault = prompt_fault(rec["responses_create_params"])
        if isinstance(reward, bool) or not isinstance(reward, (int, float)):
            # A tasks file: no reward yet.
            self.add_facts((None, task_key(rec), agent_name(rec), False, False, 0, False, False, fault and fault[0]), c.line)
            return
        self.transitions += is_transitions(rec["response"].get("output"))
        self.add_facts(
            (
                float(reward), task_key(rec), agent_name(rec), is_incomplete(rec), rec.get("mask_sample") is True,
                malformed_calls(rec), empty_answer(rec), starts_without_prompt(rec), fault and fault[0],
            ),
            c.line,
        )

    def add_facts(self, facts: tuple[Any, ...], line: int) -> None:
        """Count one valid line from its facts (`gymverl.schema.Facts`; a task line's reward is
        None) at `line` (1-based). Counted in batches: `fold` before reading the summary."""
        self._pending.append(facts)
        self._pending_lines.append(line)
        if len(self._pending) >= _FOLD_EVERY:
            self.fold()

    def fold(self) -> None:
        """Count the valid lines added since the last fold: the counters and the reward statistics
        follow the lines' order, as adding them one at a time would."""
        if not self._pending:
            return
        # (emptied in place: validate_file appends to these very lists)
        batch, lines = self._pending[:], self._pending_lines[:]
        self._pending.clear()
        self._pending_lines.clear()
        n = len(batch)
        self.lines += n
        self.valid += n
        rewards, keys, agents, _, _, _, _, _, uncarried = columns = tuple(zip(*batch))
        # Counter.update counts an iterable in C, in order (so most_common's ties keep line order).
        self.rollouts_per_task.update(keys)
        for agent, count in Counter(agents).items():
            self.agents[agent or "(unnamed)"] += count
        if uncarried.count(None) != n:  # (rare)
            for i, code in enumerate(uncarried):
                if code is not None:
                    self.uncarried_prompts[code] += 1
                    if len(self.uncarried_prompt_lines) < self.max_examples:
                        self.uncarried_prompt_lines.append(lines[i])
        if None in rewards:  # task lines (no reward): only the counts above
            kept = [i for i, r in enumerate(rewards) if r is not None]
            columns = tuple(zip(*[batch[i] for i in kept])) or ((),) * 9
            lines = [lines[i] for i in kept]
            rewards = columns[0]
        if not rewards:
            return
        _, _, _, incomplete, masked, malformed, empty, no_prompt, _ = columns
        for flags, examples, name in ((malformed, self.malformed_call_lines, "malformed_calls"), (empty, self.empty_answer_lines, "empty_answers"), (no_prompt, self.no_prompt_lines, "no_prompt")):
            found = len(flags) - flags.count(0)  # (False == 0: the rollouts with the flag)
            if found:  # (rare: most rollouts have none of these)
                setattr(self, name, getattr(self, name) + found)
                for i, flag in enumerate(flags):
                    if len(examples) >= self.max_examples:
                        break
                    if flag:
                        examples.append(lines[i])
        self.reward_sum = sum(rewards, self.reward_sum)  # (in C; Python 3.12+ also compensates its rounding)
        low, high = min(rewards), max(rewards)
        if self.reward_min is None or low < self.reward_min:
            self.reward_min = low
        if self.reward_max is None or high > self.reward_max:
            self.reward_max = high
        # Each distinct reward once, in order of first appearance: the first 50 distinct values are
        # kept with their counts (as one at a time), and binned.
        for r, count in Counter(rewards).items():
            if len(self.reward_values) < 50 or r in self.reward_values:
                self.reward_values[r] += count
            if 0.0 <= r <= 1.0:
                self.reward_hist[min(bisect_right(REWARD_EDGES, r), 10) - 1] += count
            else:
                self.reward_out_of_range += count
        self.incomplete += sum(incomplete)
        self.masked += sum(masked)

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
                "values": {reward_key(k): v for k, v in sorted(self.reward_values.items())} if len(self.reward_values) <= 20 else None,
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
            "uncarried_prompts": {
                "rollouts": sum(self.uncarried_prompts.values()), "lines": self.uncarried_prompt_lines, "by_reason": dict(self.uncarried_prompts.most_common()),
            },
            "transitions": self.transitions,
            "agents": dict(self.agents.most_common()),
        }



class _FastRollouts:
    """Confirms that a line is a valid rollout without building Python objects for all of it.

    Two C parsers share the work: simdjson checks the whole line (JSON syntax, UTF-8, escapes,
    number range, depth limit 1024: as strict as orjson or stricter) and msgspec decodes only the
    keys the schema's rules read (`gymverl.schema.Record`), typed, keeping the last of repeated keys
    as orjson does. Only "valid" is trusted: any other outcome sends the line down the orjson path,
    which has the final word and the exact reason, so results are identical with or without these
    packages. A byte order mark at the start of a line (simdjson skips it, orjson rejects it) goes
    that way too: msgspec rejects it.
    """

    def __init__(self) -> None:
        assert _simdjson is not None and _msgspec is not None
        self._parser = _simdjson.Parser()
        self._decode = _schema.record_decoder()
        parse, decode, facts = self._parser.parse, self._decode, _schema.rollout_facts

        def check(data: bytes) -> _schema.Facts | None:
            try:
                parse(data)  # validation only: the lazy document is dropped at once
                rec = decode(data)
            except Exception:  # noqa: BLE001 - any doubt goes to the exact path
                return None
            return facts(rec)

        # `self(data)` as a plain function (`validate_file` calls it per line: a method call cost more)
        self.check: Callable[[bytes], _schema.Facts | None] = check

    def __call__(self, data: bytes) -> _schema.Facts | None:
        """`gymverl.schema.rollout_facts` of `data` when it is certainly a valid rollout, else None."""
        return self.check(data)


# The fast facts of a decoded record (convert's pass 1 calls it with content=False for rl).
_fast_summary = _schema.rollout_facts


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
    fast = _FastRollouts().check if _msgspec is not None and not tasks and on_line is None else None
    # `summary.add_facts`, inlined: once per line
    pending, numbers = summary._pending, summary._pending_lines
    with RejectsWriter(rejects) as rw:
        lines = iter_lines(src, max_line_bytes)
        for line in lines if on_progress is None else track_lines(lines, on_progress, src.progress_total):
            if fast is not None and not line.oversize:
                found = fast(line.data)
                if found is not None:
                    pending.append(found)
                    numbers.append(line.number)
                    if len(pending) >= _FOLD_EVERY:
                        summary.fold()
                    continue
            c = check_line(line, check, max_line_bytes)
            summary.add(c)
            if c.record is None:
                rw.add(c.line, c.code or "unknown", c.reason or "", c.raw)
            if on_line is not None:
                on_line(c)
    summary.fold()
    summary.blank = lines.blank  # skipped, not rejected; still accounted for in `lines`
    summary.lines += lines.blank
    return summary

