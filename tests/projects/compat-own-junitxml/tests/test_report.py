import pytest


def test_own_junitxml_is_in_effect(request):
    # the project's own report path, not one given later on the command line
    assert request.config.option.xmlpath == "reports/own.xml"


@pytest.mark.parametrize("s", ["<tag>", "&amp;", "quote\""], ids=["<tag>", "&amp;", "quote\""])
def test_xml_unfriendly_ids(s):
    assert s
