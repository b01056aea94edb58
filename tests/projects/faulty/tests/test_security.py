import os
import socket

import pytest

security = pytest.mark.skipif(os.environ.get("FAULTY_SECURITY") != "1", reason="FAULTY_SECURITY is not set")


@security
def test_secret_reaches_the_test_but_not_the_logs():
    value = os.environ["MY_TOKEN"]
    assert value == "supersecretvalue"
    print("the token is " + value)
    pytest.fail("deliberate failure so the output above lands in the log and the JUnit: " + value)


@security
def test_host_variable_not_listed_does_not_reach_the_container():
    assert "FAULTY_HOST_ONLY" not in os.environ
    assert os.environ["FAULTY_PASSED_ON"] == "allowed"


@security
def test_network_none_has_no_way_out():
    assert sorted(os.listdir("/sys/class/net")) == ["lo"]
    with pytest.raises(OSError):
        socket.create_connection(("1.1.1.1", 53), timeout=3).close()
