# not named by tests.paths: must not run
def test_d1():
    assert True
