import os
import time


def test_before_hang_a():
    assert True


def test_before_hang_b():
    assert True


def test_hang():
    if os.environ.get("FAULTY_HANG") in ("1", "2"):
        time.sleep(600)


def test_after_hang_a():
    if os.environ.get("FAULTY_HANG") == "2":  # hangs too: the rerun after the first timeout times out as well
        time.sleep(600)


def test_after_hang_b():
    assert True
