import pytest


def test_junitxml_plugin_is_blocked(request):
    assert not request.config.pluginmanager.has_plugin("junitxml")
    assert request.config.pluginmanager.is_blocked("junitxml")


@pytest.mark.parametrize("x", [1, 2], ids=["a-b.c", "tab\tsep"])
def test_odd_ids(x):
    assert x
