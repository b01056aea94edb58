"""A package with doctests.

>>> from dtpkg import double
>>> double(2)
4
"""

from dtpkg.mathy import double, half

__all__ = ["double", "half"]
