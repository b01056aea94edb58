"""The flake ledger: what every run records per test and cell (runner/history.py), and the queries over it
(runner/flakes.py: flip rates, same-source flips, incidents left out, quarantine suggestions and lifts, changes since
the previous run), with ``matrix-run flakes`` on a real store."""

from __future__ import annotations

import json
import os
import traceback
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
import yaml

from runner import cli, config, flakes, history
from runner.config import QuarantineEntry
from runner.execution import ShardOutcome
from runner.history import History
from runner.results import CellResult
from tests.conftest import PROJECTS, results, run_cli, write_matrix
from tests.test_history import DAY, FakeTime, run_two_processes
from tests.test_junit import cell_result, shard_outcome
from tests.test_report_page import Browser, chromium_path

SCOPE = "demo@proj"
T0 = 1_750_000_000.0
STABLE = [f"tests/test_ok.py::test_{i}" for i in range(6)]
WOBBLY = "tests/test_net.py::test_fetch"


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeTime:
    fake = FakeTime(T0)
    monkeypatch.setattr(history, "time", fake)
    return fake


@pytest.fixture
def store(tmp_path: Path) -> Any:
    h = History(tmp_path / "history.sqlite")
    yield h
    h.close()


def cell_of(cell_id: str, outcomes: dict[str, str], axes: dict[str, str] | None = None) -> CellResult:
    """A cell in which each test ended as ``outcomes`` says: passed, failed (twice), flaky (failed, then passed),
    skipped or error (setup failed, twice)."""
    first = {n: {"flaky": "failed"}.get(r, r) for n, r in outcomes.items()}
    again = {n: "passed" if r == "flaky" else r for n, r in outcomes.items() if r in ("failed", "flaky", "error")}
    shards = [shard_outcome(first)] + ([shard_outcome(again, attempt=2)] if again else [])
    return cell_result(cell_id, axes or {"python": cell_id.rsplit("-", 1)[-1]}, shards)


def record_runs(
    store: History, clock: FakeTime, runs: list[dict[str, dict[str, str]]], source: str = "src-1", scope: str = SCOPE
) -> list[str]:
    """Record one run per item (cell id -> test outcomes), an hour apart; returns the run ids."""
    ids = []
    for i, cells in enumerate(runs):
        clock.now += 3600
        run_id = f"demo-{int(clock.now)}-{i:02d}"
        store.record_outcomes(scope, run_id, source, [cell_of(cid, outs) for cid, outs in cells.items()])
        ids.append(run_id)
    return ids


def with_stable(**tests: str) -> dict[str, str]:
    return {**dict.fromkeys(STABLE, "passed"), **tests}


# --- what a run records ---------------------------------------------------------------------------------------------


def test_a_run_records_each_tests_outcome_per_cell(store: History, clock: FakeTime) -> None:
    cell = cell_of(
        "py-3.11",
        {"t.py::a": "passed", "t.py::b": "failed", "t.py::c": "flaky", "t.py::d": "skipped", "t.py::e": "error"},
    )
    timed = cell_result(
        "py-3.12",
        {"python": "3.12"},
        [
            ShardOutcome(
                "c",
                "shard-1of1",
                1,
                137,
                timed_out=True,
                report=b'{"event": "start"}\n{"event": "collected", "nodeids": ["t.py::slow", "t.py::never"]}\n'
                b'{"event": "test", "nodeid": "t.py::slow", "when": "setup", "outcome": "passed"}\n',
            )
        ],
    )
    cached = CellResult("py-3.13", {"python": "3.13"}, cell.status, "", cell.tests, [], 0.0)

    rows = store.record_outcomes(SCOPE, "run-1", "digest-1", [cell, timed, cached])

    outcomes = {(o.cell, o.test): o for o in store.ledger_outcomes(SCOPE, ["run-1"])}
    assert rows == len(outcomes) == 6  # t.py::never ran in no attempt, and the cached cell ran nothing
    got = {k: (o.outcome, o.attempts, o.failed) for k, o in outcomes.items()}
    assert got == {
        ("py-3.11", "t.py::a"): ("passed", 1, 0),
        ("py-3.11", "t.py::b"): ("failed", 2, 2),
        ("py-3.11", "t.py::c"): ("flaky", 2, 1),
        ("py-3.11", "t.py::d"): ("skipped", 1, 0),
        ("py-3.11", "t.py::e"): ("error", 2, 2),
        ("py-3.12", "t.py::slow"): ("error", 1, 1),  # a timeout is an error
    }
    assert {(o.run_id, o.source, o.time, o.scope) for o in outcomes.values()} == {("run-1", "digest-1", T0, SCOPE)}
    cells = {c.cell: c for c in store.ledger_cells(SCOPE, ["run-1"])}
    assert set(cells) == {"py-3.11", "py-3.12"}
    assert (cells["py-3.11"].tests, cells["py-3.11"].failing, cells["py-3.11"].axes) == (4, 3, {"python": "3.11"})
    assert cells["py-3.11"].status == "failed"


def test_the_ledger_is_bounded_by_age_and_drops_whole_runs(
    store: History, clock: FakeTime, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(history, "MAX_LEDGER_ROWS", 13)
    ids = record_runs(store, clock, [{"py-3.11": with_stable()}] * 3)  # 6 rows each: 18 > 13
    assert store.ledger_runs(SCOPE) == ids[1:]  # the oldest run went whole, not 5 of its rows
    assert len(store.ledger_outcomes(SCOPE, ids)) == 12
    clock.now += (history.MAX_AGE_DAYS + 1) * DAY
    later = record_runs(store, clock, [{"py-3.11": {"t.py::x": "passed"}}])
    assert store.ledger_runs(SCOPE) == later
    assert [c.run_id for c in store.ledger_cells(SCOPE, [*ids, *later])] == later


def _record_runs_in_process(path: str, who: int, start: Any, errors: Any) -> None:
    try:
        start.wait(timeout=120)
        h = History(Path(path))
        try:
            for i in range(40):
                cell = cell_of(
                    f"cell-{who}", {**dict.fromkeys(STABLE, "passed"), WOBBLY: "flaky" if i % 2 else "passed"}
                )
                h.record_outcomes(SCOPE, f"run-{who}-{i:02d}", "src", [cell])
                flakes.find(h, [SCOPE])  # a reader among the writers
        finally:
            h.close()
        errors.put((who, ""))
    except BaseException:
        start.abort()
        errors.put((who, traceback.format_exc()))


def test_two_runs_recording_outcomes_at_once_both_land(tmp_path: Path) -> None:
    path = tmp_path / "history.sqlite"
    History(path).close()

    assert run_two_processes(_record_runs_in_process, str(path)) == [(1, ""), (2, "")]

    h = History(path)
    try:
        assert len(h.ledger_runs(SCOPE)) == 80
        found = {(f.cell, f.test): f for f in flakes.find(h, [SCOPE], last=80)}
        assert {k: (f.runs, f.flaky) for k, f in found.items()} == {
            ("cell-1", WOBBLY): (40, 20),
            ("cell-2", WOBBLY): (40, 20),
        }
    finally:
        h.close()


# --- flakes ---------------------------------------------------------------------------------------------------------


def test_a_test_that_passed_and_failed_is_listed_with_its_counts_and_flip_rate(store: History, clock: FakeTime) -> None:
    record_runs(
        store,
        clock,
        [
            {"py-3.11": with_stable(**{WOBBLY: "flaky"})},  # F P
            {"py-3.11": with_stable(**{WOBBLY: "passed"})},  # P
            {"py-3.11": with_stable(**{WOBBLY: "failed"})},  # F F
            {"py-3.11": with_stable(**{WOBBLY: "passed"})},  # P
        ],
    )
    [flake] = flakes.find(store, [SCOPE])
    assert (flake.test, flake.cell, flake.runs, flake.failures, flake.flaky) == (WOBBLY, "py-3.11", 4, 1, 1)
    # F P | P | F F | P: F->P, P->F, F->P = 3 changes in 4 runs
    assert (flake.flips, flake.flip_rate) == (3, 0.75)
    assert flake.same_source
    assert flake.as_json()["test"] == WOBBLY
    assert set(flake.as_json()) >= {"test", "cell", "runs", "failures", "flaky", "flip_rate", "same_source"}


def test_tests_that_always_pass_or_always_fail_are_not_flaky(store: History, clock: FakeTime) -> None:
    record_runs(store, clock, [{"py-3.11": with_stable(**{WOBBLY: "failed", "t.py::skip": "skipped"})}] * 3)
    assert flakes.find(store, [SCOPE]) == []


def test_a_flip_across_source_changes_is_a_weaker_signal_and_ranks_lower(store: History, clock: FakeTime) -> None:
    other = "tests/test_io.py::test_read"
    record_runs(store, clock, [{"py-3.11": with_stable(**{WOBBLY: "passed", other: "passed"})}], source="src-1")
    record_runs(store, clock, [{"py-3.11": with_stable(**{WOBBLY: "failed", other: "passed"})}], source="src-2")
    record_runs(store, clock, [{"py-3.11": with_stable(**{WOBBLY: "failed", other: "failed"})}], source="src-2")
    found = flakes.find(store, [SCOPE])
    assert [(f.test, f.same_source, f.flip_rate) for f in found] == [
        (other, True, pytest.approx(1 / 3, abs=1e-3)),  # passed, then failed, on src-2 both: the code did not change
        (WOBBLY, False, pytest.approx(1 / 3, abs=1e-3)),  # passed on src-1 only: the change may have broken it
    ]


def test_the_window_is_the_last_n_runs(store: History, clock: FakeTime) -> None:
    record_runs(store, clock, [{"py-3.11": with_stable(**{WOBBLY: "failed"})}])
    record_runs(store, clock, [{"py-3.11": with_stable(**{WOBBLY: "passed"})}] * 3)
    assert [f.runs for f in flakes.find(store, [SCOPE], last=4)] == [4]
    assert flakes.find(store, [SCOPE], last=3) == []


def test_a_run_where_most_tests_of_a_cell_failed_is_an_incident_and_left_out(store: History, clock: FakeTime) -> None:
    broken = {t: "failed" for t in [*STABLE, WOBBLY]}  # the node lost its network: everything failed
    record_runs(store, clock, [{"py-3.11": with_stable(**{WOBBLY: "passed"}), "py-3.12": with_stable()}])
    record_runs(store, clock, [{"py-3.11": broken, "py-3.12": with_stable()}])
    record_runs(store, clock, [{"py-3.11": with_stable(**{WOBBLY: "passed"}), "py-3.12": with_stable()}])
    assert flakes.find(store, [SCOPE]) == []
    win = flakes.window(store, SCOPE)
    assert [(c.cell, c.failing, c.tests) for c in win.incidents] == [("py-3.11", 7, 7)]
    # a cell with a couple of failures is no incident
    record_runs(store, clock, [{"py-3.11": with_stable(**{WOBBLY: "failed", STABLE[0]: "failed"})}])
    assert {f.test for f in flakes.find(store, [SCOPE])} == {WOBBLY, STABLE[0]}


def test_scopes_are_apart_and_every_scope_is_read_without_one(store: History, clock: FakeTime) -> None:
    record_runs(store, clock, [{"c": with_stable(**{WOBBLY: "flaky"})}], scope="a@p")
    record_runs(store, clock, [{"c": with_stable()}], scope="b@p")
    assert [f.scope for f in flakes.find(store)] == ["a@p"]
    assert flakes.find(store, ["b@p"]) == []
    assert store.ledger_scopes() == ["a@p", "b@p"]


# --- quarantine suggestions and lifts -------------------------------------------------------------------------------


def test_suggestions_are_for_tests_over_the_threshold_with_a_cells_filter_where_they_flake(
    store: History, clock: FakeTime
) -> None:
    other = "tests/test_io.py::test_read"
    runs = [
        {"py-3.11": with_stable(**{WOBBLY: "flaky", other: "passed"}), "py-3.12": with_stable(**{WOBBLY: "passed"})},
        {"py-3.11": with_stable(**{WOBBLY: "passed", other: "flaky"}), "py-3.12": with_stable(**{WOBBLY: "passed"})},
    ]
    record_runs(store, clock, runs)
    found = flakes.find(store, [SCOPE])
    suggested = flakes.suggest(store, found, threshold=0.5)
    assert [(s.test, s.cells) for s in suggested] == [
        (other, ()),  # it ran in py-3.11 only, and flaked there: every cell
        (WOBBLY, (("python", "3.11"),)),  # only where it flakes
    ]
    assert flakes.suggest(store, found, threshold=1.9) == []
    covered = [QuarantineEntry("tests/test_net.py::*")]
    assert [s.test for s in flakes.suggest(store, found, threshold=0.5, entries=covered)] == [other]

    text = flakes.suggestions_yaml(suggested, [])
    path = store.path.parent / "suggested.yaml"
    path.write_text(text)
    assert config.load_quarantine(path) == tuple(
        QuarantineEntry(s.test, s.cells, s.reason) for s in suggested
    )  # --quarantine FILE takes the output as it is
    assert "flip rate" in suggested[1].reason


def test_an_entry_is_ready_to_lift_after_k_passing_runs_in_a_row(store: History, clock: FakeTime) -> None:
    held = QuarantineEntry(WOBBLY, (("python", "3.11"),), "flaky network")
    record_runs(store, clock, [{"py-3.11": with_stable(**{WOBBLY: "flaky"})}])
    record_runs(store, clock, [{"py-3.11": with_stable(**{WOBBLY: "passed"})}] * 4)
    [lift] = flakes.lifts(store, [held], [SCOPE], after=5)
    assert (lift.runs, lift.passed, lift.ready) == (5, 4, False)
    assert lift.tests == (WOBBLY,)
    [lift] = flakes.lifts(store, [held], [SCOPE], after=4)
    assert (lift.runs, lift.passed, lift.ready) == (4, 4, True)
    [lift] = flakes.lifts(store, [held], [SCOPE], after=20)
    assert (lift.runs, lift.ready) == (5, False)  # not enough runs yet
    [other_cell] = flakes.lifts(store, [QuarantineEntry(WOBBLY, (("python", "3.9"),))], [SCOPE], after=1)
    assert (other_cell.runs, other_cell.ready) == (0, False)
    text = flakes.suggestions_yaml([], flakes.lifts(store, [held], [SCOPE], after=4))
    assert f"#   - test: {WOBBLY}  (flaky network)" in text
    assert yaml.safe_load(text) == {"quarantine": []}


# --- matrix-run flakes ----------------------------------------------------------------------------------------------


def test_the_command_prints_json_worst_first(
    store: History, clock: FakeTime, capsys: pytest.CaptureFixture[str]
) -> None:
    record_runs(store, clock, [{"py-3.11": with_stable(**{WOBBLY: r})} for r in ("flaky", "passed", "failed")])
    assert cli.main(["flakes", "--json", "--history", str(store.path)]) == 0
    [item] = json.loads(capsys.readouterr().out)
    assert {k: item[k] for k in ("test", "cell", "runs", "failures", "flaky", "same_source")} == {
        "test": WOBBLY,
        "cell": "py-3.11",
        "runs": 3,
        "failures": 1,
        "flaky": 1,
        "same_source": True,
    }
    assert item["flip_rate"] == 0.667  # F P | P | F F: 2 changes in 3 runs
    assert cli.main(["flakes", "--history", str(store.path)]) == 0
    text = capsys.readouterr().out
    assert WOBBLY in text
    assert "yes (strongest signal)" in text
    assert cli.main(["flakes", "--suggest-quarantine", "--history", str(store.path)]) == 0
    suggested = yaml.safe_load(capsys.readouterr().out)
    assert [e["test"] for e in suggested["quarantine"]] == [WOBBLY]


def test_flakes_of_one_matrix_file_and_its_quarantine(
    tmp_path: Path, store: History, clock: FakeTime, capsys: pytest.CaptureFixture[str]
) -> None:
    project = tmp_path / "proj"
    project.mkdir()
    matrix_file = tmp_path / "m.yaml"
    matrix_file.write_text(
        "name: demo\nproject: proj\nmatrix: {python: ['3.11']}\n"
        f"quarantine:\n  - {{test: '{WOBBLY}', reason: flaky network}}\n"
    )
    record_runs(store, clock, [{"py-3.11": with_stable(**{WOBBLY: "passed"})}] * 2)
    record_runs(store, clock, [{"py-3.11": with_stable(**{WOBBLY: "flaky"})}], scope="other@proj")
    args = ["flakes", "--matrix", str(matrix_file), "--history", str(store.path), "--json"]
    assert cli.main(args) == 0
    assert json.loads(capsys.readouterr().out) == []  # the flaky run is another matrix's
    assert cli.main([*args, "--suggest-quarantine", "--lift-after", "2"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["quarantine"] == []
    assert [(x["test"], x["ready"], x["runs"]) for x in out["lift"]] == [(WOBBLY, True, 2)]


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["--history", "{tmp}/none.sqlite"], "--history {tmp}/none.sqlite: no history store there"),
        (["--last", "0"], "--last must be >= 1"),
        (["--threshold", "3"], "--threshold 3: a flip rate is between 0 and 2"),
        (["--matrix", "{tmp}/missing.yaml"], "{tmp}/missing.yaml: matrix file not found"),
    ],
)
def test_bad_input_is_one_line_and_exit_4(
    tmp_path: Path, store: History, capsys: pytest.CaptureFixture[str], args: list[str], said: str
) -> None:
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    if "--history" not in args:
        args += ["--history", str(store.path)]
    assert cli.main(["flakes", *args]) == 4
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert said.replace("{tmp}", str(tmp_path)) in err


# --- end to end: the faulty sample project, three runs on a real Docker engine and an embedded Ray -------------------

ALWAYS = "tests/test_flaky.py::test_always_fails"
FLAKY_TEST = "tests/test_flaky.py::test_flaky"


@pytest.fixture(scope="module")
def faulty_runs(tmp_path_factory: pytest.TempPathFactory, docker_client: Any) -> dict[str, Any]:
    """Three runs of the faulty project with one history: twice as it is (test_flaky fails on its first attempt
    only, test_always_fails always), then with test_always_fails quarantined by --quarantine FILE."""
    tmp = tmp_path_factory.mktemp("faulty-ledger")
    matrix_file = write_matrix(
        tmp,
        PROJECTS / "faulty",
        tests={"shards": 1, "timeout": 300, "env": {"FAULTY_FLAKY": "1", "FAULTY_FAIL": "1"}},
        retries={"flaky": 1, "infra": 0},
    )
    store = tmp / "history.sqlite"
    held = tmp / "quarantine.yaml"
    held.write_text(f"quarantine:\n  - test: '{ALWAYS}'\n    cells: debian=bookworm\n    reason: fails on purpose\n")
    runs = []
    for i, extra in enumerate([(), (), ("--quarantine", str(held))]):
        out = tmp / f"out{i}"
        proc = run_cli("run", str(matrix_file), "--out", str(out), "--plain", "--history", str(store), *extra)
        runs.append((proc, out))
    flaky = run_cli("flakes", "--json", "--history", str(store))
    suggest = run_cli(
        "flakes",
        "--suggest-quarantine",
        "--matrix",
        str(matrix_file),
        "--quarantine",
        str(held),
        "--history",
        str(store),
    )
    return {"runs": runs, "flakes": flaky, "suggest": suggest, "matrix": matrix_file, "store": store}


@pytest.mark.docker
@pytest.mark.ray
@pytest.mark.slow
def test_the_flaky_test_of_three_runs_is_in_flakes_json(faulty_runs: dict[str, Any]) -> None:
    for proc, out in faulty_runs["runs"][:2]:
        assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
        [cell] = results(out)["cells"]
        assert cell["failed_tests"] == ["tests.test_flaky::test_always_fails"]
        assert cell["flaky_tests"] == ["tests.test_flaky::test_flaky"]
    proc = faulty_runs["flakes"]
    assert proc.returncode == 0, proc.stderr
    print(f"\nmatrix-run flakes --json:\n{proc.stdout}")
    found = json.loads(proc.stdout)
    assert [(f["test"], f["cell"]) for f in found] == [(FLAKY_TEST, "debian-bookworm")]  # always_fails never passed
    [flake] = found
    assert (flake["runs"], flake["failures"], flake["flaky"], flake["same_source"]) == (3, 0, 3, True)
    assert flake["flip_rate"] == pytest.approx(5 / 3, abs=1e-3)  # F P | F P | F P
    suggested = faulty_runs["suggest"]
    assert suggested.returncode == 0, suggested.stderr
    entries = yaml.safe_load(suggested.stdout)["quarantine"]
    assert [e["test"] for e in entries] == [FLAKY_TEST]
    assert f"# still quarantined: {ALWAYS}: passed in 0 of the last 3 run(s)" in suggested.stdout


@pytest.mark.docker
@pytest.mark.ray
@pytest.mark.slow
def test_quarantining_the_always_failing_test_gives_exit_0_with_the_test_marked(
    faulty_runs: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    proc, out = faulty_runs["runs"][2]
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = results(out)
    assert (data["status"], data["exit_code"]) == ("passed", 0)
    [cell] = data["cells"]
    assert cell["status"] == "flaky"  # test_flaky still passed on its rerun; the quarantined failure is set aside
    assert cell["failed_tests"] == []
    assert (cell["failures"], cell["quarantined"]) == (0, 1)
    assert cell["quarantined_tests"] == [
        {
            "test": "tests.test_flaky::test_always_fails",
            "nodeid": ALWAYS,
            "status": "failed",
            "reason": "fails on purpose",
        }
    ]
    assert [s["attempt"] for s in cell["shards"]] == [1, 2]  # it still ran, and was rerun
    case = next(
        c for c in ET.parse(out / "junit.xml").getroot().iter("testcase") if c.get("name") == "test_always_fails"
    )
    skipped = case.find("skipped")
    assert skipped is not None
    assert skipped.get("message", "").startswith("quarantined (fails on purpose): failed: ")
    assert "deliberately failing on attempt 1" in (skipped.text or "")
    summary_md = (out / "summary.md").read_text()
    assert f"`{ALWAYS}` failed (quarantined: fails on purpose)" in summary_md
    assert f"debian-bookworm: quarantined: {ALWAYS} failed (sets no exit code)" in proc.stdout
    page = (out / "report.html").read_text()
    assert "Quarantined tests (1)" in page
    assert "Since the previous run of this matrix" in page
    assert "New failures (0)" in page  # the same failure as the run before, only quarantined now
    if chromium_path() is None and not os.environ.get("CI"):
        return  # the page's own browser tests say so (tests/test_report_page.py)
    browser = Browser()
    try:
        browser.open(out / "report.html")
        assert browser.problems() == []
        browser.click("a.tile[data-cell='debian-bookworm']")
        shown = browser.evaluate("document.querySelector(\"section.detail[data-cell='debian-bookworm']\").innerText")
        assert "deliberately failing on attempt 1" in shown  # its first failure, with the traceback
        shot = browser.screenshot(tmp_path / "faulty-quarantined.png")
    finally:
        browser.close()
    with capsys.disabled():
        print(f"\nreport.html of the quarantined run: {shot}")


def test_a_store_of_an_earlier_schema_gets_the_ledger_and_keeps_its_rows(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "history.sqlite"
    old = History(path)
    old.record("s", "c", [("t.py::a", 1.0)])
    old.close()
    db = sqlite3.connect(path)  # what a store written before the ledger looks like: schema 2, no ledger tables
    db.executescript("DROP TABLE ledger; DROP TABLE ledger_cells; PRAGMA user_version = 2;")
    db.close()

    h = History(path)
    try:
        assert h.db.execute("PRAGMA user_version").fetchone() == (history.SCHEMA_VERSION,)
        assert h.tests("s", "c") == {"t.py": {"t.py::a": 1.0}}
        assert h.record_outcomes("s", "run-1", "src", [cell_of("py-3.11", {"t.py::a": "passed"})]) == 1
        assert h.ledger_runs("s") == ["run-1"]
    finally:
        h.close()
