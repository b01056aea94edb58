# not under tests.paths (unittests): must not run
def test_integration():
    assert True
