"""pytest as the project configures it: a compatibility table of project configurations.

Each row is a tiny sample project under tests/projects/compat-<concern>/ (one concern each, a deliberate skip, a
parametrized test with an odd id), whose suite passes under a plain ``pytest``. It runs through matrix-run on
pytest 8 (bullseye, Python 3.9) and pytest 9 (bookworm, Python 3.11), two shards per cell, in one matrix run per
project; then the same project runs directly (the matrix's tests.command, tests.args and tests.paths, from its
tests.workdir, nothing else on the command line) in a container of each cell's own image. Every cell must give
the same passed/failed/error/skipped counts and the same set of JUnit (classname, name) pairs as the direct run,
each test must have run exactly once across the shards, and the counts must be the ones the row expects.

The direct run records its outcomes through a recorder plugin named by ``PYTEST_PLUGINS`` (not by the command
line, so that it cannot be refused by the project's config), using pytest's own ``mangle_test_address`` for the
JUnit names and pytest's own JUnit rules for the outcome of each test.

The old additions (``--junitxml=... -o junit_family=xunit1 -o cache_dir=...`` after the user's command) break
rows 3, 4 and the command-line variants of rows 1 and 5; the old file handling (every tests.paths entry on every
shard's command line, files filtered by ``pytest_ignore_collect`` only) breaks row 14 (see their docstrings; each
was checked by putting the old code back in a copy of the tree). The other rows guard the planner, the shard
file filter and the plugin against regressions.
"""

from __future__ import annotations

import json
import shlex
import tempfile
import xml.etree.ElementTree as ET
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import PROJECTS, report_records, results, run_cli, write_matrix

pytestmark = [pytest.mark.docker, pytest.mark.ray, pytest.mark.slow]

CELLS = ("debian-bullseye", "debian-bookworm")
PYTEST_MAJOR = {"debian-bullseye": "8", "debian-bookworm": "9"}

# Loaded in the direct run through PYTEST_PLUGINS; runs on Python 3.9 too. Under pytest-xdist only the controller
# writes (it receives every worker's reports through the same hooks).
RECORDER = """
import json
import os

from _pytest.junitxml import mangle_test_address

_out = []


def _names(nodeid):
    names = mangle_test_address(nodeid)
    return ".".join(names[:-1]), names[-1]


def _emit(kind, report):
    if _out:
        classname, name = _names(report.nodeid)
        record = {"kind": kind, "nodeid": report.nodeid, "when": getattr(report, "when", None),
                  "outcome": report.outcome, "classname": classname, "name": name}
        _out[0].write(json.dumps(record) + "\\n")
        _out[0].flush()


def pytest_configure(config):
    if not hasattr(config, "workerinput"):
        _out.append(open(os.environ["DIRECT_RECORD"], "w"))


def pytest_collectreport(report):
    if not report.passed:
        _emit("collect", report)


def pytest_runtest_logreport(report):
    _emit("test", report)


def pytest_unconfigure(config):
    while _out:
        _out.pop().close()
"""

# Install the project the way matrix-run's prepare.py does (editable, else a regular build; no network), then
# run the test command exactly as the matrix gives it, from tests.workdir.
DIRECT = (
    "cd /src && export SETUPTOOLS_SCM_PRETEND_VERSION=0.0.0+matrixrun; "
    "PIP='python -m pip install -q --no-deps --no-build-isolation --no-index'; "
    "if [ {install} = 1 ] && {{ [ -f pyproject.toml ] || [ -f setup.py ]; }}; then "
    "$PIP -e . >/out/install.log 2>&1 || $PIP . >>/out/install.log 2>&1; fi; "
    "cd /src/{workdir} && {command} >/out/direct.log 2>&1; echo $? >/out/rc"
)


@dataclass
class Cases:
    """One cell's test cases: outcome counts and the set of JUnit (classname, name) pairs."""

    counts: Counter[str] = field(default_factory=Counter)
    names: set[tuple[str, str]] = field(default_factory=set)
    log: str = ""


def _outcome(phases: list[dict[str, Any]]) -> str:
    """pytest's JUnit verdict for one test from its phase reports."""
    by = {p["when"]: p["outcome"] for p in phases}
    if by.get("call") == "failed":
        return "failed"
    if "failed" in (by.get("setup"), by.get("teardown")):
        return "error"
    if "skipped" in by.values():
        return "skipped"
    return "passed"


def _recorded(lines: list[str]) -> Cases:
    phases: dict[str, list[dict[str, Any]]] = {}
    cases = Cases()
    for line in lines:
        rec = json.loads(line)
        cases.names.add((rec["classname"], rec["name"]))
        if rec["kind"] == "collect":  # a module that failed to import (error) or skipped whole (skipped)
            cases.counts["error" if rec["outcome"] == "failed" else "skipped"] += 1
        else:
            phases.setdefault(rec["nodeid"], []).append(rec)
    cases.counts.update(_outcome(p) for p in phases.values())
    return cases


def direct_cases(matrix_path: Path) -> dict[str, Cases]:
    """cell id -> the cases of a direct, unsharded pytest run of the project in the cell's own image."""
    from runner import config, engine, images, matrix, source

    mf = config.load(str(matrix_path))
    cells = matrix.expand(mf, [])
    client = engine.connect()
    specs = images.specs_for(mf, cells, client)
    tree = source.snapshot(mf.project)
    argv = [*mf.tests.command, *mf.tests.args, *mf.tests.paths]
    script = DIRECT.format(
        install="1" if mf.tests.install_project else "0",
        workdir=shlex.quote(mf.tests.workdir or "."),
        command=" ".join(shlex.quote(a) for a in argv),
    )

    def run(cell: Any) -> tuple[str, Cases]:
        tag, _ = images.ensure(client, specs[cell.id])
        with tempfile.TemporaryDirectory(prefix="matrix-run-compat-") as tmp:
            src, out, side = Path(tmp) / "src", Path(tmp) / "out", Path(tmp) / "side"
            source.extract(tree.tarball, src)
            out.mkdir()
            side.mkdir()
            (side / "direct_record.py").write_text(RECORDER)
            client.containers.run(
                tag,
                ["/bin/sh", "-c", script],
                volumes={
                    str(src): {"bind": "/src", "mode": "rw"},
                    str(out): {"bind": "/out", "mode": "rw"},
                    str(side): {"bind": "/side", "mode": "ro"},
                },
                environment={
                    "HOME": "/tmp",
                    "PYTHONPATH": "/side",
                    "PYTEST_PLUGINS": "direct_record",
                    "DIRECT_RECORD": "/out/record.jsonl",
                    "MATRIX_RUN": "1",
                    "MATRIX_RUN_CELL": cell.id,
                    "MATRIX_RUN_SHARD": "shard-1of1",
                    "MATRIX_RUN_ATTEMPT": "1",
                },
                remove=True,
            )
            log = (out / "direct.log").read_text(errors="replace") if (out / "direct.log").exists() else ""
            rc = (out / "rc").read_text().strip() if (out / "rc").exists() else "?"
            assert rc == "0", f"{cell.id}: the direct run itself failed (exit {rc}):\n{log[-3000:]}"
            record = out / "record.jsonl"
            cases = _recorded(record.read_text().splitlines() if record.exists() else [])
            cases.log = log
            return cell.id, cases

    with ThreadPoolExecutor(max_workers=len(cells)) as pool:
        return dict(pool.map(run, cells))


def matrix_run_cases(out: Path) -> dict[str, Cases]:
    """cell id -> the cases of matrix-run's merged junit.xml (a test counted once; flaky counts as passed)."""
    found: dict[str, Cases] = {}
    for suite in ET.parse(out / "junit.xml").getroot().iter("testsuite"):
        cases = found.setdefault(suite.get("name", ""), Cases())
        for tc in suite.iter("testcase"):
            key = (tc.get("classname", ""), tc.get("name", ""))
            assert key not in cases.names, f"{suite.get('name')}: {key} twice in junit.xml"
            cases.names.add(key)
            tags = {c.tag for c in tc}
            verdict = "failed" if "failure" in tags else "error" if "error" in tags else None
            cases.counts[verdict or ("skipped" if "skipped" in tags else "passed")] += 1
    return found


def shard_records(out: Path, cell_id: str) -> list[dict[str, Any]]:
    """Every record of every first attempt of the cell's shards."""
    records = []
    for path in sorted((out / "shards" / cell_id).glob("*.attempt1.report.jsonl")):
        records += report_records(path.read_text().splitlines())
    return records


def check_row(
    tmp_path: Path, project: str, expect: Counter[str], install: list[str] | None = None, **tests: object
) -> dict[str, Cases]:
    """Run ``project`` through matrix-run (bullseye + bookworm, 2 shards) and directly; compare cell by cell.

    The sample projects are not packages: they run with ``install-project: false`` unless the row is about
    installing (rows 9 and 11 keep matrix-run's default, ``true``).
    """
    image: dict[str, object] = {"base": "matrix-run/debian:{debian}"}
    if install:
        image["install"] = install
    matrix = write_matrix(
        tmp_path,
        PROJECTS / project,
        matrix={"debian": ["bullseye", "bookworm"]},
        image=image,
        tests={"shards": 2, "timeout": 300, "install-project": False, **tests},
    )
    out = tmp_path / "out"
    proc = run_cli("run", str(matrix), "--out", str(out), "--plain", "--history", str(tmp_path / "h.sqlite"))
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    res = results(out)
    assert res["status"] == "passed"
    assert [c["id"] for c in res["cells"]] == list(CELLS)

    ours = matrix_run_cases(out)
    direct = direct_cases(matrix)
    for cell in res["cells"]:
        cid = cell["id"]
        # the direct run is the reference, and it is the suite the row describes
        assert direct[cid].counts == expect, f"{cid}: direct run\n{direct[cid].log[-3000:]}"
        assert ours[cid].counts == direct[cid].counts, cid
        assert ours[cid].names == direct[cid].names, (
            cid,
            sorted(ours[cid].names - direct[cid].names),
            sorted(direct[cid].names - ours[cid].names),
        )
        counts = {"passed": cell["passed"], "failed": cell["failures"], "error": cell["errors"]}
        counts["skipped"] = cell["skipped"]
        assert Counter({k: v for k, v in counts.items() if v}) == expect, (cid, counts)

        # sharding was exercised: two first attempts, each ran tests, no reruns, together they ran the cell
        shards = cell["shards"]
        assert sorted((s["shard"], s["attempt"], s["kind"]) for s in shards) == [
            ("shard-1of2", 1, "ok"),
            ("shard-2of2", 1, "ok"),
        ], shards
        assert all(s["tests"] > 0 for s in shards), shards
        assert sum(s["tests"] for s in shards) == cell["tests"] == sum(expect.values())

        # every test ran exactly once across the shards, on the pytest this cell is meant to have
        records = shard_records(out, cid)
        starts = [r for r in records if r["event"] == "start"]
        assert len(starts) == 2
        assert {r["pytest"].split(".")[0] for r in starts} == {PYTEST_MAJOR[cid]}
        for when in ("setup", "call"):
            ran = Counter(r["nodeid"] for r in records if r["event"] == "test" and r["when"] == when)
            assert ran, (cid, when)
            assert set(ran.values()) == {1}, (cid, when, ran)
    return ours


def names_of(cases: Cases) -> set[str]:
    return {name for _, name in cases.names}


# Rows 1 and 5 turn a plugin off in addopts and, in a second variant, on the project's own command line: pytest
# reads a `-p no:NAME` of the command line before it loads its builtin plugins, one of addopts only after they
# registered their options and ini keys (it then unregisters the plugin, the options stay).


@pytest.mark.parametrize("where", ["addopts", "command-line"])
def test_strict_config_with_cacheprovider_off(tmp_path, where):
    """Row 1: ``--strict-config -p no:cacheprovider`` in addopts (pyproject.toml), and also on the project's
    command line (``tests.args``).

    Breaks with the old additions in the command-line variant: the cacheprovider never registers its
    ``cache_dir`` ini key, so ``-o cache_dir=...`` is an unknown config option, an error under ``--strict-config``
    on pytest 9 (the bookworm cell; pytest 8.4 does not check ``-o`` keys). The addopts variant guards against
    regressions only: there ``-p no:cacheprovider`` unregisters the plugin after its ini keys exist, and pytest
    accepts ``-o cache_dir=...``.
    """
    args = {"args": ["-p", "no:cacheprovider", "--strict-config"]} if where == "command-line" else {}
    check_row(tmp_path, "compat-strict-config", Counter(passed=6, skipped=1), **args)


def test_xdist_in_addopts_runs_each_test_once(tmp_path):
    """Row 2: ``addopts = -p xdist -n 2`` with pytest-xdist in the image.

    Guards the plugin under xdist: the controller writes the records (workers' reports reach it through
    pytest's hooks), and the shard file filter applies in every worker, so each test runs exactly once across the
    shards, and no record is lost or doubled. The suite itself checks it ran inside an xdist worker.
    """
    check_row(tmp_path, "compat-xdist", Counter(passed=6, skipped=1), install=["pytest-xdist"])
    out = tmp_path / "out"
    for cid in CELLS:
        starts = [r for r in shard_records(out, cid) if r["event"] == "start"]
        assert [r["xdist"] for r in starts] == [True, True], starts


def test_project_own_junitxml(tmp_path):
    """Row 3: ``addopts = --junitxml=reports/own.xml`` (the project's own report).

    Breaks with the old additions: a later ``--junitxml`` on the command line replaces the project's, and the
    suite checks that its own report path is in effect. Also guards JUnit names holding XML-unfriendly ids.
    """
    ours = check_row(tmp_path, "compat-own-junitxml", Counter(passed=5, skipped=1))
    assert "test_xml_unfriendly_ids[<tag>]" in names_of(ours["debian-bookworm"])


def test_junit_family_xunit2(tmp_path):
    """Row 4: ``junit_family = "xunit2"`` in the project config.

    Breaks with the old additions: ``-o junit_family=xunit1`` overrides the project's value, which the suite
    checks. Also guards a test class (JUnit classname ``tests.test_more.TestGrouped``).
    """
    ours = check_row(tmp_path, "compat-junit-family", Counter(passed=4, skipped=1))
    assert ("tests.test_more.TestGrouped", "test_in_class") in ours["debian-bullseye"].names


@pytest.mark.parametrize("where", ["addopts", "command-line"])
def test_junitxml_plugin_blocked(tmp_path, where):
    """Row 5: ``-p no:junitxml`` in addopts, and also on the project's command line (``tests.args``).

    Breaks with the old additions in the command-line variant: ``--junitxml`` is an unknown option when the
    junitxml plugin never loaded (a usage error in both cells). The addopts variant guards against regressions
    only: there the plugin is unregistered after its options were added, and pytest accepts (and ignores)
    ``--junitxml``. matrix-run builds its JUnit from its own plugin's records, which works either way.
    """
    args = {"args": ["-p", "no:junitxml"]} if where == "command-line" else {}
    check_row(tmp_path, "compat-no-junitxml", Counter(passed=4, skipped=1), **args)


def test_import_mode_importlib(tmp_path):
    """Row 6: ``addopts = --import-mode=importlib``, two ``test_same.py`` in folders without ``__init__.py``.

    Guards against matrix-run changing the import mode or the rootdir, and the shard file filter for items that
    importlib mode collects (the two same-named files land in different shards).
    """
    ours = check_row(tmp_path, "compat-importlib", Counter(passed=3, skipped=1))
    assert ("tests.beta.test_same", "test_skipped") in ours["debian-bookworm"].names


def test_custom_collection_names(tmp_path):
    """Row 7: ``python_files = check_*.py``, ``python_classes = Check*``, ``python_functions = check_*``.

    Guards the planner: it must find the files by the project's ``python_files`` (none would be found with the
    defaults), and never name ``tests/test_decoy.py`` on a command line (pytest collects a file named there
    whatever python_files says, and the decoy fails).
    """
    ours = check_row(tmp_path, "compat-custom-names", Counter(passed=4, skipped=1))
    names = ours["debian-bookworm"].names
    assert ("tests.check_beta.CheckGroup", "check_in_class") in names
    assert not {n for n in names if "decoy" in n[0] or n[1].startswith("test_")}


def test_filterwarnings_error(tmp_path):
    """Row 8: ``filterwarnings = ["error"]``.

    Guards the plugin and matrix-run's additions against emitting any warning (config-time warnings such as an
    assertion-rewrite or unknown-option warning become errors under this filter; a warning in a test fails it).
    """
    check_row(tmp_path, "compat-filterwarnings", Counter(passed=4, skipped=1))


def test_doctest_modules_and_glob(tmp_path):
    """Row 9: ``--doctest-modules --doctest-glob=*.txt`` on a src-layout package (testpaths src, tests, docs).

    Guards the planner: the package modules and the .txt file hold tests too and must each land in a shard
    (``docs/notes.rst`` does not match the glob and would fail). Also guards a doctest skipped by ``+SKIP``.
    """
    ours = check_row(tmp_path, "compat-doctest", Counter(passed=6, skipped=2), **{"install-project": True})
    names = ours["debian-bullseye"].names
    assert {("docs.usage.txt", "usage.txt"), ("src.dtpkg.mathy", "dtpkg.mathy.double")} <= names, names


def test_conftest_option_in_addopts(tmp_path):
    """Row 10: a ``tests/conftest.py`` that adds ``--flavour`` (``pytest_addoption``), set by ``addopts``.

    Guards the shard command line: whatever files a shard is pointed at, the conftest that defines the option
    must be loaded before addopts is parsed, else pytest stops with "unrecognized arguments".
    """
    check_row(tmp_path, "compat-addoption", Counter(passed=4, skipped=1))


@pytest.mark.parametrize("config_file", ["pytest-ini", "tox-ini", "setup-cfg", "pyproject"])
def test_config_file_variants(tmp_path, config_file):
    """Row 11: the pytest config in pytest.ini, tox.ini ``[pytest]`` (next to a pyproject.toml holding only
    ``[tool.ruff]``), setup.cfg ``[tool:pytest]`` (next to a tox.ini without ``[pytest]``), or a pyproject.toml
    holding only ``[tool.pytest.ini_options]``; with matrix-run's default ``install-project: true``.

    Guards the planner's reading of each config format: ``testpaths = suite`` holds the tests, and
    ``tests/test_decoy.py`` outside it fails if a shard names it. The suite checks ``config.inipath``. Also
    guards the project install: a folder that is no package (no ``[build-system]``, no ``[project]``, no
    setup.py) must run as plain pytest runs it, not fail its cells.
    """
    ours = check_row(
        tmp_path, f"compat-config-{config_file}", Counter(passed=4, skipped=1), **{"install-project": True}
    )
    assert all(c.startswith("suite.") for c, _ in ours["debian-bookworm"].names)


def test_rootdir_above_the_test_paths(tmp_path):
    """Row 12: ``tests.paths: [suite/nested]`` with the config and a conftest at the project root.

    Guards rootdir and node ids (relative to the project root, not to the path), the root conftest's fixture,
    the root config's markers under ``--strict-markers``, and that ``suite/other`` is left out.
    """
    ours = check_row(tmp_path, "compat-rootdir-above", Counter(passed=5, skipped=1), paths=["suite/nested"])
    assert all(c.startswith("suite.nested.") for c, _ in ours["debian-bullseye"].names)


def test_workdir_runs_from_a_subfolder(tmp_path):
    """Row 13: ``tests: {workdir: tests, paths: [unittests]}`` as TorchMetrics runs
    ``cd tests && python -m pytest unittests``; the config is the root pyproject.toml.

    Guards tests.workdir end to end: planning ``unittests`` relative to the workdir, the shard's working
    directory (the suite reads files relative to it and imports ``unittests.helpers``), node ids relative to the
    rootdir (the project root), and that ``tests/integrations`` is left out.
    """
    ours = check_row(tmp_path, "compat-workdir", Counter(passed=3, skipped=1), workdir="tests", paths=["unittests"])
    assert all(c.startswith("tests.unittests.") for c, _ in ours["debian-bookworm"].names)


def test_paths_naming_files_and_node_ids(tmp_path):
    """Row 14: ``tests.paths`` naming files and a node id, two shards.

    Breaks with the old file handling (every tests.paths entry on every shard's command line): tests would run in
    both shards. Each test must run exactly once across the shards (records of the first attempts, and the sum
    of the first attempts' test counts), ``test_c.py::test_two`` and ``test_d.py`` must not run at all.
    """
    paths = ["tests/test_a.py", "tests/test_b.py", "tests/test_c.py::test_one"]
    ours = check_row(tmp_path, "compat-paths-files", Counter(passed=5, skipped=1), paths=paths)
    for cid in CELLS:
        assert names_of(ours[cid]) == {
            "test_a1",
            "test_a_skipped",
            "test_b1",
            "test_b2",
            "test_one[one::1]",
            "test_one[two [2]]",
        }
        res = {c["id"]: c for c in results(tmp_path / "out")["cells"]}[cid]
        assert sum(s["tests"] for s in res["shards"] if s["attempt"] == 1) == res["tests"] == 6
