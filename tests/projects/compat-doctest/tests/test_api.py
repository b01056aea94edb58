import pytest

from dtpkg import double, half


@pytest.mark.parametrize("x", [1, 2.5], ids=["int 1", "float=2.5"])
def test_double(x):
    assert double(x) == x * 2


def test_half():
    assert half(1) == 0.5


@pytest.mark.skip(reason="deliberate skip")
def test_skipped():
    raise AssertionError("never runs")
