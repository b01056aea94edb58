"""runner/history.py: the SQLite store of per-test durations and fully passing results, on real files, including
two processes writing to one store at once."""

from __future__ import annotations

import multiprocessing
import sqlite3
import time as real_time
import traceback
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from runner import history
from runner.execution import ShardOutcome
from runner.history import History
from runner.results import Attempt, Case, CellResult, Status, fold, junit_names

DAY = 86400.0
T0 = 1_750_000_000.0


class FakeTime:
    """``runner.history``'s view of the ``time`` module, with a clock the test sets."""

    def __init__(self, now: float) -> None:
        self.now = now

    def time(self) -> float:
        return self.now

    def __getattr__(self, name: str) -> object:
        return getattr(real_time, name)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeTime:
    fake = FakeTime(T0)
    monkeypatch.setattr(history, "time", fake)
    return fake


@pytest.fixture
def store(tmp_path: Path) -> Iterator[History]:
    h = History(tmp_path / "history.sqlite")
    yield h
    h.close()


def all_rows(h: History) -> set[tuple[str, str, str]]:
    return set(h.db.execute("SELECT scope, cell, nodeid FROM durations").fetchall())


# --- durations --------------------------------------------------------------------------------------------------------


def test_record_and_read_back_by_file(store: History) -> None:
    measured = [
        ("tests/test_a.py::test_one", 1.5),
        ("tests/test_a.py::TestK::test_two[x-1]", 2.0),
        ("tests/sub/test_b.py::test_three", 0.25),
    ]

    assert store.record("demo@proj", "python-3.11", measured) == 3

    assert store.tests("demo@proj", "python-3.11") == {
        "tests/test_a.py": {"tests/test_a.py::test_one": 1.5, "tests/test_a.py::TestK::test_two[x-1]": 2.0},
        "tests/sub/test_b.py": {"tests/sub/test_b.py::test_three": 0.25},
    }


def test_nothing_measured_writes_nothing(store: History) -> None:
    assert store.record("s", "c", []) == 0
    assert store.tests("s", "c") == {}
    assert all_rows(store) == set()


def test_the_store_is_a_file_that_outlives_its_handle(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "er" / "history.sqlite"  # missing folders are made
    first = History(path)
    first.record("s", "c", [("t.py::a", 3.0)])
    first.store("k", "s", "c", b"<testsuite/>")
    first.close()

    again = History(path)
    try:
        assert again.tests("s", "c") == {"t.py": {"t.py::a": 3.0}}
        assert again.cached("k") == b"<testsuite/>"
    finally:
        again.close()


def test_rerecording_folds_into_an_exponential_moving_average(store: History) -> None:
    store.record("s", "c", [("t.py::a", 10.0), ("t.py::b", 4.0), ("u.py::c", 3.0)])
    store.record("s", "c", [("t.py::a", 20.0), ("t.py::b", 4.0)])
    w = history.WEIGHT_NEW

    assert store.tests("s", "c") == {
        "t.py": {"t.py::a": pytest.approx(w * 20.0 + (1 - w) * 10.0), "t.py::b": pytest.approx(4.0)},
        "u.py": {"u.py::c": 3.0},  # a file the second run did not measure keeps its numbers
    }
    assert store.tests("s", "c")["t.py"]["t.py::a"] == pytest.approx(17.0)  # WEIGHT_NEW = 0.7

    store.record("s", "c", [("t.py::a", 20.0), ("t.py::b", 4.0)])

    assert store.tests("s", "c")["t.py"]["t.py::a"] == pytest.approx(0.7 * 20.0 + 0.3 * 17.0)


def test_the_moving_average_weight_is_the_module_constant(store: History, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(history, "WEIGHT_NEW", 0.25)
    store.record("s", "c", [("t.py::a", 8.0)])
    store.record("s", "c", [("t.py::a", 16.0)])

    assert store.tests("s", "c") == {"t.py": {"t.py::a": pytest.approx(10.0)}}


def test_a_cell_never_measured_borrows_the_mean_of_its_siblings(store: History) -> None:
    store.record("s", "py3.11", [("t.py::a", 2.0), ("t.py::b", 1.0)])
    store.record("s", "py3.13", [("t.py::a", 4.0), ("u.py::c", 6.0)])

    assert store.tests("s", "py3.9") == {"t.py": {"t.py::a": 3.0, "t.py::b": 1.0}, "u.py": {"u.py::c": 6.0}}
    # a measured cell keeps its own numbers, never mixed with its siblings'
    assert store.tests("s", "py3.11") == {"t.py": {"t.py::a": 2.0, "t.py::b": 1.0}}


def test_scopes_are_isolated(store: History) -> None:
    store.record("ci@proj", "py3.11", [("t.py::a", 2.0)])
    store.record("nightly@proj", "py3.11", [("t.py::a", 50.0), ("t.py::b", 5.0)])

    assert store.tests("ci@proj", "py3.11") == {"t.py": {"t.py::a": 2.0}}
    assert store.tests("nightly@proj", "py3.11") == {"t.py": {"t.py::a": 50.0, "t.py::b": 5.0}}
    # no borrowing across scopes either
    assert store.tests("ci@proj", "py3.13") == {"t.py": {"t.py::a": 2.0}}
    assert store.tests("other@proj", "py3.11") == {}


def test_rows_older_than_max_age_are_dropped_on_write(store: History, clock: FakeTime) -> None:
    store.record("s", "c", [("t.py::old", 1.0), ("t.py::refreshed", 1.0)])
    clock.now = T0 + 30 * DAY
    store.record("s", "c", [("t.py::middle", 1.0), ("t.py::refreshed", 1.0)])
    clock.now = T0 + (history.MAX_AGE_DAYS + 1) * DAY

    store.record("other", "c", [("x.py::new", 1.0)])  # any write ages the whole store

    assert all_rows(store) == {("s", "c", "t.py::middle"), ("s", "c", "t.py::refreshed"), ("other", "c", "x.py::new")}


def test_rows_within_max_age_are_kept(store: History, clock: FakeTime) -> None:
    store.record("s", "c", [("a.py::a", 1.0)])
    clock.now = T0 + (history.MAX_AGE_DAYS - 1) * DAY

    store.record("s", "c", [("b.py::b", 1.0)])  # another file: a.py was not measured, so it is kept

    assert all_rows(store) == {("s", "c", "a.py::a"), ("s", "c", "b.py::b")}


def test_an_incomplete_measurement_forgets_nothing(store: History) -> None:
    store.record("s", "c", [("t.py::a", 1.0), ("t.py::b", 2.0)])

    store.record("s", "c", [("t.py::a", 1.0)], complete=False)  # e.g. a cancelled cell

    assert all_rows(store) == {("s", "c", "t.py::a"), ("s", "c", "t.py::b")}


def test_max_rows_drops_the_oldest_rows(store: History, clock: FakeTime, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(history, "MAX_ROWS", 5)
    store.record("s", "old", [(f"t.py::o{i}", 1.0) for i in range(3)])
    clock.now += 60

    store.record("s", "new", [(f"t.py::n{i}", 1.0) for i in range(4)])

    rows = all_rows(store)
    assert len(rows) == 5
    assert {("s", "new", f"t.py::n{i}") for i in range(4)} <= rows
    assert sum(cell == "old" for _, cell, _ in rows) == 1


def test_max_rows_bounds_one_large_write(store: History, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(history, "MAX_ROWS", 7)

    store.record("s", "c", [(f"t.py::a{i}", 1.0) for i in range(20)])
    store.record("s2", "c", [(f"t.py::b{i}", 1.0) for i in range(3)])

    assert len(all_rows(store)) == 7


def test_a_renamed_test_does_not_inflate_its_file(store: History, clock: FakeTime) -> None:
    # parametrize ids holding the time differ on every run (DESIGN.md): each run measures the same 5 s
    store.record("s", "c", [("t.py::test_t[1750000000]", 5.0), ("t.py::test_u", 1.0)])
    clock.now += DAY
    store.record("s", "c", [("t.py::test_t[1750086400]", 5.0), ("t.py::test_u", 1.0)])

    assert sum(store.tests("s", "c")["t.py"].values()) == pytest.approx(6.0)


# --- results ----------------------------------------------------------------------------------------------------------


def test_results_round_trip(store: History) -> None:
    suite = b'<testsuite name="py3.11"><testcase classname="t" name="a"/></testsuite>'

    store.store("key-1", "s", "py3.11", suite)

    assert store.cached("key-1") == suite
    assert store.cached("key-2") is None


def test_storing_a_key_again_replaces_it(store: History) -> None:
    store.store("key-1", "s", "c", b"first")
    store.store("key-1", "s", "c", b"second")

    assert store.cached("key-1") == b"second"
    assert store.db.execute("SELECT COUNT(*) FROM results").fetchone() == (1,)


def test_max_cached_keeps_the_newest_results(store: History, clock: FakeTime, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(history, "MAX_CACHED", 3)
    for i in range(5):
        clock.now = T0 + i
        store.store(f"k{i}", "s", "c", f"suite {i}".encode())

    assert [store.cached(f"k{i}") for i in range(5)] == [None, None, b"suite 2", b"suite 3", b"suite 4"]

    clock.now = T0 + 10
    store.store("k0", "s", "c", b"suite 0 again")  # stored anew: now the newest

    assert [store.cached(f"k{i}") for i in range(5)] == [b"suite 0 again", None, None, b"suite 3", b"suite 4"]


# --- two runs finishing at once ---------------------------------------------------------------------------------------

ROWS_PER_PROCESS = 3000
BATCH = 100


def batch_file(who: int, first: int) -> str:
    return f"tests/test_{who}_{first:05d}.py"


def _finish_a_run(path: str, who: int, start: Any, errors: Any) -> None:
    """One run's end, in its own process: its own History on the shared file, thousands of rows in batches."""
    try:
        start.wait(timeout=120)
        h = History(Path(path))
        try:
            for first in range(0, ROWS_PER_PROCESS, BATCH):
                start.wait(timeout=120)  # both processes write each batch at the same moment
                measured = [
                    (f"{batch_file(who, first)}::test_{i:05d}", who + i / 1000) for i in range(first, first + BATCH)
                ]
                h.record("demo@proj", f"cell-{who}", measured)
                h.record("demo@proj", "shared-cell", [(f"tests/test_s{who}_{first:05d}.py::test", 1.0)])
                h.store(f"key-{who}-{first}", "demo@proj", f"cell-{who}", f"suite {who} {first}".encode())
                h.tests("demo@proj", "shared-cell")  # a reader among the writers
        finally:
            h.close()
        errors.put((who, ""))
    except BaseException:
        start.abort()  # the other process stops waiting for this one
        errors.put((who, traceback.format_exc()))


def run_two_processes(target: Any, *args: object) -> list[tuple[int, str]]:
    """Run ``target(*args, who, barrier, errors)`` in two spawned processes; each reports (who, traceback or "")."""
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(2)
    errors = ctx.Queue()
    procs = [ctx.Process(target=target, args=(*args, who, start, errors)) for who in (1, 2)]
    for p in procs:
        p.start()
    try:
        outcomes = [errors.get(timeout=300) for _ in procs]
    finally:
        for p in procs:
            p.join(timeout=60)
    assert [p.exitcode for p in procs] == [0, 0]
    return sorted(outcomes)


def assert_both_runs_landed(path: Path) -> None:
    h = History(path)
    try:
        for who in (1, 2):
            got = h.tests("demo@proj", f"cell-{who}")
            expected = {
                batch_file(who, first): pytest.approx(
                    {f"{batch_file(who, first)}::test_{i:05d}": who + i / 1000 for i in range(first, first + BATCH)}
                )
                for first in range(0, ROWS_PER_PROCESS, BATCH)
            }
            assert got == expected
            assert all(
                h.cached(f"key-{who}-{first}") == f"suite {who} {first}".encode()
                for first in range(0, ROWS_PER_PROCESS, BATCH)
            )
        shared = h.tests("demo@proj", "shared-cell")
        assert len(shared) == 2 * ROWS_PER_PROCESS // BATCH
        rows = h.db.execute("SELECT cell, COUNT(*) FROM durations GROUP BY cell ORDER BY cell").fetchall()
        assert rows == [("cell-1", ROWS_PER_PROCESS), ("cell-2", ROWS_PER_PROCESS), ("shared-cell", len(shared))]
    finally:
        h.close()


def test_two_processes_recording_into_one_store_at_once(tmp_path: Path) -> None:
    path = tmp_path / "history.sqlite"
    History(path).close()  # the store exists already (an earlier run made it)

    outcomes = run_two_processes(_finish_a_run, str(path))

    assert outcomes == [(1, ""), (2, "")]
    assert_both_runs_landed(path)


def _create_stores(paths: list[str], who: int, start: Any, errors: Any) -> None:
    """One run's start, in its own process, on each of ``paths``: a brand-new store that another run opens too."""
    failures = []
    for path in paths:
        try:
            start.wait(timeout=120)
            h = History(Path(path))
            try:
                h.record("demo@proj", f"cell-{who}", [(f"t.py::test_{who}", float(who))])
            finally:
                h.close()
        except BaseException:
            failures.append(f"{path}: {traceback.format_exc()}")
    errors.put((who, "\n".join(failures)))


def test_two_processes_creating_the_store_at_once(tmp_path: Path) -> None:
    paths = [tmp_path / f"run{i}" / "history.sqlite" for i in range(60)]  # each a brand-new store, opened by both

    outcomes = run_two_processes(_create_stores, [str(p) for p in paths])

    assert outcomes == [(1, ""), (2, "")]
    for path in paths:
        h = History(path)
        try:
            assert h.tests("demo@proj", "cell-1") == {"t.py": {"t.py::test_1": 1.0}}
            assert h.tests("demo@proj", "cell-2") == {"t.py": {"t.py::test_2": 2.0}}
        finally:
            h.close()


# --- what a finished cell teaches the planner: file walls and the per-shard fixed cost -------------------------------


def case(nodeid: str, seconds: float, status: Status = Status.PASSED) -> Case:
    classname, name = junit_names(nodeid)
    return Case(classname, name, status, seconds, ET.Element("testcase"), nodeid)


def attempt(
    shard: str,
    number: int = 1,
    kind: str = "ok",
    wall: float = 0.0,
    walls: dict[str, float] | None = None,
    cases: list[Case] | None = None,
    collected: list[str] | None = None,
    order: list[str] | None = None,
    rootdir: str = "",
    planned: tuple[str, ...] = (),
) -> Attempt:
    cases = cases or []
    finished = {c.nodeid for c in cases if c.nodeid}
    return Attempt(
        shard=shard,
        attempt=number,
        kind=kind,
        reason="",
        cases=cases,
        collected=collected if collected is not None else sorted(finished),
        finished=finished,
        running=None,
        outcome=ShardOutcome("c", shard, number, 0 if kind == "ok" else None),
        wall=wall,
        order=order or [],
        rootdir=rootdir,
        file_walls=walls or {},
        planned=planned,
    )


def cell_of(*attempts: Attempt) -> CellResult:
    tests = fold(attempts)
    return CellResult("c", {}, Status.PASSED, "", tests, list(attempts), 0.0)


def two_shard_cell() -> CellResult:
    """Shard 1 runs a.py and the first half of split.py, shard 2 the rest of split.py; b.py fails once, then passes."""
    a = [case("a.py::t1", 1.0), case("a.py::t2", 2.0)]
    split = [case(f"split.py::t{k}", 1.0) for k in range(4)]
    order = ["a.py::t1", "a.py::t2", *(c.nodeid or "" for c in split)]
    return cell_of(
        attempt("shard-1of2", wall=10.0, walls={"a.py": 3.5, "split.py": 2.5}, cases=[*a, *split[:2]], order=order),
        attempt(
            "shard-2of2",
            wall=6.0,
            walls={"split.py": 2.0, "b.py": 1.0},
            cases=[*split[2:], case("b.py::f", 0.5, Status.FAILED)],
        ),
        attempt("shard-2of2", number=2, wall=3.0, walls={"b.py": 0.6}, cases=[case("b.py::f", 0.6)]),
    )


def test_file_walls_sum_a_split_file_over_its_shards_and_ignore_reruns() -> None:
    assert history.measured_file_walls(two_shard_cell()) == {"a.py": 3.5, "b.py": 1.0, "split.py": 4.5}


def test_fixed_cost_is_the_median_of_first_attempts_wall_minus_their_file_walls() -> None:
    # shard 1: 10 - 6 = 4; shard 2: 6 - 3 = 3; the rerun does not count
    assert history.measured_fixed_cost(two_shard_cell()) == pytest.approx(3.5)
    assert history.measured_fixed_cost(cell_of(attempt("shard-1of1", wall=0.0, walls={"a.py": 1.0}))) is None
    assert history.measured_fixed_cost(cell_of(attempt("shard-1of1", kind="timeout", wall=9.0))) is None
    # walls longer than the wall (clocks of two machines): never a negative cost
    assert history.measured_fixed_cost(cell_of(attempt("shard-1of1", wall=1.0, walls={"a.py": 1.2}))) == 0.0


def test_files_cut_short_are_not_measured() -> None:
    order = ["split.py::t0", "split.py::t1", "split.py::t2"]
    cell = cell_of(
        # shard 1 ran its part of split.py and all of a.py
        attempt(
            "shard-1of2",
            wall=5.0,
            walls={"split.py": 1.0, "a.py": 2.0},
            cases=[case("split.py::t0", 1.0), case("a.py::t", 2.0)],
            order=[*order, "a.py::t"],
        ),
        # shard 2 (the rest of split.py, and c.py) timed out: neither file is whole
        attempt(
            "shard-2of2",
            kind="timeout",
            wall=9.0,
            walls={"split.py": 1.0, "c.py": 3.0},
            cases=[case("split.py::t1", 1.0), case("c.py::x", 3.0)],
            collected=["split.py::t1", "split.py::t2", "c.py::x", "c.py::y"],
            order=order,
        ),
    )

    assert history.measured_file_walls(cell) == {"a.py": 2.0}


def test_a_cancelled_part_of_a_split_file_leaves_the_file_unmeasured() -> None:
    order = [f"split.py::t{k}" for k in range(4)]
    # only shard 1 ran (shard 2 was cancelled before it started): its order shows the file has four tests
    cell = cell_of(
        attempt(
            "shard-1of2",
            wall=4.0,
            walls={"split.py": 2.0},
            cases=[case("split.py::t0", 1.0), case("split.py::t1", 1.0)],
            order=order,
        )
    )

    assert history.measured_file_walls(cell) == {}


def test_a_file_given_to_a_shard_that_ran_none_of_its_tests_is_measured_at_zero() -> None:
    """packaging's ``-m "not property"``: 18 files whose every test is deselected. Weighed by their test
    definitions they made a 57 s cell look like 80 s, over the shard target: split in two for nothing."""
    cell = cell_of(
        attempt(
            "shard-1of2",
            wall=4.0,
            walls={"a.py": 2.0},
            cases=[case("a.py::t", 2.0)],
            planned=("a.py", "property/test_slow.py", "skipped_at_import.py"),
        ),
        # a shard that timed out proves nothing of the files it was given
        attempt("shard-2of2", kind="timeout", wall=9.0, collected=[], planned=("c.py",)),
    )

    assert history.measured_file_walls(cell) == {"a.py": 2.0, "property/test_slow.py": 0.0, "skipped_at_import.py": 0.0}


def test_file_walls_are_project_relative_under_a_rootdir() -> None:
    cell = cell_of(
        attempt(
            "shard-1of1", wall=3.0, walls={"sub/tests/t.py": 1.0}, cases=[case("tests/t.py::a", 1.0)], rootdir="sub"
        )
    )

    assert history.measured_file_walls(cell) == {"sub/tests/t.py": 1.0}


def test_measured_durations_match_the_summarys() -> None:

    cell = two_shard_cell()

    assert ("b.py::f", 0.5, 0) in history.measured_durations(cell)  # the first attempt's time stands


def test_record_cell_stores_durations_walls_and_fixed_cost(store: History) -> None:
    recorded = store.record_cell("demo@proj", "c", two_shard_cell())

    assert (recorded.durations, recorded.files) == (7, 3)
    assert recorded.fixed_cost == pytest.approx(3.5)
    assert store.tests("demo@proj", "c")["split.py"] == {f"split.py::t{k}": 1.0 for k in range(4)}
    assert store.file_walls("demo@proj", "c") == {"a.py": 3.5, "b.py": 1.0, "split.py": 4.5}
    assert store.fixed_cost("demo@proj", "c") == pytest.approx(3.5)


def test_record_cell_of_a_cell_that_measured_nothing_writes_nothing(store: History) -> None:
    assert store.record_cell("s", "c", cell_of(attempt("shard-1of1", kind="infra"))) == (0, 0, None)
    for table in ("durations", "file_walls", "fixed_costs"):
        assert store.db.execute(f"SELECT COUNT(*) FROM {table}").fetchone() == (0,)


def test_walls_and_fixed_costs_fold_into_a_moving_average(store: History) -> None:
    store.record_walls("s", "c", {"a.py": 10.0}, 2.0)
    store.record_walls("s", "c", {"a.py": 20.0, "b.py": 1.0}, 4.0)
    w = history.WEIGHT_NEW

    assert store.file_walls("s", "c") == {"a.py": pytest.approx(w * 20 + (1 - w) * 10), "b.py": 1.0}
    assert store.fixed_cost("s", "c") == pytest.approx(w * 4 + (1 - w) * 2)


def test_a_cell_never_measured_borrows_walls_and_fixed_cost_from_its_siblings(store: History) -> None:
    store.record_walls("s", "py3.11", {"a.py": 2.0, "b.py": 1.0}, 1.0)
    store.record_walls("s", "py3.13", {"a.py": 4.0}, 3.0)

    assert store.file_walls("s", "py3.9") == {"a.py": 3.0, "b.py": 1.0}
    assert store.fixed_cost("s", "py3.9") == pytest.approx(2.0)
    assert store.file_walls("s", "py3.11") == {"a.py": 2.0, "b.py": 1.0}  # its own, never mixed
    assert store.fixed_cost("other", "py3.9") is None  # nothing in that scope: the planner's cold constant
    assert store.file_walls("other", "py3.9") == {}
    assert store.measured_cells("s") == {"py3.11", "py3.13"}


def test_file_walls_age_out_and_stay_bounded(store: History, clock: FakeTime, monkeypatch: pytest.MonkeyPatch) -> None:
    store.record_walls("s", "old", {"a.py": 1.0}, 1.0)
    clock.now = T0 + (history.MAX_AGE_DAYS + 1) * DAY
    store.record_walls("s", "new", {"b.py": 1.0}, 1.0)

    assert store.db.execute("SELECT cell FROM file_walls").fetchall() == [("new",)]
    assert store.db.execute("SELECT cell FROM fixed_costs").fetchall() == [("new",)]

    monkeypatch.setattr(history, "MAX_ROWS", 3)
    clock.now += 1
    store.record_walls("s", "new", {f"f{i}.py": 1.0 for i in range(5)})
    assert store.db.execute("SELECT COUNT(*) FROM file_walls").fetchone() == (3,)


OLD_SCHEMA = """
CREATE TABLE durations (
    scope TEXT NOT NULL, cell TEXT NOT NULL, nodeid TEXT NOT NULL, file TEXT NOT NULL,
    seconds REAL NOT NULL, updated REAL NOT NULL,
    PRIMARY KEY (scope, cell, nodeid)
);
CREATE INDEX durations_by_cell ON durations (scope, cell);
CREATE TABLE results (
    key TEXT PRIMARY KEY, scope TEXT NOT NULL, cell TEXT NOT NULL, suite BLOB NOT NULL, created REAL NOT NULL
);
"""


def test_a_store_written_by_an_older_matrix_run_is_upgraded_in_place(tmp_path: Path) -> None:
    path = tmp_path / "history.sqlite"
    db = sqlite3.connect(path)
    db.executescript(OLD_SCHEMA)
    db.execute("INSERT INTO durations VALUES ('s', 'c', 't.py::a', 't.py', 3.0, ?)", (real_time.time(),))
    db.execute("INSERT INTO results VALUES ('k', 's', 'c', x'00', 1.0)")
    db.commit()
    db.close()

    h = History(path)
    try:
        assert h.tests("s", "c") == {"t.py": {"t.py::a": 3.0}}
        assert h.cached("k") == b"\0"
        assert h.db.execute("PRAGMA user_version").fetchone() == (history.SCHEMA_VERSION,)
        h.record_cell("s", "c", two_shard_cell())
        assert h.fixed_cost("s", "c") == pytest.approx(3.5)
    finally:
        h.close()
    again = History(path)  # opening an upgraded store again changes nothing
    try:
        assert again.file_walls("s", "c") == {"a.py": 3.5, "b.py": 1.0, "split.py": 4.5}
    finally:
        again.close()


def test_an_older_matrix_run_still_uses_an_upgraded_store(tmp_path: Path) -> None:
    path = tmp_path / "history.sqlite"
    h = History(path)
    h.record_walls("s", "c", {"t.py": 2.0}, 1.0)
    h.close()

    db = sqlite3.connect(path)  # what the older code does: its own schema script, then its queries
    old = OLD_SCHEMA.replace("CREATE TABLE", "CREATE TABLE IF NOT EXISTS")
    db.executescript(old.replace("CREATE INDEX", "CREATE INDEX IF NOT EXISTS"))
    db.execute(
        "INSERT INTO durations (scope, cell, nodeid, file, seconds, updated) "
        "VALUES ('s', 'c', 't.py::a', 't.py', 1.0, ?)",
        (real_time.time(),),
    )
    db.commit()
    assert db.execute("SELECT file, seconds FROM durations").fetchall() == [("t.py", 1.0)]
    db.close()

    again = History(path)
    try:
        assert again.tests("s", "c") == {"t.py": {"t.py::a": 1.0}}
        assert again.file_walls("s", "c") == {"t.py": 2.0}
    finally:
        again.close()


def _record_cells(path: str, who: int, start: Any, errors: Any) -> None:
    try:
        start.wait(timeout=120)
        h = History(Path(path))
        try:
            for i in range(200):
                h.record_walls("demo@proj", f"cell-{who}", {f"t{i}.py": float(who)}, float(who))
                h.record_walls("demo@proj", "shared", {f"s{who}_{i}.py": 1.0}, 1.0)
                h.file_walls("demo@proj", "shared")
        finally:
            h.close()
        errors.put((who, ""))
    except BaseException:
        start.abort()
        errors.put((who, traceback.format_exc()))


def test_two_processes_recording_walls_at_once(tmp_path: Path) -> None:
    path = tmp_path / "history.sqlite"

    outcomes = run_two_processes(_record_cells, str(path))

    assert outcomes == [(1, ""), (2, "")]
    h = History(path)
    try:
        for who in (1, 2):
            assert h.file_walls("demo@proj", f"cell-{who}") == {f"t{i}.py": float(who) for i in range(200)}
            assert h.fixed_cost("demo@proj", f"cell-{who}") == pytest.approx(float(who))
        assert len(h.file_walls("demo@proj", "shared")) == 400
    finally:
        h.close()
