"""runner/results.py: shard outcomes -> attempts -> per-test histories -> cell status, from handmade bytes (and one
report that the real plugin writes in a real pytest session)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import pytest

from runner import results
from runner.execution import SETUP_FAILED, ShardOutcome
from runner.results import Status

# --- handmade shard outputs: pytest JUnit (xunit1) and the plugin's JSON lines ---------------------------------------


def record(nodeid: str, when: str, outcome: str = "passed", **extra: object) -> dict[str, object]:
    classname, name = results.junit_names(nodeid)
    rec: dict[str, object] = {
        "event": "test",
        "nodeid": nodeid,
        "when": when,
        "outcome": outcome,
        "duration": 0.25,
        "classname": classname,
        "name": name,
        "file": nodeid.split("::", maxsplit=1)[0],
    }
    rec.update(extra)
    return rec


def phases(nodeid: str, result: str) -> list[dict[str, object]]:
    """The three phase records pytest reports for a test that ended as ``result``."""
    if result == "error":
        return [record(nodeid, "setup", "failed", longrepr="fixture broke"), record(nodeid, "teardown")]
    if result == "skipped":
        return [record(nodeid, "setup", "skipped", longrepr="skip"), record(nodeid, "teardown")]
    call = record(nodeid, "call", result, **({"longrepr": "assert 1 == 2"} if result == "failed" else {}))
    return [record(nodeid, "setup"), call, record(nodeid, "teardown")]


def jsonl(records: Iterable[dict[str, object]]) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in records)


def case_xml(nodeid: str, result: str) -> str:
    classname, name = results.junit_names(nodeid)
    child = {
        "passed": "",
        "failed": '<failure message="assert 1 == 2">def test(): assert 1 == 2</failure>',
        "error": '<error message="failed on setup with &quot;fixture broke&quot;">fixture broke</error>',
        "skipped": '<skipped type="pytest.skip" message="not here">skip</skipped>',
    }[result]
    file = nodeid.split("::", maxsplit=1)[0]
    return f'<testcase classname="{classname}" name="{name}" file="{file}" line="3" time="0.250">{child}</testcase>'


def junit_xml(tests: dict[str, str], header_tests: int | None = None) -> bytes:
    n = len(tests) if header_tests is None else header_tests
    body = "".join(case_xml(n_id, r) for n_id, r in tests.items())
    return (
        '<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest" errors="0" failures="0" '
        f'skipped="0" tests="{n}" time="1.0">{body}</testsuite></testsuites>'
    ).encode()


def outcome(
    tests: dict[str, str],
    *,
    exit_code: int | None = 0,
    running: str | None = None,
    unstarted: tuple[str, ...] = (),
    attempt: int = 1,
    shard: str = "shard-1of1",
    **flags: object,
) -> ShardOutcome:
    """A shard attempt that finished ``tests``, had ``running`` under way and never reached ``unstarted``."""
    collected = [*tests, *([running] if running else []), *unstarted]
    recs: list[dict[str, object]] = [{"event": "start", "pid": 7}, {"event": "collected", "nodeids": collected}]
    for nodeid, result in tests.items():
        recs.extend(phases(nodeid, result))
    if running:
        recs.append(record(running, "setup"))
    ended = exit_code is not None and not running and not flags
    if ended:
        recs.append({"event": "end"})
    return ShardOutcome(
        cell_id="python-3.11",
        shard=shard,
        attempt=attempt,
        exit_code=exit_code,
        report=jsonl(recs),
        **flags,  # type: ignore[arg-type]
    )


A = "tests/test_a.py::test_a"
B = "tests/test_a.py::TestB::test_b[x-1]"
C = "tests/sub/test_c.py::test_c"
D = "tests/sub/test_c.py::test_d"


# --- parse_junit --------------------------------------------------------------------------------------------------


def test_parse_junit_counts_testcase_elements_not_headers() -> None:
    # pytest 9 counts unittest subtests in the header; they have no <testcase>: the header lies
    data = junit_xml({A: "passed", B: "failed"}, header_tests=17)

    cases = results.parse_junit(data)

    assert [(c.classname, c.name, c.status) for c in cases] == [
        ("tests.test_a", "test_a", Status.PASSED),
        ("tests.test_a.TestB", "test_b[x-1]", Status.FAILED),
    ]


def test_parse_junit_statuses_messages_and_times() -> None:
    cases = results.parse_junit(junit_xml({A: "passed", B: "failed", C: "error", D: "skipped"}))

    assert [c.status for c in cases] == [Status.PASSED, Status.FAILED, Status.ERROR, Status.SKIPPED]
    assert cases[1].message == "assert 1 == 2"
    assert cases[1].text == "def test(): assert 1 == 2"
    assert cases[2].message == 'failed on setup with "fixture broke"'
    assert [c.time for c in cases] == [0.25] * 4
    assert cases[0].element.get("file") == "tests/test_a.py"
    assert all(c.nodeid is None for c in cases)  # node ids come from the report, not from JUnit


def test_parse_junit_finds_cases_in_nested_suites_and_bare_testsuite() -> None:
    nested = (
        b'<testsuites><testsuite name="outer" tests="0" errors="0" failures="0">'
        b'<testsuite name="inner" tests="0" errors="0" failures="0"><testcase classname="m" name="t1"/></testsuite>'
        b'<testcase classname="m" name="t2"/></testsuite></testsuites>'
    )
    bare = (
        b'<testsuite name="s" tests="1">'
        b'<testcase classname="" name="test_skipped_module"><skipped/></testcase></testsuite>'
    )

    assert [c.name for c in results.parse_junit(nested)] == ["t1", "t2"]
    assert [(c.classname, c.status) for c in results.parse_junit(bare)] == [("", Status.SKIPPED)]


def test_parse_junit_failure_wins_over_a_skip_mark() -> None:
    data = b'<testsuite><testcase classname="m" name="t"><skipped/><failure message="x"/></testcase></testsuite>'

    assert results.parse_junit(data)[0].status is Status.FAILED


@pytest.mark.parametrize("data", [b"", b"   \n", b"<testsuites><testsuite", b"not xml at all"])
def test_parse_junit_of_nothing_or_garbage_is_empty(data: bytes) -> None:
    assert results.parse_junit(data) == []


def test_parse_junit_bad_time_is_zero() -> None:
    data = b'<testsuite><testcase classname="m" name="t" time="soon"/></testsuite>'

    assert results.parse_junit(data)[0].time == 0.0


# --- parse_report -------------------------------------------------------------------------------------------------


def test_parse_report_merges_phases_per_test() -> None:
    data = jsonl(
        [
            {"event": "collected", "nodeids": [A, B, C, D]},
            *phases(A, "passed"),
            *phases(B, "failed"),
            *phases(C, "error"),
            *phases(D, "skipped"),
            {"event": "end"},
        ]
    )

    rep = results.parse_report(data)

    assert rep.collected == [A, B, C, D]
    assert rep.started == [A, B, C, D]
    assert {n: r["outcome"] for n, r in rep.finished.items()} == {
        A: "passed",
        B: "failed",
        C: "error",
        D: "skipped",
    }
    assert rep.finished[A]["duration"] == pytest.approx(0.75)
    assert rep.finished[B]["longrepr"] == "assert 1 == 2"
    assert rep.ended is True


def test_parse_report_reads_tests_named_by_their_index_in_the_collected_ids() -> None:
    def indexed(nodeid: str, when: str, outcome: str = "passed") -> dict[str, object]:
        rec = record(nodeid, when, outcome)
        del rec["nodeid"]
        return {**rec, "i": [A, B].index(nodeid)}

    data = jsonl(
        [
            {"event": "collected", "nodeids": [A, B]},
            indexed(A, "setup"),
            indexed(A, "call"),
            indexed(A, "teardown"),
            indexed(B, "setup"),
            indexed(B, "call", "failed"),
            indexed(B, "teardown"),
            *phases(C, "passed"),  # a test outside the collected ids keeps its node id
        ]
    )

    rep = results.parse_report(data)

    assert rep.bad_records == 0
    assert {n: r["outcome"] for n, r in rep.finished.items()} == {A: "passed", B: "failed", C: "passed"}
    assert rep.started == [A, B, C]


def test_parse_report_teardown_failure_after_a_pass_is_an_error() -> None:
    data = jsonl([record(A, "setup"), record(A, "call"), record(A, "teardown", "failed", longrepr="leak")])

    assert results.parse_report(data).finished[A]["outcome"] == "error"


def test_parse_report_truncated_last_line_is_ignored() -> None:
    good = jsonl([{"event": "collected", "nodeids": [A, B]}, *phases(A, "passed"), record(B, "setup")])
    cut = json.dumps(record(B, "call")).encode()[:25]

    rep = results.parse_report(good + cut)

    assert rep.collected == [A, B]
    assert set(rep.finished) == {A}
    assert rep.started == [A, B]
    assert rep.ended is False


def test_parse_report_empty() -> None:
    rep = results.parse_report(b"")

    assert (rep.collected, rep.finished, rep.started, rep.ended) == ([], {}, [], False)


@pytest.mark.parametrize(
    ("nodeid", "expected"),
    [
        ("tests/test_a.py::test_a", ("tests.test_a", "test_a")),
        ("tests/test_a.py::TestB::test_b[x-1]", ("tests.test_a.TestB", "test_b[x-1]")),
        ("test_top.py::test_p[a/b::c.py]", ("test_top", "test_p[a/b::c.py]")),
        ("tests/test_doc.txt::test_doc.txt", ("tests.test_doc.txt", "test_doc.txt")),
    ],
)
def test_junit_names_follow_pytest(nodeid: str, expected: tuple[str, str]) -> None:
    assert results.junit_names(nodeid) == expected


# --- evaluate -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("exit_code", "kind", "reason"),
    [
        (0, "ok", ""),
        (1, "ok", ""),
        (2, "error", "pytest exited 2: interrupted"),
        (3, "error", "pytest exited 3: internal error"),
        (4, "error", "pytest exited 4: usage error"),
        (5, "no_tests", "pytest collected no tests"),
        (SETUP_FAILED, "error", "the project could not be installed"),
        (137, "infra", "container ended by a signal (exit 137)"),
        (-9, "infra", "container ended by a signal (exit -9)"),
        (None, "infra", "container ended by a signal (exit None)"),
        (7, "error", "test command exited 7"),
    ],
)
def test_evaluate_classifies_exit_codes(exit_code: int | None, kind: str, reason: str) -> None:
    ran = jsonl([{"event": "start"}, {"event": "collected", "nodeids": [A]}, *phases(A, "passed"), {"event": "end"}])
    att = results.evaluate(ShardOutcome("c", "shard-1of1", 1, exit_code, report=ran))

    assert att.kind == kind
    assert att.reason.startswith(reason), att.reason


# --- nothing is green without evidence that pytest ran the tests ----------------------------------------------------


@pytest.mark.parametrize("exit_code", [0, 1, 2, 5])
def test_evaluate_a_command_that_never_started_pytest_is_an_error(exit_code: int) -> None:
    log = b"line one\n/usr/bin/python: No module named pytst\n"
    att = results.evaluate(ShardOutcome("c", "shard-1of1", 1, exit_code, log=log))

    assert att.kind == "error"
    assert f"exited {exit_code} without starting pytest" in att.reason
    assert att.reason.endswith("No module named pytst")  # the log's last lines say why


def test_evaluate_a_session_that_never_ended_is_an_error_even_with_exit_0() -> None:
    # a test called os._exit(0): pytest's exit code says nothing about the tests after it
    rep = jsonl([{"event": "start"}, {"event": "collected", "nodeids": [A, B]}, *phases(A, "passed")])
    att = results.evaluate(ShardOutcome("c", "shard-1of1", 1, 0, report=rep))

    assert att.kind == "error"
    assert "before its session ended" in att.reason
    assert results.fold([att])[results.junit_names(B)].first.status is Status.ERROR  # B is reported as not run


def test_evaluate_collected_but_never_ran_with_exit_0_is_an_error() -> None:
    rep = jsonl([{"event": "start"}, {"event": "collected", "nodeids": [A, B]}, {"event": "end"}])
    att = results.evaluate(ShardOutcome("c", "shard-1of1", 1, 0, report=rep))

    assert att.kind == "error"
    assert "2 of 2 collected test(s) never ran" in att.reason


def test_evaluate_exit_1_without_any_test_is_an_error() -> None:
    rep = jsonl([{"event": "start"}, {"event": "collected", "nodeids": []}, {"event": "end"}])
    att = results.evaluate(ShardOutcome("c", "shard-1of1", 1, 1, report=rep))

    assert att.kind == "error"
    assert "reported no test" in att.reason


def test_evaluate_an_output_problem_is_an_error_named_in_the_reason() -> None:
    problem = "report.jsonl from the shard was not read: it is a symbolic link"
    att = results.evaluate(ShardOutcome("c", "shard-1of1", 1, 0, output_problem=problem))

    assert (att.kind, att.reason) == ("error", problem)


def test_a_cell_without_any_test_case_is_an_error_not_passed() -> None:
    rep = jsonl([{"event": "start"}, {"event": "collected", "nodeids": []}, {"event": "end"}])
    att = results.evaluate(ShardOutcome("c", "shard-1of1", 1, 0, report=rep))
    status, _ = results.cell_status(results.fold([att]), [att])

    assert status is Status.ERROR


@pytest.mark.parametrize(
    "bad",
    [
        b"[]",
        b'{"event": "test"}',
        b'{"event": "test", "nodeid": 5, "when": "call", "outcome": "passed"}',
        b'{"event": "test", "nodeid": "t.py::x", "when": "lunch", "outcome": "passed"}',
        b'{"event": "test", "i": 1, "when": "call", "outcome": "passed"}',
        b'{"event": "test", "i": -1, "when": "call", "outcome": "passed"}',
        b'{"event": "test", "i": true, "when": "call", "outcome": "passed"}',
        b'{"event": "test", "i": "0", "when": "call", "outcome": "passed"}',
        b'{"event": "collected", "nodeids": 5}',
        b'{"event": "collected", "nodeids": [1, 2]}',
        b'"just a string"',
        b"\xff\xfe not utf-8 {",
        b'{"event": "unknown"}',
    ],
)
def test_parse_report_skips_and_counts_malformed_records(bad: bytes) -> None:
    good = [{"event": "start"}, {"event": "collected", "nodeids": [A]}, *phases(A, "passed"), {"event": "end"}]
    data = jsonl(good[:2]) + bad + b"\n" + jsonl(good[2:])

    rep = results.parse_report(data)

    assert rep.bad_records == 1
    assert rep.collected == [A]
    assert set(rep.finished) == {A}
    att = results.evaluate(ShardOutcome("c", "shard-1of1", 1, 0, report=data))
    assert att.kind == "ok"
    assert "1 malformed report record(s) skipped" in att.reason


def test_parse_report_bad_durations_are_zero_not_fatal() -> None:
    recs = [record(A, "setup", duration="soon"), record(A, "call", duration=float("nan")), record(A, "teardown")]
    rep = results.parse_report(jsonl(recs).replace(b"NaN", b"1e999"))

    assert rep.finished[A]["duration"] == pytest.approx(0.25)


def test_evaluate_infra_error_wins_over_everything() -> None:
    out = ShardOutcome("c", "s", 1, 0, timed_out=True, oom_killed=True, infra_error="docker API: 500 Server Error")

    att = results.evaluate(out, timeout=60)

    assert (att.kind, att.reason) == ("infra", "docker API: 500 Server Error")


def test_evaluate_oom_is_infra() -> None:
    att = results.evaluate(outcome({A: "passed"}, exit_code=137, running=B, oom_killed=True))

    assert att.kind == "infra"
    assert "OOM" in att.reason
    assert "resources.memory" in att.reason
    assert att.running == B


def test_evaluate_maps_junit_cases_to_node_ids() -> None:
    att = results.evaluate(outcome({A: "passed", B: "failed"}, exit_code=1))

    assert att.kind == "ok"
    assert [(c.nodeid, c.status) for c in att.cases] == [(A, Status.PASSED), (B, Status.FAILED)]
    assert att.collected == [A, B]
    assert att.finished == {A, B}
    assert att.running is None


def test_evaluate_timeout_turns_the_running_test_into_a_timeout_case() -> None:
    att = results.evaluate(
        outcome({A: "passed"}, exit_code=137, running=B, unstarted=(C,), timed_out=True), timeout=900
    )

    assert att.kind == "timeout"
    assert att.reason == "shard exceeded tests.timeout (900 s)"
    assert att.running == B
    assert [(c.nodeid, c.status) for c in att.cases] == [(A, Status.PASSED), (B, Status.TIMEOUT)]
    timeout_case = att.cases[-1]
    assert timeout_case.key == ("tests.test_a.TestB", "test_b[x-1]")
    assert timeout_case.element.find("error") is not None
    assert "900 s limit" in timeout_case.message


def test_evaluate_timeout_with_nothing_running_adds_no_case() -> None:
    att = results.evaluate(outcome({}, exit_code=None, unstarted=(A,), timed_out=True), timeout=5)

    assert att.kind == "timeout"
    assert att.cases == []
    assert att.running is None


def test_evaluate_rebuilds_cases_from_the_report_when_junit_is_missing() -> None:
    att = results.evaluate(outcome({A: "passed", B: "failed", C: "error", D: "skipped"}, exit_code=None, running=None))

    assert att.kind == "infra"
    assert [(c.nodeid, c.key, c.status) for c in att.cases] == [
        (A, ("tests.test_a", "test_a"), Status.PASSED),
        (B, ("tests.test_a.TestB", "test_b[x-1]"), Status.FAILED),
        (C, ("tests.sub.test_c", "test_c"), Status.ERROR),
        (D, ("tests.sub.test_c", "test_d"), Status.SKIPPED),
    ]
    assert att.cases[1].element.find("failure").text == "assert 1 == 2"  # type: ignore[union-attr]
    assert att.cases[0].element.get("file") == "tests/test_a.py"


# --- fold and per-test status -------------------------------------------------------------------------------------


def test_fold_flaky_failed_and_passed() -> None:
    first = results.evaluate(outcome({A: "passed", B: "failed", C: "failed", D: "error"}, exit_code=1))
    second = results.evaluate(outcome({B: "passed", C: "failed", D: "passed"}, exit_code=1, attempt=2))

    tests = results.fold([first, second])

    assert list(tests) == [A_KEY, B_KEY, C_KEY, D_KEY]  # each test once, in first-seen order
    assert {k: h.status for k, h in tests.items()} == {
        A_KEY: Status.PASSED,
        B_KEY: Status.FLAKY,
        C_KEY: Status.FAILED,
        D_KEY: Status.FLAKY,
    }
    assert tests[B_KEY].final.status is Status.PASSED
    assert [c.status for c in tests[C_KEY].failed_attempts] == [Status.FAILED, Status.FAILED]
    assert [c.status for c in tests[D_KEY].failed_attempts] == [Status.ERROR]


def test_fold_failing_twice_then_passing_is_flaky_with_two_failed_attempts() -> None:
    attempts = [
        results.evaluate(outcome({B: "failed"}, exit_code=1, attempt=1)),
        results.evaluate(outcome({B: "failed"}, exit_code=1, attempt=2)),
        results.evaluate(outcome({B: "passed"}, exit_code=0, attempt=3)),
    ]

    hist = results.fold(attempts)[B_KEY]

    assert hist.status is Status.FLAKY
    assert len(hist.failed_attempts) == 2


def test_fold_passing_then_failing_is_failed() -> None:
    attempts = [
        results.evaluate(outcome({A: "passed"}, exit_code=0, attempt=1)),
        results.evaluate(outcome({A: "failed"}, exit_code=1, attempt=2)),
    ]

    assert results.fold(attempts)[A_KEY].status is Status.FAILED


A_KEY = ("tests.test_a", "test_a")
B_KEY = ("tests.test_a.TestB", "test_b[x-1]")
C_KEY = ("tests.sub.test_c", "test_c")
D_KEY = ("tests.sub.test_c", "test_d")


# --- cell status and counts ---------------------------------------------------------------------------------------


def cell(*outcomes: ShardOutcome, timeout: float = 60) -> tuple[Status, str]:
    attempts = [results.evaluate(o, timeout) for o in outcomes]
    return results.cell_status(results.fold(attempts), attempts)


def test_cell_status_passed() -> None:
    assert cell(outcome({A: "passed", D: "skipped"})) == (Status.PASSED, "")


def test_cell_status_failed() -> None:
    assert cell(outcome({A: "passed", B: "failed", C: "failed"}, exit_code=1)) == (Status.FAILED, "2 test(s) failed")


def test_cell_status_flaky() -> None:
    status, reason = cell(
        outcome({A: "passed", B: "failed"}, exit_code=1), outcome({B: "passed"}, exit_code=0, attempt=2)
    )

    assert (status, reason) == (Status.FLAKY, "1 flaky test(s) passed on rerun")


def test_cell_status_infra_when_the_last_attempt_of_a_shard_broke() -> None:
    status, reason = cell(outcome({A: "passed"}, exit_code=None, infra_error="node lost"))

    assert status is Status.INFRA
    assert reason == "shard-1of1: node lost"


def test_cell_status_recovered_infra_is_not_infra() -> None:
    status, _ = cell(
        outcome({A: "passed"}, exit_code=None, running=B, infra_error="docker API: 502"),
        outcome({B: "passed"}, exit_code=0, attempt=2),
    )

    assert status is Status.PASSED


def test_cell_status_timeout() -> None:
    status, reason = cell(outcome({A: "passed"}, exit_code=137, running=B, timed_out=True), timeout=30)

    assert status is Status.TIMEOUT
    assert reason == "shard-1of1: shard exceeded tests.timeout (30 s)"


def test_cell_status_error_from_the_attempt_kind() -> None:
    status, reason = cell(ShardOutcome("c", "shard-1of2", 1, 2, report=b'{"event": "start"}\n'))

    assert status is Status.ERROR
    assert reason.startswith("shard-1of2: pytest exited 2")


def test_cell_status_error_test_without_failures() -> None:
    status, _ = cell(outcome({A: "passed", C: "error"}, exit_code=1))

    assert status is Status.ERROR


def test_cell_status_no_tests() -> None:
    started = b'{"event": "start"}\n{"event": "end"}\n'
    assert cell(ShardOutcome("c", "shard-1of1", 1, 5, report=started)) == (Status.NO_TESTS, "no tests collected")


def test_cell_status_failed_beats_flaky_and_infra_beats_failed() -> None:
    failed_and_flaky = cell(
        outcome({A: "failed", B: "failed"}, exit_code=1),
        outcome({A: "failed", B: "passed"}, exit_code=1, attempt=2),
    )
    other_shard_broke = cell(
        outcome({A: "failed"}, exit_code=1, shard="shard-1of2"),
        outcome({}, exit_code=None, shard="shard-2of2", infra_error="image pull failed"),
    )

    assert failed_and_flaky[0] is Status.FAILED
    assert other_shard_broke == (Status.INFRA, "shard-2of2: image pull failed")


def test_counts_follow_final_statuses() -> None:
    attempts = [
        results.evaluate(outcome({A: "passed", B: "failed", C: "failed", D: "skipped"}, exit_code=1)),
        results.evaluate(outcome({B: "passed", C: "failed"}, exit_code=1, attempt=2)),
    ]
    timed = results.evaluate(outcome({}, exit_code=137, running="tests/test_t.py::test_slow", timed_out=True), 9)
    tests = results.fold([*attempts, timed])
    result = results.CellResult("python-3.11", {"python": "3.11"}, Status.FAILED, "", tests, [*attempts, timed], 1.0)

    assert result.counts() == {
        "tests": 5,
        "passed": 2,
        "failures": 1,
        "errors": 1,
        "skipped": 1,
        "flaky": 1,
        "timeouts": 1,
    }


def test_file_walls_count_the_time_between_tests_and_share_out_collection() -> None:
    """A file costs a shard what pytest spends on it: each test from its setup's start to the next test's (pytest's
    own per-test work between tests counts), collection shared out by the number of tests."""

    def timed(nodeid: str, begin: float, length: float) -> list[dict[str, object]]:
        return [
            record(nodeid, "setup", duration=0.0, stop=begin),
            record(nodeid, "call", duration=length, stop=begin + length),
            record(nodeid, "teardown", duration=0.0, stop=begin + length),
        ]

    rep = jsonl(
        [
            {"event": "start", "time": 100.0},
            {"event": "collected", "time": 104.0, "nodeids": [A, B, C, D]},  # 4 s collecting, 1 s per test
            *timed(A, 104.0, 0.5),  # next test starts 1.5 s later: 1.5 s for A
            *timed(B, 105.5, 0.5),
            *timed(C, 107.0, 1.0),
            *timed(D, 109.0, 0.5),
            {"event": "end", "time": 110.0},
        ]
    )
    att = results.evaluate(ShardOutcome("c", "shard-1of1", 1, 0, report=rep))

    assert att.file_walls == pytest.approx({"tests/test_a.py": 1.5 + 1.5 + 2.0, "tests/sub/test_c.py": 2.0 + 1.0 + 2.0})
    assert sum(att.file_walls.values()) == pytest.approx(att.session_seconds)
    assert att.collect_seconds == pytest.approx(4.0)


# --- the plugin's records, as pytest writes them --------------------------------------------------------------------


def plugin_report(folder: Path, test_file: str) -> bytes:
    """The report the real plugin writes in a real pytest session (this interpreter's pytest, no container) of
    ``folder/test_file``, a file with failures (pytest exits 1)."""
    report = folder / "report.jsonl"
    side = Path(results.__file__).parent / "container_side"
    argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "matrix_run_plugin"]
    argv += [f"--matrix-run-report={report}", test_file]
    env = {**os.environ, "PYTHONPATH": str(side)}
    proc = subprocess.run(argv, cwd=folder, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 1, proc.stdout[-2000:]
    return report.read_bytes()


def test_the_plugin_names_collected_tests_by_index_and_the_report_reads_them_back(tmp_path: Path) -> None:
    """The real plugin in a real pytest session (this interpreter's pytest, no container): 3,000 tests with long
    parameter ids, one failure, one skip, one xfail, one error at setup. Every test comes back with its outcome, and
    the report holds each test's name once (in the collected record), so packaging-26.4-sized shards (56,577
    tests, 64.8 MiB of report before) stay well under tests.output-limit."""
    long = "x" * 80
    (tmp_path / "test_many.py").write_text(
        textwrap.dedent(
            f"""\
            import pytest

            @pytest.fixture
            def broken():
                raise RuntimeError("fixture broke")

            @pytest.mark.parametrize("n", range(2997), ids=lambda n: "{long}-%d" % n)
            def test_param(n):
                assert n != 7

            def test_skip():
                pytest.skip("not here")

            @pytest.mark.xfail(reason="known")
            def test_xfail():
                assert False

            def test_error(broken):
                pass
            """
        )
    )
    data = plugin_report(tmp_path, "test_many.py")
    rep = results.parse_report(data)

    assert rep.bad_records == 0
    assert rep.ended
    assert len(rep.collected) == len(rep.finished) == 3000
    outcomes = Counter(str(r["outcome"]) for r in rep.finished.values())
    assert outcomes == {"passed": 2996, "failed": 1, "skipped": 2, "error": 1}  # the xfail is a skip, as in JUnit
    assert rep.finished[f"test_many.py::test_param[{long}-7]"]["outcome"] == "failed"
    assert rep.finished["test_many.py::test_error"]["file"] == "test_many.py"
    assert "fixture broke" in str(rep.finished["test_many.py::test_error"]["longrepr"])
    names = sum(len(n) for n in rep.collected)
    assert data.count(b"test_param[") == 2997  # each id once, in the collected record
    assert len(data) - names < 400 * 3000  # the three phase records of a test: under 400 bytes together


def test_subtests_fail_their_test_and_are_timed_inside_it(tmp_path: Path) -> None:
    """pytest 9's ``subtests`` fixture and unittest's ``subTest``, in a real pytest session with the real plugin:
    every subtest comes as one more call report of its test (its own call report last), so a failing subtest fails
    the test (pytest's exit code says so too, even where the test's own call report passed) and the test's time is
    its own call's, not the sum of calls that lie inside it."""
    if int(pytest.__version__.split(".")[0]) < 9:
        pytest.skip("the subtests fixture is pytest 9's; this environment has pytest 8")
    (tmp_path / "test_sub.py").write_text(
        textwrap.dedent(
            """\
            import unittest

            def test_one_subtest_fails(subtests):
                for i in range(3):
                    with subtests.test(i=i):
                        assert i != 1

            def test_all_subtests_pass(subtests):
                for i in range(3):
                    with subtests.test(i=i):
                        pass

            class T(unittest.TestCase):
                def test_unittest_subtest_fails(self):
                    for i in range(3):
                        with self.subTest(i=i):
                            self.assertNotEqual(i, 2)
            """
        )
    )
    data = plugin_report(tmp_path, "test_sub.py")
    rep = results.parse_report(data)

    assert {n.split("::")[-1]: r["outcome"] for n, r in rep.finished.items()} == {
        "test_one_subtest_fails": "failed",
        "test_all_subtests_pass": "passed",
        "test_unittest_subtest_fails": "failed",
    }
    assert "assert 1 != 1" in str(rep.finished["test_sub.py::test_one_subtest_fails"]["longrepr"])
    calls: dict[str, list[float]] = {}
    for rec in (json.loads(line) for line in data.splitlines()):
        if rec.get("event") == "test":
            calls.setdefault(rep.collected[rec["i"]], []).append(rec["duration"])
    for nodeid, durations in calls.items():
        assert len(durations) == 6  # setup, three subtests, the test's own call, teardown
        own = durations[0] + max(durations[1:-1]) + durations[-1]
        assert rep.finished[nodeid]["duration"] == pytest.approx(own), nodeid
