"""gymverl parquet loads in VeRL 0.9's own dataset classes with a real tokenizer + chat template.

RL rows go through `RLHFDataset` (prompt rendering and its over-length filter); SFT rows through
`GymverlSFTDataset` (VeRL's `MultiTurnSFTDataset` reading our JSON-string columns), whose rendered
text and loss mask are checked against the chat template applied to the original rollout.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from omegaconf import OmegaConf

from conftest import SAMPLE_DATA, fixture_params
from gymverl.convert import ConvertOptions, convert
from gymverl.messages import chat_tools, rollout_messages
from gymverl.select import SelectOptions

pytestmark = pytest.mark.verl

ROLLOUTS = SAMPLE_DATA / "rollouts.jsonl"
TASKS = SAMPLE_DATA / "tasks.jsonl"
ASSISTANT_TURN = re.compile(r"<\|im_start\|>assistant\n(.*?<\|im_end\|>\n)", re.S)


@pytest.fixture(scope="module")
def tok(tiny_model: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_model))


def _records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _template(tok: Any, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None, **kw: Any) -> str:
    return tok.apply_chat_template(messages, tools=tools or None, tokenize=False, **kw)


def _sft_dataset(files: list[str] | str, tok: Any, cls: Any = None, **cfg: Any) -> Any:
    from gymverl.verl_data import GymverlSFTDataset

    config = OmegaConf.create({"max_length": 65536, "truncation": "error", "pad_mode": "no_padding", **cfg})
    return (cls or GymverlSFTDataset)(files, tok, config)


def _rendered(tok: Any, item: dict[str, Any]) -> str:
    return tok.decode(item["input_ids"].tolist())


def _trained(tok: Any, item: dict[str, Any]) -> list[str]:
    """The loss-masked text, one string per contiguous masked span."""
    ids, mask = item["input_ids"].tolist(), item["loss_mask"].tolist()
    spans: list[list[int]] = []
    prev = 0
    for t, m in zip(ids, mask):
        if m and not prev:
            spans.append([])
        if m:
            spans[-1].append(t)
        prev = m
    return [tok.decode(s) for s in spans]


def _rlhf_dataset(files: list[str], tok: Any, tmp_path: Path, **cfg: Any) -> Any:
    from verl.utils.dataset.rl_dataset import RLHFDataset

    config = OmegaConf.create(
        {"cache_dir": str(tmp_path / "verl-cache"), "prompt_key": "prompt", "max_prompt_length": 4096,
         "filter_overlong_prompts": True, "filter_overlong_prompts_workers": 1, **cfg}
    )
    return RLHFDataset(files, tok, config)


def test_rlhf_dataset_renders_task_prompts(tmp_path: Path, tok: Any) -> None:
    s = convert(TASKS, tmp_path / "rl", ConvertOptions(fmt="rl"))
    ds = _rlhf_dataset(s.files["train"], tok, tmp_path)
    tasks = _records(TASKS)
    assert len(ds) == len(tasks)
    for i, task in enumerate(tasks):
        item = ds[i]
        expected = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in task["responses_create_params"]["input"])
        assert _template(tok, item["raw_prompt"], add_generation_prompt=True) == expected + "<|im_start|>assistant\n"
        gt = task.get("expected_answer") or json.dumps(task.get("expected_answers"), separators=(",", ":"))
        assert item["reward_model"] == {"style": "rule", "ground_truth": gt}
        assert item["data_source"] == task["agent_ref"]["name"]
        ng = json.loads(item["extra_info"]["nemo_gym"])
        assert ng["responses_create_params"] == task["responses_create_params"] and ng["agent_ref"] == task["agent_ref"]
        assert item["index"] == i


def test_rlhf_dataset_length_filter_sees_our_prompts(tmp_path: Path, tok: Any) -> None:
    s = convert(ROLLOUTS, tmp_path / "rl", ConvertOptions(fmt="rl"))
    lengths = []
    for row in pq.read_table(s.files["train"][0]).to_pylist():
        ids = tok.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=True)
        lengths.append(len(ids["input_ids"] if hasattr(ids, "keys") else ids))
    limit = sorted(lengths)[len(lengths) // 2]
    ds = _rlhf_dataset(s.files["train"], tok, tmp_path, max_prompt_length=limit)
    assert len(ds) == sum(n <= limit for n in lengths) < len(lengths)
    assert all(0.0 <= ds[i]["extra_info"]["pass_rate"] <= 1.0 for i in range(len(ds)))


def test_sft_tool_call_conversation_text_and_loss_mask(tmp_path: Path, tok: Any) -> None:
    s = convert(ROLLOUTS, tmp_path / "sft", ConvertOptions(fmt="sft"))
    ds = _sft_dataset(s.files["train"], tok)
    rows = pq.read_table(s.files["train"][0]).to_pylist()
    by_line = {n: rec for n, rec in enumerate(_records(ROLLOUTS), start=1)}
    checked = 0
    for i, row in enumerate(rows):
        rec = by_line[row["extra_info"]["line"]]
        if not rec["responses_create_params"].get("tools"):
            continue
        item = ds[i]
        expected = _template(tok, rollout_messages(rec), chat_tools(rec["responses_create_params"]["tools"]))
        assert _rendered(tok, item) == expected
        assert "<tool_call>" in expected and "<tool_response>" in expected
        # Loss covers exactly the assistant turns (tool call turn and final answer), nothing else.
        assert _trained(tok, item) == ASSISTANT_TURN.findall(expected)
        assert len(_trained(tok, item)) == 2
        checked += 1
    assert checked == sum(1 for r in rows if r["tools"] is not None) > 0


def _two_tool_rollouts(tmp_path: Path) -> Path:
    recs = _records(ROLLOUTS)
    weather = next(r for r in recs if r["_ng_task_index"] == 3 and r["reward"] == 1.0)
    currency = next(r for r in recs if r["_ng_task_index"] == 4 and r["reward"] == 1.0)
    p = tmp_path / "two.jsonl"
    p.write_text(json.dumps(weather) + "\n" + json.dumps(currency) + "\n")
    return p


def test_rows_with_different_tools_render_only_their_own_keys(tmp_path: Path, tok: Any) -> None:
    from verl.utils.dataset.multiturn_sft_dataset import MultiTurnSFTDataset

    from gymverl.verl_data import decode_row

    src = _two_tool_rollouts(tmp_path)
    s = convert(src, tmp_path / "sft", ConvertOptions(fmt="sft"))
    ds = _sft_dataset(s.files["train"], tok)
    weather, currency = _rendered(tok, ds[0]), _rendered(tok, ds[1])
    assert '"city"' in weather and '"amount"' in currency
    for key in ('"amount"', '"from_currency"', '"to_currency"'):
        assert key not in weather
    assert '"city"' not in currency
    assert "null" not in weather and "null" not in currency
    for rec, text in zip(_records(src), (weather, currency)):
        assert text == _template(tok, rollout_messages(rec), chat_tools(rec["responses_create_params"]["tools"]))

    # The naive encoding (nested lists of structs) leaks: Arrow merges both rows' structs, so the
    # weather row reads back with the currency tool's parameters as nulls, and they render.
    # (Without the null `images` column: plain MultiTurnSFTDataset takes any images key as multimodal.)
    rows = [{k: v for k, v in decode_row(r).items() if k != "images"} for r in pq.read_table(s.files["train"][0]).to_pylist()]
    naive = tmp_path / "naive.parquet"
    pq.write_table(pa.Table.from_pylist(rows), naive)
    leaked = _rendered(tok, _sft_dataset(str(naive), tok, cls=MultiTurnSFTDataset)[0])
    assert '"amount": null' in leaked and leaked != weather


@pytest.mark.parametrize("path", fixture_params())
def test_every_real_fixture_converts_and_loads(tmp_path: Path, tok: Any, path: Path) -> None:
    s = convert(path, tmp_path / "sft", ConvertOptions(fmt="sft"))
    assert s.rejected == 0 and s.accounted == s.lines > 0 and s.rows["train"] > 0
    ds = _sft_dataset(s.files["train"], tok)
    by_line = {n: rec for n, rec in enumerate(_records(path), start=1)}
    rows = pq.read_table(s.files["train"][0]).to_pylist()
    for i, row in enumerate(rows):
        item = ds[i]  # VeRL's own sanity check compares per-turn and whole-conversation tokens
        rec = by_line[row["extra_info"]["line"]]
        expected = _template(tok, rollout_messages(rec), chat_tools(rec["responses_create_params"].get("tools")))
        assert _rendered(tok, item) == expected
        assert "".join(_trained(tok, item)) == "".join(ASSISTANT_TURN.findall(expected)) != ""
    # The same file as RL prompts loads in RLHFDataset.
    r = convert(path, tmp_path / "rl", ConvertOptions(fmt="rl"))
    assert r.rejected == 0 and r.rows["train"] > 0
    rl = _rlhf_dataset(r.files["train"], tok, tmp_path, filter_overlong_prompts=False)
    assert len(rl) == r.rows["train"]
    assert all(rl[i]["raw_prompt"][-1]["role"] == "user" for i in range(len(rl)))


def test_reasoning_can_be_kept(tmp_path: Path, tok: Any, fixture_files: list[Path]) -> None:
    path = next(p for p in fixture_files if p.stem == "xlam_fc")  # reasoning items with summary text
    s = convert(path, tmp_path / "sft", ConvertOptions(fmt="sft", include_reasoning=True, select=SelectOptions(min_reward=1.0)))
    ds = _sft_dataset(s.files["train"], tok)
    trained = _trained(tok, ds[0])
    assert all(turn.startswith("<think>") for turn in trained) and len(trained) == 2
    plain = convert(path, tmp_path / "plain", ConvertOptions(fmt="sft", select=SelectOptions(min_reward=1.0)))
    assert "<think>" not in _rendered(tok, _sft_dataset(plain.files["train"], tok)[0])
