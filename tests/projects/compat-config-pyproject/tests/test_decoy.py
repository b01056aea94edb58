# outside testpaths: pytest never collects this file unless it is named on the command line
def test_decoy():
    raise AssertionError("collected a file outside the configured testpaths")
