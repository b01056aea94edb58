import os
from pathlib import Path

import pytest


@pytest.mark.io
def test_runs_from_the_tests_folder():
    # the suite is run as `cd tests && python -m pytest unittests`
    assert os.path.basename(os.getcwd()) == "tests"
    assert Path("unittests/data/sample.txt").read_text().strip() == "sample data"


@pytest.mark.parametrize("name", ["sample.txt"], ids=["data/sample.txt"])
def test_odd_id(name):
    assert Path("unittests", "data", name).is_file()
