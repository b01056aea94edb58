"""runner/source.py: the project as one deterministic tarball, git's file list when there is one."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from runner import source


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
