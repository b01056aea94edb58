"""GitHub Actions' own channels for a finished run: the job summary and annotations.

- ``$GITHUB_STEP_SUMMARY`` set: summary.md's text is appended to that file, cut to stay under GitHub's 1 MiB per
  step with what the file already holds (the status line always stays; per-cell details are cut first, and the
  summary says what was cut).
- ``GITHUB_ACTIONS=true``: one ``::error`` workflow command per failed test (GitHub shows 10 per step: the tests that
  failed in the most cells first, then cells that errored without a failed test; a ``::notice`` counts the rest) and
  one ``::warning`` per flaky test (10 at most too), each pointing at the test's file and line relative to the
  repository root (``GITHUB_WORKSPACE``, else the current folder). A quarantined test that failed is no error: it
  gets one ``::notice`` (10 at most), saying it is quarantined.

The functions take the results and an environment mapping and return lines; ``emit`` is the only one that prints.
"""

from __future__ import annotations

import os
import posixpath
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from runner import summary
from runner.coverage_merge import CoverageSummary
from runner.execution import RunResults
from runner.results import BAD, Case, CellResult, Status, TestHistory

STEP_SUMMARY_LIMIT = 1024 * 1024  # bytes GitHub takes in one step's summary file; over it, it shows none
ANNOTATION_LIMIT = 10  # error annotations GitHub shows per step (warnings: 10 too)
MESSAGE_CHARS = 4000  # of an annotation's message
LISTED_CELLS = 20  # cells named in an annotation's message


def escape_data(text: str) -> str:
    """A workflow command's message, escaped as GitHub's runner unescapes it."""
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def escape_property(text: str) -> str:
    """A workflow command's property value (file, title, ...): the message's escapes, plus ``:`` and ``,``."""
    return escape_data(text).replace(":", "%3A").replace(",", "%2C")


def workflow_command(command: str, message: str, **properties: str | None) -> str:
    """``::command key=value,...::message``, properties that are None or empty left out."""
    props = ",".join(f"{key}={escape_property(value)}" for key, value in properties.items() if value)
    return f"::{command}{' ' + props if props else ''}::{escape_data(message)}"


def repository_folder(project: Path, env: Mapping[str, str], cwd: Path | None = None) -> str | None:
    """The project folder relative to the repository root (``GITHUB_WORKSPACE``, else ``cwd``), as a posix path;
    None when the project is not inside it (annotations then name no file)."""
    base = env.get("GITHUB_WORKSPACE") or str(cwd or Path.cwd())
    try:
        rel = Path(os.path.realpath(project)).relative_to(os.path.realpath(base))
    except ValueError:
        return None
    return rel.as_posix()


def _rootdirs(cell: CellResult) -> dict[int, str]:
    """id(case) -> pytest's rootdir (relative to the project) of the attempt that produced it."""
    return {id(case): att.rootdir for att in cell.attempts for case in att.cases}


def _location(hist: TestHistory, rootdirs: dict[int, str], folder: str | None) -> tuple[str | None, str | None]:
    """(file relative to the repository root, line) of a test, from the JUnit ``file``/``line`` of its attempts
    (pytest's location, relative to its rootdir), else from its node id's file."""
    if folder is None:
        return None, None
    cases: list[Case] = [summary.shown_failure(hist), hist.first, *hist.reruns]
    chosen = next((c for c in cases if c.element.get("file")), None) or next((c for c in cases if c.nodeid), None)
    if chosen is None:
        return None, None
    file = chosen.element.get("file") or (chosen.nodeid or "").split("::", 1)[0]
    rootdir = rootdirs.get(id(chosen), "")
    if not file or file.startswith("/"):
        return None, None
    path = posixpath.normpath(posixpath.join(folder, rootdir, file))
    if path == ".." or path.startswith("../"):
        return None, None
    return path, chosen.element.get("line")


@dataclass
class Finding:
    """One test, in every cell where it ended the same way (failed, or flaky)."""

    label: str  # pytest's node id (relative to its rootdir), else JUnit's classname::name
    hist: TestHistory  # in the first of those cells
    statuses: set[Status]
    file: str | None
    line: str | None
    cells: list[str] = field(default_factory=list)


def findings(
    results: RunResults,
    statuses: frozenset[Status],
    project: Path,
    env: Mapping[str, str],
    cwd: Path | None = None,
    quarantined: bool = False,
) -> list[Finding]:
    """The tests whose final status is one of ``statuses`` in some cell, one finding per distinct test: those in the
    most cells first, then in the order the run lists them. Quarantined tests are left out, or with ``quarantined``
    only they are listed."""
    folder = repository_folder(project, env, cwd)
    found: dict[str, Finding] = {}
    for cell in results.cells:
        rootdirs = _rootdirs(cell)
        default_root = next((a.rootdir for a in cell.attempts), "")
        for label, hist in summary.problem_tests(cell, statuses, quarantined):
            case = summary.shown_failure(hist)
            key = f"{rootdirs.get(id(case), default_root)}\0{label}"  # node ids are relative to pytest's rootdir
            if key not in found:
                file, line = _location(hist, rootdirs, folder)
                found[key] = Finding(label, hist, set(), file, line)
            found[key].statuses.add(hist.status)
            found[key].cells.append(cell.cell_id)
    ranked = sorted(enumerate(found.values()), key=lambda p: (-len(p[1].cells), p[0]))
    return [f for _, f in ranked]


CELL_ERRORS = frozenset({Status.ERROR, Status.INFRA, Status.TIMEOUT})
WORDS = {Status.FAILED: "failed", Status.ERROR: "errored", Status.TIMEOUT: "timed out", Status.FLAKY: "flaky"}


def _cells_line(what: str, cells: list[str], total: int) -> str:
    named = ", ".join(cells[:LISTED_CELLS])
    more = f" and {len(cells) - LISTED_CELLS} more" if len(cells) > LISTED_CELLS else ""
    return f"{what} in {len(cells)} of {total} cell(s): {named}{more}"


def _annotation(command: str, finding: Finding, total: int) -> str:
    what = WORDS[next(iter(finding.statuses))] if len(finding.statuses) == 1 else "failed"
    if finding.hist.quarantined:
        what = f"{what} (quarantined)"
    failure = summary.shown_failure(finding.hist)
    message = failure.message.strip()
    if finding.statuses == {Status.FLAKY}:
        message = f"passed on a rerun after: {message}" if message else "passed on a rerun after failing"
    parts = [message] if message else []
    parts.append(_cells_line(what, finding.cells, total))
    excerpt = summary.failure_excerpt(failure)
    if excerpt and excerpt != failure.message.strip():
        parts += ["", excerpt]
    message = "\n".join(parts)
    if len(message) > MESSAGE_CHARS:
        message = message[: MESSAGE_CHARS - 4] + "\n..."
    title = f"{finding.label}: {what} in {len(finding.cells)} of {total} cell(s)"
    line = finding.line if finding.file else None
    return workflow_command(command, message, file=finding.file, line=line, title=title)


def _cell_annotation(cell: CellResult) -> str:
    reason = cell.reason.strip() or str(cell.status)
    if len(reason) > MESSAGE_CHARS:
        reason = reason[: MESSAGE_CHARS - 4] + "\n..."
    return workflow_command("error", reason, title=f"matrix-run: cell {cell.cell_id}: {cell.status}")


def annotation_lines(results: RunResults, env: Mapping[str, str], project: Path, cwd: Path | None = None) -> list[str]:
    """The workflow commands for a run under GitHub Actions (``GITHUB_ACTIONS=true``); none elsewhere."""
    if env.get("GITHUB_ACTIONS") != "true":
        return []
    total = len(results.cells)
    failed = findings(results, BAD, project, env, cwd)
    broken = [  # cells that did not pass and have no failed test to say why
        c for c in results.cells if c.status in CELL_ERRORS and not any(h.status in BAD for h in c.tests.values())
    ]
    errors = [_annotation("error", f, total) for f in failed] + [_cell_annotation(c) for c in broken]
    lines = errors[:ANNOTATION_LIMIT]
    if len(errors) > ANNOTATION_LIMIT:
        rest_tests = max(0, len(failed) - ANNOTATION_LIMIT)
        rest_cells = len(errors) - ANNOTATION_LIMIT - rest_tests
        what = [f"{rest_tests} more failed test(s)"] if rest_tests else []
        what += [f"{rest_cells} more errored cell(s)"] if rest_cells else []
        lines.append(
            workflow_command(
                "notice",
                f"{' and '.join(what)} not annotated: GitHub shows {ANNOTATION_LIMIT} error annotations per step; "
                "the job summary (summary.md) and junit.xml list every failure",
                title="matrix-run",
            )
        )
    flaky = findings(results, frozenset({Status.FLAKY}), project, env, cwd)
    lines += [_annotation("warning", f, total) for f in flaky[:ANNOTATION_LIMIT]]
    if len(flaky) > ANNOTATION_LIMIT:
        lines.append(
            workflow_command(
                "notice",
                f"{len(flaky) - ANNOTATION_LIMIT} more flaky test(s) not annotated: GitHub shows {ANNOTATION_LIMIT} "
                "warning annotations per step; the job summary (summary.md) and junit.xml list them all",
                title="matrix-run",
            )
        )
    held = findings(results, BAD, project, env, cwd, quarantined=True)
    lines += [_annotation("notice", f, total) for f in held[:ANNOTATION_LIMIT]]
    return lines


def append_step_summary(
    path: Path,
    results: RunResults,
    name: str,
    status: str,
    coverage: CoverageSummary | None = None,
    limit: int = STEP_SUMMARY_LIMIT,
) -> int:
    """Append summary.md's text to the step summary file at ``path``, cut so that the file stays within ``limit``
    bytes with what it already holds. Returns the bytes appended."""
    existing = path.stat().st_size if path.exists() else 0
    sep = ""
    if existing:
        with path.open("rb") as fh:
            fh.seek(-1, os.SEEK_END)
            sep = "\n" if fh.read(1) == b"\n" else "\n\n"
    budget = max(0, limit - existing - len(sep))
    text = sep + summary.summary_markdown(results, name, status, coverage, limit=budget)
    data = text.encode("utf-8")
    with path.open("ab") as fh:
        fh.write(data)
    return len(data)


def emit(
    results: RunResults,
    env: Mapping[str, str],
    project: Path,
    name: str,
    status: str,
    coverage: CoverageSummary | None = None,
    out: TextIO | None = None,
) -> None:
    """At the end of a run: the annotations on ``out`` (stdout), and the step summary. Never fails the run."""
    stream = out if out is not None else sys.stdout
    for line in annotation_lines(results, env, project):
        print(line, file=stream)
    target = env.get("GITHUB_STEP_SUMMARY")
    if target:
        try:
            append_step_summary(Path(target), results, name, status, coverage)
        except OSError as exc:
            print(f"matrix-run: GitHub step summary not written to {target}: {exc}", file=sys.stderr)
