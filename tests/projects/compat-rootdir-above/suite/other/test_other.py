# not under tests.paths (suite/nested): must not run
def test_elsewhere():
    assert True
