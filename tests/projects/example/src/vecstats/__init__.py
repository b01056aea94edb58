"""vecstats: small numeric and statistics helpers built on numpy."""

from __future__ import annotations

from .descriptive import Summary, describe, percentiles, weighted_mean, zscores
from .running import RunningStats
from .transforms import (
    cosine_similarity,
    histogram_bins,
    minmax_scale,
    moving_average,
    unit_normalize,
)

__version__ = "0.1.0"

__all__ = [
    "RunningStats",
    "Summary",
    "cosine_similarity",
    "describe",
    "histogram_bins",
    "minmax_scale",
    "moving_average",
    "percentiles",
    "unit_normalize",
    "weighted_mean",
    "zscores",
]
