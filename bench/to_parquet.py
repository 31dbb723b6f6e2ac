"""Benchmark `gymverl to-parquet`: constant memory and throughput against pandas, side by side.

Targets (issue 3): a generated 1,000,000-rollout file converts with peak RSS under 500 MB and no
more than 10% above the 100,000-rollout run; throughput at least 3x
`pandas.read_json(lines=True)` + `DataFrame.to_parquet` on the same file.

Each measurement runs in a fresh subprocess (peak RSS = that process's ru_maxrss). Throughput is
wall-clock lines per second, both sides measured in the same run, alternating over `--rounds`
(default 3) and compared by their medians; CPU seconds (user + sys,
workers included) are printed beside it because on a shared machine wall time also measures the
neighbours. pandas is single-process; so are the gymverl configs except `sft-2workers`. The generated
rollouts are the sample rollouts (full NeMo Gym Responses-API objects: math answers and tool-call
conversations, 4 per task) with task-specific prompts, tasks interleaved as a concurrent collector
writes them. pandas runs on the 100k file (on 1M it
needs many GB of RAM and minutes; add --pandas-at-1m to try).

    .venv/bin/python bench/to_parquet.py                 # 100k and 1M
    .venv/bin/python bench/to_parquet.py --sizes 20000   # quick look
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

import orjson

REPO = Path(__file__).resolve().parent.parent

SAMPLE = REPO / "sample_data" / "rollouts.jsonl"


def _templates() -> list[dict]:
    """The 20 sample rollouts (full NeMo Gym Responses-API objects: 5 tasks x 4), as generation templates.

    `response.metadata` is dropped: real rollouts carry it as `{}`, an empty struct that
    `DataFrame.to_parquet` cannot write, and the pandas baseline must be able to finish.
    """
    out = []
    for line in SAMPLE.read_text().splitlines():
        rec = json.loads(line)
        rec["response"].pop("metadata", None)
        out.append(rec)
    return out


def _rollout(templates: list[dict], task: int, r: int) -> dict:
    """Rollout `r` of generated task `task`: a sample rollout with a task-specific prompt and ids."""
    base = templates[(task % 5) * 4 + r]
    rcp = dict(base["responses_create_params"])
    items = [dict(m) for m in rcp["input"]]
    items[-1]["content"] = f"{items[-1]['content']} (case {task})"
    rcp["input"] = items
    response = dict(base["response"])
    response["id"] = f"resp_{task}_{r}"
    return {**base, "responses_create_params": rcp, "response": response, "_ng_task_index": task, "_ng_rollout_index": r}


def generate(path: Path, n: int) -> None:
    """Write `n` rollouts, 4 per task, tasks interleaved in blocks of 64 (like a concurrent collector)."""
    if path.exists() and path.stat().st_size > 0:
        return
    tmp = path.with_suffix(".tmp")
    templates = _templates()
    with open(tmp, "wb", buffering=1 << 20) as f:
        written = 0
        block = 0
        while written < n:
            tasks = range(block * 64, block * 64 + 64)
            for r in range(4):
                for t in tasks:
                    if written >= n:
                        break
                    f.write(orjson.dumps(_rollout(templates, t, r)) + b"\n")
                    written += 1
            block += 1
    tmp.replace(path)


CHILD_OURS = """
import json, resource, sys, time
from gymverl.convert import ConvertOptions, convert
from gymverl.select import SelectOptions
src, out, fmt, sel, tmp, workers = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4]), sys.argv[5], int(sys.argv[6])
t, c = time.perf_counter(), time.process_time()
s = convert(src, out, ConvertOptions(fmt=fmt, select=SelectOptions(**sel), tmp_dir=tmp, shard_size=500000, workers=workers))
dt = time.perf_counter() - t
u, ch = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
# Peak RSS of the whole job: this process plus (for worker runs) each worker at its peak.
rss = (u.ru_maxrss + (workers * ch.ru_maxrss if workers > 1 else 0)) / 1024
print(json.dumps({"seconds": dt, "cpu": time.process_time() - c + ch.ru_utime + ch.ru_stime, "rss_mb": rss,
                  "lines": s.lines, "rows": sum(s.rows.values()), "accounted": s.accounted}))
"""

CHILD_PANDAS = """
import json, resource, sys, time
import pandas as pd
t, c = time.perf_counter(), time.process_time()
df = pd.read_json(sys.argv[1], lines=True)
df.to_parquet(sys.argv[2])
dt = time.perf_counter() - t
print(json.dumps({"seconds": dt, "cpu": time.process_time() - c, "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "rows": len(df)}))
"""


def run_child(code: str, *args: str) -> dict:
    """Run one measurement in a fresh interpreter; returns its JSON report."""
    res = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=REPO)
    if res.returncode != 0:
        raise SystemExit(f"benchmark child failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


CONFIGS = {  # name: (format, selection, worker processes)
    "sft": ("sft", {}, 1),  # streams row by row
    "sft-grouped": ("sft", {"best_of_n": 2, "drop_unsolved": True}, 1),  # spills to task partitions
    "rl": ("rl", {"drop_solved": True}, 1),  # one row per task
    "sft-2workers": ("sft", {}, 2),  # --workers 2: scaling on more cores
}


def _median(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "gymverl-bench-to-parquet")
    ap.add_argument("--pandas-at-1m", action="store_true", help="Also run pandas on sizes above 100k (needs lots of RAM).")
    ap.add_argument("--rounds", type=int, default=3, help="Alternating rounds (gymverl configs, then pandas) at sizes where pandas runs; medians are compared.")
    args = ap.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    results: dict[tuple[str, int], list[dict]] = {}
    pandas: dict[int, list[dict]] = {}
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, workdir {args.workdir}")
    for n in args.sizes:
        src = args.workdir / f"rollouts-{n}.jsonl"
        t = time.perf_counter()
        generate(src, n)
        print(f"\n{n:,} rollouts: {src.stat().st_size / 1e6:.0f} MB (ready in {time.perf_counter() - t:.0f} s)")
        with_pandas = n <= 100_000 or args.pandas_at_1m
        # On a shared machine one run can be slowed by a neighbour: alternate both sides over rounds.
        rounds = max(1, args.rounds) if with_pandas else 1
        for rnd in range(1, rounds + 1):
            tag = f"[{rnd}/{rounds}] " if rounds > 1 else ""
            for name in args.configs:
                fmt, sel, workers = CONFIGS[name]
                out = args.workdir / f"out-{name}-{n}"
                r = run_child(CHILD_OURS, str(src), str(out), fmt, json.dumps(sel), str(args.workdir), str(workers))
                assert r["accounted"] == r["lines"] == n, r
                results.setdefault((name, n), []).append(r)
                print(f"  {tag}gymverl {name:12s} wall {r['seconds']:7.1f} s  cpu {r['cpu']:7.1f} s  {n / r['cpu']:9,.0f} lines/cpu-s  peak RSS {r['rss_mb']:6.0f} MB  rows {r['rows']:,}")
            if with_pandas:
                p = run_child(CHILD_PANDAS, str(src), str(args.workdir / f"pandas-{n}.parquet"))
                pandas.setdefault(n, []).append(p)
                print(f"  {tag}pandas  read_json+to_parquet wall {p['seconds']:7.1f} s  cpu {p['cpu']:7.1f} s  {n / p['cpu']:9,.0f} lines/cpu-s  peak RSS {p['rss_mb']:6.0f} MB")

    print("\ntargets (medians over rounds)")
    ok = True
    for n, ps in pandas.items():
        p_wall, p_cpu = _median(ps, "seconds"), _median(ps, "cpu")
        print(f"  pandas at {n:,}: wall {p_wall:.1f} s, cpu {p_cpu:.1f} s")
        for name in args.configs:
            rs = results[(name, n)]
            wall, cpu = _median(rs, "seconds"), _median(rs, "cpu")
            speedup = p_wall / wall
            good = speedup >= 3.0
            ok &= good
            print(
                f"  throughput {name:12s} at {n:,}: {speedup:5.1f}x pandas (wall {wall:.1f} s; {p_cpu / cpu:.1f}x by CPU time, {cpu:.1f} s)"
                f"  (target >= 3x)  {'PASS' if good else 'FAIL'}"
            )
    if len(args.sizes) >= 2:
        small, big = min(args.sizes), max(args.sizes)
        for name in args.configs:
            if CONFIGS[name][2] > 1:
                continue  # the memory target is for the default single-process run
            a = max(r["rss_mb"] for r in results[(name, small)])
            b = max(r["rss_mb"] for r in results[(name, big)])
            good = b < 500 and b <= 1.10 * a
            ok &= good
            print(f"  memory {name:12s}: {b:.0f} MB at {big:,} vs {a:.0f} MB at {small:,} ({(b / a - 1) * 100:+.1f}%)  (target < 500 MB, <= +10%)  {'PASS' if good else 'FAIL'}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
