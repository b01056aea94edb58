import pytest


def test_same_basename_in_another_folder():
    # two test_same.py without __init__.py: only importlib mode imports both
    assert __name__ != "test_same"


@pytest.mark.skip(reason="deliberate skip")
def test_skipped():
    raise AssertionError("never runs")
