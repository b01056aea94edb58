"""Coverage data of every shard (all cells, all attempts) -> one ``coverage.xml`` (Cobertura) and ``htmlcov/``.

Each shard's container measured the project under ``/src`` (the source layer) and sent its data file back as
bytes. Here the files are combined with ``[paths]`` remapping ``/src`` onto the project on this host, and
reported with the project's own coverage configuration (``omit``, ``exclude_lines``, ...), read from the project
folder as ``coverage`` itself would. Coverage never fails the run: a merge that cannot be made is reported as a note.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from runner.images import SOURCE_DIR

XML_NAME = "coverage.xml"
HTML_DIR = "htmlcov"


@dataclass(frozen=True)
class CoverageSummary:
    percent: float  # of the whole matrix: a line counts as covered when any cell covered it
    files: int
    shards: int  # data files combined
    warnings: tuple[str, ...] = ()  # what coverage warned of (a file it could not parse, ...), one line each


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
            cov.set_option("paths", {"matrix-run": [f"{project.resolve()}/", f"{SOURCE_DIR}/"]})
            cov.combine(paths, strict=True, keep=True)
            measured = cov.get_data().measured_files()
            percent = cov.xml_report(outfile=str(out / XML_NAME), ignore_errors=True)
            cov.html_report(directory=str(out / HTML_DIR), ignore_errors=True, title=title)
    notes = tuple(dict.fromkeys(str(w.message).splitlines()[0] for w in caught))
    return CoverageSummary(round(float(percent), 2), len(measured), len(datas), notes)
