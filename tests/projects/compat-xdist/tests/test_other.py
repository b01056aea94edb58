import pytest


def test_plain():
    assert "xdist"


def test_skipped():
    pytest.skip("deliberate skip")
