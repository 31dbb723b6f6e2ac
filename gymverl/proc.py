"""Process supervision and signals: the one home for starting, stopping and interrupting.

Every command gymverl runs treats SIGTERM and SIGHUP exactly like Ctrl-C (`signals_as_interrupt`):
a `KeyboardInterrupt` is raised in the main thread, so the same cleanup code runs for all three
(a job scheduler sends SIGTERM; a closed terminal sends SIGHUP).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Any, Iterator

# The signals that mean "stop now, cleanly" besides SIGINT (Ctrl-C), which Python already raises.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


@contextlib.contextmanager
def signals_as_interrupt() -> Iterator[None]:
    """While active, SIGTERM and SIGHUP raise `KeyboardInterrupt` in the main thread, like Ctrl-C.

    Does nothing outside the main thread (Python delivers signals only there). The previous handlers
    are restored on exit.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, _raise_interrupt) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def shielded() -> Iterator[None]:
    """Ignore Ctrl-C, SIGTERM and SIGHUP for a moment: an impatient second Ctrl-C must not cut cleanup short."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, *STOP_SIGNALS)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
