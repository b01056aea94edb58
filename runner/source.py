"""The project's source tree as one deterministic tarball: what every shard container runs against.

The file list comes from git (tracked plus untracked-not-ignored files) when the project is a git work tree,
else from a walk that skips caches, virtual environments and build output. The tarball is byte-identical for
identical trees (sorted entries, zeroed times and owners), so its hash keys the result cache.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import subprocess
import tarfile
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

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


def list_files(root: Path) -> list[str]:
    """Files of the project, relative, sorted; git's view when the project is a git work tree."""
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "ls-files", "-z", "--cached", "--others", "--exclude-standard", "--", "."],
            capture_output=True,
            check=True,
            timeout=60,
        ).stdout
        names = [n for n in out.decode("utf-8", "surrogateescape").split("\0") if n]
        files = [n for n in names if (root / n).is_file() and not (root / n).is_symlink() and not _skipped(n)]
        if files:
            return sorted(set(files))
    except (OSError, subprocess.SubprocessError):
        pass
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        dirnames[:] = sorted(
            d
            for d in dirnames
            if d not in SKIP_DIRS
            and not d.endswith(".egg-info")
            and not (Path(dirpath) / d / "pyvenv.cfg").exists()
            and not (Path(dirpath) / d).is_symlink()
        )
        for name in filenames:
            rel = name if rel_dir == "." else f"{rel_dir}/{name}".replace(os.sep, "/")
            full = Path(dirpath) / name
            if full.is_file() and not full.is_symlink() and not _skipped(rel):
                found.append(rel)
    return sorted(found)


def snapshot(root: Path) -> SourceTree:
    """Pack the project into a deterministic tarball."""
    files = list_files(root)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for rel in files:
            full = root / rel
            info = tarfile.TarInfo(rel)
            st = full.stat()
            info.size = st.st_size
            info.mode = 0o755 if st.st_mode & 0o111 else 0o644
            info.mtime = FIXED_MTIME
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            with full.open("rb") as fh:
                tar.addfile(info, fh)
    data = buf.getvalue()
    return SourceTree(root=root, files=tuple(files), tarball=data, digest=hashlib.sha256(data).hexdigest())


def extract(tarball: bytes, dest: Path) -> None:
    """Unpack a snapshot into ``dest`` (a fresh, private folder of one shard attempt)."""
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(tarball), mode="r") as tar:
        tar.extractall(dest, filter="data")


NODE_CACHE = Path(tempfile.gettempdir()) / "matrix-run-sources"


def node_copy(tarball: bytes, digest: str) -> Path:
    """The snapshot as a file on this node, written once per content (atomically) and shared read-only."""
    NODE_CACHE.mkdir(parents=True, exist_ok=True)
    path = NODE_CACHE / f"{digest}.tar"
    if not path.exists():
        tmp = path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_bytes(tarball)
        tmp.replace(path)
        now = time.time()
        for old in NODE_CACHE.glob("*.tar"):  # keep the cache bounded: drop snapshots unused for a day
            with contextlib.suppress(OSError):
                if now - old.stat().st_atime > 86400:
                    old.unlink()
    return path
