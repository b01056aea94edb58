# python_files = check_*.py: pytest never collects this file unless it is named on the command line
def test_decoy():
    raise AssertionError("collected a file that python_files excludes")


def check_decoy():
    raise AssertionError("collected a file that python_files excludes")
