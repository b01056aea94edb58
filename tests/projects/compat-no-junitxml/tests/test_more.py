import pytest


def test_plain():
    assert True


def test_skipped():
    pytest.skip("deliberate skip")
