"""The pipeline's report step: one run's report set written into the output folder.

junit.xml, results.json, summary.md, report.html, and (coverage on) coverage.xml and htmlcov/, each by the module
that owns its format; then the terminal table, and GitHub's step summary and annotations when run there.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from runner import coverage_merge, github, images, junit, report_page, summary
from runner.config import MatrixFile
from runner.errors import ExitCode
from runner.execution import RunResults
from runner.history import History


def merge_coverage(mf: MatrixFile, results: RunResults, out: Path) -> coverage_merge.CoverageSummary | None:
    """One coverage report for the whole matrix, from every shard attempt that sent data. Never fails the run."""
    datas = [att.outcome.coverage for cell in results.cells for att in cell.attempts if att.outcome.coverage]
    try:
        covered = coverage_merge.write_merged(datas, mf.project, out, f"matrix-run: {mf.name}")
    except Exception as exc:  # a coverage problem is reported, never turned into a failed run
        print(f"matrix-run: coverage not merged: {exc.__class__.__name__}: {exc}", file=sys.stderr)
        return None
    for note in covered.warnings if covered is not None else ():
        print(f"matrix-run: coverage: {note}", file=sys.stderr)
    return covered


def write_all(
    results: RunResults, mf: MatrixFile, out: Path, status: str, code: ExitCode, history: History, scope: str
) -> None:
    """Every report of the run, then what the terminal and GitHub are told."""
    junit.write_merged(results.cells, out / "junit.xml", mf.name)
    covered = merge_coverage(mf, results, out) if mf.coverage.enabled else None
    disk = images.measure_disk({c.cell_id: c.image for c in results.cells})  # sizes on this node's engine
    summary.write_results_json(results, out / "results.json", mf.name, status, code, covered, disk)
    summary.write_summary_md(results, out / "summary.md", mf.name, status, covered, disk)
    report_page.write(out / "report.html", results, mf, status, covered, history, scope)
    summary.print_table(results, status)
    print(f"reports: {out}/junit.xml, results.json, summary.md, report.html")
    if covered is not None:
        print(f"coverage: {covered.percent:.1f}% of {covered.files} file(s) -> {out}/coverage.xml, htmlcov/index.html")
    github.emit(results, os.environ, mf.project, mf.name, status, covered)  # annotations, $GITHUB_STEP_SUMMARY
