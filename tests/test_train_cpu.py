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
from gymverl.proc import descendants
from gymverl.cli import app
from gymverl.records import is_incomplete

from conftest import FIXTURES, SAMPLE_DATA

pytestmark = [pytest.mark.verl, pytest.mark.timeout(600)]

TOOL_FIXTURE = FIXTURES / "example_single_tool_call.jsonl"


@pytest.fixture(scope="module")
def sft_data(fixture_files: list[Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int, int]:
    """(parquet, rows, rows with tool calls): `to-parquet --format sft` of sample_data/ and of the real
    tool-call fixture (reward 1 only), in one file whose row count is a multiple of the batch size 4."""
    from gymverl.convert import ConvertOptions, convert
    from gymverl.select import SelectOptions

    tmp = tmp_path_factory.mktemp("sft")
    tables = []
    for src in (SAMPLE_DATA / "rollouts.jsonl", TOOL_FIXTURE):
        summary = convert(src, tmp / src.stem, ConvertOptions(fmt="sft", select=SelectOptions(min_reward=1.0)))
        tables.append(pq.read_table(summary.files["train"][0]))
    table = pa.concat_tables(tables)
    table = table.slice(0, table.num_rows - table.num_rows % 4)
    tool_rows = sum(1 for m in table.column("messages").to_pylist() if '"tool_calls"' in m)
    fixture_rows = tables[1].num_rows
    assert tool_rows >= 3 and fixture_rows >= 3, "the dataset must contain the fixture's tool-call conversations"
    path = tmp / "train.parquet"
    pq.write_table(table, path)
    return path, table.num_rows, tool_rows


def _dataset_tokens(parquet: Path, model: Path, max_length: int) -> int:
    """Total tokens of all rows as VeRL tokenizes them through gymverl's dataset class."""
    from omegaconf import OmegaConf
    from transformers import AutoTokenizer
    from verl.trainer.sft_trainer import create_sft_dataset

    path, name = tr.DATA_CLASS
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
    res = CliRunner().invoke(
        app,
        ["train-offline", str(parquet), "-m", str(tiny_model), "-o", str(out), "--device", "cpu",
         "--epochs", "3", "--batch-size", "4", "--micro-batch-size", "4", "--lr", "3e-3", "--max-length", "2048",
         "--json"],
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
    assert epoch_tokens == _dataset_tokens(parquet, tiny_model, 2048)

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
def test_cpu_from_rollouts_lora_two_processes(tiny_model, tmp_path):
    """--from-rollouts (selection + sft conversion first), LoRA, 2 gloo processes; the exported model has
    the adapter folded into its weights."""
    out = tmp_path / "lora"
    res = CliRunner().invoke(
        app,
        ["train-offline", "--from-rollouts", str(SAMPLE_DATA / "rollouts.jsonl"), "-m", str(tiny_model), "-o", str(out),
         "--device", "cpu", "--nproc", "2", "--batch-size", "4", "--micro-batch-size", "2", "--lr", "1e-2",
         "--lora-rank", "4", "--json", "--", "optim.weight_decay=0.0"],
    )
    assert res.exit_code == 0, res.output + ((out / "train.log").read_text()[-3000:] if (out / "train.log").exists() else "")
    result = json.loads(res.stdout)
    rows = pq.read_metadata(out / "data" / "train.parquet").num_rows
    # sample_data: 20 rollouts, reward 1 and complete -> the selected rows
    assert rows == sum(1 for r in map(json.loads, (SAMPLE_DATA / "rollouts.jsonl").read_text().splitlines())
                       if r["reward"] >= 1.0 and not is_incomplete(r))
    assert result["steps"] == rows // 4
    assert (out / "checkpoints" / f"global_step_{rows // 4}" / "model_world_size_2_rank_1.pt").is_file()
    argv = json.loads((out / "gymverl-train.json").read_text())["argv"]
    assert "--nproc_per_node=2" in argv and argv[-1] == "optim.weight_decay=0.0"
    hf = Path(result["hf_model"])
    assert (hf / "lora_adapter" / "adapter_config.json").is_file()
    before, after = _weights(tiny_model), _weights(hf)
    assert not any("lora" in k for k in after)
    changed = [k for k in after if "proj" in k and not (before[k] - after[k]).abs().max() < 1e-6]
    assert changed, "the LoRA adapter was not folded into the weights"
    _generate(hf)


@pytest.mark.slow
def test_cpu_interrupt_then_resume(sft_data, tiny_model, tmp_path):
    """SIGTERM mid-run: exit 130, no VeRL process left behind; --resume continues from the saved step."""
    import os
    import signal
    import subprocess
    import sys
    import time

    parquet, rows, _ = sft_data
    out = tmp_path / "run"
    gymverl = [str(Path(sys.executable).with_name("gymverl")), "train-offline", str(parquet), "-m", str(tiny_model),
               "-o", str(out), "--device", "cpu", "--batch-size", "4", "--max-length", "2048", "--no-export"]
    proc = subprocess.Popen(gymverl + ["--epochs", "1000", "--save-freq", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    ckpt = out / "checkpoints" / "latest_checkpointed_iteration.txt"
    deadline = time.monotonic() + 300
    while not ckpt.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.5)
    assert ckpt.exists(), "no checkpoint within 300 s"
    workers = descendants(proc.pid)
    assert workers, "torchrun and its worker should be running"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err.decode()
    assert "--resume" in err.decode()
    time.sleep(1)
    alive = [p for p in workers if os.path.exists(f"/proc/{p}") and "zombie" not in Path(f"/proc/{p}/status").read_text().lower()]
    assert not alive, f"left running: {alive}"

    saved = int(tr.latest_checkpoint(out / "checkpoints").name.rsplit("_", 1)[1])
    total = 2 * (rows // 4)
    assert saved < total, "the interrupted run got too far for this test"
    res = CliRunner().invoke(app, [*gymverl[1:], "--epochs", "2", "--resume", "--json"])
    assert res.exit_code == 0, res.output
    metrics = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert metrics == list(range(saved + 1, total + 1))
    assert (out / "metrics.1.jsonl").exists()  # the first run's metrics are kept


def test_verl_failure_shows_verls_error_not_torchruns_box(sft_data, tiny_model, tmp_path):
    """train-long-rows-error-hidden: when VeRL fails, the terminal says why (VeRL's own error line from
    train.log), not only torchrun's empty `Failures: <NO_OTHER_FAILURES>` box."""
    parquet, _, _ = sft_data
    out = tmp_path / "run"
    res = CliRunner().invoke(
        app,
        ["train-offline", str(parquet), "-m", str(tiny_model), "-o", str(out), "--device", "cpu", "--batch-size", "4",
         "--max-length", "2048", "--no-export", "--", "data.max_token_len_per_gpu=64"],
    )
    err = " ".join(res.stderr.split())
    assert res.exit_code == 1, res.output
    assert "max_token_len must be greater than the sequence length" in err, err
    assert err.startswith("error: VeRL exited with code 1: AssertionError:") and f"full log: {out / 'train.log'}" in err, err
    assert "NO_OTHER_FAILURES" not in res.output and "Traceback" not in res.output


def test_rows_longer_than_8192_tokens_train_with_max_length(tiny_model, tmp_path):
    """--max-length above 8192 works (VeRL's token budget per batch follows it); it used to fail with
    `max_token_len must be greater than the sequence length`."""
    words = " ".join(["word"] * 2400)  # about 9,600 tokens with the tiny tokenizer
    msgs = [[{"role": "user", "content": "q"}, {"role": "assistant", "content": words}]] * 2
    parquet = tmp_path / "long.parquet"
    pq.write_table(pa.table({"messages": [json.dumps(m) for m in msgs], "tools": [None, None]}), parquet)
    out = tmp_path / "run"
    res = CliRunner().invoke(
        app,
        ["train-offline", str(parquet), "-m", str(tiny_model), "-o", str(out), "--device", "cpu", "--batch-size", "2",
         "--micro-batch-size", "1", "--max-length", "12000", "--no-export", "--json"],
    )
    assert res.exit_code == 0, res.output + (out / "train.log").read_text()[-2000:]
    assert json.loads(res.stdout)["steps"] == 1
    assert tr.load_tokenizer(str(tiny_model)).count(msgs[0]) > 8192  # the case this test is about
