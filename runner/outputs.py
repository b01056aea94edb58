"""What a shard attempt leaves behind, read back as untrusted data.

The files a container writes (the plugin's report, coverage data) come from code that the tests under run
control: one may be a symlink to a host file, a FIFO that never delivers, a device, or a sparse file of many GB.
They are read here and nowhere else: without following links (``O_NOFOLLOW``, relative to a folder opened with
``O_NOFOLLOW``), regular files only, up to a size cap, never blocking (``O_NONBLOCK``).
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

DEFAULT_LIMIT = 64 * 1024 * 1024  # bytes per output file (tests.output-limit)


@dataclass(frozen=True)
class Output:
    data: bytes
    problem: str = ""  # why the file was not read, when it was there but unusable


def _size(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def read_output(folder: Path, name: str, limit: int = DEFAULT_LIMIT) -> Output:
    """The bytes of ``folder/name`` if it is a regular file of at most ``limit`` bytes; else a problem line.

    A missing file is no problem (empty data): the caller decides what its absence means.
    """
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return Output(b"")
    except OSError as exc:
        return Output(b"", f"the shard's output folder could not be opened ({exc.strerror})")
    try:
        try:
            fd = os.open(name, flags, dir_fd=dir_fd)
        except FileNotFoundError:
            return Output(b"")
        except OSError as exc:  # ELOOP: a symlink
            what = "a symbolic link" if exc.errno == 40 else exc.strerror
            return Output(b"", f"{name} from the shard was not read: it is {what}")
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                return Output(b"", f"{name} from the shard was not read: it is not a regular file")
            if st.st_size > limit:
                return Output(
                    b"",
                    f"{name} from the shard is {_size(st.st_size)}, over the {_size(limit)} cap "
                    "(tests.output-limit): not read",
                )
            chunks, total = [], 0
            while total <= limit:
                chunk = os.read(fd, min(1 << 20, limit + 1 - total))
                if not chunk:
                    break
                chunks.append(chunk)
                total += len(chunk)
            if total > limit:  # it grew while being read
                return Output(b"", f"{name} from the shard grew over the {_size(limit)} cap: not read")
            return Output(b"".join(chunks))
        finally:
            os.close(fd)
    finally:
        os.close(dir_fd)
