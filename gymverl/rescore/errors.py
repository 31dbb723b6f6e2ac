"""`RescoreError`: a problem that stops a rescore run before it starts."""

from __future__ import annotations

from gymverl.errors import UsageError


class RescoreError(UsageError):
    """A problem that stops the whole run before it starts (one clear sentence)."""
