"""runner/quarantine.py: matching entries to (cell axes, node id), and what a quarantined test becomes in the cell's
status, the exit code, results.json, summary.md, junit.xml, the annotations and the --quarantine flag."""

from __future__ import annotations

import dataclasses
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import xmlschema

from runner import cli, config, github, junit, quarantine, summary
from runner.config import QuarantineEntry
from runner.errors import ExitCode
from runner.execution import RunResults, ShardOutcome
from runner.results import CellResult, Status
from tests.test_junit import FAIL, FLAKY, PASS, SCHEMA, SKIP, cell_result, mixed_cell, shard_outcome
from tests.test_schema import validate_results

AXES = {"python": "3.11", "numpy": "2.2.6"}


def entry(test: str, cells: dict[str, str] | None = None, reason: str = "") -> QuarantineEntry:
    return QuarantineEntry(test, tuple((cells or {}).items()), reason)


# --- matching -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "matched"),
    [
        ("tests/test_b.py::test_fail", True),  # the node id
        ("tests.test_b::test_fail", True),  # JUnit's classname::name, as results.json names it
        ("tests/test_b.py::*", True),
        ("tests/*::test_f*", True),
        ("tests/test_b.py::test_fai", False),  # a prefix is not a match
        ("TESTS/test_b.py::test_fail", False),  # case matters, as in node ids
        ("tests/test_a.py::*", False),
    ],
)
def test_an_entry_matches_by_node_id_junit_name_or_glob(pattern: str, matched: bool) -> None:
    names = ["tests/test_b.py::test_fail", "tests.test_b::test_fail"]
    assert quarantine.matches(entry(pattern), AXES, names) is matched


def test_a_parametrized_id_matches_itself_although_brackets_are_glob_syntax() -> None:
    nodeid = "tests/test_a.py::TestK::test_twice[p-1]"
    assert quarantine.matches(entry(nodeid), AXES, [nodeid])
    assert quarantine.matches(entry("tests/test_a.py::TestK::test_twice[[]p-1]"), AXES, [nodeid])


def test_every_cells_filter_must_match() -> None:
    names = ["tests/test_b.py::test_fail"]
    assert quarantine.matches(entry(names[0], {"python": "3.11"}), AXES, names)
    assert quarantine.matches(entry(names[0], {"python": "3.11", "numpy": "2.2.6"}), AXES, names)
    assert not quarantine.matches(entry(names[0], {"python": "3.11", "numpy": "1.26.4"}), AXES, names)
    assert not quarantine.matches(entry(names[0], {"gpus": "1"}), AXES, names)  # an axis the cell lacks


def test_entries_naming_an_axis_the_matrix_lacks_are_reported() -> None:
    lines = quarantine.unknown_axes([entry("t", {"pyhton": "3.11"}), entry("u", {"python": "3.9"})], ["python"])
    assert lines == [
        "quarantine entry 't': cells filter names 'pyhton', which is not an axis of the matrix (axes: python); "
        "it matches no cell"
    ]


# --- applying to results --------------------------------------------------------------------------------------------


def only_failure_cell() -> CellResult:
    """A cell whose one failure (test_fail, failed in both attempts) is all that keeps it from passing."""
    return cell_result(
        "python-3.11_numpy-2.2.6",
        AXES,
        [
            shard_outcome({PASS: "passed", FAIL: "failed", SKIP: "skipped"}),
            shard_outcome({FAIL: "failed"}, attempt=2),
        ],
    )


def run_of(*cells: CellResult) -> RunResults:
    return RunResults("demo-20250101-000000-abcdef", list(cells), False, False, 10.0, 0, 1)


def test_a_quarantined_failure_leaves_the_cell_passed_and_the_run_exit_0() -> None:
    cell = only_failure_cell()
    before = run_of(cell)
    assert summary.run_status(before) == ("failed", ExitCode.TESTS_FAILED)

    after = quarantine.apply(before, [entry(FAIL, reason="fails on CI only, issue 7")])

    [held] = after.cells
    assert held.status is Status.PASSED
    assert held.reason == f"1 quarantined test(s) failed: {FAIL}"
    assert summary.run_status(after) == ("passed", ExitCode.OK)
    counts = held.counts()
    assert (counts["failures"], held.quarantined(), counts["passed"], counts["tests"]) == (0, 1, 1, 3)
    hist = next(h for h in held.tests.values() if h.quarantined)
    assert hist.status is Status.FAILED  # what it really did stays
    assert hist.quarantine_reason == "fails on CI only, issue 7"
    assert quarantine.quarantined(after) == [
        quarantine.Quarantined(held.cell_id, FAIL, Status.FAILED, "fails on CI only, issue 7")
    ]
    # what the run itself holds is untouched: the history and the --cache store record what really happened
    assert cell.status is Status.FAILED
    assert not any(h.quarantined for h in cell.tests.values())
    assert before.cells[0] is cell


def test_other_failures_still_fail_the_cell() -> None:
    after = quarantine.apply(run_of(mixed_cell()), [entry(FAIL)])
    [cell] = after.cells
    assert cell.status is Status.ERROR  # test_setup_error is not quarantined (the failure was the worst before)
    assert summary.run_status(after) == ("failed", ExitCode.TESTS_FAILED)
    assert cell.quarantined() == 1


def test_a_quarantined_flaky_test_does_not_make_the_cell_flaky() -> None:
    cell = cell_result(
        "c", AXES, [shard_outcome({PASS: "passed", FLAKY: "failed"}), shard_outcome({FLAKY: "passed"}, attempt=2)]
    )
    assert cell.status is Status.FLAKY
    [held] = quarantine.apply(run_of(cell), [entry("tests/test_a.py::test_fl*")]).cells
    assert held.status is Status.PASSED
    assert summary.run_status(run_of(held), strict_flaky=True) == ("passed", ExitCode.OK)


def test_an_entry_for_other_cells_changes_nothing() -> None:
    cell = only_failure_cell()
    after = quarantine.apply(run_of(cell), [entry(FAIL, {"python": "3.9"})])
    assert after.cells[0] is cell
    assert after.cells[0].status is Status.FAILED


def test_a_cell_of_quarantined_tests_only_is_not_made_green() -> None:
    cell = cell_result("c", AXES, [shard_outcome({FAIL: "failed"}), shard_outcome({FAIL: "failed"}, attempt=2)])
    [held] = quarantine.apply(run_of(cell), [entry(FAIL)]).cells
    assert held.status is Status.FAILED
    assert "every test that ran is quarantined" in held.reason


def test_a_status_the_tests_did_not_decide_stays() -> None:
    cancelled = dataclass_replace_status(only_failure_cell(), Status.CANCELLED)
    [held] = quarantine.apply(run_of(cancelled), [entry(FAIL)]).cells
    assert held.status is Status.CANCELLED
    # a shard that timed out keeps its cell from passing when the quarantined failure is set aside
    timed_out = cell_result(
        "c",
        AXES,
        [
            shard_outcome({PASS: "passed", FAIL: "failed"}),
            ShardOutcome("c", "shard-2of2", 1, 137, timed_out=True),
            shard_outcome({FAIL: "failed"}, attempt=2),
        ],
    )
    assert timed_out.status is Status.FAILED
    [held] = quarantine.apply(run_of(timed_out), [entry(FAIL)]).cells
    assert held.status is Status.TIMEOUT
    assert summary.run_status(run_of(held)) == ("failed", ExitCode.TESTS_FAILED)


def dataclass_replace_status(cell: CellResult, status: Status) -> CellResult:
    return dataclasses.replace(cell, status=status, reason="cancelled by fail-fast")


# --- what the reports say -------------------------------------------------------------------------------------------


def test_results_json_marks_the_quarantined_test_and_validates(tmp_path: Path) -> None:
    after = quarantine.apply(run_of(only_failure_cell()), [entry(FAIL, reason="issue 7")])
    status, code = summary.run_status(after)
    summary.write_results_json(after, tmp_path / "results.json", "demo", status, code)
    data = validate_results(tmp_path / "results.json")
    [cell] = data["cells"]
    assert (data["status"], data["exit_code"], cell["status"]) == ("passed", 0, "passed")
    assert cell["failed_tests"] == []
    assert (cell["failures"], cell["quarantined"]) == (0, 1)
    assert cell["quarantined_tests"] == [
        {"test": "tests.test_b::test_fail", "nodeid": FAIL, "status": "failed", "reason": "issue 7"}
    ]


def test_summary_md_lists_the_quarantined_test_with_its_failure() -> None:
    after = quarantine.apply(run_of(only_failure_cell()), [entry(FAIL, reason="issue 7")])
    text = summary.summary_markdown(after, "demo", "passed")
    assert "| cell | status | tests | passed | failed | errors | skipped | flaky | quarantined | time |" in text
    assert "| `python-3.11_numpy-2.2.6` | ✅ passed | 3 | 1 | 0 | 0 | 1 | 0 | 1 | 12.5s |" in text
    assert "Quarantined tests (1):" in text
    assert f"- 🔒 `{FAIL}` failed (quarantined: issue 7): `assert 0 <&>`" in text
    plain = summary.summary_markdown(run_of(only_failure_cell()), "demo", "failed")
    assert "quarantined" not in plain  # no column, no section without quarantine


def test_junit_has_the_quarantined_failure_as_skipped_with_its_message_and_a_property(tmp_path: Path) -> None:
    after = quarantine.apply(run_of(only_failure_cell()), [entry(FAIL, reason="issue 7")])
    path = tmp_path / "junit.xml"
    junit.write_merged(after.cells, path, "demo")
    assert not [str(e.reason) for e in xmlschema.XMLSchema(SCHEMA).iter_errors(str(path))]
    suite = ET.parse(path).getroot().find("testsuite")
    assert suite is not None
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors"), suite.get("skipped")) == (
        "3",
        "0",
        "0",
        "2",
    )
    props = [(p.get("name"), p.get("value")) for p in suite.iter("property")]
    assert ("matrix-run.quarantined", FAIL) in props
    case = next(c for c in suite.iter("testcase") if c.get("name") == "test_fail")
    assert [child.tag for child in case] == ["skipped", "system-out"]  # no failure, no rerunFailure
    skipped = case.find("skipped")
    assert skipped is not None
    assert skipped.get("type") == junit.QUARANTINED_TYPE
    assert skipped.get("message") == "quarantined (issue 7): failed: assert 0 <&>"
    assert skipped.text == f"{FAIL} failed <&> here"
    root = ET.parse(path).getroot()
    assert root.get("failures") == "0"


def test_a_quarantined_failure_is_a_notice_not_an_error_annotation(tmp_path: Path) -> None:
    after = quarantine.apply(run_of(only_failure_cell()), [entry(FAIL)])
    lines = github.annotation_lines(after, {"GITHUB_ACTIONS": "true", "GITHUB_WORKSPACE": str(tmp_path)}, tmp_path)
    assert [line.split(" ", 1)[0] for line in lines] == ["::notice"]
    assert "failed (quarantined) in 1 of 1 cell(s)" in lines[0]


# --- the --quarantine flag ------------------------------------------------------------------------------------------


def test_the_flag_reads_a_list_or_a_quarantine_mapping(tmp_path: Path) -> None:
    listed = tmp_path / "q.yaml"
    listed.write_text(f"- test: '{FAIL}'\n  cells: python=3.11\n  reason: issue 7\n")
    mapping = tmp_path / "m.yaml"
    mapping.write_text("quarantine:\n  - {test: 'tests/*', cells: {python: '3.9'}}\n")
    args = cli.build_parser().parse_args(["run", "m.yaml", "--quarantine", str(listed), "--quarantine", str(mapping)])
    assert args.quarantine == [
        (QuarantineEntry(FAIL, (("python", "3.11"),), "issue 7"),),
        (QuarantineEntry("tests/*", (("python", "3.9"),), ""),),
    ]
    assert config.load_quarantine(mapping) == args.quarantine[1]


@pytest.mark.parametrize(
    ("text", "said"),
    [
        (None, "quarantine file not found"),
        ("- reason: no test\n", "q.yaml:1: [0]: needs 'test'"),
        ("- test: t\n  cells: [python]\n", "q.yaml:2: [0].cells[0]: 'python' must be AXIS=VALUE"),
        ("quarantine: {test: t}\n", "q.yaml:1: quarantine: must be a list of entries"),
    ],
)
def test_a_bad_quarantine_file_is_one_line_naming_the_file_and_exit_4(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str | None, said: str
) -> None:
    path = tmp_path / "q.yaml"
    if text is not None:
        path.write_text(text)
    with pytest.raises(SystemExit) as exc:
        cli.main(["run", "matrix.yaml", "--quarantine", str(path)])
    assert exc.value.code == 4
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"matrix-run run: error: argument --quarantine: {path}")
    assert said in last
    assert "Traceback" not in err
