"""Process supervision and signals: the one home for starting, stopping and interrupting.

Every command gymverl runs treats SIGTERM and SIGHUP exactly like Ctrl-C (`signals_as_interrupt`):
a `KeyboardInterrupt` is raised in the main thread, so the same cleanup code runs for all three
(a job scheduler sends SIGTERM; a closed terminal sends SIGHUP).

Every child process gymverl starts (ng_run and its servers and Ray, NeMo Gym's collector, torchrun
and its workers) goes through `start`: it runs in a process group of its own (so a terminal's Ctrl-C
reaches gymverl only, which then stops the child once, in order) and is stopped by
`Supervised.stop` with one ladder: SIGINT to the group, then SIGTERM, then SIGKILL to the group and
to every descendant seen, including those that left the group (torchrun starts its workers in
sessions of their own). Nothing gymverl started outlives it, short of a SIGKILL to gymverl itself.
Children start with SIGINT and SIGTERM at their defaults even where gymverl ignores them (a shell's
background job ignores SIGINT), and a SIGINT the child ignores anyway is not waited for.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

# The signals that mean "stop now, cleanly" besides SIGINT (Ctrl-C), which Python already raises.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)

# The one timeout policy (seconds): the polite first signal gets GRACE (the child may be saving or
# shutting its own workers down), SIGTERM and SIGKILL get TERM_WAIT and KILL_WAIT each. Once the
# group leader has exited after SIGINT, what is left of its group gets STRAGGLERS before SIGTERM.
GRACE = 15.0
TERM_WAIT = 5.0
KILL_WAIT = 5.0
STRAGGLERS = 2.0
_POLL = 0.1


# ---- signals --------------------------------------------------------------------------------------

_lock = threading.Lock()
_holders = 0
_previous: dict[int, Any] = {}


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def _hold_signals() -> bool:
    """Start turning SIGTERM/SIGHUP into KeyboardInterrupt (counted; False outside the main thread)."""
    global _holders
    if threading.current_thread() is not threading.main_thread():
        return False
    with _lock:
        if _holders == 0:
            _previous.clear()
            for sig in STOP_SIGNALS:
                # Only a signal left at its default (death, no cleanup) is taken over: `nohup` ignores
                # SIGHUP on purpose, and an application's own handler stays the application's.
                if signal.getsignal(sig) is signal.SIG_DFL:
                    _previous[sig] = signal.signal(sig, _raise_interrupt)
        _holders += 1
    return True


def _release_signals() -> None:
    global _holders
    with _lock:
        _holders -= 1
        # Handlers can only be changed from the main thread; a child started there but stopped
        # from another thread leaves ours in place (they only raise KeyboardInterrupt, as Ctrl-C does).
        if _holders == 0 and threading.current_thread() is threading.main_thread():
            for sig, handler in _previous.items():
                if signal.getsignal(sig) is _raise_interrupt:  # nobody replaced ours meanwhile
                    signal.signal(sig, handler)
            _previous.clear()


@contextlib.contextmanager
def signals_as_interrupt() -> Iterator[None]:
    """While active, SIGTERM and SIGHUP raise `KeyboardInterrupt` in the main thread, like Ctrl-C.

    Nests (and overlaps, e.g. two supervised children stopped in any order): the handlers are
    installed by the first holder and restored by the last. Does nothing outside the main thread
    (Python delivers signals only there) and leaves alone a signal that is ignored (`nohup`) or
    handled by the application.
    """
    held = _hold_signals()
    try:
        yield
    finally:
        if held:
            _release_signals()


@contextlib.contextmanager
def _all_stop_signals(handler: Any) -> Iterator[None]:
    """Handle Ctrl-C, SIGTERM and SIGHUP with `handler` for a moment (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, *STOP_SIGNALS)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _exit_interrupted(signum: int, frame: Any) -> None:
    with contextlib.suppress(Exception):
        sys.stderr.flush()
    os._exit(130)


_exit_at_once = False  # set by exit_now_on_stop_signals


def exit_now_on_stop_signals() -> None:
    """From now on, Ctrl-C, SIGTERM or SIGHUP end the process at once with exit code 130.

    For a command that was interrupted and has already cleaned up: it is only exiting, and an
    impatient second Ctrl-C landing on that way out (a `finally`, an atexit hook) would otherwise
    raise a KeyboardInterrupt nobody catches, and the process would die of SIGINT (-2) instead of
    exiting 130. After the atexit hooks these signals are ignored (`_ignore_stop_signals_at_exit`).
    No-op outside the main thread."""
    global _exit_at_once
    if threading.current_thread() is not threading.main_thread():
        return
    _exit_at_once = True
    for sig in (signal.SIGINT, *STOP_SIGNALS):
        signal.signal(sig, _exit_interrupted)


def _ignore_stop_signals_at_exit() -> None:
    # Interpreter finalization (module teardown, after every atexit hook) resets each signal with a
    # Python handler to SIG_DFL, so one more Ctrl-C then killed an exiting command (-2, not 130).
    # An ignored signal is left ignored, and nothing is left to clean up by then.
    if _exit_at_once and threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, *STOP_SIGNALS):
            signal.signal(sig, signal.SIG_IGN)


# Registered when gymverl.proc is first imported (early: the CLI imports it before torch, Ray or
# VeRL), so it runs after their atexit hooks (which run last-registered first).
atexit.register(_ignore_stop_signals_at_exit)


def shielded() -> contextlib.AbstractContextManager[None]:
    """Ignore Ctrl-C, SIGTERM and SIGHUP for a moment: an impatient second Ctrl-C must not cut cleanup short."""
    return _all_stop_signals(signal.SIG_IGN)


# ---- the ladder's signals in children --------------------------------------------------------------

# An ignored signal stays ignored across exec (a handled one is reset to its default), and a shell
# starts a background job (`cmd &` in a script or a container's entrypoint) with SIGINT ignored. The
# children then ignored the ladder's polite SIGINT: ng_run and Ray sat out the whole grace (30 s)
# before SIGTERM, and `python -m gymverl.nemo_gym` took 33 s to exit after SIGTERM, past
# Kubernetes' 30 s before SIGKILL. The children are in sessions of their own, so only gymverl's
# ladder ever sends them these signals: they must act on them.
_LADDER_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _ignore(signum: int, frame: Any) -> None:
    """Does what SIG_IGN does, but as a handler, which exec resets to the default."""


@contextlib.contextmanager
def _ladder_signals_default_in_children() -> Iterator[None]:
    """While starting a child: an ignored SIGINT/SIGTERM is ignored by a handler instead, so the
    child gets its default action (gymverl itself still ignores it). Main thread only: elsewhere
    handlers cannot be changed, and `Supervised.stop` skips a SIGINT the child ignores."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    swapped = [sig for sig in _LADDER_SIGNALS if signal.getsignal(sig) is signal.SIG_IGN]
    for sig in swapped:
        signal.signal(sig, _ignore)
    try:
        yield
    finally:
        for sig in swapped:
            if signal.getsignal(sig) is _ignore:  # nobody replaced it meanwhile
                signal.signal(sig, signal.SIG_IGN)


def _ignores(pid: int, sig: int) -> bool:
    """True when process `pid` ignores `sig` (its SigIgn mask in /proc; False when unknown)."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"SigIgn:"):
                    return bool(int(line.split()[1], 16) >> (sig - 1) & 1)
    except (OSError, ValueError, IndexError):
        pass
    return False


# ---- the process tree (Linux /proc; elsewhere the process group only) ------------------------------


def _scan() -> dict[int, tuple[int, int, int, bool]]:
    """{pid: (ppid, pgrp, start time, zombie)} of every process, from /proc/PID/stat."""
    out: dict[int, tuple[int, int, int, bool]] = {}
    with contextlib.suppress(OSError):
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                with open(f"/proc/{entry.name}/stat", "rb") as f:
                    data = f.read()
            except OSError:
                continue  # exited meanwhile
            # Fields after the command name (which may hold spaces and parentheses): state ppid pgrp ...
            rest = data[data.rindex(b")") + 2 :].split()
            out[int(entry.name)] = (int(rest[1]), int(rest[2]), int(rest[19]), rest[0] in (b"Z", b"X"))
    return out


def descendants(pid: int) -> list[int]:
    """Every live descendant of `pid` right now (children, grandchildren, ...), whatever their group."""
    table = _scan()
    kids: dict[int, list[int]] = {}
    for p, (ppid, _, _, zombie) in table.items():
        if not zombie:
            kids.setdefault(ppid, []).append(p)
    out, todo = [], [pid]
    while todo:
        for k in kids.get(todo.pop(), []):
            out.append(k)
            todo.append(k)
    return out


class _Tree:
    """The processes of one supervised child: its group plus every descendant ever seen (pid + start time)."""

    def __init__(self, root: int) -> None:
        self.root = root
        self.known: dict[int, int] = {}  # pid -> start time (a reused pid is a different process)
        self.procfs = os.path.isdir("/proc/self")

    def refresh(self) -> list[int]:
        """Record new group members and descendants; return the live ones (the leader excluded)."""
        if not self.procfs:
            return []
        table = _scan()
        kids: dict[int, list[int]] = {}
        for p, (ppid, pgrp, start, zombie) in table.items():
            kids.setdefault(ppid, []).append(p)
            if pgrp == self.root and p != self.root and not zombie:
                self.known.setdefault(p, start)
        todo = [self.root, *self.known]
        while todo:
            for k in kids.get(todo.pop(), []):
                if k not in self.known and not table[k][3]:
                    self.known[k] = table[k][2]
                    todo.append(k)
        return [p for p, start in self.known.items() if p in table and table[p][2] == start and not table[p][3]]

    def group_alive(self) -> bool:
        """True while any process is still in the group (the only check without /proc)."""
        try:
            os.killpg(self.root, 0)
        except (ProcessLookupError, PermissionError):
            return False
        return True

    def signal(self, sig: int, pids: Iterable[int]) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.root, sig)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)


# ---- supervised children --------------------------------------------------------------------------


class Supervised:
    """A child process in its own process group, stopped (with everything it started) by `stop`.

    Made by `start`. Use it as a context manager, or call `stop()` in a `finally`: stopping a child
    that already exited still sweeps up whatever it left running in its group.
    """

    def __init__(self, popen: subprocess.Popen[bytes], grace: float = GRACE) -> None:
        self.popen = popen
        self.pid = popen.pid
        self.grace = grace
        self.signalled = False  # a stop signal arrived while stopping (it hurried the ladder)
        self._tree = _Tree(popen.pid)
        self._signals = False

    @property
    def returncode(self) -> int | None:
        """The child's exit status (negative: killed by that signal); None while it runs."""
        return self.popen.returncode

    def poll(self) -> int | None:
        """The exit status if the child (the group leader) has exited, else None."""
        return self.popen.poll()

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the child itself to exit (subprocess.TimeoutExpired after `timeout` seconds)."""
        return self.popen.wait(timeout)

    def running(self) -> bool:
        """True while the child or anything it started (group or descendants) is alive."""
        # Refreshed on every call: a descendant orphaned while we wait must still be known for SIGKILL.
        live = self._tree.refresh()
        if self.popen.poll() is None:
            return True
        return bool(live) or (not self._tree.procfs and self._tree.group_alive())

    def stop(self, grace: float | None = None) -> int | None:
        """Stop the child and everything it started; returns its exit status.

        The ladder: SIGINT to the group (what Ctrl-C in a terminal would do; `grace` seconds, default
        GRACE), then SIGTERM, then SIGKILL to the group and to every descendant seen (TERM_WAIT and
        KILL_WAIT seconds). A rung is skipped as soon as nothing is left, and SIGINT when the child
        ignores it; another Ctrl-C/SIGTERM while stopping skips to the next rung. Safe to call twice
        and after the child exited.
        """
        grace = self.grace if grace is None else grace
        hurry = threading.Event()
        try:
            # Another Ctrl-C/SIGTERM/SIGHUP while stopping skips to the next rung, never cuts cleanup short.
            with _all_stop_signals(lambda *_: hurry.set()):
                for sig, wait in ((signal.SIGINT, grace), (signal.SIGTERM, TERM_WAIT), (signal.SIGKILL, KILL_WAIT)):
                    if not self.running():
                        break
                    if sig == signal.SIGINT and self.popen.returncode is None and _ignores(self.pid, sig):
                        # Only the leader gets SIGINT, and it would ignore it: waiting `grace` for
                        # it is time lost (a child that ignores SIGINT itself, or one started from
                        # a thread of a gymverl that ignores it).
                        continue
                    live = self._tree.refresh()
                    # The polite signal goes to the group only: the leader shuts its own workers down.
                    self._tree.signal(sig, () if sig == signal.SIGINT else live)
                    if hurry.is_set():
                        self.signalled = True
                    hurry.clear()
                    deadline = time.monotonic() + wait
                    while time.monotonic() < deadline and not hurry.is_set() and self.running():
                        if sig == signal.SIGINT and self.popen.returncode is not None:
                            deadline = min(deadline, time.monotonic() + STRAGGLERS)
                        time.sleep(_POLL)
                self.signalled |= hurry.is_set()
                if self.popen.returncode is None:
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        self.popen.wait(KILL_WAIT)
        finally:
            if self._signals:
                self._signals = False
                _release_signals()
        return self.popen.returncode

    def __enter__(self) -> "Supervised":
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        self.stop()
        if self.signalled and exc_type is None:
            raise KeyboardInterrupt  # a Ctrl-C during a normal stop still interrupts the command


def start(
    argv: Sequence[str | os.PathLike[str]],
    *,
    grace: float = GRACE,
    **popen: Any,
) -> Supervised:
    """Start `argv` in a new session (own process group), stdin from /dev/null unless given.

    `popen` goes to subprocess.Popen (stdout, stderr, env, cwd, ...). The child gets the default
    SIGINT and SIGTERM even where gymverl ignores them (they are how `Supervised.stop` asks it to
    stop). While the child runs, SIGTERM and SIGHUP raise KeyboardInterrupt in gymverl's main thread
    (`signals_as_interrupt`), so the caller's cleanup, i.e. `stop()`, runs for them as for Ctrl-C,
    also when gymverl is a library.
    """
    popen.setdefault("stdin", subprocess.DEVNULL)
    held = _hold_signals()
    try:
        with _ladder_signals_default_in_children():
            child = subprocess.Popen(list(argv), start_new_session=True, **popen)
    except BaseException:
        if held:
            _release_signals()
        raise
    sup = Supervised(child, grace)
    sup._signals = held
    return sup


# ---- why did it fail ------------------------------------------------------------------------------

# `ValueError: ...`, `torch.distributed.DistBackendError: ...`, also behind torchrun's `[rank0]: `.
_EXC_LINE = re.compile(r"^(?:\[rank\d+\]:\s*)?(?:[A-Za-z_][\w.]*\.)?([A-Z]\w*(?:Error|Exception|Exit|Interrupt|Failed|Failure)): (.+)$")
_ARGPARSE_ERR = re.compile(r"^\S+(?: \S+)*: error: (.+)$")
# A CLI's own one-line error (NeMo Gym's ng_run: `Error: In server instance 'math_with_judge', field
# 'judge_model_server' references responses_api_models/'policy_model', which is not defined ...`).
_CLI_ERROR = re.compile(r"^Error: (.+)$")
# Hydra's `Error in call to target '...':` block prints the exception as its repr: `AssertionError("...")`.
_EXC_REPR = re.compile(r"""^([A-Z]\w*(?:Error|Exception))\((['"])(.+)\2\)$""")
# Lines that are never the cause: torchrun's summary box and the errors it raises about itself.
# Ray's wrappers (`RayTaskError: ray::Worker.method() (pid=..., repr=<...>)`, a cause it could not
# deserialize) only say where; the exception they wrap is printed with its own line.
_NOT_A_CAUSE = re.compile(
    r"ChildFailedError|^\[rank\d+\]:\s*$|SignalException|torch\.distributed\.elastic|RayTaskError|UnserializableException"
)
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def log_cause(lines: Sequence[str]) -> str | None:
    """The most telling error line of a child's output: its last exception (or argparse error).

    torchrun's failure box and its own `ChildFailedError` are skipped: the cause is the worker's
    exception above them. Returns e.g. "ValueError: sequence_length=10438 is larger than ...".
    """
    for line in reversed(lines):
        s = _ANSI.sub("", line).strip()  # Ray colours its workers' prefixes
        if not s or _NOT_A_CAUSE.search(s):
            continue
        m = _EXC_LINE.match(s)
        if m:
            return f"{m.group(1)}: {m.group(2)}"[:500]
        m = _EXC_REPR.match(s)
        if m:
            return f"{m.group(1)}: {m.group(3)}"[:500]
        m = _ARGPARSE_ERR.match(s) or _CLI_ERROR.match(s)
        if m:
            return m.group(1)[:500]
    return None


def log_file_cause(path: str | os.PathLike[str], max_bytes: int = 256 * 1024) -> str | None:
    """`log_cause` of the last `max_bytes` of a log file (None when it cannot be read)."""
    p = Path(path)
    try:
        with open(p, "rb") as f:
            f.seek(max(0, p.stat().st_size - max_bytes))
            text = f.read().decode("utf-8", errors="replace")
    except OSError:
        return None
    return log_cause(re.split(r"[\r\n]", text))


__all__ = [
    "GRACE",
    "KILL_WAIT",
    "STOP_SIGNALS",
    "Supervised",
    "TERM_WAIT",
    "descendants",
    "log_cause",
    "log_file_cause",
    "shielded",
    "signals_as_interrupt",
    "start",
]
