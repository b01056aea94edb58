"""Tests that do a noticeable amount of numpy work (~0.1-0.5 s each).

They give duration-based sharding something to balance; together they still
finish in a couple of seconds on one core.
"""

from __future__ import annotations

import numpy as np
import pytest

from vecstats import (
    RunningStats,
    cosine_similarity,
    describe,
    histogram_bins,
    moving_average,
    percentiles,
)

pytestmark = pytest.mark.slow


def test_running_stats_long_stream(rng):
    data = rng.exponential(scale=3.0, size=400_000)
    rs = RunningStats()
    for x in data.tolist():
        rs.push(x)
    assert rs.count == data.size
    assert rs.mean == pytest.approx(data.mean(), rel=1e-9)
    assert rs.variance() == pytest.approx(data.var(ddof=1), rel=1e-9)


def test_sharded_merge_equals_whole(rng):
    data = rng.normal(loc=-2.0, scale=5.0, size=4_000_000)
    merged = RunningStats()
    for chunk in np.array_split(data, 64):
        part = RunningStats()
        part.extend(chunk)
        merged.merge(part)
    assert merged.mean == pytest.approx(data.mean(), rel=1e-9)
    assert merged.std() == pytest.approx(data.std(ddof=1), rel=1e-9)


def test_percentiles_of_large_normal(rng):
    data = rng.standard_normal(6_000_000)
    got = percentiles(data, qs=(2.5, 50, 97.5))
    assert got[50] == pytest.approx(0.0, abs=5e-3)
    assert got[2.5] == pytest.approx(-1.959964, abs=1e-2)
    assert got[97.5] == pytest.approx(1.959964, abs=1e-2)


def test_moving_average_long_signal(rng):
    t = np.linspace(0, 200 * np.pi, 3_000_000)
    signal = np.sin(t) + rng.normal(scale=0.5, size=t.size)
    window = 64
    got = moving_average(signal, window)
    want = np.convolve(signal, np.ones(window) / window, mode="valid")
    np.testing.assert_allclose(got, want, atol=1e-9)


def test_describe_and_histogram_agree(rng):
    data = rng.uniform(0.0, 10.0, size=5_000_000)
    s = describe(data)
    bins = histogram_bins(data, bins=100, value_range=(0.0, 10.0))
    assert sum(c for _, _, c in bins) == s.count
    assert s.median == pytest.approx(5.0, abs=0.01)
    # uniform data: every bin holds about 1% of the values
    counts = np.array([c for _, _, c in bins])
    assert np.all(np.abs(counts / s.count - 0.01) < 0.0005)


def test_cosine_similarity_many_vectors(rng):
    a = rng.normal(size=(3000, 256))
    sim = cosine_similarity(a, a)
    np.testing.assert_allclose(np.diag(sim), 1.0)
    off = sim[~np.eye(len(a), dtype=bool)]
    # random high-dimensional vectors are nearly orthogonal
    assert np.abs(off).max() < 0.4
