"""runner/results.py: shard outcomes -> attempts -> per-test histories -> cell status, all from handmade bytes."""

from __future__ import annotations

import json
from collections.abc import Iterable

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
