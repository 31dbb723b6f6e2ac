"""Tool-call argument form (issue 12 item 6, case `mapping-only-arguments-template`).

OpenAI-form arguments are JSON strings. Chat templates differ in what they need: some print the
string as is, Qwen2.5 / Llama 3.1 JSON-encode `arguments | tojson` (a string would be encoded twice),
Qwen3-Coder / Gemma iterate `arguments | items` (a string raises). gymverl renders a probe call in
both forms and picks the one shown as written; a template that shows neither stops at start-up with
one sentence naming `+data.tool_arguments`. Checked through VeRL's own `MultiTurnSFTDataset` (via
`GymverlSFTDataset`) with the tiny tokenizer and the real templates' tool-call blocks.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from omegaconf import OmegaConf

from gymverl.formats.sft import ToolArgumentsError, tool_arguments_form
from conftest import SHARED

CASE = SHARED / "cases" / "mapping-only-arguments-template" / "rollouts.jsonl"

# The tiny model's tool-call block (gymverl.tiny.CHAT_TEMPLATE): prints the arguments string as is.
TINY_BLOCK = (
    "{% for tc in message.tool_calls or [] %}"
    "\n<tool_call>\n{\"name\": \"{{ tc.function.name }}\", \"arguments\": {{ tc.function.arguments }}}\n</tool_call>"
    "{% endfor %}"
)
# Qwen2.5-7B-Instruct's chat_template, its tool-call loop (verbatim).
QWEN25_BLOCK = """{%- for tool_call in message.tool_calls %}
    {%- if tool_call.function is defined %}
        {%- set tool_call = tool_call.function %}
    {%- endif %}
    {{- '\\n<tool_call>\\n{"name": "' }}
    {{- tool_call.name }}
    {{- '", "arguments": ' }}
    {{- tool_call.arguments | tojson }}
    {{- '}\\n</tool_call>' }}
{%- endfor %}"""
# Qwen3-Coder-30B-A3B-Instruct's chat_template, its tool-call loop (verbatim): `arguments|items`.
QWEN3_CODER_BLOCK = """{%- for tool_call in message.tool_calls %}
    {%- if tool_call.function is defined %}
        {%- set tool_call = tool_call.function %}
    {%- endif %}
    {{- '\\n<tool_call>\\n<function=' + tool_call.name + '>\\n' }}
    {%- if tool_call.arguments is defined %}
        {%- for args_name, args_value in tool_call.arguments|items %}
            {{- '<parameter=' + args_name + '>\\n' }}
            {%- set args_value = args_value | tojson | safe if args_value is mapping or (args_value is sequence and args_value is not string) else args_value | string %}
            {{- args_value }}
            {{- '\\n</parameter>\\n' }}
        {%- endfor %}
    {%- endif %}
    {{- '</function>\\n</tool_call>' }}
{%- endfor %}"""
# Gemma-style function-call block (as in Gemma 3 / FunctionGemma templates): `arguments | items`.
GEMMA_BLOCK = """{%- for tool_call in message.tool_calls %}
{%- set function = tool_call.function %}
{{- 'call:' + function.name + '{' }}
{%- for key, value in function.arguments | items %}{{ key }}:{{ value | tojson }}{% if not loop.last %},{% endif %}{% endfor %}
{{- '}' }}
{%- endfor %}"""
# A template that drops tool calls altogether: neither form shows them.
SILENT_BLOCK = ""


def _tokenizer(tiny_model: Path, block: str) -> Any:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_model))
    assert TINY_BLOCK in tok.chat_template
    tok.chat_template = tok.chat_template.replace(TINY_BLOCK, block)
    return tok


def _rollouts() -> list[dict[str, Any]]:
    """A small tool-calling rollout of our own (an array argument, as in the shared case)."""
    args = '{"entity_list": ["Contoso Office Suite", "Contoso Chat"]}'
    return [
        {
            "responses_create_params": {
                "input": [{"role": "user", "content": "Look up Contoso Office Suite and Contoso Chat.", "type": "message"}],
                "tools": [{"type": "function", "name": "search", "parameters": {"type": "object", "properties": {"entity_list": {"type": "array"}}}}],
            },
            "response": {
                "output": [
                    {"type": "function_call", "call_id": "c0", "name": "search", "arguments": args},
                    {"type": "function_call_output", "call_id": "c0", "output": "found 2"},
                    {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Both were found."}]},
                ],
                "status": "completed",
            },
            "reward": 1.0,
            "_ng_task_index": 0,
        }
    ]


def _parquet(tmp_path: Path, src: Path) -> Path:
    from gymverl.convert import convert

    out = tmp_path / "sft.parquet"
    s = convert(src, out)
    assert s.rows["train"] >= 1 and s.accounted == s.lines
    return out


def _dataset(path: Path, tok: Any, **cfg: Any) -> Any:
    from gymverl.verl_data import GymverlSFTDataset

    config = OmegaConf.create({"max_length": 65536, "truncation": "error", "pad_mode": "no_padding", **cfg})
    return GymverlSFTDataset([str(path)], tok, config)


@pytest.mark.parametrize(
    ("block", "form"),
    [(TINY_BLOCK, "string"), (QWEN25_BLOCK, "object"), (QWEN3_CODER_BLOCK, "object"), (GEMMA_BLOCK, "object")],
    ids=["plain", "qwen2.5-tojson", "qwen3-coder-items", "gemma-items"],
)
def test_probe_picks_the_form_the_template_shows_as_written(tiny_model: Path, block: str, form: str) -> None:
    assert tool_arguments_form(_tokenizer(tiny_model, block)) == form


def test_template_that_shows_neither_form_is_one_sentence_naming_the_option(tiny_model: Path) -> None:
    with pytest.raises(ToolArgumentsError) as err:
        tool_arguments_form(_tokenizer(tiny_model, SILENT_BLOCK))
    msg = str(err.value)
    assert "+data.tool_arguments=object" in msg and "\n" not in msg


def _sources(tmp_path: Path) -> list[Path]:
    own = tmp_path / "own.jsonl"
    own.write_text("".join(json.dumps(r) + "\n" for r in _rollouts()))
    return [own, CASE] if CASE.is_file() else [own]


@pytest.mark.parametrize(
    ("block", "expected"),
    [
        (QWEN3_CODER_BLOCK, "<parameter=entity_list>\n[\"Contoso Office Suite\", \"Contoso Chat\"]\n</parameter>"),
        (GEMMA_BLOCK, 'call:search{entity_list:["Contoso Office Suite", "Contoso Chat"]}'),
        (QWEN25_BLOCK, '"arguments": {"entity_list": ["Contoso Office Suite", "Contoso Chat"]}}'),
        (TINY_BLOCK, '"arguments": {"entity_list": ["Contoso Office Suite", "Contoso Chat"]}}'),
    ],
    ids=["qwen3-coder-items", "gemma-items", "qwen2.5-tojson", "plain"],
)
def test_verl_dataset_renders_tool_calls_under_every_template(tiny_model: Path, tmp_path: Path, block: str, expected: str) -> None:
    """Old code: the string probe raised under `|items`, "string" was chosen, VeRL raised on every row."""
    tok = _tokenizer(tiny_model, block)
    ds = _dataset(_parquet(tmp_path, _sources(tmp_path)[0]), tok)
    text = tok.decode(ds[0]["input_ids"].tolist())
    assert expected in text and '\\"' not in text
    if CASE.is_file():
        case_ds = _dataset(_parquet(tmp_path / "case", CASE), tok)
        for i in range(len(case_ds)):
            assert "<tool_call>" in tok.decode(case_ds[i]["input_ids"].tolist()) or "call:" in tok.decode(case_ds[i]["input_ids"].tolist())


def test_verl_dataset_stops_at_start_up_when_no_form_renders(tiny_model: Path, tmp_path: Path) -> None:
    tok = _tokenizer(tiny_model, SILENT_BLOCK)
    path = _parquet(tmp_path, _sources(tmp_path)[0])
    with pytest.raises(ToolArgumentsError, match=r"\+data\.tool_arguments"):
        _dataset(path, tok)
    # The explicit setting is the way out, and a file without tool calls needs no decision at all.
    assert len(_dataset(path, tok, tool_arguments="string")) == 1


def test_train_offline_precheck_names_the_option(tiny_model: Path, tmp_path: Path) -> None:
    """`gymverl train-offline` checks the form before torchrun starts: one sentence, not a VeRL crash."""
    from gymverl.train import TrainError, check_tool_arguments
    from gymverl.convert import TokenCounter

    model = tmp_path / "model"
    _tokenizer(tiny_model, SILENT_BLOCK).save_pretrained(str(model))
    path = _parquet(tmp_path, _sources(tmp_path)[0])
    with pytest.raises(TrainError, match=r"\+data\.tool_arguments"):
        check_tool_arguments([path], TokenCounter(model), None)
    check_tool_arguments([path], TokenCounter(model), "string")  # the user decided


def test_object_form_refuses_arguments_that_are_not_objects_at_start_up(tiny_model: Path, tmp_path: Path) -> None:
    """Kept malformed calls (--keep-malformed-calls) under a `|tojson` template would render as
    `"arguments": "{\\"city\\": \\"Par"`, text the model never wrote: the dataset stops at start-up."""
    from gymverl.convert import ConvertOptions, convert
    from gymverl.select import SelectOptions

    rec = _rollouts()[0]
    rec["response"]["output"][0]["arguments"] = '{"entity_list": ["Contoso'
    src = tmp_path / "bad.jsonl"
    src.write_text(json.dumps(rec) + "\n")
    out = tmp_path / "kept.parquet"
    s = convert(src, out, ConvertOptions(select=SelectOptions(drop_malformed_calls=False)))
    assert s.kept_lines == 1
    with pytest.raises(ValueError, match="keep-malformed-calls"):
        _dataset(out, _tokenizer(tiny_model, QWEN25_BLOCK))
    # A template that prints the string as is shows exactly what the model wrote.
    tok = _tokenizer(tiny_model, TINY_BLOCK)
    assert '"arguments": {"entity_list": ["Contoso}' in tok.decode(_dataset(out, tok)[0]["input_ids"].tolist())
