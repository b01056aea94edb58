import pytest


def test_a1():
    assert True


@pytest.mark.skip(reason="deliberate skip")
def test_a_skipped():
    raise AssertionError("never runs")
