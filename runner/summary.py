"""End of run: results.json, summary.md, the terminal table, and the exit code (report.html: report_page.py)."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterable
from pathlib import Path

from runner.coverage_merge import HTML_DIR, XML_NAME, CoverageSummary
from runner.errors import ExitCode
from runner.execution import RunResults
from runner.images import ImagesDisk
from runner.results import BAD, Case, CellResult, Status, TestHistory

# results.json's contract (runner/results.schema.json). 2: JUnit built from the plugin's records, shard attempts'
# "session", the run's "fail_fast_by" and "cluster_lost"; within 2 (fields added, none changed): cells' "quarantined"
# and "quarantined_tests"; the run's "image_nodes", shard attempts' "image_seconds" and "image_built"; the images'
# "disk_bytes", "size_sum_bytes", "heavy_layers" and "cell_images" (their sizes on the coordinator's node)
SCHEMA_VERSION = 2


def run_status(results: RunResults, strict_flaky: bool = False, skip_unavailable: bool = False) -> tuple[str, ExitCode]:
    """The run's verdict and exit code (pytest's codes). Cells no node could serve (no_capacity) make it exit 3,
    unless ``skip_unavailable`` (--skip-unavailable): then they are listed and change nothing."""
    statuses = {c.status for c in results.cells}
    if skip_unavailable and statuses - {Status.NO_CAPACITY}:
        statuses -= {Status.NO_CAPACITY}
    if results.interrupted:
        return "interrupted", ExitCode.INTERRUPTED
    if results.cluster_lost:
        return "infra", ExitCode.INTERNAL
    if statuses & {Status.FAILED, Status.TIMEOUT, Status.ERROR}:
        return "failed", ExitCode.TESTS_FAILED
    if Status.INFRA in statuses:
        return "infra", ExitCode.INTERNAL
    if Status.NO_CAPACITY in statuses and not skip_unavailable:
        return "no_capacity", ExitCode.INTERNAL
    if strict_flaky and Status.FLAKY in statuses:
        return "flaky", ExitCode.TESTS_FAILED
    if Status.CANCELLED in statuses:
        return "cancelled", ExitCode.TESTS_FAILED
    if statuses and statuses <= {Status.NO_TESTS, Status.NO_CAPACITY}:
        return "no_tests", ExitCode.NO_TESTS
    return "passed", ExitCode.OK


def run_notes(results: RunResults) -> list[str]:
    """What happened to the run as a whole, one line each: for the summary, the page and the terminal."""
    notes = []
    if results.fail_fast_by:
        notes.append(
            f"fail-fast: {results.fail_fast_by} failed after its reruns, and the cells still to run were cancelled "
            "(strategy.fail-fast: false runs every cell)"
        )
    if results.cluster_lost:
        notes.append(f"infra: {results.cluster_lost}; shards that had not finished are reported as infra")
    return notes


def cell_record(cell: CellResult) -> dict[str, object]:
    counts = cell.counts()
    return {
        "id": cell.cell_id,
        "axes": cell.axes,
        "status": str(cell.status),
        "reason": cell.reason,
        "tests": counts["tests"],
        "passed": counts["passed"],
        "failures": counts["failures"],
        "errors": counts["errors"],
        "skipped": counts["skipped"],
        "flaky": counts["flaky"],
        "timeouts": counts["timeouts"],
        "duration": round(cell.duration, 3),
        "attempts": len(cell.attempts),
        "image": cell.image,
        "shards": [
            {
                "shard": a.shard,
                "attempt": a.attempt,
                "kind": a.kind,
                "reason": a.reason,
                "tests": len(a.cases),
                "duration": round(a.outcome.duration, 3),
                "wall": round(a.wall, 3),
                "session": round(a.session_seconds, 3),  # pytest's session in the container, start to end
                "node": a.outcome.node,
                "node_id": a.outcome.node_id,
                "gpu_ids": list(a.outcome.gpu_ids),
                "image_seconds": round(a.outcome.image_seconds, 3),  # of duration: the cell image on the node
                "image_built": a.outcome.image_built,  # the shard had to build it, holding its slot
                "exit_code": a.outcome.exit_code,
            }
            for a in cell.attempts
        ],
        "flaky_tests": sorted(f"{k[0]}::{k[1]}" for k, h in cell.tests.items() if h.status is Status.FLAKY),
        "failed_tests": sorted(
            f"{k[0]}::{k[1]}"
            for k, h in cell.tests.items()
            if h.status in (Status.FAILED, Status.ERROR, Status.TIMEOUT) and not h.quarantined
        ),
        "quarantined": cell.quarantined(),
        "quarantined_tests": [
            {
                "test": f"{k[0]}::{k[1]}",
                "nodeid": display_name(h),
                "status": str(h.status),
                "reason": h.quarantine_reason,
            }
            for k, h in sorted(cell.tests.items())
            if h.quarantined
        ],
    }


def write_results_json(
    results: RunResults,
    path: Path,
    name: str,
    status: str,
    code: ExitCode,
    coverage: CoverageSummary | None = None,
    disk: ImagesDisk | None = None,
) -> None:
    """results.json; ``disk``: the sizes of the cell images on this node (images.measure_disk), when known."""
    data: dict[str, object] = {
        "schema": SCHEMA_VERSION,
        "name": name,
        "run_id": results.run_id,
        "status": status,
        "exit_code": int(code),
        "duration": round(results.duration, 3),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "fail_fast_by": results.fail_fast_by,
        "cluster_lost": results.cluster_lost,
        "image_nodes": results.image_nodes,
        "images": {
            "built": results.images_built,
            "reused": results.images_reused,
            "check_seconds": round(results.image_check_seconds, 3),
        },
        "cells": [cell_record(c) for c in results.cells],
    }
    if disk is not None:
        data["images"] = {**data["images"], **images_disk_record(disk)}  # type: ignore[dict-item]
    if coverage is not None:
        data["coverage"] = {
            "percent": coverage.percent,
            "files": coverage.files,
            "shards": coverage.shards,
            "xml": XML_NAME,
            "html": f"{HTML_DIR}/index.html",
        }
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False))
    tmp.replace(path)


def images_disk_record(disk: ImagesDisk) -> dict[str, object]:
    """The images section's sizes: each cell image, and the disk all of them hold together (layers once)."""
    return {
        "disk_bytes": disk.disk,
        "size_sum_bytes": disk.sizes,
        "heavy_layers": disk.heavy_layers,
        "cell_images": [
            {"tag": i.tag, "cells": list(i.cells), "size_bytes": i.size, "own_bytes": i.own, "heavy": i.heavy}
            for i in disk.images
        ],
    }


def _gb(size: int) -> str:
    """Bytes as Docker prints them (decimal units): 1.4 GB, 320 MB."""
    return f"{size / 1e9:.1f} GB" if size >= 1e9 else f"{size / 1e6:.0f} MB"


def images_line(disk: ImagesDisk | None) -> str:
    """One line for summary.md: how much disk the matrix's images take together, against their sizes added up."""
    if disk is None or not disk.images:
        return ""
    count = len(disk.images)
    layers = disk.heavy_layers
    shared = f", built on {layers} heavy layer{'s' if layers != 1 else ''}" if layers else ""
    if count == 1:
        return f"Images: 1 cell image holds {_gb(disk.disk)} on disk (its base included){shared}"
    return (
        f"Images: {count} cell images hold {_gb(disk.disk)} on disk together (every layer once, bases included; "
        f"their sizes add up to {_gb(disk.sizes)}){shared}"
    )


ICON = {
    "passed": "✅",
    "flaky": "⚠️",
    "failed": "❌",
    "error": "💥",
    "timeout": "⏱️",
    "infra": "🛠️",
    "cancelled": "⏹️",
    "cached": "♻️",
    "no_tests": "∅",
    "no_capacity": "🚫",
}
QUARANTINE_ICON = "🔒"


def _coverage_line(coverage: CoverageSummary | None) -> str:
    if coverage is None:
        return ""
    return (
        f"Coverage of the whole matrix: {coverage.percent:.1f}% of {coverage.files} file(s), "
        f"from {coverage.shards} shard attempt(s): {XML_NAME}, {HTML_DIR}/index.html"
    )


FAILURE_LINES = 12  # lines of a failure's text shown under each failed or flaky test
LISTED_TESTS = 50  # failed (and flaky) tests listed per cell, each with the first lines of its failure
REASON_CHARS = 3000
CUT_NOTE_BYTES = 512  # kept free for the line that says what a size limit cut


def display_name(hist: TestHistory) -> str:
    """How the summary names a test: its pytest node id when known (relative to pytest's rootdir), else JUnit's
    classname::name."""
    nodeid = next((c.nodeid for c in (hist.first, *hist.reruns) if c.nodeid), None)
    return nodeid or "::".join(part for part in hist.first.key if part)


def shown_failure(hist: TestHistory) -> Case:
    """The attempt that stands for a test's failure: its first failed attempt (for a flaky test too)."""
    failed = hist.failed_attempts
    return failed[0] if failed else hist.final


def failure_excerpt(case: Case, lines: int = FAILURE_LINES) -> str:
    """The first lines of a failure (pytest's report of it), else its one-line message."""
    rows = case.text.strip("\n").splitlines()
    if not "".join(rows).strip():
        return case.message.strip()
    shown = [row[:500] for row in rows[:lines]]
    if len(rows) > lines:
        shown.append(f"... ({len(rows) - lines} more line(s))")
    return "\n".join(shown)


def problem_tests(
    cell: CellResult, statuses: Iterable[Status], quarantined: bool = False
) -> list[tuple[str, TestHistory]]:
    """(label, history) of the cell's tests whose final status is one of ``statuses``, by label: those outside
    quarantine, or with ``quarantined`` those in it."""
    wanted = set(statuses)
    return sorted(
        ((display_name(h), h) for h in cell.tests.values() if h.status in wanted and h.quarantined == quarantined),
        key=lambda p: p[0],
    )


def _fence(text: str) -> str:
    """A code fence longer than any run of backticks in ``text`` (so the text cannot close it)."""
    return "`" * max(3, max((len(run) for run in re.findall(r"`+", text)), default=0) + 1)


def code_span(text: str) -> str:
    """``text`` on one line as a Markdown code span, whatever backticks it holds."""
    text = " ".join(text.split())
    ticks = "`" * (max((len(run) for run in re.findall(r"`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{ticks}{pad}{text}{pad}{ticks}"


def _code_block(text: str, indent: str = "") -> list[str]:
    fence = _fence(text)
    return [f"{indent}{fence}", *(f"{indent}{row}" if row else "" for row in text.splitlines()), f"{indent}{fence}"]


def _test_entry(label: str, hist: TestHistory) -> list[str]:
    status = hist.status
    failure = shown_failure(hist)
    what = "flaky (passed on a rerun)" if status is Status.FLAKY else str(status)
    icon = ICON.get(str(status), "")
    if hist.quarantined:
        icon = QUARANTINE_ICON
        why = " ".join(hist.quarantine_reason.split())
        what += f" (quarantined{': ' + why if why else ''})"
    message = failure.message.strip()
    said = f": {code_span(message)}" if message else ""
    entry = [f"- {icon} {code_span(label)} {what}{said}"]
    excerpt = failure_excerpt(failure)
    if excerpt and excerpt != message:
        entry += _code_block(excerpt, indent="  ")
    return entry


def _cell_details(cell: CellResult) -> list[str]:
    lines = [f"### `{cell.cell_id}`: {cell.status}"]
    if cell.reason:
        lines += ["", *_code_block(cell.reason.strip()[:REASON_CHARS])]
    sections = (("Failed", BAD, False), ("Flaky", {Status.FLAKY}, False), ("Quarantined", BAD | {Status.FLAKY}, True))
    for title, statuses, quarantined in sections:
        tests = problem_tests(cell, statuses, quarantined)
        if not tests:
            continue
        lines += ["", f"{title} tests ({len(tests)}):", ""]
        for label, hist in tests[:LISTED_TESTS]:
            lines += _test_entry(label, hist)
        if len(tests) > LISTED_TESTS:
            lines.append(f"- ... and {len(tests) - LISTED_TESTS} more (junit.xml has them all)")
    return [*lines, ""]


def _cell_stub(cell: CellResult) -> list[str]:
    """A cell's details when they do not fit: its status and counts only."""
    c = cell.counts()
    held = f", {cell.quarantined()} quarantined" if cell.quarantined() else ""
    return [
        f"- `{cell.cell_id}`: {cell.status}, {c['failures']} failed, {c['errors']} errors, {c['flaky']} flaky{held}"
    ]


def _has_quarantined_trouble(cell: CellResult) -> bool:
    return any(h.quarantined and h.status in BAD | {Status.FLAKY} for h in cell.tests.values())


def _text(lines: list[str]) -> str:
    return "".join(f"{line}\n" for line in lines)


def _size(lines: list[str]) -> int:
    return len(_text(lines).encode("utf-8"))


def summary_markdown(
    results: RunResults,
    name: str,
    status: str,
    coverage: CoverageSummary | None = None,
    limit: int | None = None,
    disk: ImagesDisk | None = None,
) -> str:
    """summary.md: the status line, the run's notes, the table of cells, then each cell that did not pass with its
    reason and its failed and flaky tests (the first lines of each failure).

    With ``limit`` (bytes, UTF-8) the text fits in it: the status line and the notes always stay; what is cut is the
    per-cell details first (a cell whose details do not fit keeps one line of counts), then the table's last rows,
    and a last line says what was cut.
    """
    head = [f"# matrix-run: {name} — {status}", ""]
    notes = run_notes(results)
    head += [f"> {note}" for note in notes]
    if notes:
        head.append("")
    if coverage is not None:
        head += [_coverage_line(coverage), ""]
    if images_line(disk):
        head += [images_line(disk), ""]
    held = any(h.quarantined for cell in results.cells for h in cell.tests.values())  # a quarantined column
    extra, extra_rule = (" quarantined |", "---:|") if held else ("", "")
    table = [
        f"| cell | status | tests | passed | failed | errors | skipped | flaky |{extra} time |",
        f"|---|---|---:|---:|---:|---:|---:|---:|{extra_rule}---:|",
    ]
    rows = []
    for cell in results.cells:
        c = cell.counts()
        st = str(cell.status)
        held_count = f" {cell.quarantined()} |" if held else ""
        rows.append(
            f"| `{cell.cell_id}` | {ICON.get(st, '')} {st} | {c['tests']} | {c['passed']} | {c['failures']} | "
            f"{c['errors']} | {c['skipped']} | {c['flaky']} |{held_count} {cell.duration:.1f}s |"
        )
    problems = [
        c for c in results.cells if c.status not in (Status.PASSED, Status.CACHED) or _has_quarantined_trouble(c)
    ]
    details = [_cell_details(cell) for cell in problems]
    if limit is None or _size(head + table + rows) + sum(map(_size, details)) + _size(["", "## Details", ""]) <= limit:
        lines = head + table + rows
        if details:
            lines += ["", "## Details", ""]
            for block in details:
                lines += block
        return _text(lines)

    budget = limit - CUT_NOTE_BYTES
    lines = list(head)
    used = _size(lines)
    kept_rows = 0
    if used + _size(table) <= budget:
        lines += table
        used += _size(table)
        for row in rows:
            if used + _size([row]) > budget:
                break
            lines.append(row)
            used += _size([row])
            kept_rows += 1
    cut_details = stubbed = 0
    if kept_rows == len(rows) and problems:
        section = ["", "## Details", ""]
        if used + _size(section) <= budget:
            lines += section
            used += _size(section)
        stubs_begun = False
        for cell, block in zip(problems, details, strict=True):
            if not stubs_begun and used + _size(block) <= budget:
                lines += block
                used += _size(block)
                continue
            if not stubs_begun:  # from here on, one line of counts per cell: order kept, nothing skipped silently
                stubs_begun = True
                lines += ["Details cut to fit the size limit; counts only:", ""]
                used += _size(lines[-2:])
            stub = _cell_stub(cell)
            if used + _size(stub) > budget:
                cut_details += 1
                continue
            lines += stub
            used += _size(stub)
            stubbed += 1
        if stubs_begun:
            lines.append("")
    else:
        cut_details = len(problems)
    what = []
    if kept_rows < len(rows):
        what.append(f"{len(rows) - kept_rows} of {len(rows)} table row(s)")
    if stubbed or cut_details:
        what.append(f"the details of {stubbed + cut_details} of {len(problems)} cell(s)")
        if cut_details:
            what[-1] += f" ({cut_details} without even their counts)"
    lines.append(
        f"> ✂️ cut to stay under {limit:,} bytes: {', '.join(what) or 'nothing'}; the run's summary.md, junit.xml "
        "and results.json have everything."
    )
    return _text(lines)


def write_summary_md(
    results: RunResults,
    path: Path,
    name: str,
    status: str,
    coverage: CoverageSummary | None = None,
    disk: ImagesDisk | None = None,
) -> None:
    path.write_text(summary_markdown(results, name, status, coverage, disk=disk), encoding="utf-8")


def print_table(results: RunResults, status: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"matrix-run: {status} in {results.duration:.1f}s", title_justify="left")
    for col in ("cell", "status", "tests", "passed", "failed", "errors", "skipped", "flaky", "time"):
        table.add_column(col, justify="left" if col in ("cell", "status") else "right")
    for cell in results.cells:
        c = cell.counts()
        st = str(cell.status)
        color = {"passed": "green", "flaky": "yellow", "cached": "cyan"}.get(st, "red")
        table.add_row(
            cell.cell_id,
            f"[{color}]{st}[/{color}]",
            str(c["tests"]),
            str(c["passed"]),
            str(c["failures"]),
            str(c["errors"]),
            str(c["skipped"]),
            str(c["flaky"]),
            f"{cell.duration:.1f}s",
        )
    widest = max((len(c.cell_id) for c in results.cells), default=10)
    Console(width=max(widest + 80, Console().width)).print(table)
    for cell in results.cells:
        if cell.status not in (Status.PASSED, Status.FLAKY, Status.CACHED) and cell.reason:
            # reasons hold the tail of the tests' own output: indented, so that no line of it starts with "::"
            # and is read by a CI runner as a workflow command (::error::, ::add-mask::, ::stop-commands::)
            reason = "\n  ".join(cell.reason.strip()[:1500].splitlines())
            print(f"{cell.cell_id}: {cell.status}: {reason}")
    for cell in results.cells:
        for label, hist in problem_tests(cell, BAD | {Status.FLAKY}, quarantined=True):
            # the node id comes from the tests: on one line, after the cell id (never a workflow command)
            print(f"{cell.cell_id}: quarantined: {' '.join(label.split())} {hist.status} (sets no exit code)")
    for note in run_notes(results):
        print(f"matrix-run: {note}")
