import pytest


def test_option_from_addopts(flavour):
    assert flavour == "spicy"


@pytest.mark.parametrize("level", [1, 2], ids=["--flavour=mild", "hot!"])
def test_odd_ids(level, flavour):
    assert level and flavour == "spicy"
