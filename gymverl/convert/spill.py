"""Pass-1 spill of a grouped conversion: per-partition files routed by a hash of the task key."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import IO

import orjson

from gymverl.errors import GymverlError, RunError, from_os_error
from gymverl.select import Member

from gymverl.convert.results import MetaResult


class _Partitions:
    """Per-partition files routed by a hash of the task key: small meta lines, and the raw input
    line of every rollout still in the running (an empty line for the others, to keep slots aligned).
    A write error (disk full) is raised as one sentence naming the spill directory, not the output."""

    def __init__(self, root: Path, n: int) -> None:
        self.root = root
        self.n = n
        self._recent: dict[str, int] = {}
        self._meta: list[IO[bytes]] = []
        self._data: list[IO[bytes]] = []
        try:
            for i in range(n):
                self._meta.append(open(root / f"{i}.meta", "wb", buffering=256 * 1024))
                self._data.append(open(root / f"{i}.data", "wb", buffering=256 * 1024))
        except OSError as exc:
            self.close(quiet=True)
            raise _spill_error(exc, root) from None

    def index(self, key: str) -> int:
        if self.n == 1:
            return 0
        return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=4).digest(), "big") % self.n

    def add(self, r: MetaResult) -> None:
        """Spill one rollout's selection facts (a JSON list: `_read_groups` reads it back) and raw line."""
        key = r.key
        # A task's rollouts mostly arrive close together: remember the last few keys' partitions.
        i = self._recent.get(key)
        if i is None:
            if len(self._recent) >= 4096:
                self._recent.clear()
            i = self._recent[key] = self.index(key)
        try:
            self._meta[i].write(orjson.dumps([key, r.line, r.reward, r.status, r.dedup, r.rollout, r.prompt], option=orjson.OPT_APPEND_NEWLINE))
            data = self._data[i]
            data.write(r.raw)
            data.write(b"\n")
        except OSError as exc:
            raise _spill_error(exc, self.root) from None

    def close(self, *, quiet: bool = False) -> None:
        """Close every file (all of them, even after a failure); the first write error is raised."""
        first: OSError | None = None
        for f in self._meta + self._data:
            try:
                f.close()
            except OSError as exc:
                first = first or exc
        if first is not None and not quiet:
            raise _spill_error(first, self.root) from None

    def paths(self, i: int) -> tuple[Path, Path]:
        return self.root / f"{i}.meta", self.root / f"{i}.data"


def _spill_error(exc: OSError, where: Path) -> GymverlError:
    """A spill write failed: name the spill directory (not the output), and say how to move it."""
    if where.name.startswith(".gymverl-"):
        where = where.parent  # the private scratch directory is gone by the time the user reads this
    err = from_os_error(exc, f"temporary spill directory {where}")
    if not isinstance(err, RunError):
        return err
    return RunError(f"{str(err).rstrip('.')}; free space there or choose another place with --tmp-dir.")


def _read_slots(data_path: Path, slots: set[int]) -> dict[int, bytes]:
    """The spilled raw lines at `slots` of a partition's data file."""
    raws: dict[int, bytes] = {}
    if slots:
        with open(data_path, "rb") as f:
            for slot, raw in enumerate(f):
                if slot in slots:
                    raws[slot] = raw.rstrip(b"\n")
    return raws


def _read_groups(meta_path: Path) -> dict[str, list[Member]]:
    """A partition's spilled selection facts (as `_Partitions.add` wrote them), grouped by task key;
    each member's `slot` is its line in the partition's data file."""
    groups: dict[str, list[Member]] = {}
    with open(meta_path, "rb") as f:
        for slot, raw in enumerate(f):
            key, line, reward, status, dk, ri, prompt = orjson.loads(raw)
            groups.setdefault(key, []).append(Member(line, reward, status, dk, slot, ri, prompt))
    return groups
