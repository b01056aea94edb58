"""Coverage data of every shard (all cells, all attempts) -> one ``coverage.xml`` (Cobertura) and ``htmlcov/``.

Each shard's container measured the project under ``/src`` (the source layer) and sent its data file back as
bytes. Here the files are combined with ``[paths]`` remapping ``/src`` onto the project on this host, and
reported with the project's own coverage configuration (``omit``, ``exclude_lines``, ...), read from the project
folder as ``coverage`` itself would. Coverage never fails the run: a merge that cannot be made is reported as a note.

The data files come from the containers, where the tests under run could write anything into them: a measured
file may name a host path (``/etc/passwd``, ``/src/../../root/.ssh/id_rsa``, a project file that is a symlink
out of the project on this host). Reporting opens every measured file to render it, so after the combine only
the files that resolve (``os.path.realpath``) inside the project are kept; the others are dropped unread, and
counted in a note.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from runner.executors.docker import SIDE
from runner.images import SIDE_DIR, SOURCE_DIR

if TYPE_CHECKING:
    import coverage

XML_NAME = "coverage.xml"
HTML_DIR = "htmlcov"


@dataclass(frozen=True)
class CoverageSummary:
    percent: float  # of the whole matrix: a line counts as covered when any cell covered it
    files: int
    shards: int  # data files combined
    warnings: tuple[str, ...] = ()  # what coverage warned of (a file it could not parse, ...), one line each


def _inside(path: str, root: str) -> bool:
    """Whether ``path`` resolves (symlinks and ``..`` followed, nothing opened) into the folder ``root``."""
    try:
        real = os.path.realpath(path)
    except (ValueError, OSError):  # a NUL byte, a path too long: not a file of the project
        return False
    return real == root or real.startswith(root.rstrip(os.sep) + os.sep)


def _project_only(data: coverage.CoverageData, root: str, basename: str) -> tuple[coverage.CoverageData | None, int]:
    """``data`` without the measured files that lie outside ``root``, as a copy in ``basename`` (contexts, arcs
    and file tracers kept), or None when every file lies inside; and how many were dropped, not counting
    matrix-run's own plugin (measured in the container, where it is loaded before the tests)."""
    import coverage

    measured = data.measured_files()
    keep = sorted(f for f in measured if _inside(f, root))
    if len(keep) == len(measured):
        return None, 0
    ours = (f"{SIDE}/", f"{SIDE_DIR}/")  # matrix-run's plugin, where a container or a host shard loads it
    dropped = sum(1 for f in set(measured) - set(keep) if not f.startswith(ours))
    kept = coverage.CoverageData(basename=basename)
    arcs = data.has_arcs()
    for context in sorted(data.measured_contexts()):
        data.set_query_context(context)
        if arcs:
            found_arcs = {f: a for f in keep if (a := data.arcs(f))}
            if found_arcs:
                kept.set_context(context)
                kept.add_arcs(found_arcs)
        else:
            found_lines = {f: ln for f in keep if (ln := data.lines(f))}
            if found_lines:
                kept.set_context(context)
                kept.add_lines(found_lines)
    data.set_query_contexts(None)
    kept.set_context(None)
    if arcs:  # files measured with no line run (never imported) stay in the report, at 0 %
        kept.add_arcs({f: [] for f in keep})
    else:
        kept.add_lines({f: [] for f in keep})
    tracers = {f: t for f in keep if (t := data.file_tracer(f))}
    if tracers:
        kept.add_file_tracers(tracers)
    kept.write()
    return kept, dropped


@contextlib.contextmanager
def _in_folder(folder: Path) -> Iterator[None]:
    previous = os.getcwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(previous)


def write_merged(datas: Sequence[bytes], project: Path, out: Path, title: str) -> CoverageSummary | None:
    """Combine the shards' data files and write the reports into ``out``; None when there is no data."""
    import coverage

    datas = [d for d in datas if d]
    if not datas:
        return None
    with tempfile.TemporaryDirectory(prefix="matrix-run-coverage-") as tmp:
        paths = []
        for i, data in enumerate(datas):
            path = Path(tmp) / f"shard-{i}.coverage"
            path.write_bytes(data)
            paths.append(str(path))
        with _in_folder(project), warnings.catch_warnings(record=True) as caught:
            # the project's config, and its relative paths, apply as in a direct run
            warnings.simplefilter("always")
            cov = coverage.Coverage(data_file=str(Path(tmp) / "combined.coverage"), config_file=True)
            # a container shard measured the project under /src; a host-executor shard in its attempt's own copy
            host_copies = "**/work/*/src/"
            cov.set_option("paths", {"matrix-run": [f"{project.resolve()}/", f"{SOURCE_DIR}/", host_copies]})
            cov.combine(paths, strict=True, keep=True)
            kept_path = str(Path(tmp) / "project.coverage")
            kept, dropped = _project_only(cov.get_data(), os.path.realpath(project), kept_path)
            if kept is not None:
                if not kept.measured_files():
                    raise coverage.exceptions.NoDataError(
                        f"no measured file lies inside the project ({dropped} outside it dropped unread)"
                    )
                cov = coverage.Coverage(data_file=kept_path, config_file=True)
                cov.load()
            measured = cov.get_data().measured_files()
            percent = cov.xml_report(outfile=str(out / XML_NAME), ignore_errors=True)
            cov.html_report(directory=str(out / HTML_DIR), ignore_errors=True, title=title)
    notes = tuple(dict.fromkeys(str(w.message).splitlines()[0] for w in caught))
    if dropped:
        notes += (
            f"{dropped} measured file(s) outside the project dropped unread "
            "(the coverage data named them; only the project's own files are reported)",
        )
    return CoverageSummary(round(float(percent), 2), len(measured), len(datas), notes)
