"""The opt-in result cache (``--cache``), Bazel-style: a cell whose inputs are unchanged since a run in which it
fully passed is reported as ``cached`` without running.

The inputs are everything that can change a cell's result: the cell image's content hash (base, Dockerfile,
install lines, pip options, CA bundle, wheelhouse), the hash of the project's source snapshot, the test command,
the paths pytest is pointed at, whether the project is installed, the variables passed into the containers, the
network mode, and matrix-run's own recipe version. Any change to any of them runs the cell again.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

from runner import images, junit
from runner.config import MatrixFile
from runner.history import History, cache_key
from runner.matrix import Cell
from runner.results import CellResult, Status, TestHistory, parse_junit


def key_for(
    mf: MatrixFile, cell: Cell, spec: images.ImageSpec, source_digest: str, env: tuple[tuple[str, str], ...]
) -> str:
    return cache_key(
        {
            "cell": cell.id,
            "image": spec.digest,
            "source": source_digest,
            "command": list(cell.command),
            "paths": list(mf.tests.paths),
            "install_project": mf.tests.install_project,
            "env": sorted({**dict(cell.env), **dict(env)}.items()),
            "network": mf.tests.network,
            "resources": [
                cell.resources.cpus,
                cell.resources.memory,
                cell.resources.gpus,
                cell.resources.gpu_type,
                cell.resources.shm,
                cell.resources.ipc,
            ],
            "recipe": f"{images.RECIPE_VERSION}/{images.SOURCE_RECIPE}",
            "coverage": [mf.coverage.enabled, list(mf.coverage.source), mf.coverage.branch],
            "executor": cell.executor,
        }
    )


def lookup(history: History, key: str, cell: Cell) -> CellResult | None:
    """The stored result of a fully passing earlier run with the same inputs, as a ``cached`` cell."""
    suite = history.cached(key)
    if suite is None:
        return None
    cases = parse_junit(suite)
    return CellResult(
        cell_id=cell.id,
        axes=cell.axes,
        status=Status.CACHED,
        reason="inputs unchanged since a fully passing run",
        tests={c.key: TestHistory(c) for c in cases},
        attempts=[],
        duration=0.0,
    )


def remember(history: History, scope: str, key: str, result: CellResult) -> None:
    """Keep a fully passing cell (flaky does not count) for later ``--cache`` runs."""
    if result.status is Status.PASSED and result.tests:
        history.store(key, scope, result.cell_id, ET.tostring(junit.suite_element(result)))


def split(
    history: History,
    mf: MatrixFile,
    cells: list[Cell],
    specs: dict[str, images.ImageSpec],
    source_digest: str,
    env: tuple[tuple[str, str], ...],
    use: bool,
) -> tuple[dict[str, str], dict[str, CellResult]]:
    """The pipeline's cache step: every cell's key, and (``use``: --cache) the cells a passing run already served."""
    keys = {c.id: key_for(mf, c, specs[c.id], source_digest, env) for c in cells}
    hits = {c.id: lookup(history, keys[c.id], c) for c in cells} if use else {}
    return keys, {cid: hit for cid, hit in hits.items() if hit is not None}


def remember_all(history: History, scope: str, keys: dict[str, str], cells: list[CellResult]) -> None:
    for cell in cells:
        remember(history, scope, keys[cell.cell_id], cell)
