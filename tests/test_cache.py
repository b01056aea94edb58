"""runner/cache.py: the opt-in result cache. The key changes with every input of a cell's result and only then; only
fully passing cells are kept; a hit comes back as a ``cached`` cell with the same tests."""

from __future__ import annotations

import dataclasses
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from runner import cache, config, images, results
from runner.config import MatrixFile, RetriesConfig, StrategyConfig
from runner.history import History
from runner.matrix import Cell, Resources
from runner.results import Case, CellResult, Status

MF = MatrixFile(
    path=Path("/p/matrices/ci.yaml"),
    name="ci",
    project=Path("/p"),
    axes=(("python", ("3.11", "3.13")),),
    include=(),
    exclude=(),
    tests=config.TestsConfig(paths=("tests",), env=(("MODE", "ci"),)),
)
CELL = Cell(
    id="python-3.11",
    values=(("python", "3.11"),),
    base="python:3.11-slim",
    bootstrap=None,
    install=("numpy==2.2.6",),
    build_args=(),
    command=("python", "-m", "pytest"),
    resources=Resources(),
)
SPEC = images.ImageSpec(base="python:3.11-slim", install=("numpy==2.2.6",), extra=("setuptools>=64", "wheel"))
SOURCE = "3f" * 32
ENV = (("MODE", "ci"), ("HF_HOME", "/cache/hf"))


def key(
    mf: MatrixFile = MF,
    cell: Cell = CELL,
    spec: images.ImageSpec = SPEC,
    source: str = SOURCE,
    env: tuple[tuple[str, str], ...] = ENV,
) -> str:
    return cache.key_for(mf, cell, spec, source, env)


def with_tests(**changes: Any) -> MatrixFile:
    return dataclasses.replace(MF, tests=dataclasses.replace(MF.tests, **changes))


# --- key_for ----------------------------------------------------------------------------------------------------------


def test_key_is_stable_for_equal_inputs() -> None:
    same_mf = dataclasses.replace(MF)
    same_cell = dataclasses.replace(CELL)
    same_spec = images.ImageSpec(base="python:3.11-slim", install=("numpy==2.2.6",), extra=("setuptools>=64", "wheel"))

    assert key() == key()
    assert key(same_mf, same_cell, same_spec, "3f" * 32, (("MODE", "ci"), ("HF_HOME", "/cache/hf"))) == key()
    assert len(key()) == 64
    assert set(key()) <= set("0123456789abcdef")


def test_key_ignores_the_order_of_variables() -> None:
    assert key(env=tuple(reversed(ENV))) == key()


def test_key_ignores_what_cannot_change_a_passing_result() -> None:
    # reruns of flaky tests never make a cell "passed" (flaky cells are not kept); scheduling changes no result
    assert key(dataclasses.replace(MF, retries=RetriesConfig(flaky=5, infra=0))) == key()
    assert key(dataclasses.replace(MF, strategy=StrategyConfig(fail_fast=False, max_parallel=3))) == key()


def test_a_different_install_line_changes_the_image_digest_and_the_key() -> None:
    other = dataclasses.replace(SPEC, install=("numpy==1.26.4",))

    assert other.digest != SPEC.digest
    assert key(spec=other) != key()


@pytest.mark.parametrize(
    "change",
    [
        pytest.param({"spec": dataclasses.replace(SPEC, install=("numpy==2.2.6", "scipy"))}, id="install-added"),
        pytest.param({"spec": dataclasses.replace(SPEC, base="python:3.11-bookworm")}, id="image-base"),
        pytest.param({"spec": dataclasses.replace(SPEC, pip_args=("--pre",))}, id="pip-args"),
        pytest.param({"spec": dataclasses.replace(SPEC, ca_bundle=b"-----BEGIN CERT")}, id="ca-bundle"),
        pytest.param({"source": "40" * 32}, id="source-digest"),
        pytest.param({"cell": dataclasses.replace(CELL, command=("python", "-m", "pytest", "-x"))}, id="command-args"),
        pytest.param({"cell": dataclasses.replace(CELL, command=("python3", "-m", "pytest"))}, id="command"),
        pytest.param({"cell": dataclasses.replace(CELL, id="python-3.13")}, id="cell"),
        pytest.param({"mf": with_tests(paths=("tests/unit",))}, id="paths"),
        pytest.param({"mf": with_tests(paths=("tests", "integration"))}, id="paths-added"),
        pytest.param({"mf": with_tests(network="none")}, id="network"),
        pytest.param({"mf": with_tests(install_project=False)}, id="install-project"),
        pytest.param({"env": (("MODE", "nightly"), ("HF_HOME", "/cache/hf"))}, id="env-value"),
        pytest.param({"env": (("MODE", "ci"),)}, id="env-removed"),
        pytest.param({"env": (*ENV, ("EXTRA", "1"))}, id="env-added"),
        pytest.param({"env": (("MODE", "ci"), ("HF_HOMEX", "/cache/hf"))}, id="env-name"),
    ],
)
def test_any_changed_input_changes_the_key(change: dict[str, object]) -> None:
    assert key(**change) != key()  # type: ignore[arg-type]


def test_a_new_recipe_version_changes_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    before = key()
    monkeypatch.setattr(images, "RECIPE_VERSION", images.RECIPE_VERSION + "-next")

    assert key() != before


def test_giving_the_cell_a_gpu_changes_the_key() -> None:
    assert key(cell=dataclasses.replace(CELL, resources=Resources(gpus=1.0))) != key()


# --- remember / lookup ------------------------------------------------------------------------------------------------


def case(nodeid: str, status: Status, seconds: float = 0.25) -> Case:
    classname, name = results.junit_names(nodeid)
    el = ET.Element("testcase", {"classname": classname, "name": name, "file": nodeid.split("::", maxsplit=1)[0]})
    el.set("time", f"{seconds:.3f}")
    if status is Status.FAILED:
        ET.SubElement(el, "failure", {"message": "assert 1 == 2"}).text = "E   assert 1 == 2"
    elif status is Status.ERROR:
        ET.SubElement(el, "error", {"message": "fixture broke"})
    elif status is Status.SKIPPED:
        ET.SubElement(el, "skipped", {"type": "pytest.skip", "message": "no gpu"})
    return Case(classname, name, status, seconds, el, nodeid)


def cell_result(attempts_by_test: dict[str, list[Status]]) -> CellResult:
    """A cell from each test's attempts in order (one status: no rerun), with the status results.py gives it."""
    tests = {}
    for nodeid, statuses in attempts_by_test.items():
        first, *reruns = [case(nodeid, s) for s in statuses]
        tests[first.key] = results.TestHistory(first, reruns)
    status, reason = results.cell_status(tests, [])
    return CellResult(CELL.id, CELL.axes, status, reason, tests, [], 42.0, image="matrix-run/env:abc")


PASSING = {
    "tests/test_a.py::test_one": [Status.PASSED],
    "tests/test_a.py::TestK::test_two[x-1]": [Status.PASSED],
    "tests/test_b.py::test_gpu": [Status.SKIPPED],
}


@pytest.fixture
def store(tmp_path: Path) -> Iterator[History]:
    h = History(tmp_path / "history.sqlite")
    yield h
    h.close()


def test_a_passing_cell_comes_back_cached_with_the_same_tests(store: History) -> None:
    passed = cell_result(PASSING)
    assert passed.status is Status.PASSED

    cache.remember(store, "ci@p", key(), passed)
    hit = cache.lookup(store, key(), CELL)

    assert hit is not None
    assert hit.status is Status.CACHED
    assert (hit.cell_id, hit.axes) == (CELL.id, {"python": "3.11"})
    assert hit.reason
    assert set(hit.tests) == set(passed.tests)
    assert (
        hit.counts()
        == passed.counts()
        == {
            "tests": 3,
            "passed": 2,
            "failures": 0,
            "errors": 0,
            "skipped": 1,
            "flaky": 0,
            "timeouts": 0,
        }
    )
    assert {k: h.status for k, h in hit.tests.items()} == {k: h.status for k, h in passed.tests.items()}


def test_a_lookup_under_another_key_misses(store: History) -> None:
    cache.remember(store, "ci@p", key(), cell_result(PASSING))

    assert cache.lookup(store, key(source="40" * 32), CELL) is None
    assert cache.lookup(store, key(env=()), CELL) is None


def test_nothing_remembered_nothing_found(store: History) -> None:
    assert cache.lookup(store, key(), CELL) is None


@pytest.mark.parametrize(
    ("attempts", "status"),
    [
        pytest.param(
            {**PASSING, "tests/test_c.py::test_flaky": [Status.FAILED, Status.PASSED]}, Status.FLAKY, id="flaky"
        ),
        pytest.param({**PASSING, "tests/test_c.py::test_bad": [Status.FAILED]}, Status.FAILED, id="failed"),
        pytest.param({**PASSING, "tests/test_c.py::test_fixture": [Status.ERROR]}, Status.ERROR, id="error"),
    ],
)
def test_a_cell_that_did_not_fully_pass_is_not_kept(
    store: History, attempts: dict[str, list[Status]], status: Status
) -> None:
    result = cell_result(attempts)
    assert result.status is status

    cache.remember(store, "ci@p", key(), result)

    assert store.cached(key()) is None
    assert cache.lookup(store, key(), CELL) is None


def test_a_passed_cell_without_tests_is_not_kept(store: History) -> None:
    empty = CellResult(CELL.id, CELL.axes, Status.PASSED, "", {}, [], 1.0)

    cache.remember(store, "ci@p", key(), empty)

    assert store.cached(key()) is None


@pytest.mark.parametrize("status", [Status.NO_TESTS, Status.TIMEOUT, Status.INFRA, Status.CANCELLED, Status.CACHED])
def test_only_passed_is_kept_whatever_the_tests(store: History, status: Status) -> None:
    result = dataclasses.replace(cell_result(PASSING), status=status)

    cache.remember(store, "ci@p", key(), result)

    assert store.cached(key()) is None
