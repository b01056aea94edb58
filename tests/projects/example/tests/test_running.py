from __future__ import annotations

import math

import numpy as np
import pytest

from vecstats import RunningStats


def test_empty_and_single_value():
    rs = RunningStats()
    assert rs.count == 0
    assert math.isnan(rs.variance())
    assert math.isnan(rs.std())
    rs.push(3.5)
    assert rs.mean == 3.5
    assert rs.variance(ddof=0) == 0.0
    assert math.isnan(rs.variance(ddof=1))


def test_push_matches_numpy(sample):
    rs = RunningStats()
    for x in sample:
        rs.push(x)
    assert rs.count == sample.size
    assert rs.mean == pytest.approx(sample.mean())
    assert rs.variance() == pytest.approx(sample.var(ddof=1))
    assert rs.min == sample.min()
    assert rs.max == sample.max()


def test_extend_matches_push(sample):
    a, b = RunningStats(), RunningStats()
    for x in sample:
        a.push(x)
    b.extend(sample[:300])
    b.extend(sample[300:].tolist())
    assert b.count == a.count
    assert b.mean == pytest.approx(a.mean)
    assert b.variance() == pytest.approx(a.variance())


def test_extend_accepts_generator_and_empty():
    rs = RunningStats()
    rs.extend([])
    rs.extend(float(i) for i in range(5))
    assert (rs.count, rs.mean, rs.min, rs.max) == (5, 2.0, 0.0, 4.0)


@pytest.mark.parametrize("split", [0, 500, 1000])
def test_merge_any_split(sample, split):
    left, right = RunningStats(), RunningStats()
    left.extend(sample[:split])
    right.extend(sample[split:])
    merged = left.merge(right)
    assert merged is left
    assert merged.count == sample.size
    assert merged.mean == pytest.approx(sample.mean())
    assert merged.std() == pytest.approx(sample.std(ddof=1))


def test_nan_is_rejected():
    rs = RunningStats()
    with pytest.raises(ValueError, match="NaN"):
        rs.push(float("nan"))
    with pytest.raises(ValueError, match="NaN"):
        rs.extend(np.array([1.0, np.nan]))
    assert rs.count == 0


def test_repr():
    rs = RunningStats()
    rs.extend([1, 2, 3])
    assert repr(rs) == "RunningStats(count=3, mean=2, std=1)"
