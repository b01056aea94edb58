"""Shared fixtures for the vecstats test suite.

All randomness goes through the seeded ``rng`` fixture so every run (and every
shard of a run) sees the same data.
"""

from __future__ import annotations

import numpy as np
import pytest

SEED = 20240611


@pytest.fixture
def rng() -> np.random.Generator:
    """A freshly seeded generator per test, so test order does not matter."""
    return np.random.default_rng(SEED)


@pytest.fixture
def sample(rng: np.random.Generator) -> np.ndarray:
    """1,000 draws from N(10, 2^2)."""
    return rng.normal(loc=10.0, scale=2.0, size=1000)


@pytest.fixture(scope="session")
def numpy_major() -> int:
    return int(np.__version__.split(".")[0])
