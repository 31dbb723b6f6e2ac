"""The one error of collection: `CollectError`, a sentence with its CLI exit code."""

from __future__ import annotations

from typing import Any

from gymverl.errors import EXIT_USAGE, GymverlError


class CollectError(GymverlError):
    """Collection cannot start or failed; `code` is the CLI exit code (2 usage, 1 failed/rejected)."""

    def __init__(self, message: str, code: int = EXIT_USAGE, details: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message, code)
        self.details = details or []
