import os
import time


def test_before_slow():
    assert True


def test_slow():
    seconds = float(os.environ.get("FAULTY_SLOW", "0") or 0)
    time.sleep(seconds)


def test_memory_hog():
    if os.environ.get("FAULTY_OOM") == "1" and os.environ["MATRIX_RUN_ATTEMPT"] == "1":
        block = bytearray(400 * 1024 * 1024)
        for i in range(0, len(block), 4096):  # touch every page so the memory is really used
            block[i] = 1
        assert block[-4096] == 1


def test_after_slow():
    assert True
