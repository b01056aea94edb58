"""A tiny flat-layout package whose test suite injects faults on demand (matrix-run's fault-tolerance tests).

Every fault is off unless the matrix switches it on through ``tests.env``:

- ``FAULTY_FLAKY=1``: ``test_flaky`` fails on the first attempt (``MATRIX_RUN_ATTEMPT == "1"``), then passes;
- ``FAULTY_FAIL=1``: ``test_always_fails`` fails on every attempt;
- ``FAULTY_HANG=1``: ``test_hang`` sleeps for ten minutes; ``FAULTY_HANG=2``: ``test_after_hang_a`` too;
- ``FAULTY_OOM=1``: ``test_memory_hog`` touches 400 MB on the first attempt;
- ``FAULTY_SLOW=SECONDS``: ``test_slow`` sleeps that long;
- ``FAULTY_DELAY=SECONDS``: every test sleeps that long (conftest), so all shards are busy for a while;
- ``FAULTY_SECURITY=1``: the tests of ``test_security.py`` check secrets, the env allowlist and ``network: none``.
"""

from importlib.metadata import version

__version__ = version("faulty")  # fails unless the project is installed


def add(a, b):
    return a + b


def mean(values):
    values = list(values)
    return sum(values) / len(values)
