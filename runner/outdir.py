"""The output folder (``--out``): matrix-run writes there, and deletes there only what it wrote itself.

A folder is taken only when it is new, empty, or holds the marker file that matrix-run writes into every output
folder it makes; any other folder with content is refused. ``--force`` takes such a folder anyway but deletes
nothing in it: when one of matrix-run's output names is already there (a user's own ``logs/``), it is refused
too, naming it. Only in a marked folder are earlier outputs replaced. System folders and the home folder are
refused whatever the flags. While a run writes, it holds an exclusive lock on the folder: a second run on the
same ``--out`` fails at once, naming the run that holds it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path

from runner.config import system_folder
from runner.errors import ExitCode, UserError

MARKER = ".matrix-run-out"
LOCK = ".matrix-run-out.lock"
MARKER_TEXT = "This folder holds the outputs of matrix-run runs; matrix-run replaces its own files here.\n"
OWNED = (
    "junit.xml",
    "results.json",
    "summary.md",
    "report.html",
    "coverage.xml",
    "htmlcov",
    "shards",
    "logs",
    "images",
)


@dataclass
class OutputFolder:
    path: Path
    lock_fd: int

    def release(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.lock_fd)


def _open_nofollow(path: Path, flags: int) -> int:
    try:
        return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise UserError(f"--out {path.parent}: cannot use {path.name} ({exc.strerror}); give another --out") from None


def _has_marker(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.lstat(path / MARKER).st_mode)
    except OSError:
        return False


def claim(path: Path, run_id: str, force: bool = False) -> OutputFolder:
    """Take ``path`` for one run: checked, marked, locked, and cleared of matrix-run's own earlier outputs."""
    path = path.resolve()
    if system_folder(path):
        raise UserError(f"--out {path}: a system or home folder; give a folder of its own, e.g. .matrix-run/NAME")
    if path.exists() and not path.is_dir():
        raise UserError(f"--out {path}: exists and is not a folder; give a folder")
    foreign = path.is_dir() and not _has_marker(path) and any(path.iterdir())
    if foreign and not force:
        raise UserError(
            f"--out {path}: the folder holds files that matrix-run did not write (no {MARKER} marker); "
            "give a new or empty folder, or --force to use it anyway"
        )
    if foreign:
        taken = [name for name in OWNED if os.path.lexists(path / name)]
        if taken:
            raise UserError(
                f"--out {path}: {', '.join(taken)} exist(s) there and matrix-run did not make them; "
                "move them away or give another --out (--force never deletes what matrix-run did not write)"
            )
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"--out {path}: cannot create it ({exc.strerror})") from None
    fd = _open_nofollow(path / LOCK, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "another run"
        os.close(fd)
        raise UserError(
            f"--out {path}: in use by {holder}; wait for it to finish or give another --out", ExitCode.USAGE
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"run {run_id} (pid {os.getpid()})\n".encode(), 0)
    if not _has_marker(path):
        marker = _open_nofollow(path / MARKER, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.write(marker, MARKER_TEXT.encode())
        os.close(marker)
    for name in OWNED:  # an earlier run's outputs, never followed through a link
        target = path / name
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISDIR(os.lstat(target).st_mode):
                shutil.rmtree(target)
            else:
                target.unlink()
    return OutputFolder(path, fd)
