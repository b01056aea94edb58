"""runner/junit.py: the merged JUnit file, checked against the junit-10 schema and read back with junitparser."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import junitparser
import junitparser.xunit2
import pytest
import xmlschema

from runner import junit, results
from runner.execution import ShardOutcome
from runner.results import CellResult, Status

SCHEMA = Path(__file__).parent / "schemas" / "junit-10.xsd"

PASS = "tests/test_a.py::test_pass"
FLAKY = "tests/test_a.py::test_flaky"
FLAKY2 = "tests/test_a.py::TestK::test_twice[p-1]"
FAIL = "tests/test_b.py::test_fail"
ERRS = "tests/test_b.py::test_setup_error"
SKIP = "tests/test_b.py::test_skip"
SLOW = "tests/test_c.py::test_slow"


# --- handmade shard outputs ---------------------------------------------------------------------------------------


def record(nodeid: str, when: str, outcome: str = "passed") -> dict[str, object]:
    classname, name = results.junit_names(nodeid)
    rec: dict[str, object] = {"event": "test", "nodeid": nodeid, "when": when, "outcome": outcome, "duration": 0.1}
    rec.update(classname=classname, name=name, file=nodeid.split("::", maxsplit=1)[0], line=4)
    if outcome == "failed":
        rec["longrepr"] = f"{nodeid} failed <&> here"
        rec["message"] = "assert 0 <&>" if when == "call" else "fixture broke"
        rec["output"] = f"----- Captured stdout call -----\nout of {name}"
    elif outcome == "skipped":
        rec["message"] = "no gpu"
    return rec


def shard_outcome(tests: dict[str, str], attempt: int = 1, **flags: object) -> ShardOutcome:
    """A finished shard attempt (the plugin's report lines) over ``tests``: node id -> result."""
    lines: list[dict[str, object]] = [{"event": "start"}, {"event": "collected", "nodeids": list(tests)}]
    for nodeid, result in tests.items():
        if result == "error":
            lines += [record(nodeid, "setup", "failed"), record(nodeid, "teardown")]
        elif result == "skipped":
            lines += [record(nodeid, "setup", "skipped"), record(nodeid, "teardown")]
        else:
            lines += [record(nodeid, "setup"), record(nodeid, "call", result), record(nodeid, "teardown")]
    lines.append({"event": "end"})
    return ShardOutcome(
        cell_id="c",
        shard="shard-1of1",
        attempt=attempt,
        exit_code=1 if "failed" in tests.values() or "error" in tests.values() else 0,
        report=b"".join(json.dumps(r).encode() + b"\n" for r in lines),
        **flags,  # type: ignore[arg-type]
    )


def cell_result(cell_id: str, axes: dict[str, str], outcomes: list[ShardOutcome], duration: float = 12.5) -> CellResult:
    attempts = [results.evaluate(o, timeout=30) for o in outcomes]
    tests = results.fold(attempts)
    status, reason = results.cell_status(tests, attempts)
    return CellResult(cell_id, axes, status, reason, tests, attempts, duration, image="mr-cell:abc123")


def mixed_cell() -> CellResult:
    return cell_result(
        "python-3.11_numpy-2.2.6",
        {"python": "3.11", "numpy": "2.2.6"},
        [
            shard_outcome(
                {PASS: "passed", FLAKY: "failed", FLAKY2: "failed", FAIL: "failed", ERRS: "error", SKIP: "skipped"}
            ),
            shard_outcome({FLAKY: "passed", FLAKY2: "error", FAIL: "failed", ERRS: "error"}, attempt=2),
            shard_outcome({FLAKY2: "passed", FAIL: "failed", ERRS: "error"}, attempt=3),
        ],
    )


def timeout_cell() -> CellResult:
    killed = ShardOutcome(
        "c",
        "shard-1of1",
        1,
        137,
        report=b"".join(
            json.dumps(r).encode() + b"\n"
            for r in [
                {"event": "collected", "nodeids": [PASS, SLOW]},
                record(PASS, "setup"),
                record(PASS, "call"),
                record(PASS, "teardown"),
                record(SLOW, "setup"),
            ]
        ),
        timed_out=True,
    )
    return cell_result("python-3.13_numpy-2.2.6", {"python": "3.13", "numpy": "2.2.6"}, [killed], duration=30.0)


@pytest.fixture
def merged(tmp_path: Path) -> Path:
    path = tmp_path / "junit.xml"
    junit.write_merged([mixed_cell(), timeout_cell()], path, "demo")
    return path


def suites(path: Path) -> dict[str, ET.Element]:
    return {s.get("name", ""): s for s in ET.parse(path).getroot().iter("testsuite")}


def case(suite: ET.Element, nodeid: str) -> ET.Element:
    classname, name = results.junit_names(nodeid)
    found = [c for c in suite.iter("testcase") if (c.get("classname"), c.get("name")) == (classname, name)]
    assert len(found) == 1, f"{nodeid}: {len(found)} testcases"
    return found[0]


def tags(el: ET.Element) -> list[str]:
    return [child.tag for child in el if child.tag != "system-out"]


# --- structure ----------------------------------------------------------------------------------------------------


def test_one_suite_per_cell_named_by_cell_id_with_axis_properties(merged: Path) -> None:
    root = ET.parse(merged).getroot()

    assert root.tag == "testsuites"
    assert root.get("name") == "demo"
    assert [s.get("name") for s in root.findall("testsuite")] == ["python-3.11_numpy-2.2.6", "python-3.13_numpy-2.2.6"]
    props = {p.get("name"): p.get("value") for p in root.find("testsuite/properties")}  # type: ignore[union-attr]
    assert props["matrix.python"] == "3.11"
    assert props["matrix.numpy"] == "2.2.6"
    assert props["matrix-run.status"] == "failed"
    assert props["matrix-run.image"] == "mr-cell:abc123"


def test_each_test_appears_once(merged: Path) -> None:
    suite = suites(merged)["python-3.11_numpy-2.2.6"]

    keys = [(c.get("classname"), c.get("name")) for c in suite.iter("testcase")]

    assert len(keys) == len(set(keys)) == 6


def test_flaky_test_is_a_passing_testcase_with_one_flaky_failure_per_failed_attempt(merged: Path) -> None:
    suite = suites(merged)["python-3.11_numpy-2.2.6"]

    once = case(suite, FLAKY)
    twice = case(suite, FLAKY2)

    assert tags(once) == ["flakyFailure"]
    assert tags(twice) == ["flakyFailure", "flakyError"]
    flaky = once.find("flakyFailure")
    assert flaky is not None
    assert flaky.get("type") == "failure"
    assert flaky.get("message") == "assert 0 <&>"
    assert flaky.findtext("stackTrace") == "tests/test_a.py::test_flaky failed <&> here"
    assert once.find("failure") is None  # the passing run stands; its failed run is the flakyFailure


def test_failed_test_keeps_its_failure_and_one_rerun_failure_per_rerun(merged: Path) -> None:
    suite = suites(merged)["python-3.11_numpy-2.2.6"]

    assert tags(case(suite, FAIL)) == ["failure", "rerunFailure", "rerunFailure"]
    assert tags(case(suite, ERRS)) == ["error", "rerunError", "rerunError"]
    assert tags(case(suite, PASS)) == []
    assert tags(case(suite, SKIP)) == ["skipped"]


def test_timeout_is_an_error_testcase_and_the_cell_reason_is_in_system_err(merged: Path) -> None:
    suite = suites(merged)["python-3.13_numpy-2.2.6"]

    slow = case(suite, SLOW)

    assert tags(slow) == ["error"]
    assert "30 s limit" in (slow.find("error").get("message") or "")  # type: ignore[union-attr]
    assert suite.findtext("system-err") == "matrix-run: cell timeout: shard-1of1: shard exceeded tests.timeout (30 s)"


def test_counts_are_computed_from_testcases(merged: Path) -> None:
    root = ET.parse(merged).getroot()

    for suite in root.iter("testsuite"):
        cases = list(suite.iter("testcase"))
        assert suite.get("tests") == str(len(cases))
        for tag, attr in (("failure", "failures"), ("error", "errors"), ("skipped", "skipped")):
            assert suite.get(attr) == str(sum(c.find(tag) is not None for c in cases)), (suite.get("name"), attr)
    assert (root.get("tests"), root.get("failures"), root.get("errors")) == ("8", "1", "2")
    assert root.get("time") == "42.500"


def test_counts_ignore_the_shard_headers() -> None:
    # the shard's header claims tests="99"
    suite = junit.suite_element(cell_result("c", {"python": "3.11"}, [shard_outcome({PASS: "passed"})]))

    assert (suite.get("tests"), suite.get("failures"), suite.get("errors"), suite.get("skipped")) == (
        "1",
        "0",
        "0",
        "0",
    )


def test_file_and_line_are_kept(merged: Path) -> None:
    el = case(suites(merged)["python-3.11_numpy-2.2.6"], FLAKY)

    assert (el.get("file"), el.get("line")) == ("tests/test_a.py", "4")


def test_write_replaces_an_existing_file_and_leaves_no_temp(tmp_path: Path) -> None:
    path = tmp_path / "junit.xml"
    path.write_text("old", encoding="utf-8")

    junit.write_merged([timeout_cell()], path, "demo")

    assert ET.parse(path).getroot().tag == "testsuites"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["junit.xml"]


# --- readers ------------------------------------------------------------------------------------------------------


def test_validates_against_junit_10_schema(merged: Path) -> None:
    schema = xmlschema.XMLSchema(SCHEMA)

    errors = [str(e.reason) for e in schema.iter_errors(str(merged))]

    assert errors == []


def test_schema_rejects_what_it_should() -> None:
    # the schema is not a rubber stamp: a testsuite without its required counts does not validate
    schema = xmlschema.XMLSchema(SCHEMA)

    assert schema.is_valid('<testsuites><testsuite name="x" tests="0" failures="0" errors="0"/></testsuites>')
    assert not schema.is_valid('<testsuites><testsuite name="x"/></testsuites>')
    assert not schema.is_valid(
        '<testsuites><testsuite name="x" tests="1" failures="0" errors="0">'
        '<testcase name="t"><flakyFailure message="m"/></testcase></testsuite></testsuites>'
    )


def test_readable_by_junitparser(merged: Path) -> None:
    xml = junitparser.JUnitXml.fromfile(str(merged))

    read = {s.name: s for s in xml}

    assert list(read) == ["python-3.11_numpy-2.2.6", "python-3.13_numpy-2.2.6"]
    suite = read["python-3.11_numpy-2.2.6"]
    assert (suite.tests, suite.failures, suite.errors, suite.skipped) == (6, 1, 1, 1)
    assert {p.name: p.value for p in suite.properties()}["matrix.python"] == "3.11"
    by_name = {c.name: c for c in suite}
    assert by_name["test_pass"].is_passed
    assert by_name["test_flaky"].is_passed
    assert isinstance(by_name["test_fail"].result[0], junitparser.Failure)
    assert isinstance(by_name["test_setup_error"].result[0], junitparser.Error)
    assert by_name["test_skip"].is_skipped


def test_junitparser_statistics_agree_with_the_headers(merged: Path) -> None:
    xml = junitparser.JUnitXml.fromfile(str(merged))
    headers = [(s.tests, s.failures, s.errors, s.skipped) for s in xml]

    for suite in xml:
        suite.update_statistics()

    assert [(s.tests, s.failures, s.errors, s.skipped) for s in xml] == headers


def test_junitparser_xunit2_sees_flaky_and_rerun_failures(merged: Path) -> None:
    xml = junitparser.xunit2.JUnitXml.fromfile(str(merged))

    cases = {c.name: c for s in xml for c in s}

    assert cases["test_flaky"].is_flaky
    assert len(cases["test_flaky"].flaky_failures()) == 1
    assert cases["test_twice[p-1]"].is_flaky
    assert (len(cases["test_twice[p-1]"].flaky_failures()), len(cases["test_twice[p-1]"].flaky_errors())) == (1, 1)
    assert cases["test_flaky"].flaky_failures()[0].stack_trace == "tests/test_a.py::test_flaky failed <&> here"
    assert not cases["test_fail"].is_flaky
    assert cases["test_fail"].is_rerun
    assert len(cases["test_fail"].rerun_failures()) == 2
    assert len(cases["test_setup_error"].rerun_errors()) == 2
    assert not cases["test_pass"].is_flaky
    assert not cases["test_pass"].is_rerun


def test_counts_agree_with_testcases_when_a_rerun_changes_failure_into_error(tmp_path: Path) -> None:
    cell = cell_result(
        "c", {"python": "3.11"}, [shard_outcome({FAIL: "failed"}), shard_outcome({FAIL: "error"}, attempt=2)]
    )
    path = tmp_path / "junit.xml"
    junit.write_merged([cell], path, "demo")

    suite = ET.parse(path).getroot().find("testsuite")
    assert suite is not None
    cases = list(suite.iter("testcase"))

    assert suite.get("failures") == str(sum(c.find("failure") is not None for c in cases))
    assert suite.get("errors") == str(sum(c.find("error") is not None for c in cases))


def test_flaky_element_does_not_alter_the_attempt_it_was_copied_from() -> None:
    cell = mixed_cell()
    hist = cell.tests[results.junit_names(FLAKY)]
    before = ET.tostring(hist.final.element)

    el = junit.testcase_element(hist)

    assert el is not hist.final.element
    assert ET.tostring(hist.final.element) == before
    assert hist.status is Status.FLAKY
