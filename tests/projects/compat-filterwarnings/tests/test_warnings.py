import warnings

import pytest


def test_warnings_are_errors():
    with pytest.raises(UserWarning):
        warnings.warn("turned into an error by filterwarnings = error", UserWarning)


@pytest.mark.parametrize("n", [1, 2], ids=["warn:none", "π"])
def test_odd_ids(n):
    assert n
