import pytest

from unittests.helpers import shout


def test_import_from_the_tests_folder():
    assert shout("hi") == "HI!"


@pytest.mark.skip(reason="deliberate skip")
def test_skipped():
    raise AssertionError("never runs")
