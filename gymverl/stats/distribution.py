"""`Distribution`: a streaming distribution in bounded memory (exact value counts up to `MAX_DISTINCT`
distinct values, then a fixed-size reservoir sample), with mean, sample std, quantiles and histogram edges."""

from __future__ import annotations

import math
import random
from collections import Counter
from typing import Any, Callable, Iterable

from gymverl.records import REWARD_EDGES, reward_bin


class Distribution:
    """Streaming summary of numbers: exact while there are few distinct values, else sampled."""

    MAX_DISTINCT = 100_000
    RESERVOIR = 100_000

    def __init__(self, seed: int = 0) -> None:
        self.count = 0
        self.total = 0.0
        self.total_sq = 0.0
        self.min: float | None = None
        self.max: float | None = None
        self.values: Counter[float] | None = Counter()
        self.sample: list[float] = []
        self._rng = random.Random(seed)

    def add(self, x: float) -> None:
        """Fold one value in."""
        self.count += 1
        self.total += x
        self.total_sq += x * x
        if self.min is None or x < self.min:
            self.min = x
        if self.max is None or x > self.max:
            self.max = x
        values = self.values
        if values is not None:
            values[x] = values.get(x, 0) + 1
            if len(values) <= self.MAX_DISTINCT:
                return
            # Too many distinct values to keep exactly: switch to a reservoir sample of what was seen.
            # (weighted draw from the counts: never expands them into one value per rollout)
            keys = list(self.values)
            weights = [self.values[k] for k in keys]
            self.sample = self._rng.choices(keys, weights, k=min(self.RESERVOIR, self.count))
            self.values = None
            return
        if len(self.sample) < self.RESERVOIR:
            self.sample.append(x)
        else:
            j = self._rng.randrange(self.count)
            if j < self.RESERVOIR:
                self.sample[j] = x

    @property
    def exact(self) -> bool:
        """True while quantiles and histograms are exact (not from a sample)."""
        return self.values is not None

    @property
    def mean(self) -> float | None:
        """Arithmetic mean (exact)."""
        return self.total / self.count if self.count else None

    @property
    def std(self) -> float | None:
        """Sample standard deviation (ddof=1, exact), as NeMo Gym's profile (pandas `DataFrame.std`); 0.0 for one value."""
        if not self.count:
            return None
        return _sample_std(self.count, self.total, self.total_sq)

    def quantile(self, q: float) -> float | None:
        """The q-quantile (linear interpolation between order statistics, like numpy's default)."""
        if not self.count:
            return None
        if self.values is None:
            ordered = sorted(self.sample)
            return _interpolate(lambda i: ordered[i], len(ordered), q)
        items = sorted(self.values.items())
        cum: list[int] = []
        run = 0
        for _, n in items:
            run += n
            cum.append(run)

        def at(i: int) -> float:
            # The i-th (0-based) value in sorted order, found in the cumulative counts.
            lo, hi = 0, len(cum) - 1
            while lo < hi:
                mid = (lo + hi) // 2
                if cum[mid] > i:
                    hi = mid
                else:
                    lo = mid + 1
            return items[lo][0]

        return _interpolate(at, self.count, q)

    def histogram(self, edges: list[float]) -> list[int]:
        """Counts per bin [edges[i], edges[i+1]) (last bin closed); sampled counts are scaled up."""
        bins = [0] * (len(edges) - 1)
        pairs: Iterable[tuple[float, float]]
        if self.values is not None:
            pairs = ((v, n) for v, n in self.values.items())
        else:
            scale = self.count / len(self.sample) if self.sample else 0.0
            pairs = ((v, scale) for v in self.sample)
        for v, n in pairs:
            i = reward_bin(v, edges)
            if i is not None:
                bins[i] += n  # type: ignore[assignment]
        return [round(b) for b in bins]

    def distinct(self) -> dict[float, int] | None:
        """Exact value counts, when there are at most 20 distinct values (e.g. 0/1 rewards)."""
        if self.values is None or len(self.values) > 20:
            return None
        return dict(sorted(self.values.items()))

    def summary(self) -> dict[str, Any]:
        """count, mean, std, min, quartiles, p90, p99, max as plain data."""
        return {
            "count": self.count,
            "mean": self.mean,
            "std": self.std,
            "min": self.min,
            "p25": self.quantile(0.25),
            "median": self.quantile(0.5),
            "p75": self.quantile(0.75),
            "p90": self.quantile(0.9),
            "p99": self.quantile(0.99),
            "max": self.max,
            "exact": self.exact,
        }


def _sample_std(n: int, total: float, total_sq: float) -> float:
    """Sample std (ddof=1) from count, sum and sum of squares; 0.0 for n <= 1 (NeMo Gym's fill value)."""
    if n <= 1:
        return 0.0
    m = total / n
    return math.sqrt(max((total_sq - n * m * m) / (n - 1), 0.0))


def _interpolate(at: Callable[[int], float], n: int, q: float) -> float:
    pos = q * (n - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, n - 1)
    a, b = at(lo), at(hi)
    return a + (b - a) * (pos - lo)


def reward_edges(lo: float | None, hi: float | None, bins: int = 10) -> list[float]:
    """Histogram edges: `records.REWARD_EDGES` (tenths of 0-1, as `validate`) when rewards lie in [0, 1],
    else `bins` equal bins over min-max. Binned by `records.reward_bin`."""
    if lo is None or hi is None or (lo >= 0.0 and hi <= 1.0):
        return list(REWARD_EDGES)
    if lo == hi:
        return [lo - 0.5, hi + 0.5]
    step = (hi - lo) / bins
    return [lo + i * step for i in range(bins)] + [hi]
