import os
import sys


def test_runs_on_the_host_interpreter():
    assert os.environ["MATRIX_RUN_EXECUTOR"] == "host"
    assert sys.prefix != sys.base_prefix  # inside the cell's virtual environment, not the node's own Python


def test_the_node_environment_is_not_passed():
    assert "MATRIX_RUN_SECRET_ON_NODE" not in os.environ


def test_writes_into_its_own_tree():
    with open("written-by-a-test.txt", "w") as fh:
        fh.write("each attempt has its own copy of the tree")
