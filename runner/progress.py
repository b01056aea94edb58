"""What the user sees while a run goes: a rich live table on a terminal, plain lines in CI logs. Decides nothing.

The coordinator reports events; a view only records and draws them. The live view redraws at a fixed rate from
counters, so thousands of shards cost the same per frame as ten (only the busiest cells are listed).
"""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Protocol, TextIO


class View(Protocol):
    def begin(self, cells: dict[str, int]) -> None: ...
    def image(self, cell_id: str, state: str, detail: str = "") -> None: ...
    def shard(self, cell_id: str, shard: str, attempt: int, state: str, passed: int = 0, failed: int = 0) -> None: ...
    def cell(self, cell_id: str, status: str, counts: dict[str, int], reason: str = "") -> None: ...
    def note(self, text: str) -> None: ...
    def end(self) -> None: ...


@dataclass
class _CellRow:
    shards: int
    image: str = "pending"
    image_since: float = field(default_factory=time.monotonic)  # when the image step shown began
    running: int = 0
    done: int = 0
    failed_shards: int = 0
    passed: int = 0
    failed: int = 0
    status: str = ""


IMAGE_DONE = frozenset({"built", "cached", "failed", "pending"})


@dataclass
class _State:
    started: float = field(default_factory=time.monotonic)
    rows: dict[str, _CellRow] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


class PlainView:
    """One line per event, for logs that are not a terminal."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stdout
        self.t0 = time.monotonic()

    def _line(self, text: str) -> None:
        print(f"[{time.monotonic() - self.t0:7.1f}s] {text}", file=self.stream, flush=True)

    def begin(self, cells: dict[str, int]) -> None:
        self._line(f"{len(cells)} cell(s), {sum(cells.values())} shard(s)")

    def image(self, cell_id: str, state: str, detail: str = "") -> None:
        self._line(f"{cell_id}: image {state}{' ' + detail if detail else ''}")

    def shard(self, cell_id: str, shard: str, attempt: int, state: str, passed: int = 0, failed: int = 0) -> None:
        extra = f" ({passed} passed, {failed} failed)" if state not in ("running", "queued") else ""
        self._line(f"{cell_id}/{shard} attempt {attempt}: {state}{extra}")

    def cell(self, cell_id: str, status: str, counts: dict[str, int], reason: str = "") -> None:
        tail = f" - {reason}" if reason else ""
        c = counts
        self._line(
            f"{cell_id}: {status.upper()} {c.get('tests', 0)} tests, {c.get('failures', 0)} failed, "
            f"{c.get('errors', 0)} errors, {c.get('skipped', 0)} skipped, {c.get('flaky', 0)} flaky{tail}"
        )

    def note(self, text: str) -> None:
        self._line(text)

    def end(self) -> None:
        pass


class LiveView:
    """A rich live table: cells x shards, done/running/failed, tests passed/failed so far, elapsed."""

    MAX_ROWS = 15

    def __init__(self) -> None:
        from rich.console import Console

        self.console = Console()
        self.state = _State()
        self.lock = threading.Lock()
        self.live: Any = None

    def _render(self):  # type: ignore[no-untyped-def]
        from rich.table import Table

        with self.lock:
            rows = dict(self.state.rows)
            elapsed = time.monotonic() - self.state.started
            done = sum(r.done for r in rows.values())
            total = sum(r.shards for r in rows.values())
            passed = sum(r.passed for r in rows.values())
            failed = sum(r.failed for r in rows.values())
            notes = list(self.state.notes[-3:])
        table = Table(
            title=f"matrix-run  {done}/{total} shards  {passed} passed  {failed} failed  {elapsed:5.0f}s",
            title_justify="left",
            expand=False,
        )
        for col in ("cell", "image", "shards done", "running", "failed", "tests passed", "tests failed", "status"):
            table.add_column(col)
        active = sorted(rows.items(), key=lambda kv: (kv[1].status != "", -kv[1].running, kv[0]))
        for cid, r in active[: self.MAX_ROWS]:
            style = {"failed": "red", "passed": "green", "flaky": "yellow"}.get(r.status, "")
            image = r.image
            if image not in IMAGE_DONE:  # a step under way: for how long
                image = f"{image} {time.monotonic() - r.image_since:.0f}s"
            table.add_row(
                cid,
                image,
                f"{r.done}/{r.shards}",
                str(r.running),
                str(r.failed_shards),
                str(r.passed),
                str(r.failed),
                f"[{style}]{r.status}[/{style}]" if style else r.status,
            )
        if len(active) > self.MAX_ROWS:
            table.caption = f"... and {len(active) - self.MAX_ROWS} more cells"
        if notes:
            table.caption = (table.caption or "") + "\n" + "\n".join(notes)
        return table

    def begin(self, cells: dict[str, int]) -> None:
        from rich.live import Live

        with self.lock:
            self.state.rows = {cid: _CellRow(shards=n) for cid, n in cells.items()}
        self.live = Live(get_renderable=self._render, console=self.console, refresh_per_second=2, transient=False)
        self.live.start()

    def image(self, cell_id: str, state: str, detail: str = "") -> None:
        with self.lock:
            row = self.state.rows[cell_id]
            row.image, row.image_since = state, time.monotonic()

    def shard(self, cell_id: str, shard: str, attempt: int, state: str, passed: int = 0, failed: int = 0) -> None:
        with self.lock:
            row = self.state.rows[cell_id]
            if state == "running":
                row.running += 1
            else:
                row.running = max(0, row.running - 1)
                row.passed += passed
                row.failed += failed
                if state == "done":
                    row.done += 1
                elif state == "failed":
                    row.done += 1
                    row.failed_shards += 1

    def cell(self, cell_id: str, status: str, counts: dict[str, int], reason: str = "") -> None:
        with self.lock:
            row = self.state.rows[cell_id]
            row.status = status
            row.passed = counts.get("passed", 0)
            row.failed = counts.get("failures", 0) + counts.get("errors", 0)

    def note(self, text: str) -> None:
        with self.lock:
            self.state.notes.append(text)

    def end(self) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None


def make_view(plain: bool | None = None) -> View:
    """A live view on a terminal, plain lines otherwise (or when asked)."""
    if plain is None:
        plain = not sys.stdout.isatty()
    return PlainView() if plain else LiveView()
