def double(x):
    """
    >>> double(21)
    42
    """
    return 2 * x


def half(x):
    """
    >>> half(3)  # doctest: +SKIP
    1.5
    """
    return x / 2
