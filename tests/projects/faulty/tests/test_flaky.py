import os

import pytest


def test_flaky():
    if os.environ.get("FAULTY_FLAKY") == "1" and os.environ["MATRIX_RUN_ATTEMPT"] == "1":
        pytest.fail("deliberately flaky: fails on attempt 1 only")


def test_always_fails():
    if os.environ.get("FAULTY_FAIL") == "1":
        pytest.fail("deliberately failing on attempt " + os.environ["MATRIX_RUN_ATTEMPT"])


def test_stable():
    assert os.environ["MATRIX_RUN_SHARD"].startswith("shard-")
