"""runner/report_page.py: report.html's grid layout, its escaping of hostile text, per-cell coverage, the changes since
the previous run, and the page itself in a real headless Chromium: no console error, every cell in the grid, a click on
a failed cell shows its traceback, a screenshot kept in the test's folder.

The browser is Debian's ``chromium`` (installed by .ci/run), started with ``--headless --no-sandbox --disable-gpu
--disable-background-networking`` and driven by the Chrome DevTools Protocol over a pipe (``--remote-debugging-pipe``:
JSON messages ending in a NUL byte, commands on the browser's fd 3, answers and events on its fd 4): no library, no
port; the pipe belongs to this process alone (``Browser``, also used by the end-to-end test in test_flakes.py)."""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import json
import os
import re
import select
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import coverage
import pytest

from runner import config, matrix, report_page
from runner.config import ReportConfig
from runner.execution import RunResults, ShardOutcome
from runner.history import History
from runner.results import CellResult
from tests.conftest import ROOT
from tests.test_junit import cell_result, record

# --- a real headless Chromium -----------------------------------------------------------------------------------------

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking")
# runs in the child first: its two pipe ends become fds 3 and 4, then it turns into the browser (no preexec_fn)
TRAMPOLINE = (
    "import os,sys; os.dup2(int(sys.argv[1]),3); os.dup2(int(sys.argv[2]),4); os.execv(sys.argv[3],sys.argv[3:])"
)


def chromium_path() -> str | None:
    """``MATRIX_RUN_CHROMIUM`` (a browser of the same family elsewhere: GitHub's runners have Google Chrome), else
    Debian's ``chromium`` on the PATH."""
    chosen = os.environ.get("MATRIX_RUN_CHROMIUM")
    if chosen:
        return shutil.which(chosen)
    return shutil.which("chromium") or shutil.which("chromium-browser")


class BrowserError(Exception):
    pass


class Browser:
    """One headless Chromium with one page (tab) attached, closed by ``close``."""

    def __init__(self, width: int = 1400, height: int = 900, timeout: float = 60.0) -> None:
        exe = chromium_path()
        if exe is None:
            raise BrowserError("chromium is not installed")
        self.timeout = timeout
        self.profile = tempfile.mkdtemp(prefix="matrix-run-chromium-")
        to_chrome_r, to_chrome_w = os.pipe()
        from_chrome_r, from_chrome_w = os.pipe()
        # the browser's ends, moved above 4 so that the trampoline's dup2 onto 3 and 4 cannot clobber them
        child_in = fcntl.fcntl(to_chrome_r, fcntl.F_DUPFD, 10)
        child_out = fcntl.fcntl(from_chrome_w, fcntl.F_DUPFD, 10)
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        args = [
            exe,
            *FLAGS,
            "--remote-debugging-pipe",
            f"--user-data-dir={self.profile}",
            "--no-first-run",
            "--no-default-browser-check",
            f"--window-size={width},{height}",
            "about:blank",
        ]
        self.proc = subprocess.Popen(
            [sys.executable, "-c", TRAMPOLINE, str(child_in), str(child_out), *args],
            pass_fds=(child_in, child_out),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        os.close(child_in)
        os.close(child_out)
        self.send_fd, self.recv_fd = to_chrome_w, from_chrome_r
        self.buffer = b""
        self.next_id = 0
        self.events: list[dict[str, Any]] = []
        self.session = ""
        try:
            target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
            self.session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
            for domain in ("Page", "Runtime", "Log"):
                self.call(f"{domain}.enable")
            self.call(
                "Emulation.setDeviceMetricsOverride",
                {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
            )
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------------------------------------ the protocol

    def _read_message(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BrowserError("no answer from chromium in time")
            ready, _, _ = select.select([self.recv_fd], [], [], left)
            if ready:
                chunk = os.read(self.recv_fd, 1 << 20)
                if not chunk:
                    err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                    raise BrowserError(f"chromium closed its pipe: {err[-2000:]}")
                self.buffer += chunk
        raw, _, self.buffer = self.buffer.partition(b"\0")
        return json.loads(raw)  # type: ignore[no-any-return]

    def call(self, method: str, params: dict[str, Any] | None = None, session: bool = True) -> dict[str, Any]:
        """Send one command (to the page's session, unless ``session`` is False) and wait for its answer."""
        self.next_id += 1
        msg: dict[str, Any] = {"id": self.next_id, "method": method, "params": params or {}}
        if session and self.session:
            msg["sessionId"] = self.session
        os.write(self.send_fd, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise BrowserError(f"{method}: {reply['error']}")
                return reply.get("result", {})  # type: ignore[no-any-return]
            if "method" in reply:
                self.events.append(reply)

    def wait_for(self, method: str, timeout: float | None = None) -> dict[str, Any]:
        """The first event ``method`` received since the last wait for it (waiting for it when none came yet)."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            for i, event in enumerate(self.events):
                if event.get("method") == method:
                    del self.events[i]
                    return event
            msg = self._read_message(deadline)
            if "method" in msg:
                self.events.append(msg)

    def pump(self, seconds: float) -> None:
        """Collect the events that arrive within ``seconds``."""
        deadline = time.monotonic() + seconds
        try:
            while True:
                msg = self._read_message(deadline)
                if "method" in msg:
                    self.events.append(msg)
        except BrowserError:
            pass

    # ------------------------------------------------------------------------------------------------ the page

    def open(self, path: Path) -> None:
        self.events = [e for e in self.events if e.get("method") != "Page.loadEventFired"]
        self.call("Page.navigate", {"url": path.resolve().as_uri()})
        self.wait_for("Page.loadEventFired")
        self.pump(0.5)  # late console messages

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True})
        if "exceptionDetails" in result:
            raise BrowserError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def click(self, selector: str) -> None:
        """A real mouse click (pressed and released) at the middle of the first element ``selector`` matches."""
        box = self.evaluate(
            f"(function(){{var e=document.querySelector({json.dumps(selector)}); e.scrollIntoView({{block:'center'}});"
            "var r=e.getBoundingClientRect(); return [r.left + r.width / 2, r.top + r.height / 2];})()"
        )
        x, y = box
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            params = {"type": kind, "x": x, "y": y, "button": "left", "clickCount": 1}
            if kind == "mouseMoved":
                params = {"type": kind, "x": x, "y": y}
            self.call("Input.dispatchMouseEvent", params)
        self.pump(0.3)

    def problems(self) -> list[str]:
        """Console errors, uncaught exceptions, log entries of level error, and dialogs opened, so far."""
        found = []
        for event in self.events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                found.append("console: " + " ".join(str(a.get("value", a.get("description"))) for a in params["args"]))
            elif method == "Runtime.exceptionThrown":
                found.append(f"exception: {params.get('exceptionDetails')}")
            elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
                found.append(f"log: {params['entry'].get('text')} {params['entry'].get('url', '')}")
            elif method == "Page.javascriptDialogOpening":
                found.append(f"dialog: {params.get('message')}")
        return found

    def screenshot(self, path: Path, full_page: bool = True) -> Path:
        params: dict[str, Any] = {"format": "png"}
        if full_page:
            size = self.call("Page.getLayoutMetrics")["cssContentSize"]
            width, height = int(size["width"]), min(int(size["height"]), 12000)
            params["clip"] = {"x": 0, "y": 0, "width": width, "height": height, "scale": 1}
            params["captureBeyondViewport"] = True
        data = self.call("Page.captureScreenshot", params)["data"]
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        try:
            if self.proc.poll() is None:
                with contextlib.suppress(BrowserError, OSError):
                    self.call("Browser.close", session=False)
                try:
                    self.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(timeout=10)
        finally:
            for fd in (self.send_fd, self.recv_fd):
                with contextlib.suppress(OSError):
                    os.close(fd)
            if self.proc.stderr:
                self.proc.stderr.close()
            shutil.rmtree(self.profile, ignore_errors=True)


EXAMPLE = ROOT / "matrices" / "example.yaml"
HOSTILE_SCRIPT = "tests/test_x.py::test_<script>window.__pwned=1</script>"
HOSTILE_IMG = 'tests/test_x.py::test_q["><img src=x onerror="window.__pwned=2">]'
TRACEBACK = (
    "    def test_zscore():\n"
    ">       assert vecstats.zscore([1, 2, 3])[0] == -1.0\n"
    "E       assert -1.2247448713915887 == -1.0\n"
    "\n"
    "tests/test_transforms.py:12: AssertionError"
)

# the browser tests run wherever chromium is; on CI (.ci/run installs it) a missing browser fails them instead
needs_chromium = pytest.mark.skipif(
    chromium_path() is None and not os.environ.get("CI"),
    reason="chromium is not installed here (apt-get install -y chromium; .ci/run installs it, so CI runs this test)",
)

PASSING = [
    "tests/test_descriptive.py::test_mean",
    "tests/test_descriptive.py::test_variance",
    "tests/test_running.py::test_running_mean",
    "tests/test_similarity.py::test_cosine",
    "tests/test_summary.py::test_summary_keys",
    "tests/test_transforms.py::test_normalize",
]


def shard(
    tests: dict[str, str],
    shard_name: str = "shard-1of2",
    attempt: int = 1,
    traces: dict[str, str] | None = None,
    **flags: object,
) -> ShardOutcome:
    """One shard attempt's report over ``tests`` (node id -> passed/failed/skipped), failures with ``traces``."""
    lines: list[dict[str, object]] = [{"event": "start"}, {"event": "collected", "nodeids": list(tests)}]
    for nodeid, result in tests.items():
        call = record(nodeid, "call", result) if result != "skipped" else record(nodeid, "setup", "skipped")
        if result == "failed" and traces and nodeid in traces:
            call["longrepr"] = traces[nodeid]
            call["message"] = traces[nodeid].splitlines()[2].strip()
        lines += [record(nodeid, "setup")] if result != "skipped" else []
        lines += [call, record(nodeid, "teardown")]
    lines.append({"event": "end"})
    log = "".join(f"{n} {r.upper()}\n" for n, r in tests.items()).encode()
    defaults: dict[str, object] = {"node": "worker-1", "duration": 3.5, "log": log}
    return ShardOutcome(
        cell_id="c",
        shard=shard_name,
        attempt=attempt,
        exit_code=1 if "failed" in tests.values() else 0,
        report=b"".join(json.dumps(r).encode() + b"\n" for r in lines),
        **{**defaults, **flags},  # type: ignore[arg-type]
    )


def example_cells() -> list[matrix.Cell]:
    return matrix.expand(config.load(EXAMPLE), [])


def passing_cell(cell: matrix.Cell) -> CellResult:
    half = len(PASSING) // 2
    first = shard(dict.fromkeys(PASSING[:half], "passed"), "shard-1of2")
    second = shard(dict.fromkeys(PASSING[half:], "passed"), "shard-2of2", node="worker-2", gpu_ids=("0",))
    return cell_result(cell.id, cell.axes, [first, second], duration=14.2)


def example_run() -> RunResults:
    return RunResults(
        "example-20250101-000000-abcdef", [passing_cell(c) for c in example_cells()], False, False, 61.0, 0, 4
    )


FAILED = "tests/test_transforms.py::test_zscore"
FLAKY = "tests/test_running.py::test_window"


def failing_run() -> RunResults:
    """The example matrix with failures: python 3.13 fails (one real traceback, two hostile test names), python 3.9
    has a flaky test, the others pass."""
    cells = []
    for cell in example_cells():
        if cell.axes["python"] == "3.13":
            tests = {
                **dict.fromkeys(PASSING[:3], "passed"),
                FAILED: "failed",
                HOSTILE_SCRIPT: "failed",
                HOSTILE_IMG: "failed",
            }
            traces = {
                FAILED: TRACEBACK,
                HOSTILE_SCRIPT: "x\ny\n<script>window.__pwned=3</script>\n",
                HOSTILE_IMG: "a\nb\nc",
            }
            failed = [t for t, r in tests.items() if r == "failed"]
            outcomes = [
                shard(tests, "shard-1of2", traces=traces),
                shard(dict.fromkeys(PASSING[3:], "passed"), "shard-2of2"),
                shard(dict.fromkeys(failed, "failed"), "shard-1of2", attempt=2, traces=traces),
            ]
            cells.append(cell_result(cell.id, cell.axes, outcomes, duration=22.0))
        elif cell.axes["python"] == "3.9":
            outcomes = [
                shard(
                    {**dict.fromkeys(PASSING[:3], "passed"), FLAKY: "failed"}, "shard-1of2", traces={FLAKY: TRACEBACK}
                ),
                shard(dict.fromkeys(PASSING[3:], "passed"), "shard-2of2"),
                shard({FLAKY: "passed"}, "shard-1of2", attempt=2),
            ]
            cells.append(cell_result(cell.id, cell.axes, outcomes, duration=18.0))
        else:
            cells.append(passing_cell(cell))
    return RunResults("example-20250102-000000-fedcba", cells, False, False, 75.0, 1, 3)


def fixed_run() -> RunResults:
    """The example matrix where every test of ``failing_run`` passes."""
    cells = []
    for cell in example_cells():
        tests = dict.fromkeys([*PASSING, FAILED, HOSTILE_SCRIPT, HOSTILE_IMG, FLAKY], "passed")
        cells.append(cell_result(cell.id, cell.axes, [shard(tests)], duration=15.0))
    return RunResults("example-20250103-000000-aaaaaa", cells, False, False, 40.0, 0, 4)


def page_of(results: RunResults, status: str, **extra: object) -> report_page.Page:
    return report_page.Page(results, "example", status, declared_axes=["python", "numpy"], **extra)  # type: ignore[arg-type]


# --- the grid ------------------------------------------------------------------------------------------------------


def test_the_example_matrix_is_python_by_numpy_with_debian_in_the_row_headers() -> None:
    grid = report_page.layout(example_run().cells, ["python", "numpy"], ReportConfig())
    assert (grid.rows, grid.columns) == ("python", "numpy")
    assert grid.row_values == ["3.9", "3.11", "3.13"]
    assert grid.column_values == ["1.26.4", "2.2.6"]
    assert grid.row_notes == {"3.9": "debian=bullseye", "3.11": "debian=bookworm", "3.13": "debian=trixie"}
    assert grid.grouping == []
    [group] = grid.groups
    ids = {c.id: c for c in example_cells()}
    assert group.cells == {
        (c.axes["python"], c.axes["numpy"]): [cid] for cid, c in ids.items()
    }  # 4 of the 6 positions: the excluded ones stay empty
    assert len(group.cells) == 4


def test_report_rows_and_columns_come_from_the_matrix_file() -> None:
    grid = report_page.layout(example_run().cells, ["python", "numpy"], ReportConfig(rows="numpy", columns="python"))
    assert (grid.rows, grid.columns) == ("numpy", "python")
    assert grid.column_notes == {"3.9": "debian=bullseye", "3.11": "debian=bookworm", "3.13": "debian=trixie"}
    only_rows = report_page.layout(example_run().cells, ["python", "numpy"], ReportConfig(rows="numpy"))
    assert (only_rows.rows, only_rows.columns) == ("numpy", "python")


def _cells(*axes: dict[str, str]) -> list[CellResult]:
    return [cell_result("_".join(f"{k}-{v}" for k, v in a.items()), a, [shard({PASSING[0]: "passed"})]) for a in axes]


def test_an_independent_third_axis_groups_the_cells() -> None:
    combos = [
        {"python": p, "numpy": n, "os": o}
        for o in ("linux", "mac")
        for p in ("3.9", "3.11", "3.13")
        for n in ("1", "2")
    ]
    grid = report_page.layout(_cells(*combos), ["python", "numpy", "os"], ReportConfig())
    assert (grid.rows, grid.columns, grid.grouping) == ("python", "numpy", ["os"])
    assert [g.values for g in grid.groups] == [(("os", "linux"),), (("os", "mac"),)]
    assert all(len(g.cells) == 6 for g in grid.groups)


def test_one_axis_is_one_column_and_an_axis_only_some_cells_have_is_shown_as_missing() -> None:
    cells = _cells({"python": "3.9"}, {"python": "3.11", "gpus": "1"})
    grid = report_page.layout(cells, ["python"], ReportConfig())
    assert (grid.rows, grid.columns) == ("python", "")
    assert grid.row_notes == {"3.9": "gpus=-", "3.11": "gpus=1"}
    html_text = report_page.render(page_of(RunResults("r", cells, False, False, 1.0, 0, 0), "passed"))
    assert html_text.count('class="tile st-passed"') == 2


# --- what the page says, escaped ------------------------------------------------------------------------------------


def test_hostile_test_names_tracebacks_and_logs_are_text_never_markup() -> None:
    text = report_page.render(page_of(failing_run(), "failed"))
    assert text.count("<script") == 1  # the page's own, at its end
    assert "<img" not in text
    assert "&lt;script&gt;window.__pwned=1&lt;/script&gt;" in text
    assert "&lt;script&gt;window.__pwned=3&lt;/script&gt;" in text  # in the traceback
    assert "onerror=&quot;window.__pwned=2&quot;" in text


def test_the_page_fetches_nothing_and_runs_only_its_own_script() -> None:
    text = report_page.render(page_of(failing_run(), "failed"))
    digest = base64.b64encode(hashlib.sha256(report_page.SCRIPT.encode()).digest()).decode()
    csp = re.search(r'http-equiv="Content-Security-Policy" content="([^"]+)"', text)
    assert csp is not None
    assert (
        csp.group(1) == "default-src &#x27;none&#x27;; style-src &#x27;unsafe-inline&#x27;; "
        f"script-src &#x27;sha256-{digest}&#x27;; img-src data:"
    )
    assert f"<script>{report_page.SCRIPT}</script>" in text
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", text)  # no link or source outside the folder


def test_the_detail_of_a_failed_cell_has_its_shards_tests_tracebacks_and_logs() -> None:
    text = report_page.render(page_of(failing_run(), "failed"))
    failed = next(c for c in failing_run().cells if c.axes["python"] == "3.13")
    section = text.split(f'data-cell="{failed.cell_id}"><a class="close"', 1)[1].split("</section>", 1)[0]
    assert "shard-1of2" in section
    assert "worker-1" in section
    assert report_page.esc(TRACEBACK) in section
    assert "attempts: failed failed" in section
    assert f"logs/{failed.cell_id}/shard-1of2.attempt2.log" in section
    assert f"{FAILED} FAILED" in section  # the tail of the shard's log
    across = text.split('<h2 id="failed">', 1)[1].split('<h2 id="flaky">', 1)[0]
    assert FAILED in across
    assert failed.cell_id in across
    flaky = text.split('<h2 id="flaky">', 1)[1].split('<h2 id="quarantined">', 1)[0]
    assert FLAKY in flaky


def test_changes_since_the_previous_run_come_from_the_ledger(tmp_path: Path) -> None:
    history = History(tmp_path / "history.sqlite")
    try:
        previous = failing_run()
        history.record_outcomes("example@example", "run-before", "digest-1", previous.cells)
        now = fixed_run()  # everything passes now: the failures are fixed, nothing new
        history.record_outcomes("example@example", now.run_id, "digest-2", now.cells)  # itself is left out
        out = tmp_path / "report.html"
        mf = config.load(EXAMPLE)
        report_page.write(out, now, mf, "passed", None, history, "example@example")
        text = out.read_text()
        changes = text.split('<h2 id="changes">', 1)[1]
        assert "Against run <code>run-before</code>" in changes
        assert "Fixed (3)" in changes  # test_zscore and the two hostile ones
        assert "New failures (0)" in changes
        assert "New flaky (0)" in changes
        # the other way round: the previous run passed, this one fails
        again = tmp_path / "again.html"
        history.record_outcomes("example@example", "run-later", "digest-2", fixed_run().cells)
        report_page.write(again, failing_run(), mf, "failed", None, history, "example@example")
        changes = again.read_text().split('<h2 id="changes">', 1)[1]
        assert "New failures (3)" in changes
        assert "New flaky (1)" in changes
        assert FLAKY in changes
    finally:
        history.close()


def test_without_an_earlier_run_the_page_says_so(tmp_path: Path) -> None:
    history = History(tmp_path / "history.sqlite")
    try:
        report_page.write(tmp_path / "r.html", example_run(), config.load(EXAMPLE), "passed", None, history, "s")
    finally:
        history.close()
    assert "no earlier run of this matrix in the history store" in (tmp_path / "r.html").read_text()


def _coverage_bytes(tmp: Path, lines: dict[str, list[int]]) -> bytes:
    data = coverage.CoverageData(basename=str(tmp / "data"))
    data.add_lines(lines)
    data.write()
    out = (tmp / "data").read_bytes()
    (tmp / "data").unlink()
    return out


def test_each_cell_gets_its_own_coverage_and_bad_data_is_a_note(tmp_path: Path) -> None:
    project = tmp_path / "proj"
    (project / "pkg").mkdir(parents=True)
    (project / "pkg" / "__init__.py").write_text("")
    (project / "pkg" / "mod.py").write_text("def one():\n    return 1\n\n\ndef two():\n    return 2\n")
    half = _coverage_bytes(tmp_path, {"/src/pkg/mod.py": [1, 2, 5]})
    full = _coverage_bytes(tmp_path, {"/src/pkg/mod.py": [1, 2, 5, 6]})
    cells = [
        cell_result("a", {"python": "3.9"}, [shard({PASSING[0]: "passed"}, coverage=half)]),
        cell_result("b", {"python": "3.11"}, [shard({PASSING[0]: "passed"}, coverage=full)]),
        cell_result("c", {"python": "3.13"}, [shard({PASSING[0]: "passed"}, coverage=b"not a coverage file")]),
    ]
    found, notes = report_page.cell_coverage(RunResults("r", cells, False, False, 1.0, 0, 0), project)
    assert found["a"].percent == 75.0
    assert found["a"].files == [("pkg/mod.py", 75.0)]
    assert found["b"].percent == 100.0
    assert "c" not in found
    assert len(notes) == 1
    assert notes[0].startswith("coverage of c not computed: ")
    page = page_of(RunResults("r", cells, False, False, 1.0, 0, 0), "passed", cell_coverage=found)
    assert "Coverage of this cell: 75.0%" in report_page.render(page)


# --- in a real browser ---------------------------------------------------------------------------------------------


@pytest.fixture
def browser():  # type: ignore[no-untyped-def]
    assert chromium_path() is not None, "chromium is not installed: .ci/run installs it (apt-get install -y chromium)"
    b = Browser(width=1400, height=900)
    yield b
    b.close()


def _open(browser: Browser, results: RunResults, status: str, path: Path) -> list[str]:
    path.write_text(report_page.render(page_of(results, status)), encoding="utf-8")
    browser.open(path)
    assert browser.problems() == []  # no console error, no exception, no blocked fetch, no dialog
    tiles = browser.evaluate("Array.from(document.querySelectorAll('table.grid a.tile')).map(t => t.dataset.cell)")
    assert sorted(tiles) == sorted(c.cell_id for c in results.cells)  # every cell, once, in the grid
    return tiles  # type: ignore[no-any-return]


def _shot(browser: Browser, path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    browser.screenshot(path)
    assert path.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert path.stat().st_size > 10_000
    with capsys.disabled():
        print(f"\nreport.html screenshot: {path}")


@needs_chromium
def test_the_example_matrix_in_a_real_browser(
    browser: Browser, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _open(browser, example_run(), "passed", tmp_path / "report.html")
    assert browser.evaluate("document.querySelectorAll('table.grid td.empty').length") == 2  # the excluded pairs
    assert browser.evaluate("document.querySelectorAll('table.grid a.tile.st-passed').length") == 4
    heads = browser.evaluate("Array.from(document.querySelectorAll('table.grid th')).map(t => t.innerText)")
    assert [h.split("\n")[0] for h in heads] == ["python \\ numpy", "1.26.4", "2.2.6", "3.9", "3.11", "3.13"]
    assert browser.evaluate("getComputedStyle(document.querySelector('section.detail')).display") == "none"
    _shot(browser, tmp_path / "example-matrix.png", capsys)


@needs_chromium
def test_clicking_a_failed_cell_shows_its_traceback_in_a_real_browser(
    browser: Browser, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = failing_run()
    _open(browser, run, "failed", tmp_path / "report.html")
    failed = next(c for c in run.cells if c.axes["python"] == "3.13")
    detail = f"section.detail[data-cell='{failed.cell_id}']"
    assert browser.evaluate(f"getComputedStyle(document.querySelector({json.dumps(detail)})).display") == "none"

    browser.click(f"a.tile[data-cell='{failed.cell_id}']")

    assert browser.evaluate(f"getComputedStyle(document.querySelector({json.dumps(detail)})).display") == "block"
    shown = browser.evaluate(f"document.querySelector({json.dumps(detail)}).innerText")
    assert "E       assert -1.2247448713915887 == -1.0" in shown
    assert "tests/test_transforms.py:12: AssertionError" in shown
    assert HOSTILE_SCRIPT in shown  # hostile names are shown as the text they are
    assert HOSTILE_IMG in shown
    assert browser.evaluate("typeof window.__pwned") == "undefined"  # and none of them ran
    assert browser.evaluate("document.querySelectorAll('img').length") == 0
    assert browser.evaluate("document.querySelector('a.tile.selected').dataset.cell") == failed.cell_id
    assert browser.problems() == []
    _shot(browser, tmp_path / "matrix-with-failures.png", capsys)

    browser.call("Input.dispatchKeyEvent", {"type": "keyDown", "key": "Escape", "code": "Escape"})
    browser.pump(0.3)
    assert browser.evaluate(f"getComputedStyle(document.querySelector({json.dumps(detail)})).display") == "none"
