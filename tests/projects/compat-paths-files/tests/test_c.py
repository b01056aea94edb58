import pytest


@pytest.mark.parametrize("v", [1, 2], ids=["one::1", "two [2]"])
def test_one(v):
    assert v


def test_two():
    # not named by tests.paths (tests/test_c.py::test_one): must not run
    assert True
