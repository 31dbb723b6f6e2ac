"""train-offline end to end on CPU (gymverl's VeRL CPU plugin): real VeRL SFT runs with the tiny model.

Data: the successful rollouts of sample_data/ plus a real NeMo Gym fixture with tool calls
(example_single_tool_call.jsonl), as SFT rows in gymverl's contract (messages/tools as JSON
strings), read by VeRL through gymverl's dataset class.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from gymverl import train as tr
from gymverl.cli import app
from gymverl.jsonl import read_jsonl
from gymverl.records import is_incomplete

from conftest import FIXTURES, SAMPLE_DATA

pytestmark = [pytest.mark.verl, pytest.mark.timeout(600)]

TOOL_FIXTURE = FIXTURES / "example_single_tool_call.jsonl"


def _sft_rows(path: Path) -> list[dict]:
    """SFT rows (B's row builder) for the complete rollouts with reward 1 of one file."""
    from gymverl.formats.sft import sft_row

    rows = []
    for p in read_jsonl(path):
        rec = p.obj
        if rec.get("reward") == 1.0 and not is_incomplete(rec):
            rows.append(sft_row(rec, data_source=path.stem, task_key=str(p.number), line=p.number))
    return rows


@pytest.fixture(scope="module")
def sft_data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int, int]:
    """(parquet, rows, rows with tool calls): a tiny dataset, a multiple of the batch size 4."""
    from gymverl.formats.sft import SCHEMA

    rows = _sft_rows(SAMPLE_DATA / "rollouts.jsonl") + _sft_rows(TOOL_FIXTURE)
    rows = rows[: len(rows) - len(rows) % 4]
    for i, r in enumerate(rows):
        r["extra_info"]["split"], r["extra_info"]["index"] = "train", i
    tool_rows = sum(1 for r in rows if '"tool_calls"' in r["messages"])
    assert tool_rows >= 3, "the dataset must contain tool-call conversations"
    path = tmp_path_factory.mktemp("sft") / "train.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), path)
    return path, len(rows), tool_rows


def _data_class_overrides(tmp: Path) -> list[str]:
    """gymverl's dataset class is found automatically; until it exists, a minimal JSON decoder."""
    if tr.find_data_class() is not None:
        return []
    src = tmp / "decode_json.py"
    src.write_text(
        "import json\n"
        "from verl.utils.dataset.multiturn_sft_dataset import MultiTurnSFTDataset\n"
        "class JsonSFT(MultiTurnSFTDataset):\n"
        "    def _read_files_and_process(self):\n"
        "        super()._read_files_and_process()\n"
        "        self.messages = [json.loads(m) for m in self.messages]\n"
        "        self.tools = [json.loads(t) if isinstance(t, str) else None for t in self.tools]\n"
        "        self.dataframe = self.dataframe.drop(columns=['messages', 'tools'])\n"
        "        self.dataframe['messages'] = [None] * len(self.messages)\n"
        "        self.dataframe['tools'] = [None] * len(self.messages)\n"
    )
    return [f"data.custom_cls.path={src}", "data.custom_cls.name=JsonSFT"]


def _dataset_tokens(parquet: Path, model: Path, overrides: list[str], max_length: int) -> int:
    """Total tokens of all rows as VeRL's (gymverl's) dataset class tokenizes them."""
    from omegaconf import OmegaConf
    from transformers import AutoTokenizer
    from verl.trainer.sft_trainer import create_sft_dataset

    custom = dict(o.split("=", 1) for o in overrides)
    path, name = tr.find_data_class() or (custom["data.custom_cls.path"], custom["data.custom_cls.name"])
    cfg = OmegaConf.create({"messages_key": "messages", "tools_key": "tools", "max_length": max_length,
                            "truncation": "error", "pad_mode": "no_padding", "custom_cls": {"path": path, "name": name}})
    ds = create_sft_dataset([str(parquet)], cfg, AutoTokenizer.from_pretrained(str(model)), None)
    return sum(int(ds[i]["input_ids"].shape[0]) for i in range(len(ds)))


def _generate(model_dir: Path) -> tuple[str, int, int]:
    """Load a model directory with plain transformers and generate a few tokens from a chat prompt."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir))
    ids = tok.apply_chat_template([{"role": "user", "content": "What is 2+2?"}], add_generation_prompt=True, return_tensors="pt")
    if not isinstance(ids, torch.Tensor):
        ids = ids["input_ids"]
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=8, do_sample=False, min_new_tokens=8)
    return tok.decode(out[0][ids.shape[1] :]), ids.shape[1], out.shape[1]


def _weights(model_dir: Path) -> dict:
    from safetensors.torch import load_file

    return {k: v.float() for f in sorted(model_dir.glob("*.safetensors")) for k, v in load_file(str(f)).items()}


def test_cpu_end_to_end(sft_data, tiny_model, tmp_path):
    """CLI run: loss logged and falling over 3 epochs, every row (tool calls included) trained on,
    an HF model exported that loads with transformers and generates."""
    parquet, rows, _tool_rows = sft_data
    out = tmp_path / "run"
    extra = _data_class_overrides(tmp_path)
    res = CliRunner().invoke(
        app,
        ["train-offline", str(parquet), "-m", str(tiny_model), "-o", str(out), "--device", "cpu",
         "--epochs", "3", "--batch-size", "4", "--micro-batch-size", "4", "--lr", "3e-3", "--max-length", "2048",
         "--json", "--", *extra],
    )
    assert res.exit_code == 0, res.output + (out / "train.log").read_text()[-3000:]
    result = json.loads(res.stdout)

    # VeRL's own metrics file: one entry per step, the count gymverl planned
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps_per_epoch = rows // 4
    assert [m["step"] for m in metrics] == list(range(1, 3 * steps_per_epoch + 1))
    losses = [m["data"]["train/loss"] for m in metrics]
    # the progress stream saw the same losses as VeRL's file logger
    assert result["losses"] == pytest.approx(losses, rel=1e-3)
    assert result["steps"] == len(metrics)
    first_epoch, last_epoch = losses[:steps_per_epoch], losses[-steps_per_epoch:]
    assert sum(last_epoch) / len(last_epoch) < 0.95 * sum(first_epoch) / len(first_epoch), losses

    # every row (the tool-call conversations included) went through each epoch
    epoch_tokens = sum(m["data"]["train/global_tokens"] for m in metrics[:steps_per_epoch])
    assert epoch_tokens == _dataset_tokens(parquet, tiny_model, extra, 2048)

    # the exported model: plain transformers loads it, it generates, and training changed it
    hf = Path(result["hf_model"])
    assert hf == out / "hf_model" and (hf / "config.json").is_file()
    text, n_in, n_out = _generate(hf)
    assert n_out == n_in + 8 and isinstance(text, str)
    before, after = _weights(tiny_model), _weights(hf)
    assert set(after) <= set(before)
    changed = [k for k in after if not (before[k] - after[k]).abs().max() < 1e-2]
    assert len(changed) >= len(after) // 2, f"only {len(changed)} of {len(after)} tensors changed"

    marker = json.loads((out / "gymverl-train.json").read_text())
    assert marker["result"]["hf_model"] == str(hf) and marker["argv"][0].endswith("torchrun")

    # running again into the finished directory is refused (VeRL would silently train nothing)
    again = CliRunner().invoke(app, ["train-offline", str(parquet), "-m", str(tiny_model), "-o", str(out), "--device", "cpu"])
    assert again.exit_code == 2 and "--resume" in again.stderr


@pytest.mark.slow
def test_cpu_lora_two_processes(sft_data, tiny_model, tmp_path):
    """LoRA over 2 gloo processes; the exported model has the adapter folded into its weights."""
    parquet, rows, _ = sft_data
    out = tmp_path / "lora"
    opts = tr.TrainOptions(
        train=parquet, model=str(tiny_model), out=out, device="cpu", nproc=2, epochs=1, batch_size=4,
        micro_batch_size=2, lr=1e-2, lora_rank=4, max_length=2048, overrides=_data_class_overrides(tmp_path),
    )
    steps = []
    result = tr.train_offline(opts, lambda ev: steps.append(ev.step) if ev.kind == "step" else None)
    assert result.returncode == 0, "\n".join(result.tail)
    assert steps == list(range(1, rows // 4 + 1))
    assert (out / "checkpoints" / f"global_step_{rows // 4}" / "model_world_size_2_rank_1.pt").is_file()
    hf = result.hf_model
    assert (hf / "lora_adapter" / "adapter_config.json").is_file()
    before, after = _weights(tiny_model), _weights(hf)
    assert not any("lora" in k for k in after)
    changed = [k for k in after if "proj" in k and not (before[k] - after[k]).abs().max() < 1e-6]
    assert changed, "the LoRA adapter was not folded into the weights"
    _generate(hf)
