"""Trust boundaries, end to end: a test never reads the host, a run that tested nothing is never green, and
matrix-run deletes only what it made.

Real Docker, real Ray, no mocks. The attacks live in the sample project tests/projects/hostile and are switched
on per cell through ``tests.env`` (``HOSTILE_MODE``; see its README). Most of them share one matrix run (one cell
per attack, one shard each, no reruns, no fail-fast), run once for this module by the ``hostile`` fixture; each
test then asserts the safe outcome of its cell, and that nothing outside the project and ``--out`` was read or
changed: a host secret (a 0600 file that only the host has) never shows up in any output, the project tree is
byte for byte what it was, and no container or work folder of the run is left.
"""

from __future__ import annotations

import contextlib
import hashlib
import html
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import coverage
import psutil
import pytest
import yaml

from runner import coverage_merge, workspace
from runner.executors.docker import ROOT_CAPABILITIES
from runner.images import TEST_UID
from runner.outdir import LOCK, MARKER
from tests.conftest import PROJECTS, ROOT, containers_of, results, run_cli

HOSTILE = PROJECTS / "hostile"
TOKEN = 's3cr&t<"é>ünï'  # every character that an escaping could change, and non-ASCII ones
CANARY = b"s3cr"  # how every form of TOKEN begins: raw, XML-, JSON-escaped, repr, ascii
PIDS = 300  # resources.pids of the shared run, checked from inside the container
MODES = [
    "normal",
    "typo",
    "false",
    "true",
    "exit0",
    "norun",
    "symlink",
    "fifo",
    "bigreport",
    "badrecords",
    "covpaths",
    "secret",
    "inspect",
]
BAD_RECORDS = 10  # malformed lines that HOSTILE_MODE=badrecords writes into its report
GiB = 1024**3
# linux/capability.h: the capabilities of matrix-run's root containers, and some it must never grant
CAP_BITS = {
    "CHOWN": 0,
    "DAC_OVERRIDE": 1,
    "DAC_READ_SEARCH": 2,
    "FOWNER": 3,
    "FSETID": 4,
    "KILL": 5,
    "SETGID": 6,
    "SETUID": 7,
    "SETPCAP": 8,
    "NET_BIND_SERVICE": 10,
    "NET_ADMIN": 12,
    "NET_RAW": 13,
    "SYS_MODULE": 16,
    "SYS_RAWIO": 17,
    "SYS_CHROOT": 18,
    "SYS_PTRACE": 19,
    "SYS_ADMIN": 21,
    "MKNOD": 27,
    "AUDIT_WRITE": 29,
    "SETFCAP": 31,
}

pytestmark = [pytest.mark.docker, pytest.mark.ray, pytest.mark.slow]


# ------------------------------------------------------------------------------------------------ helpers


def _write(path: Path, data: dict[str, object]) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return path


def _matrix(path: Path, project: Path, modes: list[str], env: dict[str, str] | None = None, **sections: object) -> Path:
    """A one-axis matrix (``mode``) on bookworm: one cell per mode, one shard each, nothing rerun."""
    tests: dict[str, object] = {
        "shards": 1,
        "timeout": 120,
        "install-project": False,
        "env": {"HOSTILE_MODE": "{mode}", **(env or {})},
    }
    tests.update(sections.pop("tests", {}))  # type: ignore[call-overload]
    axes: dict[str, object] = {"mode": modes}
    if "include" in sections:
        axes["include"] = sections.pop("include")
    data: dict[str, object] = {
        "name": sections.pop("name", "trust"),
        "project": str(project),
        "matrix": axes,
        "image": {"base": "matrix-run/debian:bookworm"},
        "tests": tests,
        "retries": {"flaky": 0, "infra": 0},
        "strategy": {"fail-fast": False},
    }
    data.update(sections)
    return _write(path, data)


def _args(matrix: Path, out: Path, *extra: str) -> list[str]:
    return ["run", str(matrix), "--out", str(out), "--plain", "--history", f"{out}.history.sqlite", *extra]


def _popen(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as fh:
        return subprocess.Popen([sys.executable, "-m", "runner.cli", *args], cwd=ROOT, stdout=fh, stderr=fh)


def _files(out: Path) -> list[Path]:
    return sorted(p for p in out.rglob("*") if p.is_file() and not p.is_symlink())


def _leaks(out: Path, needle: bytes) -> list[str]:
    return [str(p.relative_to(out)) for p in _files(out) if needle in p.read_bytes()]


def _cell(out: Path, mode: str) -> dict:  # type: ignore[type-arg]
    (cell,) = [c for c in results(out)["cells"] if c["axes"]["mode"] == mode]
    return cell  # type: ignore[no-any-return]


def _log(out: Path, cell: dict) -> str:  # type: ignore[type-arg]
    return (out / "logs" / cell["id"] / "shard-1of1.attempt1.log").read_text(errors="replace")


def _inspected(out: Path, mode: str = "inspect") -> dict:  # type: ignore[type-arg]
    lines = [ln for ln in _log(out, _cell(out, mode)).splitlines() if ln.startswith("HOSTILE-INSPECT ")]
    assert len(lines) == 1, _log(out, _cell(out, mode))
    return json.loads(lines[0].split(" ", 1)[1])  # type: ignore[no-any-return]


def _tree(root: Path) -> dict[str, tuple[int, str]]:
    """Every entry under root (not following links): mode and content hash (link target for a link)."""
    entries = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        if path.is_symlink():
            what = "-> " + os.readlink(path)
        elif path.is_file():
            what = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            what = "dir"
        entries[str(path.relative_to(root))] = (st.st_mode, what)
    return entries


def _leftover_work(run_id: str) -> list[str]:
    """The run's work folders and owner files in this user's private state folder (shared with the CLI)."""
    found = [p.name for p in workspace.subdir("work").iterdir() if p.name.startswith(f"{run_id}.")]
    found += [p.name for p in workspace.subdir("runs").iterdir() if p.name.startswith(f"{run_id}.")]
    return found


def _containers_of_matrix(client, name: str) -> list[dict[str, object]]:  # type: ignore[no-untyped-def]
    """Containers of any run of the matrix ``name`` (run ids are ``NAME-TIME-HEX``), as the engine lists them
    (``Id``, ``State``, ``Labels``): one listing, no inspect of containers that other runs may remove meanwhile."""
    found = client.api.containers(all=True, filters={"label": "matrix-run.run"})
    return [c for c in found if str((c.get("Labels") or {}).get("matrix-run.run", "")).startswith(f"{name}-")]


def _one_line_refusal(proc: subprocess.CompletedProcess[str], *pieces: str) -> str:
    assert proc.returncode == 4, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr
    assert proc.stderr.count("\n") == 1, proc.stderr
    line = proc.stderr.rstrip("\n")
    assert line.startswith("matrix-run: error: "), line
    for piece in pieces:
        assert piece in line, line
    return line


class PeakRss:
    """The largest resident set of any process of a process tree (the CLI, its Ray, Ray's workers), sampled;
    and every process seen in it, so that a run that has to be killed leaves none behind."""

    def __init__(self, pid: int) -> None:
        self.root = psutil.Process(pid)
        self.peak = 0
        self.seen: dict[int, psutil.Process] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(psutil.Error):
                for p in [self.root, *self.root.children(recursive=True)]:
                    with contextlib.suppress(psutil.Error):
                        self.peak = max(self.peak, p.memory_info().rss)
                        self.seen.setdefault(p.pid, p)
            self._stop.wait(0.05)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak

    def kill_all(self) -> None:
        for p in self.seen.values():
            with contextlib.suppress(psutil.Error):
                if p.is_running():
                    p.kill()


# ------------------------------------------------------------------------------------------------ the shared run


@dataclass
class HostileRun:
    out: Path
    project: Path
    secret: Path
    secret_text: bytes
    marker: Path
    proc: subprocess.CompletedProcess[str]
    seconds: float
    peak_rss: int  # of any one process of the run's tree, sampled
    cli_max_rss: int  # the CLI process's own peak (wait4), bytes
    tree_before: dict[str, tuple[int, str]]
    tree_after: dict[str, tuple[int, str]]
    secret_stat: tuple[int, int, int]  # (mode, size, mtime_ns) before the run


def _git(root: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=root, check=True, capture_output=True, timeout=60)


def _trap_git(project: Path, marker: Path) -> None:
    """A git work tree whose core.fsmonitor and hooks write ``marker`` whenever git runs them."""
    _git(project, "init", "-q")
    _git(project, "add", ".")
    script = project.parent / "fsmonitor.sh"
    script.write_text(f'#!/bin/sh\necho fsmonitor "$@" >> {marker}\n')
    script.chmod(0o755)
    hooks = project.parent / "hooks"
    hooks.mkdir()
    for hook in ("pre-commit", "post-checkout", "post-index-change", "reference-transaction", "fsmonitor-watchman"):
        (hooks / hook).write_text(f"#!/bin/sh\necho {hook} >> {marker}\n")
        (hooks / hook).chmod(0o755)
    _git(project, "config", "core.fsmonitor", str(script))
    _git(project, "config", "core.hooksPath", str(hooks))
    _git(project, "ls-files", "--cached", "--others", "--exclude-standard")  # the trap is real on this git
    assert marker.exists(), "this git does not run core.fsmonitor for ls-files: the probe would prove nothing"
    marker.unlink()


@pytest.fixture(scope="module")
def secret_file() -> Iterator[Path]:
    """A file only the host has, 0600: one Python name, so that a report rendering it would show it whole."""
    folder = Path(tempfile.mkdtemp(prefix="mr-secret-", dir="/tmp"))
    path = folder / "secret.txt"
    path.write_text(f"host_secret_{secrets.token_hex(12)}\n")
    path.chmod(0o600)
    yield path
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory, secret_file: Path, docker_client) -> HostileRun:  # type: ignore[no-untyped-def]
    """One cell per attack, in a copy of the hostile project that is a git work tree with a trapped fsmonitor
    and a ``leak.py`` symlink to the host secret (never shipped, but a coverage path may name it)."""
    tmp = tmp_path_factory.mktemp("hostile")
    project = tmp / "project"
    shutil.copytree(HOSTILE, project, ignore=shutil.ignore_patterns("__pycache__", ".pytest_cache"))
    (project / "leak.py").symlink_to(secret_file)
    marker = tmp / "fsmonitor-ran"
    _trap_git(project, marker)
    matrix = _matrix(
        tmp / "matrix.yaml",
        project,
        MODES,
        env={"HOSTILE_SECRET_FILE": str(secret_file)},
        name="hostile",
        tests={"command": ["{prog}", "-m", "{module}"], "args": ["--{arg}"]},
        include=[
            {"prog": "python", "module": "pytest", "arg": "strict-markers"},  # every cell, then per mode:
            {"mode": "typo", "module": "pytst"},  # python -m pytst
            {"mode": "false", "prog": "false"},  # false (whatever follows it)
            {"mode": "true", "prog": "true"},
        ],
        coverage=True,
        resources={"pids": PIDS},
    )
    out = tmp / "out"
    st = secret_file.stat()
    tree_before = _tree(project)
    started = time.monotonic()
    with tempfile.TemporaryFile() as stdout, tempfile.TemporaryFile() as stderr:
        popen = subprocess.Popen(
            [sys.executable, "-m", "runner.cli", *_args(matrix, out, "--env", f"MY_TOKEN={TOKEN}")],
            cwd=ROOT,
            stdout=stdout,
            stderr=stderr,
        )
        rss = PeakRss(popen.pid)
        try:
            deadline = time.monotonic() + 420
            while (waited := os.wait4(popen.pid, os.WNOHANG))[0] == 0:
                if time.monotonic() > deadline:  # hung: a failure below, and nothing of it left running
                    rss.stop()
                    rss.kill_all()
                    waited = os.wait4(popen.pid, 0)
                    break
                time.sleep(0.1)
        finally:
            peak = rss.stop()
        _, status, usage = waited
        popen.returncode = os.waitstatus_to_exitcode(status)
        stdout.seek(0)
        stderr.seek(0)
        proc = subprocess.CompletedProcess(
            popen.args, popen.returncode, stdout.read().decode(errors="replace"), stderr.read().decode(errors="replace")
        )
    seconds = time.monotonic() - started
    assert (out / "results.json").is_file(), f"exit {proc.returncode}\n{proc.stdout[-5000:]}\n{proc.stderr[-5000:]}"
    return HostileRun(
        out=out,
        project=project,
        secret=secret_file,
        secret_text=secret_file.read_bytes(),
        marker=marker,
        proc=proc,
        seconds=seconds,
        peak_rss=peak,
        cli_max_rss=usage.ru_maxrss * 1024,
        tree_before=tree_before,
        tree_after=_tree(project),
        secret_stat=(st.st_mode, st.st_size, st.st_mtime_ns),
    )


def test_the_run_reads_and_changes_nothing_outside_the_project_and_out(hostile: HostileRun, docker_client) -> None:  # type: ignore[no-untyped-def]
    proc = hostile.proc
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr[-5000:]
    assert hostile.tree_after == hostile.tree_before  # the project tree is data: nothing written into it
    assert not hostile.marker.exists(), "git ran the project's fsmonitor or a hook in a real run"
    st = hostile.secret.stat()
    assert (st.st_mode, st.st_size, st.st_mtime_ns) == hostile.secret_stat
    secret = hostile.secret_text.strip()
    assert not _leaks(hostile.out, secret), "the host secret was read into the outputs"
    assert secret.decode() not in proc.stdout + proc.stderr
    run_id = results(hostile.out)["run_id"]
    assert not containers_of(docker_client, run_id)
    assert not _leftover_work(run_id)
    assert hostile.seconds < 300


# ------------------------------------------------------------------------------- 1. nothing green without tests


def test_a_run_that_tested_nothing_is_never_green(hostile: HostileRun) -> None:
    res = results(hostile.out)
    assert res["status"] == "failed"
    assert res["exit_code"] == hostile.proc.returncode == 1
    assert _cell(hostile.out, "normal")["status"] == "passed"  # the same project, left alone, passes


@pytest.mark.parametrize(
    ("mode", "reason", "log_piece"),
    [
        ("typo", "the test command exited 1 without starting pytest", "No module named pytst"),
        ("false", "the test command exited 1 without starting pytest", '["false", '),
        ("true", "the test command exited 0 without starting pytest", '["true", '),
        ("exit0", "pytest exited 0 before its session ended", "tests/test_hostile.py ."),
        # a conftest whose pytest_runtestloop runs nothing (--collect-only itself is refused before any container)
        ("norun", "pytest exited 0 but 8 of 8 collected test(s) never ran", "collected 8 items"),
    ],
)
def test_a_command_that_ran_no_test_is_an_error_with_the_log_tail(
    hostile: HostileRun, mode: str, reason: str, log_piece: str
) -> None:
    cell = _cell(hostile.out, mode)
    assert cell["status"] == "error", cell
    assert reason in cell["reason"], cell["reason"]
    assert "last lines of the log:" in cell["reason"]
    tail = cell["reason"].split("last lines of the log:\n", 1)[1]
    assert log_piece in tail, tail
    assert tail.splitlines()[-1] in _log(hostile.out, cell)
    assert cell["passed"] == 0 or mode == "exit0"
    (attempt,) = cell["shards"]
    assert attempt["kind"] == "error"
    assert attempt["exit_code"] == (0 if mode in ("true", "exit0", "norun") else 1)


def test_tests_after_os_exit_are_reported_not_run(hostile: HostileRun) -> None:
    cell = _cell(hostile.out, "exit0")
    assert cell["passed"] == 1  # test_before
    assert cell["tests"] == 8  # each collected test once: the others as not run
    assert "tests.test_hostile::test_after" in cell["failed_tests"]


def test_a_nul_byte_in_tests_paths_is_refused(tmp_path: Path) -> None:
    matrix = _matrix(tmp_path / "m.yaml", HOSTILE, ["normal"], tests={"paths": ["tests\0/x"]})
    proc = run_cli(*_args(matrix, tmp_path / "out"), timeout=60)
    _one_line_refusal(proc, f"{matrix}:", "tests.paths[0]", "U+0000")
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------- 2. outputs are untrusted


def test_symlinked_outputs_are_not_followed_to_the_host(hostile: HostileRun) -> None:
    cell = _cell(hostile.out, "symlink")
    assert cell["status"] == "error"
    (attempt,) = cell["shards"]
    assert "report.jsonl from the shard was not read: it is a symbolic link" in attempt["reason"]
    assert ".coverage from the shard was not read: it is a symbolic link" in attempt["reason"]
    assert attempt["exit_code"] == 0  # pytest passed; what it left could not be trusted
    raw = hostile.out / "shards" / cell["id"]
    assert not raw.exists() or not list(raw.iterdir())  # nothing of it kept
    assert not _leaks(hostile.out, hostile.secret_text.strip())


def test_a_fifo_as_report_ends_the_shard_without_hanging(hostile: HostileRun) -> None:
    cell = _cell(hostile.out, "fifo")
    assert cell["status"] == "error"
    assert "report.jsonl from the shard was not read: it is not a regular file" in cell["reason"]


def test_a_sparse_gigabyte_report_is_not_read(hostile: HostileRun) -> None:
    cell = _cell(hostile.out, "bigreport")
    assert cell["status"] == "error"
    assert (
        "report.jsonl from the shard is 1.0 GiB, over the 64.0 MiB cap (tests.output-limit): not read"
        in (cell["reason"])
    )
    assert all(p.stat().st_size < 64 * 1024**2 for p in _files(hostile.out))
    assert hostile.peak_rss < GiB, f"a process of the run reached {hostile.peak_rss / GiB:.2f} GiB"
    assert hostile.cli_max_rss < GiB


def test_malformed_report_records_are_skipped_and_counted(hostile: HostileRun) -> None:
    cell = _cell(hostile.out, "badrecords")
    assert cell["status"] == "passed", cell
    (attempt,) = cell["shards"]
    assert attempt["kind"] == "ok"
    assert f"{BAD_RECORDS} malformed report record(s) skipped" in attempt["reason"]
    # the real records around them stand: every test once, with its own outcome
    assert (cell["tests"], cell["passed"], cell["skipped"], cell["failures"], cell["errors"]) == (8, 3, 5, 0, 0)
    # and no other cell's results moved
    normal = _cell(hostile.out, "normal")
    assert (normal["tests"], normal["passed"], normal["skipped"]) == (8, 2, 6)
    suites = {s.get("name"): s for s in ET.parse(hostile.out / "junit.xml").getroot().iter("testsuite")}
    assert len(suites[cell["id"]].findall("testcase")) == 8
    assert len(suites[normal["id"]].findall("testcase")) == 8


# ------------------------------------------------------------------------------------------------ 3. secrets


def _secret_forms(value: str) -> list[bytes]:
    forms = {
        value,
        html.escape(value, quote=False),
        html.escape(value),
        value.encode("ascii", "xmlcharrefreplace").decode(),
        html.escape(value).encode("ascii", "xmlcharrefreplace").decode(),
        json.dumps(value)[1:-1],
        json.dumps(value, ensure_ascii=False)[1:-1],
        repr(value)[1:-1],
        ascii(value)[1:-1],
        json.dumps(json.dumps(value))[1:-1],  # a JSON form the test printed, inside the plugin's JSON record
        json.dumps(ascii(value))[1:-1],
        html.escape(json.dumps(value)),
        html.escape(json.dumps(value), quote=False),
        html.escape(ascii(value)),
        html.escape(ascii(value), quote=False),
    }
    return sorted({f.encode() for f in forms})


def test_a_secret_never_reaches_a_file_in_any_form(hostile: HostileRun) -> None:
    cell = _cell(hostile.out, "secret")
    # it was there to leak: the test saw the value, printed it and failed with it in its message
    assert cell["status"] == "failed"
    assert cell["failed_tests"] == ["tests.test_hostile::test_secret_is_printed_and_asserted"]
    assert "the token is ***" in _log(hostile.out, cell)
    files = _files(hostile.out)
    names = {str(p.relative_to(hostile.out)) for p in files}
    assert {"junit.xml", "results.json", "summary.md", "report.html"} <= names
    assert any(n.startswith("logs/") for n in names)
    assert any(n.startswith("shards/") for n in names)
    leaks = {
        str(p.relative_to(hostile.out)): sorted({f.decode() for f in _secret_forms(TOKEN) if f in p.read_bytes()})
        for p in files
        if CANARY in p.read_bytes()
    }
    assert not leaks, f"the secret leaked (file: forms found): {leaks}"
    assert CANARY.decode() not in hostile.proc.stdout + hostile.proc.stderr


# ------------------------------------------------------------------------------------------------ 4. coverage paths


def test_coverage_never_renders_host_files(hostile: HostileRun) -> None:
    assert _cell(hostile.out, "covpaths")["status"] == "passed"
    classes = [c.get("filename") or "" for c in ET.parse(hostile.out / "coverage.xml").getroot().iter("class")]
    assert sorted(classes) == ["hostile/__init__.py", "tests/conftest.py", "tests/test_hostile.py"]
    html_dir = hostile.out / "htmlcov"
    assert (html_dir / "index.html").is_file()
    rendered = b"".join(p.read_bytes() for p in _files(html_dir))
    assert hostile.secret_text.strip() not in rendered
    assert b"root:x:0:0" not in rendered
    assert not [p.name for p in _files(html_dir) if re.search(r"passwd|shadow|hostname|secret|leak", p.name)]
    notes = re.findall(r"coverage: (\d+) measured file\(s\) outside the project dropped unread", hostile.proc.stderr)
    assert notes, hostile.proc.stderr[-3000:]
    # /etc/hostname, /etc/passwd, /etc/shadow, the secret (by its path, by /src/../.., by the project's leak.py)
    assert int(notes[0]) >= 4
    assert results(hostile.out)["coverage"]["files"] == 3


def _data_file(tmp: Path, name: str, lines: dict[str, list[int]], context: str = "") -> bytes:
    data = coverage.CoverageData(basename=str(tmp / name))
    data.set_context(context)
    data.add_lines(lines)
    data.write()
    return (tmp / name).read_bytes()


def test_coverage_merge_keeps_only_files_inside_the_project(tmp_path: Path) -> None:
    """No Docker: coverage data naming host files (absolute, escaping /src with '..', a project file that is a
    symlink out of the project here, matrix-run's own plugin) is dropped before the reports open anything."""
    project = tmp_path / "proj"
    (project / "pkg").mkdir(parents=True)
    (project / "pkg" / "mod.py").write_text("def one():\n    return 1\n")
    secret = tmp_path / "secret.py"
    secret.write_text("host_secret_value_42 = 1\n")
    (project / "pkg" / "link.py").symlink_to(secret)
    outside = tmp_path / "elsewhere.py"
    outside.write_text("elsewhere_value_43 = 1\n")
    first = _data_file(
        tmp_path,
        "a",
        {
            "/src/pkg/mod.py": [1, 2],
            str(secret): [1],
            "/src/../../../../../../../.." + str(outside): [1],
            "/src/pkg/link.py": [1],
            "/etc/passwd": [1],
            "/mr/side/matrix_run_plugin.py": [1],
        },
        context="test_a",
    )
    second = _data_file(tmp_path, "b", {"/src/pkg/mod.py": [1], "/src/pkg/../../" + secret.name: [1]}, "test_b")
    out = tmp_path / "out"
    out.mkdir()

    summary = coverage_merge.write_merged([first, second], project, out, "t")

    assert summary is not None
    assert summary.files == 1
    assert summary.percent == 100.0
    classes = [c.get("filename") for c in ET.parse(out / "coverage.xml").getroot().iter("class")]
    assert classes == ["pkg/mod.py"]
    rendered = b"".join(p.read_bytes() for p in _files(out))
    assert b"host_secret_value_42" not in rendered
    assert b"elsewhere_value_43" not in rendered
    assert b"root:x:0:0" not in rendered
    # secret.py (three ways), elsewhere.py, /etc/passwd; matrix-run's own plugin is not counted
    dropped = [n for n in summary.warnings if "outside the project" in n]
    assert dropped == [
        "3 measured file(s) outside the project dropped unread "
        "(the coverage data named them; only the project's own files are reported)"
    ]


def test_coverage_merge_keeps_contexts_and_arcs_of_the_kept_files(tmp_path: Path) -> None:
    project = tmp_path / "proj"
    project.mkdir()
    (project / "mod.py").write_text("def f(x):\n    if x:\n        return 1\n    return 2\n")
    data = coverage.CoverageData(basename=str(tmp_path / "a"))
    # the module runs its def (1), then each test takes one branch of line 2
    for ctx, arcs in (("t1", [(-1, 1), (1, -1), (-1, 2), (2, 3), (3, -1)]), ("t2", [(-1, 2), (2, 4), (4, -1)])):
        data.set_context(ctx)
        data.add_arcs({"/src/mod.py": arcs, "/etc/passwd": [(-1, 1)]})
    data.write()
    out = tmp_path / "out"
    out.mkdir()

    summary = coverage_merge.write_merged([(tmp_path / "a").read_bytes()], project, out, "t")

    assert summary is not None
    assert summary.files == 1
    assert summary.percent == 100.0  # both branches, from the two contexts
    root = ET.parse(out / "coverage.xml").getroot()
    assert root.get("branch-rate") == "1"
    assert any("1 measured file(s) outside the project" in n for n in summary.warnings)


def test_coverage_merge_with_nothing_inside_the_project_reports_nothing(tmp_path: Path) -> None:
    project = tmp_path / "proj"
    project.mkdir()
    data = _data_file(tmp_path, "a", {"/etc/passwd": [1]})
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(coverage.exceptions.NoDataError, match="1 outside it dropped unread"):
        coverage_merge.write_merged([data], project, out, "t")
    assert not list(out.iterdir())


# ------------------------------------------------------------------------------------------------ 7. hardening


def test_the_default_test_user_has_no_privileges_and_sees_no_host(hostile: HostileRun) -> None:
    seen = _inspected(hostile.out)
    assert (seen["uid"], seen["gid"]) == (TEST_UID, TEST_UID)
    assert seen["capeff"] == seen["capbnd"] == "0000000000000000"
    assert seen["nonewprivs"] == "1"
    assert seen["pids_max"] == str(PIDS)
    # nothing of the host is mounted but the shard's own output folder and matrix-run's read-only scripts
    mounts = set(seen["mounts"]) - {"/etc/hostname", "/etc/hosts", "/etc/resolv.conf", "/usr/sbin/docker-init"}
    assert mounts == {"/", "/mr/out", "/mr/side"}, seen["mounts"]
    assert seen["docker_socket"] is False
    assert seen["host_secret_visible"] is False


# ------------------------------------------------------------------------------------------------ 5. --out


def _user_folder(path: Path) -> dict[str, bytes]:
    files = {"logs/build-2025.log": b"the user's build log\n", "images/photo.jpg": b"\xff\xd8\xff\xe0 a photo"}
    files["notes.txt"] = b"the user's notes\n"
    for rel, data in files.items():
        (path / rel).parent.mkdir(parents=True, exist_ok=True)
        (path / rel).write_bytes(data)
    return files


def test_out_with_files_matrix_run_did_not_write_is_refused_and_left_alone(tmp_path: Path) -> None:
    out = tmp_path / "mine"
    files = _user_folder(out)
    before = _tree(out)
    matrix = _matrix(tmp_path / "m.yaml", HOSTILE, ["normal"])
    proc = run_cli(*_args(matrix, out), timeout=60)
    _one_line_refusal(proc, f"--out {out}", f"no {MARKER} marker", "--force")
    assert _tree(out) == before
    assert all((out / rel).read_bytes() == data for rel, data in files.items())


@pytest.mark.parametrize("folder", ["/", "/etc", "/tmp"])
def test_out_on_a_system_folder_is_refused_even_with_force(tmp_path: Path, folder: str) -> None:
    matrix = _matrix(tmp_path / "m.yaml", HOSTILE, ["normal"])
    proc = run_cli("run", str(matrix), "--out", folder, "--force", "--history", str(tmp_path / "h.sqlite"))
    _one_line_refusal(proc, f"--out {folder}: a system or home folder")
    assert not Path(folder, LOCK).exists()
    assert not Path(folder, MARKER).exists()


def test_force_deletes_nothing_of_the_user_and_a_second_run_fails_at_once(tmp_path: Path, docker_client) -> None:  # type: ignore[no-untyped-def]
    """With --force a user's folder is taken, but nothing of the user's is deleted: a folder that holds one of
    matrix-run's output names (the user's own logs/) is refused even then, naming it; one without them is used and
    its files stay. While the run writes there, a second run on the same --out fails at once, naming the first.
    The run also checks the root user's container."""
    out = tmp_path / "mine"
    files = _user_folder(out)
    matrix = _matrix(tmp_path / "m.yaml", HOSTILE, ["inspect"], tests={"user": "root"})
    refused = run_cli(*_args(matrix, out, "--force"), timeout=60)
    _one_line_refusal(refused, f"--out {out.resolve()}: logs, images exist(s) there", "never deletes")
    assert {rel: (out / rel).read_bytes() for rel in files} == files
    for rel in ("logs", "images"):
        shutil.rmtree(out / rel)
    matrix = _matrix(
        tmp_path / "m.yaml",
        HOSTILE,
        ["inspect", "sleep"],
        env={"HOSTILE_SLEEP": "8"},
        tests={"user": "root"},
        resources={"cpus": 1},
    )
    log = tmp_path / "first.log"
    first = _popen([*_args(matrix, out, "--force")], log)
    try:
        deadline = time.monotonic() + 60
        while not ((out / LOCK).exists() and (out / MARKER).exists()):
            assert first.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        assert (out / "notes.txt").read_bytes() == b"the user's notes\n"

        started = time.monotonic()
        second = run_cli(*_args(matrix, out), timeout=60)
        took = time.monotonic() - started
        assert first.poll() is None, "the first run ended before the second tried: the probe proved nothing"
        line = _one_line_refusal(second, f"--out {out.resolve()}: in use by run ", f"(pid {first.pid})")
        assert took < 20
        code = first.wait(300)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert code == 0, log.read_text()[-5000:]
    res = results(out)
    assert f"in use by run {res['run_id']} " in line
    assert (out / "notes.txt").read_bytes() == b"the user's notes\n"
    assert sorted(p.name for p in (out / "logs").iterdir()) == sorted(c["id"] for c in res["cells"])

    # tests.user: root gets Docker's defaults less raw sockets, mknod, chroot, audit and file capabilities
    seen = _inspected(out)
    assert seen["uid"] == 0
    mask = sum(1 << CAP_BITS[name] for name in ROOT_CAPABILITIES)
    assert int(seen["capeff"], 16) == int(seen["capbnd"], 16) == mask
    for name in ("NET_RAW", "MKNOD", "SYS_CHROOT", "AUDIT_WRITE", "SETFCAP", "SYS_ADMIN", "SYS_PTRACE", "NET_ADMIN"):
        assert not int(seen["capeff"], 16) & (1 << CAP_BITS[name]), name
    assert seen["nonewprivs"] == "1"
    assert not containers_of(docker_client, res["run_id"])


# ------------------------------------------------------------------------------------------------ 6. leftovers


def test_a_killed_run_leaves_containers_that_the_next_run_sweeps(  # type: ignore[no-untyped-def]
    tmp_path: Path, docker_client, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a state folder of this test's own: the work folders in it are swept by the next run below and by no other
    # matrix-run on this machine (containers are shared: another run starting meanwhile may sweep that one first)
    monkeypatch.setenv(workspace.STATE_DIR_ENV, str(tmp_path / "state"))
    name = f"kill{secrets.token_hex(3)}"
    matrix = _matrix(tmp_path / "slow.yaml", HOSTILE, ["sleep"], env={"HOSTILE_SLEEP": "300"}, name=name)
    log = tmp_path / "killed.log"
    victim = _popen(_args(matrix, tmp_path / "killed"), log)
    family: dict[int, psutil.Process] = {}
    try:
        deadline = time.monotonic() + 180
        container = None
        while container is None:
            assert victim.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            with contextlib.suppress(psutil.Error):
                family.update({p.pid: p for p in psutil.Process(victim.pid).children(recursive=True)})
            for c in _containers_of_matrix(docker_client, name):
                if c["Labels"].get("matrix-run.role") == "shard" and c["State"] == "running":  # type: ignore[attr-defined]
                    container = c
            time.sleep(0.2)
        run_id = container["Labels"]["matrix-run.run"]  # type: ignore[index]
        assert _leftover_work(run_id), "the shard's work folder was expected while it runs"
        with contextlib.suppress(psutil.Error):
            family.update({p.pid: p for p in psutil.Process(victim.pid).children(recursive=True)})
        victim.send_signal(signal.SIGKILL)
        victim.wait(30)
        # nobody cleaned up after it: its container is still there (looked at at once: another matrix-run that
        # starts on this machine now would sweep it), and its shard's work folder stays too, whatever its Ray did
        assert [c.id for c in containers_of(docker_client, run_id)] == [container["Id"]]
        time.sleep(2)
        assert _leftover_work(run_id)

        # the next run, of any matrix (here one cell whose command is `true`): sweeps first, then runs
        nxt = _matrix(tmp_path / "next.yaml", HOSTILE, ["normal"], tests={"command": ["true"]})
        proc = run_cli(*_args(nxt, tmp_path / "next"), timeout=300)
    finally:
        if victim.poll() is None:  # the test failed before it killed the run
            victim.kill()
            victim.wait()
        for p in family.values():  # the killed run's embedded Ray: its agents outlive it
            with contextlib.suppress(psutil.Error):
                if p.is_running():
                    p.kill()
        with contextlib.suppress(Exception):
            for c in _containers_of_matrix(docker_client, name):
                docker_client.api.remove_container(c["Id"], force=True)
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr
    # the killed shard's work folder (its Ray worker died with the run) is the one the next run found
    assert re.search(r"removed \d+ container\(s\) and 1 work folder\(s\) of dead earlier runs", proc.stdout), (
        proc.stdout
    )
    assert not containers_of(docker_client, run_id)
    assert not _leftover_work(run_id)
    # and a command that is not pytest is an error, and an error alone fails the run
    assert proc.returncode == 1, proc.stdout + proc.stderr
    res = results(tmp_path / "next")
    assert (res["status"], res["exit_code"]) == ("failed", 1)
    (cell,) = res["cells"]
    assert cell["status"] == "error"
    assert "the test command exited 0 without starting pytest" in cell["reason"]
    assert '["true", ' in cell["reason"]  # the last lines of the log, with the command that ran
