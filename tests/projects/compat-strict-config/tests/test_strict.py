import pytest


def test_strict_config_is_on(request):
    assert request.config.option.strict_config


def test_cacheprovider_is_off(request):
    assert not request.config.pluginmanager.has_plugin("cacheprovider")
    assert not hasattr(request.config, "cache")


@pytest.mark.parametrize("word", ["a b", "x::y", "µ"], ids=["a b", "x::y", "µ"])
def test_odd_ids(word):
    assert word
