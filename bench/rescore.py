"""Benchmark `gymverl rescore` (the whole pipeline: read, validate, /verify, write in order).

Targets (issue 7), all ratios measured in one run:
1. fixed 20 ms latency endpoint, --concurrency 64: >= 80% of the ideal 64 / 0.020 s = 3,200 rows/s;
2. the same endpoint: >= 20x the one-request-at-a-time pattern (the conceptual wrapper in the
   NeMo Gym docs: `requests.post(url + "/verify", json=row)` per row, in a loop);
3. client overhead: >= 2,000 rows/s with gymverl on one core (client pinned to one CPU, the
   zero-latency endpoint pinned to another); also reported as client CPU seconds per row;
4. a real NeMo Gym `mcqa` server: gymverl vs one-at-a-time vs NeMo Gym's own async client
   (`nemo_gym.server_utils.request`, what its rollout collection uses, driven with the same
   concurrency). nemo-gym 0.4.0 has no re-verification command (`gym eval reverify` came later),
   so its own client is the fairest "what the server can serve" reference. Target: >= 90%.

5. side by side with `gym eval reverify` of nemo-gym 0.7.0 (its own re-verification command) on
   the same mcqa collection (rollouts + `<stem>_materialized_inputs.jsonl`) at the same
   concurrency. `gym eval reverify` starts its own servers; its time is taken from its
   "Verifying with N concurrent requests" line to its end-of-loop line (server start, payload
   preparation and shutdown excluded, which favours it; it leaves the servers it started running
   when it exits, so the bench ends its process group). gymverl runs against a 0.7.0 mcqa server
   the bench starts itself (`ng_run`, one shared venv linked as every server's `.venv`).
   `--ng07-env VENV` (default: $GYMVERL_NEMO_GYM_07_ENV, else .nemo-gym-venv) selects the venv.

The local endpoint is tests/fake_verify_server.py in `--fast` mode (fixed answer, no parsing).

    .venv/bin/python bench/rescore.py            # all four (the real server takes ~1-2 min to start)
    .venv/bin/python bench/rescore.py --no-real  # local endpoint only
    .venv/bin/python bench/rescore.py --only-reverify --reverify-rows 1000   # 5 only
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from fake_verify_server import FakeServer  # noqa: E402

from gymverl.rescore import rescore_file  # noqa: E402


def make_rows(path: Path, n: int) -> None:
    """n sample_data rollouts (cycled, unique ids): ~1.9 KB per line, like a short NeMo Gym rollout."""
    base = [json.loads(x) for x in (REPO / "sample_data" / "rollouts.jsonl").read_text().splitlines()]
    with open(path, "w") as f:
        for i in range(n):
            r = base[i % len(base)]
            r = dict(r, response=dict(r["response"], id=f"resp_{i}"))
            f.write(json.dumps(r) + "\n")


def pin(cpu: int | None) -> Callable[[], None] | None:
    """preexec_fn pinning a child process to one CPU (None: no pinning)."""
    if cpu is None:
        return None
    return lambda: os.sched_setaffinity(0, {cpu})


def cpus() -> list[int]:
    return sorted(os.sched_getaffinity(0))


def timed_rescore(inp: Path, out: Path, servers: list[str], concurrency: int) -> dict[str, Any]:
    """One rescore run: wall time, rows/s, client CPU seconds."""
    for p in (out, out.with_name(out.stem + ".failures.jsonl")):
        p.unlink(missing_ok=True)
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    s = rescore_file(inp, out, servers, concurrency=concurrency)
    wall = time.perf_counter() - t0
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    assert s.complete and s.failed == 0, s.to_dict()
    return {"rows": s.rescored, "seconds": wall, "rows_per_s": s.rescored / wall, "client_cpu_s": cpu, "rows_per_cpu_s": s.rescored / cpu}


def one_at_a_time(inp: Path, url: str, n: int) -> dict[str, Any]:
    """The conceptual wrapper from the NeMo Gym docs: one blocking POST per row, in a loop."""
    import requests

    rows = [json.loads(x) for x in inp.read_text().splitlines()[:n]]
    session = requests.Session()  # the kindest version of it: keep-alive connection reuse
    t0 = time.perf_counter()
    for row in rows:
        body = {k: v for k, v in row.items() if k != "reward"}
        body["responses_create_params"] = {k: v for k, v in body["responses_create_params"].items() if v is not None}
        r = session.post(url + "/verify", json=body, timeout=60)
        r.raise_for_status()
        r.json()["reward"]
    wall = time.perf_counter() - t0
    return {"rows": n, "seconds": wall, "rows_per_s": n / wall}


NEMO_GYM_CLIENT = r'''
import asyncio, sys, time, orjson
from nemo_gym.server_utils import (GlobalAIOHTTPAsyncClientConfig, set_global_aiohttp_client,
    request, raise_for_status, get_response_json)
path, url, conc = sys.argv[1], sys.argv[2], int(sys.argv[3])
rows = [orjson.loads(l) for l in open(path, "rb")]
async def main():
    set_global_aiohttp_client(GlobalAIOHTTPAsyncClientConfig())
    sem = asyncio.Semaphore(conc)
    async def one(row):
        body = {k: v for k, v in row.items() if k != "reward"}
        body["responses_create_params"] = {k: v for k, v in body["responses_create_params"].items() if v is not None}
        async with sem:
            res = await request("POST", url + "/verify", json=body)
            await raise_for_status(res)
            return (await get_response_json(res))["reward"]
    t0 = time.perf_counter()
    out = await asyncio.gather(*(one(r) for r in rows))
    print(orjson.dumps({"rows": len(out), "seconds": time.perf_counter() - t0}).decode())
asyncio.run(main())
'''


def nemo_gym_client(env: Path, inp: Path, url: str, concurrency: int) -> dict[str, Any]:
    """NeMo Gym's own aiohttp client (its rollout collection's request path), same rows and concurrency."""
    res = subprocess.run(
        [str(env / "bin" / "python"), "-c", NEMO_GYM_CLIENT, str(inp), url, str(concurrency)],
        capture_output=True, text=True, timeout=600,
    )
    if res.returncode != 0:
        raise RuntimeError(res.stderr[-2000:])
    d = json.loads(res.stdout.strip().splitlines()[-1])
    d["rows_per_s"] = d["rows"] / d["seconds"]
    return d


def mcqa_rows(env: Path, path: Path, n: int) -> None:
    """n mcqa rollouts built from NeMo Gym's own mcqa example tasks: right, wrong and unparsable answers."""
    from gymverl.nemo_gym import package_dir
    from gymverl.reward import response_from_text

    tasks = [json.loads(x) for x in (package_dir(env) / "resources_servers" / "mcqa" / "data" / "example.jsonl").read_text().splitlines()]
    answers = ["Thinking it through, the answer is \\boxed{%s}.", "\\boxed{A}", "I am not sure."]
    with open(path, "w") as f:
        for i in range(n):
            t = tasks[i % len(tasks)]
            text = answers[i % 3] % t["expected_answer"] if "%s" in answers[i % 3] else answers[i % 3]
            row = dict(t, response=response_from_text(text, t["responses_create_params"]), reward=0.0, _ng_task_index=i % len(tasks))
            f.write(json.dumps(row) + "\n")


# ---- 5: gym eval reverify (nemo-gym >= 0.5) -------------------------------------------------------

# Server folders the mcqa config starts (resources server, its simple agent, the policy model):
# each gets a `.venv` link to the one NeMo Gym venv (uv cannot build per-server venvs on a Python
# older than nemo-gym 0.7.0's Requires-Python).
NG07_FOLDERS = (
    "resources_servers/mcqa", "responses_api_agents/simple_agent", "responses_api_models/openai_model", "environment_servers/legacy_agent",
)


def ng07_env(arg: Path | None) -> Path:
    """The nemo-gym 0.7.0 venv: --ng07-env, $GYMVERL_NEMO_GYM_07_ENV, else .nemo-gym-venv in the repo."""
    env = arg or Path(os.environ.get("GYMVERL_NEMO_GYM_07_ENV") or REPO / ".nemo-gym-venv")
    if not (env / "bin" / "gym").exists():
        raise SystemExit(f"{env} has no nemo-gym >= 0.5 (bin/gym missing): pass --ng07-env VENV or run make setup")
    return env


def ng07_site(env: Path) -> Path:
    """The venv's site-packages (NeMo Gym's config paths are relative to it)."""
    (site,) = (env / "lib").glob("python3*/site-packages")
    return site


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ng07_server_args(env: Path, work: Path, head: int, port: int) -> tuple[list[str], list[str]]:
    """Config and overrides that start mcqa (+ agent, + placeholder policy) on fixed loopback ports."""
    site = ng07_site(env)
    links = work / "venvs"
    for folder in NG07_FOLDERS:
        d = links / folder
        d.mkdir(parents=True, exist_ok=True)
        if not (d / ".venv").exists():
            (d / ".venv").symlink_to(env)
    return [
        "+policy_base_url=http://127.0.0.1:9/v1", "+policy_api_key=dummy", "+policy_model_name=dummy",
        "++head_server.host=127.0.0.1", f"++head_server.port={head}", "++model_endpoint_readiness_timeout_seconds=0",
        f"++mcqa.resources_servers.mcqa.port={port}", "+skip_venv_if_present=true", f"+uv_venv_dir={links}",
    ], [str(site / "resources_servers/mcqa/configs/mcqa.yaml"), str(site / "responses_api_models/openai_model/configs/openai_model.yaml")]


def ng07_subprocess_env(env: Path, work: Path) -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    ray_tmp = Path(tempfile.mkdtemp(prefix="gvb-ray-", dir="/tmp"))  # AF_UNIX paths: keep it short
    import atexit
    import shutil

    atexit.register(shutil.rmtree, ray_tmp, ignore_errors=True)
    e.update(
        PATH=f"{env / 'bin'}:{e.get('PATH', '')}", PYTHONUNBUFFERED="1", RAY_TMPDIR=str(ray_tmp),
        RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_USAGE_STATS_ENABLED="0",
    )
    return e


def run_lines(argv: list[str], env: dict[str, str], cwd: Path, until: Callable[[str], bool] | None, timeout: float) -> tuple[Any, list[tuple[float, str]]]:
    """Start argv in its own process group; read its output lines (timestamped) until `until`
    matches one (then return the live process) or it exits. Raises on timeout."""
    import selectors
    import signal

    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    lines: list[tuple[float, str]] = []
    sel = selectors.DefaultSelector()
    assert proc.stdout is not None
    sel.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    buf = b""
    try:
        while True:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{argv[1:3]} did not finish within {timeout:.0f} s; last output: {[l for _, l in lines[-5:]]}")
            if not sel.select(timeout=1.0):
                if proc.poll() is not None:
                    # Exited, but its children keep the pipe open: `gym eval reverify` (0.7.0)
                    # leaves the servers it started running. End that process group.
                    kill_group(proc.pid)
                    return proc, lines
                continue
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                proc.wait(timeout=60)
                return proc, lines
            buf += chunk
            *done, buf = buf.split(b"\n")
            now = time.perf_counter()
            for raw in done:
                line = raw.decode(errors="replace")
                lines.append((now, line))
                if until is not None and until(line):
                    return proc, lines
    except BaseException:
        stop_group(proc)
        raise
    finally:
        sel.close()


def kill_group(pgid: int) -> None:
    """SIGTERM, then SIGKILL, what is left of a process group whose leader has exited."""
    import signal

    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        time.sleep(3)


def stop_group(proc: Any) -> None:
    """SIGTERM the process group (Ray, servers), then SIGKILL what is left."""
    import signal

    if proc is None or proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGINT, 20), (signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def ng07_collection(env: Path, folder: Path, n: int) -> Path:
    """A 0.7.0-shaped mcqa collection of n rollouts: `r.jsonl` (task fields the verifier does not
    declare left out, `_ng_task_index`/`_ng_rollout_index`, agent_ref) and
    `r_materialized_inputs.jsonl` (one line per (task, repeat))."""
    from gymverl.reward import response_from_text

    site = ng07_site(env)
    tasks = [json.loads(x) for x in (site / "resources_servers/mcqa/data/example.jsonl").read_text().splitlines()]
    answers = ["Thinking it through, the answer is \\boxed{%s}.", "\\boxed{A}", "I am not sure."]
    agent = {"type": "responses_api_agents", "name": "mcqa_simple_agent"}
    repeats = max(1, -(-n // len(tasks)))
    rows, mat = [], []
    for i in range(n):
        t, r = i % len(tasks), i // len(tasks)
        task = dict(tasks[t], agent_ref=agent)
        text = answers[i % 3] % task["expected_answer"] if "%s" in answers[i % 3] else answers[i % 3]
        # 0.7.0 keeps only the fields the verifier's response echoes (mcqa: expected_answer);
        # options, grading_mode and uuid are in the materialized inputs only.
        line = {k: v for k, v in task.items() if k not in ("options", "grading_mode", "uuid")}
        rows.append(dict(line, response=response_from_text(text, task["responses_create_params"]), reward=0.0, _ng_task_index=t, _ng_rollout_index=r))
    for r in range(repeats):
        for t, task in enumerate(tasks):
            if r * len(tasks) + t < n:
                mat.append(dict(task, agent_ref=agent, _ng_task_index=t, _ng_rollout_index=r))
    out = folder / "r.jsonl"
    out.write_text("".join(json.dumps(x) + "\n" for x in rows))
    (folder / "r_materialized_inputs.jsonl").write_text("".join(json.dumps(x) + "\n" for x in mat))
    return out


def mcqa_url(head: int) -> str:
    """The mcqa server's URL, from the head server's /server_instances."""
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{head}/server_instances", timeout=30) as resp:  # noqa: S310 - loopback
        instances = json.loads(resp.read())
    for inst in instances:
        if "mcqa" in str(inst.get("process_name", "")) and "agent" not in str(inst.get("process_name", "")):
            return str(inst["url"]).rstrip("/")
    raise RuntimeError(f"no mcqa server among {instances}")


def gym_reverify(env: Path, work: Path, rollouts: Path, concurrency: int, timeout: float = 900) -> dict[str, Any]:
    """`gym eval reverify` on the collection: its verification loop's wall time, from its output."""
    args, configs = ng07_server_args(env, work, free_port(), free_port())
    out = work / "gym_reverified.jsonl"
    argv = [str(env / "bin" / "gym"), "eval", "reverify"]
    for c in configs:
        argv += ["--config", c]
    argv += ["--inputs", str(rollouts.with_name("r_materialized_inputs.jsonl")), "--rollouts", str(rollouts), "-o", str(out),
             "--concurrency", str(concurrency), "--disable-aggregation", "--overwrite", *args]
    t0 = time.perf_counter()
    proc, lines = run_lines(argv, ng07_subprocess_env(env, work), ng07_site(env), None, timeout)
    total = time.perf_counter() - t0
    start = next((t for t, l in lines if "concurrent requests" in l), None)
    end = next((t for t, l in lines if "aggregate-metrics computation" in l or "Computing aggregate metrics" in l), None)
    if proc.returncode != 0 or start is None or end is None:
        raise RuntimeError(f"gym eval reverify failed (exit {proc.returncode}): {[l for _, l in lines[-15:]]}")
    rows = [json.loads(x) for x in out.read_text().splitlines() if x.strip()]
    seconds = end - start
    return {"rows": len(rows), "seconds": seconds, "rows_per_s": len(rows) / seconds, "command_seconds": total,
            "rewards": {(r["_ng_task_index"], r["_ng_rollout_index"]): r["reward"] for r in rows}}


def ng07_side_by_side(env: Path, work: Path, n: int, concurrency: int, rounds: int) -> dict[str, Any]:
    """gymverl rescore vs `gym eval reverify` (0.7.0), same file, same concurrency; rewards compared."""
    coll = work / "coll"
    coll.mkdir(parents=True, exist_ok=True)
    rollouts = ng07_collection(env, coll, n)
    head, port = free_port(), free_port()
    args, configs = ng07_server_args(env, work, head, port)
    argv = [str(env / "bin" / "ng_run"), "+config_paths=[" + ",".join(configs) + "]", *args]
    t0 = time.perf_counter()
    proc, lines = run_lines(argv, ng07_subprocess_env(env, work), ng07_site(env), lambda l: l.startswith("All ") and "servers ready!" in l, 600)
    try:
        if proc.poll() is not None:
            raise RuntimeError(f"ng_run exited {proc.returncode}: {[l for _, l in lines[-60:]]}")
        started = time.perf_counter() - t0
        url = mcqa_url(head)
        out = work / "gymverl_rescored.jsonl"
        timed_rescore(rollouts, out, [url], concurrency)  # warm-up
        gv = [timed_rescore(rollouts, out, [url], concurrency) for _ in range(rounds)]
        ours = {(r["_ng_task_index"], r["_ng_rollout_index"]): r["reward"] for r in map(json.loads, out.read_text().splitlines())}
    finally:
        stop_group(proc)
    gym = [gym_reverify(env, work, rollouts, concurrency) for _ in range(rounds)]
    theirs = gym[-1].pop("rewards")
    for g in gym:
        g.pop("rewards", None)
    best_gv, best_gym = max(r["rows_per_s"] for r in gv), max(r["rows_per_s"] for r in gym)
    return {
        "rows": n, "concurrency": concurrency, "server_start_s": started, "gymverl": gv, "gym_eval_reverify": gym,
        "gymverl_rows_per_s": best_gv, "gym_eval_reverify_rows_per_s": best_gym, "gymverl_vs_gym_eval_reverify": best_gv / best_gym,
        "same_rewards": ours == theirs, "rows_compared": len(theirs),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=8000, help="rows for the 20 ms and zero-latency runs")
    ap.add_argument("--real-rows", type=int, default=3000)
    ap.add_argument("--real-concurrency", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds on the real server (best of each is reported)")
    ap.add_argument("--no-real", action="store_true", help="skip the real NeMo Gym server")
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--no-reverify", action="store_true", help="skip the side-by-side with gym eval reverify (nemo-gym 0.7.0)")
    ap.add_argument("--only-reverify", action="store_true", help="run only the side-by-side with gym eval reverify")
    ap.add_argument("--reverify-rows", type=int, default=3000)
    ap.add_argument("--reverify-rounds", type=int, default=1)
    ap.add_argument("--ng07-env", type=Path, default=None, help="nemo-gym 0.7.0 venv (default $GYMVERL_NEMO_GYM_07_ENV, else .nemo-gym-venv)")
    args = ap.parse_args()
    if args.only_reverify:
        tmp = Path(tempfile.mkdtemp(prefix="gymverl-bench-rescore-"))
        r = ng07_side_by_side(ng07_env(args.ng07_env), tmp, args.reverify_rows, args.real_concurrency, args.reverify_rounds)
        print_reverify(r)
        if args.json:
            args.json.write_text(json.dumps({"gym_eval_reverify": r}, indent=2))
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
        return
    results: dict[str, Any] = {"cpus": len(cpus()), "loadavg": os.getloadavg()}
    tmp = Path(tempfile.mkdtemp(prefix="gymverl-bench-rescore-"))
    inp = tmp / "rows.jsonl"
    make_rows(inp, args.rows)
    out = tmp / "out.jsonl"

    # 1 + 2: fixed 20 ms latency.
    with FakeServer("--fast", "--latency", "0.02") as srv:
        timed_rescore(inp, out, [srv.url], 64)  # warm-up (imports, first connections)
        c64 = timed_rescore(inp, out, [srv.url], 64)
        seq = one_at_a_time(inp, srv.url, 150)
    # Diagnostic: the same at 100 ms (ideal 640 rows/s) needs 5x less CPU, so on a loaded machine
    # it shows whether a shortfall at 20 ms is the concurrency design or a lack of free CPU.
    with FakeServer("--fast", "--latency", "0.1") as srv:
        c64_100 = timed_rescore(inp.with_name("rows.jsonl"), out, [srv.url], 64)
    results["latency_100ms"] = {"concurrency_64": c64_100, "share_of_ideal": c64_100["rows_per_s"] / 640}
    ideal = 64 / 0.020
    results["latency_20ms"] = {
        "concurrency_64": c64, "ideal_rows_per_s": ideal, "share_of_ideal": c64["rows_per_s"] / ideal,
        "one_at_a_time": seq, "speedup_vs_one_at_a_time": c64["rows_per_s"] / seq["rows_per_s"],
    }

    # 3: client overhead on one core (server on another one).
    cs = cpus()
    client_cpu, server_cpu = (cs[0], cs[1]) if len(cs) >= 2 else (None, None)
    if client_cpu is not None:
        os.sched_setaffinity(0, {client_cpu})
    srv = FakeServer("--fast")
    srv_pre = pin(server_cpu)
    import subprocess as _sp

    srv.proc = _sp.Popen([sys.executable, str(REPO / "tests" / "fake_verify_server.py"), "--port", "0", "--fast"],
                         stdout=_sp.PIPE, stderr=_sp.DEVNULL, text=True, preexec_fn=srv_pre)
    srv.port = int(srv.proc.stdout.readline().split()[1])  # type: ignore[union-attr]
    try:
        timed_rescore(inp, out, [srv.url], 64)
        zero = timed_rescore(inp, out, [srv.url], 64)
    finally:
        srv.stop()
        os.sched_setaffinity(0, set(cs))
    results["zero_latency_one_core"] = dict(zero, client_cpu=client_cpu, server_cpu=server_cpu)

    # 4: real NeMo Gym mcqa server.
    if not args.no_real:
        from gymverl.nemo_gym import find_env, running_resources_servers

        env = find_env()
        real_inp = tmp / "mcqa.jsonl"
        mcqa_rows(env, real_inp, args.real_rows)
        t0 = time.perf_counter()
        with running_resources_servers(["mcqa"], env=env) as servers:
            started = time.perf_counter() - t0
            url = servers.url("mcqa")
            conc = args.real_concurrency
            one_at_a_time(real_inp, url, 200)  # warm-up
            runs: dict[str, list[dict[str, Any]]] = {"gymverl": [], "nemo_gym_client": []}
            for _ in range(args.rounds):  # alternate, so load changes on a shared machine hit both alike
                runs["nemo_gym_client"].append(nemo_gym_client(env, real_inp, url, conc))
                runs["gymverl"].append(timed_rescore(real_inp, out, [url], conc))
            seq = one_at_a_time(real_inp, url, 500)
        best = {k: max(r["rows_per_s"] for r in v) for k, v in runs.items()}
        results["real_mcqa"] = {
            "server_start_s": started, "rows": args.real_rows, "concurrency": conc, "runs": runs,
            "one_at_a_time": seq, "gymverl_rows_per_s": best["gymverl"], "nemo_gym_client_rows_per_s": best["nemo_gym_client"],
            "gymverl_vs_nemo_gym_client": best["gymverl"] / best["nemo_gym_client"],
            "gymverl_vs_one_at_a_time": best["gymverl"] / seq["rows_per_s"],
            "note": "nemo-gym 0.4.0 has no re-verification command; reference = its own async client at the same concurrency",
        }

    # 5: gym eval reverify (nemo-gym 0.7.0), same file and concurrency.
    if not args.no_reverify:
        results["gym_eval_reverify"] = ng07_side_by_side(ng07_env(args.ng07_env), tmp / "ng07", args.reverify_rows, args.real_concurrency, args.reverify_rounds)

    l20 = results["latency_20ms"]
    print("| measurement | rows/s | target | ok |")
    print("| --- | ---: | --- | --- |")
    print(f"| 20 ms endpoint, concurrency 64 | {l20['concurrency_64']['rows_per_s']:.0f} ({l20['share_of_ideal']:.0%} of ideal {ideal:.0f}) | >= 80% of ideal | {l20['share_of_ideal'] >= 0.8} |")
    print(f"| 20 ms endpoint, one at a time | {l20['one_at_a_time']['rows_per_s']:.1f} (gymverl {l20['speedup_vs_one_at_a_time']:.0f}x) | >= 20x | {l20['speedup_vs_one_at_a_time'] >= 20} |")
    l100 = results["latency_100ms"]
    print(f"| 100 ms endpoint, concurrency 64 (diagnostic) | {l100['concurrency_64']['rows_per_s']:.0f} ({l100['share_of_ideal']:.0%} of ideal 640) | | |")
    z = results["zero_latency_one_core"]
    print(f"| zero-latency endpoint, client on one core | {z['rows_per_s']:.0f} ({z['rows_per_cpu_s']:.0f} rows per client CPU second) | >= 2,000 | {z['rows_per_s'] >= 2000} |")
    if "real_mcqa" in results:
        r = results["real_mcqa"]
        print(f"| real mcqa, gymverl, concurrency {r['concurrency']} | {r['gymverl_rows_per_s']:.0f} | | |")
        print(f"| real mcqa, NeMo Gym's own client, concurrency {r['concurrency']} | {r['nemo_gym_client_rows_per_s']:.0f} (gymverl {r['gymverl_vs_nemo_gym_client']:.0%}) | >= 90% | {r['gymverl_vs_nemo_gym_client'] >= 0.9} |")
        print(f"| real mcqa, one at a time | {r['one_at_a_time']['rows_per_s']:.0f} (gymverl {r['gymverl_vs_one_at_a_time']:.1f}x) | | |")
    if "gym_eval_reverify" in results:
        print_reverify(results["gym_eval_reverify"], header=False)
    print(f"\n{results['cpus']} CPUs, load average {results['loadavg'][0]:.1f} at start")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)


def print_reverify(r: dict[str, Any], header: bool = True) -> None:
    if header:
        print("| measurement | rows/s | target | ok |")
        print("| --- | ---: | --- | --- |")
    print(f"| 0.7.0 mcqa, gymverl rescore, concurrency {r['concurrency']}, {r['rows']} rows | {r['gymverl_rows_per_s']:.0f} | | |")
    print(
        f"| 0.7.0 mcqa, gym eval reverify, same file and concurrency | {r['gym_eval_reverify_rows_per_s']:.0f} "
        f"(gymverl {r['gymverl_vs_gym_eval_reverify']:.0%}; same rewards on {r['rows_compared']} rows: {r['same_rewards']}) | >= 90% | {r['gymverl_vs_gym_eval_reverify'] >= 0.9} |"
    )


if __name__ == "__main__":
    main()
