from __future__ import annotations

import numpy as np
import pytest

from vecstats import cosine_similarity


@pytest.mark.parametrize(
    "a, b, expected",
    [
        pytest.param([1, 0], [1, 0], 1.0, id="same"),
        pytest.param([1, 0], [0, 1], 0.0, id="orthogonal"),
        pytest.param([1, 2], [-1, -2], -1.0, id="opposite"),
        pytest.param([-1.5, 0], [-3.0, 0], 1.0, id="neg-1.5"),
        pytest.param([0, 0], [1, 1], 0.0, id="zero vector"),
    ],
)
def test_cosine_pairs(a, b, expected):
    got = cosine_similarity(a, b)
    assert isinstance(got, float)
    assert got == pytest.approx(expected)


def test_cosine_matrix_shape_and_diagonal(rng):
    a = rng.normal(size=(6, 8))
    sim = cosine_similarity(a, a)
    assert sim.shape == (6, 6)
    np.testing.assert_allclose(np.diag(sim), 1.0)
    np.testing.assert_allclose(sim, sim.T, atol=1e-12)


def test_cosine_scale_invariant(rng):
    a, b = rng.normal(size=5), rng.normal(size=5)
    assert cosine_similarity(3 * a, 0.5 * b) == pytest.approx(cosine_similarity(a, b))


def test_cosine_dimension_mismatch():
    with pytest.raises(ValueError, match="dimension mismatch"):
        cosine_similarity([1, 2, 3], [1, 2])
