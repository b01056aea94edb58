def test_b1():
    assert True


def test_b2():
    assert True
