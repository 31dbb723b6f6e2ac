"""Row building shared by both conversion modes: the per-run context (`_Ctx`), the user's tokenizer
(`TokenCounter`, for --max-tokens and dpo's tool-argument form) and the rl/sft/dpo row builders."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from gymverl.formats import FieldRules, data_source_of
from gymverl.formats import dpo as dpo_fmt
from gymverl.formats import rl as rl_fmt
from gymverl.formats import fast as fast_fmt
from gymverl.formats import sft as sft_fmt
from gymverl.jsonl import RejectsWriter
from gymverl.records import Checked, empty_answer, malformed_calls, task_key
from gymverl.sidecars import TaskSource
from gymverl.select import SelectOptions

from gymverl.convert.options import ConvertError, ConvertOptions
from gymverl.convert.summary import ConvertSummary
from gymverl.convert.parquet import ParquetSink


class TokenCounter:
    """Counts chat-template tokens of a conversation with the user's tokenizer (for --max-tokens)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        from gymverl.preview import holds_tokenizer

        folder = Path(path)
        if folder.is_dir() and not holds_tokenizer(folder):  # ("no chat template" would be misleading)
            raise ConvertError(f"{path} has no tokenizer files (tokenizer.json, tokenizer_config.json); copy them from the model's source.")
        try:
            from transformers import AutoTokenizer

            self.tokenizer = AutoTokenizer.from_pretrained(str(path))
        except Exception as exc:  # noqa: BLE001 - any failure is one clear message
            raise ConvertError(f"cannot load a tokenizer from {path}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
        if not getattr(self.tokenizer, "chat_template", None):
            raise ConvertError(f"the tokenizer in {path} has no chat template, so token lengths cannot be measured.")
        self._form: str | None = None  # tool-call argument form, probed on the first tool call

    @property
    def object_arguments(self) -> bool:
        """True when the template needs tool-call arguments as objects (ConvertError when it renders neither form)."""
        if self._form is None:
            try:
                self._form = sft_fmt.tool_arguments_form(self.tokenizer)
            except sft_fmt.ToolArgumentsError as exc:
                raise ConvertError(str(exc)) from None
        return self._form == "object"

    def set_form(self, form: str) -> None:
        """Use tool-call argument form `form` ('object' or 'string') instead of probing the template."""
        self._form = form

    def count(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None, *, generation_prompt: bool = False) -> int:
        """Tokens of `messages` (and `tools`) rendered by the chat template."""
        if sft_fmt.has_tool_calls(messages) and self.object_arguments:
            messages = sft_fmt.arguments_as_objects(messages)
        ids = self.tokenizer.apply_chat_template(
            messages, tools=tools or None, tokenize=True, add_generation_prompt=generation_prompt
        )
        if isinstance(ids, dict) or hasattr(ids, "keys"):
            ids = ids["input_ids"]
        return len(ids)


@dataclass
class _Ctx:
    opts: ConvertOptions
    rules: FieldRules
    default_source: str
    tasks_input: bool
    summary: ConvertSummary
    sink: ParquetSink
    rejects: RejectsWriter
    counter: TokenCounter | None
    _fast: Any = None
    source: TaskSource | None = None  # task rows joined onto rl rows (main process only)

    def fast_reader(self) -> fast_fmt.FastSFT | None:
        """The fast SFT reader for this conversion (None when it does not apply: --max-tokens, no msgspec)."""
        if self._fast is None:
            ok = fast_fmt.available() and self.counter is None and not self.tasks_input
            self._fast = fast_fmt.FastSFT(include_reasoning=self.opts.include_reasoning) if ok else False
        return self._fast or None

    def reject(self, line: int, code: str, reason: str, raw: bytes) -> None:
        self.summary.reject(line, code, reason)
        self.rejects.add(line, code, reason, raw)

    def write(self, split: str, row: dict[str, Any]) -> None:
        """Queue a finished row of `split`. An sft row from a rollout below `--solved-threshold` is
        counted (`ConvertSummary.unsolved_rows`): without --min-reward SFT trains on failed answers."""
        if self.opts.fmt == "sft":
            reward = row["extra_info"]["reward"]
            if reward is not None and reward < self.opts.select.solved_threshold:
                self.summary.unsolved_rows += 1
        self.sink.add(split, row)


def _fast_sft_row(ctx: _Ctx, reader: fast_fmt.FastSFT, got: fast_fmt.FastRollout, line: int) -> dict[str, Any] | None:
    """The SFT row of a decoded rollout (built by `sft_row`, like every SFT row), or None."""
    conv = reader.conversation(got)
    if conv is None:
        return None
    messages, tools = conv
    return sft_fmt.sft_row(
        {"reward": got.reward, "_ng_rollout_index": got.rollout_index},
        data_source=ctx.opts.data_source or got.agent or ctx.default_source,
        task_key=got.key,
        line=line,
        messages=messages,
        tools=tools,
    )


def _key_of(c: Checked, tasks_input: bool) -> str:
    rec = c.record
    assert rec is not None
    if tasks_input and not isinstance(rec.get("_ng_task_index"), int):
        # NeMo Gym numbers tasks by their row in the input file; using the same index keeps a task in
        # the same split whether the tasks file or its rollouts are converted.
        return task_key({**rec, "_ng_task_index": c.line - 1})
    return task_key(rec)


def _rl_row(
    ctx: _Ctx, rec: dict[str, Any], key: str, stats: tuple[int, float, float] | None, fields: dict[str, Any] | None = None
) -> dict[str, Any]:
    row, _ = rl_fmt.rl_row(
        rec,
        rules=ctx.rules,
        fields=fields,
        data_source=ctx.opts.data_source or data_source_of(rec, ctx.default_source),
        ability=ctx.opts.ability,
        task_key=key,
        stats=stats,
        agent_loop=ctx.opts.agent_loop,
    )
    return row


def _rl_too_long(ctx: _Ctx, row: dict[str, Any]) -> bool:
    if ctx.counter is None or ctx.opts.select.max_tokens is None:
        return False
    # The policy sees the row's tools too (gymverl.agent_loop renders them into the prompt).
    tools = row["extra_info"].get("tools")
    return ctx.counter.count(row["prompt"], orjson.loads(tools) if tools else None, generation_prompt=True) > ctx.opts.select.max_tokens


def _sft_build(ctx: _Ctx, rec: dict[str, Any], line: int, key: str) -> tuple[dict[str, Any] | None, str | None]:
    """(row, None) for a kept rollout, (None, "max_tokens") when too long; RowError when unusable."""
    images: list[dict[str, Any]] = []
    messages, tools = sft_fmt.conversation(rec, include_reasoning=ctx.opts.include_reasoning, images=images)
    if ctx.counter is not None and ctx.counter.count(messages, tools) > (ctx.opts.select.max_tokens or 0):
        return None, "max_tokens"
    row = sft_fmt.sft_row(
        rec,
        data_source=ctx.opts.data_source or data_source_of(rec, ctx.default_source),
        task_key=key,
        line=line,
        messages=messages,
        tools=tools,
        images=images,
    )
    return row, None


def _dpo_build(ctx: _Ctx, rec: dict[str, Any]) -> dict[str, Any]:
    side = dpo_fmt.dpo_side(rec, include_reasoning=ctx.opts.include_reasoning, object_arguments=ctx.opts.tool_arguments == "object")
    side["data_source"] = ctx.opts.data_source or data_source_of(rec, ctx.default_source)
    return side


def _too_long_rollout(ctx: _Ctx, rec: dict[str, Any]) -> bool:
    """--max-tokens on the whole conversation (used before task-level rules, so best-of-n sees only fitting rollouts)."""
    if ctx.counter is None:
        return False
    # Images count as their placeholder text only (their tokens depend on the processor).
    messages, tools = sft_fmt.conversation(rec, include_reasoning=ctx.opts.include_reasoning, images=[])
    return ctx.counter.count(messages, tools) > (ctx.opts.select.max_tokens or 0)


def _content_facts(rec: dict[str, Any], sel: SelectOptions) -> tuple[int, bool]:
    """(malformed tool calls, empty answer) for `record_status`, read only when their rule is on."""
    return (malformed_calls(rec) if sel.drop_malformed_calls else 0, empty_answer(rec) if sel.drop_empty_answers else False)
