"""Shard entry point inside a cell container: exec the test command in the prepared source tree.

Usage: python entry.py REQUEST.json. The request is data written by matrix-run: the test command as an argument
list, what pytest is pointed at, and where to write reports; the shard's files and node-id selection are files
next to it, read by matrix_run_plugin.
"""

import json
import os
import sys


def main():
    with open(sys.argv[1]) as fh:
        req = json.load(fh)
    os.chdir(req["src"])
    out = req["out"]
    argv = list(req["command"]) + list(req["roots"])
    argv += [
        "--matrix-run-files=" + os.path.join(out, "files.json"),
        "--junitxml=" + os.path.join(out, "junit.xml"),
        "-o",
        "junit_family=xunit1",
        "-o",
        "cache_dir=/tmp/matrix-run-pytest-cache",
        "-p",
        "matrix_run_plugin",
        "--matrix-run-report=" + os.path.join(out, "report.jsonl"),
    ]
    if req.get("coverage"):
        cov = dict(req["coverage"], data_file=os.path.join(out, ".coverage"))
        os.environ["MATRIX_RUN_COVERAGE"] = json.dumps(cov)
    if req.get("select"):
        argv.append("--matrix-run-select=" + os.path.join(out, "select.json"))
    print("matrix-run: " + json.dumps(argv), flush=True)
    sys.stdout.flush()
    os.execvp(argv[0], argv)


if __name__ == "__main__":
    main()
