"""runner/plan.py with duration history: files split by test id, checked against what each shard's container
really runs (the plugin's own selection hooks on simulated suites): every test exactly once, balance, stability,
and ``tests.shards: auto``."""

from __future__ import annotations

import itertools
import json
import math
import random
import tempfile
from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from types import SimpleNamespace

import pytest

from runner import plan
from runner.container_side import matrix_run_plugin as plugin
from runner.retry import Budget
from runner.scheduler import Scheduler, ShardState
from tests.conftest import CELL

Suite = dict[str, list[str]]  # file -> the node ids pytest collects from it now, in collection order
Seconds = dict[str, dict[str, float]]  # file -> {node id -> seconds}: what history knows, or the truth


# --- the container side, simulated ------------------------------------------------------------------------------------


def _file_of(nodeid: str) -> str:
    return nodeid.split("::", 1)[0]


PROJECT = Path("/src")  # where pytest runs inside the container; never touched here


class FakeConfig:
    """The parts of pytest's config the plugin reads: its options, the invocation folder, the deselect hook."""

    def __init__(self, options: dict[str, str | None]) -> None:
        self.options = options
        self.invocation_params = SimpleNamespace(dir=PROJECT)
        self.hook = SimpleNamespace(pytest_deselected=lambda items: None)

    def getoption(self, name: str, default: object = None) -> object:
        return self.options.get(name, default)


def tests_run_by(
    shard: plan.Shard, all_tests_by_file: Mapping[str, Sequence[str]], complement_files: Collection[str] | None
) -> list[str]:
    """The node ids a shard's container runs, decided by the real plugin (``container_side/matrix_run_plugin.py``).

    The request is written as ``container.py`` writes it: the files JSON (``{"include": shard files}``, or for the
    first shard ``{"exclude": complement_files}``: every other file, known or not) and, only when the shard has ``only``
    or ``skip`` ids, the select JSON. Then the plugin's own hooks decide: ``pytest_ignore_collect`` per file, and
    ``pytest_collection_modifyitems`` over the collected items (a file with ids in ``only`` runs just those, ids in
    ``skip`` never run, an ``only`` id that no longer exists falls back to its whole function).
    """
    with tempfile.TemporaryDirectory() as tmp:
        files_json = Path(tmp) / "files.json"
        spec = {"include": list(shard.files)} if complement_files is None else {"exclude": list(complement_files)}
        files_json.write_text(json.dumps(spec))
        options: dict[str, str | None] = {"matrix_run_files": str(files_json), "matrix_run_select": None}
        if shard.only or shard.skip:
            select_json = Path(tmp) / "select.json"
            select_json.write_text(json.dumps({"only": list(shard.only), "skip": list(shard.skip)}))
            options["matrix_run_select"] = str(select_json)
        config = FakeConfig(options)
        plugin._selection.clear()  # the plugin reads its files once per pytest process
        try:
            files = [f for f in all_tests_by_file if not plugin.pytest_ignore_collect(PROJECT / f, config)]
            items = [SimpleNamespace(nodeid=n) for f in files for n in all_tests_by_file[f]]
            plugin.pytest_collection_modifyitems(None, config, items)
        finally:
            plugin._selection.clear()
    return [item.nodeid for item in items]


tests_run_by.__test__ = False  # type: ignore[attr-defined]  # a helper, named as the brief names it


def complement_of(shards: Sequence[plan.Shard], shard: plan.Shard) -> tuple[str, ...]:
    """What the scheduler excludes from the first shard (its own ``_others_files``, on these shards)."""
    states = [ShardState(s, CELL, Budget(flaky=0, infra=0)) for s in shards]
    scheduler = SimpleNamespace(states={CELL.id: states})
    mine = next(st for st in states if st.shard is shard)
    return Scheduler._others_files(scheduler, mine)  # type: ignore[arg-type]


def run_lists(shards: Sequence[plan.Shard], suite: Suite) -> list[list[str]]:
    """Per shard, the tests it runs, each shard submitted the way ``Scheduler.request_for`` makes a first attempt."""
    return [tests_run_by(s, suite, complement_of(shards, s) if s.index == 1 else None) for s in shards]


def runs_of(shards: Sequence[plan.Shard], suite: Suite) -> Counter[str]:
    return Counter(n for ran in run_lists(shards, suite) for n in ran)


def assert_exactly_once(shards: Sequence[plan.Shard], suite: Suite) -> None:
    runs = runs_of(shards, suite)
    everything = [n for ids in suite.values() for n in ids]
    never = [n for n in everything if runs[n] == 0]
    twice = {n: k for n, k in runs.items() if k > 1}
    strange = [n for n in runs if n not in set(everything)]
    assert (never, twice, strange) == ([], {}, []), f"never run, run more than once, not in the suite; plan: {shards}"


def real_loads(shards: Sequence[plan.Shard], suite: Suite, truth: Seconds) -> list[float]:
    seconds = {n: s for per_file in truth.values() for n, s in per_file.items()}
    return [sum(seconds[n] for n in ran) for ran in run_lists(shards, suite)]


def estimates(suite: Suite, history: Seconds, per_unknown_test: float = 0.1) -> list[plan.TestFile]:
    """File weights the way ``plan.plan_matrix`` and ``plan.estimate`` make them: history's sum where known, else
    the count of tests times the mean seconds per known test."""
    known = {f: sum(t.values()) for f, t in history.items()}
    pairs = [(known[f], len(ids)) for f, ids in suite.items() if f in known]
    per_test = sum(s for s, _ in pairs) / max(1, sum(c for _, c in pairs)) if pairs else per_unknown_test
    return [plan.TestFile(f, known.get(f, len(ids) * per_test)) for f, ids in suite.items()]


def optimal_makespan(values: Sequence[float], m: int) -> float:
    best = math.inf
    for assignment in itertools.product(range(m), repeat=len(values)):
        bins = [0.0] * m
        for w, b in zip(values, assignment, strict=True):
            bins[b] += w
        best = min(best, max(bins))
    return best


def random_case(seed: int) -> tuple[Suite, Seconds, Seconds]:
    """A synthetic suite as collected now, the true seconds of its tests, and what history knows about it.

    History misses some files (new since the last run) and some tests of the files it knows (new tests, new
    parametrizations), and still holds tests and files deleted since. Some files are much longer than the rest.
    """
    rng = random.Random(seed)
    suite: Suite = {}
    truth: Seconds = {}
    for i in range(rng.randint(1, 10)):
        path = f"tests/{'unit/' if i % 3 == 0 else ''}test_{i:02d}.py"
        ids: list[str] = []
        for j in range(rng.randint(1, 25)):
            kind = rng.random()
            if kind < 0.2:
                ids += [f"{path}::test_p{j}[{k}-x]" for k in range(rng.randint(1, 4))]
            elif kind < 0.35:
                ids.append(f"{path}::TestK{j}::test_m")
            else:
                ids.append(f"{path}::test_{j}")
        factor = 25.0 if rng.random() < 0.3 else 1.0
        suite[path] = ids
        truth[path] = {n: rng.uniform(0.01, 3.0) * factor for n in ids}
    history: Seconds = {}
    for path, ids in suite.items():
        if rng.random() < 0.15:
            continue  # a file new since the last run
        known = {n: truth[path][n] * rng.uniform(0.8, 1.25) for n in ids if rng.random() < 0.85}
        known.update({f"{path}::test_deleted_{k}": rng.uniform(0.01, 3.0) for k in range(rng.randint(0, 2))})
        if known:
            history[path] = known
    for k in range(rng.randint(0, 2)):
        gone = f"tests/test_gone_{k}.py"
        history[gone] = {f"{gone}::test_x": rng.uniform(0.1, 5.0), f"{gone}::test_y": rng.uniform(0.1, 5.0)}
    return suite, truth, history


def is_split(shards: Sequence[plan.Shard]) -> bool:
    return any(s.only or s.skip for s in shards)


# --- the simulator itself ---------------------------------------------------------------------------------------------


def test_simulator_follows_the_plugin_rules() -> None:
    suite = {
        "a.py": ["a.py::t1", "a.py::t2", "a.py::p[1]", "a.py::p[2]"],
        "b.py": ["b.py::t1", "b.py::t2"],
        "c.py": ["c.py::t1"],
    }
    named = plan.Shard("c", 2, 2, ("a.py", "b.py"), only=("a.py::t1", "a.py::p[2]"), skip=("b.py::t2",))
    first = plan.Shard("c", 1, 2, ("a.py",), skip=("a.py::t1",))

    # only restricts a.py, skip drops b.py::t2, c.py is not named
    assert tests_run_by(named, suite, None) == ["a.py::t1", "a.py::p[2]", "b.py::t1"]
    # the complement shard takes every file the others do not run wholly, minus its skips
    assert tests_run_by(first, suite, ["b.py"]) == ["a.py::t2", "a.py::p[1]", "a.py::p[2]", "c.py::t1"]
    assert complement_of([first, named], first) == ("b.py",)


# --- split_pieces -----------------------------------------------------------------------------------------------------

BIG = "tests/test_big.py"


def known_tests(n: int, seconds: float = 1.0, path: str = BIG) -> dict[str, float]:
    return {f"{path}::test_{i:03d}": seconds for i in range(n)}


def test_split_pieces_keeps_files_no_longer_than_the_target_whole() -> None:
    files = [plan.TestFile("tests/test_a.py", 10.0), plan.TestFile(BIG, 10.4)]  # within the 5% slack
    tests = {"tests/test_a.py": known_tests(10, path="tests/test_a.py"), BIG: known_tests(10, 1.04)}

    pieces = plan.split_pieces(files, tests, target=10.0)

    assert pieces == [plan.Piece("tests/test_a.py", 10.0), plan.Piece(BIG, 10.4)]


def test_split_pieces_never_splits_without_known_tests_or_a_target() -> None:
    files = [plan.TestFile(BIG, 100.0), plan.TestFile("tests/test_one.py", 100.0)]
    tests = {"tests/test_one.py": {"tests/test_one.py::test_only": 100.0}}  # one known test: nothing to cut

    assert plan.split_pieces(files, tests, target=10.0) == [
        plan.Piece(BIG, 100.0),
        plan.Piece("tests/test_one.py", 100.0),
    ]
    assert plan.split_pieces(files, {BIG: known_tests(50, 2.0)}, target=0.0)[0] == plan.Piece(BIG, 100.0)


def test_split_pieces_cuts_a_long_file_into_disjoint_parts() -> None:
    rng = random.Random(3)
    tests = {BIG: {f"{BIG}::test_{i:02d}": rng.uniform(0.5, 4.0) for i in range(40)}}
    weight = sum(tests[BIG].values())
    target = weight / 3.5

    pieces = plan.split_pieces([plan.TestFile(BIG, weight)], tests, target)

    assert len(pieces) == math.ceil(weight / target) == 4
    assert {p.file for p in pieces} == {BIG}
    *named, last = pieces
    assert all(p.only and not p.skip for p in named)
    assert not last.only
    owned = [n for p in named for n in p.only]
    assert len(owned) == len(set(owned))  # no test named by two parts
    assert set(last.skip) == set(owned)  # the last part runs all but those: known and new tests alike
    assert set(owned) < set(tests[BIG])
    assert sum(p.weight for p in pieces) == pytest.approx(weight)
    assert max(p.weight for p in pieces) <= target * 1.15


def test_split_pieces_never_makes_more_parts_than_known_tests() -> None:
    pieces = plan.split_pieces([plan.TestFile(BIG, 90.0)], {BIG: known_tests(3, 30.0)}, target=5.0)

    assert len(pieces) == 3
    assert [len(p.only) for p in pieces] == [1, 1, 0]


def test_split_pieces_scale_to_the_file_weight_when_history_covers_part_of_it() -> None:
    # history knows 20 s of the file; the file is predicted at 60 s (new tests since): parts carry the 60 s
    pieces = plan.split_pieces([plan.TestFile(BIG, 60.0)], {BIG: known_tests(20, 1.0)}, target=20.0)

    assert len(pieces) == 3
    assert sum(p.weight for p in pieces) == pytest.approx(60.0)
    assert [p.weight for p in pieces] == pytest.approx([20.0, 20.0, 20.0], rel=0.1)


# --- exactly once -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(60))
def test_every_test_runs_in_exactly_one_shard(seed: int) -> None:
    suite, _, history = random_case(seed)
    files = estimates(suite, history)

    for shards in range(1, 8):
        plan_ = plan.plan_lpt(CELL, files, shards, history)

        assert_exactly_once(plan_, suite)
        assert [s.index for s in plan_] == list(range(1, len(plan_) + 1))


def test_random_suites_exercise_split_files_with_new_tests() -> None:
    """The exactly-once cases above are not vacuous: many plans split files that hold tests history lacks."""
    split_with_new = 0
    for seed in range(60):
        suite, _, history = random_case(seed)
        for shards in range(2, 8):
            plan_ = plan.plan_lpt(CELL, estimates(suite, history), shards, history)
            split_files = {_file_of(n) for s in plan_ for n in (*s.only, *s.skip)}
            if any(set(suite[f]) - set(history[f]) for f in split_files):
                split_with_new += 1
    assert split_with_new >= 200


def test_new_tests_of_a_split_file_run_with_its_last_part_and_new_files_in_shard_one() -> None:
    history = {BIG: known_tests(12, 5.0), "tests/test_s.py": known_tests(2, 1.0, "tests/test_s.py")}
    suite = {
        BIG: [*history[BIG], f"{BIG}::test_new[1]", f"{BIG}::TestNew::test_x"],
        "tests/test_s.py": list(history["tests/test_s.py"]),
        "tests/test_fresh.py": ["tests/test_fresh.py::test_a", "tests/test_fresh.py::test_b"],
    }
    files = estimates(suite, history)

    shards = plan.plan_lpt(CELL, files, 3, history)

    assert_exactly_once(shards, suite)
    ran = run_lists(shards, suite)
    holder = next(i for i, s in enumerate(shards) if BIG in s.files and not set(s.only) & set(suite[BIG]))
    assert {f"{BIG}::test_new[1]", f"{BIG}::TestNew::test_x"} <= set(ran[holder])
    assert "tests/test_fresh.py::test_a" in ran[0]  # a file no shard names: the first shard's complement takes it
    assert sum(BIG in s.files for s in shards) == 3


def test_a_single_known_file_still_fills_every_shard() -> None:
    history = {BIG: known_tests(10, 3.0)}
    suite = {BIG: list(history[BIG])}

    shards = plan.plan_lpt(CELL, estimates(suite, history), 4, history)

    assert len(shards) == 4
    assert all(s.files == (BIG,) for s in shards)
    assert [len(ran) for ran in run_lists(shards, suite)] == [3, 3, 2, 2]
    assert_exactly_once(shards, suite)


def test_tests_measured_at_zero_seconds_still_run_once() -> None:
    # pytest's JUnit rounds to milliseconds: fast tests are recorded as 0.0 s
    mixed = "tests/test_mixed.py"
    history = {mixed: {f"{mixed}::test_slow": 30.0, **{f"{mixed}::test_fast_{k}": 0.0 for k in range(5)}}}
    suite = {mixed: list(history[mixed]), "tests/test_other.py": ["tests/test_other.py::test_x"]}

    shards = plan.plan_lpt(CELL, estimates(suite, history), 4, history)

    assert_exactly_once(shards, suite)


def test_a_parametrization_renamed_since_the_last_run_still_runs_once() -> None:
    f = "tests/test_params.py"
    history = {f: {f"{f}::test_n[1]": 10.0, f"{f}::test_n[2]": 10.0, f"{f}::test_n[3]": 10.0, f"{f}::test_u": 10.0}}
    # parametrize([1, 2, 3]) became parametrize([1, 2, 4]) since the last run
    suite = {f: [f"{f}::test_n[1]", f"{f}::test_n[2]", f"{f}::test_n[4]", f"{f}::test_u"]}

    shards = plan.plan_lpt(CELL, estimates(suite, history), 4, history)

    assert is_split(shards)
    assert_exactly_once(shards, suite)


# --- balance ----------------------------------------------------------------------------------------------------------


def graham_case(seed: int) -> tuple[Suite, Seconds, int]:
    rng = random.Random(1000 + seed)
    m = rng.choice([2, 3])
    truth: Seconds = {BIG: {f"{BIG}::test_{j}": float(rng.randint(1, 20)) for j in range(rng.randint(2, 5))}}
    for i in range(rng.randint(1, 4)):
        path = f"tests/test_{i}.py"
        truth[path] = {f"{path}::test_a": float(rng.randint(1, 10))}
    return {f: list(t) for f, t in truth.items()}, truth, m


@pytest.mark.parametrize("seed", range(25))
def test_split_plan_is_within_graham_bound_of_optimal(seed: int) -> None:
    suite, truth, m = graham_case(seed)
    files = [plan.TestFile(f, sum(t.values())) for f, t in truth.items()]
    pieces = plan.split_pieces(files, truth, sum(f.weight for f in files) / m)
    assert len(pieces) <= 9  # small enough to brute-force

    shards = plan.plan_lpt(CELL, files, m, truth)
    loads = real_loads(shards, suite, truth)

    assert_exactly_once(shards, suite)
    # Graham (1969): LPT <= (4/3 - 1/(3m)) * OPT over the units it schedules (here: the pieces)
    assert max(loads) <= (4 / 3 - 1 / (3 * m)) * optimal_makespan([p.weight for p in pieces], m) + 1e-9
    assert [s.predicted for s in shards] == pytest.approx(loads)  # history is exact here: so are the predictions


def test_graham_cases_include_split_files() -> None:
    split = 0
    for seed in range(25):
        _, truth, m = graham_case(seed)
        files = [plan.TestFile(f, sum(t.values())) for f, t in truth.items()]
        split += len(plan.split_pieces(files, truth, sum(f.weight for f in files) / m)) > len(files)
    assert split >= 15


@pytest.mark.parametrize("seed", range(6))
def test_a_dominant_file_known_to_history_is_spread_over_the_shards(seed: int) -> None:
    rng = random.Random(seed)
    huge = "tests/test_huge.py"
    truth: Seconds = {huge: {f"{huge}::test_{j:03d}": rng.uniform(0.5, 1.5) for j in range(150)}}
    for i in range(12):
        path = f"tests/test_small_{i:02d}.py"
        truth[path] = {f"{path}::test_a": rng.uniform(0.5, 2.0)}
    suite = {f: list(t) for f, t in truth.items()}
    files = [plan.TestFile(f, sum(t.values())) for f, t in truth.items()]
    m = 4
    total = sum(f.weight for f in files)

    split = max(real_loads(plan.plan_lpt(CELL, files, m, truth), suite, truth))
    unsplit = max(real_loads(plan.plan_lpt(CELL, files, m), suite, truth))

    assert split <= 1.03 * total / m
    assert unsplit >= sum(truth[huge].values())
    assert unsplit >= 3 * split


# --- stability --------------------------------------------------------------------------------------------------------


def shuffled(history: Seconds, rng: random.Random) -> Seconds:
    """The files in another order; each file's tests keep theirs (it is pytest's order, an input of the cut)."""
    files = list(history.items())
    rng.shuffle(files)
    return dict(files)


def test_a_split_file_is_cut_into_contiguous_runs_in_pytest_order() -> None:
    # suites whose classes set state up for the next ones (pyparsing's test_unit.py) break when a file is dealt
    # out test by test; contiguous runs keep every test behind the tests it followed, except at a cut
    order = [f"tests/test_big.py::test_{i:02d}" for i in range(40)]
    seconds = {nid: float(1 + i % 3) for i, nid in enumerate(order)}
    shards = plan.plan_lpt(
        CELL, [plan.TestFile("tests/test_big.py", sum(seconds.values()))], 3, {"tests/test_big.py": seconds}
    )
    runs = [s.only for s in shards if s.only]
    for run in runs:
        first = order.index(run[0])
        assert list(run) == order[first : first + len(run)]
    rest = next(s for s in shards if s.skip)
    kept = [n for n in order if n not in rest.skip]
    assert kept == order[order.index(kept[0]) :]  # the last part is the file's tail


@pytest.mark.parametrize("seed", range(15))
def test_split_plan_depends_only_on_the_inputs_not_their_order(seed: int) -> None:
    suite, _, history = random_case(seed)
    files = estimates(suite, history)
    rng = random.Random(seed)

    for shards in (2, 3, 5):
        first = plan.plan_lpt(CELL, files, shards, history)
        assert plan.plan_lpt(CELL, files, shards, history) == first
        other_files = list(files)
        rng.shuffle(other_files)
        assert plan.plan_lpt(CELL, other_files, shards, shuffled(history, rng)) == first


def test_split_plan_with_ties_everywhere_is_stable() -> None:
    history = {
        BIG: known_tests(24, 1.0),
        **{f"tests/test_{i}.py": known_tests(2, 1.0, f"tests/test_{i}.py") for i in range(6)},
    }
    suite = {f: list(t) for f, t in history.items()}
    files = estimates(suite, history)
    rng = random.Random(5)
    first = plan.plan_lpt(CELL, files, 4, history)

    for _ in range(20):
        other_files = list(files)
        rng.shuffle(other_files)
        assert plan.plan_lpt(CELL, other_files, 4, shuffled(history, rng)) == first
    assert is_split(first)
    assert_exactly_once(first, suite)


# --- shards: auto -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("predicted", "target", "slots", "expected"),
    [
        (600.0, 60.0, 32, 10),  # enough shards of about the target length
        (601.0, 60.0, 32, 11),  # rounded up, never a shard longer than asked
        (600.0, 60.0, 4, 4),  # never more than the free slots
        (30.0, 60.0, 8, 1),  # a short suite: one shard
        (0.0, 60.0, 8, 1),  # nothing predicted: still one shard
        (600.0, 60.0, 0, 1),  # no free slot known: one shard, never zero
        (600.0, 60.0, -3, 1),
        (600.0, 0.0, 6, 6),  # a zero target is bounded by the slots
    ],
)
def test_auto_shards(predicted: float, target: float, slots: int, expected: int) -> None:
    assert plan.auto_shards(predicted, target, slots) == expected


def test_files_measured_at_zero_seconds_still_spread_over_all_shards() -> None:
    # fast suites: pytest records 0.000 s for every test; the shards must not pile every file onto one
    files = [plan.TestFile(f"tests/test_{i}.py", 0.0) for i in range(6)]

    shards = plan.plan_lpt(CELL, files, 3)

    assert [len(s.files) for s in shards] == [2, 2, 2]
