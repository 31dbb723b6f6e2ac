"""Collect rollouts with NeMo Gym's own collector, then check what it wrote.

gymverl never re-implements rollout collection: it builds the argument list of the installed
NeMo Gym's collector (`gym eval run --no-serve ...` where that exists, else the legacy
`ng_collect_rollouts +key=value ...`; which one, and how each option is spelled, is read from the
installed NeMo Gym, not assumed), runs it as a subprocess in its own process group, follows the
growing output file for progress, forwards Ctrl-C, and validates the output line by line.

Before starting it checks what would otherwise fail late: every task line is valid, the head
server and each agent the tasks name are reachable, and an existing output is not silently lost
(`overwrite=True` replaces it, `resume=True` continues it with NeMo Gym's own resume).

The collector writes its output file itself, incrementally (that is what makes NeMo Gym's resume
work and keeps partial output after a crash), so that file is not written atomically by gymverl.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import orjson

from gymverl import proc
from gymverl.jsonl import MAX_SHOWN, InputError, Rejections, Tally, check_input_path, iter_lines
from gymverl.limits import DEFAULT_HEAD_URL
from gymverl.overrides import override
from gymverl.progress import ROWS, OnProgress, ProgressEvent
from gymverl.nemo_gym import (
    NemoGymError,
    NemoGymServers,
    find_env,
    nemo_gym_version,
    package_dir,
    resources_server_config,
    subprocess_env,
)
from gymverl.records import ValidationSummary, agent_name, iter_checked, validate_file
from gymverl.errors import EXIT_FAILED, EXIT_USAGE, GymverlError
from gymverl.sidecars import FailureReport, rollout_pairs, settle_failures

# Our option -> the `gym eval run` flag that carries it (checked against `gym eval run --help`).
GYM_FLAGS = {
    "agent": "--agent",
    "input": "--input",
    "output": "--output",
    "limit": "--limit",
    "num_repeats": "--num-repeats",
    "concurrency": "--concurrency",
    "resume": "--resume",
}
# Our option -> the RolloutCollectionConfig field that carries it in the legacy Hydra spelling.
HYDRA_KEYS = {
    "agent": "agent_name",
    "input": "input_jsonl_fpath",
    "output": "output_jsonl_fpath",
    "limit": "limit",
    "num_repeats": "num_repeats",
    "concurrency": "num_samples_in_parallel",
    "resume": "resume_from_cache",
}



class CollectError(GymverlError):
    """Collection cannot start or failed; `code` is the CLI exit code (2 usage, 1 failed/rejected)."""

    def __init__(self, message: str, code: int = EXIT_USAGE, details: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message, code)
        self.details = details or []


# ---- which collector, and how it is spelled ----------------------------------------------------


@dataclass(frozen=True)
class Collector:
    """The installed NeMo Gym collector: base command, option spelling ("flags" or "hydra"), version."""

    env: Path
    command: tuple[str, ...]
    style: str
    options: dict[str, str]
    version: str | None = None

    def supports(self, option: str) -> bool:
        """True when this collector has `option` (one of GYM_FLAGS' keys)."""
        return option in self.options


def _gym_flags(env: Path) -> dict[str, str] | None:
    """The collection flags `gym eval run --help` lists, or None when there is no usable `gym eval run`."""
    gym = env / "bin" / "gym"
    if not gym.exists():
        return None
    try:
        out = subprocess.run(
            [str(gym), "eval", "run", "--help"],
            capture_output=True,
            text=True,
            timeout=60,
            env=subprocess_env(env),
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = out.stdout
    if out.returncode != 0 or "--no-serve" not in text:
        return None  # without --no-serve, `gym eval run` would start its own servers
    found = {name: flag for name, flag in GYM_FLAGS.items() if re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", text)}
    return found if {"input", "output"} <= found.keys() else None


def _hydra_keys(env: Path) -> dict[str, str] | None:
    """The legacy collector's config fields (RolloutCollectionConfig), read from the installed package."""
    if not (env / "bin" / "ng_collect_rollouts").exists():
        return None
    probe = (
        "import json\n"
        "try:\n from nemo_gym.rollout_collection import RolloutCollectionConfig as C\n"
        "except ImportError:\n from nemo_gym.cli.eval import RolloutCollectionConfig as C\n"
        "print(json.dumps(sorted(C.model_fields)))\n"
    )
    try:
        out = subprocess.run(
            [str(env / "bin" / "python"), "-c", probe],
            capture_output=True,
            text=True,
            timeout=120,
            env=subprocess_env(env),
            stdin=subprocess.DEVNULL,
        )
        fields = set(orjson.loads(out.stdout.strip().splitlines()[-1])) if out.returncode == 0 else set()
    except (OSError, subprocess.TimeoutExpired, IndexError, orjson.JSONDecodeError):
        return None
    found = {name: key for name, key in HYDRA_KEYS.items() if key in fields}
    return found if {"input", "output"} <= found.keys() else None


def detect_collector(env: Path) -> Collector:
    """Find how the NeMo Gym in `env` collects rollouts: `gym eval run --no-serve`, else `ng_collect_rollouts`."""
    version = nemo_gym_version(env)
    flags = _gym_flags(env)
    if flags is not None:
        return Collector(env, (str(env / "bin" / "gym"), "eval", "run", "--no-serve"), "flags", flags, version)
    keys = _hydra_keys(env)
    if keys is not None:
        return Collector(env, (str(env / "bin" / "ng_collect_rollouts"),), "hydra", keys, version)
    raise CollectError(
        f"no rollout collector found in the NeMo Gym at {env} (neither `gym eval run --no-serve` nor "
        f"`ng_collect_rollouts` with an input/output option); is nemo-gym installed there?"
    )


def head_overrides(head_url: str) -> list[str]:
    """Hydra overrides that point a NeMo Gym client at the head server `head_url`."""
    u = urllib.parse.urlsplit(head_url if "://" in head_url else f"http://{head_url}")
    if not u.hostname or not u.port:
        raise CollectError(f"head server URL {head_url!r} needs a host and a port, e.g. {DEFAULT_HEAD_URL}.")
    return [override("++head_server.host", u.hostname), override("++head_server.port", u.port)]


def collector_argv(
    collector: Collector,
    *,
    input: str | os.PathLike[str],
    output: str | os.PathLike[str],
    agent: str | None = None,
    num_samples: int = 1,
    limit: int | None = None,
    concurrency: int | None = None,
    resume: bool = False,
    head_url: str = DEFAULT_HEAD_URL,
    extra: Sequence[str] = (),
) -> list[str]:
    """The collector's command line as an argv list (never a shell string); `extra` goes last, unchanged."""
    values: dict[str, Any] = {
        "input": str(Path(input).resolve()),
        "output": str(Path(output).resolve()),
        "agent": agent,
        "num_repeats": num_samples if num_samples != 1 else None,
        "limit": limit,
        "concurrency": concurrency,
        "resume": True if resume else None,
    }
    argv = list(collector.command)
    for name, value in values.items():
        if value is None:
            continue
        if name not in collector.options:
            raise CollectError(
                f"the installed NeMo Gym ({collector.version or 'unknown version'}) has no collector option for "
                f"{name.replace('_', '-')}; drop that option or upgrade nemo-gym."
            )
        opt = collector.options[name]
        if collector.style == "flags":
            argv += [opt] if value is True else [opt, str(value)]
        else:
            argv.append(override(f"+{opt}", value))
    return argv + head_overrides(head_url) + list(extra)


# ---- preflight: tasks, output, servers ---------------------------------------------------------


@dataclass
class TaskCheck(Rejections):
    """What a pass over the tasks file found: tasks to run, agents they need, rejected lines."""

    path: str
    lines: int = 0
    tasks: int = 0  # valid tasks among the first `limit` lines (what the collector will run)
    agents: Counter[str] = field(default_factory=Counter)
    missing_agent: list[int] = field(default_factory=list)
    rejects: Tally = field(default_factory=Tally)  # rejected lines: `rejected`, `rejected_by_code`, `rejections`


def check_tasks(
    path: str | os.PathLike[str], *, limit: int | None = None, agent: str | None = None, max_examples: int = MAX_SHOWN
) -> TaskCheck:
    """Stream the tasks file: every line must be a valid NeMo Gym task naming an agent (or `agent` given)."""
    try:
        p = check_input_path(path)
    except InputError as exc:
        raise CollectError(str(exc)) from None
    if p.suffix == ".gz":
        raise CollectError(f"{p}: NeMo Gym's collector reads plain JSONL; decompress it first (gunzip -k {p}).")
    result = TaskCheck(str(p), rejects=Tally(limit=max_examples))
    # NeMo Gym's collector parses every line, blank ones too: here a blank line is a rejected task.
    for c in iter_checked(iter_lines(p, skip_blank=False), tasks=True):
        result.lines += 1
        if c.record is None:
            result.rejects.add(c.code or "unknown", {"line": c.line, "code": c.code, "reason": c.reason})
            continue
        if limit is not None and c.line > limit:
            continue  # checked, but the collector will not run it
        name = agent_name(c.record) or agent
        if name is None:
            result.missing_agent.append(c.line)
            continue
        result.tasks += 1
        result.agents[name] += 1
    if result.rejected:
        first = result.rejections[0]
        raise CollectError(
            f"{p}: {result.rejected} of {result.lines} lines are not valid NeMo Gym tasks "
            f"(line {first['line']}: {first['reason']}); fix them before collecting.",
            code=EXIT_FAILED,
            details=result.rejections,
        )
    if result.missing_agent:
        lines = ", ".join(map(str, result.missing_agent[:10])) + (" …" if len(result.missing_agent) > 10 else "")
        raise CollectError(f"{p}: lines {lines} name no agent (`agent_ref`); pass --agent NAME.")
    if result.lines == 0:
        raise CollectError(f"{p}: file is empty (no tasks).")
    return result


def sidecar_paths(output: str | os.PathLike[str]) -> dict[str, Path]:
    """Files NeMo Gym's collector writes beside `output`: materialized inputs, failures, aggregate metrics."""
    out = Path(output)
    return {
        "materialized_inputs": out.with_name(out.stem + "_materialized_inputs.jsonl"),
        "failures": out.with_name(out.stem + "_failures.jsonl"),
        "aggregate_metrics": out.with_name(out.stem + "_aggregate_metrics.json"),
    }


def prepare_output(output: str | os.PathLike[str], *, overwrite: bool = False, resume: bool = False) -> None:
    """Refuse to clobber an existing output unless told; on overwrite remove it and its sidecars."""
    out = Path(output)
    if overwrite and resume:
        raise CollectError("--overwrite and --resume contradict each other; pass one.")
    if out.exists() and out.is_dir():
        raise CollectError(f"{out}: is a directory; give a file path for the rollouts.")
    if not out.parent.exists():
        raise CollectError(f"{out.parent}: no such directory for the output.")
    if out.exists() and not (overwrite or resume):
        raise CollectError(f"{out} already exists: pass --resume to continue that collection or --overwrite to replace it.")
    if overwrite:
        # NeMo Gym appends to its failures sidecar even on a fresh run: stale failures would be miscounted.
        for p in [out, *sidecar_paths(out).values()]:
            p.unlink(missing_ok=True)


def _get(url: str, timeout: float) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - user-given server URL
        return resp.read()


def agent_config_hint(env: Path | None, agent: str) -> str | None:
    """The shipped NeMo Gym config (path relative to the package) that defines `agent`, if any."""
    if env is None:
        return None
    try:
        root = package_dir(env)
    except NemoGymError:
        return None
    pattern = re.compile(rf"^{re.escape(agent)}:\s*$", re.M)
    for sub in ("resources_servers", "responses_api_agents", "environments", "benchmarks"):
        # A server's own `<name>/configs/<name>.yaml` first: it is the one its README starts.
        found = sorted((root / sub).glob("*/configs/*.yaml"), key=lambda c: (c.stem != c.parent.parent.name, str(c)))
        for cfg in found + sorted((root / sub).glob("*/config.yaml")):
            try:
                if pattern.search(cfg.read_text(errors="replace")):
                    return str(cfg.relative_to(root))
            except OSError:
                continue
    return None


def start_hint(env: Path | None, agents: Iterable[str]) -> str:
    """The `ng_run` command that would start servers for `agents` (with a model server config)."""
    configs = [c for c in dict.fromkeys(agent_config_hint(env, a) for a in agents) if c]
    configs = configs or ["<resources server config>"]
    configs.append("responses_api_models/openai_model/configs/openai_model.yaml")
    return (
        f'ng_run "+config_paths=[{",".join(configs)}]" +policy_base_url=<URL>/v1 +policy_api_key=<KEY> '
        f"+policy_model_name=<MODEL> (from {package_dir(env) if env else 'the NeMo Gym package folder'})"
    )


_INTERP = re.compile(r"^\$\{([\w.]+)\}$")


def _resolve(cfg: dict[str, Any], value: Any) -> Any:
    """Resolve a whole-value `${a.b}` interpolation (as an unresolved OmegaConf dump has) against `cfg`."""
    for _ in range(5):
        m = _INTERP.match(value) if isinstance(value, str) else None
        if not m:
            return value
        node: Any = cfg
        for part in m.group(1).split("."):
            node = node.get(part) if isinstance(node, dict) else None
        value = node
    return value


def _server_config(cfg: dict[str, Any], name: str, kind: str) -> dict[str, Any] | None:
    """The inner config of server instance `name` of `kind` (e.g. responses_api_agents), if running."""
    outer = cfg.get(name)
    if not isinstance(outer, dict) or not isinstance(outer.get(kind), dict):
        return None
    inner = next(iter(outer[kind].values()), None)
    return inner if isinstance(inner, dict) else None


def _answers(url: str, timeout: float) -> str | None:
    """None when something answers HTTP at `url` (any status), else why not."""
    try:
        _get(url, timeout)
    except urllib.error.HTTPError:
        return None  # it answered
    except (urllib.error.URLError, OSError) as exc:
        return str(getattr(exc, "reason", exc))
    return None


def check_servers(head_url: str, agents: Iterable[str], *, env: Path | None = None, timeout: float = 5.0) -> dict[str, str]:
    """Check the head server, every agent in `agents`, the resources and model servers each uses, and the
    model's own upstream URL all answer; return server name -> URL (the upstream as "<model> upstream")."""
    import yaml

    agents = sorted(set(agents))
    base = head_url.rstrip("/")
    try:
        raw = _get(f"{base}/global_config_dict_yaml", timeout)
        cfg = yaml.safe_load(orjson.loads(raw)) if raw.startswith(b'"') else yaml.safe_load(raw)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise CollectError(
            f"no NeMo Gym head server answers at {base} ({reason}); start the servers first, e.g. "
            f"{start_hint(env, agents)}, or pass --servers CONFIG to let gymverl start them."
        ) from None
    cfg = cfg if isinstance(cfg, dict) else {}
    running = sorted(k for k, v in cfg.items() if isinstance(v, dict) and "responses_api_agents" in v)
    urls: dict[str, str] = {}
    for name in agents:
        inner = _server_config(cfg, name, "responses_api_agents")
        if inner is None:
            hint = agent_config_hint(env, name)
            where = f" (defined in {hint})" if hint else ""
            raise CollectError(
                f"agent {name!r} is not running on the NeMo Gym servers at {base} "
                f"(running agents: {', '.join(running) or 'none'}); add its config{where} to ng_run's +config_paths."
            )
        # The agent, then the servers it calls: a dead one would fail every rollout, late.
        targets = [(name, "agent", inner)]
        for ref_key, label in (("resources_server", "resources server"), ("model_server", "model server")):
            ref = inner.get(ref_key)
            if isinstance(ref, dict) and ref.get("name") and ref.get("type"):
                sub = _server_config(cfg, ref["name"], ref["type"])
                if sub is not None:
                    targets.append((ref["name"], label, sub))
        for server, label, sc in targets:
            if server in urls:
                continue
            host, port = _resolve(cfg, sc.get("host")), _resolve(cfg, sc.get("port"))
            if not host or not port:
                continue  # an unusual config: the collector will report it
            url = f"http://{host}:{port}"
            why = _answers(url + "/", timeout)
            if why:
                who = f"agent {server!r}" if label == "agent" else f"{label} {server!r} (used by agent {name!r})"
                raise CollectError(
                    f"{who} is configured at {url} but does not answer ({why}); "
                    f"restart the NeMo Gym servers (ng_run)."
                )
            urls[server] = url
            if label == "model server":
                upstream = _resolve(cfg, sc.get("openai_base_url") or sc.get("base_url"))
                upstream = upstream[0] if isinstance(upstream, list) and upstream else upstream
                if isinstance(upstream, str) and upstream.startswith("http"):
                    why = _answers(upstream.rstrip("/") + "/models", timeout)
                    if why:
                        raise CollectError(
                            f"the model behind NeMo Gym's {server!r} server, {upstream}, does not answer ({why}); "
                            f"start your model server (e.g. `vllm serve MODEL`) or point +policy_base_url at it."
                        )
                    urls[f"{server} upstream"] = upstream
    return urls


# ---- running the collector ---------------------------------------------------------------------


class LineCounter:
    """Counts the lines of a file another process appends to (survives it being removed and recreated)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.count = 0
        self._offset = 0
        self._ino: int | None = None

    def update(self) -> int:
        """Read what was appended since the last call; return the number of complete lines."""
        try:
            st = self.path.stat()
        except FileNotFoundError:
            self.count, self._offset, self._ino = 0, 0, None
            return 0
        if st.st_ino != self._ino or st.st_size < self._offset:
            self.count, self._offset, self._ino = 0, 0, st.st_ino
        if st.st_size > self._offset:
            with open(self.path, "rb") as f:
                f.seek(self._offset)
                while chunk := f.read(1 << 20):
                    self.count += chunk.count(b"\n")
                    self._offset += len(chunk)
        return self.count


@dataclass
class RunResult:
    """How the collector process ended and what it had written."""

    returncode: int | None
    interrupted: bool
    written: int
    failed: int  # failed attempts this run (lines it appended to the failures file)
    seconds: float
    reason: str | None = None


def failure_reason(log_path: Path, max_bytes: int = 256 * 1024) -> str | None:
    """The most telling error line in the collector's log (last exception or argparse error)."""
    return proc.log_file_cause(log_path, max_bytes)


def run_collector(
    argv: Sequence[str],
    *,
    env: Path,
    output: str | os.PathLike[str],
    log_path: str | os.PathLike[str],
    on_progress: OnProgress | None = None,
    total: int | None = None,
    poll: float = 0.25,
    grace: float = 15.0,
) -> RunResult:
    """Run the collector until it exits; report progress from the output file (`on_progress`: rows
    written of `total`, this run's failures as `failed`).

    Ctrl-C, SIGTERM or SIGHUP (or any error here) stops it with `gymverl.proc`'s ladder: SIGINT
    first, so NeMo Gym keeps what it wrote (`grace` seconds), then SIGTERM/SIGKILL.
    """
    out = Path(output)
    written, failures = LineCounter(out), LineCounter(sidecar_paths(out)["failures"])
    # The failures file is appended across --resume runs: count this run's attempts only.
    earlier = failures.update()
    log = Path(log_path)
    start = time.monotonic()
    interrupted = False
    with open(log, "wb") as logf, proc.start(
        argv, stdout=logf, stderr=subprocess.STDOUT, env=subprocess_env(env), grace=grace
    ) as child:
        try:
            while child.poll() is None:
                if on_progress is not None:
                    on_progress(ProgressEvent(written.update(), total, ROWS, failed=failures.update() - earlier))
                time.sleep(poll)
        except KeyboardInterrupt:
            interrupted = True
            child.stop()
    n, f = written.update(), failures.update() - earlier
    if on_progress is not None:
        on_progress(ProgressEvent(n, total, ROWS, failed=f))
    rc = child.returncode
    return RunResult(rc, interrupted, n, f, time.monotonic() - start, None if rc == 0 else failure_reason(log))


# ---- the whole collection ----------------------------------------------------------------------


@dataclass
class CollectResult:
    """Outcome of `collect`: the run, the validation of its output, and a verdict with its exit code."""

    output: str
    log: str
    argv: list[str]
    expected: int
    run: RunResult
    validation: ValidationSummary | None
    failures_path: str | None
    ok: bool
    code: int
    message: str
    servers: dict[str, str] = field(default_factory=dict)
    failures: FailureReport | None = None  # the failures file settled against the rollouts present
    quality: dict[str, Any] | None = None  # `quality_report`: NeMo Gym 0.7.0's health check

    @property
    def failed(self) -> int:
        """(task, repeat)s that failed and never succeeded later (the failures file, settled)."""
        return len(self.failures.failed) if self.failures is not None else 0

    @property
    def retried(self) -> int:
        """Earlier failed attempts whose (task, repeat) later succeeded (history, not failures)."""
        return self.failures.superseded_attempts if self.failures is not None else 0

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data for `--json`."""
        return {
            "ok": self.ok,
            "exit_code": self.code,
            "message": self.message,
            "output": self.output,
            "log": self.log,
            "argv": self.argv,
            "expected_rollouts": self.expected,
            "written": self.run.written,
            "failed_rollouts": self.failed,
            "failed_attempts_this_run": self.run.failed,
            "retried_failed_attempts": self.retried,
            "failures": self.failures.to_dict() if self.failures is not None else None,
            "failures_file": self.failures_path,
            "collector_exit_code": self.run.returncode,
            "interrupted": self.run.interrupted,
            "seconds": round(self.run.seconds, 3),
            "validation": self.validation.to_dict() if self.validation else None,
            "servers": self.servers,
            "quality": self.quality,
        }


def expected_rollouts(tasks: TaskCheck, num_samples: int, output: Path, resume: bool) -> int:
    """How many rollouts the collector should write in total (resume: what its materialized inputs list)."""
    mat = sidecar_paths(output)["materialized_inputs"]
    if resume and mat.exists() and output.exists():
        with open(mat, "rb") as f:
            return sum(1 for line in f if line.strip())
    return tasks.tasks * num_samples


QUALITY_SUMMARY = "quality_summary.json"  # nemo_gym/health/types.py (0.7.0)
ROLLOUT_VERDICTS = "rollout_verdicts.jsonl"


def quality_report(output: str | os.PathLike[str], since: float | None = None) -> dict[str, Any] | None:
    """What NeMo Gym's post-collection health check (0.7.0's collector) wrote beside `output`.

    The collector writes `quality_summary.json` and `rollout_verdicts.jsonl` into the output's
    folder (not per output name); a file older than `since` (a `time.time()`) is an earlier run's
    and ignored. Returns None when there is none, else: `summary`/`verdicts` (paths), `rollouts`
    checked, `healthy`/`unhealthy`/`unobserved` counts, `issues` ({check id: count}, nonzero only),
    `flagged_tasks` (tasks with a task-level flag), `model_call_errors`, and `unhealthy_examples`
    (up to 5 `(task, rollout, [check, ...])` from the verdicts file). An unreadable summary gives
    `{"summary": path, "error": reason}`: it is reported, never a reason to fail the collection.
    """
    folder = Path(output).parent
    summary_path, verdicts_path = folder / QUALITY_SUMMARY, folder / ROLLOUT_VERDICTS
    try:
        st = summary_path.stat()
    except OSError:
        return None
    if since is not None and st.st_mtime < since - 1:
        return None
    rep: dict[str, Any] = {"summary": str(summary_path), "verdicts": str(verdicts_path) if verdicts_path.exists() else None}
    try:
        data = orjson.loads(summary_path.read_bytes())
        run = data["run"]
        verdicts = run.get("verdicts") or {}
        rep.update(
            rollouts=int(sum(v for v in verdicts.values() if isinstance(v, int))),
            healthy=int(verdicts.get("healthy", 0)),
            unhealthy=int(verdicts.get("unhealthy", 0)),
            unobserved=int(verdicts.get("unobserved", 0)),
            issues={k: v for k, v in (run.get("issues") or {}).items() if v},
            flagged_tasks=sum(1 for t in (data.get("tasks") or {}).values() if isinstance(t, dict) and t.get("flags")),
            model_call_errors=int(((run.get("stats") or {}).get("model_call_errors") or {}).get("total", 0)),
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        return {"summary": str(summary_path), "error": f"cannot read it ({exc})"}
    examples: list[dict[str, Any]] = []
    if rep["verdicts"] and rep["unhealthy"]:
        with contextlib.suppress(OSError):
            with open(verdicts_path, "rb") as f:
                for raw in f:
                    try:
                        row = orjson.loads(raw)
                    except orjson.JSONDecodeError:
                        continue
                    if isinstance(row, dict) and row.get("verdict") == "unhealthy":
                        checks = [x.get("check") for x in row.get("findings") or [] if isinstance(x, dict)]
                        examples.append({"task": row.get("_ng_task_index"), "rollout": row.get("_ng_rollout_index"), "checks": checks})
                        if len(examples) == 5:
                            break
    rep["unhealthy_examples"] = examples
    return rep


def quality_sentence(rep: dict[str, Any] | None) -> str | None:
    """One line for `quality_report`'s result, e.g. "NeMo Gym health check: 20 rollouts, 18 healthy, ..."."""
    if rep is None:
        return None
    if "error" in rep:
        return f"NeMo Gym's health check summary {rep['summary']}: {rep['error']}"
    issues = ", ".join(f"{k} {v}" for k, v in sorted(rep["issues"].items(), key=lambda kv: -kv[1]))
    return (
        f"NeMo Gym health check: {rep['rollouts']} rollouts, {rep['healthy']} healthy, {rep['unhealthy']} unhealthy, "
        f"{rep['unobserved']} unobserved" + (f" ({issues})" if issues else "")
        + (f"; {rep['flagged_tasks']} tasks flagged" if rep["flagged_tasks"] else "")
        + f"; see {rep['summary']}"
    )


def default_log_path(output: str | os.PathLike[str]) -> Path:
    """Where the collector's own output goes: `<stem>_collect.log` beside the rollouts."""
    out = Path(output)
    return out.with_name(out.stem + "_collect.log")


def resolve_server_configs(env: Path, configs: Sequence[str], policy_url: str | None, model_type: str) -> list[Path]:
    """Config paths for ng_run: a bare name means that resources server's shipped config; adds a model
    server config (`model_type`) when a policy URL is given and no config defines `policy_model`."""
    root = package_dir(env)
    paths: list[Path] = []
    for c in configs:
        for part in (p for p in c.split(",") if p):
            p = Path(part)
            if p.exists() or (root / p).exists():
                paths.append(p.resolve() if p.exists() else root / p)
            elif "/" not in part and not part.endswith((".yaml", ".yml")):
                paths.append(resources_server_config(env, part))
            else:
                raise CollectError(f"NeMo Gym config not found: {part} (looked in . and {root}).")
    if policy_url:
        defines_policy = re.compile(r"^policy_model:\s*$", re.M)
        if not any(defines_policy.search(p.read_text(errors="replace")) for p in paths):
            model_cfg = root / "responses_api_models" / model_type / "configs" / f"{model_type}.yaml"
            if not model_cfg.exists():
                raise CollectError(f"unknown NeMo Gym model server type {model_type!r} (no {model_cfg}).")
            paths.append(model_cfg)
    return paths


def collect(
    input: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    agent: str | None = None,
    num_samples: int = 1,
    limit: int | None = None,
    concurrency: int | None = None,
    overwrite: bool = False,
    resume: bool = False,
    head_url: str = DEFAULT_HEAD_URL,
    servers: Sequence[str] = (),
    policy_url: str | None = None,
    policy_model: str = "policy",
    policy_api_key: str = "dummy",
    model_type: str = "openai_model",
    nemo_gym_env: str | os.PathLike[str] | None = None,
    extra: Sequence[str] = (),
    log_path: str | os.PathLike[str] | None = None,
    rejects: str | os.PathLike[str] | None = None,
    on_progress: OnProgress | None = None,
    on_stage: Callable[[str, dict[str, Any]], None] | None = None,
    server_startup_timeout: float = 600.0,
) -> CollectResult:
    """Check, run NeMo Gym's collector (starting `servers` for the duration if given), validate the output.

    Raises CollectError (with `.code`) when it cannot start; otherwise returns a CollectResult whose
    `code` is 0 (all expected rollouts written and valid), 1 (collector failed, rollouts missing,
    failed or rejected) or 130 (interrupted).
    """
    stage = on_stage or (lambda name, info: None)
    if num_samples < 1:
        raise CollectError(f"--num-samples must be at least 1, got {num_samples}.")
    if limit is not None and limit < 1:
        raise CollectError(f"--limit must be at least 1, got {limit}.")
    if concurrency is not None and concurrency < 1:
        raise CollectError(f"--concurrency must be at least 1, got {concurrency}.")
    try:
        env = find_env(nemo_gym_env)
    except NemoGymError as exc:
        raise CollectError(str(exc)) from None
    tasks = check_tasks(input, limit=limit, agent=agent)
    stage("tasks", {"tasks": tasks.tasks, "lines": tasks.lines, "agents": dict(tasks.agents)})
    out = Path(output).resolve()
    prepare_output(out, overwrite=overwrite, resume=resume)
    collector = detect_collector(env)
    expected = expected_rollouts(tasks, num_samples, out, resume)
    if resume and expected != tasks.tasks * num_samples:
        # NeMo Gym's resume replays the first run's materialized inputs, not this run's options.
        stage(
            "warning",
            {"message": f"resuming the earlier run's {expected} rollouts (its materialized inputs); "
             f"this run's --num-samples/--limit ({tasks.tasks} tasks × {num_samples}) do not apply."},
        )
    log = Path(log_path) if log_path else default_log_path(out)

    with contextlib.ExitStack() as stack:
        if servers:
            configs = resolve_server_configs(env, servers, policy_url, model_type)
            stage("servers", {"configs": [str(c) for c in configs]})
            ng = NemoGymServers(
                configs,
                env=env,
                policy_base_url=policy_url,
                policy_model_name=policy_model,
                policy_api_key=policy_api_key,
                startup_timeout=server_startup_timeout,
                log_path=log.with_name(log.stem.removesuffix("_collect") + "_servers.log"),
            )
            try:
                stack.enter_context(ng)
            except NemoGymError as exc:
                raise CollectError(str(exc), code=EXIT_FAILED) from None
            head_url = f"http://127.0.0.1:{ng.head_port}"
        agent_urls = check_servers(head_url, tasks.agents, env=env)
        argv = collector_argv(
            collector,
            input=tasks.path,
            output=out,
            agent=agent,
            num_samples=num_samples,
            limit=limit,
            concurrency=concurrency,
            resume=resume,
            head_url=head_url,
            extra=extra,
        )
        stage("collect", {"argv": argv, "expected": expected, "log": str(log), "agents": agent_urls})
        started = time.time()
        run = run_collector(argv, env=env, output=out, log_path=log, on_progress=on_progress, total=expected or None)
        # Servers stop here (end of the with-block), before validation reads the file.

    validation = None
    if out.exists():
        stage("validate", {"output": str(out)})
        validation = validate_file(out, rejects=rejects)
    fail_path = sidecar_paths(out)["failures"]
    failures = None
    if fail_path.exists():
        # One line per failed attempt, appended across --resume runs: a (task, repeat) that later
        # succeeded (it is in the output) is history, not a failure.
        present, _ = rollout_pairs(out) if out.exists() else (set(), 0)
        failures = settle_failures(fail_path, present)
    result = CollectResult(
        output=str(out),
        log=str(log),
        argv=argv,
        expected=expected,
        run=run,
        validation=validation,
        failures_path=str(fail_path) if failures is not None and (failures.failed or failures.attempts) else None,
        ok=False,
        code=EXIT_FAILED,
        message="",
        servers=agent_urls,
        failures=failures,
        quality=quality_report(out, since=started),
    )
    _verdict(result)
    return result


def _verdict(r: CollectResult) -> None:
    """Set ok/code/message: one sentence a user can act on."""
    v = r.validation
    valid = v.valid if v else 0
    rejected = v.rejected if v else 0
    kept = f"{valid} valid rollouts of {r.expected} expected kept in {r.output}"
    if r.run.interrupted:
        r.code, r.message = 130, f"interrupted: {kept}; continue with --resume."
        return
    if r.run.returncode != 0:
        why = f": {r.run.reason}" if r.run.reason else ""
        r.message = (
            f"NeMo Gym's collector failed (exit code {r.run.returncode}){why}; {kept}"
            + ("; continue with --resume" if valid else "")
            + f"; its log: {r.log}."
        )
        return
    problems = []
    if rejected:
        problems.append(f"{rejected} lines rejected by validation")
    if r.failed:
        problems.append(f"{r.failed} rollouts failed (see {r.failures_path})")
    if valid < r.expected and valid + r.failed < r.expected:
        problems.append(f"{r.expected - valid - r.failed} rollouts missing")
    retried = (
        f"; {r.retried} earlier failed attempt{'s were' if r.retried != 1 else ' was'} retried and succeeded"
        if r.retried else ""
    )
    if problems:
        r.message = f"collection finished with problems: {', '.join(problems)}; {kept}{retried}."
        return
    r.ok, r.code = True, 0
    r.message = f"collected {valid} rollouts ({len(v.rollouts_per_task) if v else 0} tasks) into {r.output}{retried}."


__all__ = [
    "DEFAULT_HEAD_URL",
    "CollectError",
    "CollectResult",
    "Collector",
    "LineCounter",
    "RunResult",
    "TaskCheck",
    "agent_config_hint",
    "check_servers",
    "check_tasks",
    "collect",
    "collector_argv",
    "default_log_path",
    "detect_collector",
    "expected_rollouts",
    "failure_reason",
    "head_overrides",
    "prepare_output",
    "quality_report",
    "quality_sentence",
    "resolve_server_configs",
    "run_collector",
    "sidecar_paths",
]
