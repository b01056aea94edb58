import os


def test_matrix_env():
    assert os.environ["MATRIX_RUN"] == "1"
    assert os.environ["MATRIX_RUN_ATTEMPT"] == "1"
    assert os.environ["MATRIX_RUN_CELL"]
    assert os.environ["MATRIX_RUN_SHARD"].startswith("shard-")


def test_tree_is_private():
    # each shard works on its own copy of the project: writing here must not leak into other shards
    with open("written-by-a-test.txt", "w") as fh:
        fh.write("x")
