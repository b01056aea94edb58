"""Failures are results: shard outcomes -> per-test and per-cell statuses, decided here and nowhere else.

A test's attempts fold into one final status: ``passed``, ``failed``, ``flaky`` (failed, then passed on a
rerun), ``error`` (setup/collection), ``skipped``, ``timeout`` (was running when its shard hit the time limit).
A shard attempt that did not end as pytest ending is classed: ``timeout``, ``infra`` (Docker API error, image
build hiccup, container killed by a signal or the OOM killer, node lost), ``error`` (the project could not be
installed, pytest usage/internal error), ``no_tests``.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum

from runner.container import SETUP_FAILED, ShardOutcome


class Status(str, Enum):
    PASSED = "passed"
    FAILED = "failed"
    FLAKY = "flaky"
    ERROR = "error"
    SKIPPED = "skipped"
    TIMEOUT = "timeout"
    INFRA = "infra"
    CANCELLED = "cancelled"
    CACHED = "cached"
    NO_TESTS = "no_tests"

    def __str__(self) -> str:
        return self.value


BAD = frozenset({Status.FAILED, Status.ERROR, Status.TIMEOUT})


@dataclass
class Case:
    """One <testcase> of one attempt, with the node id that produced it when known."""

    classname: str
    name: str
    status: Status
    time: float
    element: ET.Element
    nodeid: str | None = None
    message: str = ""
    text: str = ""

    @property
    def key(self) -> tuple[str, str]:
        return (self.classname, self.name)


@dataclass
class Attempt:
    """How one shard attempt ended, and the test cases it produced."""

    shard: str
    attempt: int
    kind: str  # "ok", "timeout", "infra", "error", "no_tests"
    reason: str
    cases: list[Case]
    collected: list[str]  # node ids collected, in order (from the plugin)
    finished: set[str]  # node ids with a final report
    running: str | None  # node id that had started but not finished (timeout / kill)
    outcome: ShardOutcome
    wall: float = 0.0  # seconds from submission to the coordinator holding the outcome
    order: list[str] = field(default_factory=list)  # see Report.order


def parse_junit(data: bytes) -> list[Case]:
    """Every <testcase> in a JUnit file, counted as elements (suite headers are not trusted)."""
    if not data.strip():
        return []
    try:
        root = ET.fromstring(data)
    except ET.ParseError:
        return []
    cases = []
    for tc in root.iter("testcase"):
        status, message, text = Status.PASSED, "", ""
        for child in tc:
            tag = child.tag
            if tag in ("failure", "error", "skipped"):
                message = child.get("message", "") or ""
                text = child.text or ""
                if tag == "failure":
                    status = Status.FAILED
                elif tag == "error":
                    status = Status.ERROR
                elif status is Status.PASSED:
                    status = Status.SKIPPED
                if tag != "skipped":
                    break
        try:
            seconds = float(tc.get("time", "0") or 0)
        except ValueError:
            seconds = 0.0
        cases.append(Case(tc.get("classname", ""), tc.get("name", ""), status, seconds, tc, None, message, text))
    return cases


@dataclass
class Report:
    collected: list[str] = field(default_factory=list)
    order: list[str] = field(default_factory=list)  # the collected files' tests in pytest's order, unselected
    finished: dict[str, dict[str, object]] = field(default_factory=dict)  # nodeid -> merged record
    started: list[str] = field(default_factory=list)
    junit_names: dict[tuple[str, str], str] = field(default_factory=dict)
    ended: bool = False


def parse_report(data: bytes) -> Report:
    """The plugin's JSON lines: collected ids, per-test outcomes (possibly cut short by a kill)."""
    rep = Report()
    phases: dict[str, dict[str, object]] = {}
    for line in data.splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue  # a line cut by a kill
        event = rec.get("event")
        if event == "collected":
            rep.collected = list(rec.get("nodeids", []))
            rep.order = list(rec.get("order") or rep.collected)
        elif event == "end":
            rep.ended = True
        elif event == "test":
            nodeid = str(rec["nodeid"])
            rep.junit_names[(str(rec.get("classname", "")), str(rec.get("name", "")))] = nodeid
            cur = phases.setdefault(nodeid, {"outcome": "passed", "duration": 0.0, "when": "", "file": rec.get("file")})
            if rec["when"] == "setup":
                rep.started.append(nodeid)
            cur["duration"] = float(cur["duration"]) + float(rec.get("duration", 0.0))  # type: ignore[arg-type]
            outcome = rec.get("outcome")
            if outcome == "failed":
                cur["outcome"] = "error" if rec["when"] != "call" else "failed"
                cur["longrepr"] = rec.get("longrepr", "")
            elif outcome == "skipped" and cur["outcome"] == "passed":
                cur["outcome"] = "skipped"
            if rec["when"] == "teardown":
                rep.finished[nodeid] = cur
    return rep


def _case_from_record(nodeid: str, rec: dict[str, object], classname: str, name: str) -> Case:
    status = {"passed": Status.PASSED, "failed": Status.FAILED, "error": Status.ERROR, "skipped": Status.SKIPPED}[
        str(rec["outcome"])
    ]
    el = ET.Element("testcase", {"classname": classname, "name": name, "time": f"{float(rec['duration']):.3f}"})  # type: ignore[arg-type]
    if rec.get("file"):
        el.set("file", str(rec["file"]))
    if status in (Status.FAILED, Status.ERROR):
        child = ET.SubElement(el, "failure" if status is Status.FAILED else "error", {"message": "failed"})
        child.text = str(rec.get("longrepr", ""))
    elif status is Status.SKIPPED:
        ET.SubElement(el, "skipped", {"message": "skipped"})
    return Case(classname, name, status, float(rec["duration"]), el, nodeid)  # type: ignore[arg-type]


def junit_names(nodeid: str) -> tuple[str, str]:
    """pytest's own mapping of a node id to JUnit classname/name (junitxml.mangle_test_address)."""
    path, bracket, params = nodeid.partition("[")
    names = path.split("::")
    names[0] = names[0].replace("/", ".")
    if names[0].endswith(".py"):
        names[0] = names[0][:-3]
    names[-1] += bracket + params
    return ".".join(names[:-1]), names[-1]


def timeout_case(nodeid: str, seconds: float, limit: float) -> Case:
    classname, name = junit_names(nodeid)
    el = ET.Element("testcase", {"classname": classname, "name": name, "time": f"{seconds:.3f}"})
    err = ET.SubElement(el, "error", {"message": f"timeout: the shard hit its {limit:g} s limit during this test"})
    err.text = "matrix-run killed the container at the shard time limit (tests.timeout)"
    return Case(classname, name, Status.TIMEOUT, seconds, el, nodeid, err.get("message", ""), err.text)


def evaluate(outcome: ShardOutcome, timeout: float = 0.0) -> Attempt:
    """Classify one shard attempt and gather its test cases (from JUnit, else from the streamed report)."""
    report = parse_report(outcome.report)
    cases = parse_junit(outcome.junit)
    for case in cases:
        case.nodeid = report.junit_names.get(case.key)
    if not cases and report.finished:
        # pytest never wrote its JUnit (killed): rebuild the finished tests from the streamed records
        for nodeid, rec in report.finished.items():
            classname, name = junit_names(nodeid)
            cases.append(_case_from_record(nodeid, rec, classname, name))
    running = next((n for n in report.started if n not in report.finished), None)
    code = outcome.exit_code
    kind, reason = "ok", ""
    if outcome.infra_error:
        kind, reason = "infra", outcome.infra_error
    elif outcome.timed_out:
        kind, reason = "timeout", f"shard exceeded tests.timeout ({timeout:g} s)"
        if running is not None:
            cases.append(timeout_case(running, timeout, timeout))
    elif outcome.oom_killed:
        kind, reason = "infra", "container killed by the OOM killer (raise resources.memory)"
    elif code == SETUP_FAILED:
        kind, reason = "error", "the project could not be installed in the cell image (see the shard log)"
    elif code is None or code >= 128 or code < 0:
        kind, reason = "infra", f"container ended by a signal (exit {code})"
    elif code == 5:
        kind, reason = "no_tests", "pytest collected no tests"
    elif code in (2, 3, 4):
        what = {2: "interrupted (collection errors?)", 3: "internal error", 4: "usage error"}[code]
        kind, reason = "error", f"pytest exited {code}: {what}"
    elif code not in (0, 1):
        kind, reason = "error", f"test command exited {code}"
    return Attempt(
        shard=outcome.shard,
        attempt=outcome.attempt,
        kind=kind,
        reason=reason,
        cases=cases,
        collected=report.collected,
        finished=set(report.finished),
        running=running,
        outcome=outcome,
        order=report.order,
    )


@dataclass
class TestHistory:
    """All attempts of one test in one cell, folded into a final status."""

    first: Case
    reruns: list[Case] = field(default_factory=list)

    @property
    def final(self) -> Case:
        """The case that stands for the test: the last attempt."""
        return self.reruns[-1] if self.reruns else self.first

    @property
    def status(self) -> Status:
        final = self.final.status
        if self.reruns and self.first.status in BAD:
            if final in (Status.PASSED, Status.SKIPPED):
                return Status.FLAKY
            # failed every attempt: the first failure stands (Surefire keeps it, reruns become rerunFailure)
            return self.first.status
        return final

    @property
    def failed_attempts(self) -> list[Case]:
        return [c for c in (self.first, *self.reruns) if c.status in BAD]


def not_run_case(nodeid: str, att: Attempt) -> Case:
    """A test its shard collected but no attempt ran to its end (the shard broke off, the rerun budget is spent)."""
    classname, name = junit_names(nodeid)
    status = Status.TIMEOUT if att.kind == "timeout" else Status.ERROR
    message = f"not run: {att.shard} attempt {att.attempt} ended before this test did ({att.kind}: {att.reason})"
    el = ET.Element("testcase", {"classname": classname, "name": name, "time": "0.000"})
    err = ET.SubElement(el, "error", {"message": message})
    err.text = "matrix-run: no attempt of this test ran to its end and its shard has no rerun left"
    # no node id: a test that never ran has no duration for the history
    return Case(classname, name, status, 0.0, el, None, message, err.text)


def fold(attempts: Iterable[Attempt]) -> dict[tuple[str, str], TestHistory]:
    """Attempts of one cell, in order -> one history per test (each test exactly once).

    A test collected by an attempt that broke off (timeout, infra) and finished by no attempt is still reported,
    as not run: a shard that lost its container must not make its remaining tests vanish from the reports.
    """
    attempts = list(attempts)
    tests: dict[tuple[str, str], TestHistory] = {}
    for att in attempts:
        for case in att.cases:
            hist = tests.get(case.key)
            if hist is None:
                tests[case.key] = TestHistory(case)
            else:
                hist.reruns.append(case)
    seen = {c.nodeid for att in attempts for c in att.cases if c.nodeid}
    for att in attempts:
        if att.kind not in ("timeout", "infra"):
            continue
        for nodeid in att.collected:
            if nodeid not in seen and junit_names(nodeid) not in tests:
                case = not_run_case(nodeid, att)
                tests[case.key] = TestHistory(case)
    return tests


@dataclass
class CellResult:
    cell_id: str
    axes: dict[str, str]
    status: Status
    reason: str
    tests: dict[tuple[str, str], TestHistory]
    attempts: list[Attempt]
    duration: float
    image: str = ""

    def counts(self) -> dict[str, int]:
        c = {"tests": 0, "passed": 0, "failures": 0, "errors": 0, "skipped": 0, "flaky": 0, "timeouts": 0}
        for hist in self.tests.values():
            c["tests"] += 1
            st = hist.status
            if st is Status.PASSED:
                c["passed"] += 1
            elif st is Status.FLAKY:
                c["flaky"] += 1
                c["passed"] += 1
            elif st is Status.FAILED:
                c["failures"] += 1
            elif st is Status.ERROR:
                c["errors"] += 1
            elif st is Status.TIMEOUT:
                c["timeouts"] += 1
                c["errors"] += 1
            elif st is Status.SKIPPED:
                c["skipped"] += 1
        return c


def cell_status(tests: dict[tuple[str, str], TestHistory], attempts: list[Attempt]) -> tuple[Status, str]:
    """The worst thing that happened in a cell, with its reason."""
    statuses = {h.status for h in tests.values()}
    last_by_shard: dict[str, Attempt] = {}
    for att in attempts:
        last_by_shard[att.shard] = att
    final_kinds = {a.kind for a in last_by_shard.values()}
    reasons = [f"{a.shard}: {a.reason}" for a in last_by_shard.values() if a.reason]
    if "infra" in final_kinds:
        return Status.INFRA, "; ".join(reasons)
    if Status.FAILED in statuses:
        return Status.FAILED, f"{sum(h.status is Status.FAILED for h in tests.values())} test(s) failed"
    if Status.TIMEOUT in statuses or "timeout" in final_kinds:
        return Status.TIMEOUT, "; ".join(reasons) or "timeout"
    if Status.ERROR in statuses or "error" in final_kinds:
        return Status.ERROR, "; ".join(reasons) or "errors in setup or collection"
    if not tests and final_kinds <= {"no_tests"}:
        return Status.NO_TESTS, "no tests collected"
    if Status.FLAKY in statuses:
        return Status.FLAKY, f"{sum(h.status is Status.FLAKY for h in tests.values())} flaky test(s) passed on rerun"
    return Status.PASSED, ""
