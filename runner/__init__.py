"""matrix-run: run a Python project's pytest suite across a matrix of containerized environments on Ray."""

__version__ = "0.1.0"
