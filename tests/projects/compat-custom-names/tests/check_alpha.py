import pytest


def check_collected_by_custom_names():
    assert True


@pytest.mark.parametrize("v", [1, 2], ids=["x y", "µ/1"])
def check_odd_ids(v):
    assert v


def test_not_a_check():
    raise AssertionError("python_functions = check_*: never collected")


class TestNotACheck:
    def check_inside(self):
        raise AssertionError("python_classes = Check*: never collected")
