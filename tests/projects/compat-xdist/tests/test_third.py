def test_third():
    assert [1, 2][-1] == 2
