"""A tiny flat-layout package for matrix-run's integration tests."""

from importlib.metadata import version

__version__ = version("tiny")  # fails unless the project is installed: matrix-run must install it


def add(a, b):
    """Add two things.

    >>> add(2, 3)
    5
    """
    return a + b
