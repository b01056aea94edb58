"""The project's source tree as one deterministic tarball: what every shard container runs against.

The file list comes from git (tracked plus untracked-not-ignored files) when the project is a git work tree,
else from a walk that skips caches, virtual environments and build output. The tarball is byte-identical for
identical trees (sorted entries, zeroed times and owners), so its hash keys the result cache.

The tree is data, never code: git runs with the project's hooks and fsmonitor switched off, only regular files
are shipped, and no path is read through a symlink (neither the file nor any folder above it), so a tracked
``sub/file`` whose ``sub`` became a link to ``/root`` ships nothing from there.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import os
import secrets
import stat
import subprocess
import tarfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from runner import workspace
from runner.errors import UserError

SKIP_DIRS = frozenset(
    {
        ".git",
        ".hg",
        ".svn",
        ".tox",
        ".nox",
        ".venv",
        "venv",
        ".matrix-run",
        "__pycache__",
        ".pytest_cache",
        ".mypy_cache",
        ".ruff_cache",
        ".hypothesis",
        "node_modules",
        "build",
        "dist",
        "htmlcov",
        ".eggs",
    }
)
SKIP_SUFFIXES = (".pyc", ".pyo")
# A fixed time keeps the tarball deterministic; after 1980 so that zip-based wheel builds accept it.
FIXED_MTIME = 1_000_000_000
# The snapshot is held in memory and shipped to every node: a tree over these is almost always data or build
# output that the tests do not need.
MAX_SOURCE_BYTES = 2 * 1024**3
MAX_SOURCE_FILES = 200_000
# git must not run anything the project's own config names (core.fsmonitor is a command that `ls-files` runs)
GIT_SAFE_CONFIG = ("-c", "core.fsmonitor=false", "-c", "core.hooksPath=/dev/null", "-c", "core.untrackedCache=false")
LS_FILES = ("ls-files", "-z", "--cached", "--others", "--exclude-standard", "--", ".")
# variables that point git at another repository or index (set inside git hooks, e.g. pre-commit)
_GIT_LOCATION_VARS = ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_COMMON_DIR", "GIT_OBJECT_DIRECTORY")
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY
# a path that stopped being what was listed (a folder turned into a link or a file): skipped, never followed
_NOT_THERE = (errno.ENOENT, errno.ENOTDIR, errno.ELOOP)
CACHE_MAX_AGE = 86400  # seconds a node keeps a snapshot nobody used


@dataclass(frozen=True)
class SourceTree:
    root: Path
    files: tuple[str, ...]  # posix paths relative to root, sorted
    tarball: bytes
    digest: str  # sha256 of the tarball


def _skipped(rel: str) -> bool:
    parts = rel.split("/")
    if any(p in SKIP_DIRS or p.endswith(".egg-info") for p in parts[:-1]):
        return True
    return rel.endswith(SKIP_SUFFIXES) or parts[-1].startswith(".coverage")


def _plain(rel: str) -> bool:
    """A relative posix path without empty, '.' or '..' parts (git never lists others; a walk never makes them)."""
    return not rel.startswith("/") and all(p not in ("", ".", "..") for p in rel.split("/"))


def _unreadable(root: Path, rel: str, err: OSError) -> UserError:
    return UserError(f"{root}: cannot read {rel}: {err.strerror}; fix its permissions or exclude it")


def _regular(root: Path, rel: str) -> bool:
    """Whether ``root/rel`` is a regular file itself (not a symlink); False when it is gone."""
    try:
        return stat.S_ISREG(os.lstat(root / rel).st_mode)
    except OSError as err:
        if err.errno in _NOT_THERE:
            return False
        raise _unreadable(root, rel, err) from err


def _git_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _GIT_LOCATION_VARS}
    env.update(GIT_OPTIONAL_LOCKS="0", GIT_TERMINAL_PROMPT="0", GIT_CONFIG_NOSYSTEM="1")
    return env


def _git_files(root: Path) -> list[str]:
    """git's view of the project (tracked + untracked-not-ignored), only paths that are regular files inside it."""
    try:
        out = subprocess.run(
            ["git", *GIT_SAFE_CONFIG, "-C", str(root), *LS_FILES],
            capture_output=True,
            check=True,
            timeout=60,
            env=_git_env(),
            stdin=subprocess.DEVNULL,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    real_root = os.path.realpath(root)
    folder_inside: dict[str, bool] = {"": True}
    files = []
    for rel in sorted(set(out.decode("utf-8", "surrogateescape").split("\0"))):
        if not rel or not _plain(rel) or _skipped(rel):
            continue
        parent = rel.rpartition("/")[0]
        inside = folder_inside.get(parent)
        if inside is None:  # no folder on the way is a symlink, so the path resolves where it says
            real = os.path.realpath(root / parent)
            inside = folder_inside[parent] = real == os.path.join(real_root, parent)
        if inside and _regular(root, rel):
            files.append(rel)
    return files


def _walk_files(root: Path) -> list[str]:
    def fail(err: OSError) -> None:
        if err.errno not in _NOT_THERE:  # a folder that vanished meanwhile has nothing to ship
            raise _unreadable(root, os.path.relpath(err.filename or root, root), err) from err

    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root, onerror=fail):  # never descends into symlinked folders
        rel_dir = os.path.relpath(dirpath, root)
        dirnames[:] = sorted(
            d
            for d in dirnames
            if d not in SKIP_DIRS
            and not d.endswith(".egg-info")
            and not os.path.exists(os.path.join(dirpath, d, "pyvenv.cfg"))
            and not (Path(dirpath) / d).is_symlink()
        )
        for name in filenames:
            rel = name if rel_dir == "." else f"{rel_dir}/{name}".replace(os.sep, "/")
            if not _skipped(rel) and _regular(root, rel):
                found.append(rel)
    return sorted(found)


def list_files(root: Path) -> list[str]:
    """Files of the project, relative, sorted; git's view when the project is a git work tree."""
    return _git_files(root) or _walk_files(root)


def _human(size: int) -> str:
    if size < 1024:
        return f"{size} bytes"
    if size < 1024**2:
        return f"{size / 1024:.1f} KiB"
    if size < 1024**3:
        return f"{size / 1024**2:.1f} MiB"
    return f"{size / 1024**3:.1f} GiB"


def _files(n: int) -> str:
    return f"{n} files"


def _too_big(root: Path, files: list[str], weights: Counter[str], cap: int, show: Callable[[int], str]) -> UserError:
    """The one line for a snapshot over a cap: the total, the cap, and the top-level entry that weighs most."""
    top, amount = weights.most_common(1)[0]
    biggest = f"{top}/" if any(f.startswith(f"{top}/") for f in files) else top
    return UserError(
        f"{root}: the source snapshot would be {show(sum(weights.values()))}, over matrix-run's cap of {show(cap)} "
        f"(largest: {biggest} with {show(amount)}); exclude what the tests do not need (.gitignore it in a git "
        "work tree, or move it out of the project)"
    )


def _check_count(root: Path, files: list[str]) -> None:
    if len(files) > MAX_SOURCE_FILES:
        raise _too_big(root, files, Counter(f.split("/")[0] for f in files), MAX_SOURCE_FILES, _files)


def _size_error(root: Path, files: list[str]) -> UserError:
    weights: Counter[str] = Counter()
    for rel in files:
        with contextlib.suppress(OSError):
            weights[rel.split("/")[0]] += os.lstat(root / rel).st_size
    return _too_big(root, files, weights, MAX_SOURCE_BYTES, _human)


class _TreeReader:
    """Reads files below one root through folder descriptors opened with O_NOFOLLOW: nothing outside is reached,
    even when a folder is swapped for a symlink between listing and reading."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self.chain: list[tuple[str, int]] = []  # the open folders of the last path read, outermost first

    def close(self) -> None:
        for _, fd in self.chain:
            os.close(fd)
        self.chain.clear()
        os.close(self.root_fd)

    def _folder(self, parts: list[str]) -> int:
        keep = 0
        while keep < min(len(self.chain), len(parts)) and self.chain[keep][0] == parts[keep]:
            keep += 1
        for _, fd in self.chain[keep:]:
            os.close(fd)
        del self.chain[keep:]
        fd = self.chain[-1][1] if self.chain else self.root_fd
        for part in parts[keep:]:
            fd = os.open(part, _DIR_FLAGS, dir_fd=fd)
            self.chain.append((part, fd))
        return fd

    def open(self, rel: str) -> int | None:
        """A descriptor of the regular file ``rel``; None when it is gone, a symlink, or under one."""
        parts = rel.split("/")
        try:
            fd = os.open(parts[-1], _FILE_FLAGS, dir_fd=self._folder(parts[:-1]))
        except OSError as err:
            if err.errno in _NOT_THERE:
                return None
            raise _unreadable(self.root, rel, err) from err
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            return None
        return fd


def _pack(root: Path, files: list[str]) -> tuple[list[str], bytes]:
    """The tarball of ``files`` (those still there) and the list of what it holds."""
    _check_count(root, files)
    packed: list[str] = []
    total = 0
    buf = io.BytesIO()
    reader = _TreeReader(root)
    try:
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for rel in files:
                if not _plain(rel):
                    continue
                fd = reader.open(rel)
                if fd is None:
                    continue  # vanished since it was listed, or turned into a symlink: nothing to ship
                with os.fdopen(fd, "rb") as fh:
                    try:
                        st = os.fstat(fh.fileno())
                        if total + st.st_size > MAX_SOURCE_BYTES:
                            raise _size_error(root, files)
                        data = fh.read()
                    except OSError as err:
                        raise _unreadable(root, rel, err) from err
                total += len(data)
                if total > MAX_SOURCE_BYTES:  # grew while read
                    raise _size_error(root, files)
                info = tarfile.TarInfo(rel)
                info.size = len(data)
                info.mode = 0o755 if st.st_mode & 0o111 else 0o644
                info.mtime = FIXED_MTIME
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                tar.addfile(info, io.BytesIO(data))
                packed.append(rel)
    finally:
        reader.close()
    return packed, buf.getvalue()


def snapshot(root: Path) -> SourceTree:
    """Pack the project into a deterministic tarball."""
    try:
        files, data = _pack(root, list_files(root))
    except OSError as err:  # the project folder itself, or an error without a known file
        where = os.path.relpath(err.filename, root) if isinstance(err.filename, str) else "the project"
        raise UserError(f"{root}: cannot read {where}: {err.strerror}") from err
    return SourceTree(root=root, files=tuple(files), tarball=data, digest=hashlib.sha256(data).hexdigest())


def extract(tarball: bytes, dest: Path) -> None:
    """Unpack a snapshot into ``dest`` (a fresh, private folder of one shard attempt)."""
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(tarball), mode="r") as tar:
        tar.extractall(dest, filter="data")


def _cached(path: Path, digest: str) -> bool:
    """Whether ``path`` is a regular file of ours (not a symlink) whose sha256 is ``digest``; touched when so."""
    try:
        fd = workspace.open_private(path, os.O_RDONLY)
    except (OSError, UserError):
        return False
    with os.fdopen(fd, "rb") as fh:
        sha = hashlib.sha256()
        for block in iter(lambda: fh.read(1 << 20), b""):
            sha.update(block)
        if sha.hexdigest() != digest:
            return False
        os.utime(fh.fileno())  # in use: keep it from eviction
    return True


def _evict(cache: Path, now: float) -> None:
    """Drop snapshots (and leftover temp files) nobody used for CACHE_MAX_AGE: keeps the cache bounded."""
    with os.scandir(cache) as entries:
        for entry in entries:
            if entry.name.endswith((".tar", ".tmp")):
                with contextlib.suppress(OSError):
                    if now - entry.stat(follow_symlinks=False).st_mtime > CACHE_MAX_AGE:
                        os.unlink(entry.path)


def node_copy(tarball: bytes, digest: str) -> Path:
    """The snapshot as a file on this node, in the private ``sources`` folder, shared read-only by the shards.

    A cached file is used only when its content hashes to ``digest``; anything else at its name (a stale or planted
    file, a symlink) is replaced atomically by a fresh copy written under an exclusive temp name.
    """
    if hashlib.sha256(tarball).hexdigest() != digest:
        raise ValueError(f"the source tarball does not hash to its digest {digest}")
    cache = workspace.subdir("sources")
    path = cache / f"{digest}.tar"
    if _cached(path, digest):
        return path
    tmp = cache / f".{digest}.{secrets.token_hex(8)}.tmp"
    fd = workspace.open_private(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(tarball)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _evict(cache, time.time())
    return path
