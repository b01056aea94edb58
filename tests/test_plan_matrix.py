"""runner/plan.py for the whole matrix: ``tests.shards: auto`` sized for the slots the run has, from each cell's
work (measured file walls, else scaled JUnit times, else test counts) and its shards' fixed cost, by simulating
the coordinator's longest-first start order. Pure: no Docker, no Ray."""

from __future__ import annotations

import itertools
import random
import textwrap
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from runner import plan
from runner.history import History
from tests.conftest import write_matrix
from tests.test_plan_split import assert_exactly_once

F = plan.COLD_FIXED_COST


def cell(
    cid: str,
    work: float,
    files: int = 12,
    fixed: float = F,
    shards: int | None = None,
    group: str = "",
    tests_per_file: int = 0,
) -> plan.CellWork:
    """A cell of ``files`` equal files adding up to ``work`` seconds (optionally with known tests per file)."""
    each = work / files
    tf = tuple(plan.TestFile(f"tests/test_{j:03d}.py", each) for j in range(files))
    tests = {
        f.path: {f"{f.path}::test_{k:03d}": each / tests_per_file for k in range(tests_per_file)}
        for f in tf
        if tests_per_file
    }
    return plan.CellWork(cid, tf, tests, fixed, shards, group)


def counts_of(sized: plan.MatrixPlan, works: Sequence[plan.CellWork]) -> list[int]:
    return [len(sized.layouts[w.cell_id]) for w in works]


def fixed_counts(works: Sequence[plan.CellWork], counts: Sequence[int]) -> list[plan.CellWork]:
    return [
        plan.CellWork(w.cell_id, w.files, w.tests, w.fixed_cost, n, w.group) for w, n in zip(works, counts, strict=True)
    ]


def makespan_with(works: Sequence[plan.CellWork], counts: Sequence[int], slots: int) -> float:
    return plan.size_shards(fixed_counts(works, counts), slots).makespan


# --- the simulation -------------------------------------------------------------------------------------------------


def test_simulate_is_the_coordinators_longest_first_order() -> None:
    # 7, 5 start at once; 4 goes where 5 ends (at 5), 3 where 7 ends (at 7); 2 where 4 ends (at 9)
    assert plan.simulate([3, 5, 2, 7, 4], 2) == 11
    assert plan.simulate([3, 5, 2, 7, 4], 1) == 21
    assert plan.simulate([3, 5, 2, 7, 4], 9) == 7
    assert plan.simulate([], 4) == 0


def test_the_schedule_holds_every_shard_once_and_ends_at_the_makespan() -> None:
    works = [cell(f"c{i}", 10.0 + 3 * i) for i in range(5)]

    sized = plan.size_shards(works, 3)

    times = {
        (w.cell_id, k): lay.predicted + w.fixed_cost
        for w in works
        for k, lay in enumerate(sized.layouts[w.cell_id], start=1)
    }
    assert set(sized.schedule) == set(times)
    ends = [start + times[key] for key, (_, start) in sized.schedule.items()]
    assert max(ends) == pytest.approx(sized.makespan)
    assert sized.makespan == pytest.approx(plan.simulate(times.values(), 3))
    for slot in range(3):  # no slot runs two shards at once
        spans = sorted((start, start + times[key]) for key, (s, start) in sized.schedule.items() if s == slot)
        assert all(a[1] <= b[0] + 1e-9 for a, b in itertools.pairwise(spans))


# --- the cases the brief names ----------------------------------------------------------------------------------------


def test_three_equal_cells_on_two_slots_split_one_cell_only() -> None:
    # pygments across three Pythons: ~13 s of walls per cell, two slots: one shard per cell leaves a slot idle for
    # a whole cell; splitting every cell only adds fixed costs
    works = [cell(f"py3.{v}", 13.0) for v in (9, 11, 13)]

    sized = plan.size_shards(works, 2)

    assert sorted(counts_of(sized, works)) == [1, 1, 2]
    assert counts_of(sized, works) == [2, 1, 1]  # ties go to the first cell of the matrix
    assert sized.makespan < makespan_with(works, [1, 1, 1], 2) - 3
    assert sized.makespan < makespan_with(works, [2, 2, 2], 2)
    assert sized.makespan == pytest.approx(13 + F + 13 / 2 + F)


def test_cells_small_next_to_their_fixed_cost_stay_whole() -> None:
    tiny = [cell(f"c{i}", 0.3, files=3) for i in range(4)]
    assert counts_of(plan.size_shards(tiny, 2), tiny) == [1, 1, 1, 1]
    assert counts_of(plan.size_shards(tiny, 16), tiny) == [1, 1, 1, 1]  # idle slots do not change that

    alone = [cell("c", 1.0, files=4)]
    assert counts_of(plan.size_shards(alone, 2), alone) == [1]


def test_one_cell_on_two_slots_splits_in_two_when_its_work_is_well_above_twice_the_fixed_cost() -> None:
    works = [cell("c", 5 * F)]

    sized = plan.size_shards(works, 2)

    assert counts_of(sized, works) == [2]
    assert sized.makespan == pytest.approx(5 * F / 2 + F)


def test_two_equal_cells_on_four_slots_both_split() -> None:
    # splitting one of them shortens nothing (the other still ends last); splitting both halves the matrix
    works = [cell("a", 20.0), cell("b", 20.0)]

    sized = plan.size_shards(works, 4)

    assert counts_of(sized, works) == [2, 2]
    assert sized.makespan == pytest.approx(10 + F)


def test_a_long_cell_on_a_wide_cluster_is_cut_until_shards_stop_paying() -> None:
    works = [cell("c", 120.0, files=120)]

    sized = plan.size_shards(works, 64)

    n = counts_of(sized, works)[0]
    assert 10 <= n <= 64
    more = makespan_with(works, [n + 1], 64)
    assert sized.makespan - more <= max(plan.MIN_GAIN_SECONDS, plan.MIN_GAIN_FRACTION * sized.makespan)


def test_no_cell_gets_more_shards_than_slots_or_files() -> None:
    few = [cell("few-files", 300.0, files=3)]
    many = [cell("many-files", 300.0, files=100)]

    assert counts_of(plan.size_shards(few, 8), few) == [3]
    assert counts_of(plan.size_shards(many, 8), many) == [8]


def test_a_cell_with_known_tests_can_get_more_shards_than_files() -> None:
    works = [cell("c", 60.0, files=2, tests_per_file=20)]

    sized = plan.size_shards(works, 8)

    assert counts_of(sized, works) == [8]
    assert all(lay.only or lay.skip for lay in sized.layouts["c"])  # both files cut by test id
    assert len(plan.size_shards(works, 8, split_files=False).layouts["c"]) == 2


def test_explicit_shard_counts_are_untouched() -> None:
    works = [cell("fixed-one", 20.0, shards=1), cell("fixed-five", 1.0, shards=5, files=6), cell("auto", 100.0)]

    sized = plan.size_shards(works, 8)

    assert counts_of(sized, works)[:2] == [1, 5]
    assert counts_of(sized, works)[2] > 1
    # the fixed cells still take their slots in the simulation
    assert sized.makespan >= 20.0 + F
    assert len(sized.schedule) == sum(counts_of(sized, works))


def test_the_shard_target_forces_more_shards_for_a_long_cell() -> None:
    # on two slots the long cell fits next to the 400 s one, under the 1000 s one: cutting it gains nothing
    works = [cell("long", 600.0, files=60), cell("busy", 1000.0, shards=1), cell("short", 400.0, shards=1)]

    assert counts_of(plan.size_shards(works, 2), works)[0] == 1
    assert counts_of(plan.size_shards(works, 2, shard_target=60.0), works)[0] == 2  # ceil(600 / 60), capped by slots
    assert counts_of(plan.size_shards(works, 16, shard_target=60.0), works)[0] >= 10


def test_the_fixed_cost_decides_whether_a_cell_splits() -> None:
    cheap = [cell("c", 6.0, fixed=1.0)]
    dear = [cell("c", 6.0, fixed=15.0)]

    assert counts_of(plan.size_shards(cheap, 2), cheap) == [2]
    assert counts_of(plan.size_shards(dear, 2), dear) == [1]


def test_the_plan_never_predicts_worse_than_one_shard_per_cell() -> None:
    rng = random.Random(7)
    for _ in range(40):
        slots = rng.randint(1, 12)
        works = [
            cell(f"c{i}", rng.uniform(0.1, 80.0), files=rng.randint(1, 15), fixed=rng.uniform(0.5, 4.0))
            for i in range(rng.randint(1, 9))
        ]
        sized = plan.size_shards(works, slots)
        counts = counts_of(sized, works)
        assert sized.makespan <= makespan_with(works, [1] * len(works), slots) + 1e-9
        assert all(1 <= n <= min(slots, len(w.files)) for n, w in zip(counts, works, strict=True))
        for w in works:  # every file of a cell in exactly one of its shards
            placed = Counter(f for lay in sized.layouts[w.cell_id] for f in lay.files)
            assert placed == Counter(f.path for f in w.files)


def test_the_plan_depends_only_on_its_inputs() -> None:
    rng = random.Random(11)
    works = [cell(f"c{i}", rng.uniform(1.0, 60.0), files=rng.randint(1, 20), tests_per_file=3) for i in range(12)]
    first = plan.size_shards(works, 6)

    again = plan.size_shards([plan.CellWork(**vars(w)) for w in works], 6)

    assert again == first
    shuffled = [
        plan.CellWork(w.cell_id, tuple(rng.sample(w.files, len(w.files))), w.tests, w.fixed_cost) for w in works
    ]
    assert counts_of(plan.size_shards(shuffled, 6), works) == counts_of(first, works)


def test_cells_of_one_group_share_layouts_and_get_the_same_plan_as_without() -> None:
    grouped = [cell(f"c{i}", 13.0, group="borrowed") for i in range(3)]
    single = [cell(f"c{i}", 13.0) for i in range(3)]

    assert counts_of(plan.size_shards(grouped, 2), grouped) == counts_of(plan.size_shards(single, 2), single)


# --- predicted work per file ------------------------------------------------------------------------------------------


def test_file_walls_are_preferred_over_junit_sums() -> None:
    files = ["a.py", "b.py", "c.py"]
    counts = {"a.py": 4, "b.py": 2, "c.py": 5}
    tests = {"a.py": {"a.py::t1": 2.0, "a.py::t2": 2.0}, "b.py": {"b.py::t": 1.0}}
    walls = {"a.py": 6.0}  # a.py: 4 s by JUnit, 6 s by the walls: the cell's ratio is 1.5

    estimates, basis = plan.predict_work(files, counts, tests, walls)

    by_file = {e.path: e.weight for e in estimates}
    assert by_file["a.py"] == pytest.approx(6.0)  # its own wall
    assert by_file["b.py"] == pytest.approx(1.0 * 1.5)  # JUnit sum x the cell's wall/JUnit ratio
    # never measured: its test count x the mean seconds per test of the measured files (7.5 s / 6 tests)
    assert by_file["c.py"] == pytest.approx(5 * 7.5 / 6)
    assert basis == plan.BASIS_WALLS


def test_work_without_walls_rests_on_junit_times_and_without_history_on_test_counts() -> None:
    files = ["a.py", "b.py"]
    counts = {"a.py": 3, "b.py": 7}

    junit, basis = plan.predict_work(files, counts, {"a.py": {"a.py::t": 3.0}})
    cold, cold_basis = plan.predict_work(files, counts)

    assert [e.weight for e in junit] == pytest.approx([3.0, 7.0])  # ratio 1 when no wall is known
    assert basis == plan.BASIS_DURATIONS
    assert [e.weight for e in cold] == pytest.approx(
        [3 * plan.SECONDS_PER_UNKNOWN_TEST, 7 * plan.SECONDS_PER_UNKNOWN_TEST]
    )
    assert cold_basis == plan.BASIS_COUNTS


def test_an_implausible_wall_ratio_is_bounded() -> None:
    estimates, _ = plan.predict_work(
        ["a.py", "b.py"], {"a.py": 1, "b.py": 1}, {"a.py": {"a.py::t": 0.01}, "b.py": {"b.py::t": 1.0}}, {"a.py": 50.0}
    )

    assert estimates[1].weight == pytest.approx(plan.WALL_RATIO_BOUNDS[1] * 1.0)


# --- plan_matrix: the matrix file, the history, the slots ------------------------------------------------------------

PYTHONS = ["3.9", "3.11", "3.13"]


def project(tmp_path: Path, files: int = 12, tests_per_file: int = 4) -> Path:
    root = tmp_path / "proj"
    (root / "tests").mkdir(parents=True)
    for j in range(files):
        body = "".join(f"def test_{k}():\n    pass\n\n" for k in range(tests_per_file))
        (root / "tests" / f"test_{j:02d}.py").write_text(textwrap.dedent(body))
    return root


def matrix_file(tmp_path: Path, root: Path, shards: object = "auto", pythons: Sequence[str] = PYTHONS) -> Path:
    return write_matrix(
        tmp_path,
        root,
        matrix={"python": list(pythons)},
        image={"base": "python:{python}-slim"},
        tests={"shards": shards, "paths": ["tests"]},
    )


def measure(store: History, scope: str, cell_id: str, root: Path, seconds: float, fixed: float | None) -> None:
    """What a run of ``cell_id`` would record: each test ``seconds`` by JUnit, 1.5x that as walls."""
    files = sorted(p.relative_to(root).as_posix() for p in (root / "tests").glob("test_*.py"))
    durations = [(f"{f}::test_{k}", seconds, k) for f in files for k in range(4)]
    store.record(scope, cell_id, durations)
    store.record_walls(scope, cell_id, {f: 4 * seconds * 1.5 for f in files}, fixed)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[History]:
    h = History(tmp_path / "history.sqlite")
    yield h
    h.close()


def test_plan_matrix_sizes_the_pygments_case_from_measured_walls(tmp_path: Path, store: History) -> None:
    root = project(tmp_path)
    path = matrix_file(tmp_path, root)
    scope = plan.history_scope(plan.config.load(str(path)))
    for v in PYTHONS:  # 12 files x 4 tests x 0.15 s by JUnit = 7.2 s; 10.8 s of walls; 2.5 s per shard on top
        measure(store, scope, f"python-{v}", root, 0.15, 2.5)

    planned = plan.plan_matrix(str(path), [], history=store, slots=2)

    assert [len(planned.shards[c.id]) for c in planned.cells] == [2, 1, 1]
    assert planned.slots == 2
    assert planned.basis == {c.id: plan.BASIS_WALLS for c in planned.cells}
    assert planned.fixed_costs == {c.id: pytest.approx(2.5) for c in planned.cells}
    assert planned.auto == {c.id for c in planned.cells}
    whole = planned.shards["python-3.11"][0]
    assert whole.predicted == pytest.approx(12 * 4 * 0.15 * 1.5 + 2.5)  # walls + fixed cost
    assert planned.makespan == pytest.approx(
        plan.simulate([s.predicted for ss in planned.shards.values() for s in ss], 2)
    )
    assert set(planned.schedule) == {s.id for ss in planned.shards.values() for s in ss}


def test_plan_matrix_takes_the_fixed_cost_from_history_else_the_cold_constant(tmp_path: Path, store: History) -> None:
    root = project(tmp_path)
    path = matrix_file(tmp_path, root, pythons=["3.11"])
    scope = plan.history_scope(plan.config.load(str(path)))

    cold = plan.plan_matrix(str(path), [], history=store, slots=2)
    measure(store, scope, "python-3.11", root, 0.1, 20.0)  # 7.2 s of walls, 20 s per shard: not worth a split
    warm = plan.plan_matrix(str(path), [], history=store, slots=2)

    assert cold.fixed_costs == {"python-3.11": plan.COLD_FIXED_COST}
    assert cold.basis == {"python-3.11": plan.BASIS_COUNTS}
    assert len(cold.shards["python-3.11"]) == 2  # 48 tests x 0.1 s = 4.8 s of work, 2 s per shard
    assert warm.fixed_costs == {"python-3.11": pytest.approx(20.0)}
    assert len(warm.shards["python-3.11"]) == 1
    assert warm.shards["python-3.11"][0].predicted == pytest.approx(7.2 + 20.0)


def test_a_cell_never_measured_borrows_the_fixed_cost_and_walls_of_its_siblings(tmp_path: Path, store: History) -> None:
    root = project(tmp_path)
    path = matrix_file(tmp_path, root)
    scope = plan.history_scope(plan.config.load(str(path)))
    measure(store, scope, "python-3.9", root, 0.1, 3.0)
    measure(store, scope, "python-3.11", root, 0.3, 5.0)

    planned = plan.plan_matrix(str(path), [], history=store, slots=2)

    assert planned.fixed_costs["python-3.13"] == pytest.approx(4.0)
    assert planned.basis["python-3.13"] == plan.BASIS_WALLS
    new = sum(s.predicted - 4.0 for s in planned.shards["python-3.13"])
    assert new == pytest.approx(12 * 4 * 0.2 * 1.5)  # the mean of its siblings' walls


def test_plan_matrix_keeps_explicit_counts_and_the_shards_flag(tmp_path: Path) -> None:
    root = project(tmp_path)

    fixed = plan.plan_matrix(str(matrix_file(tmp_path, root, shards=3)), [], slots=16)
    flag = plan.plan_matrix(str(matrix_file(tmp_path, root)), [], shards_override=5, slots=16)

    assert [len(ss) for ss in fixed.shards.values()] == [3, 3, 3]
    assert fixed.auto == set()
    assert [len(ss) for ss in flag.shards.values()] == [5, 5, 5]
    assert flag.auto == set()


def test_plan_matrix_sizes_for_the_slots_it_is_given(tmp_path: Path) -> None:
    root = project(tmp_path, files=40, tests_per_file=10)  # 40 s of work per cell, cold
    path = matrix_file(tmp_path, root)

    narrow = plan.plan_matrix(str(path), [], slots=1)
    wide = plan.plan_matrix(str(path), [], slots=24)
    default = plan.plan_matrix(str(path), [], max_parallel=3)

    assert [len(ss) for ss in narrow.shards.values()] == [1, 1, 1]
    assert all(len(ss) > 2 for ss in wide.shards.values())
    assert wide.makespan < narrow.makespan / 5
    assert default.slots == 3
    assert all(len(ss) <= 3 for ss in default.shards.values())


def test_plan_matrix_puts_every_test_of_a_cell_in_exactly_one_shard(tmp_path: Path, store: History) -> None:
    root = project(tmp_path, files=3, tests_per_file=4)
    big = root / "tests" / "test_big.py"
    big.write_text("".join(f"def test_{k}():\n    pass\n\n" for k in range(30)))
    path = matrix_file(tmp_path, root, pythons=["3.11"])
    scope = plan.history_scope(plan.config.load(str(path)))
    suite = {
        "tests/test_big.py": [f"tests/test_big.py::test_{k}" for k in range(30)],
        **{f"tests/test_{j:02d}.py": [f"tests/test_{j:02d}.py::test_{k}" for k in range(4)] for j in range(3)},
    }
    store.record(
        scope, "python-3.11", [(n, 2.0 if "big" in n else 0.1, k) for ids in suite.values() for k, n in enumerate(ids)]
    )
    store.record_walls(
        scope, "python-3.11", {f: 2.0 * len(ids) if "big" in f else 0.4 for f, ids in suite.items()}, 1.0
    )

    planned = plan.plan_matrix(str(path), [], history=store, slots=8)

    for c in planned.cells:
        shards = planned.shards[c.id]
        assert len(shards) > 4  # more shards than files: the long file is cut by test id
        assert_exactly_once(shards, suite)
        whole = Counter(f for s in shards for f in s.files if f != "tests/test_big.py")
        assert set(whole.values()) == {1}
        assert set(whole) == set(suite) - {"tests/test_big.py"}


def test_plan_matrix_is_deterministic(tmp_path: Path, store: History) -> None:
    root = project(tmp_path, files=20)
    path = matrix_file(tmp_path, root)
    scope = plan.history_scope(plan.config.load(str(path)))
    measure(store, scope, "python-3.11", root, 0.2, 1.5)

    first = plan.plan_matrix(str(path), [], history=store, slots=5)
    second = plan.plan_matrix(str(path), [], history=store, slots=5)

    assert first.shards == second.shards
    assert (first.makespan, first.schedule, first.fixed_costs) == (second.makespan, second.schedule, second.fixed_costs)


def test_a_ten_thousand_cell_matrix_plans_quickly(tmp_path: Path, store: History) -> None:
    root = project(tmp_path, files=8)
    axes = {k: [str(i) for i in range(10)] for k in "abcd"}
    path = write_matrix(tmp_path, root, matrix=axes, image={"base": "img:{a}"}, tests={"shards": "auto"})
    scope = plan.history_scope(plan.config.load(str(path)))
    for i in range(20):  # a few cells measured, the rest borrow
        measure(store, scope, f"a-{i % 10}_b-{i // 10}_c-0_d-0", root, 0.05 + i / 100, 1.0 + i / 10)

    started = time.perf_counter()
    planned = plan.plan_matrix(str(path), [], history=store, slots=64)
    took = time.perf_counter() - started

    print(f"10,000 cells planned for 64 slots in {took:.2f} s: {sum(map(len, planned.shards.values()))} shards")
    assert len(planned.cells) == 10_000
    assert all(planned.shards[c.id] for c in planned.cells)
