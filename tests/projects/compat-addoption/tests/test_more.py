import pytest


def test_plain(flavour):
    assert flavour


@pytest.mark.skip(reason="deliberate skip")
def test_skipped():
    raise AssertionError("never runs")
