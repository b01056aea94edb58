"""The merged JUnit report: one <testsuite> per cell, each test case exactly once, reruns made visible.

- suite ``name`` = cell id (unique), one ``<property name="matrix.AXIS" value="..."/>`` per axis;
- a flaky test is its passing ``<testcase>`` plus one ``<flakyFailure>``/``<flakyError>`` per failed attempt,
  a failed test keeps its ``<failure>`` plus one ``<rerunFailure>``/``<rerunError>`` per rerun (Maven
  Surefire's format, which junitparser's ``xunit2`` module and Jenkins read);
- counts are computed from the test cases, never copied from shard headers;
- ``file``/``line`` are kept from pytest's xunit1 output;
- a quarantined test that failed, errored or timed out is a ``<skipped type="matrix-run.quarantined">`` whose
  message says so (with the entry's reason and the failure's message) and whose text is the failure's report, so
  JUnit readers do not fail the build on it; each quarantined test of a cell is also named in a
  ``<property name="matrix-run.quarantined" value="NODE ID"/>`` of its suite.
"""

from __future__ import annotations

import copy
import socket
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from pathlib import Path

from runner.results import BAD, Case, CellResult, Status, TestHistory

RESULT_TAGS = ("failure", "error", "skipped")


def _interim(tag: str, case: Case) -> ET.Element:
    el = ET.Element(
        tag, {"message": case.message[:2000], "type": "failure" if case.status is Status.FAILED else "error"}
    )
    trace = ET.SubElement(el, "stackTrace")
    trace.text = case.text
    return el


QUARANTINED_TYPE = "matrix-run.quarantined"


def _quarantined_element(hist: TestHistory) -> ET.Element:
    """A quarantined test that did not pass, as a skipped test case carrying its failure."""
    failure = hist.failed_attempts[0] if hist.failed_attempts else hist.final
    el = copy.copy(failure.element)
    el[:] = [copy.copy(c) for c in failure.element if c.tag not in RESULT_TAGS]
    why = f" ({hist.quarantine_reason})" if hist.quarantine_reason else ""
    message = f"quarantined{why}: {hist.status}: {failure.message}"[:2000]
    skipped = ET.Element("skipped", {"message": message, "type": QUARANTINED_TYPE})
    skipped.text = failure.text
    el.insert(0, skipped)
    return el


def testcase_element(hist: TestHistory) -> ET.Element:
    """One <testcase> standing for all attempts of a test."""
    status = hist.status
    if hist.quarantined and status in BAD:
        return _quarantined_element(hist)
    if status is Status.FLAKY:
        el = copy.copy(hist.final.element)
        el[:] = [copy.copy(c) for c in hist.final.element]
        for failed in hist.failed_attempts:
            el.append(_interim("flakyFailure" if failed.status is Status.FAILED else "flakyError", failed))
        return el
    if hist.reruns and status in BAD:
        el = copy.copy(hist.first.element)
        el[:] = [copy.copy(c) for c in hist.first.element]
        for rerun in hist.reruns:
            if rerun.status in BAD:
                el.append(_interim("rerunFailure" if rerun.status is Status.FAILED else "rerunError", rerun))
        return el
    return hist.final.element


def suite_element(cell: CellResult) -> ET.Element:
    counts = cell.counts()
    suite = ET.Element(
        "testsuite",
        {
            "name": cell.cell_id,
            "tests": str(counts["tests"]),
            "failures": str(counts["failures"]),
            "errors": str(counts["errors"]),
            "skipped": str(counts["skipped"] + cell.quarantined()),
            "time": f"{cell.duration:.3f}",
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "hostname": socket.gethostname(),
        },
    )
    props = ET.SubElement(suite, "properties")
    for axis, value in cell.axes.items():
        ET.SubElement(props, "property", {"name": f"matrix.{axis}", "value": value})
    ET.SubElement(props, "property", {"name": "matrix-run.status", "value": str(cell.status)})
    if cell.image:
        ET.SubElement(props, "property", {"name": "matrix-run.image", "value": cell.image})
    for hist in cell.tests.values():
        if hist.quarantined:
            name = next((c.nodeid for c in (hist.first, *hist.reruns) if c.nodeid), None) or "::".join(hist.first.key)
            ET.SubElement(props, "property", {"name": "matrix-run.quarantined", "value": name})
    for hist in cell.tests.values():
        suite.append(testcase_element(hist))
    if cell.reason and cell.status not in (Status.PASSED, Status.FLAKY, Status.FAILED):
        err = ET.SubElement(suite, "system-err")
        err.text = f"matrix-run: cell {cell.status}: {cell.reason}"
    return suite


def write_merged(cells: Iterable[CellResult], path: Path, name: str) -> None:
    """Write DIR/junit.xml atomically (a reader never sees half a file)."""
    root = ET.Element("testsuites", {"name": name})
    totals = {"tests": 0, "failures": 0, "errors": 0}
    seconds = 0.0
    for cell in cells:
        suite = suite_element(cell)
        root.append(suite)
        for k in totals:
            totals[k] += int(suite.get(k, "0"))
        seconds += cell.duration
    for k, v in totals.items():
        root.set(k, str(v))
    root.set("time", f"{seconds:.3f}")
    tmp = path.with_suffix(".xml.tmp")
    ET.ElementTree(root).write(tmp, encoding="utf-8", xml_declaration=True)
    tmp.replace(path)
