import os

import pytest


def test_runs_in_an_xdist_worker():
    assert os.environ.get("PYTEST_XDIST_WORKER", "").startswith("gw")


@pytest.mark.parametrize("n", [1, 2, 3], ids=["one", "two/2", "three [3]"])
def test_odd_ids(n):
    assert n > 0
