"""runner/workspace.py: the node's private state folder, its checks, and the work folders of dead runs."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil
import pytest

from runner import workspace
from runner.errors import EnvironmentProblem

as_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a folder to another uid")


@pytest.fixture
def tmpdir_here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """TMPDIR (as tempfile sees it) is tmp_path, and no MATRIX_RUN_STATE_DIR overrides it."""
    monkeypatch.delenv(workspace.STATE_DIR_ENV, raising=False)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    return tmp_path


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private state folder of this test (through MATRIX_RUN_STATE_DIR)."""
    path = tmp_path / "state"
    monkeypatch.setenv(workspace.STATE_DIR_ENV, str(path))
    return path


def mode_of(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def refusal(excinfo: pytest.ExceptionInfo[EnvironmentProblem]) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


def test_private_dir_is_made_0700_under_tmpdir_whatever_the_umask(tmpdir_here: Path) -> None:
    old = os.umask(0o277)
    try:
        path = workspace.private_dir()
    finally:
        os.umask(old)

    assert path == tmpdir_here / f"matrix-run-{os.getuid()}"
    assert path.is_dir()
    assert mode_of(path) == 0o700
    assert workspace.private_dir() == path  # an existing, correct folder is accepted


def test_a_symlink_at_the_private_dir_is_refused(tmpdir_here: Path) -> None:
    elsewhere = tmpdir_here / "planted"
    elsewhere.mkdir(mode=0o700)
    (tmpdir_here / f"matrix-run-{os.getuid()}").symlink_to(elsewhere)

    with pytest.raises(EnvironmentProblem) as excinfo:
        workspace.private_dir()

    message = refusal(excinfo)
    assert f"{tmpdir_here}/matrix-run-{os.getuid()} is a symlink" in message
    assert "remove it or set TMPDIR" in message


@as_root
def test_a_private_dir_owned_by_another_uid_is_refused(tmpdir_here: Path) -> None:
    path = tmpdir_here / f"matrix-run-{os.getuid()}"
    path.mkdir(mode=0o700)
    os.chown(path, 4242, 4242)

    with pytest.raises(EnvironmentProblem) as excinfo:
        workspace.private_dir()

    assert f"{path} is owned by uid 4242" in refusal(excinfo)


def test_a_private_dir_readable_by_others_is_refused(tmpdir_here: Path) -> None:
    path = tmpdir_here / f"matrix-run-{os.getuid()}"
    path.mkdir()
    path.chmod(0o755)

    with pytest.raises(EnvironmentProblem) as excinfo:
        workspace.private_dir()

    assert f"{path} has mode 0755" in refusal(excinfo)
    assert mode_of(path) == 0o755  # reported, never silently repaired: someone else may have made it


def test_a_file_at_the_private_dir_is_refused(tmpdir_here: Path) -> None:
    (tmpdir_here / f"matrix-run-{os.getuid()}").write_text("")

    with pytest.raises(EnvironmentProblem, match="is not a directory"):
        workspace.private_dir()


def test_a_tmpdir_writable_by_all_without_the_sticky_bit_is_refused(tmpdir_here: Path) -> None:
    tmpdir_here.chmod(0o777)
    try:
        with pytest.raises(EnvironmentProblem, match="writable by everyone without the sticky bit"):
            workspace.private_dir()
        tmpdir_here.chmod(0o1777)  # like /tmp
        assert mode_of(workspace.private_dir()) == 0o700
    finally:
        tmpdir_here.chmod(0o700)


def test_the_state_dir_override_is_created_and_checked_the_same(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "var" / "matrix-run"
    monkeypatch.setenv(workspace.STATE_DIR_ENV, str(path))

    assert workspace.private_dir() == path
    assert mode_of(path) == 0o700

    path.chmod(0o750)
    with pytest.raises(EnvironmentProblem) as excinfo:
        workspace.private_dir()
    message = refusal(excinfo)
    assert f"{path} has mode 0750" in message
    assert workspace.STATE_DIR_ENV in message


def test_subdir_is_made_0700_inside_and_refuses_a_planted_symlink(state: Path, tmp_path: Path) -> None:
    assert workspace.subdir("sources") == state / "sources"
    assert mode_of(state / "sources") == 0o700

    outside = tmp_path / "outside"
    outside.mkdir(mode=0o700)
    (state / "locks").symlink_to(outside)
    with pytest.raises(EnvironmentProblem) as excinfo:
        workspace.subdir("locks")
    assert f"{state / 'locks'} is a symlink" in refusal(excinfo)


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "../x", "a b", "x\n"])
def test_state_names_must_be_plain(state: Path, name: str) -> None:
    with pytest.raises(ValueError, match="invalid"):
        workspace.subdir(name)
    with pytest.raises(ValueError, match="invalid"):
        workspace.work_dir(name)
    with pytest.raises(ValueError, match="invalid"):
        workspace.claim_run(name, workspace.owner_token())


def test_a_lock_file_is_created_0600_and_a_planted_lock_symlink_is_not_followed(state: Path, tmp_path: Path) -> None:
    fd = workspace.open_lock("image-abc")
    os.close(fd)
    lock = state / "locks" / "image-abc.lock"
    assert stat.S_ISREG(os.lstat(lock).st_mode)
    assert mode_of(lock) == 0o600

    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    (state / "locks" / "image-def.lock").symlink_to(victim)
    with pytest.raises(EnvironmentProblem) as excinfo:
        workspace.open_lock("image-def")

    assert "image-def.lock is a symlink" in refusal(excinfo)
    assert victim.read_text() == "precious\n"


def test_open_private_refuses_a_fifo_without_blocking(state: Path) -> None:
    os.mkfifo(workspace.subdir("locks") / "fifo.lock")

    with pytest.raises(EnvironmentProblem, match="not a regular file"):
        workspace.open_lock("fifo")


def test_work_dir_is_private_to_its_run(state: Path) -> None:
    path = workspace.work_dir("run-1")

    assert path == state / "work" / "run-1"
    assert mode_of(path) == 0o700
    assert workspace.work_dir("run-1") == path


def test_owner_token_names_this_host_and_process() -> None:
    host, pid, created = workspace.owner_token().rsplit(":", 2)

    assert host == socket.gethostname()
    assert int(pid) == os.getpid()
    assert abs(float(created) - psutil.Process().create_time()) < 0.001


def test_owner_alive_for_this_process() -> None:
    assert workspace.owner_alive(workspace.owner_token()) is True


def test_owner_alive_is_false_for_a_dead_and_reaped_process() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    token = f"{socket.gethostname()}:{child.pid}:{psutil.Process(child.pid).create_time():.3f}"
    child.wait()

    assert workspace.owner_alive(token) is False


def test_owner_alive_is_false_for_a_recycled_pid() -> None:
    created = psutil.Process().create_time()
    # this pid, but a process that started 5 s before this one: the pid was reused since
    assert workspace.owner_alive(f"{socket.gethostname()}:{os.getpid()}:{created - 5:.3f}") is False
    assert workspace.owner_alive(f"{socket.gethostname()}:{os.getpid()}:{created - 0.02:.3f}") is False


def test_owner_alive_cannot_tell_for_another_host_or_a_bad_token() -> None:
    pid, created = os.getpid(), psutil.Process().create_time()

    assert workspace.owner_alive(f"{socket.gethostname()}-other:{pid}:{created:.3f}") is None
    assert workspace.owner_alive("garbage") is None
    assert workspace.owner_alive(f"{socket.gethostname()}:x:1.0") is None


def dead_token() -> str:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    token = f"{socket.gethostname()}:{child.pid}:{psutil.Process(child.pid).create_time():.3f}"
    child.wait()
    return token


def test_claim_run_writes_the_owner_file(state: Path) -> None:
    token = workspace.owner_token()

    workspace.claim_run("run-7", token)

    owner = state / "runs" / "run-7.owner"
    assert owner.read_text().strip() == token
    assert mode_of(owner) == 0o600
    assert [p.name for p in (state / "runs").iterdir()] == ["run-7.owner"]  # no temp file left behind


def test_sweep_removes_dead_runs_and_keeps_live_and_foreign_ones(state: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("not ours\n")
    runs = {
        "dead": dead_token(),
        "live": workspace.owner_token(),
        "foreign": f"{socket.gethostname()}-elsewhere:1:1.000",
    }
    for run_id, token in runs.items():
        work = workspace.work_dir(run_id)
        (work / "attempt-1" / "out").mkdir(parents=True)
        (work / "attempt-1" / "out" / "junit.xml").write_text("<testsuites/>")
        workspace.claim_run(run_id, token)
    (workspace.work_dir("dead") / "attempt-1" / "escape").symlink_to(outside)  # a link inside is not followed

    assert workspace.sweep_dead_runs() == ["dead"]

    assert not (state / "work" / "dead").exists()
    assert not (state / "runs" / "dead.owner").exists()
    assert (outside / "keep.txt").read_text() == "not ours\n"
    for run_id in ("live", "foreign"):
        assert (state / "work" / run_id / "attempt-1" / "out" / "junit.xml").exists()
        assert (state / "runs" / f"{run_id}.owner").exists()
    assert workspace.sweep_dead_runs() == []


def test_sweep_unlinks_a_symlinked_work_folder_without_following_it(state: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("not ours\n")
    workspace.subdir("work")
    (state / "work" / "dead").symlink_to(outside)
    workspace.claim_run("dead", dead_token())

    assert workspace.sweep_dead_runs() == ["dead"]

    assert not os.path.lexists(state / "work" / "dead")
    assert (outside / "keep.txt").read_text() == "not ours\n"


def test_sweep_ignores_names_that_are_not_run_owner_files(state: Path) -> None:
    runs = workspace.subdir("runs")
    (runs / "bad name.owner").write_text(dead_token())
    (runs / "notes.txt").write_text(dead_token())
    (runs / "linked.owner").symlink_to(runs / "notes.txt")
    workspace.claim_run("gone", dead_token())  # its work folder never existed

    assert workspace.sweep_dead_runs() == ["gone"]

    assert sorted(p.name for p in runs.iterdir()) == ["bad name.owner", "linked.owner", "notes.txt"]
