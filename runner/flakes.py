"""The flake ledger's queries: which tests flip between passing and failing across runs, which quarantine entries
to add or lift, and what changed since the previous run of a matrix. The store itself is history.py's.

A window is the last N runs of a matrix (its history scope). Inside it, per cell and test:

- ``runs``: the runs in which the test ran (a skipped test did not run);
- ``failures``: the runs in which it failed or errored (every attempt); ``flaky``: the runs in which it failed, then
  passed on a rerun;
- ``flips``: how often its result changed, attempt by attempt, runs in time order: a flaky run holds one change
  (failed -> passed), and a run whose first attempt differs from the previous run's last holds one more. ``flip_rate``
  is ``flips / runs``: 0 for a test that always passes or always fails; a test that fails on its first attempt and
  passes on its rerun in every run scores just under 2, one that alternates between passing and failing runs scores
  just under 1;
- ``same_source``: it passed and failed on the same source digest (in one run or in two): the code did not change,
  the outcome did. The strongest signal that the test, not the code under it, is flaky.

A test is listed when it both passed and failed within the window. A (run, cell) in which most of the tests that ran
failed on their first attempt (more than ``INCIDENT_SHARE``, and at least ``INCIDENT_MIN`` of them) is left out
as an infrastructure incident: a broken node or network says nothing about any one test.
"""

from __future__ import annotations

import datetime
import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import yaml

from runner import config, quarantine
from runner.history import History, LedgerCell, Outcome, ledger_outcome
from runner.results import CellResult, junit_names

DEFAULT_LAST = 30  # runs in the window
DEFAULT_THRESHOLD = 0.2  # flip rate from which --suggest-quarantine suggests an entry
DEFAULT_LIFT_AFTER = 20  # runs a quarantined test must pass in a row before its entry is reported ready to lift
INCIDENT_SHARE = 0.5
INCIDENT_MIN = 3

PASSING = frozenset({"passed", "flaky"})  # outcomes in which the test passed (at last)
FAILING = frozenset({"failed", "error", "flaky"})  # outcomes in which it failed (at least once)


@dataclass(frozen=True)
class Flake:
    """One test in one cell that both passed and failed within the window."""

    scope: str
    cell: str
    test: str  # pytest's node id
    axes: dict[str, str]
    runs: int
    failures: int
    flaky: int
    flips: int
    flip_rate: float
    same_source: bool
    last_failed: float  # when (seconds since the epoch) the last run in which it failed was recorded

    def as_json(self) -> dict[str, object]:
        return {
            "test": self.test,
            "cell": self.cell,
            "runs": self.runs,
            "failures": self.failures,
            "flaky": self.flaky,
            "flip_rate": self.flip_rate,
            "flips": self.flips,
            "same_source": self.same_source,
            "scope": self.scope,
            "axes": self.axes,
            "last_failed": _iso(self.last_failed),
        }


@dataclass(frozen=True)
class Window:
    """The ledger rows of the last runs of one scope, incidents left out."""

    scope: str
    runs: list[str]  # run ids, oldest first
    cells: dict[tuple[str, str], LedgerCell]  # (run id, cell) -> its row, incidents left out
    incidents: list[LedgerCell]
    outcomes: list[Outcome]  # of the cells kept, oldest run first


def is_incident(cell: LedgerCell) -> bool:
    """Most of the cell's tests failed in that run: the environment, not the tests (see the module's docstring)."""
    return cell.failing >= INCIDENT_MIN and cell.failing > INCIDENT_SHARE * cell.tests


def window(history: History, scope: str, last: int | None = DEFAULT_LAST) -> Window:
    """The last ``last`` runs of ``scope`` (every run when None), incidents left out."""
    runs = history.ledger_runs(scope, last)
    kept: dict[tuple[str, str], LedgerCell] = {}
    incidents = []
    for cell in history.ledger_cells(scope, runs):
        if is_incident(cell):
            incidents.append(cell)
        else:
            kept[(cell.run_id, cell.cell)] = cell
    outcomes = [o for o in history.ledger_outcomes(scope, runs) if (o.run_id, o.cell) in kept]
    return Window(scope, runs, kept, incidents, outcomes)


def _sequence(outcome: Outcome) -> str:
    """The test's results in one run, attempt by attempt, as P and F: passed P, failed FFF, flaky FP."""
    if outcome.outcome == "passed":
        return "P"
    if outcome.outcome == "flaky":
        return "F" * max(1, outcome.failed) + "P"
    return "F" * max(1, outcome.attempts)


def flips(outcomes: Iterable[Outcome]) -> int:
    """Changes of result, attempt by attempt, over runs in the order given (skipped runs left out)."""
    seq = "".join(_sequence(o) for o in outcomes if o.outcome != "skipped")
    return sum(1 for a, b in itertools.pairwise(seq) if a != b)


def summarize(scope: str, cell: str, axes: dict[str, str], outcomes: Sequence[Outcome]) -> Flake | None:
    """One test's outcomes in one cell (oldest first) -> a Flake, or None when it did not both pass and fail."""
    ran = [o for o in outcomes if o.outcome != "skipped"]
    if not ran or not any(o.outcome in PASSING for o in ran) or not any(o.outcome in FAILING for o in ran):
        return None
    by_source: dict[str, set[str]] = {}
    for o in ran:
        seen = by_source.setdefault(o.source, set())
        seen.update({"pass"} if o.outcome == "passed" else {"fail"} if o.outcome != "flaky" else {"pass", "fail"})
    changes = flips(ran)
    return Flake(
        scope=scope,
        cell=cell,
        test=ran[0].test,
        axes=axes,
        runs=len(ran),
        failures=sum(o.outcome in ("failed", "error") for o in ran),
        flaky=sum(o.outcome == "flaky" for o in ran),
        flips=changes,
        flip_rate=round(changes / len(ran), 3),
        same_source=any(seen == {"pass", "fail"} for seen in by_source.values()),
        last_failed=max(o.time for o in ran if o.outcome in FAILING),
    )


def rank(found: Iterable[Flake]) -> list[Flake]:
    """Worst first: same-source flips, then the highest flip rate, then the most failing runs."""
    return sorted(found, key=lambda f: (not f.same_source, -f.flip_rate, -(f.failures + f.flaky), f.test, f.cell))


def find(history: History, scopes: Sequence[str] | None = None, last: int = DEFAULT_LAST) -> list[Flake]:
    """Every test that both passed and failed in the last ``last`` runs of each scope (every scope when None)."""
    found = []
    for scope in scopes if scopes is not None else history.ledger_scopes():
        win = window(history, scope, last)
        per_test: dict[tuple[str, str], list[Outcome]] = {}
        for o in win.outcomes:
            per_test.setdefault((o.cell, o.test), []).append(o)
        axes = {cell: row.axes for (_, cell), row in win.cells.items()}
        for (cell, _test), outcomes in per_test.items():
            flake = summarize(scope, cell, axes.get(cell, {}), outcomes)
            if flake is not None:
                found.append(flake)
    return rank(found)


# ---------------------------------------------------------------------------------------------------- quarantine


@dataclass(frozen=True)
class Suggestion:
    """A quarantine entry to add."""

    test: str
    cells: tuple[tuple[str, str], ...]  # () = every cell
    reason: str

    def as_entry(self) -> dict[str, object]:
        entry: dict[str, object] = {"test": self.test}
        if self.cells:
            entry["cells"] = dict(self.cells)
        entry["reason"] = self.reason
        return entry


def _flake_reason(f: Flake) -> str:
    what = f"flip rate {f.flip_rate:.2f} over {f.runs} run(s) of {f.cell}: {f.failures} failed, {f.flaky} flaky"
    return what + (", passed and failed on the same source" if f.same_source else "")


def suggest(
    history: History,
    found: Sequence[Flake],
    threshold: float = DEFAULT_THRESHOLD,
    entries: Sequence[config.QuarantineEntry] = (),
    last: int = DEFAULT_LAST,
) -> list[Suggestion]:
    """Entries for the tests whose flip rate is at least ``threshold`` and that no entry covers yet: one without a
    cells filter when the test flips in every cell it ran in within the window, else one per cell (its axes)."""
    over = [f for f in found if f.flip_rate >= threshold]
    over = [f for f in over if not any(quarantine.matches(e, f.axes, _names(f.test)) for e in entries)]
    ran_in: dict[tuple[str, str], set[str]] = {}
    for scope in {f.scope for f in over}:
        for o in window(history, scope, last).outcomes:
            if o.outcome != "skipped":
                ran_in.setdefault((scope, o.test), set()).add(o.cell)
    out: list[Suggestion] = []
    done: set[tuple[str, str]] = set()
    for f in over:
        if (f.scope, f.test) in done:
            continue
        mine = [g for g in over if (g.scope, g.test) == (f.scope, f.test)]
        if {g.cell for g in mine} >= ran_in.get((f.scope, f.test), set()):
            reasons = "; ".join(_flake_reason(g) for g in mine[:3])
            out.append(Suggestion(f.test, (), f"flaky in every cell it ran in: {reasons}"))
            done.add((f.scope, f.test))
        else:
            out.append(Suggestion(f.test, tuple(sorted(f.axes.items())), f"flaky: {_flake_reason(f)}"))
    return out


def _names(test: str) -> list[str]:
    """The names an entry can match a ledger test by: its node id, and JUnit's classname::name."""
    return [test, "::".join(part for part in junit_names(test) if part)]


@dataclass(frozen=True)
class Lift:
    """An existing quarantine entry, and how its tests did in the last runs in which they ran."""

    entry: config.QuarantineEntry
    runs: int  # runs (of the last K in which a test of the entry ran) looked at
    passed: int  # of which every test of the entry passed
    needed: int  # K
    tests: tuple[str, ...]  # the node ids it covers

    @property
    def ready(self) -> bool:
        return self.runs >= self.needed and self.passed == self.runs

    def as_json(self) -> dict[str, object]:
        return {
            "test": self.entry.test,
            "cells": dict(self.entry.cells),
            "reason": self.entry.reason,
            "runs": self.runs,
            "passed": self.passed,
            "needed": self.needed,
            "ready": self.ready,
            "tests": list(self.tests),
        }


def lifts(
    history: History,
    entries: Sequence[config.QuarantineEntry],
    scopes: Sequence[str] | None = None,
    after: int = DEFAULT_LIFT_AFTER,
) -> list[Lift]:
    """For each entry: whether its tests passed in every one of the last ``after`` runs in which they ran (infra
    incidents left out). Such an entry is ready to lift: the test is no longer flaky."""
    per_entry: dict[int, dict[str, list[bool]]] = {i: {} for i in range(len(entries))}  # run id -> all passed?
    covered: dict[int, set[str]] = {i: set() for i in range(len(entries))}
    for scope in scopes if scopes is not None else history.ledger_scopes():
        win = window(history, scope, None if after <= 0 else 10 * after + DEFAULT_LAST)
        for o in win.outcomes:
            if o.outcome == "skipped":
                continue
            axes = win.cells[(o.run_id, o.cell)].axes
            for i, entry in enumerate(entries):
                if quarantine.matches(entry, axes, _names(o.test)):
                    per_entry[i].setdefault(f"{o.time:020.6f} {o.run_id}", []).append(o.outcome == "passed")
                    covered[i].add(o.test)
    out = []
    for i, entry in enumerate(entries):
        recent = [all(v) for _, v in sorted(per_entry[i].items())][-after:] if after > 0 else []
        out.append(Lift(entry, len(recent), sum(recent), after, tuple(sorted(covered[i]))))
    return out


def suggestions_yaml(suggestions: Sequence[Suggestion], lifted: Sequence[Lift]) -> str:
    """``--suggest-quarantine``'s output: a quarantine file (``--quarantine FILE`` reads it as it is) of the entries
    to add, then the entries ready to lift as comments."""
    lines = ["# matrix-run flakes --suggest-quarantine: entries for tests whose flip rate is over the threshold"]
    body = yaml.safe_dump({"quarantine": [s.as_entry() for s in suggestions]}, sort_keys=False, width=1000)
    lines += body.rstrip("\n").splitlines()
    ready = [lift for lift in lifted if lift.ready]
    waiting = [lift for lift in lifted if not lift.ready]
    if ready:
        lines.append(f"# ready to lift (every test of the entry passed in each of the last {ready[0].needed} runs):")
        lines += [f"#   - test: {lift.entry.test}  ({lift.entry.reason or 'no reason given'})" for lift in ready]
    for lift in waiting:
        lines.append(
            f"# still quarantined: {lift.entry.test}: passed in {lift.passed} of the last {lift.runs} run(s) "
            f"it ran in ({lift.needed} in a row lift it)"
        )
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------------- changes


@dataclass(frozen=True)
class Change:
    cell: str
    test: str
    before: str  # its outcome in the previous run ("" = it was not there)
    now: str


@dataclass(frozen=True)
class Changes:
    """What changed since the previous run of the matrix, for the tests of the cells both runs ran."""

    previous_run: str
    previous_time: float
    new_failures: list[Change] = field(default_factory=list)
    fixed: list[Change] = field(default_factory=list)
    new_flaky: list[Change] = field(default_factory=list)


def changes(history: History, scope: str, run_id: str, cells: Iterable[CellResult]) -> Changes | None:
    """This run's cells against the newest earlier run of ``scope`` in the ledger (``run_id`` itself left out);
    None when there is none."""
    earlier = [r for r in history.ledger_runs(scope, DEFAULT_LAST + 1) if r != run_id]
    if not earlier:
        return None
    previous = earlier[-1]
    before_cells = {c.cell: c for c in history.ledger_cells(scope, [previous])}
    before: dict[tuple[str, str], str] = {
        (o.cell, o.test): o.outcome for o in history.ledger_outcomes(scope, [previous])
    }
    found = Changes(previous, min((c.time for c in before_cells.values()), default=0.0))
    for cell in cells:
        if cell.cell_id not in before_cells or not cell.attempts:
            continue
        for hist in cell.tests.values():
            nodeid = next((c.nodeid for c in (hist.first, *hist.reruns) if c.nodeid), None)
            if nodeid is None:
                continue
            now, was = ledger_outcome(hist), before.get((cell.cell_id, nodeid), "")
            change = Change(cell.cell_id, nodeid, was, now)
            if now in ("failed", "error") and was not in ("failed", "error"):
                found.new_failures.append(change)
            elif now in PASSING and was in ("failed", "error"):
                found.fixed.append(change)
            if now == "flaky" and was != "flaky":
                found.new_flaky.append(change)
    return found


def _iso(seconds: float) -> str:
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
