"""Benchmark `gymverl validate` against a json + pydantic v2 baseline on a generated rollout file.

Generates a realistic rollout JSONL (default 200,000 lines) in a temp dir from the real NeMo Gym
rollouts in shared/fixtures and sample_data/ (final answers re-written with varied text and
lengths, task/rollout indices and rewards varied, ~0.5% broken lines of the kinds validate must
catch), then, pinned to one CPU core and in one process, times:

- gymverl: `gymverl.records.validate_file` (orjson, streaming, full summary), and
- baseline: each line parsed with `json.loads` and checked with a pydantic v2 model of the same
  schema (plus the same minimal bookkeeping: valid/rejected counts, reward sum, rollouts per task).

Both must agree on the number of valid lines (a cross-check that the schemas match). Prints MB/s
and lines/s for each, the ratio, and whether the targets (>= 3x baseline, >= 50 MB/s) are met.

Run: .venv/bin/python bench/validate.py [--lines 200000] [--repeat 1] [--orjson-only] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Annotated, Any, Callable, Literal, Optional, Union

import orjson
from pydantic import BaseModel, ConfigDict, Discriminator, Field, StrictInt, StrictStr, Tag, ValidationError

from gymverl import records
from gymverl.records import validate_file

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("GYMVERL_SHARED", REPO.parent / "shared"))
FIXTURES = SHARED / "fixtures" / "nemo_gym_rollouts"

TARGET_RATIO = 3.0
TARGET_MBPS = 50.0

# ---- the baseline: json + a pydantic v2 model of the same schema as gymverl.records ------------

_Extra = ConfigDict(extra="allow")


class Message(BaseModel):
    model_config = _Extra
    type: Optional[Literal["message"]] = None
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Any = None


class FunctionCall(BaseModel):
    model_config = _Extra
    type: Literal["function_call"]
    name: StrictStr
    call_id: StrictStr
    arguments: Any = None


class FunctionCallOutput(BaseModel):
    model_config = _Extra
    type: Literal["function_call_output"]
    call_id: StrictStr
    output: Any = None


class Reasoning(BaseModel):
    model_config = _Extra
    type: Literal["reasoning"]


def _item_tag(value: Any) -> str | None:
    # Items without a `type` are Responses-API "easy input messages" ({role, content}).
    if isinstance(value, dict):
        t = value.get("type")
        return "message" if t is None else t if isinstance(t, str) else None
    return None


Item = Annotated[
    Union[
        Annotated[Message, Tag("message")],
        Annotated[FunctionCall, Tag("function_call")],
        Annotated[FunctionCallOutput, Tag("function_call_output")],
        Annotated[Reasoning, Tag("reasoning")],
    ],
    Discriminator(_item_tag),
]


class ResponsesCreateParams(BaseModel):
    model_config = _Extra
    input: Union[StrictStr, list[Item]]
    tools: Optional[list[Any]] = None


class Response(BaseModel):
    model_config = _Extra
    output: list[Item]


class Rollout(BaseModel):
    model_config = _Extra
    responses_create_params: ResponsesCreateParams
    response: Response
    reward: Annotated[float, Field(strict=True, allow_inf_nan=False)]
    ng_task_index: Optional[Annotated[StrictInt, Field(ge=0)]] = Field(None, alias="_ng_task_index")
    ng_rollout_index: Optional[Annotated[StrictInt, Field(ge=0)]] = Field(None, alias="_ng_rollout_index")


def baseline_validate(path: Path) -> dict[str, Any]:
    """Parse each line with `json`, validate with pydantic, keep the same minimal summary."""
    valid = rejected = incomplete = 0
    reward_sum = 0.0
    per_task: Counter[str] = Counter()
    with open(path, "rb") as f:
        for _number, line in enumerate(f, 1):
            try:
                obj = json.loads(line)
                rec = Rollout.model_validate(obj)
            except (ValueError, ValidationError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
                rejected += 1
                continue
            valid += 1
            reward_sum += rec.reward
            agent = obj.get("agent_ref")
            name = agent.get("name") if isinstance(agent, dict) else agent
            per_task[f"{name}#{rec.ng_task_index}"] += 1
            response = obj["response"]
            if response.get("incomplete_details") or response.get("status", "completed") != "completed":
                incomplete += 1
    return {"valid": valid, "rejected": rejected, "reward_sum": reward_sum, "tasks": len(per_task), "incomplete": incomplete}


def gymverl_validate(path: Path) -> dict[str, Any]:
    """gymverl's own validation: `validate_file` (the library call behind `gymverl validate`)."""
    s = validate_file(path)
    return {"valid": s.valid, "rejected": s.rejected, "reward_sum": s.reward_sum, "tasks": len(s.rollouts_per_task), "incomplete": s.incomplete}


def gymverl_orjson_only(path: Path) -> dict[str, Any]:
    """gymverl without its optional accelerators (msgspec, pysimdjson): the orjson path for every line."""
    saved = records._msgspec
    records._msgspec = None
    try:
        return gymverl_validate(path)
    finally:
        records._msgspec = saved


# ---- the generated file ------------------------------------------------------------------------

WORDS = (
    "the answer is therefore we compute first note that since each term so total equals solve for "
    "x y n k sum product integer prime divisor remainder modulo function call result tool weather "
    "Paris Berlin Tokyo currency convert amount value check again verify final step let consider "
    "case both sides substitute simplify factor expand 2 3 5 7 11 13 17 19 23 = + - × ÷ √ π ≤ ≥ "
    "\\frac{1}{2} \\sqrt{3} \\boxed{42} résumé naïve 数学 答案"
).split()


def _templates() -> list[dict[str, Any]]:
    files = sorted(FIXTURES.glob("*.jsonl")) + [REPO / "sample_data" / "rollouts.jsonl"]
    rows = [orjson.loads(line) for p in files if p.exists() for line in p.read_bytes().splitlines() if line.strip()]
    if not rows:
        sys.exit("no template rollouts found (shared/fixtures or sample_data/)")
    return rows


def _last_assistant_text_part(rec: dict[str, Any]) -> dict[str, Any] | None:
    for item in reversed(rec["response"].get("output") or []):
        if item.get("type", "message") == "message" and item.get("role") == "assistant":
            parts = item.get("content")
            if isinstance(parts, list):
                for part in parts:
                    if isinstance(part, dict) and isinstance(part.get("text"), str):
                        return part
    return None


def _broken(rng: random.Random, good: bytes) -> bytes:
    kind = rng.randrange(5)
    if kind == 0:
        return good[: len(good) // 2]  # cut mid-record
    if kind == 1:
        return good.replace(b'"reward":', b'"reward":NaN,"was":', 1)
    if kind == 2:
        return good.replace(b'"reward":', b'"reward":"1.0","was":', 1)
    if kind == 3:
        return b"[" + good + b"]"
    return good.replace(b'"response":', b'"respons":', 1)


def generate(path: Path, lines: int, seed: int = 0, broken_rate: float = 0.005) -> int:
    """Write `lines` realistic rollout lines to `path`; return how many are deliberately broken."""
    rng = random.Random(seed)
    templates = _templates()
    parts = [_last_assistant_text_part(t) for t in templates]
    originals = [p["text"] if p else "" for p in parts]
    broken = 0
    with open(path, "wb", buffering=1 << 20) as f:
        for i in range(lines):
            k = i % len(templates)
            rec, part = templates[k], parts[k]
            if part is not None:
                n = rng.randint(20, 400)
                part["text"] = " ".join(rng.choices(WORDS, k=n)) + f" \\boxed{{{rng.randint(0, 999)}}}"
            rec["_ng_task_index"] = i // 8
            rec["_ng_rollout_index"] = i % 8
            rec["reward"] = rng.choice((0.0, 1.0, 1.0, 0.5, 0.0, 0.25))
            data = orjson.dumps(rec)
            if rng.random() < broken_rate:
                data = _broken(rng, data)
                broken += 1
            f.write(data + b"\n")
            if part is not None:
                part["text"] = originals[k]
    return broken


# ---- timing ------------------------------------------------------------------------------------


def _time(fn: Callable[[Path], dict[str, Any]], path: Path, repeat: int) -> tuple[float, float, dict[str, Any]]:
    best_wall = best_cpu = float("inf")
    result: dict[str, Any] = {}
    for _ in range(repeat):
        w0, c0 = time.perf_counter(), time.process_time()
        result = fn(path)
        best_wall = min(best_wall, time.perf_counter() - w0)
        best_cpu = min(best_cpu, time.process_time() - c0)
    return best_wall, best_cpu, result


def main(argv: list[str] | None = None) -> int:
    """Generate the file, time both validators, print the comparison; exit 1 if a target is missed."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lines", type=int, default=200_000, help="lines in the generated file (default 200000)")
    ap.add_argument("--repeat", type=int, default=1, help="time each validator this many times, keep the best")
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    ap.add_argument("--keep", type=Path, help="write the generated file here instead of a temp dir")
    ap.add_argument("--orjson-only", action="store_true", help="also time gymverl without msgspec/pysimdjson")
    args = ap.parse_args(argv)

    # One core: the targets are per core, and pinning keeps the two runs comparable.
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})

    with tempfile.TemporaryDirectory(prefix="gymverl-bench-") as tmp:
        path = args.keep or Path(tmp) / "rollouts.jsonl"
        t0 = time.perf_counter()
        broken = generate(path, args.lines)
        size = path.stat().st_size
        gen_s = time.perf_counter() - t0
        with open(path, "rb") as f:  # warm the page cache so neither run pays for the disk
            while f.read(1 << 24):
                pass
        results = {}
        runs = [("gymverl", gymverl_validate), ("json+pydantic", baseline_validate)]
        if args.orjson_only:
            runs.append(("gymverl/orjson", gymverl_orjson_only))
        for name, fn in runs:
            wall, cpu, res = _time(fn, path, args.repeat)
            results[name] = {
                "wall_s": round(wall, 3),
                "cpu_s": round(cpu, 3),
                "mb_per_s": round(size / 1e6 / wall, 1),
                "lines_per_s": round(args.lines / wall),
                "cpu_mb_per_s": round(size / 1e6 / cpu, 1),
                "cpu_lines_per_s": round(args.lines / cpu),
                **res,
            }
    g, b = results["gymverl"], results["json+pydantic"]
    ratio = b["wall_s"] / g["wall_s"]
    cpu_ratio = b["cpu_s"] / g["cpu_s"]
    agree = (g["valid"], g["rejected"]) == (b["valid"], b["rejected"]) and g["rejected"] == broken
    # Targets are judged on CPU time: the run is pinned to one core, and on a shared machine wall
    # time also counts the time spent waiting for that core (on an idle machine the two agree).
    ok = cpu_ratio >= TARGET_RATIO and g["cpu_mb_per_s"] >= TARGET_MBPS and agree
    report = {
        "lines": args.lines,
        "bytes": size,
        "mb": round(size / 1e6, 1),
        "avg_line_bytes": round(size / args.lines),
        "broken_lines": broken,
        "generate_s": round(gen_s, 1),
        "results": results,
        "speedup_wall": round(ratio, 2),
        "speedup_cpu": round(cpu_ratio, 2),
        "counts_agree": agree,
        "targets": {"speedup": TARGET_RATIO, "mb_per_s": TARGET_MBPS, "met": ok},
        "python": sys.version.split()[0],
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "cpus_visible": os.cpu_count(),
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"file: {args.lines:,} lines, {size / 1e6:,.1f} MB (avg {size // args.lines:,} B/line), {broken} broken; one core")
        print(f"{'validator':<16}{'cpu s':>8}{'MB/s':>8}{'lines/s':>10}  |{'wall s':>8}{'MB/s':>8}{'lines/s':>10}  |{'valid':>9}{'rejected':>9}")
        for name, r in results.items():
            cpu_lps = round(args.lines / r["cpu_s"])
            print(f"{name:<16}{r['cpu_s']:>8.2f}{r['cpu_mb_per_s']:>8.1f}{cpu_lps:>10,}  |{r['wall_s']:>8.2f}{r['mb_per_s']:>8.1f}"
                  f"{r['lines_per_s']:>10,}  |{r['valid']:>9,}{r['rejected']:>9,}")
        print(f"speedup: {cpu_ratio:.2f}x cpu, {ratio:.2f}x wall (target >= {TARGET_RATIO:g}x); gymverl {g['cpu_mb_per_s']:.1f} MB/s cpu, "
              f"{g['mb_per_s']:.1f} MB/s wall (target >= {TARGET_MBPS:g}); counts agree: {agree}; load average {os.getloadavg()[0]:.1f}")
        print("targets met" if ok else "TARGETS MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
