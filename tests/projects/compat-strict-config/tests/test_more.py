import pytest


def test_plain():
    assert 1 + 1 == 2


@pytest.mark.skip(reason="deliberate skip")
def test_skipped():
    raise AssertionError("never runs")
