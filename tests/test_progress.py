"""runner/progress.py: the live view draws from counters and lists a bounded number of cells; plain lines in CI."""

from __future__ import annotations

import io

from rich.console import Console

from runner.progress import LiveView, PlainView


def test_live_view_with_thousands_of_shards_lists_a_bounded_number_of_cells() -> None:
    view = LiveView()
    view.console = Console(file=io.StringIO(), force_terminal=True, width=160)
    cells = {f"cell-{i:04d}": 4 for i in range(2500)}  # 10,000 shards
    view.begin(cells)
    try:
        for cid in cells:
            for s in range(4):
                view.shard(cid, f"shard-{s + 1}of4", 1, "running")
                view.shard(cid, f"shard-{s + 1}of4", 1, "failed" if (cid, s) == ("cell-0007", 2) else "done", 10, 0)
        view.shard("cell-0042", "shard-1of4", 2, "running")  # a rerun still going: listed first
        table = view._render()
    finally:
        view.end()

    assert table.row_count == LiveView.MAX_ROWS
    assert "10000/10000 shards" in str(table.title)
    assert "100000 passed" in str(table.title)
    assert f"and {2500 - LiveView.MAX_ROWS} more cells" in str(table.caption)
    first_cell = table.columns[0]._cells[0]
    assert first_cell == "cell-0042"
    failed_column = dict(zip(table.columns[0]._cells, table.columns[4]._cells, strict=True))
    assert failed_column["cell-0007"] == "1"
    assert failed_column["cell-0008"] == "0"


def test_plain_view_writes_one_line_per_event() -> None:
    out = io.StringIO()
    view = PlainView(out)
    view.begin({"a": 2})
    view.shard("a", "shard-1of2", 1, "running")
    view.shard("a", "shard-1of2", 1, "done", 5, 1)
    view.cell("a", "failed", {"tests": 6, "failures": 1}, "1 test failed")

    lines = out.getvalue().splitlines()
    assert len(lines) == 4
    assert lines[2].endswith("a/shard-1of2 attempt 1: done (5 passed, 1 failed)")
    assert lines[3].endswith("a: FAILED 6 tests, 1 failed, 0 errors, 0 skipped, 0 flaky - 1 test failed")
