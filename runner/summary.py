"""End of run: results.json, summary.md, report.html, the terminal table, and the exit code."""

from __future__ import annotations

import html
import json
import time
from pathlib import Path

from runner.coordinator import RunResults
from runner.coverage_merge import HTML_DIR, XML_NAME, CoverageSummary
from runner.errors import ExitCode
from runner.results import CellResult, Status

SCHEMA_VERSION = 1


def run_status(results: RunResults, strict_flaky: bool = False) -> tuple[str, ExitCode]:
    """The run's verdict and exit code (pytest's codes)."""
    statuses = {c.status for c in results.cells}
    if results.interrupted:
        return "interrupted", ExitCode.INTERRUPTED
    if results.cluster_lost:
        return "infra", ExitCode.INTERNAL
    if statuses & {Status.FAILED, Status.TIMEOUT, Status.ERROR}:
        return "failed", ExitCode.TESTS_FAILED
    if Status.INFRA in statuses:
        return "infra", ExitCode.INTERNAL
    if strict_flaky and Status.FLAKY in statuses:
        return "flaky", ExitCode.TESTS_FAILED
    if Status.CANCELLED in statuses:
        return "cancelled", ExitCode.TESTS_FAILED
    if statuses and statuses <= {Status.NO_TESTS}:
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


def measured_durations(cell: CellResult) -> list[tuple[str, float, int]]:
    """(node id, seconds, position in its file) of each test's first attempt, for the duration history.

    Timeouts say nothing about a test's duration. Positions follow pytest's collection order, so that a file
    split across shards is cut into contiguous runs of tests (suites whose tests depend on the ones before).
    """
    position: dict[str, int] = {}
    for att in cell.attempts:
        per_file: dict[str, int] = {}
        for nodeid in att.order:
            file = nodeid.split("::", 1)[0]
            index = per_file.get(file, 0)
            per_file[file] = index + 1
            position.setdefault(nodeid, index)
    return [
        (h.first.nodeid, h.first.time, position.get(h.first.nodeid, 0))
        for h in cell.tests.values()
        if h.first.nodeid and h.first.status is not Status.TIMEOUT
    ]


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
                "exit_code": a.outcome.exit_code,
            }
            for a in cell.attempts
        ],
        "flaky_tests": sorted(f"{k[0]}::{k[1]}" for k, h in cell.tests.items() if h.status is Status.FLAKY),
        "failed_tests": sorted(
            f"{k[0]}::{k[1]}"
            for k, h in cell.tests.items()
            if h.status in (Status.FAILED, Status.ERROR, Status.TIMEOUT)
        ),
    }


def write_results_json(
    results: RunResults,
    path: Path,
    name: str,
    status: str,
    code: ExitCode,
    coverage: CoverageSummary | None = None,
) -> None:
    data = {
        "schema": SCHEMA_VERSION,
        "name": name,
        "run_id": results.run_id,
        "status": status,
        "exit_code": int(code),
        "duration": round(results.duration, 3),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "fail_fast_by": results.fail_fast_by,
        "cluster_lost": results.cluster_lost,
        "images": {
            "built": results.images_built,
            "reused": results.images_reused,
            "check_seconds": round(results.image_check_seconds, 3),
        },
        "cells": [cell_record(c) for c in results.cells],
    }
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
}


def _coverage_line(coverage: CoverageSummary | None) -> str:
    if coverage is None:
        return ""
    return (
        f"Coverage of the whole matrix: {coverage.percent:.1f}% of {coverage.files} file(s), "
        f"from {coverage.shards} shard attempt(s): {XML_NAME}, {HTML_DIR}/index.html"
    )


def write_summary_md(
    results: RunResults, path: Path, name: str, status: str, coverage: CoverageSummary | None = None
) -> None:
    lines = [f"# matrix-run: {name} — {status}", ""]
    lines += [f"> {note}" for note in run_notes(results)]
    if run_notes(results):
        lines.append("")
    if coverage is not None:
        lines += [_coverage_line(coverage), ""]
    lines.append("| cell | status | tests | passed | failed | errors | skipped | flaky | time |")
    lines.append("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for cell in results.cells:
        c = cell.counts()
        st = str(cell.status)
        lines.append(
            f"| `{cell.cell_id}` | {ICON.get(st, '')} {st} | {c['tests']} | {c['passed']} | {c['failures']} | "
            f"{c['errors']} | {c['skipped']} | {c['flaky']} | {cell.duration:.1f}s |"
        )
    problems = [c for c in results.cells if c.status not in (Status.PASSED, Status.CACHED)]
    if problems:
        lines += ["", "## Details", ""]
        for cell in problems:
            rec = cell_record(cell)
            lines.append(f"### `{cell.cell_id}`: {cell.status}")
            if cell.reason:
                lines += ["", "```", cell.reason.strip()[:3000], "```"]
            for label, key in (("failed", "failed_tests"), ("flaky", "flaky_tests")):
                names = rec[key]
                assert isinstance(names, list)
                if names:
                    lines.append(f"- {label}: " + ", ".join(f"`{n}`" for n in names[:50]))
                    if len(names) > 50:
                        lines.append(f"  - ... and {len(names) - 50} more")
            lines.append("")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def write_report_html(
    results: RunResults, path: Path, name: str, status: str, coverage: CoverageSummary | None = None
) -> None:
    rows = []
    for cell in results.cells:
        c = cell.counts()
        st = str(cell.status)
        rows.append(
            f"<tr class='{st}'><td><code>{html.escape(cell.cell_id)}</code></td><td>{st}</td><td>{c['tests']}</td>"
            f"<td>{c['passed']}</td><td>{c['failures']}</td><td>{c['errors']}</td><td>{c['skipped']}</td>"
            f"<td>{c['flaky']}</td><td>{cell.duration:.1f}s</td><td><pre>{html.escape(cell.reason[:2000])}</pre></td></tr>"
        )
    cov_html = (
        f'\n<p>Coverage: {coverage.percent:.1f}% (<a href="{HTML_DIR}/index.html">report</a>, '
        f'<a href="{XML_NAME}">{XML_NAME}</a>)</p>'
        if coverage is not None
        else ""
    )
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>matrix-run: {html.escape(name)}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;
padding:4px 8px;text-align:left}}tr.passed td:nth-child(2){{color:green}}tr.failed td:nth-child(2),
tr.error td:nth-child(2),tr.timeout td:nth-child(2),tr.infra td:nth-child(2){{color:#b00}}
tr.flaky td:nth-child(2){{color:#a60}}pre{{margin:0;white-space:pre-wrap;max-width:50em}}</style></head><body>
<h1>matrix-run: {html.escape(name)} — {html.escape(status)}</h1>
<p>run {html.escape(results.run_id)}, {results.duration:.1f}s, images built {results.images_built},
reused {results.images_reused}. Files: <a href="junit.xml">junit.xml</a>, <a href="results.json">results.json</a>,
<a href="summary.md">summary.md</a>, logs under <code>logs/</code>.</p>{cov_html}
<table><tr><th>cell</th><th>status</th><th>tests</th><th>passed</th><th>failed</th><th>errors</th><th>skipped</th>
<th>flaky</th><th>time</th><th>reason</th></tr>
{"".join(rows)}
</table></body></html>
"""
    path.write_text(page, encoding="utf-8")


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
            print(f"{cell.cell_id}: {cell.status}: {cell.reason.strip()[:1500]}")
    for note in run_notes(results):
        print(f"matrix-run: {note}")
