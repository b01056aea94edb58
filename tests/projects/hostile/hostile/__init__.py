"""The code under test: something for coverage to measure."""


def add(a, b):
    return a + b
