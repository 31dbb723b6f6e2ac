"""One error type for the whole package, carrying the CLI exit code it stands for.

Every problem that stops a run is a `GymverlError` (or a subclass) whose message is one sentence a
user can act on. The CLI catches it in exactly one place (`gymverl.cli`) and exits with
`exc.exit_code`; library callers catch `GymverlError` and read the same attribute.

Exit codes (the same for every command, documented in the README and in `--help`):

==== ==========================================================================================
0    success
1    the job ran but some input lines were rejected or some rows failed; or it could not finish
     for a reason that is not the user's command line (disk full, a server that failed, ...)
2    usage error: a bad option value, a missing or unusable input file, an output that would
     overwrite an input
130  interrupted (Ctrl-C, SIGTERM, SIGHUP)
141  stopped because the program reading the output went away (`gymverl stats x | head -1`):
     128 + SIGPIPE, what `cat` or `grep` exit with there, printed nothing more
==== ==========================================================================================
"""

from __future__ import annotations

import errno

EXIT_OK = 0
EXIT_FAILED = 1  # rows rejected or failed, or the run could not finish (not a usage error)
EXIT_REJECTED = EXIT_FAILED  # the historical name, kept: "some input lines were rejected"
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
# The reader of stdout closed it (a pipe into `head`): Unix tools die of SIGPIPE there (128 + 13),
# so `set -o pipefail` scripts already know this status. Not 1: no input was rejected.
EXIT_BROKEN_PIPE = 141


class GymverlError(Exception):
    """A problem that stops a run, described in one sentence; `exit_code` is what the CLI exits with.

    Subclasses set a class-level default; any instance may override it with `code=`.
    """

    exit_code: int = EXIT_USAGE

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.exit_code = code

    @property
    def code(self) -> int:
        """Alias of `exit_code` (older call sites read `.code`)."""
        return self.exit_code

    @code.setter
    def code(self, value: int) -> None:
        self.exit_code = value


class UsageError(GymverlError):
    """The command line itself is wrong: a bad option value, a missing input, an unsafe output path."""

    exit_code = EXIT_USAGE


class RunError(GymverlError):
    """The run started but could not finish for a reason outside the command line (disk full, a
    server that died, a training process that failed)."""

    exit_code = EXIT_FAILED


class Interrupted(GymverlError):
    """Ctrl-C, SIGTERM or SIGHUP stopped the run after cleaning up."""

    exit_code = EXIT_INTERRUPTED


# errno values that mean "the machine ran out of room", not "the user typed something wrong".
_NO_SPACE = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


def from_os_error(exc: OSError, what: str | None = None) -> GymverlError:
    """Turn an `OSError` into one sentence with the right exit code.

    `what` names the file or directory involved when the exception does not (`exc.filename` is used
    otherwise). Out-of-space and file-size-limit errors are run errors (exit 1): the command line
    was fine. Everything else (permission denied, no such directory, ...) is a usage error (exit 2).
    """
    where = what or (str(exc.filename) if exc.filename else None)
    reason = exc.strerror or str(exc) or type(exc).__name__
    if exc.errno in _NO_SPACE:
        if exc.errno == errno.EFBIG:
            reason = "file too large (a file-size limit was reached)"
        elif exc.errno == errno.ENOSPC:
            reason = "no space left on device"
        return RunError(f"{where}: {reason}." if where else f"{reason}.")
    return UsageError(f"{where}: {reason}." if where else f"{reason}.")
