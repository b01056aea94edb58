"""report.html: the run as one self-contained page, readable offline (no fetch of any kind: its Content-Security-Policy
allows no source but its own inline style and its one inline script, pinned by hash).

- The matrix as a grid: one axis as rows, another as columns (``report: {rows: AXIS, columns: AXIS}``, else the axis
  with most values as rows and, of the axes not tied to it, the one with most values as columns; declared matrix
  axes before keys that only ``include`` adds). An axis whose value follows from the row's (``debian`` from
  ``python`` in the example) is written in the row's header; any other axis groups the cells, one grid per group.
  Each grid cell is a tile colored by status with its counts and duration.
- Clicking a tile opens the cell's detail (CSS ``:target``, so it works with scripts off too): its shards and
  attempts (node, GPU ids, wall time, exit), its failed, flaky and quarantined tests with their tracebacks, the tail
  of each shard attempt's log, and the cell's own coverage when coverage is on.
- Across the matrix: failed tests and the cells they failed in, flaky tests, quarantined tests, the slowest shards,
  the images built and reused, and what changed since the previous run of the matrix (from the flake ledger).

Everything shown comes from the tests under run (names, messages, tracebacks, logs): it is hostile text, escaped
once, on the way into the HTML, and never given to the script (which only shows, hides and highlights).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import html
import sqlite3
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from runner import flakes, summary
from runner.config import MatrixFile, ReportConfig
from runner.coverage_merge import HTML_DIR, XML_NAME, CoverageSummary
from runner.execution import RunResults
from runner.history import History
from runner.results import BAD, CellResult, Status, TestHistory, log_tail

LOG_TAIL_LINES = 40
LOG_TAIL_CHARS = 8_000
TRACE_CHARS = 20_000  # of one failure's report
LISTED_TESTS = 200  # failed (flaky, quarantined) tests shown per cell
SLOWEST_SHARDS = 10
LISTED_ACROSS = 100  # rows of each across-the-matrix table
COVERAGE_CELLS = 50  # per-cell coverage is computed for at most this many cells
MISSING = ""  # a cell without a value for an axis (an include that adds a key to some cells only)

STATUS_COLORS = {
    "passed": "#2e7d32",
    "flaky": "#c77700",
    "failed": "#c62828",
    "error": "#8e24aa",
    "timeout": "#d84315",
    "infra": "#5d4037",
    "cancelled": "#757575",
    "cached": "#00838f",
    "no_tests": "#9e9e9e",
    "no_capacity": "#455a64",
}


# ---------------------------------------------------------------------------------------------------- the grid


@dataclass(frozen=True)
class Group:
    """One grid: the cells that share the values of the grouping axes."""

    values: tuple[tuple[str, str], ...]  # (axis, value) of the grouping axes; () when nothing groups
    cells: dict[tuple[str, str], list[str]]  # (row value, column value) -> cell ids


@dataclass(frozen=True)
class Grid:
    rows: str  # the rows' axis ("" when the matrix has no axis)
    columns: str  # the columns' axis ("" when there is no second axis)
    row_values: list[str]
    column_values: list[str]
    row_notes: dict[str, str]  # row value -> the values of the axes that follow from it
    column_notes: dict[str, str]
    grouping: list[str]  # the axes that group
    groups: list[Group]


def _value(cell: CellResult, axis: str) -> str:
    return cell.axes.get(axis, MISSING) if axis else MISSING


def _determines(cells: Sequence[CellResult], a: str, b: str) -> bool:
    """Whether the value of axis ``a`` decides the value of axis ``b`` in every cell."""
    seen: dict[str, str] = {}
    for cell in cells:
        va, vb = _value(cell, a), _value(cell, b)
        if seen.setdefault(va, vb) != vb:
            return False
    return True


def axis_order(cells: Sequence[CellResult], declared: Sequence[str]) -> list[str]:
    """The matrix's own axes in the order written, then the keys that includes add, as the cells first have them."""
    order = list(dict.fromkeys(declared))
    for cell in cells:
        order += [axis for axis in cell.axes if axis not in order]
    return order


def choose_axes(cells: Sequence[CellResult], declared: Sequence[str], report: ReportConfig) -> tuple[str, str]:
    """(rows, columns): as ``report`` says, else chosen (see the module's docstring); "" where there is none."""
    order = axis_order(cells, declared)
    counts = {a: len({_value(c, a) for c in cells}) for a in order}
    rank = sorted(order, key=lambda a: (a not in declared, -counts[a], order.index(a)))
    varying = [a for a in rank if counts[a] > 1] or rank
    rows = report.rows or (report.columns and next((a for a in varying if a != report.columns), "")) or ""
    if not rows:
        rows = varying[0] if varying else ""
    columns = report.columns
    if not columns:
        free = [
            a
            for a in varying
            if a != rows and counts[a] > 1 and not _determines(cells, rows, a) and not _determines(cells, a, rows)
        ]
        columns = free[0] if free else ""
    return rows, columns


def layout(cells: Sequence[CellResult], declared: Sequence[str], report: ReportConfig) -> Grid:
    rows, columns = choose_axes(cells, declared, report)
    order = axis_order(cells, declared)
    rest = [a for a in order if a not in (rows, columns)]
    row_tied = [a for a in rest if rows and _determines(cells, rows, a)]
    column_tied = [a for a in rest if a not in row_tied and columns and _determines(cells, columns, a)]
    grouping = [a for a in rest if a not in row_tied and a not in column_tied]

    def values(axis: str) -> list[str]:
        return list(dict.fromkeys(_value(c, axis) for c in cells))

    def notes(axis: str, tied: list[str]) -> dict[str, str]:
        out: dict[str, str] = {}
        for cell in cells:
            shown = [f"{a}={_value(cell, a) or '-'}" for a in tied]
            out.setdefault(_value(cell, axis), " ".join(shown))
        return out

    groups: dict[tuple[tuple[str, str], ...], dict[tuple[str, str], list[str]]] = {}
    for cell in cells:
        key = tuple((a, _value(cell, a)) for a in grouping)
        groups.setdefault(key, {}).setdefault((_value(cell, rows), _value(cell, columns)), []).append(cell.cell_id)
    return Grid(
        rows=rows,
        columns=columns,
        row_values=values(rows),
        column_values=values(columns),
        row_notes=notes(rows, row_tied),
        column_notes=notes(columns, column_tied),
        grouping=grouping,
        groups=[Group(k, v) for k, v in groups.items()],
    )


# ---------------------------------------------------------------------------------------------------- per-cell coverage


@dataclass(frozen=True)
class CellCoverage:
    percent: float
    files: list[tuple[str, float]]  # file (relative to the project) -> percent of its lines covered


def cell_coverage(results: RunResults, project: Path) -> tuple[dict[str, CellCoverage], list[str]]:
    """Each cell's own coverage, from the data of its shard attempts (coverage_merge, as for the whole matrix), and
    notes on what could not be computed. Never raises: coverage never fails the run."""
    from runner import coverage_merge

    found: dict[str, CellCoverage] = {}
    notes: list[str] = []
    with_data = [c for c in results.cells if any(a.outcome.coverage for a in c.attempts)]
    if len(with_data) > COVERAGE_CELLS:
        notes.append(f"coverage per cell not computed: {len(with_data)} cells have data, over {COVERAGE_CELLS}")
        return found, notes
    for cell in with_data:
        datas = [a.outcome.coverage for a in cell.attempts if a.outcome.coverage]
        try:
            with tempfile.TemporaryDirectory(prefix="matrix-run-cell-coverage-") as tmp:
                merged = coverage_merge.write_merged(datas, project, Path(tmp), f"matrix-run: {cell.cell_id}")
                if merged is None:
                    continue
                files = []
                for cls in ET.parse(Path(tmp) / XML_NAME).getroot().iter("class"):
                    with contextlib.suppress(ValueError):
                        files.append((cls.get("filename", ""), 100.0 * float(cls.get("line-rate", "0"))))
                found[cell.cell_id] = CellCoverage(merged.percent, sorted(files))
        except Exception as exc:  # a coverage problem is a note on the page, never a failed run
            notes.append(f"coverage of {cell.cell_id} not computed: {exc.__class__.__name__}: {exc}")
    return found, notes


# ---------------------------------------------------------------------------------------------------- the page


@dataclass
class Page:
    """Everything report.html shows."""

    results: RunResults
    name: str
    status: str
    declared_axes: list[str] = field(default_factory=list)
    report: ReportConfig = field(default_factory=ReportConfig)
    coverage: CoverageSummary | None = None
    cell_coverage: dict[str, CellCoverage] = field(default_factory=dict)
    changes: flakes.Changes | None = None
    notes: list[str] = field(default_factory=list)  # about the page itself (coverage per cell, the ledger)
    history_known: bool = True  # whether a history store was read for the changes


def esc(text: object) -> str:
    """Text for HTML content or a quoted attribute value."""
    return html.escape(str(text), quote=True)


def _seconds(value: float) -> str:
    return f"{value:.1f}s" if value < 600 else f"{value / 60:.1f}min"


def _counts_line(cell: CellResult) -> str:
    c = cell.counts()
    parts = [f"{c['passed']}/{c['tests']} passed"]
    for key, word in (("failures", "failed"), ("errors", "errors"), ("flaky", "flaky"), ("skipped", "skipped")):
        if c[key]:
            parts.append(f"{c[key]} {word}")
    if cell.quarantined():
        parts.append(f"{cell.quarantined()} quarantined")
    return " · ".join(parts)


def _tile(cell: CellResult, anchor: str) -> str:
    st = str(cell.status)
    held = any(h.quarantined for h in cell.tests.values())
    badge = ' <span class="badge" title="has quarantined tests">quarantine</span>' if held else ""
    return (
        f'<a class="tile st-{esc(st)}" href="#{anchor}" data-cell="{esc(cell.cell_id)}" '
        f'data-status="{esc(st)}" title="{esc(cell.cell_id)}">'
        f'<span class="status">{esc(st)}</span>{badge}'
        f'<span class="counts">{esc(_counts_line(cell))}</span>'
        f'<span class="time">{esc(_seconds(cell.duration))}</span></a>'
    )


def _grid_html(grid: Grid, by_id: Mapping[str, CellResult], anchors: Mapping[str, str]) -> str:
    out = []
    for group in grid.groups:
        if group.values:
            label = ", ".join(f"{a}={v or '-'}" for a, v in group.values)
            out.append(f'<h3 class="group">{esc(label)}</h3>')
        head = f"{esc(grid.rows)} \\ {esc(grid.columns)}" if grid.columns else esc(grid.rows or "cell")
        cols = grid.column_values if grid.columns else [MISSING]
        rows_html = ['<table class="grid"><thead><tr>', f'<th class="corner">{head}</th>']
        for col in cols:
            note = grid.column_notes.get(col, "")
            note_html = f'<span class="note">{esc(note)}</span>' if note else ""
            rows_html.append(f"<th>{esc(col or ('-' if grid.columns else ''))}{note_html}</th>")
        rows_html.append("</tr></thead><tbody>")
        for row in grid.row_values:
            if not any((row, col) in group.cells for col in cols):
                continue
            note = grid.row_notes.get(row, "")
            note_html = f'<span class="note">{esc(note)}</span>' if note else ""
            rows_html.append(f'<tr><th class="rowhead">{esc(row or "-")}{note_html}</th>')
            for col in cols:
                ids = group.cells.get((row, col), [])
                if not ids:
                    rows_html.append('<td class="empty" title="not in the matrix">&#8212;</td>')
                    continue
                rows_html.append("<td>" + "".join(_tile(by_id[i], anchors[i]) for i in ids) + "</td>")
            rows_html.append("</tr>")
        rows_html.append("</tbody></table>")
        out.append("".join(rows_html))
    return "\n".join(out)


def _pre(text: str, limit: int = TRACE_CHARS) -> str:
    cut = f"\n... ({len(text) - limit} more characters; junit.xml has them all)" if len(text) > limit else ""
    return f"<pre>{esc(text[:limit])}{esc(cut)}</pre>"


def _test_block(label: str, hist: TestHistory) -> str:
    status = hist.status
    failure = summary.shown_failure(hist)
    what = "flaky (passed on a rerun)" if status is Status.FLAKY else str(status)
    if hist.quarantined:
        what += f", quarantined{': ' + hist.quarantine_reason if hist.quarantine_reason else ''}"
    message = failure.message.strip()
    text = failure.text.strip("\n") or message
    attempts = [hist.first, *hist.reruns]
    tried = " ".join(str(c.status) for c in attempts)
    said = f": {esc(message[:300])}" if message else ""
    trace = _pre(text) if status in BAD or status is Status.FLAKY else ""
    return (
        f'<details class="test" open><summary><code>{esc(label)}</code> <span class="what st-text-{esc(status)}">'
        f'{esc(what)}</span>{said}</summary><div class="attempts">attempts: {esc(tried)}</div>{trace}</details>'
    )


def _tests_html(cell: CellResult) -> str:
    out = []
    sections = (
        ("Failed tests", BAD, False),
        ("Flaky tests", {Status.FLAKY}, False),
        ("Quarantined tests", set(Status), True),
    )
    for title, statuses, quarantined in sections:
        tests = summary.problem_tests(cell, statuses, quarantined)
        if not tests:
            continue
        out.append(f"<h4>{esc(title)} ({len(tests)})</h4>")
        out += [_test_block(label, hist) for label, hist in tests[:LISTED_TESTS]]
        if len(tests) > LISTED_TESTS:
            out.append(f"<p>... and {len(tests) - LISTED_TESTS} more (junit.xml has them all)</p>")
    return "\n".join(out)


def _shards_html(cell: CellResult) -> str:
    if not cell.attempts:
        return "<p>No shard ran in this cell.</p>"
    rows = [
        "<table class='shards'><thead><tr><th>shard</th><th>attempt</th><th>ended</th><th>tests</th><th>node</th>"
        "<th>GPU ids</th><th>wall</th><th>container</th><th>exit</th><th>reason</th></tr></thead><tbody>"
    ]
    for a in cell.attempts:
        o = a.outcome
        node = o.node + (f" ({o.node_id[:12]})" if o.node_id else "")
        rows.append(
            f"<tr><td>{esc(a.shard)}</td><td>{a.attempt}</td><td class='kind-{esc(a.kind)}'>{esc(a.kind)}</td>"
            f"<td>{len(a.cases)}</td><td>{esc(node or '-')}</td><td>{esc(', '.join(o.gpu_ids) or '-')}</td>"
            f"<td>{esc(_seconds(a.wall))}</td><td>{esc(_seconds(o.duration))}</td>"
            f"<td>{esc('-' if o.exit_code is None else o.exit_code)}</td><td>{esc(a.reason[:500])}</td></tr>"
        )
    rows.append("</tbody></table>")
    return "".join(rows)


def _logs_html(cell: CellResult) -> str:
    out = []
    for a in cell.attempts:
        tail = log_tail(a.outcome.log, LOG_TAIL_LINES)[-LOG_TAIL_CHARS:]
        path = f"logs/{cell.cell_id}/{a.shard}.attempt{a.attempt}.log"
        out.append(
            f'<details class="log"><summary>{esc(a.shard)} attempt {a.attempt}: last {LOG_TAIL_LINES} lines '
            f'(<a href="{esc(path)}">{esc(path)}</a>)</summary>{_pre(tail or "(the log is empty)")}</details>'
        )
    return "\n".join(out)


def _coverage_html(cov: CellCoverage | None) -> str:
    if cov is None:
        return ""
    rows = "".join(f"<tr><td><code>{esc(f)}</code></td><td>{p:.1f}%</td></tr>" for f, p in cov.files)
    return (
        f"<h4>Coverage of this cell: {cov.percent:.1f}%</h4>"
        f"<table class='cov'><thead><tr><th>file</th><th>lines covered</th></tr></thead><tbody>{rows}</tbody></table>"
    )


def _detail_html(cell: CellResult, anchor: str, cov: CellCoverage | None) -> str:
    st = str(cell.status)
    axes = " ".join(f"{a}={v}" for a, v in cell.axes.items())
    reason = f'<div class="reason">{_pre(cell.reason.strip(), 5000)}</div>' if cell.reason.strip() else ""
    image = f"<p>image <code>{esc(cell.image)}</code></p>" if cell.image else ""
    return (
        f'<section class="detail" id="{anchor}" data-cell="{esc(cell.cell_id)}">'
        f'<a class="close" href="#top" title="close">&#215;</a>'
        f'<h2><span class="dot st-{esc(st)}"></span><code>{esc(cell.cell_id)}</code>: {esc(st)}</h2>'
        f"<p class='axes'>{esc(axes)} · {esc(_counts_line(cell))} · {esc(_seconds(cell.duration))}</p>"
        f"{image}{reason}<h4>Shards and attempts</h4>{_shards_html(cell)}{_tests_html(cell)}"
        f"{_coverage_html(cov)}"
        f"{'<h4>Shard logs</h4>' + _logs_html(cell) if cell.attempts else ''}</section>"
    )


def _table(headers: Sequence[str], rows: Iterable[Sequence[str]], empty: str) -> str:
    body = ["<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows]
    if not body:
        return f"<p class='none'>{esc(empty)}</p>"
    shown = body[:LISTED_ACROSS]
    more = f"<p>... and {len(body) - LISTED_ACROSS} more</p>" if len(body) > LISTED_ACROSS else ""
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    return f"<table class='across'><thead><tr>{head}</tr></thead><tbody>{''.join(shown)}</tbody></table>{more}"


def _cell_links(cells: Iterable[str], anchors: Mapping[str, str]) -> str:
    return ", ".join(f'<a href="#{anchors[c]}">{esc(c)}</a>' for c in cells if c in anchors)


def _across_tests(
    results: RunResults, statuses: Iterable[Status], anchors: Mapping[str, str], quarantined: bool
) -> list[list[str]]:
    found: dict[str, list[str]] = {}
    messages: dict[str, str] = {}
    for cell in results.cells:
        for label, hist in summary.problem_tests(cell, statuses, quarantined):
            found.setdefault(label, []).append(cell.cell_id)
            messages.setdefault(label, summary.shown_failure(hist).message.strip()[:200])
    ranked = sorted(found.items(), key=lambda p: (-len(p[1]), p[0]))
    return [[f"<code>{esc(t)}</code>", esc(messages[t]), _cell_links(cells, anchors)] for t, cells in ranked]


def _slowest(results: RunResults, anchors: Mapping[str, str]) -> list[list[str]]:
    attempts = [(a, cell) for cell in results.cells for a in cell.attempts]
    attempts.sort(key=lambda p: -(p[0].wall or p[0].outcome.duration))  # wall: 0 when not measured
    return [
        [
            _cell_links([cell.cell_id], anchors),
            esc(f"{a.shard} attempt {a.attempt}"),
            esc(_seconds(a.wall)),
            esc(_seconds(a.outcome.duration)),
            esc(len(a.cases)),
            esc(a.outcome.node or "-"),
        ]
        for a, cell in attempts[:SLOWEST_SHARDS]
    ]


def _changes_html(page: Page, anchors: Mapping[str, str]) -> str:
    ch = page.changes
    if ch is None:
        known = "no earlier run of this matrix in the history store" if page.history_known else "no history store"
        return f"<p class='none'>{esc(known)}: nothing to compare with.</p>"
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(ch.previous_time)) if ch.previous_time else "?"
    parts = [f"<p>Against run <code>{esc(ch.previous_run)}</code> ({esc(when)}).</p>"]
    for title, items in (("New failures", ch.new_failures), ("Fixed", ch.fixed), ("New flaky", ch.new_flaky)):
        rows = [
            [f"<code>{esc(c.test)}</code>", _cell_links([c.cell], anchors), esc(c.before or "(new)"), esc(c.now)]
            for c in items
        ]
        parts.append(f"<h3>{esc(title)} ({len(items)})</h3>")
        parts.append(_table(["test", "cell", "before", "now"], rows, "none"))
    return "\n".join(parts)


STYLE = """
:root{--fg:#1d1d1f;--muted:#666;--line:#ddd;--bg:#fafafa}
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:var(--fg);background:var(--bg)}
header,main{padding:12px 24px}header{background:#fff;border-bottom:1px solid var(--line)}
h1{font-size:20px;margin:4px 0}h2{font-size:17px;margin:6px 0}h3{font-size:15px;margin:14px 0 6px}
h4{font-size:14px;margin:12px 0 4px}code,pre{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace}
pre{white-space:pre-wrap;word-break:break-word;background:#f3f3f3;border:1px solid var(--line);padding:6px 8px;
margin:4px 0;max-height:28em;overflow:auto;font-size:12px}
.meta,.axes,.note,.attempts{color:var(--muted)}.note{display:block;font-weight:normal;font-size:11px}
.verdict{display:inline-block;padding:1px 8px;border-radius:10px;color:#fff}
table{border-collapse:collapse}th,td{border:1px solid var(--line);padding:4px 6px;text-align:left;vertical-align:top}
table.grid th{background:#fff}table.grid td{padding:3px;min-width:150px;background:#fff}
td.empty{color:#bbb;text-align:center;vertical-align:middle;background:repeating-linear-gradient(45deg,#fff,#fff 6px,
#f4f4f4 6px,#f4f4f4 12px)}
a.tile{display:block;color:#fff;text-decoration:none;border-radius:6px;padding:6px 8px;margin:2px 0;min-height:48px}
a.tile:hover,a.tile.selected{outline:3px solid #1565c0;outline-offset:1px}
.tile .status{display:block;font-weight:600}.tile .counts,.tile .time{display:block;font-size:12px;opacity:.95}
.badge{background:#fff;color:#333;border-radius:8px;padding:0 5px;font-size:10px;font-weight:600}
.legend span{display:inline-block;margin-right:10px}.legend i{display:inline-block;width:10px;height:10px;
border-radius:2px;margin-right:4px}
.dot{display:inline-block;width:12px;height:12px;border-radius:6px;margin-right:6px}
section.detail{display:none;background:#fff;border:2px solid #1565c0;border-radius:6px;padding:10px 16px;
margin:14px 0;position:relative}section.detail:target{display:block}
a.close{position:absolute;right:12px;top:6px;font-size:22px;text-decoration:none;color:var(--muted)}
details.test,details.log{margin:4px 0}summary{cursor:pointer}.none{color:var(--muted)}
nav a{margin-right:12px}
"""
STYLE += "".join(
    f".st-{s}{{background:{c}}}.st-text-{s}{{color:{c};font-weight:600}}" for s, c in STATUS_COLORS.items()
)

# The page's one script: highlights the tile of the open detail and closes it on Escape. It reads no data of the run.
SCRIPT = """
(function () {
  function mark() {
    var open = location.hash ? document.getElementById(location.hash.slice(1)) : null;
    var cell = open && open.classList.contains("detail") ? open.getAttribute("data-cell") : null;
    document.querySelectorAll("a.tile").forEach(function (tile) {
      tile.classList.toggle("selected", cell !== null && tile.getAttribute("data-cell") === cell);
    });
    if (open && cell !== null) { open.scrollIntoView({block: "start"}); }
  }
  window.addEventListener("hashchange", mark);
  document.addEventListener("keydown", function (event) {
    if (event.key === "Escape" && location.hash) { location.hash = "top"; }
  });
  mark();
})();
"""


def _csp() -> str:
    digest = base64.b64encode(hashlib.sha256(SCRIPT.encode("utf-8")).digest()).decode("ascii")
    return f"default-src 'none'; style-src 'unsafe-inline'; script-src 'sha256-{digest}'; img-src data:"


def render(page: Page) -> str:
    """The whole page, as text."""
    results = page.results
    by_id = {c.cell_id: c for c in results.cells}
    anchors = {c.cell_id: f"cell-{i}" for i, c in enumerate(results.cells)}
    grid = layout(results.cells, page.declared_axes, page.report)
    color = STATUS_COLORS.get(page.status, STATUS_COLORS["failed"])
    notes = "".join(f"<p class='note-run'>{esc(n)}</p>" for n in summary.run_notes(results))
    cov = page.coverage
    cov_html = (
        f"<p>Coverage of the whole matrix: {cov.percent:.1f}% of {cov.files} file(s) "
        f'(<a href="{HTML_DIR}/index.html">report</a>, <a href="{XML_NAME}">{XML_NAME}</a>)</p>'
        if cov is not None
        else ""
    )
    present = sorted({str(c.status) for c in results.cells})
    legend = "".join(f'<span><i class="st-{esc(s)}"></i>{esc(s)}</span>' for s in present)
    axes_line = f"rows: {grid.rows or '-'}, columns: {grid.columns or '-'}"
    if grid.grouping:
        axes_line += f", grouped by {', '.join(grid.grouping)}"
    page_notes = "".join(f"<p class='none'>{esc(n)}</p>" for n in page.notes)
    images = [
        [_cell_links([c.cell_id], anchors), f"<code>{esc(c.image or '-')}</code>"] for c in results.cells if c.image
    ]
    failed_rows = _across_tests(results, BAD, anchors, False)
    flaky_rows = _across_tests(results, {Status.FLAKY}, anchors, False)
    held_rows = _across_tests(results, set(Status), anchors, True)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{esc(_csp())}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>matrix-run: {esc(page.name)} — {esc(page.status)}</title>
<style>{STYLE}</style></head>
<body id="top">
<header>
<h1>matrix-run: {esc(page.name)} <span class="verdict" style="background:{esc(color)}">{esc(page.status)}</span></h1>
<p class="meta">run <code>{esc(results.run_id)}</code> · {len(results.cells)} cell(s)
 · {esc(_seconds(results.duration))} · images built {results.images_built}, reused {results.images_reused} · files:
<a href="junit.xml">junit.xml</a>, <a href="results.json">results.json</a>, <a href="summary.md">summary.md</a>,
<a href="logs/">logs/</a></p>
{notes}{cov_html}
<nav><a href="#matrix">matrix</a><a href="#failed">failed tests ({len(failed_rows)})</a>
<a href="#flaky">flaky tests ({len(flaky_rows)})</a><a href="#quarantined">quarantined ({len(held_rows)})</a>
<a href="#slowest">slowest shards</a><a href="#images">images</a><a href="#changes">changes</a></nav>
</header>
<main>
<h2 id="matrix">The matrix</h2>
<p class="meta">{esc(axes_line)}. Click a cell for its shards, failures and logs.</p>
<p class="legend">{legend}</p>
{_grid_html(grid, by_id, anchors) if results.cells else "<p class='none'>no cell</p>"}
{"".join(_detail_html(c, anchors[c.cell_id], page.cell_coverage.get(c.cell_id)) for c in results.cells)}
{page_notes}
<h2 id="failed">Failed tests</h2>
{_table(["test", "first failure", "cells"], failed_rows, "no test failed")}
<h2 id="flaky">Flaky tests</h2>
{_table(["test", "failure before the rerun passed", "cells"], flaky_rows, "no flaky test")}
<h2 id="quarantined">Quarantined tests</h2>
{_table(["test", "failure", "cells"], held_rows, "no quarantined test")}
<h2 id="slowest">Slowest shards</h2>
{_table(["cell", "shard", "wall", "container", "tests", "node"], _slowest(results, anchors), "no shard ran")}
<h2 id="images">Images</h2>
<p>{results.images_built} built, {results.images_reused} reused (the longest check of an image already there:
{results.image_check_seconds:.1f}s).</p>
{_table(["cell", "image"], images, "no image")}
<h2 id="changes">Since the previous run of this matrix</h2>
{_changes_html(page, anchors)}
</main>
<script>{SCRIPT}</script>
</body></html>
"""


def write(
    path: Path,
    results: RunResults,
    mf: MatrixFile,
    status: str,
    coverage: CoverageSummary | None = None,
    history: History | None = None,
    scope: str = "",
) -> None:
    """DIR/report.html for a finished run (atomically). What cannot be computed (a cell's coverage, the changes) is
    a note on the page, never a failed run."""
    page = Page(
        results=results,
        name=mf.name,
        status=status,
        declared_axes=[name for name, _ in mf.axes],
        report=mf.report,
        coverage=coverage,
        history_known=history is not None,
    )
    if mf.coverage.enabled:
        page.cell_coverage, page.notes = cell_coverage(results, mf.project)
    if history is not None:
        try:
            page.changes = flakes.changes(history, scope, results.run_id, results.cells)
        except sqlite3.Error as exc:
            page.notes.append(f"changes since the previous run not read from the history store: {exc}")
    text = render(page)
    tmp = path.with_suffix(".html.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    for note in page.notes:
        print(f"matrix-run: report.html: {note}", file=sys.stderr)
