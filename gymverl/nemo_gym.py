"""Find the NeMo Gym environment and run NeMo Gym servers on loopback, as subprocesses.

gymverl never imports `nemo_gym` (0.7.0 needs Python >= 3.13, VeRL < 3.13; it lives in its own
venv); it runs NeMo Gym's own `ng_run` there and talks to the servers over HTTP. Everything binds
to 127.0.0.1: servers (NeMo Gym's default host), the head server (a free port we pick, so several
runs can coexist), and the Ray cluster `ng_run` starts (`RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`
makes Ray use the loopback address instead of the host's; each run has its own short
`RAY_TMPDIR`, removed when it stops).

Supported: nemo-gym 0.7.0 (the default `make setup` installs) and 0.4.0, told apart by the
installed version (`nemo_gym_version`), never guessed. Differences handled here:
- where the servers' Python comes from: `gymverl.ng_setup.server_venv_args` (per-server uv venvs
  when the venv's Python satisfies nemo-gym's Requires-Python, else one venv for all servers);
- 0.7.0 waits for the policy model endpoint and shuts everything down when it never answers:
  runs without a real policy pass `++model_endpoint_readiness_timeout_seconds=0` (0.4.0 ignores it);
- readiness: after "All N / N servers ready", 0.7.0's head server answers `GET /health` 503 until
  it is ready and then 200; 0.4.0 has no such route (404), which counts as ready.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from pathlib import Path
from typing import Any, Iterator, Sequence

import orjson
from gymverl import ng_setup, proc
from gymverl.errors import EXIT_USAGE, GymverlError, RunError
from gymverl.overrides import override

ENV_VAR = "GYMVERL_NEMO_GYM_ENV"
DEFAULT_ENV_NAME = ".nemo-gym-venv"
_READY = re.compile(r"All (\d+) / (\d+) servers ready")
_CRASHED = re.compile(r"Process `([^`]+)` finished unexpectedly")
# The headers ng_run puts around a crashed process's own output (0.4.0 and 0.7.0 `env.py`).
_CRASH_BLOCK_HEADER = re.compile(r"^(Process `[^`]+` (stdout|stderr|finished unexpectedly!?):?|None|#+)$")


class NemoGymError(RunError, RuntimeError):
    """NeMo Gym is missing or its servers could not be started (one clear sentence).

    `tail`: the last lines ng_run printed, when it ran (shown by `python -m gymverl.nemo_gym`).
    """

    tail: str = ""


# ng_run's own fatal messages: `Error: Found 1 almost-server(s) with validation errors. Fix ...`
_NG_ERROR = re.compile(r"^Error: (.+?[.!?])(?:\s|$)")
# ng_run prefixes each server's output with its name: `(mcqa) error: No solution found ...`.
_SERVER_PREFIX = re.compile(r"^\((?P<name>[\w.-]+)\)\s?")
# uv's own errors while NeMo Gym builds a per-server venv (`error:` then indented `cause:`/`hint:`).
_UV_ERROR = re.compile(r"^error: (.+)$")
_UV_CAUSE = re.compile(r"^\s*(?:Caused by|cause): (.+)$")
_NOT_FOUND = re.compile(r"\buv: command not found")
_NEVER_ANSWERED = re.compile(r"model endpoint\(s\) never answered")


def startup_cause(lines: Sequence[str]) -> str | None:
    """Why ng_run or one of its servers failed, from its output, as one clause (None when unknown).

    Looks (last line first) for: ng_run's `Error: ...` line; uv's `error: ...` with its `cause:`
    line (a per-server venv that could not be built, e.g. `Because the current Python version
    (3.13) does not satisfy Python>=3.13.14 ...`); `uv: command not found`; the last exception
    line (e.g. `ModuleNotFoundError: No module named 'fastapi'`, from a half-built venv), with
    0.7.0's "model endpoint(s) never answered" followed by the first URL it lists. A server's
    `(name) ` prefix becomes `name: ` in front of the clause.
    """
    stripped: list[tuple[str | None, str]] = []
    for line in lines:
        m = _SERVER_PREFIX.match(line)
        stripped.append((m.group("name"), line[m.end() :]) if m else (None, line))

    def named(who: str | None, text: str) -> str:
        return f"{who}: {text}" if who else text

    for i in range(len(stripped) - 1, -1, -1):
        who, text = stripped[i]
        t = text.strip()
        m = _NG_ERROR.match(t)
        if m:
            return m.group(1)
        m = _UV_ERROR.match(t)
        if m:
            detail = m.group(1).rstrip(".")
            for w2, nxt in stripped[i + 1 : i + 8]:
                c = _UV_CAUSE.match(nxt)
                if c and w2 == who:
                    detail = f"{detail}: {c.group(1).rstrip('.')}"
                    break
            return named(who, f"uv could not build the server's venv ({detail})")
        if _NOT_FOUND.search(t):
            return named(who, t)
        cause = proc.log_cause([t])
        if cause:
            if _NEVER_ANSWERED.search(cause):
                for _w, nxt in stripped[i + 1 : i + 5]:
                    if nxt.strip().startswith("- "):
                        cause = f"{cause.rstrip(':')} {nxt.strip()[2:]}"
                        break
            return named(who, cause)
    return _crashed_server_last_words(stripped)


def _crashed_server_last_words(stripped: Sequence[tuple[str | None, str]]) -> str | None:
    """The last line a crashed server printed, when no line of the output reads as an error.

    ng_run prints "Process `NAME` finished unexpectedly!" and then what the process wrote to
    stdout/stderr (`nemo_gym/cli/env.py`, `poll`). That last line is still the best one-clause
    account there is (e.g. a log line before an OOM kill); without it the user gets nothing.
    """
    for i in range(len(stripped) - 1, -1, -1):
        m = _CRASHED.search(stripped[i][1])
        if not m:
            continue
        def said(part: Sequence[tuple[str | None, str]]) -> list[str]:
            return [t.strip() for _w, t in part if t.strip() and not _CRASH_BLOCK_HEADER.match(t.strip())]

        # What it wrote after the notice (when ng_run captured it), else the output just before it.
        last = said(stripped[i + 1 :]) or said(stripped[max(0, i - 5) : i])
        if last:
            return f"{m.group(1)} exited; the last line before that was {last[-1][:300]!r}"
        return f"{m.group(1)} exited without printing anything (killed by a signal, e.g. out of memory?)"
    return None


def find_env(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The NeMo Gym venv: `explicit`, else $GYMVERL_NEMO_GYM_ENV, else ./.nemo-gym-venv or the repo's."""
    candidates: list[Path] = []
    if explicit:
        candidates = [Path(explicit)]
    elif os.environ.get(ENV_VAR):
        candidates = [Path(os.environ[ENV_VAR])]
    else:
        candidates = [Path.cwd() / DEFAULT_ENV_NAME, Path(__file__).resolve().parent.parent / DEFAULT_ENV_NAME]
    for env in candidates:
        if (env / "bin" / "ng_run").exists():
            return env.resolve()
    where = explicit or os.environ.get(ENV_VAR) or " or ".join(str(c) for c in candidates)
    raise NemoGymError(
        f"NeMo Gym not found at {where}: create it with `make setup` (nemo-gym 0.7.0 in "
        f"{DEFAULT_ENV_NAME}; `make setup NEMO_GYM=0.4.0` for 0.4.0) or point --nemo-gym-env / "
        f"${ENV_VAR} at a venv with nemo-gym installed."
    )


def package_dir(env: Path) -> Path:
    """The site-packages folder holding NeMo Gym's `resources_servers/`, `responses_api_agents/`, ..."""
    for sp in sorted((env / "lib").glob("python3*/site-packages")):
        if (sp / "resources_servers").is_dir():
            return sp
    raise NemoGymError(f"{env}: no NeMo Gym servers (resources_servers/) in this venv; is nemo-gym installed?")


def nemo_gym_version(env: str | os.PathLike[str]) -> str | None:
    """The installed nemo-gym version in venv `env`, e.g. "0.7.0" (None when none is installed).

    The one version check of the package (`gymverl.ng_setup.installed_nemo_gym_version`: read
    from the dist-info METADATA, never by importing nemo_gym). Never raises.
    """
    return ng_setup.installed_nemo_gym_version(env)


def resources_server_config(env: Path, name: str) -> Path:
    """The shipped config file of resources server `name` (e.g. `mcqa`, `math_with_judge`)."""
    root = package_dir(env) / "resources_servers" / name / "configs"
    for candidate in (root / f"{name}.yaml", *sorted(root.glob("*.yaml"))):
        if candidate.exists():
            return candidate
    import difflib

    available = sorted(p.name for p in (package_dir(env) / "resources_servers").iterdir() if (p / "configs").is_dir())
    close = difflib.get_close_matches(name, available, n=3)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    raise NemoGymError(  # a name the user typed: a usage error (exit 2), not a failed start
        f"unknown NeMo Gym resources server {name!r}; {hint}{len(available)} are installed (`gym list` names them).",
        code=EXIT_USAGE,
    )


def resources_only_config(config: Path, out: Path) -> tuple[Path, bool]:
    """Copy a NeMo Gym config keeping only its resources servers (no agents); say if one needs a model."""
    import yaml  # pyyaml comes with transformers/datasets; NeMo Gym configs are YAML

    data = yaml.safe_load(config.read_text()) or {}
    kept = {k: v for k, v in data.items() if isinstance(v, dict) and "resources_servers" in v}
    if not kept:
        raise NemoGymError(f"{config}: no resources server defined in this config.")
    out.write_text(yaml.safe_dump(kept, sort_keys=False))
    # e.g. math_with_judge names `policy_model` as its (optional) judge: the reference must resolve.
    return out, "responses_api_models" in yaml.safe_dump(kept)


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def subprocess_env(env: Path, ray_tmpdir: str | os.PathLike[str] | None = None) -> dict[str, str]:
    """Environment for NeMo Gym subprocesses: its venv first, uv on its Python, Ray on loopback.

    `ray_tmpdir`: Ray's folder for this run (sessions, AF_UNIX sockets). It must be short (socket
    paths are limited to 107 bytes) and private to the run, or concurrent runs share /tmp/ray.
    """
    python_dirs = [str(env / "bin")]
    # uv (used by ng_run to build per-server venvs) must find the venv's own Python version on PATH.
    cand = Path(os.path.realpath(env / "bin" / "python")).parent
    if cand.is_dir() and str(cand) not in python_dirs:
        python_dirs.append(str(cand))
    out = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    if ray_tmpdir is not None:
        out["RAY_TMPDIR"] = str(ray_tmpdir)
    out["PATH"] = os.pathsep.join(python_dirs + [os.environ.get("PATH", "")])
    out.setdefault("UV_PYTHON_DOWNLOADS", "never")
    out.setdefault("UV_PYTHON_PREFERENCE", "only-system")
    out["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    out.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    out.setdefault("PYTHONUNBUFFERED", "1")
    return out


class NemoGymServers:
    """NeMo Gym servers started with `ng_run` for the duration of a `with` block.

    `urls` maps each server's process name (the top-level config key, e.g. `math_with_judge`,
    `math_with_judge_simple_agent`, `policy_model`) to its base URL on 127.0.0.1.
    """

    def __init__(
        self,
        configs: Sequence[str | os.PathLike[str]],
        *,
        overrides: Sequence[str] = (),
        env: str | os.PathLike[str] | None = None,
        policy_base_url: str | None = None,
        policy_model_name: str = "policy",
        policy_api_key: str = "dummy",
        resources_only: bool = False,
        startup_timeout: float = 600.0,
        log_path: str | os.PathLike[str] | None = None,
    ) -> None:
        self.env = find_env(env)
        self.cwd = package_dir(self.env)
        self.configs = [Path(c) for c in configs]
        self.overrides = list(overrides)
        self.policy = (policy_base_url, policy_model_name, policy_api_key)
        self.resources_only = resources_only
        self.startup_timeout = startup_timeout
        self.log_path = Path(log_path) if log_path else None
        self.head_port = free_port()
        self.urls: dict[str, str] = {}
        self.instances: list[dict[str, Any]] = []
        self._proc: proc.Supervised | None = None
        self._signals = contextlib.ExitStack()
        self.signalled = False
        self._tail: deque[str] = deque(maxlen=60)
        self._ready = threading.Event()
        # stop() from another thread (the demo starts servers in the background) must win over a
        # start() still in progress: no ng_run is started after it, and start() gives up.
        self._stopped = threading.Event()
        self._lock = threading.Lock()
        self._crashed: list[str] = []
        self._tmpdir: tempfile.TemporaryDirectory[str] | None = None
        self._ray_tmpdir: str | None = None
        self._build_lock: int | None = None
        self._reader: threading.Thread | None = None
        self._needs_model = False

    # ---- argv ----------------------------------------------------------------------------------
    def _config_paths(self) -> list[str]:
        if self._tmpdir is None:
            # Per run: resources-only configs and the shared-venv links (removed by stop()).
            self._tmpdir = tempfile.TemporaryDirectory(prefix="gymverl-ng-")
        paths: list[str] = []
        needs_model = False
        for c in self.configs:
            p = c if c.is_absolute() or not (self.cwd / c).exists() else self.cwd / c
            if not p.exists():
                raise NemoGymError(f"NeMo Gym config not found: {c}")
            if self.resources_only:
                assert self._tmpdir is not None
                p, wants = resources_only_config(p, Path(self._tmpdir.name) / f"{len(paths)}_{p.name}")
                needs_model |= wants
            paths.append(str(p.resolve()))
        if needs_model:
            paths.append(str(self.cwd / "responses_api_models" / "openai_model" / "configs" / "openai_model.yaml"))
        self._needs_model = needs_model
        return paths

    def argv(self) -> list[str]:
        """The `ng_run` command line (Hydra overrides), as an argv list.

        Prepares the servers' venvs first (`gymverl.ng_setup.server_venv_args`): where per-server
        uv venvs work, half-built ones are removed (a retry after a failed start behaves like the
        first try); elsewhere every server runs from the NeMo Gym venv through links in this run's
        temporary folder. Raises NemoGymError when that is impossible (e.g. a server's
        requirements are not installed in the shared venv).
        """
        paths = self._config_paths()
        assert self._tmpdir is not None
        args = [str(self.env / "bin" / "ng_run"), override("+config_paths", paths)]
        base_url, model, key = self.policy
        if not self.resources_only or base_url or self._needs_model:
            args += [
                override("+policy_base_url", base_url or "http://127.0.0.1:9/v1"),
                override("+policy_api_key", key),
                override("+policy_model_name", model),
            ]
        if base_url is None:
            # 0.7.0 waits for the policy endpoint (default 600 s) and then stops every server: the
            # placeholder above never answers. 0 skips that check; 0.4.0 ignores the key.
            args.append("++model_endpoint_readiness_timeout_seconds=0")
        args += [override("++head_server.host", "127.0.0.1"), override("++head_server.port", self.head_port)]
        try:
            args += ng_setup.server_venv_args(self.env, paths, Path(self._tmpdir.name) / "venvs")
        except RunError as exc:
            raise NemoGymError(str(exc)) from None
        return args + self.overrides

    # ---- lifecycle -----------------------------------------------------------------------------
    def start(self) -> "NemoGymServers":
        """Start `ng_run` and wait until every server reports ready (or raise NemoGymError).

        ng_run, Ray and the servers run in a process group of their own (`gymverl.proc.start`); on
        any error, Ctrl-C, SIGTERM or SIGHUP while starting they are all stopped before this raises.
        """
        log = None
        deadline = time.monotonic() + self.startup_timeout
        try:
            self._build_lock = self._wait_for_venv_builds(deadline)
            argv = self.argv()
            # Short (AF_UNIX paths <= 107 bytes) and private: concurrent runs never share /tmp/ray.
            self._ray_tmpdir = tempfile.mkdtemp(prefix="gv-ray-", dir="/tmp" if os.path.isdir("/tmp") else None)
            log = open(self.log_path, "ab") if self.log_path else None
            with self._lock:
                if self._stopped.is_set():
                    raise NemoGymError("NeMo Gym servers were stopped before they started.")
                child = self._proc = proc.start(
                    argv,
                    cwd=self.cwd,
                    env=subprocess_env(self.env, self._ray_tmpdir),
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                )
        except BaseException:
            if log is not None:
                log.close()
            self.stop()  # removes the temporary folders made so far
            raise
        self._reader = threading.Thread(target=self._read_output, args=(child.popen.stdout, log), daemon=True)
        self._reader.start()
        try:
            while not self._ready.wait(0.25):
                if self._stopped.is_set():
                    raise NemoGymError("NeMo Gym servers were stopped before they were ready.")
                if child.poll() is not None or self._crashed:
                    what = f"{', '.join(self._crashed)} exited" if self._crashed else f"ng_run exited with {child.returncode}"
                    self.stop()  # the whole output is read once ng_run and its servers are gone
                    raise self._failure(f"NeMo Gym servers failed to start ({what})")
                if time.monotonic() > deadline:
                    self.stop()
                    raise self._failure(f"NeMo Gym servers not ready after {self.startup_timeout:.0f} s")
            self._wait_head_ready(child, deadline)
            try:
                self.instances = self._fetch_instances()
            except (OSError, ValueError) as exc:  # URLError is an OSError; a bad answer a ValueError
                raise NemoGymError(f"NeMo Gym's head server on port {self.head_port} did not list its servers ({exc}).") from None
            self.urls = {i["process_name"]: i["url"] for i in self.instances if i.get("url")}
        except BaseException:
            self.stop()
            raise
        self._release_build_lock()  # the venvs are built: other starts may go ahead
        return self

    def _wait_for_venv_builds(self, deadline: float) -> int | None:
        """Where NeMo Gym builds per-server venvs and this run needs one built: wait for (and hold)
        a lock per NeMo Gym venv until the servers are ready, so that one start never removes, as
        half-built, a venv that a concurrent start is still building. Returns the lock's fd or None."""
        try:
            install = ng_setup.read_install(self.env)
            if not install.per_server_venvs_work()[0]:
                return None  # one shared venv through per-run links: nothing is built
            # Only the folders this run starts (the common extras are linked, never built, here).
            if not ng_setup.venvs_to_build(install, ng_setup.config_server_folders(self._config_paths())):
                return None
        except RunError:
            return None  # argv() says what is wrong
        name = hashlib.sha1(str(self.env).encode()).hexdigest()[:12]
        fd = os.open(os.path.join(tempfile.gettempdir(), f"gymverl-ng-venvs-{name}.lock"), os.O_RDWR | os.O_CREAT, 0o666)
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return fd
            except BlockingIOError:
                pass
            if self._stopped.is_set() or time.monotonic() > deadline:
                os.close(fd)
                if self._stopped.is_set():
                    raise NemoGymError("NeMo Gym servers were stopped before they started.")
                raise NemoGymError(
                    f"another gymverl run has been building NeMo Gym's server venvs in {self.env} for "
                    f"over {self.startup_timeout:.0f} s; wait for it to finish and try again."
                )
            time.sleep(0.5)

    def _release_build_lock(self) -> None:
        fd, self._build_lock = self._build_lock, None
        if fd is not None:
            os.close(fd)  # closing the last descriptor releases the flock

    def _wait_head_ready(self, child: proc.Supervised, deadline: float) -> None:
        """After "All N / N servers ready": wait until the head server's `GET /health` says ready.

        0.7.0 answers 503 `{"status": "starting"}` until it has checked the model endpoints, then
        200; 0.4.0 has no such route (404 means ready). ng_run exiting meanwhile (e.g. 0.7.0's
        "model endpoint(s) never answered") is a failure with that cause.
        """
        url = f"http://127.0.0.1:{self.head_port}/health"
        while True:
            if self._stopped.is_set():
                raise NemoGymError("NeMo Gym servers were stopped before they were ready.")
            if child.poll() is not None or self._crashed:
                what = f"{', '.join(self._crashed)} exited" if self._crashed else f"ng_run exited with {child.returncode}"
                self.stop()
                raise self._failure(f"NeMo Gym servers failed to start ({what})")
            try:
                with urllib.request.urlopen(url, timeout=5):  # noqa: S310 - loopback only
                    return  # 2xx: ready
            except urllib.error.HTTPError as exc:
                if exc.code == 404:
                    return  # nemo-gym 0.4.0: no readiness route; its ready line is the signal
            except OSError:
                pass  # not listening yet
            if time.monotonic() > deadline:
                self.stop()
                raise self._failure(f"NeMo Gym's head server not ready after {self.startup_timeout:.0f} s")
            time.sleep(0.25)

    def _failure(self, what: str) -> NemoGymError:
        """`what`, the cause found in ng_run's output, and where the whole output is: one sentence."""
        cause = startup_cause(list(self._tail))
        where = f"; ng_run output: {self.log_path}" if self.log_path else ""
        err = NemoGymError(f"{what}: {cause.rstrip('.')}{where}." if cause else f"{what}, without an error message{where}.")
        err.tail = self.output_tail()
        return err

    def _read_output(self, stream: Any, log: Any) -> None:
        for raw in stream:
            if log is not None:
                log.write(raw)
                log.flush()
            line = raw.decode("utf-8", errors="replace").rstrip()
            self._tail.append(line)
            if _READY.search(line):
                self._ready.set()
            m = _CRASHED.search(line)
            if m:
                self._crashed.append(m.group(1))
        if log is not None:
            log.close()

    def _fetch_instances(self) -> list[dict[str, Any]]:
        url = f"http://127.0.0.1:{self.head_port}/server_instances"
        with urllib.request.urlopen(url, timeout=10) as resp:  # noqa: S310 - loopback only
            data = orjson.loads(resp.read())
        return data if isinstance(data, list) else []

    def output_tail(self, n: int = 25) -> str:
        """The last `n` lines ng_run printed (for error messages)."""
        return "\n".join(list(self._tail)[-n:])

    def url(self, name: str) -> str:
        """The base URL of server `name` (process name or server type name)."""
        if name in self.urls:
            return self.urls[name]
        for inst in self.instances:
            if inst.get("name") == name and inst.get("url"):
                return inst["url"]
        raise NemoGymError(f"no NeMo Gym server named {name!r}; running: {', '.join(self.urls)}")

    def stop(self, timeout: float | None = None) -> None:
        """Stop ng_run and everything it started (servers, Ray) with `gymverl.proc`'s ladder; twice is fine.

        Also from another thread while `start()` runs there: it then starts nothing more and raises.
        A stopped NemoGymServers is not started again (make a new one).

        `timeout`: seconds ng_run gets after SIGINT (it stops its servers and Ray itself) before
        SIGTERM and SIGKILL reach the whole group and every descendant; default `proc.GRACE`.
        """
        with self._lock:
            self._stopped.set()
            child = self._proc
        if child is not None:
            # Not the 30 s it was: with SIGTERM's and SIGKILL's waits the whole ladder must end
            # before Kubernetes' SIGKILL (30 s after SIGTERM by default), or what ng_run started
            # outlives us. ng_run's own shutdown has its limits: 1 s per server after SIGINT
            # (then SIGKILL, 2 s), then `ray.shutdown()`; it took 3.5-5 s here.
            child.stop(grace=proc.GRACE if timeout is None else timeout)
            self.signalled = self.signalled or child.signalled
        if self._reader is not None:
            self._reader.join(timeout=5)
        if self._tmpdir is not None:
            self._tmpdir.cleanup()
            self._tmpdir = None
        self._release_build_lock()
        if self._ray_tmpdir is not None:
            # After ng_run and Ray are gone: their session folders and sockets are this run's only.
            shutil.rmtree(self._ray_tmpdir, ignore_errors=True)
            self._ray_tmpdir = None
        self._proc = None

    def __enter__(self) -> "NemoGymServers":
        # SIGTERM/SIGHUP must stop the servers as Ctrl-C does for the whole `with` block, also when
        # gymverl is used as a library (the CLI holds this already; holding it twice is fine).
        self._signals.enter_context(proc.signals_as_interrupt())
        try:
            return self.start()
        except BaseException:
            self._signals.close()
            raise

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        try:
            self.stop()
        finally:
            self._signals.close()
        if self.signalled and exc_type is None:
            raise KeyboardInterrupt  # a Ctrl-C while stopping still interrupts the caller


def start_resources_servers(
    names: Sequence[str], *, env: str | os.PathLike[str] | None = None, **kwargs: Any
) -> NemoGymServers:
    """A (not yet started) NemoGymServers running only the named resources servers, e.g. ["mcqa"]."""
    found = find_env(env)
    configs = [resources_server_config(found, n) for n in names]
    return NemoGymServers(configs, env=found, resources_only=True, **kwargs)


@contextlib.contextmanager
def running_resources_servers(names: Sequence[str], **kwargs: Any) -> Iterator[NemoGymServers]:
    """Context manager: the named resources servers running on 127.0.0.1; stopped on exit."""
    servers = start_resources_servers(names, **kwargs)
    with servers:
        yield servers


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m gymverl.nemo_gym [--warmup] NAME...`: start resources servers and print their URLs.

    Without `--warmup` it runs until Ctrl-C; with it, it stops right after the servers are ready
    (`make setup` uses that so NeMo Gym's per-server venvs are built before the first real run).
    """
    args = list(argv if argv is not None else sys.argv[1:])
    usage = "usage: python -m gymverl.nemo_gym [--warmup] RESOURCES_SERVER [...]"
    if any(a in ("-h", "--help") for a in args):
        print(
            f"{usage}\n\nStart NeMo Gym resources servers (e.g. mcqa, math_with_judge) from ${ENV_VAR}'s venv and print\n"
            "one line per server: NAME<TAB>URL. Runs until Ctrl-C; --warmup stops once they are ready.\n"
            "Exit codes: 0 ok, 1 NeMo Gym could not start them, 2 usage error (an unknown server name), 130 interrupted."
        )
        return 0
    warmup = "--warmup" in args
    names = [a for a in args if a != "--warmup"]
    unknown = [a for a in names if a.startswith("-")]
    if not names or unknown:
        print(f"{usage}\nerror: unknown option {unknown[0]}." if unknown else usage, file=sys.stderr)
        return 2
    try:
        # Run as a script, not through the CLI: SIGTERM/SIGHUP must stop ng_run and Ray like Ctrl-C.
        with proc.signals_as_interrupt(), running_resources_servers(names) as servers:
            for name, url in servers.urls.items():
                print(f"{name}\t{url}", flush=True)
            while not warmup:
                time.sleep(3600)
    except KeyboardInterrupt:
        # (the servers were stopped on the way out of running_resources_servers)
        print("interrupted: the NeMo Gym servers were stopped.", file=sys.stderr)
        return 130
    except GymverlError as exc:
        if getattr(exc, "tail", ""):
            print(exc.tail, file=sys.stderr)  # type: ignore[attr-defined]
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())


__all__ = [
    "ENV_VAR",
    "NemoGymError",
    "NemoGymServers",
    "find_env",
    "free_port",
    "nemo_gym_version",
    "package_dir",
    "resources_only_config",
    "resources_server_config",
    "running_resources_servers",
    "start_resources_servers",
    "subprocess_env",
]
