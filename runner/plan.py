"""Cells + test files (+ durations) -> [Shard] for the whole matrix: what ``--dry-run`` prints. Pure apart from
reading files. Which files hold tests is pytest_config's part; here they are weighed and laid out in shards.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import math
import os
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from runner import config, matrix
from runner.errors import ExitCode, UserError
from runner.history import History
from runner.matrix import Cell
from runner.pytest_config import conflicting_option, count_tests, discover, pytest_roots, read_pytest_settings
from runner.source import SourceTree, snapshot

MIN_PIECE_SECONDS = 0.01


@dataclass(frozen=True)
class TestFile:
    path: str  # relative to the project root, posix
    weight: float  # predicted seconds (or a proxy: number of tests)


@dataclass(frozen=True)
class Piece:
    """A unit of planning: a whole file, or a part of a file too long for one shard."""

    file: str
    weight: float
    only: tuple[str, ...] = ()  # node ids this piece runs; empty = the whole file (minus ``skip``)
    skip: tuple[str, ...] = ()  # node ids other pieces run (the last piece of a split file takes new tests too)


@dataclass(frozen=True)
class Shard:
    cell_id: str
    index: int  # 1-based
    count: int
    files: tuple[str, ...]
    predicted: float = 0.0  # seconds; from plan_matrix: the shard's predicted wall (its work + the fixed cost)
    only: tuple[str, ...] = field(default=())  # node ids restricting the files they belong to
    skip: tuple[str, ...] = field(default=())  # node ids left to other shards

    @property
    def id(self) -> str:
        return f"{self.cell_id}/shard-{self.index}of{self.count}"

    @property
    def slug(self) -> str:
        return f"shard-{self.index}of{self.count}"


def estimate(
    tree: SourceTree,
    files: Sequence[str],
    history: Mapping[str, float] | None = None,
    default_per_test: float = 1.0,
    counts: Mapping[str, int] | None = None,
) -> list[TestFile]:
    """Predicted seconds per file: from history where known, else from the count of test definitions.

    Unknown files get the mean seconds-per-test of the known ones, so both scales agree. ``counts``: the files'
    ``count_tests``, when the caller has them already.
    """
    history = history or {}
    counts = counts if counts is not None else count_tests(tree, files)
    # a file measured at 0 s ran no test (all deselected, say): it says nothing of what a test costs
    known = [(history[f], counts.get(f, 1)) for f in files if history.get(f, 0.0) > 0]
    per_test = sum(s for s, _ in known) / max(1, sum(c for _, c in known)) if known else default_per_test
    return [TestFile(f, history.get(f, counts.get(f, 1) * per_test)) for f in files]


def _lpt(weights: Sequence[tuple[float, str]], bins: int) -> tuple[list[list[int]], list[float]]:
    """Longest processing time first over (weight, tie-break) items: item indexes per bin, and bin loads."""
    heap: list[tuple[float, int]] = [(0.0, i) for i in range(bins)]
    buckets: list[list[int]] = [[] for _ in range(bins)]
    loads = [0.0] * bins
    for idx in sorted(range(len(weights)), key=lambda i: (-weights[i][0], weights[i][1])):
        load, b = heapq.heappop(heap)
        buckets[b].append(idx)
        loads[b] = load + weights[idx][0]
        heapq.heappush(heap, (loads[b], b))
    return buckets, loads


def _contiguous(items: Sequence[tuple[str, float]], parts: int) -> tuple[list[tuple[str, ...]], list[float]]:
    """Cut ordered (id, seconds) items into ``parts`` contiguous runs of about equal seconds."""
    total = sum(max(sec, 0.0) for _, sec in items)
    runs: list[list[str]] = [[]]
    loads = [0.0]
    done = 0.0
    for i, (nid, sec) in enumerate(items):
        left_parts = parts - len(runs)
        boundary = (total * len(runs)) / parts
        if runs[-1] and left_parts > 0 and done + max(sec, 0.0) / 2 > boundary and len(items) - i >= left_parts:
            runs.append([])
            loads.append(0.0)
        runs[-1].append(nid)
        loads[-1] += max(sec, 0.0)
        done += max(sec, 0.0)
    return [tuple(r) for r in runs], loads


def split_pieces(files: Sequence[TestFile], tests: Mapping[str, Mapping[str, float]], target: float) -> list[Piece]:
    """Whole files, except those predicted longer than ``target`` whose tests are known: those are cut by test id
    into contiguous runs, in pytest's order (``tests`` lists each file's tests in that order), so a test still
    follows the tests it followed before (suites whose classes set up state for the next ones keep working,
    except at a cut).

    Every part but the last names its tests; the last skips the others' tests, so a test that history does not
    know yet (new since the last run) still runs exactly once.
    """
    pieces: list[Piece] = []
    for tf in files:
        known = tests.get(tf.path, {})
        if target <= 0 or tf.weight <= target * 1.05 or len(known) < 2:
            pieces.append(Piece(tf.path, tf.weight))
            continue
        parts = min(len(known), math.ceil(tf.weight / target))
        items = list(known.items())
        ids, loads = _contiguous(items, parts)
        scale = tf.weight / max(sum(loads), 1e-9)  # history may not cover every test of the file
        everything = {nid for nid, _ in items}
        for i, part in enumerate(ids):
            if i < len(ids) - 1:
                if part:  # a bucket can stay empty (tests measured at 0 s): it is no piece at all
                    pieces.append(Piece(tf.path, loads[i] * scale, only=part))
            else:
                pieces.append(Piece(tf.path, loads[i] * scale, skip=tuple(sorted(everything - set(part)))))
    return pieces


@dataclass(frozen=True)
class Layout:
    """What one shard runs, before it is given a cell: files, parts of split files, predicted seconds."""

    files: tuple[str, ...]
    predicted: float
    only: tuple[str, ...] = ()
    skip: tuple[str, ...] = ()


def layout_lpt(
    files: Sequence[TestFile], shards: int, tests: Mapping[str, Mapping[str, float]] | None = None
) -> list[Layout]:
    """Longest-processing-time first: each piece, heaviest first, goes to the least loaded shard.

    A file longer than a fair shard (total / shards) is split by test id where history knows its tests. Every
    test lands in exactly one shard; the layout depends only on the inputs (ties break by path).
    """
    total = sum(f.weight for f in files)
    target = total / shards if shards > 1 else 0.0
    pieces = split_pieces(files, tests or {}, target)
    count = max(1, min(shards, len(pieces)))
    # a floor per piece: fast tests are measured at 0.000 s, and LPT over zero weights would pile every file
    # onto one shard (importing and collecting a file costs something anyway)
    buckets, _ = _lpt([(max(p.weight, MIN_PIECE_SECONDS), f"{p.file}\0{p.only[:1]}") for p in pieces], count)
    # the floor places the pieces; what a shard is predicted to take is its pieces' own weights (a suite of 1,500
    # example files of a few ms each would otherwise be predicted 15 s too long)
    loads = [sum(max(pieces[j].weight, 0.0) for j in bucket) for bucket in buckets]
    out = []
    for i, bucket in enumerate(buckets):
        by_file: dict[str, list[Piece]] = {}
        for j in bucket:
            by_file.setdefault(pieces[j].file, []).append(pieces[j])
        only: set[str] = set()
        skip: set[str] = set()
        for parts in by_file.values():
            if len(parts) == 1 and not parts[0].only and not parts[0].skip:
                continue  # a whole file: the common case
            rest = next((p for p in parts if not p.only), None)
            if rest is None:
                only.update(n for p in parts for n in p.only)
            else:  # this shard holds the file's last part: it runs all but what other shards run
                skip.update(set(rest.skip) - {n for p in parts for n in p.only})
        out.append(Layout(tuple(sorted(by_file)), loads[i], tuple(sorted(only)), tuple(sorted(skip))))
    return out


def shards_for(cell: Cell, layout: Sequence[Layout]) -> list[Shard]:
    return [
        Shard(cell.id, i + 1, len(layout), lay.files, lay.predicted, lay.only, lay.skip) for i, lay in enumerate(layout)
    ]


def plan_lpt(
    cell: Cell,
    files: Sequence[TestFile],
    shards: int,
    tests: Mapping[str, Mapping[str, float]] | None = None,
) -> list[Shard]:
    """One cell's shards (see ``layout_lpt``)."""
    return shards_for(cell, layout_lpt(files, shards, tests))


def auto_shards(predicted: float, target: float, slots: int) -> int:
    """Enough shards of about ``target`` seconds, never more than the free slots: the least ``tests.shards:
    auto`` gives a cell (``size_shards`` may give it more)."""
    return max(1, min(math.ceil(predicted / max(target, 1e-9)), max(1, slots)))


# --- the whole matrix: shard counts for tests.shards: auto ---------------------------------------------------------
#
# A shard's predicted time is its work (the seconds its tests take inside pytest) plus the cell's fixed cost (what a
# shard costs beyond its tests: container start, interpreter and pytest start, collection, results back). The
# coordinator starts the shards of the whole matrix longest-predicted first, each on the next free slot; the
# planner simulates exactly that and picks the shard counts of the auto cells together, greedily: from the least
# each cell needs, one shard more at a time for the cell whose extra shard shortens the simulated matrix most.
#
# tests.shard-target keeps its meaning (a shard should take about that long), as a floor on an auto cell's count:
# ceil(work / target) shards at least, so a very long cell is cut even when the matrix is busy enough without it;
# the search may cut shorter shards when that shortens the matrix. Neither goes beyond the slots.

SECONDS_PER_UNKNOWN_TEST = 0.1  # a guess for a test no run has measured yet
# Measured on this project's runner (2 cores, local Docker, pygments across Python 3.9/3.11/3.13): a shard's wall
# minus its tests' walls was 1-2.5 s (container start ~0.5 s, interpreter + pytest start + collection the rest).
COLD_FIXED_COST = 2.0
MIN_GAIN_SECONDS = 0.2  # extra shards must shorten the predicted matrix by more than this...
MIN_GAIN_FRACTION = 0.02  # ...and by more than this share of it
# an auto cell's shards carry on average at least this share of their fixed cost in work: a shard that would run
# 0.5 s of tests for 2 s of container and pytest start is not worth a slot (and fixed costs vary by about that)
MIN_WORK_PER_FIXED = 0.5
MAX_CANDIDATES = 8  # cells tried per step: those holding the longest shards...
MAX_SCANNED = 16  # ...found among this many (cells with the same inputs and count are tried once)
LOOKAHEAD = 2  # shards a step may add to one cell
WALL_RATIO_BOUNDS = (0.5, 10.0)  # measured walls / JUnit times of a cell, trusted within these bounds

BASIS_WALLS = "measured walls"
BASIS_DURATIONS = "measured test durations"
BASIS_COUNTS = "test counts"


@dataclass(frozen=True)
class CellWork:
    """What the planner knows of one cell: its files' predicted work, the per-test seconds that let it cut a long
    file by test id, its shards' fixed cost, and a fixed shard count (None: ``tests.shards: auto``).

    Cells with the same non-empty ``group`` have the same files, tests and fixed cost (cells never measured
    borrow the same numbers from their siblings): their layouts are made once per shard count.
    """

    cell_id: str
    files: tuple[TestFile, ...]
    tests: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    fixed_cost: float = COLD_FIXED_COST
    shards: int | None = None
    group: str = ""
    basis: str = BASIS_COUNTS

    @property
    def work(self) -> float:
        return sum(f.weight for f in self.files)


@dataclass
class MatrixPlan:
    """``size_shards``' answer: each cell's shard layouts (``Layout.predicted`` = work, without the fixed cost),
    and the simulated schedule of the whole matrix on its slots."""

    layouts: dict[str, list[Layout]]
    makespan: float  # predicted seconds from the first shard's start to the last shard's end
    slots: int
    schedule: dict[tuple[str, int], tuple[int, float]]  # (cell id, 1-based shard index) -> (slot, predicted start)
    steps: int = 0  # shards the greedy search added beyond each cell's least


def predict_work(
    files: Sequence[str],
    counts: Mapping[str, int],
    tests: Mapping[str, Mapping[str, float]] | None = None,
    walls: Mapping[str, float] | None = None,
) -> tuple[list[TestFile], str]:
    """Each file's predicted work in one cell, and what it rests on.

    A file's measured wall (``History.file_walls``: setup start to teardown end of each of its tests) where
    known; else the sum of its tests' JUnit seconds times the cell's measured wall/JUnit ratio (pytest spends
    more on a test than JUnit says: hooks, reporting, fixture bookkeeping), 1 when no wall is known; else its
    count of test definitions times the mean seconds per test of the measured files, ``SECONDS_PER_UNKNOWN_TEST``
    when none is measured.
    """
    tests = tests or {}
    walls = walls or {}
    junit = {f: sum(t.values()) for f, t in tests.items()}
    both = [f for f in files if f in walls and f in junit]
    junit_both = sum(junit[f] for f in both)
    ratio = 1.0
    if junit_both > 1e-6:
        low, high = WALL_RATIO_BOUNDS
        ratio = min(high, max(low, sum(walls[f] for f in both) / junit_both))
    seconds: dict[str, float] = {}
    for f in files:
        if f in walls:
            seconds[f] = walls[f]
        elif f in junit:
            seconds[f] = junit[f] * ratio
    known = [(seconds[f], counts.get(f, 1)) for f in files if f in seconds]
    per_test = sum(s for s, _ in known) / max(1, sum(c for _, c in known)) if known else SECONDS_PER_UNKNOWN_TEST
    basis = BASIS_WALLS if any(f in walls for f in files) else BASIS_DURATIONS if known else BASIS_COUNTS
    return [TestFile(f, seconds.get(f, counts.get(f, 1) * per_test)) for f in files], basis


def known_files(
    tree: SourceTree, discovered: Sequence[str], walls: Mapping[str, float], roots: Sequence[str]
) -> list[str]:
    """Files of the tree that earlier runs measured tests in, below the test roots, that discovery did not list:
    non-Python files that a project's conftest collects (pygments' example files). Sorted; only files that exist."""
    listed = set(discovered)
    present = set(tree.files)
    under = [r.strip("/") for r in roots]

    def below(f: str) -> bool:
        return any(r in ("", ".") or f == r or f.startswith(r + "/") for r in under)

    return sorted(f for f in walls if f not in listed and f in present and below(f))


def max_shards(work: CellWork, split_files: bool = True) -> int:
    """The most shards a cell's files allow: one per file, or per known test of a file that can be cut."""
    return sum(
        len(work.tests.get(f.path, ())) if split_files and len(work.tests.get(f.path, ())) >= 2 else 1
        for f in work.files
    )


Score = tuple[float, int, float]  # (makespan, slots that end at the makespan, sum of squared slot loads)


NO_SCORE: Score = (math.inf, 0, math.inf)


def _score(desc: Sequence[float], slots: int, bound: float = math.inf) -> Score:
    """The coordinator's schedule of shard times ``desc`` (longest first), each on the earliest free slot;
    ``NO_SCORE`` as soon as a slot would end after ``bound``."""
    first = min(slots, len(desc))
    if not first:
        return 0.0, 0, 0.0
    loads = list(desc[:first])  # the longest shards start at once, one per slot
    heapq.heapify(loads)
    top = desc[0]
    for t in itertools.islice(desc, first, None):
        end = loads[0] + t
        if end > top:
            top = end
            if top > bound:
                return NO_SCORE
        heapq.heapreplace(loads, end)
    return top, sum(x >= top - 1e-9 for x in loads), math.fsum(x * x for x in loads)


def simulate(times: Iterable[float], slots: int) -> float:
    """Predicted makespan of shards with these times on ``slots`` slots, started longest first (see
    ``Coordinator._enqueue``), each on the earliest free slot."""
    return _score(sorted(times, reverse=True), max(1, slots))[0]


class _Search:
    """The greedy search over shard counts; layouts cached per (group, count)."""

    def __init__(self, works: Sequence[CellWork], slots: int, split_files: bool) -> None:
        self.works = works
        self.slots = max(1, slots)
        self.split_files = split_files
        self.cache: dict[tuple[str, int], tuple[list[Layout], tuple[float, ...]]] = {}
        self.squares = 0.0  # sum of the squared shard times in the pool (their slots' loads, while they fit)

    def layout(self, i: int, count: int) -> tuple[list[Layout], tuple[float, ...]]:
        """Cell ``i``'s layout for ``count`` shards, and its shards' predicted times (work + fixed cost)."""
        work = self.works[i]
        key = (work.group or f"\0{i}", count)
        hit = self.cache.get(key)
        if hit is None:
            tests = work.tests if self.split_files else None
            layout = layout_lpt(work.files, count, tests)
            hit = (layout, tuple(lay.predicted + work.fixed_cost for lay in layout))
            self.cache[key] = hit
        return hit

    def evaluate(self, pool: list[float], old: Sequence[float], new: Sequence[float], bound: float = math.inf) -> Score:
        """The schedule's score with one cell's shard times ``old`` replaced by ``new`` (``NO_SCORE`` when it
        ends after ``bound``)."""
        if len(pool) - len(old) + len(new) <= self.slots:  # every shard has a slot of its own: no copy needed
            leaving = Counter(old)
            j = len(pool) - 1
            while j >= 0 and leaving[pool[j]] > 0:  # the longest shard that stays
                leaving[pool[j]] -= 1
                j -= 1
            top = max(pool[j] if j >= 0 else 0.0, max(new, default=0.0))
            ending = len(pool) - bisect.bisect_left(pool, top - 1e-9)
            ending += sum(t >= top - 1e-9 for t in new) - sum(t >= top - 1e-9 for t in old)
            return top, ending, self.squares + sum(t * t for t in new) - sum(t * t for t in old)
        trial = pool.copy()
        for t in old:
            del trial[bisect.bisect_left(trial, t)]
        for t in new:
            bisect.insort(trial, t)
        return _score(trial[::-1], self.slots, bound)

    def run(self, counts: list[int], caps: list[int], auto: list[int]) -> int:
        """Add shards to auto cells while that shortens the simulated matrix; leaves the best counts in
        ``counts``. Returns the number of shards added."""
        times = {i: self.layout(i, counts[i])[1] for i in range(len(self.works))}
        pool = sorted(t for ts in times.values() for t in ts)
        if not pool:
            return 0
        self.squares = math.fsum(t * t for t in pool)
        score = self.evaluate(pool, (), ())
        best_makespan, best_counts, steps, best_steps = score[0], list(counts), 0, 0
        patience = max(2, score[1])  # level steps allowed in a row: about one per slot that ends last
        stale = 0
        # the growable auto cells, longest shard first (ties: matrix order); entries of a cell that grew since are
        # dropped when they come up
        heap = [(-max(times[i], default=0.0), i, counts[i]) for i in auto if counts[i] < caps[i]]
        heapq.heapify(heap)
        full: set[tuple[str, int]] = set()  # (group, count) whose pieces cannot fill more shards
        while heap:
            tried: list[tuple[float, int, int]] = []
            seen: set[tuple[str, int]] = set()
            choice: tuple[Score, int, int] | None = None
            while heap and len(seen) < MAX_CANDIDATES and len(tried) < MAX_SCANNED:
                entry = heapq.heappop(heap)
                i = entry[1]
                if entry[2] != counts[i]:
                    continue  # an entry from before the cell grew
                signature = (self.works[i].group or f"\0{i}", counts[i])
                if signature in full:
                    continue  # it stays as it is
                if signature in seen:
                    tried.append(entry)  # the same inputs and count as a cell tried already: the same outcome
                    continue
                seen.add(signature)
                grows = False
                # one shard more; or two when one more is no better (two long files cut for 5 shards pack worse
                # than for 4 or 6)
                for step in range(1, min(LOOKAHEAD, caps[i] - counts[i]) + 1):
                    new = self.layout(i, counts[i] + step)[1]
                    if len(new) <= len(times[i]):
                        continue  # its pieces cannot fill more shards
                    grows = True
                    # a trial ending after the current plan or the best candidate so far cannot be taken
                    bound = min(score[0], choice[0][0] if choice else math.inf) + 1e-9
                    trial = self.evaluate(pool, times[i], new, bound)
                    if choice is None or trial < choice[0]:
                        choice = (trial, i, step)
                    if trial < score:
                        break
                if grows:
                    tried.append(entry)
                else:
                    full.add(signature)
            for entry in tried:
                heapq.heappush(heap, entry)
            if choice is None:
                break
            trial, i, step = choice
            better = trial[0] < score[0] - 1e-9
            # as long, but fewer slots end last, or as many and the loads more even: a step towards a shorter
            # matrix (kept only if one comes)
            level = trial[0] <= score[0] + 1e-9 and (
                trial[1] < score[1] or (trial[1] == score[1] and trial[2] < score[2] * (1 - 1e-9) - 1e-9)
            )
            if not (better or level):
                break
            new = self.layout(i, counts[i] + step)[1]
            for t in times[i]:
                del pool[bisect.bisect_left(pool, t)]
            for t in new:
                bisect.insort(pool, t)
            self.squares += sum(t * t for t in new) - sum(t * t for t in times[i])
            counts[i] += step
            times[i] = new
            steps += step
            score = trial
            if counts[i] < caps[i]:
                heapq.heappush(heap, (-max(new), i, counts[i]))
            if score[0] < best_makespan - max(MIN_GAIN_SECONDS, MIN_GAIN_FRACTION * best_makespan):
                best_makespan, best_counts, best_steps, stale = score[0], list(counts), steps, 0
                patience = max(2, score[1])
            elif not better:
                stale += 1  # a level step: kept only if the steps after it pay off
                if stale > patience:
                    break
        counts[:] = best_counts
        return best_steps


def size_shards(
    works: Sequence[CellWork], slots: int, shard_target: float = 0.0, split_files: bool = True
) -> MatrixPlan:
    """Shard counts and layouts for the whole matrix at once, for the predicted makespan on ``slots`` slots.

    A cell with a fixed count (``CellWork.shards``: an integer ``tests.shards`` or ``--shards``) keeps it. An
    auto cell starts from the least shards that keep each shard's work within ``shard_target`` (``tests.shard-
    target``; 0: none), then the search adds one shard at a time to the auto cell whose extra shard lowers the
    simulated makespan most (tried among the cells holding the longest shards), and keeps the counts of the last
    step that shortened the matrix by more than ``MIN_GAIN_SECONDS`` and ``MIN_GAIN_FRACTION`` of it. A step that
    leaves the makespan as it is but has fewer slots ending last (or spreads the loads more evenly) is taken too,
    and kept only if the steps after it pay off: two equal cells on four slots gain nothing from splitting one
    and half the matrix from splitting both.

    No auto cell gets more shards than the slots, than its files and cuttable files allow, or than leave each
    shard ``MIN_WORK_PER_FIXED`` of its fixed cost in work; the shard target never forces more than that either.
    The answer depends only on the inputs.
    """
    slots = max(1, slots)
    search = _Search(works, slots, split_files)
    counts: list[int] = []
    caps: list[int] = []
    auto: list[int] = []
    for i, work in enumerate(works):
        if work.shards is not None:
            counts.append(max(1, work.shards))
            caps.append(counts[-1])
            continue
        worth = math.floor(work.work / (MIN_WORK_PER_FIXED * work.fixed_cost)) if work.fixed_cost > 0 else slots
        cap = max(1, min(slots, max_shards(work, split_files), worth))
        least = auto_shards(work.work, shard_target, cap) if shard_target > 0 else 1
        counts.append(least)
        caps.append(cap)
        auto.append(i)
    steps = search.run(counts, caps, auto) if auto else 0
    layouts = {work.cell_id: search.layout(i, counts[i])[0] for i, work in enumerate(works)}
    # the schedule as the coordinator will run it: longest first (ties: matrix order, shard order), next free slot
    shards = [(-t, i, k) for i, work in enumerate(works) for k, t in enumerate(search.layout(i, counts[i])[1], start=1)]
    shards.sort()
    free = [(0.0, s) for s in range(slots)]
    schedule: dict[tuple[str, int], tuple[int, float]] = {}
    makespan = 0.0
    for neg, i, k in shards:
        start, slot = heapq.heappop(free)
        schedule[(works[i].cell_id, k)] = (slot, start)
        makespan = max(makespan, start - neg)
        heapq.heappush(free, (start - neg, slot))
    return MatrixPlan(layouts, makespan, slots, schedule, steps)


@dataclass
class Planned:
    """Everything decided before Docker or Ray is touched: what ``--dry-run`` shows."""

    mf: config.MatrixFile
    cells: list[matrix.Cell]
    tree: SourceTree
    shards: dict[str, list[Shard]]  # Shard.predicted: the shard's predicted wall seconds (work + fixed cost)
    measured: set[str]  # cells whose plan rests on measured durations (else on test counts)
    scope: str
    slots: int = 1  # the slots the plan was sized for
    makespan: float = 0.0  # predicted seconds from the first shard's start to the last one's end
    fixed_costs: dict[str, float] = field(default_factory=dict)  # cell id -> predicted fixed seconds per shard
    basis: dict[str, str] = field(default_factory=dict)  # cell id -> what its predictions rest on (BASIS_*)
    auto: set[str] = field(default_factory=set)  # cells whose shard count the planner chose (tests.shards: auto)
    schedule: dict[str, tuple[int, float]] = field(default_factory=dict)  # shard id -> (slot, predicted start)


def history_scope(mf: config.MatrixFile) -> str:
    return f"{mf.name}@{mf.project.name}"


def default_slots(mf: config.MatrixFile, cells: Sequence[Cell], max_parallel: int | None = None) -> int:
    """Shards that run at once when the caller knows no better: ``--max-parallel``, else ``strategy.max-parallel``,
    else this host's cores divided by the most CPUs a shard asks for (``resources.cpus``)."""
    per_shard = max((c.resources.cpus for c in cells), default=1.0) or 1.0
    return max(1, max_parallel or mf.strategy.max_parallel or int((os.cpu_count() or 1) // per_shard))


def plan_matrix(
    matrix_path: str,
    select: Sequence[str],
    shards_override: int | None = None,
    history: History | None = None,
    max_parallel: int | None = None,
    slots: int | None = None,
) -> Planned:
    """Load, expand and plan a matrix file: everything decided before Docker or Ray is touched.

    ``slots``: shards the cluster runs at once, which ``tests.shards: auto`` sizes for (None: ``default_slots``).
    """
    mf = config.load(matrix_path)
    cells = matrix.expand(mf, select)
    slots = max(1, slots) if slots else default_slots(mf, cells, max_parallel)
    tree = snapshot(mf.project)
    settings = read_pytest_settings(mf.project, mf.tests.workdir)
    clash = conflicting_option(settings.addopts)
    if clash is not None:
        raise UserError(
            f"{mf.project / settings.configfile}: addopts has {clash[0]}, which {clash[1]}: every shard would "
            "fail; take it out of addopts (matrix-run runs the suite as it is otherwise configured)"
        )
    for cell in cells:
        clash = conflicting_option(cell.command)
        if clash is not None:
            raise mf.error(
                "tests.command" if clash[0].split()[0] in mf.tests.command else "tests.args",
                f"{clash[0]} {clash[1]}: every shard of {cell.id} would fail; remove it",
            )
    files = discover(tree, mf.tests.paths, settings, mf.tests.workdir)
    if not files:
        where = ", ".join(mf.tests.paths or settings.testpaths or (".",))
        raise UserError(
            f"{mf.path}: tests.paths: no test files found under {where} in {mf.project} "
            f"(looked for {' '.join(settings.python_files)}); set tests.paths",
            ExitCode.NO_TESTS,
        )
    scope = history_scope(mf)
    counts = count_tests(tree, files)
    roots = pytest_roots(mf.tests.paths, settings, mf.tests.workdir)
    own = history.measured_cells(scope) if history is not None else set()
    borrowed: tuple[tuple[TestFile, ...], dict[str, dict[str, float]], float, str] | None = None
    fixed_count = shards_override or (None if mf.tests.shards == "auto" else int(mf.tests.shards))
    works: list[CellWork] = []
    for cell in cells:
        if cell.id in own or borrowed is None:
            tests = history.tests(scope, cell.id) if history is not None else {}
            walls = history.file_walls(scope, cell.id) if history is not None else {}
            fixed = history.fixed_cost(scope, cell.id) if history is not None else None
            # files that pytest collected tests from and the discovery cannot see (a conftest's collector for
            # example files, say): known from the history, planned like any other file while they exist
            seen = known_files(tree, files, walls, roots)
            cell_counts = {**counts, **{f: max(1, len(tests.get(f, {}))) for f in seen}}
            estimates, basis = predict_work([*files, *seen], cell_counts, tests, walls)
            data = (tuple(estimates), tests, COLD_FIXED_COST if fixed is None else fixed, basis)
            if cell.id not in own:
                borrowed = data  # every cell without measurements of its own borrows the same numbers
        else:
            data = borrowed
        works.append(
            CellWork(
                cell.id,
                data[0],
                data[1],
                data[2],
                fixed_count,
                group="" if cell.id in own else "borrowed",
                basis=data[3],
            )
        )
    sized = size_shards(works, slots, mf.tests.shard_target, mf.tests.split_files)
    shards: dict[str, list[Shard]] = {}
    for cell, work in zip(cells, works, strict=True):
        layout = sized.layouts[cell.id]
        shards[cell.id] = [
            Shard(cell.id, i + 1, len(layout), lay.files, lay.predicted + work.fixed_cost, lay.only, lay.skip)
            for i, lay in enumerate(layout)
        ]
    return Planned(
        mf,
        cells,
        tree,
        shards,
        measured={w.cell_id for w in works if w.basis != BASIS_COUNTS},
        scope=scope,
        slots=slots,
        makespan=sized.makespan,
        fixed_costs={w.cell_id: w.fixed_cost for w in works},
        basis={w.cell_id: w.basis for w in works},
        auto=set() if fixed_count is not None else {c.id for c in cells},
        schedule={shards[cell_id][k - 1].id: where for (cell_id, k), where in sized.schedule.items()},
    )
