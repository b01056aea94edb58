"""What earlier runs measured: per-test durations, per-file wall seconds and per-shard fixed costs (for planning),
and fully passing cells (the result cache).

One SQLite file (default ``.matrix-run/history.sqlite``; ``--history PATH`` or ``MATRIX_RUN_HISTORY``), in WAL
mode, so two runs that finish at once both land. It stays bounded: rows unused for ``MAX_AGE_DAYS`` and the
oldest rows beyond ``MAX_ROWS`` (per table) are dropped on every write. Everything is recorded after every run
from the merged results (``History.record_cell``); there is no manual "store durations" step.

What the planner reads, per cell:

- ``tests``: each test's JUnit seconds (its setup + call + teardown), for cutting a long file by test id;
- ``file_walls``: the seconds each file's tests really took in their shard, setup start to teardown end, which is
  more than the JUnit times add up to (pytest's own per-test cost: hooks, reporting, fixture bookkeeping);
- ``fixed_cost``: what a shard costs beyond its tests (container start, interpreter and pytest start, collection,
  results back to the coordinator): ``Attempt.wall`` minus the file walls of the shard's first attempt.

Each is an exponential moving average (``WEIGHT_NEW``). Stores written before file walls and fixed costs were
kept are upgraded in place (two new tables; ``PRAGMA user_version`` says which schema a store has), and an older
matrix-run still reads and writes an upgraded store: it never looks at the new tables.

The flake ledger (``record_outcomes``; queried by runner/flakes.py): every run adds, per cell that ran and per test
with a node id, the test's outcome (``passed``, ``failed``, ``flaky``, ``skipped``, ``error``; a timeout is an error),
its attempts and failed attempts, with the run id, the time and the source digest (``ledger``), and one row per
(run, cell) with the cell's axes, status and how many of its tests ran and failed at first (``ledger_cells``, so a
run in which most tests of a cell failed can be told apart as an infrastructure incident). Both are bounded like the
rest: rows older than ``MAX_AGE_DAYS`` go, and beyond ``MAX_LEDGER_ROWS`` the oldest runs go whole.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import statistics
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from runner.results import CellResult, TestHistory

MAX_AGE_DAYS = 60
MAX_ROWS = 500_000
MAX_CACHED = 2_000
MAX_LEDGER_ROWS = 1_000_000  # test outcomes kept in the flake ledger (whole runs are dropped, oldest first)
WEIGHT_NEW = 0.7  # exponential moving average: how much the newest measurement counts
SCHEMA_VERSION = 3  # 1: durations (+ pos) and results; 2: + file_walls and fixed_costs; 3: + ledger, ledger_cells
OUTCOMES = ("passed", "failed", "flaky", "skipped", "error")  # a test's outcome in one run, as the ledger has it

SCHEMA = """
CREATE TABLE IF NOT EXISTS durations (
    scope TEXT NOT NULL, cell TEXT NOT NULL, nodeid TEXT NOT NULL, file TEXT NOT NULL,
    seconds REAL NOT NULL, updated REAL NOT NULL, pos INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (scope, cell, nodeid)
);
CREATE INDEX IF NOT EXISTS durations_by_cell ON durations (scope, cell);
CREATE TABLE IF NOT EXISTS results (
    key TEXT PRIMARY KEY, scope TEXT NOT NULL, cell TEXT NOT NULL, suite BLOB NOT NULL, created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS file_walls (
    scope TEXT NOT NULL, cell TEXT NOT NULL, file TEXT NOT NULL, seconds REAL NOT NULL, updated REAL NOT NULL,
    PRIMARY KEY (scope, cell, file)
);
CREATE TABLE IF NOT EXISTS fixed_costs (
    scope TEXT NOT NULL, cell TEXT NOT NULL, seconds REAL NOT NULL, updated REAL NOT NULL,
    PRIMARY KEY (scope, cell)
);
CREATE TABLE IF NOT EXISTS ledger (
    scope TEXT NOT NULL, run_id TEXT NOT NULL, cell TEXT NOT NULL, nodeid TEXT NOT NULL, outcome TEXT NOT NULL,
    attempts INTEGER NOT NULL, failed INTEGER NOT NULL, source TEXT NOT NULL, updated REAL NOT NULL,
    PRIMARY KEY (scope, run_id, cell, nodeid)
);
CREATE INDEX IF NOT EXISTS ledger_by_test ON ledger (scope, cell, nodeid);
CREATE INDEX IF NOT EXISTS ledger_by_time ON ledger (updated);
CREATE TABLE IF NOT EXISTS ledger_cells (
    scope TEXT NOT NULL, run_id TEXT NOT NULL, cell TEXT NOT NULL, axes TEXT NOT NULL, source TEXT NOT NULL,
    status TEXT NOT NULL, tests INTEGER NOT NULL, failing INTEGER NOT NULL, updated REAL NOT NULL,
    PRIMARY KEY (scope, run_id, cell)
);
CREATE INDEX IF NOT EXISTS ledger_cells_by_time ON ledger_cells (scope, updated);
"""


class Recorded(NamedTuple):
    """What ``History.record_cell`` stored for one cell."""

    durations: int  # test rows
    files: int  # file wall rows
    fixed_cost: float | None  # this run's per-shard fixed cost, when one was measured


@dataclass(frozen=True)
class Outcome:
    """One test in one cell of one run, as the flake ledger has it."""

    scope: str
    run_id: str
    cell: str
    test: str  # pytest's node id
    outcome: str  # one of OUTCOMES
    attempts: int  # attempts that reported it (1 + reruns)
    failed: int  # of which failed or errored
    source: str  # the run's source digest
    time: float  # when the run was recorded (seconds since the epoch)


@dataclass(frozen=True)
class LedgerCell:
    """One cell of one run in the flake ledger."""

    scope: str
    run_id: str
    cell: str
    axes: dict[str, str]
    source: str
    status: str  # the cell's status in that run
    tests: int  # tests that ran (not skipped)
    failing: int  # of which failed or errored on their first attempt (flaky ones too)
    time: float


def ledger_outcome(hist: TestHistory) -> str:
    """A test's outcome in one run, one of OUTCOMES (a timeout is an error)."""
    status = str(hist.status)
    return status if status in OUTCOMES else "error"


# ---------------------------------------------------------------------------------------------------- measurements


def measured_durations(cell: CellResult) -> list[tuple[str, float, int]]:
    """(node id, seconds, position in its file) of each test's first attempt, for the duration history.

    Timeouts say nothing about a test's duration. Positions follow pytest's collection order, so that a file
    split across shards is cut into contiguous runs of tests (suites whose tests depend on the ones before).
    """
    position: dict[str, int] = {}
    for att in cell.attempts:
        per_file: dict[str, int] = {}
        for nodeid in att.order:
            file = nodeid.split("::", 1)[0]
            index = per_file.get(file, 0)
            per_file[file] = index + 1
            position.setdefault(nodeid, index)
    return [
        (h.first.nodeid, h.first.time, position.get(h.first.nodeid, 0))
        for h in cell.tests.values()
        if h.first.nodeid and h.first.status != "timeout"
    ]


def measured_file_walls(cell: CellResult) -> dict[str, float]:
    """Project-relative file -> wall seconds of its tests in this run, summed over the shards that ran them.

    Only first attempts that ended as pytest ending (kind ``ok``) count, and only for files whose every test
    they finished: a file cut short by a timeout, a lost container or a cancelled shard (a file split across
    shards counts only when all its parts ran) would be measured too short. Reruns are not counted: they run a
    few failed tests, not the file.

    A file such an attempt was given that ran no test at all (every test deselected by the project's own
    ``-m "not slow"``, skipped at import, or none left) takes 0 seconds: without it the planner would go on
    weighing the file by its test definitions, as if they ran.
    """
    walls: dict[str, float] = {}
    done: set[tuple[str, str]] = set()  # (file, node id) finished by a first ok attempt
    expected: set[tuple[str, str]] = set()  # every test of the files any attempt collected
    tainted: set[str] = set()
    for att in cell.attempts:
        for nodeid in (*att.order, *att.collected):
            expected.add((att.project_file(nodeid), nodeid))
        if att.attempt != 1:
            continue
        if att.kind != "ok":
            tainted.update(att.project_file(n) for n in (*att.collected, *att.finished))
            tainted.update(att.file_walls)
            continue
        done.update((att.project_file(n), n) for n in att.finished)
        for file, seconds in att.file_walls.items():
            walls[file] = walls.get(file, 0.0) + max(0.0, seconds)
    missing = {file for file, nodeid in expected - done}
    with_tests = {file for file, _ in expected}
    for att in cell.attempts:
        if att.attempt == 1 and att.kind == "ok":
            for file in att.planned:
                if file not in with_tests and file not in tainted:
                    walls.setdefault(file, 0.0)
    return {f: s for f, s in sorted(walls.items()) if f not in tainted and f not in missing}


def measured_fixed_cost(cell: CellResult) -> float | None:
    """Seconds a shard of this cell cost beyond its tests in this run (``Attempt.wall`` minus its file walls),
    the median over the cell's first attempts that ended as pytest ending; None when there is none."""
    costs = [
        max(0.0, att.wall - sum(att.file_walls.values()))
        for att in cell.attempts
        if att.attempt == 1 and att.kind == "ok" and att.wall > 0
    ]
    return statistics.median(costs) if costs else None


# ---------------------------------------------------------------------------------------------------- the store


class History:
    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(str(path), timeout=60, isolation_level=None)
        # switching a new file to WAL fails at once ("database is locked") while another process is doing the
        # same, whatever the busy timeout: try again for a while
        for attempt in range(200):
            try:
                self.db.execute("PRAGMA journal_mode=WAL")
                self._migrate()
                break
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or attempt == 199:
                    raise
                time.sleep(0.05)
        self.db.execute("PRAGMA synchronous=NORMAL")

    def _migrate(self) -> None:
        """Bring any earlier store up to ``SCHEMA_VERSION``; every step only adds, so older readers keep working."""
        (version,) = self.db.execute("PRAGMA user_version").fetchone()
        if version >= SCHEMA_VERSION:
            return
        self.db.execute("BEGIN IMMEDIATE")
        try:
            # another run may have upgraded the store meanwhile: every step below is idempotent anyway
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    self.db.execute(statement)
            columns = {row[1] for row in self.db.execute("PRAGMA table_info(durations)")}
            if "pos" not in columns:  # a store written before positions were kept
                self.db.execute("ALTER TABLE durations ADD COLUMN pos INTEGER NOT NULL DEFAULT 0")
            self.db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise

    def close(self) -> None:
        self.db.close()

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise

    def _prune(self, db: sqlite3.Connection, table: str, now: float) -> None:
        """Keep ``table`` bounded: rows unused for ``MAX_AGE_DAYS``, then the oldest beyond ``MAX_ROWS``, go."""
        db.execute(f"DELETE FROM {table} WHERE updated < ?", (now - MAX_AGE_DAYS * 86400,))
        (count,) = db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()
        if count > MAX_ROWS:
            db.execute(
                f"DELETE FROM {table} WHERE rowid IN (SELECT rowid FROM {table} ORDER BY updated LIMIT ?)",
                (count - MAX_ROWS,),
            )

    # ------------------------------------------------------------------------------------------------ a finished cell

    def record_cell(self, scope: str, cell_id: str, cell: CellResult, complete: bool = True) -> Recorded:
        """Everything the planner learns from one finished cell, in one transaction: its tests' durations
        (``record``), its files' wall seconds and its shards' fixed cost.

        ``complete``: the cell ran to its end (not cancelled, no infra failure or timeout), so node ids of its
        measured files that no attempt reported are forgotten (see ``record``).
        """
        durations = measured_durations(cell)
        walls = measured_file_walls(cell)
        fixed = measured_fixed_cost(cell)
        now = time.time()
        with self._write() as db:
            self._record_durations(db, scope, cell_id, durations, complete, now)
            if walls:
                self._upsert_walls(db, scope, cell_id, walls, now)
            if fixed is not None:
                self._upsert_fixed_cost(db, scope, cell_id, fixed, now)
        return Recorded(len(durations), len(walls), fixed)

    def record_walls(self, scope: str, cell: str, walls: Mapping[str, float], fixed_cost: float | None = None) -> int:
        """Fold per-file wall seconds (and a per-shard fixed cost) of one cell into the store; returns the number
        of file rows. ``record_cell`` is the usual way in; this one takes the numbers themselves."""
        now = time.time()
        with self._write() as db:
            if walls:
                self._upsert_walls(db, scope, cell, walls, now)
            if fixed_cost is not None:
                self._upsert_fixed_cost(db, scope, cell, fixed_cost, now)
        return len(walls)

    def _upsert_walls(
        self, db: sqlite3.Connection, scope: str, cell: str, walls: Mapping[str, float], now: float
    ) -> None:
        db.executemany(
            "INSERT INTO file_walls (scope, cell, file, seconds, updated) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (scope, cell, file) DO UPDATE SET "
            f"seconds = {WEIGHT_NEW} * excluded.seconds + {1 - WEIGHT_NEW} * seconds, updated = excluded.updated",
            [(scope, cell, file, max(0.0, float(seconds)), now) for file, seconds in sorted(walls.items())],
        )
        self._prune(db, "file_walls", now)

    def _upsert_fixed_cost(self, db: sqlite3.Connection, scope: str, cell: str, seconds: float, now: float) -> None:
        db.execute(
            "INSERT INTO fixed_costs (scope, cell, seconds, updated) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (scope, cell) DO UPDATE SET "
            f"seconds = {WEIGHT_NEW} * excluded.seconds + {1 - WEIGHT_NEW} * seconds, updated = excluded.updated",
            (scope, cell, max(0.0, float(seconds)), now),
        )
        self._prune(db, "fixed_costs", now)

    def file_walls(self, scope: str, cell: str) -> dict[str, float]:
        """Project-relative file -> wall seconds of its tests in one cell; a cell never measured borrows the
        mean of its siblings (as ``tests`` does)."""
        rows = self.db.execute(
            "SELECT file, seconds FROM file_walls WHERE scope = ? AND cell = ? ORDER BY file", (scope, cell)
        ).fetchall()
        if not rows:
            rows = self.db.execute(
                "SELECT file, AVG(seconds) FROM file_walls WHERE scope = ? GROUP BY file ORDER BY file", (scope,)
            ).fetchall()
        return {file: float(seconds) for file, seconds in rows}

    def fixed_cost(self, scope: str, cell: str) -> float | None:
        """Seconds a shard of this cell costs beyond its tests; else the mean over the scope's cells; else None."""
        row = (
            self.db.execute("SELECT seconds FROM fixed_costs WHERE scope = ? AND cell = ?", (scope, cell)).fetchone()
            or self.db.execute("SELECT AVG(seconds) FROM fixed_costs WHERE scope = ?", (scope,)).fetchone()
        )
        return None if row is None or row[0] is None else float(row[0])

    def measured_cells(self, scope: str) -> set[str]:
        """Cells of a scope that have measurements of their own (the others borrow their siblings')."""
        rows = self.db.execute(
            "SELECT DISTINCT cell FROM durations WHERE scope = ? UNION SELECT cell FROM file_walls WHERE scope = ? "
            "UNION SELECT cell FROM fixed_costs WHERE scope = ?",
            (scope, scope, scope),
        ).fetchall()
        return {cell for (cell,) in rows}

    # ------------------------------------------------------------------------------------------------ durations

    def tests(self, scope: str, cell: str) -> dict[str, dict[str, float]]:
        """file -> {node id -> seconds} for one cell, each file's tests in pytest's order; a cell never measured
        borrows the mean of its siblings."""
        rows = self.db.execute(
            "SELECT file, nodeid, seconds FROM durations WHERE scope = ? AND cell = ? ORDER BY file, pos, nodeid",
            (scope, cell),
        ).fetchall()
        if not rows:
            rows = self.db.execute(
                "SELECT file, nodeid, AVG(seconds) FROM durations WHERE scope = ? GROUP BY file, nodeid "
                "ORDER BY file, MIN(pos), nodeid",
                (scope,),
            ).fetchall()
        out: dict[str, dict[str, float]] = {}
        for file, nodeid, seconds in rows:
            out.setdefault(file, {})[nodeid] = float(seconds)
        return out

    def record(
        self,
        scope: str,
        cell: str,
        measured: Iterable[tuple[str, float] | tuple[str, float, int]],
        complete: bool = True,
    ) -> int:
        """Fold (node id, seconds) measurements of one cell into the store. Returns the number of rows.

        ``complete``: the measurements cover whole files, so a node id of those files that was not measured
        (a test renamed or removed, a parameter id holding the time) is forgotten now rather than inflating its
        file for ``MAX_AGE_DAYS``.
        """
        measured = list(measured)
        if not measured:
            return 0
        with self._write() as db:
            return self._record_durations(db, scope, cell, measured, complete, time.time())

    def _record_durations(
        self,
        db: sqlite3.Connection,
        scope: str,
        cell: str,
        measured: Iterable[tuple[str, float] | tuple[str, float, int]],
        complete: bool,
        now: float,
    ) -> int:
        rows = [
            (scope, cell, m[0], m[0].split("::", 1)[0], m[1], now, m[2] if len(m) > 2 else 0)  # type: ignore[misc]
            for m in measured
        ]
        if not rows:
            return 0
        if complete:
            files = sorted({r[3] for r in rows})
            measured_ids = {r[2] for r in rows}
            for i in range(0, len(files), 500):
                chunk = files[i : i + 500]
                marks = ",".join("?" * len(chunk))
                stale = db.execute(
                    f"SELECT nodeid FROM durations WHERE scope = ? AND cell = ? AND file IN ({marks})",
                    (scope, cell, *chunk),
                ).fetchall()
                gone = [(scope, cell, n) for (n,) in stale if n not in measured_ids]
                db.executemany("DELETE FROM durations WHERE scope = ? AND cell = ? AND nodeid = ?", gone)
        db.executemany(
            "INSERT INTO durations (scope, cell, nodeid, file, seconds, updated, pos) VALUES (?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (scope, cell, nodeid) DO UPDATE SET "
            f"seconds = {WEIGHT_NEW} * excluded.seconds + {1 - WEIGHT_NEW} * seconds, "
            "updated = excluded.updated, pos = excluded.pos",
            rows,
        )
        self._prune(db, "durations", now)
        return len(rows)

    # ------------------------------------------------------------------------------------------------ results

    # ------------------------------------------------------------------------------------------------ flake ledger

    def record_run(self, scope: str, run_id: str, source: str, cells: list[CellResult]) -> None:
        """The pipeline's history step: each cell's durations (a cell cut short by cancel, infra or a timeout is
        recorded as partial) and the flake ledger's outcomes."""
        from runner.results import Status

        for cell in cells:
            whole = cell.status not in (Status.CANCELLED, Status.INFRA, Status.TIMEOUT)
            self.record_cell(scope, cell.cell_id, cell, complete=whole)
        self.record_outcomes(scope, run_id, source, cells)

    def record_outcomes(self, scope: str, run_id: str, source: str, cells: Iterable[CellResult]) -> int:
        """Add one run's test outcomes to the flake ledger, in one transaction; returns the number of test rows.

        Only cells that ran count (a cached cell ran nothing), and only tests with a node id (a test its shard never
        ran to its end, a file that failed to import, have none: they say nothing about the test itself).
        """
        now = time.time()
        tests: list[tuple[object, ...]] = []
        cell_rows: list[tuple[object, ...]] = []
        for cell in cells:
            if not cell.attempts:
                continue
            ran = failing = 0
            for hist in cell.tests.values():
                nodeid = next((c.nodeid for c in (hist.first, *hist.reruns) if c.nodeid), None)
                if nodeid is None:
                    continue
                outcome = ledger_outcome(hist)
                attempts = [hist.first, *hist.reruns]
                failed = len(hist.failed_attempts)
                tests.append((scope, run_id, cell.cell_id, nodeid, outcome, len(attempts), failed, source, now))
                if outcome != "skipped":
                    ran += 1
                    failing += outcome in ("failed", "error", "flaky")
            axes = json.dumps(cell.axes, sort_keys=True)
            cell_rows.append((scope, run_id, cell.cell_id, axes, source, str(cell.status), ran, failing, now))
        with self._write() as db:
            db.executemany("INSERT OR REPLACE INTO ledger VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", tests)
            db.executemany("INSERT OR REPLACE INTO ledger_cells VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", cell_rows)
            self._prune_ledger(db, now)
        return len(tests)

    def _prune_ledger(self, db: sqlite3.Connection, now: float) -> None:
        """Rows older than ``MAX_AGE_DAYS`` go; beyond ``MAX_LEDGER_ROWS`` the oldest runs go whole (a run's rows
        share one time), so no run is left with part of its tests."""
        cutoff = now - MAX_AGE_DAYS * 86400
        db.execute("DELETE FROM ledger WHERE updated < ?", (cutoff,))
        (count,) = db.execute("SELECT COUNT(*) FROM ledger").fetchone()
        if count > MAX_LEDGER_ROWS:
            (edge,) = db.execute(
                "SELECT updated FROM ledger ORDER BY updated LIMIT 1 OFFSET ?", (count - MAX_LEDGER_ROWS - 1,)
            ).fetchone()
            db.execute("DELETE FROM ledger WHERE updated <= ?", (edge,))
            db.execute("DELETE FROM ledger_cells WHERE updated <= ?", (edge,))
        db.execute("DELETE FROM ledger_cells WHERE updated < ?", (cutoff,))

    def ledger_scopes(self) -> list[str]:
        """Every scope (matrix) the ledger has runs of."""
        return [s for (s,) in self.db.execute("SELECT DISTINCT scope FROM ledger_cells ORDER BY scope")]

    def ledger_runs(self, scope: str, last: int | None = None) -> list[str]:
        """The run ids of a scope, oldest first; with ``last``, only the ``last`` newest."""
        rows = self.db.execute(
            "SELECT run_id FROM ledger_cells WHERE scope = ? GROUP BY run_id ORDER BY MIN(updated) DESC, run_id DESC "
            "LIMIT ?",
            (scope, -1 if last is None else max(0, last)),
        ).fetchall()
        return [r for (r,) in reversed(rows)]

    def _rows_of_runs(self, select: str, scope: str, run_ids: Sequence[str]) -> list[Any]:
        """``select`` (``SELECT ... FROM table``) for those runs of ``scope``, 500 run ids per query."""
        rows: list[Any] = []
        for k in range(0, len(run_ids), 500):
            chunk = list(run_ids[k : k + 500])
            marks = ",".join("?" * len(chunk))
            rows += self.db.execute(f"{select} WHERE scope = ? AND run_id IN ({marks})", (scope, *chunk)).fetchall()
        return rows

    def ledger_cells(self, scope: str, run_ids: Sequence[str]) -> list[LedgerCell]:
        """The cells of those runs, oldest run first."""
        select = "SELECT scope, run_id, cell, axes, source, status, tests, failing, updated FROM ledger_cells"
        rows = self._rows_of_runs(select, scope, run_ids)
        out = [LedgerCell(r[0], r[1], r[2], json.loads(r[3]), r[4], r[5], r[6], r[7], r[8]) for r in rows]
        return sorted(out, key=lambda c: (c.time, c.run_id, c.cell))

    def ledger_outcomes(self, scope: str, run_ids: Sequence[str]) -> list[Outcome]:
        """The test outcomes of those runs, oldest run first."""
        select = "SELECT scope, run_id, cell, nodeid, outcome, attempts, failed, source, updated FROM ledger"
        out = [Outcome(*r) for r in self._rows_of_runs(select, scope, run_ids)]
        return sorted(out, key=lambda o: (o.time, o.run_id, o.cell, o.test))

    # ------------------------------------------------------------------------------------------------ results

    def cached(self, key: str) -> bytes | None:
        row = self.db.execute("SELECT suite FROM results WHERE key = ?", (key,)).fetchone()
        return bytes(row[0]) if row else None

    def store(self, key: str, scope: str, cell: str, suite: bytes) -> None:
        with self._write() as db:
            db.execute(
                "INSERT OR REPLACE INTO results (key, scope, cell, suite, created) VALUES (?, ?, ?, ?, ?)",
                (key, scope, cell, suite, time.time()),
            )
            db.execute(
                "DELETE FROM results WHERE key NOT IN (SELECT key FROM results ORDER BY created DESC LIMIT ?)",
                (MAX_CACHED,),
            )


def cache_key(parts: dict[str, object]) -> str:
    """A stable key over every input of a cell's result."""
    import hashlib

    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()
