import pytest

import faulty


def test_version():
    assert faulty.__version__ == "1.0.0"


def test_add():
    assert faulty.add(2, 3) == 5


def test_mean():
    assert faulty.mean([1, 2, 3]) == 2


@pytest.mark.parametrize("a,b", [(1, 1), (2, 3), (-4, 4)])
def test_add_commutes(a, b):
    assert faulty.add(a, b) == faulty.add(b, a)
