"""DPO rows as TRL reads them: `datasets` loads the parquet into conversational preference rows, and
TRL's own data utilities and DPOTrainer dataset preparation render the conversations (not JSON
text), with the row's own tools, through a real tokenizer and chat template (gymverl.tiny)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from conftest import SAMPLE_DATA
from gymverl.convert import ConvertOptions, convert
from gymverl.verl_data import decode_row

trl = pytest.importorskip("trl", reason="trl is a test extra (pip install -e '.[test]')")
datasets = pytest.importorskip("datasets")

ROLLOUTS = SAMPLE_DATA / "rollouts.jsonl"


@pytest.fixture(scope="module")
def tok(tiny_model: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_model))


@pytest.fixture(scope="module")
def dpo_files(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    out = tmp_path_factory.mktemp("dpo")
    s = convert(ROLLOUTS, out / "o", ConvertOptions(fmt="dpo"))
    assert s.rows["train"] >= 2
    return s.files["train"]


def _load(files: list[str], tmp_path: Path) -> Any:
    return datasets.load_dataset("parquet", data_files=files, cache_dir=str(tmp_path / "hf"))["train"]


def _render(tok: Any, messages: list[dict[str, Any]], tools: Any, **kw: Any) -> str:
    return tok.apply_chat_template(messages, tools=tools, tokenize=False, **kw)


def test_rows_are_conversational_for_trl(dpo_files: list[str], tok: Any, tmp_path: Path) -> None:
    from trl.data_utils import is_conversational, maybe_apply_chat_template

    ds = _load(dpo_files, tmp_path)
    with_tools = 0
    for row in ds:
        assert is_conversational(row), row["prompt"]
        assert row["prompt"][-1]["role"] == "user" and row["chosen"][0]["role"] == "assistant"
        tools = json.loads(row["tools"]) if row["tools"] else None
        with_tools += tools is not None
        rendered = maybe_apply_chat_template(row, tok, tools=tools)
        # TRL's split of prompt+chosen: the prompt as the model sees it, the completion after it.
        assert rendered["prompt"] == _render(tok, row["prompt"], tools, add_generation_prompt=True)
        for side in ("chosen", "rejected"):
            full = _render(tok, row["prompt"] + row[side], tools)
            assert rendered["prompt"] + rendered[side] == full
            assert '"role"' not in rendered[side] and '{"content"' not in rendered[side]
            # The completion is the response's own text, in the template's assistant turn.
            last = row[side][-1]
            assert last["content"] and last["content"] in rendered[side]
        if tools:
            assert tools[0]["function"]["name"] in rendered["prompt"]
            assert "<tool_call>" in rendered["chosen"]  # the chosen response's call, rendered by the template
        assert row["chosen"] != row["rejected"]
    assert with_tools, "the sample has tool-calling tasks: one pair should carry tools"


def test_dpo_trainer_prepares_the_conversations(dpo_files: list[str], tok: Any, tiny_model: Path, tmp_path: Path) -> None:
    """TRL's DPOTrainer tokenizes the rows itself (its `tools` JSON string included): its chosen and
    rejected token ids are the rendered responses."""
    from trl import DPOConfig, DPOTrainer

    ds = _load(dpo_files, tmp_path)
    args = DPOConfig(
        output_dir=str(tmp_path / "trl"), report_to=[], use_cpu=True, per_device_train_batch_size=1, max_steps=1,
        dataset_num_proc=None, precompute_ref_log_probs=False, save_strategy="no",
    )
    trainer = DPOTrainer(model=str(tiny_model), args=args, train_dataset=ds, processing_class=tok)
    prepared = trainer.train_dataset
    assert len(prepared) == len(ds)
    for raw, got in zip(ds, prepared):
        tools = json.loads(raw["tools"]) if raw["tools"] else None
        prompt = _render(tok, raw["prompt"], tools, add_generation_prompt=True)
        assert tok.decode(got["prompt_ids"]) == prompt
        for side in ("chosen", "rejected"):
            full = _render(tok, raw["prompt"] + raw[side], tools)
            assert tok.decode(got["prompt_ids"] + got[f"{side}_ids"]) == full
            assert '"role"' not in tok.decode(got[f"{side}_ids"])


def test_other_readers_decode_the_rows(dpo_files: list[str]) -> None:
    """pyarrow and pandas see a list of JSON strings per message list; decode_row gives the messages."""
    import pandas as pd

    arrow_rows = [decode_row(r) for r in pq.read_table(dpo_files[0]).to_pylist()]
    pandas_rows = [decode_row(r) for r in pd.read_parquet(dpo_files[0]).to_dict("records")]
    for a, p in zip(arrow_rows, pandas_rows):
        for key in ("prompt", "chosen", "rejected"):
            assert isinstance(a[key], list) and all(isinstance(m, dict) and "role" in m for m in a[key])
            assert a[key] == p[key]
        assert a["tools"] == (None if isinstance(p["tools"], float) else p["tools"])  # pandas reads a null as NaN
    # The JSON-string cells of gymverl 0.1.0's dpo rows still decode.
    old = {"prompt": json.dumps(arrow_rows[0]["prompt"]), "tools": None}
    assert decode_row(old)["prompt"] == arrow_rows[0]["prompt"]


def test_tool_call_arguments_take_the_form_the_template_renders(tiny_model: Path, tmp_path: Path) -> None:
    """A `|tojson` template (Qwen2.5) would render string arguments double-encoded into the trained
    chosen/rejected text; with --tokenizer the rows carry objects and TRL renders the call as written."""
    from test_tool_arguments_form import QWEN25_BLOCK, _tokenizer
    from trl.data_utils import maybe_apply_chat_template

    qwen = _tokenizer(tiny_model, QWEN25_BLOCK)
    model_dir = tmp_path / "qwen25-tok"
    qwen.save_pretrained(model_dir)

    def pairs(**kw: Any) -> tuple[Any, list[dict[str, Any]]]:
        s = convert(ROLLOUTS, tmp_path / f"o-{len(kw)}-{kw.get('tool_arguments', 'x')}", ConvertOptions(fmt="dpo", **kw))
        rows = [decode_row(r) for f in s.files["train"] for r in pq.read_table(f).to_pylist()]
        return s, [r for r in rows if r["tools"]]

    guessed, rows = pairs()
    assert rows and any("--tool-arguments object" in w for w in guessed.warnings)
    decided, obj_rows = pairs(tokenizer=str(model_dir))
    assert not any("--tool-arguments" in w for w in decided.warnings)
    for old, new in zip(rows, obj_rows):
        calls = [tc for m in new["chosen"] + new["rejected"] for tc in m.get("tool_calls") or []]
        assert calls and all(isinstance(tc["function"]["arguments"], dict) for tc in calls)
        bad = maybe_apply_chat_template({k: old[k] for k in ("prompt", "chosen", "rejected", "tools")}, qwen)
        good = maybe_apply_chat_template({k: new[k] for k in ("prompt", "chosen", "rejected", "tools")}, qwen)
        text = good["chosen"] + good["rejected"]
        assert '"arguments": {"' in text and '"arguments": "{' not in text
        assert '"arguments": "{' in bad["chosen"] + bad["rejected"]  # the fault without the form
    forced, _ = pairs(tool_arguments="string")
    assert not any("--tool-arguments" in w for w in forced.warnings)
