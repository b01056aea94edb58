import pytest

pytest.importorskip("numpy_that_does_not_exist")


def test_never_runs():
    raise AssertionError
