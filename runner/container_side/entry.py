"""Shard entry point inside a cell container: exec the test command in the prepared source tree.

Usage: python entry.py REQUEST.json. The request is data written by matrix-run: the test command as an argument
list, the folder it runs in (tests.workdir), what pytest is pointed at, and where to write reports; the shard's
files and node-id selection are files next to it, read by matrix_run_plugin.

The only arguments added to the project's own command are the plugin and its options: nothing that a project's
pytest configuration could reject or that changes how its suite runs.
"""

import json
import os
import sys


def _project_file(src, workdir, root):
    """A tests.paths entry -> the project-relative file it names (node ids by their file), or None for a folder."""
    path = root.split("::", 1)[0]
    rel = os.path.normpath(os.path.join(workdir, path)).replace(os.sep, "/")
    return rel if os.path.isfile(os.path.join(src, rel)) else None


def shard_roots(src, workdir, roots, files):
    """The entries of tests.paths that can hold tests of this shard.

    A file (or node id) that belongs to another shard is left off the command line, so that this shard does not
    import it at all; when nothing would be left, every entry stays and the plugin's item filter decides (an
    empty command line would make pytest run its testpaths instead).
    """
    include = set(files["include"]) if "include" in files else None
    exclude = set(files.get("exclude", []))
    kept = []
    for root in roots:
        rel = _project_file(src, workdir, root)
        if rel is not None and ((include is not None and rel not in include) or rel in exclude):
            continue
        kept.append(root)
    return kept or list(roots)


def main():
    with open(sys.argv[1]) as fh:
        req = json.load(fh)
    out = req["out"]
    src = req["src"]
    workdir = req.get("workdir") or ""
    os.chdir(os.path.join(src, workdir))
    files_path = os.path.join(out, "files.json")
    with open(files_path) as fh:
        files = json.load(fh)
    argv = list(req["command"]) + shard_roots(src, workdir, list(req["roots"]), files)
    argv += [
        "-p",
        "matrix_run_plugin",
        "--matrix-run-files=" + files_path,
        "--matrix-run-report=" + os.path.join(out, "report.jsonl"),
    ]
    if req.get("coverage"):
        cov = dict(req["coverage"], data_file=os.path.join(out, ".coverage"))
        os.environ["MATRIX_RUN_COVERAGE"] = json.dumps(cov)
    if req.get("select"):
        argv.append("--matrix-run-select=" + os.path.join(out, "select.json"))
    print("matrix-run: " + json.dumps(argv), flush=True)
    sys.stdout.flush()
    try:
        os.execvp(argv[0], argv)
    except OSError as exc:
        print("matrix-run: cannot start the test command %r: %s" % (argv[0], exc), flush=True)
        sys.exit(127)


if __name__ == "__main__":
    main()
