import pytest


@pytest.fixture
def root_value():
    return "from the root conftest"
