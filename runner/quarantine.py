"""Quarantine: tests that still run and are reported, but whose failures set no exit code.

Entries come from the matrix file's ``quarantine:`` key and from ``--quarantine FILE`` (config.QuarantineEntry:
``test`` is a pytest node id or an ``fnmatch`` glob over node ids; ``cells`` are AXIS=VALUE filters, all of which a
cell must match; ``reason`` says why). A test is matched by its node id (relative to pytest's rootdir, as pytest
prints it) or by JUnit's ``classname::name`` (as results.json and junit.xml name it).

``apply`` marks the matched tests of each cell (``TestHistory.quarantined``) and decides the cell's status again
with the quarantined tests that failed, errored, timed out or were flaky set aside, so ``summary.run_status``
gives exit 0 for a run whose only failures are quarantined. It returns new cell objects and leaves the ones it was
given as they were: the history and the ``--cache`` store keep recording what really happened (a cell with a
quarantined failure is never remembered as fully passing). What quarantine does not change:

- a cell none of whose tests outside quarantine ran keeps its status: no cell is green on quarantined tests alone;
- a status the coordinator decided rather than the tests (cancelled, no_capacity, an image that did not build, a
  shard that timed out or broke) stays as it is;
- fail-fast acts during the run, before quarantine is applied: run quarantined matrices with
  ``strategy.fail-fast: false`` (or ``--no-fail-fast``) so that a quarantined failure cancels nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import fnmatch
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from runner import config
from runner.errors import UserError
from runner.execution import RunResults
from runner.results import BAD, CellResult, Status, TestHistory, cell_status

SET_ASIDE = BAD | {Status.FLAKY}  # what a quarantined test's outcome may be without changing its cell's verdict


@dataclass(frozen=True)
class Quarantined:
    """One quarantined test in one cell, as the reports list it."""

    cell: str
    test: str  # pytest's node id when known, else JUnit's classname::name
    status: Status  # what the test really did
    reason: str  # the entry's reason


def test_names(hist: TestHistory) -> list[str]:
    """The names a quarantine entry can match a test by: its node ids (every attempt's, usually one) and JUnit's
    classname::name."""
    names = [c.nodeid for c in (hist.first, *hist.reruns) if c.nodeid]
    names.append("::".join(part for part in hist.first.key if part))
    return list(dict.fromkeys(names))


def label(hist: TestHistory) -> str:
    """How reports name a test: its node id when known, else JUnit's classname::name."""
    return test_names(hist)[0]


def matches(entry: config.QuarantineEntry, axes: Mapping[str, str], names: Iterable[str]) -> bool:
    """Whether ``entry`` covers a test known by ``names`` in a cell with these axis values."""
    if any(axes.get(axis) != value for axis, value in entry.cells):
        return False
    return any(name == entry.test or fnmatch.fnmatchcase(name, entry.test) for name in names)


def entry_for(
    entries: Sequence[config.QuarantineEntry], axes: Mapping[str, str], hist: TestHistory
) -> config.QuarantineEntry | None:
    """The first entry that covers the test, if any."""
    names = test_names(hist)
    return next((e for e in entries if matches(e, axes, names)), None)


def unknown_axes(entries: Sequence[config.QuarantineEntry], axes: Iterable[str]) -> list[str]:
    """One line per entry whose ``cells`` filter names an axis the matrix does not have (it can match no cell)."""
    known = set(axes)
    return [
        f"quarantine entry {e.test!r}: cells filter names '{axis}', which is not an axis of the matrix "
        f"(axes: {', '.join(sorted(known)) or 'none'}); it matches no cell"
        for e in entries
        for axis, _ in e.cells
        if axis not in known
    ]


def apply_to_cell(cell: CellResult, entries: Sequence[config.QuarantineEntry]) -> CellResult:
    """The cell with its quarantined tests marked and its status decided with their failures set aside; the same
    object when no entry covers any of its tests."""
    tests: dict[tuple[str, str], TestHistory] = {}
    marked = False
    for key, hist in cell.tests.items():
        entry = entry_for(entries, cell.axes, hist)
        if entry is None:
            tests[key] = hist
            continue
        tests[key] = dataclasses.replace(hist, quarantined=True, quarantine_reason=entry.reason)
        marked = True
    if not marked:
        return cell
    status, reason = cell.status, cell.reason
    set_aside = [h for h in tests.values() if h.quarantined and h.status in SET_ASIDE]
    rest = {k: h for k, h in tests.items() if not (h.quarantined and h.status in SET_ASIDE)}
    decided_by_tests = cell.attempts and cell_status(cell.tests, cell.attempts)[0] is cell.status
    if set_aside and decided_by_tests:
        if any(h.status is not Status.SKIPPED for h in rest.values()):
            status, reason = cell_status(rest, cell.attempts)
            failed = [h for h in set_aside if h.status in BAD]
            if failed:
                note = f"{len(failed)} quarantined test(s) failed: {', '.join(sorted(label(h) for h in failed)[:5])}"
                note += " ..." if len(failed) > 5 else ""
                reason = f"{reason}; {note}" if reason else note
        else:
            reason += "; every test that ran is quarantined: a cell is not green on quarantined tests alone"
    return dataclasses.replace(cell, tests=tests, status=status, reason=reason)


def apply(results: RunResults, entries: Sequence[config.QuarantineEntry]) -> RunResults:
    """The run with quarantine applied to every cell (see the module's docstring); ``results`` is left as it was."""
    if not entries:
        return results
    return dataclasses.replace(results, cells=[apply_to_cell(c, entries) for c in results.cells])


def quarantined(results: RunResults) -> list[Quarantined]:
    """Every quarantined test of the run, cell by cell, in each cell's order."""
    return [
        Quarantined(cell.cell_id, label(h), h.status, h.quarantine_reason)
        for cell in results.cells
        for h in cell.tests.values()
        if h.quarantined
    ]


def load_file(path: str) -> tuple[config.QuarantineEntry, ...]:
    """``--quarantine FILE`` as argparse reads it: the entries, or one line naming the file (exit 4)."""
    if not Path(path).is_file():
        raise argparse.ArgumentTypeError(f"{path}: quarantine file not found; check the path")
    try:
        return config.load_quarantine(path)
    except UserError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
