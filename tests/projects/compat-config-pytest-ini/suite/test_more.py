import pytest


def test_plain():
    assert True


@pytest.mark.skip(reason="deliberate skip")
def test_skipped():
    raise AssertionError("never runs")
