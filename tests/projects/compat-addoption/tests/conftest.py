import pytest


def pytest_addoption(parser):
    parser.addoption("--flavour", default="plain", help="an option of the project's own conftest")


@pytest.fixture
def flavour(request):
    return request.config.getoption("flavour")
