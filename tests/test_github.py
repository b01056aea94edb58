"""runner/github.py: the step summary appended under GitHub's 1 MiB, and the annotations (escaped, with paths
relative to the repository root, at most 10 errors plus a notice, warnings for flaky tests). Pure: the
environment is a mapping handed in."""

from __future__ import annotations

import dataclasses
import io
import json
import re
from pathlib import Path

import pytest

from runner import github, summary
from runner.execution import ShardOutcome
from runner.results import CellResult, Status
from tests.test_junit import FAIL, FLAKY, cell_result, mixed_cell, shard_outcome, timeout_cell
from tests.test_summary import failing_cell, run_of

GHA = {"GITHUB_ACTIONS": "true"}
COMMAND = re.compile(r"^::(?P<command>\w+)(?: (?P<props>[^:]*))?::(?P<message>.*)$")


def unescape(text: str) -> str:
    return text.replace("%0A", "\n").replace("%0D", "\r").replace("%3A", ":").replace("%2C", ",").replace("%25", "%")


def parse(line: str) -> tuple[str, dict[str, str], str]:
    """A workflow command as GitHub's runner reads it: (command, properties, message)."""
    m = COMMAND.match(line)
    assert m, line
    props = dict(p.split("=", 1) for p in m["props"].split(",")) if m["props"] else {}
    return m["command"], {k: unescape(v) for k, v in props.items()}, unescape(m["message"])


def outcome_at(rootdir: str, tests: dict[str, str], **flags: object) -> ShardOutcome:
    """shard_outcome, from a pytest whose rootdir is ``rootdir`` (relative to the project)."""
    out = shard_outcome(tests, **flags)
    start = json.dumps({"event": "start", "rootdir": rootdir}).encode()
    return dataclasses.replace(out, report=out.report.replace(b'{"event": "start"}', start, 1))


def failing_in(cells: int, nodeid: str, prefix: str = "py") -> list[CellResult]:
    return [cell_result(f"{prefix}-{i}", {"python": str(i)}, [shard_outcome({nodeid: "failed"})]) for i in range(cells)]


# --- escaping -----------------------------------------------------------------------------------------------------


def test_messages_and_properties_are_escaped_as_the_runner_unescapes_them() -> None:
    assert github.escape_data("100% done\r\nnext: a, b") == "100%25 done%0D%0Anext: a, b"
    assert github.escape_property("100% done\r\nnext: a, b") == "100%25 done%0D%0Anext%3A a%2C b"
    line = github.workflow_command("error", "a\n%0A::b", file="x,y.py", line="3", title="t::u", col=None)
    assert line == "::error file=x%2Cy.py,line=3,title=t%3A%3Au::a%0A%250A::b"
    assert parse(line) == ("error", {"file": "x,y.py", "line": "3", "title": "t::u"}, "a\n%0A::b")
    assert github.workflow_command("notice", "m") == "::notice::m"


def test_a_failure_text_cannot_start_a_workflow_command_of_its_own() -> None:
    cell = failing_cell("c1", 1, "boom\n::add-mask::x\n::error::forged")
    lines = github.annotation_lines(run_of(cell), GHA, Path.cwd())
    assert len(lines) == 1
    assert "\n" not in lines[0]
    assert "%0A::add-mask::x%0A::error::forged" in lines[0]


# --- annotations --------------------------------------------------------------------------------------------------


def test_no_annotations_outside_github_actions() -> None:
    run = run_of(mixed_cell())
    assert github.annotation_lines(run, {}, Path.cwd()) == []
    assert github.annotation_lines(run, {"GITHUB_ACTIONS": "false"}, Path.cwd()) == []


def test_a_failed_test_is_an_error_at_its_file_and_line_relative_to_the_workspace(tmp_path: Path) -> None:
    project = tmp_path / "repo" / "sub"
    project.mkdir(parents=True)
    env = {**GHA, "GITHUB_WORKSPACE": str(tmp_path / "repo")}
    lines = github.annotation_lines(run_of(mixed_cell(), timeout_cell()), env, project)
    errors = [parse(line) for line in lines if line.startswith("::error")]
    by_title = {props["title"]: (props, message) for _, props, message in errors}
    props, message = by_title[f"{FAIL}: failed in 1 of 2 cell(s)"]
    assert props["file"] == "sub/tests/test_b.py"
    assert props["line"] == "4"
    assert message.splitlines()[0] == "assert 0 <&>"
    assert "failed in 1 of 2 cell(s): python-3.11_numpy-2.2.6" in message
    assert f"{FAIL} failed <&> here" in message  # the first lines of the failure
    props, message = by_title["tests/test_c.py::test_slow: timed out in 1 of 2 cell(s)"]
    assert props["file"] == "sub/tests/test_c.py"  # a timeout case has no JUnit file: its node id's file
    assert "line" not in props
    assert "tests/test_b.py::test_setup_error: errored in 1 of 2 cell(s)" in by_title


def test_without_a_workspace_paths_are_relative_to_the_current_folder(tmp_path: Path) -> None:
    project = tmp_path / "a" / "b"
    project.mkdir(parents=True)
    (line,) = github.annotation_lines(run_of(*failing_in(1, FAIL)), GHA, project, cwd=tmp_path)
    assert parse(line)[1]["file"] == "a/b/tests/test_b.py"
    (line,) = github.annotation_lines(run_of(*failing_in(1, FAIL)), GHA, project, cwd=project)
    assert parse(line)[1]["file"] == "tests/test_b.py"


def test_files_are_joined_to_pytests_rootdir(tmp_path: Path) -> None:
    project = tmp_path / "repo" / "sub"
    project.mkdir(parents=True)
    env = {**GHA, "GITHUB_WORKSPACE": str(tmp_path / "repo")}
    below = cell_result("c1", {}, [outcome_at("pkg", {FAIL: "failed"})])
    (line,) = github.annotation_lines(run_of(below), env, project)
    assert parse(line)[1]["file"] == "sub/pkg/tests/test_b.py"
    above = cell_result("c1", {}, [outcome_at("..", {"sub/tests/test_b.py::test_fail": "failed"})])
    (line,) = github.annotation_lines(run_of(above), env, project)
    assert parse(line)[1]["file"] == "sub/tests/test_b.py"


def test_a_project_outside_the_workspace_names_no_file(tmp_path: Path) -> None:
    (tmp_path / "ws").mkdir()
    env = {**GHA, "GITHUB_WORKSPACE": str(tmp_path / "ws")}
    (line,) = github.annotation_lines(run_of(*failing_in(1, FAIL)), env, tmp_path / "elsewhere")
    command, props, _ = parse(line)
    assert command == "error"
    assert set(props) == {"title"}


def test_at_most_ten_errors_one_per_test_the_most_failing_first_and_a_notice_for_the_rest(tmp_path: Path) -> None:
    nodeids = [f"tests/test_x.py::test_{i:02d}" for i in range(12)]
    failing = [nodeids, nodeids[10:], nodeids[11:]]  # test_11 fails in all 3 cells, test_10 in 2, the rest in 1
    cells = [
        cell_result(f"py-{c}", {"python": str(c)}, [shard_outcome(dict.fromkeys(failing[c], "failed"))])
        for c in range(3)
    ]
    lines = github.annotation_lines(run_of(*cells), GHA, tmp_path)
    errors = [parse(line) for line in lines if line.startswith("::error")]
    assert len(errors) == 10
    titles = [props["title"] for _, props, _ in errors]
    assert titles[0] == "tests/test_x.py::test_11: failed in 3 of 3 cell(s)"
    assert titles[1] == "tests/test_x.py::test_10: failed in 2 of 3 cell(s)"
    assert titles[2:] == [f"tests/test_x.py::test_{i:02d}: failed in 1 of 3 cell(s)" for i in range(8)]
    assert len(set(titles)) == 10  # one per distinct test, whatever the cells
    (notice,) = [parse(line) for line in lines if line.startswith("::notice")]
    assert notice[2].startswith("2 more failed test(s) not annotated: GitHub shows 10 error annotations per step")
    assert lines.index(next(line for line in lines if line.startswith("::notice"))) == 10


def test_exactly_ten_failures_need_no_notice(tmp_path: Path) -> None:
    cell = failing_cell("c1", 10, "boom")
    lines = github.annotation_lines(run_of(cell), GHA, tmp_path)
    assert len(lines) == 10
    assert all(line.startswith("::error ") for line in lines)


def test_flaky_tests_are_warnings_ten_at_most(tmp_path: Path) -> None:
    nodeids = [f"tests/test_f.py::test_{i:02d}" for i in range(11)]
    flaky = cell_result(
        "py-1",
        {"python": "1"},
        [shard_outcome(dict.fromkeys(nodeids, "failed")), shard_outcome(dict.fromkeys(nodeids, "passed"), attempt=2)],
    )
    assert flaky.status is Status.FLAKY
    lines = github.annotation_lines(run_of(flaky, mixed_cell()), GHA, tmp_path, cwd=tmp_path)
    warnings = [parse(line) for line in lines if line.startswith("::warning")]
    assert len(warnings) == 10
    _, props, message = warnings[0]
    assert props["title"] == "tests/test_f.py::test_00: flaky in 1 of 2 cell(s)"
    assert props["file"] == "tests/test_f.py"
    assert props["line"] == "4"
    assert message.startswith("passed on a rerun after: assert 0 <&>\nflaky in 1 of 2 cell(s): py-1")
    assert f"{FLAKY}: flaky in 1 of 2 cell(s)" not in {p["title"] for _, p, _ in warnings}  # among the 3 left over
    notices = [parse(line)[2] for line in lines if line.startswith("::notice")]
    assert notices == [
        "3 more flaky test(s) not annotated: GitHub shows 10 warning annotations per step; the job summary "
        "(summary.md) and junit.xml list them all"
    ]
    assert [parse(line)[0] for line in lines] == ["error", "error"] + ["warning"] * 10 + ["notice"]


def test_a_cell_that_errored_without_a_failed_test_is_an_error_too(tmp_path: Path) -> None:
    broken = CellResult("py-3.7", {"python": "3.7"}, Status.ERROR, "image build failed:\npip exited 1", {}, [], 3.0)
    lines = github.annotation_lines(run_of(*failing_in(1, FAIL), broken), GHA, tmp_path)
    assert [parse(line)[1]["title"] for line in lines] == [
        f"{FAIL}: failed in 1 of 2 cell(s)",
        "matrix-run: cell py-3.7: error",
    ]
    assert parse(lines[1])[2] == "image build failed:\npip exited 1"


def test_a_long_message_is_cut(tmp_path: Path) -> None:
    (line,) = github.annotation_lines(run_of(failing_cell("c1", 1, "y" * 20_000)), GHA, tmp_path)
    assert len(parse(line)[2]) <= github.MESSAGE_CHARS


# --- the step summary ---------------------------------------------------------------------------------------------


def test_the_step_summary_is_appended_and_what_was_there_stays(tmp_path: Path) -> None:
    path = tmp_path / "step_summary.md"
    path.write_text("## an earlier step's summary")
    run = run_of(mixed_cell(), timeout_cell())
    github.append_step_summary(path, run, "demo", "failed")
    summary.write_summary_md(run, tmp_path / "summary.md", "demo", "failed")
    assert path.read_text() == "## an earlier step's summary\n\n" + (tmp_path / "summary.md").read_text()
    github.append_step_summary(path, run, "demo", "failed")  # a second run in the same step
    assert path.read_text().count("# matrix-run: demo — failed\n") == 2


def test_the_step_summary_stays_under_one_mib_with_what_was_there(tmp_path: Path) -> None:
    big = failing_cell("c0", 50, "\n".join("z" * 400 for _ in range(20)))
    run = run_of(*(dataclasses.replace(big, cell_id=f"python-3.{i}") for i in range(20)))
    assert len(summary.summary_markdown(run, "demo", "failed").encode()) > 4 * github.STEP_SUMMARY_LIMIT
    path = tmp_path / "step_summary.md"
    path.write_text("x" * 100_000 + "\n")
    github.append_step_summary(path, run, "demo", "failed")
    data = path.read_bytes()
    assert len(data) <= github.STEP_SUMMARY_LIMIT
    assert data.startswith(b"x" * 100_000 + b"\n\n# matrix-run: demo \xe2\x80\x94 failed\n")
    text = data.decode()
    assert text.count("| `python-3.") == 20
    assert "> ✂️ cut to stay under " in text
    assert "- `python-3.19`: failed, 50 failed, 0 errors, 0 flaky" in text


def test_emit_prints_the_annotations_and_appends_the_step_summary(tmp_path: Path) -> None:
    path = tmp_path / "step.md"
    out = io.StringIO()
    env = {**GHA, "GITHUB_STEP_SUMMARY": str(path), "GITHUB_WORKSPACE": str(tmp_path)}
    github.emit(run_of(*failing_in(1, FAIL)), env, tmp_path, "demo", "failed", out=out)
    assert out.getvalue().startswith("::error file=tests/test_b.py,line=4,title=")
    assert path.read_text().startswith("# matrix-run: demo — failed\n")


def test_emit_outside_github_does_nothing(tmp_path: Path) -> None:
    out = io.StringIO()
    github.emit(run_of(mixed_cell()), {}, tmp_path, "demo", "failed", out=out)
    assert out.getvalue() == ""
    assert list(tmp_path.iterdir()) == []


def test_a_step_summary_that_cannot_be_written_does_not_fail_the_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    env = {"GITHUB_STEP_SUMMARY": str(tmp_path)}  # a folder
    github.emit(run_of(mixed_cell()), env, tmp_path, "demo", "failed", out=io.StringIO())
    assert f"matrix-run: GitHub step summary not written to {tmp_path}" in capsys.readouterr().err


def test_records_from_the_plugin_name_the_file_it_reported(tmp_path: Path) -> None:
    """A test defined in another file than its node id's (an inherited test method): the JUnit file wins."""
    out = shard_outcome({FAIL: "failed"})
    where = b'"file": "tests/test_b.py", "line": 4'
    assert out.report.count(where) == 3  # setup, call, teardown
    out = dataclasses.replace(out, report=out.report.replace(where, b'"file": "tests/base.py", "line": 10'))
    (line,) = github.annotation_lines(run_of(cell_result("c1", {}, [out])), GHA, tmp_path, cwd=tmp_path)
    assert parse(line)[1] == {"file": "tests/base.py", "line": "10", "title": f"{FAIL}: failed in 1 of 1 cell(s)"}
