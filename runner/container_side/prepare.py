"""Source layer: unpack the project snapshot into /src and install the project (no network, no deps).

Usage: python prepare.py TARBALL DEST INSTALL(0|1) [ROOTS_JSON [WORKDIR]]. Runs once per cell image and source snapshot
(the host executor runs it on the node, with MATRIX_RUN_HOST=1 and MATRIX_RUN_INSTALL_TARGET naming where the
project goes);
the result is committed as a thin image layer that every shard of that cell starts from, so a shard pays neither
for the unpacking nor for the install, and a code change rebuilds only this layer, never the dependency image.

The project's bytecode is made here too: modules compiled, and the test modules and conftests rewritten by
pytest's assertion rewriter (a collection of ROOTS, the shards' tests.paths, whose cache pytest keeps next to
each file). Shards run with PYTHONDONTWRITEBYTECODE, so without this every shard would compile and rewrite every
file it imports.
"""

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import tarfile

TEST_UID = 1000  # shards run as this user unless tests.user says otherwise (matrix-run's runner.images.TEST_UID)
TEST_USER = "mrtest"
SETUP_FAILED = 250  # the project could not be installed: an error of the cell, not a test failure
WARM_TIMEOUT = 120  # seconds the bytecode collection may take; it only saves time, so it never fails the build


def is_package(src):
    """Whether the project is something pip can install: a setup.py, or a pyproject.toml with a [build-system]
    table or beside a setup.cfg (setuptools' legacy backend). A pyproject.toml that holds only tool settings
    ([tool.pytest.ini_options], [tool.ruff]) is no package, nor is a lone setup.cfg. runner.images.build_requires
    decides the same way which build backend the image gets."""
    if os.path.exists(os.path.join(src, "setup.py")):
        return True
    path = os.path.join(src, "pyproject.toml")
    if not os.path.exists(path):
        return False
    if os.path.exists(os.path.join(src, "setup.cfg")):
        return True
    with open(path, encoding="utf-8", errors="replace") as fh:
        return re.search(r"^\s*\[build-system\]", fh.read(), re.MULTILINE) is not None


def install_project(src):
    """Install the project without network: editable first, a regular build when the backend cannot edit."""
    if not is_package(src):
        return
    env = dict(os.environ)
    if not os.path.exists(os.path.join(src, "PKG-INFO")):
        # setuptools-scm and hatch-vcs need git metadata, which the shipped tree does not carry
        env.setdefault("SETUPTOOLS_SCM_PRETEND_VERSION", "0.0.0+matrixrun")
    base = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--no-index"]
    base += ["--disable-pip-version-check"]
    target = os.environ.get("MATRIX_RUN_INSTALL_TARGET")
    # the host executor: a regular build into a folder of this snapshot's own, beside the shared environment
    attempts = [base + ["--target", target, src]] if target else [base + ["-e", src], base + [src]]
    for argv in attempts:
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


def warm_bytecode(src, roots, workdir=""):
    """Best effort, never fatal: compile the tree, then let pytest collect what the shards will collect (``roots``,
    else the project's own testpaths) so that it caches its rewrites."""
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    cwd = os.path.join(src, workdir)
    roots = [r for r in roots if os.path.exists(os.path.join(cwd, r.split("::", 1)[0]))]
    steps = (
        [sys.executable, "-m", "compileall", "-q", "-j", "0", src],
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"] + roots,
    )
    for argv in steps:
        proc = subprocess.Popen(
            argv, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        try:
            proc.wait(timeout=WARM_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            print("matrix-run: %s took over %d s; shards will compile for themselves" % (argv[2], WARM_TIMEOUT))


def add_test_user(src):
    """The unprivileged user that shards run as: added to the image's passwd and group files when the image has
    no user with that id, and made the owner of the source tree (its own copy in this layer), so tests may write
    into it as they would in a checkout. Best effort: an image without /etc/passwd still runs the shard as the
    bare id."""
    try:
        with open("/etc/passwd") as fh:
            known = any(line.split(":")[2:3] == [str(TEST_UID)] for line in fh)
        if not known:
            with open("/etc/passwd", "a") as fh:
                fh.write("%s:x:%d:%d:matrix-run tests:/tmp:/bin/sh\n" % (TEST_USER, TEST_UID, TEST_UID))
            with open("/etc/group", "a") as fh:
                fh.write("%s:x:%d:\n" % (TEST_USER, TEST_UID))
    except (OSError, IndexError) as exc:
        print("matrix-run: could not add the test user: %s" % exc, flush=True)
    for dirpath, dirnames, filenames in os.walk(src):
        for name in [dirpath] + [os.path.join(dirpath, n) for n in dirnames + filenames]:
            with contextlib.suppress(OSError):
                os.lchown(name, TEST_UID, TEST_UID)


def main():
    tarball, dest, install = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
    roots = json.loads(sys.argv[4]) if len(sys.argv) > 4 else []
    workdir = sys.argv[5] if len(sys.argv) > 5 else ""
    unpack(tarball, dest)
    if install:
        install_project(dest)
    warm_bytecode(dest, roots, workdir)
    if os.environ.get("MATRIX_RUN_HOST") != "1":  # on a host (executor: host) there is no image to add a user to
        add_test_user(dest)


if __name__ == "__main__":
    main()
