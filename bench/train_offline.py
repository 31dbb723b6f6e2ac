"""Benchmark `gymverl train-offline` against running VeRL's `sft_trainer` directly, same settings.

Builds a model from a config (random weights: nothing can be downloaded) and an SFT parquet made by
`gymverl.convert` from sample_data/ and the real NeMo Gym tool-call fixtures (rows repeated to
--rows), then, alternating the order, runs R times each:
  A  `gymverl train-offline DATA ... --no-export --json` (the CLI, as a user runs it)
  B  the exact torchrun argv + environment that A's `--dry-run --json` prints, run directly
and reports wall time, tokens/s (step 2 on, from the step lines' arrival times) and peak memory
(VeRL's perf/max_memory_allocated_gb), plus gymverl's overhead = (A - B) / B on the median wall
times. The export (verl.model_merger), which B does not do, is timed separately once.

    # GPU (one H100): a ~0.5B Qwen2 (Qwen2.5-0.5B shapes), bf16 mixed precision, 1 GPU
    .venv/bin/python bench/train_offline.py --preset 0.5b --device cuda --rows 2048 --batch-size 64 --repeats 3
    # CPU smoke mode (tiny model), what a CI machine can do
    .venv/bin/python bench/train_offline.py --preset tiny --device cpu --rows 64 --batch-size 8 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from gymverl.train import parse_step_line  # noqa: E402

SHARED = Path(os.environ.get("GYMVERL_SHARED", REPO.parent / "shared"))
SOURCES = [
    REPO / "sample_data" / "rollouts.jsonl",
    SHARED / "fixtures" / "nemo_gym_rollouts" / "example_single_tool_call.jsonl",
    SHARED / "fixtures" / "nemo_gym_rollouts" / "xlam_fc.jsonl",
    SHARED / "fixtures" / "nemo_gym_rollouts" / "math_with_judge.jsonl",
]
# Qwen2.5-0.5B's shapes; the vocabulary stays the real size so the parameter count (~0.49B) matches.
PRESETS = {
    "0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                 num_key_value_heads=2, vocab_size=151936),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=None),
}


def build_model(out: Path, preset: str) -> int:
    """A random Qwen2 from a config + gymverl's tiny tokenizer; returns the parameter count."""
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    from gymverl.tiny import build_tokenizer

    texts = [line for p in SOURCES if p.exists() for line in p.read_text().splitlines()]
    tok = build_tokenizer(out, texts)
    shape = dict(PRESETS[preset])
    shape["vocab_size"] = max(shape["vocab_size"] or 0, len(tok))
    cfg = Qwen2Config(**shape, max_position_embeddings=32768, tie_word_embeddings=True,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, torch_dtype="bfloat16")
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(cfg).to(torch.bfloat16)
    model.save_pretrained(str(out), safe_serialization=True)
    GenerationConfig(eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id).save_pretrained(str(out))
    return sum(p.numel() for p in model.parameters())


def build_data(out: Path, rows: int) -> Path:
    """SFT rows from gymverl.convert (reward 1), repeated to `rows`."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from gymverl.convert import ConvertOptions, convert
    from gymverl.select import SelectOptions

    tables = []
    for src in SOURCES:
        if src.exists():
            s = convert(src, out / src.stem, ConvertOptions(fmt="sft", select=SelectOptions(min_reward=1.0)))
            tables += [pq.read_table(f) for f in s.files.get("train", [])]
    base = pa.concat_tables(tables)
    reps = -(-rows // base.num_rows)
    table = pa.concat_tables([base] * reps).slice(0, rows)
    path = out / "train.parquet"
    pq.write_table(table, path)
    return path


def timed(argv: list[str], env: dict[str, str], log: Path) -> dict:
    """Run a command, timestamping VeRL's step lines as they arrive; wall time of the whole process."""
    t0 = time.perf_counter()
    steps: list[tuple[float, dict]] = []
    with open(log, "wb") as f:
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        assert proc.stdout is not None
        for raw in proc.stdout:
            f.write(raw)
            for part in raw.decode("utf-8", "replace").split("\r"):
                parsed = parse_step_line(part)
                if parsed:
                    steps.append((time.perf_counter(), parsed[1]))
        rc = proc.wait()
    wall = time.perf_counter() - t0
    if rc != 0:
        raise SystemExit(f"{argv[0]} failed with {rc}; see {log}")
    tokens = sum(m.get("train/global_tokens", 0) for _, m in steps[1:])
    span = steps[-1][0] - steps[0][0] if len(steps) > 1 else 0.0
    peak = max((m.get("perf/max_memory_allocated_gb", 0.0) for _, m in steps), default=0.0)
    return {"wall_s": wall, "steps": len(steps), "tokens_per_s": tokens / span if span else None,
            "peak_mem_gb": peak, "first_loss": steps[0][1].get("train/loss") if steps else None,
            "last_loss": steps[-1][1].get("train/loss") if steps else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cpu")
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--micro-batch-size", type=int, default=4)
    ap.add_argument("--max-length", type=int, default=2048)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--nproc", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()

    work = args.workdir or Path(tempfile.mkdtemp(prefix="gymverl-bench-train-"))
    work.mkdir(parents=True, exist_ok=True)
    model = work / "model"
    if (model / "config.json").exists():
        import math

        from safetensors import safe_open

        params = 0
        for f in model.glob("*.safetensors"):
            with safe_open(str(f), "pt") as st:
                params += sum(math.prod(st.get_slice(k).get_shape()) for k in st.keys())
    else:
        params = build_model(model, args.preset)
    data = build_data(work / "data", args.rows)
    gymverl = [str(Path(sys.executable).with_name("gymverl")), "train-offline", str(data), "-m", str(model),
               "--device", args.device, "--epochs", str(args.epochs), "--batch-size", str(args.batch_size),
               "--micro-batch-size", str(args.micro_batch_size), "--max-length", str(args.max_length),
               "--nproc", str(args.nproc), "--lr", "1e-5"]
    runs: dict[str, list[dict]] = {"gymverl": [], "verl": []}
    for i in range(args.repeats):
        order = ["gymverl", "verl"] if i % 2 == 0 else ["verl", "gymverl"]
        for who in order:
            out = work / f"{who}-{i}"
            if who == "gymverl":
                r = timed(gymverl + ["-o", str(out), "--no-export", "--json"], dict(os.environ), work / f"{who}-{i}.log")
                # gymverl consumes VeRL's step lines itself: take its own figures from its --json result
                res = json.loads((work / f"{who}-{i}.log").read_text()[(work / f"{who}-{i}.log").read_text().rindex("\n{"):])
                r.update(steps=res["steps"], tokens_per_s=res["tokens_per_second"], peak_mem_gb=res["peak_memory_gb"] or 0.0,
                         first_loss=res["first_loss"], last_loss=res["last_loss"])
            else:
                plan = json.loads(subprocess.run(gymverl + ["-o", str(out), "--dry-run", "--json"], check=True,
                                                 capture_output=True, text=True).stdout)
                out.mkdir(parents=True, exist_ok=True)  # VeRL's file logger does not create it
                r = timed(plan["argv"], {**os.environ, **plan["env"]}, work / f"{who}-{i}.log")
            runs[who].append(r)
            print(f"{who:8s} run {i}: {json.dumps(r)}", flush=True)
    t0 = time.perf_counter()
    from gymverl.train import export_hf, latest_checkpoint

    export_hf(latest_checkpoint(work / "gymverl-0" / "checkpoints"), work / "hf_model")
    export_s = time.perf_counter() - t0
    med = {k: statistics.median(r["wall_s"] for r in v) for k, v in runs.items()}
    tps = {k: statistics.median(r["tokens_per_s"] or 0 for r in v) for k, v in runs.items()}
    summary = {
        "preset": args.preset, "params": params, "device": args.device, "rows": args.rows,
        "batch_size": args.batch_size, "steps": runs["verl"][0]["steps"], "repeats": args.repeats,
        "median_wall_s": med, "median_tokens_per_s": tps,
        "peak_mem_gb": {k: max(r["peak_mem_gb"] for r in v) for k, v in runs.items()},
        "overhead_pct": 100 * (med["gymverl"] - med["verl"]) / med["verl"],
        "export_s": export_s, "workdir": str(work),
    }
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
