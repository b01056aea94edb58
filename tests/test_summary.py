"""runner/summary.py's summary.md: the table and notes, each failed and flaky test with the first lines of its
failure, and the size limit (the status line stays, the per-cell details are cut first and the cut is said)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from runner import summary
from runner.execution import RunResults, ShardOutcome
from runner.results import CellResult
from tests.test_junit import FAIL, FLAKY, FLAKY2, cell_result, mixed_cell, record, shard_outcome, timeout_cell

PASSING = {"tests/test_a.py::test_pass": "passed"}


def run_of(*cells: CellResult, **extra: object) -> RunResults:
    return RunResults("demo-20250101-000000-abcdef", list(cells), False, False, 42.0, 1, 2, **extra)  # type: ignore[arg-type]


def failing_cell(cell_id: str, count: int, text: str, axes: dict[str, str] | None = None) -> CellResult:
    """A cell whose ``count`` tests all fail (in both attempts), each failure's report being ``text``."""
    nodeids = [f"tests/test_many.py::test_{i:04d}" for i in range(count)]
    lines: list[dict[str, object]] = [{"event": "start"}, {"event": "collected", "nodeids": nodeids}]
    for nodeid in nodeids:
        call = record(nodeid, "call", "failed")
        call["longrepr"], call["message"] = text, f"assert {nodeid[-4:]} == 0"
        lines += [record(nodeid, "setup"), call, record(nodeid, "teardown")]
    lines.append({"event": "end"})
    report = b"".join(json.dumps(r).encode() + b"\n" for r in lines)
    outcomes = [ShardOutcome("c", "shard-1of1", attempt, 1, report=report) for attempt in (1, 2)]
    return cell_result(cell_id, axes or {"python": cell_id}, outcomes)


def test_the_table_and_the_notes_stay(tmp_path: Path) -> None:
    path = tmp_path / "summary.md"
    run = run_of(mixed_cell(), timeout_cell(), fail_fast_by="python-3.11_numpy-2.2.6")
    summary.write_summary_md(run, path, "demo", "failed")
    text = path.read_text()
    assert text.startswith("# matrix-run: demo — failed\n")
    assert "> fail-fast: python-3.11_numpy-2.2.6 failed after its reruns" in text
    assert "| cell | status | tests | passed | failed | errors | skipped | flaky | time |" in text
    assert "| `python-3.11_numpy-2.2.6` | ❌ failed | 6 | 3 | 1 | 1 | 1 | 2 | 12.5s |" in text
    assert "## Details" in text


def test_failed_and_flaky_tests_are_listed_per_cell_with_the_first_lines_of_their_failure() -> None:
    text = summary.summary_markdown(run_of(mixed_cell(), timeout_cell()), "demo", "failed")
    mixed = text.split("### `python-3.11_numpy-2.2.6`: failed", 1)[1].split("### ", 1)[0]
    assert "Failed tests (2):" in mixed
    assert f"- ❌ `{FAIL}` failed: `assert 0 <&>`" in mixed
    assert f"  ```\n  {FAIL} failed <&> here\n  ```" in mixed  # the failure's report, as a code block in its entry
    assert "- 💥 `tests/test_b.py::test_setup_error` error: `fixture broke`" in mixed
    assert "Flaky tests (2):" in mixed
    assert f"- ⚠️ `{FLAKY}` flaky (passed on a rerun): `assert 0 <&>`" in mixed
    assert f"- ⚠️ `{FLAKY2}` flaky (passed on a rerun)" in mixed
    timed = text.split("### `python-3.13_numpy-2.2.6`: timeout", 1)[1]
    assert "- ⏱️ `tests/test_c.py::test_slow` timeout: `timeout: the shard hit its 30 s limit during this test`" in timed


def test_only_the_first_lines_of_a_long_failure_are_shown() -> None:
    text = "\n".join(f"line {i}" for i in range(100))
    md = summary.summary_markdown(run_of(failing_cell("c1", 1, text)), "demo", "failed")
    assert f"line {summary.FAILURE_LINES - 1}\n" in md
    assert f"line {summary.FAILURE_LINES}\n" not in md
    assert f"... ({100 - summary.FAILURE_LINES} more line(s))" in md


def test_backticks_in_a_failure_cannot_close_its_code_block() -> None:
    cell = failing_cell("c1", 1, "before\n```\n# not a heading\n````x")
    md = summary.summary_markdown(run_of(cell), "demo", "failed")
    assert "  `````\n  before\n  ```\n  # not a heading\n  ````x\n  `````" in md
    assert summary.code_span("a `b` c") == "``a `b` c``"
    assert summary.code_span("`x`") == "`` `x` ``"


def test_a_cell_lists_at_most_fifty_tests() -> None:
    md = summary.summary_markdown(run_of(failing_cell("c1", 60, "boom")), "demo", "failed")
    assert md.count("- ❌ `tests/test_many.py::test_") == summary.LISTED_TESTS
    assert "- ... and 10 more (junit.xml has them all)" in md


def test_a_limit_that_holds_everything_changes_nothing() -> None:
    run = run_of(mixed_cell(), timeout_cell())
    full = summary.summary_markdown(run, "demo", "failed")
    assert summary.summary_markdown(run, "demo", "failed", limit=len(full.encode())) == full


def test_a_limit_cuts_the_details_first_and_says_so() -> None:
    big = failing_cell("c0", 50, "\n".join("x" * 400 for _ in range(20)))
    cells = [dataclasses.replace(big, cell_id=f"python-3.{i}") for i in range(10)]
    run = run_of(*cells)
    full = summary.summary_markdown(run, "demo", "failed")
    limit = 300_000
    assert len(full.encode()) > 3 * limit
    cut = summary.summary_markdown(run, "demo", "failed", limit=limit)
    assert len(cut.encode()) <= limit
    assert cut.startswith("# matrix-run: demo — failed\n")
    assert cut.count("| `python-3.") == 10  # the table is whole
    assert "### `python-3.0`: failed" in cut  # the first cells' details fit
    assert "### `python-3.9`: failed" not in cut
    assert "- `python-3.9`: failed, 50 failed, 0 errors, 0 flaky" in cut  # the rest: a line of counts each
    assert cut.rstrip().splitlines()[-1].startswith("> ✂️ cut to stay under 300,000 bytes: the details of ")


def test_a_limit_smaller_than_the_table_keeps_the_status_line_and_the_notes() -> None:
    cells = [dataclasses.replace(failing_cell("c0", 1, "boom"), cell_id=f"cell-{i:05d}") for i in range(2000)]
    run = run_of(*cells, cluster_lost="the Ray cluster stopped answering")
    cut = summary.summary_markdown(run, "demo", "infra", limit=20_000)
    assert len(cut.encode()) <= 20_000
    assert cut.startswith("# matrix-run: demo — infra\n\n> infra: the Ray cluster stopped answering")
    assert "| `cell-00000` |" in cut
    assert "| `cell-01999` |" not in cut
    assert "## Details" not in cut
    last = cut.rstrip().splitlines()[-1]
    assert " table row(s), the details of 2000 of 2000 cell(s) (2000 without even their counts)" in last


def test_the_status_line_stays_whatever_the_limit() -> None:
    cut = summary.summary_markdown(run_of(mixed_cell()), "demo", "failed", limit=0)
    assert cut.startswith("# matrix-run: demo — failed\n")
    assert "> ✂️ cut to stay under 0 bytes" in cut


def test_a_passing_run_has_no_details() -> None:
    passing = cell_result("python-3.11", {"python": "3.11"}, [shard_outcome(PASSING)])
    md = summary.summary_markdown(run_of(passing), "demo", "passed")
    assert "## Details" not in md
    assert "| `python-3.11` | ✅ passed | 1 | 1 | 0 | 0 | 0 | 0 | 12.5s |" in md
