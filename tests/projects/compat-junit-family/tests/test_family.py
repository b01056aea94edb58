import pytest


def test_project_junit_family_is_in_effect(request):
    assert request.config.getini("junit_family") == "xunit2"


@pytest.mark.parametrize("v", [0.5, -1], ids=["1.5e-3", "-1 (neg)"])
def test_odd_ids(v):
    assert v
