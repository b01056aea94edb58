from __future__ import annotations

import math

import numpy as np
import pytest

from vecstats import Summary, describe, percentiles


def test_describe_fields(sample):
    s = describe(sample)
    assert isinstance(s, Summary)
    assert s.count == 1000
    assert s.mean == pytest.approx(sample.mean())
    assert s.std == pytest.approx(sample.std(ddof=1))
    assert s.min <= s.q1 <= s.median <= s.q3 <= s.max
    assert s.iqr == pytest.approx(s.q3 - s.q1)
    assert all(type(v) in (int, float) for v in s.as_dict().values())
    with pytest.raises(AttributeError):
        s.mean = 0.0  # type: ignore[misc]  # frozen dataclass


def test_describe_single_value():
    s = describe([7])
    assert s.median == 7.0
    assert math.isnan(s.std)


def test_describe_rejects_nan_unless_ignored():
    data = [1.0, float("nan"), 3.0]
    with pytest.raises(ValueError, match="NaN"):
        describe(data)
    assert describe(data, ignore_nan=True).mean == 2.0


def test_describe_text_layout():
    text = describe([1, 2, 3, 4]).describe(precision=1)
    lines = text.splitlines()
    assert [line.split()[0] for line in lines] == [
        "count", "mean", "std", "min", "q1", "median", "q3", "max",
    ]
    assert lines[1] == "mean    2.5"


@pytest.mark.parametrize("method", ["linear", "nearest", "midpoint"])
def test_percentiles_methods_match_numpy(sample, method):
    got = percentiles(sample, qs=(10, 50, 90), method=method)
    want = np.percentile(sample, [10, 50, 90], method=method)
    assert list(got.values()) == pytest.approx(want.tolist())


def test_percentiles_out_of_range():
    with pytest.raises(ValueError, match="outside"):
        percentiles([1, 2, 3], qs=(50, 101))
