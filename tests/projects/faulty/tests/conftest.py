import os
import time

import pytest


@pytest.fixture(autouse=True)
def _delay():
    seconds = float(os.environ.get("FAULTY_DELAY", "0") or 0)
    if seconds:
        time.sleep(seconds)
    yield
