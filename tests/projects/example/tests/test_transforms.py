from __future__ import annotations

import numpy as np
import pytest

from vecstats import histogram_bins, minmax_scale, moving_average, unit_normalize


@pytest.mark.parametrize("window", [1, 7])
def test_moving_average_matches_convolution(sample, window):
    got = moving_average(sample, window)
    want = np.convolve(sample, np.ones(window) / window, mode="valid")
    np.testing.assert_allclose(got, want, rtol=1e-10)


@pytest.mark.xfail(raises=ValueError, strict=True, reason="padding for short inputs is not implemented")
def test_moving_average_pads_short_input():
    assert moving_average([1.0, 2.0], 3).tolist() == [1.5]


def test_minmax_scale():
    out = minmax_scale([0, 5, 10], feature_range=(-1.0, 1.0))
    assert out.tolist() == [-1.0, 0.0, 1.0]
    assert minmax_scale([3, 3]).tolist() == [0.0, 0.0]


def test_unit_normalize_rows_and_zero_rows():
    x = np.array([[3.0, 4.0], [0.0, 0.0], [1.0, 0.0]])
    out = unit_normalize(x, axis=1)
    np.testing.assert_allclose(np.linalg.norm(out[[0, 2]], axis=1), 1.0)
    assert out[1].tolist() == [0.0, 0.0]


def test_histogram_counts_sum_to_size(sample):
    bins = histogram_bins(sample, bins=20)
    assert len(bins) == 20
    assert sum(c for _, _, c in bins) == sample.size
    assert all(left < right for left, right, _ in bins)


def test_histogram_with_range_drops_outliers():
    bins = histogram_bins([-5, 0.5, 1.5, 99], bins=2, value_range=(0, 2))
    assert bins == [(0.0, 1.0, 1), (1.0, 2.0, 1)]


@pytest.mark.skipif(
    int(np.__version__.split(".")[0]) < 2, reason="NEP 51 scalar repr is numpy>=2 only"
)
def test_scalar_repr_numpy2(numpy_major):
    # numpy 2 reprs scalars as np.float64(...); our helpers return plain floats.
    assert numpy_major >= 2
    assert repr(np.float64(1.5)) == "np.float64(1.5)"
    assert repr(histogram_bins([1.5], bins=1)[0][0]) == "1.0"


@pytest.mark.skipif(
    int(np.__version__.split(".")[0]) >= 2, reason="legacy scalar repr is numpy<2 only"
)
def test_scalar_repr_numpy1(numpy_major):
    assert numpy_major < 2
    assert repr(np.float64(1.5)) == "1.5"
