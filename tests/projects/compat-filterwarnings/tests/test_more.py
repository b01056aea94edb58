import pytest


def test_plain():
    assert True


@pytest.mark.skipif(True, reason="deliberate skip")
def test_skipped():
    raise AssertionError("never runs")
