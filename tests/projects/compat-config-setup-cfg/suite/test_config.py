import pytest


def test_config_file_is_the_projects(request):
    assert request.config.inipath is not None
    assert request.config.inipath.name == "setup.cfg"


@pytest.mark.parametrize("k", ["a", "b"], ids=["setup.cfg", "key = value"])
def test_odd_ids(k):
    assert k
