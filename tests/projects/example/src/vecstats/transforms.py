"""Array transforms: smoothing, scaling, binning and similarity."""

from __future__ import annotations

from typing import List, Optional, Tuple, Union

import numpy as np
from numpy.typing import ArrayLike


def moving_average(values: ArrayLike, window: int) -> np.ndarray:
    """Simple moving average over full windows (length ``n - window + 1``).

    >>> moving_average([1, 2, 3, 4, 5], 2).tolist()
    [1.5, 2.5, 3.5, 4.5]
    """
    x = np.asarray(values, dtype=np.float64).ravel()
    if window < 1:
        raise ValueError("window must be >= 1")
    if window > x.size:
        raise ValueError("window ({}) is longer than the data ({})".format(window, x.size))
    csum = np.cumsum(np.concatenate(([0.0], x)))
    return (csum[window:] - csum[:-window]) / window


def minmax_scale(values: ArrayLike, feature_range: Tuple[float, float] = (0.0, 1.0)) -> np.ndarray:
    """Rescale linearly so min -> ``feature_range[0]`` and max -> ``feature_range[1]``.

    Constant input maps to the lower bound.

    >>> minmax_scale([10, 15, 20]).tolist()
    [0.0, 0.5, 1.0]
    """
    lo, hi = feature_range
    if lo >= hi:
        raise ValueError("feature_range must be increasing")
    x = np.asarray(values, dtype=np.float64)
    span = x.max() - x.min()
    if span == 0:
        return np.full_like(x, lo)
    return lo + (x - x.min()) * (hi - lo) / span


def unit_normalize(values: ArrayLike, axis: Optional[int] = -1, order: int = 2) -> np.ndarray:
    """Divide by the vector norm along ``axis``; zero vectors stay zero.

    >>> unit_normalize([3, 4]).tolist()
    [0.6, 0.8]
    """
    x = np.asarray(values, dtype=np.float64)
    norms = np.linalg.norm(x, ord=order, axis=axis, keepdims=True)
    safe = np.where(norms == 0, 1.0, norms)
    return x / safe


def cosine_similarity(a: ArrayLike, b: ArrayLike) -> Union[float, np.ndarray]:
    """Cosine similarity between rows of ``a`` and rows of ``b``.

    1-D inputs give a float; 2-D inputs ``(n, d)`` and ``(m, d)`` give ``(n, m)``.
    Zero vectors have similarity 0 with everything.

    >>> round(cosine_similarity([1, 0], [1, 1]), 4)
    0.7071
    """
    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    if x.shape[-1] != y.shape[-1]:
        raise ValueError("dimension mismatch: {} vs {}".format(x.shape, y.shape))
    xn = unit_normalize(np.atleast_2d(x))
    yn = unit_normalize(np.atleast_2d(y))
    sim = np.clip(xn @ yn.T, -1.0, 1.0)
    if x.ndim == 1 and y.ndim == 1:
        return float(sim[0, 0])
    return sim


def histogram_bins(
    values: ArrayLike, bins: int = 10, value_range: Optional[Tuple[float, float]] = None
) -> List[Tuple[float, float, int]]:
    """Histogram as a list of ``(left_edge, right_edge, count)`` triples.

    >>> histogram_bins([0, 1, 1, 2, 3], bins=3)
    [(0.0, 1.0, 1), (1.0, 2.0, 2), (2.0, 3.0, 2)]
    """
    if bins < 1:
        raise ValueError("bins must be >= 1")
    x = np.asarray(values, dtype=np.float64).ravel()
    counts, edges = np.histogram(x, bins=bins, range=value_range)
    return [
        (float(edges[i]), float(edges[i + 1]), int(counts[i])) for i in range(len(counts))
    ]
