"""What earlier runs measured: per-test durations (for planning) and fully passing cells (the result cache).

One SQLite file (default ``.matrix-run/history.sqlite``; ``--history PATH`` or ``MATRIX_RUN_HISTORY``), in WAL
mode, so two runs that finish at once both land. It stays bounded: rows unused for ``MAX_AGE_DAYS`` and the
oldest rows beyond ``MAX_ROWS`` are dropped on every write. Durations are recorded after every run from the
merged results; there is no manual "store durations" step.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

MAX_AGE_DAYS = 60
MAX_ROWS = 500_000
MAX_CACHED = 2_000
WEIGHT_NEW = 0.7  # exponential moving average: how much the newest measurement counts

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
"""


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
                self.db.executescript(SCHEMA)
                columns = {row[1] for row in self.db.execute("PRAGMA table_info(durations)")}
                if "pos" not in columns:  # a store written before positions were kept
                    self.db.execute("ALTER TABLE durations ADD COLUMN pos INTEGER NOT NULL DEFAULT 0")
                break
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or attempt == 199:
                    raise
                time.sleep(0.05)
        self.db.execute("PRAGMA synchronous=NORMAL")

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
        now = time.time()
        rows = [
            (scope, cell, m[0], m[0].split("::", 1)[0], m[1], now, m[2] if len(m) > 2 else 0)  # type: ignore[misc]
            for m in measured
        ]
        if not rows:
            return 0
        with self._write() as db:
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
            db.execute("DELETE FROM durations WHERE updated < ?", (now - MAX_AGE_DAYS * 86400,))
            (count,) = db.execute("SELECT COUNT(*) FROM durations").fetchone()
            if count > MAX_ROWS:
                db.execute(
                    "DELETE FROM durations WHERE rowid IN (SELECT rowid FROM durations ORDER BY updated LIMIT ?)",
                    (count - MAX_ROWS,),
                )
        return len(rows)

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
