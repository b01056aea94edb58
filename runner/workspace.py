"""The node's private state folder: the source cache, lock files and shard work folders of this user.

matrix-run runs untrusted suites as root, so nothing it trusts may live under a fixed shared name in the temp
directory: whoever creates ``/tmp/matrix-run-sources`` first could plant a tarball whose code then runs in the
containers, and a planted lock symlink makes root truncate its target. Everything lives instead in one folder
per user, ``$TMPDIR/matrix-run-<uid>`` (or ``$MATRIX_RUN_STATE_DIR``), made with mode 0700 and checked on every
use: a real directory, not a symlink, owned by this user, with no permission for group or others. Files inside
are opened with ``O_NOFOLLOW``.

Work folders belong to a run; ``claim_run`` records which process made them (host, pid and start time, so a
recycled pid is not mistaken for the owner), and ``sweep_dead_runs`` removes the folders of owners that died.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import shutil
import socket
import stat
import tempfile
from pathlib import Path

import psutil

from runner.errors import EnvironmentProblem

STATE_DIR_ENV = "MATRIX_RUN_STATE_DIR"
_NAME = re.compile(r"[A-Za-z0-9._-]+")
_OWNER_SUFFIX = ".owner"
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# two create times of one process, each printed with 3 decimals, differ by less than this; psutil reads them
# from the kernel in clock ticks of 10 ms, so a different process never matches
_CREATE_TIME_TOLERANCE = 0.01


def _valid_name(name: str) -> bool:
    return bool(_NAME.fullmatch(name)) and name.strip(".") != ""


def _check_name(name: str, what: str) -> None:
    if not _valid_name(name):
        raise ValueError(f"invalid {what} {name!r}: use letters, digits and . _ - only")


def _problem(path: Path) -> str:
    """What is wrong with an existing folder that should be private to this user, or '' when nothing is."""
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        return "is a symlink"
    if not stat.S_ISDIR(st.st_mode):
        return "is not a directory"
    if st.st_uid != os.getuid():
        return f"is owned by uid {st.st_uid}, not {os.getuid()}"
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077 or mode & 0o700 != 0o700:
        return f"has mode {mode:04o}, not 0700"
    return ""


def _ensure_private(path: Path, advice: str = "remove it") -> Path:
    """``path`` as a folder only this user can use: made 0700 if missing, refused if anything else."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass  # made earlier, or by another process meanwhile: checked below like any existing folder
    except OSError as err:
        raise EnvironmentProblem(f"{path}: cannot create matrix-run's private state folder: {err.strerror}") from err
    else:
        fd = os.open(path, _DIR_FLAGS)  # the umask may have narrowed the mode: set it exactly
        try:
            os.fchmod(fd, 0o700)
        finally:
            os.close(fd)
    problem = _problem(path)
    if problem:
        raise EnvironmentProblem(f"matrix-run's private state folder {path} {problem}: {advice}")
    return path


def private_dir() -> Path:
    """This user's private state folder on this node, created 0700 when missing, checked when present."""
    override = os.environ.get(STATE_DIR_ENV)
    if override:
        path = Path(override)
        hint = f"remove it or set {STATE_DIR_ENV} to another folder"
        with contextlib.suppress(OSError):  # a missing parent is reported by the mkdir below
            path.parent.mkdir(parents=True, exist_ok=True)
    else:
        parent = Path(tempfile.gettempdir())
        path = parent / f"matrix-run-{os.getuid()}"
        hint = f"remove it or set TMPDIR (or {STATE_DIR_ENV})"
    with contextlib.suppress(OSError):
        st = os.stat(path.parent)
        if st.st_mode & stat.S_IWOTH and not st.st_mode & stat.S_ISVTX:
            raise EnvironmentProblem(
                f"{path.parent} is writable by everyone without the sticky bit, so others can replace matrix-run's "
                f"private state folder {path.name} in it: set TMPDIR (or {STATE_DIR_ENV}) to another folder"
            )
    return _ensure_private(path, hint)


def subdir(name: str) -> Path:
    """A folder of the private state folder (``sources``, ``locks``, ``work``, ``runs``), made 0700 and checked."""
    _check_name(name, "state folder name")
    return _ensure_private(private_dir() / name)


def open_private(path: Path, flags: int = os.O_RDWR | os.O_CREAT, mode: int = 0o600) -> int:
    """Open a file of the private state folder without following a symlink; a file descriptor (close it).

    ``O_NOFOLLOW | O_CLOEXEC`` are always added; an existing file must be a regular file owned by this user.
    """
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, mode)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise EnvironmentProblem(f"{path} is a symlink: remove it (matrix-run keeps its state there)") from err
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid():
            raise EnvironmentProblem(
                f"{path} is not a regular file of uid {os.getuid()}: remove it (matrix-run keeps its state there)"
            )
        if flags & os.O_NONBLOCK == 0:
            os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_lock(name: str) -> int:
    """The lock file ``locks/<name>.lock`` opened read-write (created 0600); flock the descriptor, then close it."""
    _check_name(name, "lock name")
    return open_private(subdir("locks") / f"{name}.lock", os.O_RDWR | os.O_CREAT)


def work_dir(run_id: str) -> Path:
    """The private work folder of one run on this node (``work/<run_id>``, 0700); shard attempts go inside it."""
    _check_name(run_id, "run id")
    return _ensure_private(subdir("work") / run_id)


def owner_token() -> str:
    """Who this process is, durably enough to tell later whether it still runs: ``host:pid:create_time``."""
    return f"{socket.gethostname()}:{os.getpid()}:{psutil.Process().create_time():.3f}"


def owner_alive(token: str) -> bool | None:
    """Whether the process of an ``owner_token`` still runs; None when it ran on another host (or is unreadable)."""
    host, _, rest = token.strip().rpartition(":")
    host, _, pid_text = host.rpartition(":")
    try:
        pid, created = int(pid_text), float(rest)
    except ValueError:
        return None
    if not host or host != socket.gethostname():
        return None
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        return round(abs(proc.create_time() - created), 3) <= _CREATE_TIME_TOLERANCE
    except psutil.NoSuchProcess:
        return False
    except psutil.Error:  # AccessDenied (e.g. /proc mounted with hidepid): cannot tell
        return None


def claim_run(run_id: str, owner: str) -> None:
    """Record ``owner`` (an ``owner_token``) as the process whose run ``run_id`` owns its work folder."""
    _check_name(run_id, "run id")
    runs = subdir("runs")
    tmp = runs / f".{run_id}.{secrets.token_hex(8)}.tmp"
    fd = open_private(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(owner.strip() + "\n")
        os.replace(tmp, runs / f"{run_id}{_OWNER_SUFFIX}")
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _read_owner(path: Path) -> str | None:
    try:
        fd = open_private(path, os.O_RDONLY)
    except (OSError, EnvironmentProblem):
        return None
    with os.fdopen(fd, "r", encoding="utf-8", errors="replace") as fh:
        return fh.read(4096).strip()


def _remove(path: Path) -> None:
    """Remove a file or folder tree without following any symlink (a symlink itself is unlinked)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(path)  # never follows symlinks inside (fd-based on Linux)
    else:
        os.unlink(path)


def sweep_dead_runs() -> list[str]:
    """Remove the work folders (and owner files) of runs whose owner process died on this host; their run ids.

    Runs of live owners, of owners on other hosts and of unreadable owner files are kept; a folder that cannot be
    removed keeps its owner file, so the next sweep tries again.
    """
    runs = subdir("runs")
    removed: list[str] = []
    with os.scandir(runs) as entries:
        names = sorted(e.name for e in entries if e.is_file(follow_symlinks=False))
    for name in names:
        run_id = name[: -len(_OWNER_SUFFIX)]
        if not name.endswith(_OWNER_SUFFIX) or not _valid_name(run_id):
            continue
        owner = _read_owner(runs / name)
        if owner is None or owner_alive(owner) is not False:
            continue
        try:
            _remove(subdir("work") / run_id)
            os.unlink(runs / name)
        except OSError:
            continue
        removed.append(run_id)
    return removed


def release_run(run_id: str) -> None:
    """A run's (or shard attempt's) work is over: remove its work folder, then its owner file."""
    _check_name(run_id, "run id")
    with contextlib.suppress(FileNotFoundError):
        _remove(subdir("work") / run_id)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(subdir("runs") / f"{run_id}{_OWNER_SUFFIX}")


def release_runs(prefix: str) -> int:
    """``release_run`` for every run id starting with ``prefix`` (the attempts of one run); returns the count."""
    runs = subdir("runs")
    with os.scandir(runs) as entries:
        ids = {e.name[: -len(_OWNER_SUFFIX)] for e in entries if e.name.endswith(_OWNER_SUFFIX)}
    with os.scandir(subdir("work")) as entries:
        ids |= {e.name for e in entries}
    count = 0
    for run_id in sorted(i for i in ids if i.startswith(prefix) and _valid_name(i)):
        release_run(run_id)
        count += 1
    return count
