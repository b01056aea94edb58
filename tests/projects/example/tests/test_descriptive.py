from __future__ import annotations

import numpy as np
import pytest

from vecstats import weighted_mean, zscores


@pytest.mark.parametrize(
    "values, weights, expected",
    [
        pytest.param([1, 2, 3], [1, 1, 1], 2.0, id="uniform"),
        pytest.param([1, 2, 3], [3, 0, 1], 1.5, id="zero-weight"),
        pytest.param([-1.5, -1.5], [0.2, 0.8], -1.5, id="neg-1.5"),
        pytest.param([1e-6, 3e-6], [1, 1], 2e-6, id="unicode-µ"),
        pytest.param([10, 20], [0.25, 0.75], 17.5, id="space case"),
    ],
)
def test_weighted_mean(values, weights, expected):
    assert weighted_mean(values, weights) == pytest.approx(expected)


def test_weighted_mean_matches_numpy_average(sample, rng):
    w = rng.uniform(0, 5, size=sample.size)
    assert weighted_mean(sample, w) == pytest.approx(np.average(sample, weights=w))


@pytest.mark.parametrize(
    "values, weights, message",
    [
        ([1, 2], [1], "same length"),
        ([1, 2], [1, -1], "non-negative"),
        ([1, 2], [0, 0], "all be zero"),
    ],
    ids=["length-mismatch", "negative-weight", "zero-total"],
)
def test_weighted_mean_errors(values, weights, message):
    with pytest.raises(ValueError, match=message):
        weighted_mean(values, weights)


def test_zscores_standardise(sample):
    z = zscores(sample)
    assert z.mean() == pytest.approx(0.0, abs=1e-12)
    assert z.std() == pytest.approx(1.0)
    np.testing.assert_allclose(zscores([1.0, 2.0, 3.0], ddof=1), [-1.0, 0.0, 1.0])


def test_input_validation():
    with pytest.raises(ValueError, match="empty"):
        zscores([])
    with pytest.raises(ValueError, match="one-dimensional"):
        weighted_mean([[1, 2]], [[1, 1]])


def test_zscores_constant_input_is_zero():
    z = zscores([4.0, 4.0, 4.0])
    assert z.tolist() == [0.0, 0.0, 0.0]
