"""runner/source.py: the project as one deterministic tarball, git's file list when there is one."""

from __future__ import annotations

import io
import os
import shutil
import stat
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from runner import source, workspace
from runner.errors import UserError


def make(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


PROJECT = {
    "pyproject.toml": "[project]\nname = 'p'\n",
    "src/p/__init__.py": "X = 1\n",
    "tests/test_p.py": "def test_x():\n    assert True\n",
    "tests/data/input.txt": "data\n",
}
JUNK = {
    ".git/config": "[core]\n",
    ".venv/lib/site.py": "",
    "tests/__pycache__/test_p.cpython-311.pyc": "",
    "src/p/mod.pyc": "",
    ".matrix-run/demo/junit.xml": "<testsuites/>",
    ".pytest_cache/v/cache/lastfailed": "{}",
    "build/lib/p/__init__.py": "",
    "p.egg-info/PKG-INFO": "",
    ".coverage.host.1234": "",
    "env/pyvenv.cfg": "home = /usr/bin\n",
    "env/lib/x.py": "",
}


def test_snapshot_is_byte_identical_for_identical_trees(tmp_path: Path) -> None:
    make(tmp_path, PROJECT)

    first = source.snapshot(tmp_path)
    os.utime(tmp_path / "tests/test_p.py", (1_500_000_000, 1_500_000_000))  # times are not part of the content
    second = source.snapshot(tmp_path)

    assert first.tarball == second.tarball
    assert first.digest == second.digest
    assert first.files == second.files


def test_snapshot_of_a_copy_elsewhere_is_identical(tmp_path: Path) -> None:
    make(tmp_path / "a", PROJECT)
    shutil.copytree(tmp_path / "a", tmp_path / "b")

    assert source.snapshot(tmp_path / "a").digest == source.snapshot(tmp_path / "b").digest


def test_digest_changes_with_content(tmp_path: Path) -> None:
    make(tmp_path, PROJECT)
    before = source.snapshot(tmp_path).digest

    (tmp_path / "src/p/__init__.py").write_text("X = 2\n", encoding="utf-8")

    assert source.snapshot(tmp_path).digest != before


def test_snapshot_skips_caches_venvs_and_outputs(tmp_path: Path) -> None:
    make(tmp_path, {**PROJECT, **JUNK})

    tree = source.snapshot(tmp_path)

    assert tree.files == tuple(sorted(PROJECT))
    with tarfile.open(fileobj=io.BytesIO(tree.tarball)) as tar:
        assert sorted(tar.getnames()) == sorted(PROJECT)


def test_snapshot_entries_carry_no_host_identity(tmp_path: Path) -> None:
    make(tmp_path, PROJECT)

    with tarfile.open(fileobj=io.BytesIO(source.snapshot(tmp_path).tarball)) as tar:
        members = tar.getmembers()

    assert {(m.uid, m.gid, m.uname, m.gname, m.mtime) for m in members} == {(0, 0, "", "", source.FIXED_MTIME)}


def test_symlinks_are_not_shipped(tmp_path: Path) -> None:
    make(tmp_path, PROJECT)
    (tmp_path / "link.py").symlink_to(tmp_path / "src/p/__init__.py")

    assert "link.py" not in source.snapshot(tmp_path).files


def git(root: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(root), *args], check=True, capture_output=True)


@pytest.mark.skipif(shutil.which("git") is None, reason="needs the git executable")
def test_git_work_tree_respects_gitignore(tmp_path: Path) -> None:
    make(
        tmp_path,
        {
            **PROJECT,
            ".gitignore": "secrets.env\nlocal/\n*.log\n",
            "secrets.env": "TOKEN=1\n",
            "local/notes.py": "",
            "run.log": "",
            "tests/untracked_new.py": "",  # untracked but not ignored: shipped
            ".venv/lib/site.py": "",  # not ignored by git, still never shipped
        },
    )
    git(tmp_path, "init", "-q")
    git(tmp_path, "add", "pyproject.toml", "src", ".gitignore")

    tree = source.snapshot(tmp_path)

    assert tree.files == tuple(sorted([*PROJECT, ".gitignore", "tests/untracked_new.py"]))


@pytest.mark.skipif(shutil.which("git") is None, reason="needs the git executable")
def test_git_project_in_a_subfolder_lists_paths_relative_to_the_project(tmp_path: Path) -> None:
    make(tmp_path / "repo" / "proj", PROJECT)
    make(tmp_path / "repo", {"other/file.py": "", ".gitignore": "*.tmp\n"})
    make(tmp_path / "repo" / "proj", {"scratch.tmp": ""})
    git(tmp_path / "repo", "init", "-q")

    tree = source.snapshot(tmp_path / "repo" / "proj")

    assert tree.files == tuple(sorted(PROJECT))


def test_extract_round_trips_files_and_modes(tmp_path: Path) -> None:
    src = tmp_path / "src"
    make(src, {**PROJECT, "bin/tool.sh": "#!/bin/sh\necho hi\n"})
    (src / "bin/tool.sh").chmod(0o755)
    (src / "blob.bin").write_bytes(bytes(range(256)))
    tree = source.snapshot(src)

    dest = tmp_path / "dest" / "attempt-1"
    source.extract(tree.tarball, dest)

    extracted = sorted(str(p.relative_to(dest).as_posix()) for p in dest.rglob("*") if p.is_file())
    assert extracted == list(tree.files)
    for rel in tree.files:
        assert (dest / rel).read_bytes() == (src / rel).read_bytes(), rel
    assert os.access(dest / "bin/tool.sh", os.X_OK)
    assert not os.access(dest / "tests/test_p.py", os.X_OK)


def test_extract_refuses_paths_outside_the_destination(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("../escape.txt")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))

    with pytest.raises(tarfile.OutsideDestinationError):
        source.extract(buf.getvalue(), tmp_path / "dest")

    assert not (tmp_path / "escape.txt").exists()


# --- the tree is data: git runs nothing of the project's, nothing is read through a symlink ---------------------

needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="needs the git executable")


def trap_git_config(root: Path, marker: Path) -> None:
    """Point the repository's core.fsmonitor and hooks at scripts that write ``marker`` when git runs them."""
    script = root.parent / "fsmonitor.sh"
    script.write_text(f'#!/bin/sh\necho fsmonitor "$@" >> {marker}\n')
    script.chmod(0o755)
    hooks = root.parent / "hooks"
    hooks.mkdir()
    for hook in ("pre-commit", "post-checkout", "post-index-change", "reference-transaction", "fsmonitor-watchman"):
        (hooks / hook).write_text(f"#!/bin/sh\necho {hook} >> {marker}\n")
        (hooks / hook).chmod(0o755)
    git(root, "config", "core.fsmonitor", str(script))
    git(root, "config", "core.hooksPath", str(hooks))


@needs_git
def test_git_runs_neither_the_projects_fsmonitor_nor_its_hooks(tmp_path: Path) -> None:
    from tests.conftest import run_cli, write_matrix

    root = tmp_path / "proj"
    make(root, PROJECT)
    git(root, "init", "-q")
    git(root, "add", ".")
    marker = tmp_path / "marker"
    trap_git_config(root, marker)
    # the trap is real: the git of this machine runs core.fsmonitor for a plain `ls-files`
    git(root, "ls-files", "--cached", "--others", "--exclude-standard")
    assert marker.exists(), "this git does not run core.fsmonitor for ls-files: the test would prove nothing"
    marker.unlink()

    tree = source.snapshot(root)
    assert tree.files == tuple(sorted(PROJECT))
    assert not marker.exists()

    matrix = write_matrix(tmp_path, root)
    proc = run_cli("run", str(matrix), "--dry-run", "--history", str(tmp_path / "history.sqlite"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not marker.exists(), marker.read_text()


@needs_git
def test_git_location_variables_of_the_caller_do_not_redirect_the_listing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make(tmp_path / "proj", PROJECT)
    git(tmp_path / "proj", "init", "-q")
    make(tmp_path / "other", {"unrelated.py": ""})
    git(tmp_path / "other", "init", "-q")
    git(tmp_path / "other", "add", ".")
    monkeypatch.setenv("GIT_DIR", str(tmp_path / "other" / ".git"))  # as inside a git hook (pre-commit)
    monkeypatch.setenv("GIT_INDEX_FILE", str(tmp_path / "other" / ".git" / "index"))

    assert source.snapshot(tmp_path / "proj").files == tuple(sorted(PROJECT))


def outside_secret(tmp_path: Path) -> Path:
    outside = tmp_path / "outside"
    make(outside, {"file.txt": "SECRET-OUTSIDE\n", "deeper/x.py": "SECRET-OUTSIDE\n"})
    return outside


def assert_secret_not_shipped(tree: source.SourceTree) -> None:
    assert b"SECRET-OUTSIDE" not in tree.tarball
    with tarfile.open(fileobj=io.BytesIO(tree.tarball)) as tar:
        assert sorted(tar.getnames()) == list(tree.files)


@needs_git
def test_a_tracked_path_under_a_folder_now_a_symlink_is_not_read(tmp_path: Path) -> None:
    root = tmp_path / "proj"
    make(root, {**PROJECT, "sub/file.txt": "mine\n", "sub/deeper/x.py": "mine\n"})
    git(root, "init", "-q")
    git(root, "add", ".")
    shutil.rmtree(root / "sub")
    (root / "sub").symlink_to(outside_secret(tmp_path), target_is_directory=True)

    tree = source.snapshot(root)

    assert tree.files == tuple(sorted(PROJECT))
    assert_secret_not_shipped(tree)


def test_a_walked_project_does_not_follow_a_symlinked_folder(tmp_path: Path) -> None:
    root = tmp_path / "proj"
    make(root, PROJECT)
    (root / "sub").symlink_to(outside_secret(tmp_path), target_is_directory=True)
    (root / "tests" / "secret.txt").symlink_to(tmp_path / "outside" / "file.txt")

    tree = source.snapshot(root)

    assert tree.files == tuple(sorted(PROJECT))
    assert_secret_not_shipped(tree)


def test_reading_never_goes_through_a_symlink_swapped_in_after_listing(tmp_path: Path) -> None:
    """The race: listed while ``sub`` was a folder, read after it became a link: nothing from there is read."""
    root = tmp_path / "proj"
    make(root, {**PROJECT, "sub/file.txt": "mine\n"})
    files = source.list_files(root)
    shutil.rmtree(root / "sub")
    (root / "sub").symlink_to(outside_secret(tmp_path), target_is_directory=True)

    packed, data = source._pack(root, files)

    assert packed == sorted(PROJECT)
    assert b"SECRET-OUTSIDE" not in data


def test_a_file_vanishing_between_listing_and_reading_is_skipped(tmp_path: Path) -> None:
    root = tmp_path / "proj"
    make(root, {**PROJECT, "tests/test_gone.py": ""})
    files = source.list_files(root)
    (root / "tests/test_gone.py").unlink()

    packed, _ = source._pack(root, files)

    assert packed == sorted(PROJECT)


def test_fifos_are_skipped_without_blocking(tmp_path: Path) -> None:
    root = tmp_path / "proj"
    make(root, PROJECT)
    os.mkfifo(root / "tests" / "pipe.py")

    assert source.snapshot(root).files == tuple(sorted(PROJECT))
    packed, _ = source._pack(root, ["tests/pipe.py", "tests/test_p.py"])  # even when listed: never opened blocking
    assert packed == ["tests/test_p.py"]


def unprivileged() -> list[str]:
    """A command prefix under which permission bits hold: as root, drop the capabilities that bypass them."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("root reads any file; needs setpriv to drop CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH")
    return ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--inh-caps=-all", "--"]


def snapshot_error(root: Path) -> subprocess.CompletedProcess[str]:
    from tests.conftest import ROOT

    code = "import sys; from pathlib import Path; from runner import source; source.snapshot(Path(sys.argv[1]))"
    cmd = [*unprivileged(), sys.executable, "-c", code, str(root)]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)


def run_unprivileged(tmp_path: Path, root: Path) -> subprocess.CompletedProcess[str]:
    from tests.conftest import ROOT, write_matrix

    matrix = write_matrix(tmp_path, root)
    cmd = [*unprivileged(), sys.executable, "-m", "runner.cli", "run", str(matrix), "--dry-run"]
    cmd += ["--history", str(tmp_path / "history.sqlite")]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.parametrize("use_git", [False, True], ids=["walk", "git"])
def test_an_unreadable_file_is_one_line_naming_it(tmp_path: Path, use_git: bool) -> None:
    if use_git and shutil.which("git") is None:
        pytest.skip("needs the git executable")
    root = tmp_path / "proj"
    make(root, {**PROJECT, "tests/data/locked.bin": "x"})
    if use_git:
        git(root, "init", "-q")
        git(root, "add", ".")
    (root / "tests/data/locked.bin").chmod(0)

    proc = run_unprivileged(tmp_path, root)

    assert proc.returncode == 4, proc.stdout + proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"matrix-run: error: {root}: cannot read tests/data/locked.bin: Permission denied; "
        "fix its permissions or exclude it"
    ]


def test_an_unreadable_folder_in_a_walk_is_one_line_naming_it(tmp_path: Path) -> None:
    root = tmp_path / "proj"
    make(root, {**PROJECT, "private/notes.txt": "x"})
    (root / "private").chmod(0)

    proc = snapshot_error(root)

    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == (
        f"runner.errors.UserError: {root}: cannot read private: Permission denied; fix its permissions or exclude it"
    )


def test_a_tree_over_the_file_cap_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make(tmp_path, {**PROJECT, **{f"data/f{i}.txt": "" for i in range(5)}})
    monkeypatch.setattr(source, "MAX_SOURCE_FILES", 6)

    with pytest.raises(UserError) as excinfo:
        source.snapshot(tmp_path)

    message = str(excinfo.value)
    assert "\n" not in message
    assert message.startswith(f"{tmp_path}: the source snapshot would be 9 files, over matrix-run's cap of 6 files")
    assert "(largest: data/ with 5 files)" in message
    assert ".gitignore" in message


def test_a_tree_over_the_size_cap_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make(tmp_path, PROJECT)
    (tmp_path / "tests/data/big.bin").write_bytes(b"\0" * 6000)
    monkeypatch.setattr(source, "MAX_SOURCE_BYTES", 4096)

    with pytest.raises(UserError) as excinfo:
        source.snapshot(tmp_path)

    message = str(excinfo.value)
    assert "\n" not in message
    assert message.startswith(f"{tmp_path}: the source snapshot would be 5.9 KiB, over matrix-run's cap of 4.0 KiB")
    assert "(largest: tests/ with 5.9 KiB)" in message


def test_the_default_caps() -> None:
    assert source.MAX_SOURCE_BYTES == 2 * 1024**3
    assert source.MAX_SOURCE_FILES == 200_000


# --- node_copy: the per-node cache lives in the private state folder and is verified before use --------------


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "state"
    monkeypatch.setenv(workspace.STATE_DIR_ENV, str(path))
    return path


def a_tree(tmp_path: Path) -> source.SourceTree:
    make(tmp_path / "proj", PROJECT)
    return source.snapshot(tmp_path / "proj")


def test_node_copy_writes_into_the_private_sources_folder(tmp_path: Path, state: Path) -> None:
    tree = a_tree(tmp_path)

    path = source.node_copy(tree.tarball, tree.digest)

    assert path == state / "sources" / f"{tree.digest}.tar"
    assert path.read_bytes() == tree.tarball
    assert stat.S_IMODE(os.lstat(state / "sources").st_mode) == 0o700
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no temp file left behind
    inode = os.lstat(path).st_ino
    assert source.node_copy(tree.tarball, tree.digest) == path
    assert os.lstat(path).st_ino == inode  # a verified copy is reused, not rewritten


def test_node_copy_rewrites_a_planted_tarball(tmp_path: Path, state: Path) -> None:
    tree = a_tree(tmp_path)
    planted = workspace.subdir("sources") / f"{tree.digest}.tar"
    planted.write_bytes(b"evil tarball")

    path = source.node_copy(tree.tarball, tree.digest)

    assert path == planted
    assert path.read_bytes() == tree.tarball


def test_node_copy_does_not_follow_a_planted_symlink(tmp_path: Path, state: Path) -> None:
    tree = a_tree(tmp_path)
    victim = tmp_path / "victim.tar"
    victim.write_bytes(tree.tarball)  # even with the right content: a link is never used, nor written through
    (workspace.subdir("sources") / f"{tree.digest}.tar").symlink_to(victim)

    path = source.node_copy(tree.tarball, tree.digest)

    assert not path.is_symlink()
    assert stat.S_ISREG(os.lstat(path).st_mode)
    assert path.read_bytes() == tree.tarball
    victim.write_bytes(b"changed later")
    assert path.read_bytes() == tree.tarball


def test_node_copy_refuses_a_tarball_that_does_not_match_its_digest(tmp_path: Path, state: Path) -> None:
    tree = a_tree(tmp_path)

    with pytest.raises(ValueError, match="does not hash to its digest"):
        source.node_copy(b"other bytes", tree.digest)


def test_node_copy_evicts_snapshots_unused_for_a_day(tmp_path: Path, state: Path) -> None:
    tree = a_tree(tmp_path)
    sources = workspace.subdir("sources")
    old = sources / f"{'0' * 64}.tar"
    old.write_bytes(b"old")
    stale_tmp = sources / f".{'1' * 64}.deadbeef.tmp"
    stale_tmp.write_bytes(b"half")
    recent = sources / f"{'2' * 64}.tar"
    recent.write_bytes(b"recent")
    day_ago = time.time() - source.CACHE_MAX_AGE - 60
    for path in (old, stale_tmp):
        os.utime(path, (day_ago, day_ago))

    source.node_copy(tree.tarball, tree.digest)

    assert sorted(p.name for p in sources.iterdir()) == sorted([f"{tree.digest}.tar", recent.name])
