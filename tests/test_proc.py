"""gymverl.proc: the one supervisor (own group, SIGINT -> SIGTERM -> SIGKILL to group and descendants)
and the one signal policy (SIGTERM/SIGHUP act as Ctrl-C). Real processes, real signals, bounded time."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from gymverl import collect as C
from gymverl import proc

# A child that ignores SIGINT (a slow shutdown) and starts a grandchild in a session of its own
# (as torchrun does with its workers) that ignores SIGINT and SIGTERM: only the ladder's SIGKILL to
# every descendant seen stops it. The pids go to argv[1] as they start.
STUBBORN = r"""
import os, signal, subprocess, sys, time
signal.signal(signal.SIGINT, signal.SIG_IGN)
grandchild = subprocess.Popen(
    [sys.executable, "-c",
     "import signal, time; signal.signal(signal.SIGINT, signal.SIG_IGN); signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"],
    start_new_session=True,
)
with open(sys.argv[1], "w") as f:
    f.write(f"{os.getpid()} {grandchild.pid}\n")
time.sleep(600)
"""


def _pids(path: Path, timeout: float = 20.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().endswith("\n"):
            return [int(x) for x in path.read_text().split()]
        time.sleep(0.05)
    raise AssertionError("the stand-in process did not start")


def _alive(pids: list[int]) -> list[int]:
    out = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                out.append(pid)
        except psutil.NoSuchProcess:
            continue
    return out


def _cleanup(pids: list[int]) -> None:
    for pid in _alive(pids):
        psutil.Process(pid).kill()


def test_stop_reaches_descendants_that_left_the_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "pids"
    child = proc.start([sys.executable, "-c", STUBBORN, str(pidfile)])
    pids = _pids(pidfile)
    t0 = time.monotonic()
    try:
        assert len(_alive(pids)) == 2
        assert child.stop(grace=0.5) == -signal.SIGTERM  # SIGINT ignored; SIGTERM ends it
    finally:
        left = _alive(pids)
        _cleanup(pids)
    assert left == [], f"left running: {left}"
    assert time.monotonic() - t0 < 0.5 + proc.TERM_WAIT + proc.KILL_WAIT + 3
    assert child.stop() == child.returncode  # twice is fine



def _sig_ignored(pid: int, sig: int) -> bool:
    with open(f"/proc/{pid}/status") as f:
        mask = next(int(line.split()[1], 16) for line in f if line.startswith("SigIgn:"))
    return bool(mask >> (sig - 1) & 1)


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="reads SigIgn from /proc")
def test_a_child_acts_on_sigint_also_when_gymverl_ignores_it(tmp_path: Path) -> None:
    """A shell starts a background job (`python -m gymverl.nemo_gym mcqa &`) with SIGINT ignored,
    and an ignored signal stays ignored across exec: ng_run and Ray sat out the ladder's whole SIGINT
    grace and SIGTERM came 30 s late. Children now start with it at its default; gymverl still ignores it."""
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        child = proc.start([sys.executable, "-c", "import time; print(flush=True); time.sleep(60)"], stdout=subprocess.PIPE)
        try:
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN  # gymverl's own choice is kept
            child.popen.stdout.readline()  # type: ignore[union-attr]  # running (exec'd, handlers set)
            assert not _sig_ignored(child.pid, signal.SIGINT) and not _sig_ignored(child.pid, signal.SIGTERM)
            t0 = time.monotonic()
            assert child.stop(grace=30) == -signal.SIGINT  # an uncaught KeyboardInterrupt: the first rung
            assert time.monotonic() - t0 < 10
        finally:
            child.stop(grace=0)
    finally:
        signal.signal(signal.SIGINT, old)


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="reads SigIgn from /proc")
def test_a_child_that_ignores_sigint_is_not_given_the_grace(tmp_path: Path) -> None:
    """Only the leader gets SIGINT: when it ignores it, waiting `grace` is time lost; SIGTERM comes at once."""
    pidfile = tmp_path / "pids"
    child = proc.start([sys.executable, "-c", STUBBORN, str(pidfile)])
    pids = _pids(pidfile)
    try:
        t0 = time.monotonic()
        assert child.stop(grace=30) == -signal.SIGTERM
        took = time.monotonic() - t0
    finally:
        left = _alive(pids)
        _cleanup(pids)
    assert left == [], f"left running: {left}"
    assert took < proc.TERM_WAIT + proc.KILL_WAIT + 3, took  # not 30 s of SIGINT grace first

def test_sigterm_to_gymverl_stops_the_collector_and_its_workers(tmp_path: Path, nemo_gym_env: Path, default_stop_signals) -> None:
    """SIGTERM while collecting: the collector and a worker in its own session are both gone afterwards
    (the old ladder signalled the collector's group only)."""
    pidfile = tmp_path / "pids"
    out = tmp_path / "o.jsonl"
    threading.Thread(target=lambda: (_pids(pidfile), os.kill(os.getpid(), signal.SIGTERM)), daemon=True).start()
    try:
        r = C.run_collector(
            [sys.executable, "-c", STUBBORN, str(pidfile)], env=nemo_gym_env, output=out, log_path=tmp_path / "log",
            poll=0.05, grace=0.5,
        )  # fmt: skip
    finally:
        pids = _pids(pidfile)
        left = _alive(pids)
        _cleanup(pids)
    assert r.interrupted
    assert left == [], f"left running: {left}"


@pytest.fixture
def default_stop_signals():
    """SIGTERM/SIGHUP at their defaults and nothing holding them, for this test only.

    A session fixture that keeps NeMo Gym servers running holds `signals_as_interrupt` (proc.start
    does, while a child runs). Resetting the handlers alone would leave proc's hold count above
    zero, so the test's own `signals_as_interrupt` would not install its handler and its SIGTERM
    would kill the test run: save and restore both."""
    saved = {sig: signal.getsignal(sig) for sig in proc.STOP_SIGNALS}
    holders, previous = proc._holders, dict(proc._previous)
    proc._holders = 0
    proc._previous.clear()
    for sig in proc.STOP_SIGNALS:
        signal.signal(sig, signal.SIG_DFL)
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
        proc._holders = holders
        proc._previous.clear()
        proc._previous.update(previous)


def test_signals_as_interrupt_nests_and_respects_nohup(default_stop_signals) -> None:
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    old_hup = signal.signal(signal.SIGHUP, signal.SIG_IGN)  # what `nohup` does
    try:
        with proc.signals_as_interrupt():
            with proc.signals_as_interrupt():
                pass
            # The inner block's end must not restore the default while the outer one still holds.
            with pytest.raises(KeyboardInterrupt):
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(1)
            os.kill(os.getpid(), signal.SIGHUP)  # ignored, as nohup asked: no KeyboardInterrupt
            time.sleep(0.1)
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, old_hup)


def test_started_child_is_interrupted_by_sigterm_also_without_the_cli(tmp_path: Path, default_stop_signals) -> None:
    """A library caller gets the same cleanup: SIGTERM raises KeyboardInterrupt while a child runs."""
    child = proc.start([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)
            child.wait(10)
    finally:
        child.stop(grace=1)
    assert child.returncode is not None and not child.running()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_log_cause_skips_torchruns_box() -> None:
    lines = [
        "[rank0]:   File \"/x/sft_dataset.py\", line 412, in __getitem__",
        "[rank0]: ValueError: sequence_length=10438 is larger than self.max_length=1024",
        "E1130 01:00:00 torch/distributed/elastic/multiprocessing/api.py:874] failed (exitcode: 1)",
        "Traceback (most recent call last):",
        "torch.distributed.elastic.multiprocessing.errors.ChildFailedError: ",
        "============================================================",
        "verl.trainer.sft_trainer FAILED",
        "Failures:",
        "  <NO_OTHER_FAILURES>",
    ]
    assert proc.log_cause(lines) == "ValueError: sequence_length=10438 is larger than self.max_length=1024"
    assert proc.log_cause(["all good"]) is None


def test_log_cause_reads_hydras_instantiate_error() -> None:
    """main_ppo's config errors come through Hydra's `Error in call to target` block, which prints the
    exception as its repr (seen with VeRL 0.9.1 when no micro batch size is set): the cause is that
    exception, not "no cause"."""
    lines = [
        "Error executing job with overrides: ['algorithm.adv_estimator=grpo']",
        "Error in call to target 'verl.workers.config.actor.FSDPActorConfig':",
        "AssertionError(\"[actor] Please set at least one of 'actor.ppo_micro_batch_size' or 'actor.ppo_micro_batch_size_per_gpu'.\")",
        "full_key: actor_rollout_ref.actor",
        "",
        "Set the environment variable HYDRA_FULL_ERROR=1 for a complete stack trace.",
    ]
    assert proc.log_cause(lines) == (
        "AssertionError: [actor] Please set at least one of 'actor.ppo_micro_batch_size' or 'actor.ppo_micro_batch_size_per_gpu'."
    )


def test_log_cause_reads_the_exception_ray_wraps() -> None:
    """main_ppo's workers fail inside Ray: the log ends with Ray's wrappers (coloured, naming only the
    worker and an object repr) around the real exception, here gymverl's own EnvEpisodeFailed (a
    train-online run against a server that was down reported the RayTaskError line)."""
    lines = [
        "ray.exceptions.RayTaskError(UnserializableException): \x1b[36mray::TaskRunner.run()\x1b[39m (pid=30690, ip=192.0.2.2, repr=<verl.trainer.main_ppo_v0.TaskRunner object at 0x7fa2>)",
        "ray.exceptions.UnserializableException: Failed to deserialize exception. Refer to https://docs.ray.io/",
        "ray.exceptions.RayTaskError: \x1b[36mray::AgentLoopWorker.generate_sequences()\x1b[39m (pid=30962, repr=<verl.experimental.agent_loop.agent_loop.AgentLoopWorker object at 0x7f2b>)",
        '  File "/x/gymverl/env_loop.py", line 300, in _post',
        "    raise EnvEpisodeFailed(stage, kind, msg) from None",
        "gymverl.env_loop.EnvEpisodeFailed: NeMo Gym episode failed at seed_session: connection: POST /seed_session: ClientConnectorError: Cannot connect to host 127.0.0.1:9",
        "",
        "Set the environment variable HYDRA_FULL_ERROR=1 for a complete stack trace.",
    ]
    assert proc.log_cause(lines) == (
        "EnvEpisodeFailed: NeMo Gym episode failed at seed_session: connection: POST /seed_session: "
        "ClientConnectorError: Cannot connect to host 127.0.0.1:9"
    )
    # Ray's colour codes never reach the sentence
    assert proc.log_cause(["ValueError: \x1b[31mbad\x1b[0m"]) == "ValueError: bad"


# A command that was interrupted has cleaned up and is only exiting; its way out (here an atexit
# hook that takes a while, like Ray's or a thread join) must not turn a second Ctrl-C into death by
# SIGINT (-2): CI saw exactly that for `gymverl demo` pressed twice.
_SLOW_EXIT = """
import atexit, sys, time, typer
from gymverl.cli import core
core._AS_PROGRAM = True  # as when run as the `gymverl` program (`app()`)
atexit.register(lambda: (print("exiting", flush=True), time.sleep(20)))
try:
    if sys.argv[1] == "fail":
        core.fail("interrupted.", core.EXIT_INTERRUPTED)
    else:
        core.exit_interrupted("stopped")
except typer.Exit as exc:
    sys.exit(exc.exit_code)
"""


def _ctrl_c_when(ready: str, code: str, *args: str, pause: float = 0.0) -> tuple[int, str]:
    """Run `code`, press Ctrl-C once it prints `ready` (and `pause` s more): (exit status, stderr)."""
    p = subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == ready
        time.sleep(pause)
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=15)
    finally:
        if p.poll() is None:
            p.kill()
    return p.returncode, err


@pytest.mark.parametrize("how", ["fail", "exit_interrupted"])
def test_a_second_ctrl_c_on_the_way_out_still_exits_130(how: str) -> None:
    code, err = _ctrl_c_when("exiting", _SLOW_EXIT, how)
    assert code == 130, err
    assert "interrupted" in err and "Traceback" not in err


# Later still: interpreter finalization (module teardown, after every atexit hook) puts SIG_DFL back
# for each signal with a Python handler, so a Ctrl-C there killed the exiting command (-2). Module
# teardown is made slow here by a global whose __del__ takes 3 s.
_SLOW_TEARDOWN = """
import sys, time, typer
from gymverl.cli import core
core._AS_PROGRAM = True  # as when run as the `gymverl` program (`app()`)
class Slow:
    def __del__(self):
        print("finalizing", flush=True)
        t = time.monotonic()
        while time.monotonic() - t < 3:
            pass
keep = Slow()
try:
    core.exit_interrupted("stopped")
except typer.Exit as exc:
    sys.exit(exc.exit_code)
"""


def test_a_ctrl_c_during_interpreter_teardown_still_exits_130() -> None:
    code, err = _ctrl_c_when("finalizing", _SLOW_TEARDOWN, pause=0.3)
    assert code == 130, err


def test_an_interrupted_command_run_in_process_leaves_signal_handling_alone() -> None:
    """Invoked in-process (CliRunner, a test, a notebook), a command's interrupt must not make the
    host process exit on its next Ctrl-C: a whole pytest run once exited 130 that way."""
    import typer

    from gymverl.cli import core
    from gymverl.cli import app
    from typer.testing import CliRunner

    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    assert core._AS_PROGRAM is False
    with pytest.raises(typer.Exit):
        core.fail("interrupted.", core.EXIT_INTERRUPTED)
    with pytest.raises(typer.Exit):
        core.exit_interrupted("stopped")
    assert CliRunner().invoke(app, ["--version"]).exit_code == 0
    assert {s: signal.getsignal(s) for s in before} == before


def test_log_cause_reads_ng_runs_own_error_line() -> None:
    """ng_run reports a config fault as one `Error: ...` line (here: `collect --servers
    math_with_judge` without --policy-url); the failure said "without an error message"."""
    lines = [
        "Loading config from /tmp/x.yaml",
        "Error: In server instance 'math_with_judge', field 'judge_model_server' references "
        "responses_api_models/'policy_model', which is not defined in the merged config.",
        "",
    ]
    assert proc.log_cause(lines) == (
        "In server instance 'math_with_judge', field 'judge_model_server' references "
        "responses_api_models/'policy_model', which is not defined in the merged config."
    )
