from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parents[2]


@pytest.mark.rooted
def test_rootdir_is_the_project_root(request):
    assert Path(str(request.config.rootpath)).resolve() == PROJECT
    assert request.node.nodeid.startswith("suite/nested/")


def test_root_conftest_fixture(root_value):
    assert root_value == "from the root conftest"


@pytest.mark.parametrize("d", [1, 2], ids=["../up", "nested::deep"])
def test_odd_ids(d):
    assert d
