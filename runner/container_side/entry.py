"""Shard entry point inside a cell container: install the project (no network), then exec the test command.

Usage: python entry.py REQUEST.json. The request is data written by matrix-run: the test command as an argument
list, the files to run, an optional node-id selection, and where to write reports.
"""

import json
import os
import subprocess
import sys
import tarfile

SETUP_FAILED = 250  # the project could not be installed: an error of the cell, not a test failure


def install_project(src):
    """Install the project without network: editable first, a regular build when the backend cannot edit."""
    if not (os.path.exists(os.path.join(src, "pyproject.toml")) or os.path.exists(os.path.join(src, "setup.py"))):
        return
    env = dict(os.environ)
    if not os.path.exists(os.path.join(src, "PKG-INFO")):
        # setuptools-scm and hatch-vcs need git metadata, which the shipped tree does not carry
        env.setdefault("SETUPTOOLS_SCM_PRETEND_VERSION", "0.0.0+matrixrun")
    base = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--no-index"]
    base += ["--disable-pip-version-check"]
    for argv in (base + ["-e", src], base + [src]):
        code = subprocess.call(argv, env=env, stdout=sys.stderr)
        if code == 0:
            return
        print("matrix-run: '%s' failed (exit %d)" % (" ".join(argv), code), flush=True)
    print("matrix-run: the project could not be installed; see above", flush=True)
    sys.exit(SETUP_FAILED)


def unpack(tarball, dest):
    """The project snapshot into this container's own layer; only plain files and folders, inside dest."""
    os.makedirs(dest, exist_ok=True)
    with tarfile.open(tarball) as tar:
        members = []
        for m in tar.getmembers():
            parts = m.name.split("/")
            if m.name.startswith("/") or ".." in parts or not (m.isfile() or m.isdir()):
                print("matrix-run: refusing tar member %r" % m.name, flush=True)
                sys.exit(SETUP_FAILED)
            members.append(m)
        if hasattr(tarfile, "data_filter"):  # Python >= 3.12 and recent patch releases
            tar.extractall(dest, members=members, filter="data")
        else:
            tar.extractall(dest, members=members)


def main():
    with open(sys.argv[1]) as fh:
        req = json.load(fh)
    src = req["src"]
    unpack(req["tarball"], src)
    os.chdir(src)
    if req["install_project"]:
        install_project(src)
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
    if req.get("select"):
        argv.append("--matrix-run-select=" + os.path.join(out, "select.json"))
    print("matrix-run: " + json.dumps(argv), flush=True)
    sys.stdout.flush()
    os.execvp(argv[0], argv)


if __name__ == "__main__":
    main()
