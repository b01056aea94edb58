"""Failures are results: shard outcomes -> per-test and per-cell statuses, decided here and nowhere else.

A test's attempts fold into one final status: ``passed``, ``failed``, ``flaky`` (failed, then passed on a
rerun), ``error`` (setup/collection), ``skipped``, ``timeout`` (was running when its shard hit the time limit).
A shard attempt that did not end as pytest ending is classed: ``timeout``, ``infra`` (Docker API error, image
build hiccup, container killed by a signal or the OOM killer, node lost), ``error`` (the project could not be
installed, pytest usage/internal error), ``no_tests``.
"""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum

from runner.execution import SETUP_FAILED, ShardOutcome


class Status(StrEnum):
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
    NO_CAPACITY = "no_capacity"  # no alive node can serve the cell (its runs-on label, GPUs, executor)

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
    rootdir: str = ""  # pytest's rootdir relative to the project: node ids are relative to it
    session_seconds: float = 0.0  # pytest's session inside the container, start to end (0 when unknown)
    collect_seconds: float = 0.0  # of which: start to the end of collection
    file_walls: dict[str, float] = field(default_factory=dict)  # project-relative file -> seconds its tests took
    planned: tuple[str, ...] = ()  # project-relative files the shard named for this attempt (none: it named none)

    def project_file(self, nodeid: str) -> str:
        """The project-relative file of a node id (node ids are relative to pytest's rootdir)."""
        file = nodeid.split("::", 1)[0]
        return f"{self.rootdir}/{file}" if self.rootdir else file


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


TEST_PHASES = frozenset({"setup", "call", "teardown"})
TEST_OUTCOMES = frozenset({"passed", "failed", "skipped"})
MAX_NODEID = 10_000  # characters; a longer "node id" is not one pytest made
LOG_TAIL_LINES = 12


@dataclass
class Report:
    """What the plugin streamed from inside the container, validated record by record (untrusted data)."""

    collected: list[str] = field(default_factory=list)
    order: list[str] = field(default_factory=list)  # the collected files' tests in pytest's order, unselected
    finished: dict[str, dict[str, object]] = field(default_factory=dict)  # nodeid -> merged record
    started: list[str] = field(default_factory=list)
    collect_errors: dict[str, str] = field(default_factory=dict)  # file node id -> longrepr
    collect_skips: dict[str, str] = field(default_factory=dict)  # file node id -> reason
    began: bool = False  # the plugin's start record: pytest ran with matrix-run's plugin
    ended: bool = False  # the plugin's end record: the pytest session finished
    rootdir: str = ""  # pytest's rootdir relative to the project ("" = the project root)
    pytest_version: str = ""
    bad_records: int = 0  # lines that were not a valid record: skipped and counted
    xdist: bool = False  # the session ran its tests in pytest-xdist workers (they overlap in time)
    start_time: float = 0.0  # wall clock (the container's) of the plugin's start, collection, and end records
    collected_time: float = 0.0
    end_time: float = 0.0


def _str_field(rec: dict[str, object], key: str, limit: int = 20_000) -> str:
    value = rec.get(key)
    return value[-limit:] if isinstance(value, str) else ""


def _seconds(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        return 0.0
    return float(value)


def _nodeid(value: object) -> str | None:
    if isinstance(value, str) and value and len(value) <= MAX_NODEID and "\0" not in value:
        return value
    return None


def _test_nodeid(rep: Report, rec: dict[str, object]) -> str | None:
    """A test record names its test by index into the collected ids (``i``), or, for a test outside them, by
    ``nodeid``."""
    index = rec.get("i")
    if index is None:
        return _nodeid(rec.get("nodeid"))
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(rep.collected):
        return None
    return rep.collected[index]


def parse_report(data: bytes) -> Report:
    """The plugin's JSON lines: collected ids, per-test outcomes (possibly cut short by a kill).

    The lines come from code that the tests under run can change: every record is checked, and a line that is
    not a valid record is skipped and counted (``bad_records``), never trusted or fatal.
    """
    rep = Report()
    phases: dict[str, dict[str, object]] = {}
    lines = data.splitlines()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            if i != len(lines) - 1:  # the last line may be cut by a kill; any other is bad
                rep.bad_records += 1
            continue
        if not isinstance(rec, dict) or not _apply(rep, phases, rec):
            rep.bad_records += 1
    return rep


def _apply(rep: Report, phases: dict[str, dict[str, object]], rec: dict[str, object]) -> bool:
    """Fold one record into the report; False when it is not a valid record."""
    event = rec.get("event")
    if event == "start":
        rep.began = True
        rep.start_time = _seconds(rec.get("time"))
        rep.rootdir = _str_field(rec, "rootdir", 1000).strip("/")
        rep.pytest_version = _str_field(rec, "pytest", 100)
        rep.xdist = rec.get("xdist") is True
        return True
    if event == "end":
        rep.ended = True
        rep.end_time = _seconds(rec.get("time"))
        return True
    if event == "collected":
        ids, order = rec.get("nodeids"), rec.get("order")
        if not isinstance(ids, list) or not all(_nodeid(n) for n in ids):
            return False
        rep.collected = [str(n) for n in ids]
        rep.collected_time = _seconds(rec.get("time"))
        valid_order = isinstance(order, list) and all(_nodeid(n) for n in order)
        rep.order = [str(n) for n in order] if valid_order and isinstance(order, list) else list(rep.collected)
        return True
    if event in ("collecterror", "collectskip"):
        nodeid = rec.get("nodeid")
        if not isinstance(nodeid, str) or len(nodeid) > MAX_NODEID:
            return False
        if event == "collecterror":
            rep.collect_errors[nodeid] = _str_field(rec, "longrepr")
        else:
            rep.collect_skips[nodeid] = _str_field(rec, "message", 1000)
        return True
    if event != "test":
        return False
    nodeid = _test_nodeid(rep, rec)
    when, outcome = rec.get("when"), rec.get("outcome")
    if nodeid is None or when not in TEST_PHASES or outcome not in TEST_OUTCOMES:
        return False
    file, line = rec.get("file"), rec.get("line")
    cur = phases.setdefault(
        nodeid,
        {
            "outcome": "passed",
            "duration": 0.0,
            "file": file if isinstance(file, str) else None,
            "line": line if isinstance(line, int) and not isinstance(line, bool) else None,
            "stop": 0.0,
        },
    )
    phase_seconds = _seconds(rec.get("duration"))
    stop = _seconds(rec.get("stop"))
    if when == "setup":
        rep.started.append(nodeid)
        cur["begin"] = max(0.0, stop - phase_seconds) if stop else 0.0
    if when == "call":
        # pytest 9's subtests (and unittest's subTest) report each subtest as a call of the same test, within the
        # test's own call report that comes last: the longest call is the test's, the others lie inside it
        longest = float(cur.get("call", 0.0))  # type: ignore[arg-type]
        cur["call"] = max(longest, phase_seconds)
        phase_seconds = max(0.0, phase_seconds - longest)
    cur["duration"] = float(cur["duration"]) + phase_seconds  # type: ignore[arg-type]
    cur["stop"] = stop
    if outcome == "failed":
        if cur["outcome"] not in ("failed", "error"):  # the first failure of a test stands
            cur["outcome"] = "error" if when != "call" else "failed"
            cur["longrepr"] = _str_field(rec, "longrepr")
            cur["message"] = _str_field(rec, "message", 1000)
            cur["output"] = _str_field(rec, "output")
    elif outcome == "skipped" and cur["outcome"] == "passed":
        cur["outcome"] = "skipped"
        cur["message"] = _str_field(rec, "message", 1000)
    elif rec.get("xfail") and outcome == "passed" and cur["outcome"] == "passed":
        cur["message"] = _str_field(rec, "message", 1000)  # xpass (not strict): passed
    if when == "teardown":
        rep.finished[nodeid] = cur
    return True


def _case_from_record(nodeid: str, rec: dict[str, object]) -> Case:
    classname, name = junit_names(nodeid)
    status = {"passed": Status.PASSED, "failed": Status.FAILED, "error": Status.ERROR, "skipped": Status.SKIPPED}[
        str(rec["outcome"])
    ]
    seconds = _seconds(rec.get("duration"))
    el = ET.Element("testcase", {"classname": classname, "name": name, "time": f"{seconds:.3f}"})
    if rec.get("file"):
        el.set("file", str(rec["file"]))
    if rec.get("line") is not None:
        el.set("line", str(rec["line"]))
    message, text = str(rec.get("message") or ""), ""
    if status in (Status.FAILED, Status.ERROR):
        text = str(rec.get("longrepr") or "")
        message = message or ("failed" if status is Status.FAILED else "error")
        child = ET.SubElement(el, "failure" if status is Status.FAILED else "error", {"message": message})
        child.text = text
        if rec.get("output"):
            ET.SubElement(el, "system-out").text = str(rec["output"])
    elif status is Status.SKIPPED:
        message = message or "skipped"
        ET.SubElement(el, "skipped", {"message": message, "type": "pytest.skip"})
    return Case(classname, name, status, seconds, el, nodeid, message, text)


def _collect_case(nodeid: str, status: Status, message: str, text: str = "") -> Case:
    """A file that failed to import (error) or was skipped whole at import (skipped), as pytest's JUnit has it."""
    classname, name = junit_names(nodeid)
    el = ET.Element("testcase", {"classname": classname, "name": name, "time": "0.000"})
    child = ET.SubElement(el, "error" if status is Status.ERROR else "skipped", {"message": message})
    child.text = text
    return Case(classname, name, status, 0.0, el, None, message, text)


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


def log_tail(log: bytes, lines: int = LOG_TAIL_LINES) -> str:
    """The last lines of a shard log, for a reason that must say what happened."""
    text = log.decode("utf-8", "replace").rstrip()
    return "\n".join(text.splitlines()[-lines:])


def _with_tail(reason: str, log: bytes) -> str:
    tail = log_tail(log)
    return f"{reason}; last lines of the log:\n{tail}" if tail else f"{reason}; the log is empty"


def evaluate(outcome: ShardOutcome, timeout: float = 0.0) -> Attempt:
    """Classify one shard attempt and gather its test cases from the plugin's records.

    Nothing counts as green without evidence: an attempt whose command never started pytest with matrix-run's
    plugin, whose pytest session never finished, or that collected tests and ran none is an ``error``, whatever
    its exit code said.
    """
    report = parse_report(outcome.report)
    cases = [_case_from_record(nodeid, rec) for nodeid, rec in report.finished.items()]
    for nodeid, text in report.collect_errors.items():
        first = text.strip().splitlines()[-1][:300] if text.strip() else "collection failure"
        cases.append(_collect_case(nodeid, Status.ERROR, f"collection failure: {first}", text))
    for nodeid, message in report.collect_skips.items():
        if nodeid not in report.collect_errors:
            cases.append(_collect_case(nodeid, Status.SKIPPED, message or "skipped at import"))
    running = next((n for n in report.started if n not in report.finished), None)
    code = outcome.exit_code
    never_ran = [n for n in report.collected if n not in report.finished]
    kind, reason = "ok", ""
    if outcome.setup_error:
        kind, reason = "error", _with_tail(outcome.setup_error, outcome.log)
    elif outcome.infra_error:
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
    elif outcome.output_problem:
        kind, reason = "error", outcome.output_problem
    elif not report.began:
        what = f"the test command exited {code} without starting pytest (tests.command must run pytest)"
        kind, reason = "error", _with_tail(what, outcome.log)
    elif code == 5:
        kind, reason = "no_tests", "pytest collected no tests"
    elif code in (2, 3, 4):
        what = {2: "interrupted (collection errors?)", 3: "internal error", 4: "usage error"}[code]
        kind, reason = "error", _with_tail(f"pytest exited {code}: {what}", outcome.log)
    elif code not in (0, 1):
        kind, reason = "error", _with_tail(f"test command exited {code}", outcome.log)
    elif not report.ended:
        what = f"pytest exited {code} before its session ended (a test called os._exit, or the process was replaced)"
        kind, reason = "error", _with_tail(what, outcome.log)
    elif code == 0 and never_ran:
        what = f"pytest exited 0 but {len(never_ran)} of {len(report.collected)} collected test(s) never ran"
        kind, reason = "error", _with_tail(f"{what} (--collect-only in the command or addopts?)", outcome.log)
    elif code == 1 and not cases:
        kind, reason = "error", _with_tail("pytest exited 1 and reported no test", outcome.log)
    if report.bad_records:
        note = f"{report.bad_records} malformed report record(s) skipped"
        reason = f"{reason}; {note}" if reason else note
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
        rootdir=report.rootdir,
        session_seconds=_span(report.start_time, report.end_time),
        collect_seconds=_span(report.start_time, report.collected_time),
        file_walls=_file_walls(report),
    )


def _span(start: float, end: float) -> float:
    return end - start if start and end >= start else 0.0


def _file_walls(report: Report) -> dict[str, float]:
    """Seconds each file cost the shard: what pytest really spent on it, not only its tests' JUnit times.

    Tests run one after another: each test's time runs from its setup's start to the next test's (so pytest's own
    per-test work between tests, its hooks and reporting, counts too; on a suite of thousands of tiny tests that
    is most of the time), the last one's to the end of the session. Collection is shared out over the files by
    their number of tests. Under pytest-xdist, where tests overlap, each test counts from its setup's start to its
    teardown's end instead.
    """
    walls: dict[str, float] = {}
    prefix = f"{report.rootdir}/" if report.rootdir else ""
    timed = sorted(
        (_seconds(rec.get("begin")), _seconds(rec.get("stop")), nodeid) for nodeid, rec in report.finished.items()
    )
    contiguous = not report.xdist and all(begin and stop >= begin for begin, stop, _ in timed)
    for i, (begin, stop, nodeid) in enumerate(timed):
        if contiguous:
            following = timed[i + 1][0] if i + 1 < len(timed) else max(report.end_time, stop)
            seconds = max(following, stop) - begin
        elif begin and stop >= begin:
            seconds = stop - begin
        else:
            seconds = _seconds(report.finished[nodeid].get("duration"))
        file = prefix + nodeid.split("::", 1)[0]
        walls[file] = walls.get(file, 0.0) + seconds
    collect = _span(report.start_time, report.collected_time)
    counts: dict[str, int] = {}
    for nodeid in report.collected or list(report.finished):
        file = prefix + nodeid.split("::", 1)[0]
        counts[file] = counts.get(file, 0) + 1
    total = sum(counts.values())
    if collect and total:
        for file, n in counts.items():
            walls[file] = walls.get(file, 0.0) + collect * n / total
    return walls


@dataclass
class TestHistory:
    """All attempts of one test in one cell, folded into a final status."""

    first: Case
    reruns: list[Case] = field(default_factory=list)
    quarantined: bool = False  # a quarantine entry names it: reported, and its failure sets no exit code
    quarantine_reason: str = ""  # the entry's reason

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
        if att.kind not in ("timeout", "infra", "error"):
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
            if hist.quarantined and st in BAD:
                continue  # counted by quarantined(), not as a failure
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

    def quarantined(self) -> int:
        """Quarantined tests that failed, errored or timed out (counts() leaves them out of its failure buckets)."""
        return sum(1 for h in self.tests.values() if h.quarantined and h.status in BAD)


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
    if not tests:  # nothing is green without a test that ran
        return Status.ERROR, "; ".join(reasons) or "no test ran in any shard of this cell"
    if Status.FLAKY in statuses:
        return Status.FLAKY, f"{sum(h.status is Status.FLAKY for h in tests.values())} flaky test(s) passed on rerun"
    return Status.PASSED, ""
