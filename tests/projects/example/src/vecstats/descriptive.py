"""Descriptive statistics over whole arrays."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Dict, Sequence

import numpy as np
from numpy.typing import ArrayLike


def _as_1d(values: ArrayLike, name: str = "values") -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError("{} must be one-dimensional, got shape {}".format(name, arr.shape))
    if arr.size == 0:
        raise ValueError("{} must not be empty".format(name))
    return arr


def weighted_mean(values: ArrayLike, weights: ArrayLike) -> float:
    """Mean of ``values`` weighted by non-negative ``weights``.

    >>> weighted_mean([1, 2, 3], [3, 0, 1])
    1.5
    """
    x = _as_1d(values)
    w = _as_1d(weights, "weights")
    if x.shape != w.shape:
        raise ValueError("values and weights must have the same length")
    if (w < 0).any():
        raise ValueError("weights must be non-negative")
    total = w.sum()
    if total == 0:
        raise ValueError("weights must not all be zero")
    return float(np.dot(x, w) / total)


def zscores(values: ArrayLike, ddof: int = 0) -> np.ndarray:
    """Standard scores ``(x - mean) / std``; all zeros for constant input.

    >>> zscores([1, 2, 3]).round(4).tolist()
    [-1.2247, 0.0, 1.2247]
    """
    x = _as_1d(values)
    std = x.std(ddof=ddof) if x.size > ddof else 0.0
    if std == 0:
        return np.zeros_like(x)
    return (x - x.mean()) / std


def percentiles(
    values: ArrayLike, qs: Sequence[float] = (25, 50, 75), method: str = "linear"
) -> Dict[float, float]:
    """Map each percentile in ``qs`` (0..100) to its value.

    >>> percentiles([1, 2, 3, 4, 5], qs=(0, 50, 100))
    {0: 1.0, 50: 3.0, 100: 5.0}
    """
    x = _as_1d(values)
    for q in qs:
        if not 0 <= q <= 100:
            raise ValueError("percentile {!r} is outside [0, 100]".format(q))
    out = np.percentile(x, list(qs), method=method)
    return {q: float(v) for q, v in zip(qs, out)}


@dataclass(frozen=True)
class Summary:
    """Five-number summary plus mean and standard deviation."""

    count: int
    mean: float
    std: float
    min: float
    q1: float
    median: float
    q3: float
    max: float

    @property
    def iqr(self) -> float:
        return self.q3 - self.q1

    def as_dict(self) -> Dict[str, float]:
        return asdict(self)

    def describe(self, precision: int = 3) -> str:
        """One line per field, aligned.

        >>> print(describe([1, 2, 3, 4]).describe(precision=2))
        count   4
        mean    2.50
        std     1.29
        min     1.00
        q1      1.75
        median  2.50
        q3      3.25
        max     4.00
        """
        lines = []
        for key, value in asdict(self).items():
            text = str(value) if key == "count" else "{:.{p}f}".format(value, p=precision)
            lines.append("{:<7} {}".format(key, text))
        return "\n".join(lines)


def describe(values: ArrayLike, ddof: int = 1, ignore_nan: bool = False) -> Summary:
    """Build a :class:`Summary` of ``values``."""
    x = _as_1d(values)
    if ignore_nan:
        x = x[~np.isnan(x)]
        if x.size == 0:
            raise ValueError("values contain only NaN")
    elif np.isnan(x).any():
        raise ValueError("values contain NaN (pass ignore_nan=True to drop them)")
    q1, med, q3 = np.percentile(x, [25, 50, 75])
    std = float(x.std(ddof=ddof)) if x.size > ddof else float("nan")
    return Summary(
        count=int(x.size),
        mean=float(x.mean()),
        std=std,
        min=float(x.min()),
        q1=float(q1),
        median=float(med),
        q3=float(q3),
        max=float(x.max()),
    )
