import pytest


def test_config_file_is_the_projects(request):
    assert request.config.inipath is not None
    assert request.config.inipath.name == "pyproject.toml"


@pytest.mark.parametrize("k", ["a", "b"], ids=["pyproject.toml", "key = value"])
def test_odd_ids(k):
    assert k
