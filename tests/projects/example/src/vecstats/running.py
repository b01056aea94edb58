"""Streaming (single pass) statistics using Welford's algorithm."""

from __future__ import annotations

import math
from typing import Iterable, Union

import numpy as np

Number = Union[int, float]


class RunningStats:
    """Running count, mean, variance, minimum and maximum.

    Values can be pushed one at a time or in batches; two accumulators can be
    merged (Chan et al.'s parallel update), so partial results from shards can
    be combined.

    >>> rs = RunningStats()
    >>> rs.extend([2, 4, 4, 4, 5, 5, 7, 9])
    >>> rs.count, rs.mean, rs.variance(ddof=0)
    (8, 5.0, 4.0)
    >>> rs.std(ddof=0)
    2.0
    """

    __slots__ = ("count", "mean", "_m2", "min", "max")

    def __init__(self) -> None:
        self.count = 0
        self.mean = 0.0
        self._m2 = 0.0
        self.min = math.inf
        self.max = -math.inf

    def push(self, value: Number) -> None:
        x = float(value)
        if math.isnan(x):
            raise ValueError("cannot push NaN")
        self.count += 1
        delta = x - self.mean
        self.mean += delta / self.count
        self._m2 += delta * (x - self.mean)
        self.min = min(self.min, x)
        self.max = max(self.max, x)

    def extend(self, values: Iterable[Number]) -> None:
        """Add many values at once (vectorised, then merged)."""
        if not isinstance(values, np.ndarray):
            values = list(values)
        arr = np.asarray(values, dtype=np.float64).ravel()
        if arr.size == 0:
            return
        if np.isnan(arr).any():
            raise ValueError("cannot push NaN")
        other = RunningStats()
        other.count = int(arr.size)
        other.mean = float(arr.mean())
        other._m2 = float(((arr - other.mean) ** 2).sum())
        other.min = float(arr.min())
        other.max = float(arr.max())
        self.merge(other)

    def merge(self, other: RunningStats) -> RunningStats:
        """Fold ``other`` into ``self`` and return ``self``."""
        if other.count == 0:
            return self
        if self.count == 0:
            self.count, self.mean, self._m2 = other.count, other.mean, other._m2
            self.min, self.max = other.min, other.max
            return self
        n = self.count + other.count
        delta = other.mean - self.mean
        self.mean += delta * other.count / n
        self._m2 += other._m2 + delta * delta * self.count * other.count / n
        self.count = n
        self.min = min(self.min, other.min)
        self.max = max(self.max, other.max)
        return self

    def variance(self, ddof: int = 1) -> float:
        if self.count - ddof <= 0:
            return math.nan
        return self._m2 / (self.count - ddof)

    def std(self, ddof: int = 1) -> float:
        return math.sqrt(self.variance(ddof)) if self.count - ddof > 0 else math.nan

    def __repr__(self) -> str:
        return "RunningStats(count={}, mean={:.6g}, std={:.6g})".format(
            self.count, self.mean, self.std()
        )
