import sys

import pytest


@pytest.mark.skipif(sys.version_info >= (3, 0), reason="python 2 only")
def test_py2_only():
    raise AssertionError


@pytest.mark.xfail(reason="known bug", strict=True)
def test_known_bug():
    assert 1 == 2


@pytest.mark.parametrize("n", range(5))
def test_many(n):
    assert n * 0 == 0


class TestGrouped:
    def test_one(self):
        assert True

    def test_two(self):
        assert [1, 2][::-1] == [2, 1]
