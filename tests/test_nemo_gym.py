"""gymverl.nemo_gym: finding the NeMo Gym venv and running real NeMo Gym servers on loopback."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import psutil
import pytest
import yaml

from gymverl import nemo_gym
from gymverl.nemo_gym import NemoGymError, find_env, resources_only_config, resources_server_config

from conftest import marked_processes, REPO, SAMPLE_DATA


def test_find_env_missing_is_one_clear_sentence(tmp_path: Path) -> None:
    with pytest.raises(NemoGymError) as exc:
        find_env(tmp_path / "nowhere")
    msg = str(exc.value)
    assert "NeMo Gym not found" in msg and "make setup" in msg and "\n" not in msg


def test_find_env_uses_environment_variable(monkeypatch: pytest.MonkeyPatch, nemo_gym_env: Path) -> None:
    monkeypatch.setenv(nemo_gym.ENV_VAR, str(nemo_gym_env))
    assert find_env() == nemo_gym_env
    monkeypatch.setenv(nemo_gym.ENV_VAR, "/definitely/not/here")
    with pytest.raises(NemoGymError, match="/definitely/not/here"):
        find_env()


def test_installed_version_is_detected_from_the_install(nemo_gym_env: Path, tmp_path: Path) -> None:
    """One version check (ng_setup's, from the dist-info METADATA): a supported release, never guessed."""
    from gymverl import ng_setup

    version = nemo_gym.nemo_gym_version(nemo_gym_env)
    assert version == ng_setup.read_install(nemo_gym_env).version
    assert version in ("0.7.0", "0.4.0"), version
    assert nemo_gym.nemo_gym_version(tmp_path) is None  # no install: None, not a guess


def test_find_env_message_points_at_make_setup_for_07(tmp_path: Path) -> None:
    with pytest.raises(NemoGymError) as exc:
        find_env(tmp_path / "nowhere")
    msg = str(exc.value)
    assert "nemo-gym 0.7.0" in msg and "NEMO_GYM=0.4.0" in msg and "3.12" not in msg, msg


def test_unknown_resources_server_suggests_close_names(nemo_gym_env: Path) -> None:
    with pytest.raises(NemoGymError, match="unknown NeMo Gym resources server 'mcq'; did you mean mcqa") as info:
        resources_server_config(nemo_gym_env, "mcq")
    assert info.value.exit_code == 2  # a name the user typed: a usage error


def test_nemo_gym_module_help_and_usage_errors(nemo_gym_env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """`python -m gymverl.nemo_gym --help` said "unknown NeMo Gym resources server '--help'; 145
    are installed", exit 1: --help is usage text, exit 0; an unknown option or server name is a
    usage error, exit 2 (gymverl.errors' table), and nothing is started."""
    from gymverl.nemo_gym import main

    monkeypatch.setenv("GYMVERL_NEMO_GYM_ENV", str(nemo_gym_env))
    for flag in ("--help", "-h"):
        assert main([flag]) == 0
        out, err = capsys.readouterr()
        assert out.startswith("usage: python -m gymverl.nemo_gym") and "NAME<TAB>URL" in out and not err
    assert main(["--verbose", "mcqa"]) == 2
    assert "error: unknown option --verbose." in capsys.readouterr().err
    assert main(["mcq"]) == 2
    assert "error: unknown NeMo Gym resources server 'mcq'; did you mean mcqa" in capsys.readouterr().err


def test_resources_only_config_drops_agents(nemo_gym_env: Path, tmp_path: Path) -> None:
    cfg = resources_server_config(nemo_gym_env, "math_with_judge")
    original = yaml.safe_load(cfg.read_text())
    assert any("responses_api_agents" in v for v in original.values())
    out, needs_model = resources_only_config(cfg, tmp_path / "c.yaml")
    kept = yaml.safe_load(out.read_text())
    assert list(kept) == ["math_with_judge"]
    assert needs_model  # its judge reference must resolve to a model server
    _, needs_model = resources_only_config(resources_server_config(nemo_gym_env, "mcqa"), tmp_path / "m.yaml")
    assert not needs_model


def test_argv_keeps_everything_on_loopback(nemo_gym_env: Path) -> None:
    servers = nemo_gym.start_resources_servers(["mcqa"], env=nemo_gym_env)
    try:
        argv = servers.argv()
    finally:
        servers.stop()
    assert argv[0].endswith("/bin/ng_run")
    assert "++head_server.host=127.0.0.1" in argv
    assert f"++head_server.port={servers.head_port}" in argv
    assert nemo_gym.subprocess_env(nemo_gym_env)["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "0"
    assert nemo_gym.subprocess_env(nemo_gym_env, "/tmp/gv-ray-x")["RAY_TMPDIR"] == "/tmp/gv-ray-x"


def test_argv_gives_servers_a_venv_that_works_with_the_installed_release(nemo_gym_env: Path) -> None:
    """ng07-01-servers-need-uv-venv: where nemo-gym's Requires-Python is not met (0.7.0 on Python
    3.13.0), every server runs from the one NeMo Gym venv through this run's own links (a fresh
    folder per run: a retry never reuses what a failed start left); else per-server venvs."""
    from gymverl import ng_setup

    install = ng_setup.read_install(nemo_gym_env)
    works, _ = install.per_server_venvs_work()
    servers = nemo_gym.start_resources_servers(["mcqa"], env=nemo_gym_env)
    try:
        argv = servers.argv()
        assert "+skip_venv_if_present=true" in argv
        venv_dirs = [a.split("=", 1)[1] for a in argv if a.startswith("+uv_venv_dir=")]
        if works:
            assert not venv_dirs
        else:
            assert len(venv_dirs) == 1
            link = Path(venv_dirs[0]) / "resources_servers" / "mcqa" / ".venv"
            assert link.is_symlink() and link.resolve() == nemo_gym_env.resolve()
        # No real policy: 0.7.0 must not wait for (and then give up on) the placeholder endpoint.
        assert "++model_endpoint_readiness_timeout_seconds=0" in argv
    finally:
        servers.stop()
    assert not venv_dirs or not Path(venv_dirs[0]).exists()  # the run's links go with it
    with_policy = nemo_gym.NemoGymServers(
        [nemo_gym.resources_server_config(nemo_gym_env, "mcqa")], env=nemo_gym_env, policy_base_url="http://127.0.0.1:1/v1"
    )
    try:
        assert "++model_endpoint_readiness_timeout_seconds=0" not in with_policy.argv()
    finally:
        with_policy.stop()


@pytest.mark.nemo_gym
def test_real_servers_verify_sample_rollouts(gym_servers) -> None:
    """The sample rollouts' rewards are exactly what NeMo Gym's own verifiers return."""
    for name in ("math_with_judge", "xlam_fc", "mcqa"):
        assert gym_servers.url(name).startswith("http://127.0.0.1:")
    for line in (SAMPLE_DATA / "rollouts.jsonl").read_text().splitlines():
        row = json.loads(line)
        server = "math_with_judge" if row["agent_ref"]["name"].startswith("math") else "xlam_fc"
        body = {k: v for k, v in row.items() if k != "reward"}
        req = urllib.request.Request(
            gym_servers.url(server) + "/verify", data=json.dumps(body).encode(), headers={"content-type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=30) as resp:
            answer = json.load(resp)
        assert answer["reward"] == row["reward"], (row["_ng_task_index"], row["_ng_rollout_index"])


def test_start_failure_is_reported_with_output(nemo_gym_env: Path, tmp_path: Path) -> None:
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("broken:\n  resources_servers:\n    does_not_exist:\n      entrypoint: app.py\n")
    with pytest.raises(NemoGymError, match="has no server folder resources_servers/does_not_exist"):
        nemo_gym.NemoGymServers([unknown], env=nemo_gym_env, startup_timeout=120).start()
    # A server folder that exists, with a config NeMo Gym's own validation rejects (no domain, ...).
    bad = tmp_path / "bad.yaml"
    bad.write_text("broken:\n  resources_servers:\n    mcqa:\n      entrypoint: app.py\n")
    servers = nemo_gym.NemoGymServers([bad], env=nemo_gym_env, startup_timeout=120)
    with pytest.raises(NemoGymError, match="failed to start|not ready") as err:
        servers.start()
    assert servers._proc is None  # stopped and reaped
    # One sentence with ng_run's own reason, not "last output:" and a page (or nothing) after it.
    message = str(err.value)
    assert "\n" not in message and "last output" not in message, message
    assert "validation errors" in message, message
    assert "validation errors" in err.value.tail


def test_startup_cause_reads_ng_run_and_server_errors() -> None:
    assert nemo_gym.startup_cause(["Error: Found 1 almost-server(s) with validation errors. Fix the issues above or"]) == (
        "Found 1 almost-server(s) with validation errors."
    )
    lines = ["Traceback (most recent call last):", '  File "app.py", line 3', "ModuleNotFoundError: No module named 'x'", "(pid=1) done"]
    assert nemo_gym.startup_cause(lines) == "ModuleNotFoundError: No module named 'x'"
    assert nemo_gym.startup_cause(["all fine", ""]) is None


def test_startup_cause_reads_uv_and_half_built_venv_errors() -> None:
    """ng07-01: the uv lines (first start) and the ModuleNotFoundError (a retry reusing the
    half-built venv) are the cause, named by server, in one line."""
    lines = [
        "(mcqa) Using CPython 3.13.0",
        "(mcqa)   × No solution found when resolving dependencies:",
        "(mcqa) error: No solution found when resolving dependencies",
        "(mcqa)   cause: Because the current Python version (3.13) does not satisfy Python>=3.13.14 and "
        "nemo-gym==0.7.0 depends on Python>=3.13.14, we can conclude that nemo-gym==0.7.0 cannot be used.",
        "Process `mcqa` finished unexpectedly!",
    ]
    cause = nemo_gym.startup_cause(lines)
    assert cause is not None and cause.startswith("mcqa: uv could not build the server's venv"), cause
    assert "does not satisfy Python>=3.13.14" in cause and "\n" not in cause
    assert nemo_gym.startup_cause(["(mcqa) error: No interpreter found for Python 3.13.0 in search path"]) == (
        "mcqa: uv could not build the server's venv (No interpreter found for Python 3.13.0 in search path)"
    )
    retry = ["(mcqa) Traceback (most recent call last):", "(mcqa)   File \"app.py\", line 1",
             "(mcqa) ModuleNotFoundError: No module named 'fastapi'", "Process `mcqa` finished unexpectedly!"]
    assert nemo_gym.startup_cause(retry) == "mcqa: ModuleNotFoundError: No module named 'fastapi'"
    assert nemo_gym.startup_cause(["(mcqa) bash: line 1: uv: command not found"]) == "mcqa: bash: line 1: uv: command not found"
    never = [
        "nemo_gym.global_config.ConfigError: 1 model endpoint(s) never answered within 600s:",
        "  - http://127.0.0.1:9/v1 (from `policy_base_url`)",
        "",
    ]
    assert nemo_gym.startup_cause(never) == (
        "ConfigError: 1 model endpoint(s) never answered within 600s http://127.0.0.1:9/v1 (from `policy_base_url`)"
    )


def _marked(mark: str) -> list[str]:
    """Live processes that inherited GYMVERL_TEST_MARK=mark (ng_run, Ray, the servers)."""
    return marked_processes("GYMVERL_TEST_MARK", mark)


# Kubernetes sends SIGKILL 30 s after SIGTERM by default; measured 3.5-5 s here.
STOP_BOUND_S = 10.0


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # what sh does to a background job (`cmd &`)


@pytest.mark.nemo_gym
@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    ("sig", "background"),
    [(signal.SIGTERM, False), (signal.SIGTERM, True), (signal.SIGHUP, True), (signal.SIGINT, False)],
    ids=["sigterm", "sigterm-background-job", "sighup-background-job", "ctrl-c"],
)
def test_stop_signal_stops_ng_run_ray_and_every_server_within_seconds(nemo_gym_env: Path, sig: int, background: bool) -> None:
    """servers-leak-on-sigterm: SIGTERM to `python -m gymverl.nemo_gym mcqa` (a job scheduler, `timeout`),
    SIGHUP (a closed terminal) or Ctrl-C stops ng_run, Ray and the servers: exit 130 within
    STOP_BOUND_S, nothing left, the port closed. Run as a script's background job (SIGINT ignored,
    inherited by ng_run and Ray) it took 33 s: they sat out the whole SIGINT grace before SIGTERM."""
    mark = uuid.uuid4().hex
    env = {**os.environ, "GYMVERL_TEST_MARK": mark, "PYTHONPATH": str(REPO), "GYMVERL_NEMO_GYM_ENV": str(nemo_gym_env)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "gymverl.nemo_gym", "mcqa"], cwd=REPO, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=_ignore_sigint if background else None,  # noqa: PLW1509 - the test's own child
    )  # fmt: skip
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x) for x in proc.stdout], daemon=True).start()  # type: ignore[union-attr]
    try:
        try:
            name, url = lines.get(timeout=180).rstrip("\n").split("\t")
        except queue.Empty:
            pytest.fail("mcqa did not start within 180 s")
        assert name == "mcqa" and url.startswith("http://127.0.0.1:")
        running = _marked(mark)
        assert len(running) >= 4 and any("raylet" in r for r in running), running  # the check below means something
        # Ray runs in this run's own short folder (AF_UNIX socket paths), removed when it stops.
        ray_dirs = {psutil.Process(int(r.split()[0])).environ().get("RAY_TMPDIR") for r in running if "raylet" in r}
        assert len(ray_dirs) == 1 and None not in ray_dirs, ray_dirs
        ray_dir = ray_dirs.pop()
        assert ray_dir.startswith("/tmp/gv-ray-") and Path(ray_dir).is_dir()
        t0 = time.monotonic()
        proc.send_signal(sig)
        stderr = proc.communicate(timeout=90)[1]
        took = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr[-2000:]
    assert stderr.rstrip().endswith("interrupted: the NeMo Gym servers were stopped."), stderr[-2000:]
    deadline = time.monotonic() + 15
    while _marked(mark) and time.monotonic() < deadline:
        time.sleep(0.5)  # Ray workers exit a moment after their raylet
    left = _marked(mark)
    for entry in left:  # never leak into the next test, even when this one fails
        with contextlib.suppress(psutil.NoSuchProcess):
            psutil.Process(int(entry.split()[0])).kill()
    assert not left, f"left running after {signal.Signals(sig).name}: {left}"
    assert took < STOP_BOUND_S, f"exited {took:.1f} s after {signal.Signals(sig).name}"
    assert not Path(ray_dir).exists()
    with pytest.raises((urllib.error.URLError, ConnectionError)):
        urllib.request.urlopen(url + "/", timeout=5)  # noqa: S310 - loopback


def test_stop_ladder_ends_before_kubernetes_sigkill(nemo_gym_env: Path) -> None:
    """Kubernetes sends SIGKILL 30 s after SIGTERM: even when ng_run hangs, SIGINT's grace plus the
    SIGTERM and SIGKILL waits must end before it (the grace was 30 s: 40 s in all)."""
    from gymverl import proc

    graces: list[float] = []

    class Child:
        signalled = False

        def stop(self, grace: float) -> None:
            graces.append(grace)

    servers = nemo_gym.start_resources_servers(["mcqa"], env=nemo_gym_env)
    servers._proc = Child()  # type: ignore[assignment]
    servers.stop()
    assert len(graces) == 1 and graces[0] + proc.TERM_WAIT + proc.KILL_WAIT < 30, graces

@pytest.mark.nemo_gym
def test_stop_from_another_thread_while_starting_leaves_nothing(nemo_gym_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The demo starts servers in a background thread and stops them from the main one (Ctrl-C):
    start() gives up with one sentence (not an AttributeError) and nothing it started is left."""
    mark = uuid.uuid4().hex
    monkeypatch.setenv("GYMVERL_TEST_MARK", mark)  # inherited by ng_run, Ray and the servers
    servers = nemo_gym.start_resources_servers(["mcqa"], env=nemo_gym_env)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            servers.start()
        except BaseException as exc:  # noqa: BLE001 - the test looks at it
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not any("ng_run" in p for p in _marked(mark)):
        time.sleep(0.2)
    time.sleep(2)
    servers.stop()
    thread.join(60)
    deadline = time.monotonic() + 15
    while _marked(mark) and time.monotonic() < deadline:
        time.sleep(0.5)
    left = _marked(mark)
    for entry in left:
        with contextlib.suppress(psutil.NoSuchProcess):
            psutil.Process(int(entry.split()[0])).kill()
    assert not thread.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], NemoGymError), errors
    assert "stopped before" in str(errors[0])
    assert not left, f"left running: {left}"


def test_retry_after_a_failed_start_is_like_the_first_try(tmp_path: Path) -> None:
    """ng07-01: what a failed start leaves never changes the next start.

    Per-server venvs (a Python inside nemo-gym's Requires-Python): the half-built `.venv` that uv
    left (python + activate, no packages) is removed before the start, so NeMo Gym builds it again
    instead of reusing it (`No module named 'fastapi'`). One shared venv (0.7.0 on Python 3.13.0):
    every start links the servers into a folder of its own, whatever is left in the package."""
    from test_ng_setup import fake_venv, half_built, site_of

    for version, requires, python, shared in (("0.4.0", ">=3.12", "3.12.1", False), ("0.7.0", ">=3.13.14", "3.13.0", True)):
        env = fake_venv(tmp_path / version, version=version, requires=requires, python=python)
        (env / "bin" / "ng_run").write_text("")
        site = site_of(env)
        left = half_built(site / "resources_servers/mcqa/.venv")  # the first, failed start's leftover
        cfg = site / "resources_servers/mcqa/configs/mcqa.yaml"
        argvs = []
        for _ in range(2):
            servers = nemo_gym.NemoGymServers([cfg], env=env, resources_only=True)
            try:
                argvs.append(servers.argv())
            finally:
                servers.stop()
        dirs = [[a for a in argv if a.startswith("+uv_venv_dir=")] for argv in argvs]
        if shared:
            assert all(len(d) == 1 for d in dirs) and dirs[0] != dirs[1], dirs  # a fresh link folder each time
            assert left.is_dir()  # not ours to remove, and never used: NeMo Gym looks in the link folder
        else:
            assert dirs == [[], []] and not left.exists()
        assert [a for a in argvs[0] if not a.startswith(("+uv_venv_dir=", "++head_server.port=", "+config_paths="))] == [
            a for a in argvs[1] if not a.startswith(("+uv_venv_dir=", "++head_server.port=", "+config_paths="))
        ]


def test_concurrent_starts_never_remove_a_venv_being_built(tmp_path: Path) -> None:
    """Per-server venvs: a start that needs one built holds a lock per NeMo Gym venv until ready, so
    a concurrent start waits instead of removing that venv as half-built; nothing to build, no lock."""
    import fcntl as _fcntl
    import hashlib as _hashlib
    import tempfile as _tempfile

    from test_ng_setup import fake_venv, site_of

    env = fake_venv(tmp_path, version="0.4.0", requires=">=3.12", python="3.12.1")
    (env / "bin" / "ng_run").write_text("")
    cfg = site_of(env) / "resources_servers/mcqa/configs/mcqa.yaml"
    lock = Path(_tempfile.gettempdir()) / f"gymverl-ng-venvs-{_hashlib.sha1(str(env.resolve()).encode()).hexdigest()[:12]}.lock"
    holder = os.open(lock, os.O_RDWR | os.O_CREAT)
    try:
        _fcntl.flock(holder, _fcntl.LOCK_EX)  # another run is building
        servers = nemo_gym.NemoGymServers([cfg], env=env, resources_only=True, startup_timeout=1)
        with pytest.raises(NemoGymError, match="another gymverl run has been building NeMo Gym's server venvs"):
            servers.start()
        assert servers._proc is None  # nothing was started
        _fcntl.flock(holder, _fcntl.LOCK_UN)
        servers = nemo_gym.NemoGymServers([cfg], env=env, resources_only=True, startup_timeout=1)
        servers._build_lock = servers._wait_for_venv_builds(time.monotonic() + 1)
        assert servers._build_lock is not None
        servers.stop()  # releases it
        assert servers._build_lock is None
        # Every venv there: no lock needed.
        for folder in ("resources_servers/mcqa", "responses_api_agents/simple_agent", "responses_api_models/openai_model"):
            (site_of(env) / folder / ".venv").symlink_to(env)
        _fcntl.flock(holder, _fcntl.LOCK_EX | _fcntl.LOCK_NB)  # free again
        servers = nemo_gym.NemoGymServers([cfg], env=env, resources_only=True, startup_timeout=1)
        assert servers._wait_for_venv_builds(time.monotonic() + 1) is None
        servers.stop()
    finally:
        os.close(holder)
        lock.unlink(missing_ok=True)


def test_startup_cause_names_the_crashed_servers_last_line_when_nothing_reads_as_an_error() -> None:
    # CI once got "xlam_fc_simple_agent exited, without an error message" and nothing to go on.
    lines = [
        "INFO:     Uvicorn running on http://127.0.0.1:1234",
        "Process `xlam_fc_simple_agent` finished unexpectedly!",
        "Process `xlam_fc_simple_agent` stdout:",
        "INFO:     Waiting for application startup.",
        "",
    ]
    cause = nemo_gym.startup_cause(lines)
    assert cause == "xlam_fc_simple_agent exited; the last line before that was 'INFO:     Waiting for application startup.'"
    silent = nemo_gym.startup_cause(["Process `a` finished unexpectedly!"])
    assert silent == "a exited without printing anything (killed by a signal, e.g. out of memory?)"
