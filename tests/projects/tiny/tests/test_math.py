import pytest

import tiny


def test_version():
    assert tiny.__version__ == "1.0.0"


@pytest.mark.parametrize("a,b,expected", [(1, 2, 3), (-1, 1, 0), (0.5, 0.25, 0.75)], ids=["one", "neg-1", "half µ"])
def test_add(a, b, expected):
    assert tiny.add(a, b) == expected


def test_strings():
    assert tiny.add("a", "b") == "ab"
