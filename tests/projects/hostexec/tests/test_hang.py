import os
import subprocess
import time


def test_before_the_hang():
    assert True


def test_hangs_with_a_detached_child():
    if os.environ.get("HOSTEXEC_HANG") == "1":
        # a process of its own session: killing the shard's process group alone would leave it running
        subprocess.Popen(["sleep", "600"], start_new_session=True)
        time.sleep(600)


def test_after_the_hang():
    assert True
