import pytest


def test_import_mode_is_importlib(request):
    assert request.config.getoption("importmode") == "importlib"


@pytest.mark.parametrize("p", ["alpha"], ids=["dir=alpha/x"])
def test_odd_id(p):
    assert p == "alpha"
