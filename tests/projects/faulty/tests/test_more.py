import pytest

import faulty


def test_strings():
    assert faulty.add("a", "b") == "ab"


def test_lists():
    assert faulty.add([1], [2]) == [1, 2]


@pytest.mark.parametrize("n", range(3))
def test_mean_of_constant(n):
    assert faulty.mean([n] * 4) == n


class TestGrouped:
    def test_one(self):
        assert faulty.mean([0.5, 1.5]) == 1.0
