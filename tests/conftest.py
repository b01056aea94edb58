"""Shared fixtures. Tests marked `docker` need the engine and the bootstrapped base images (scripts/setup.sh
--base-images); they fail, never skip, when those are missing: a missing engine is a broken test machine."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
PROJECTS = ROOT / "tests" / "projects"
BASE = "matrix-run/debian:bookworm"


@pytest.fixture(scope="session")
def docker_client():
    from runner import engine

    client = engine.connect()
    missing = [s for s in ("bookworm",) if not client.images.list(name=f"matrix-run/debian:{s}")]
    assert not missing, f"base images missing: {missing}; run scripts/setup.sh --base-images"
    return client


def write_matrix(tmp_path: Path, project: Path, **sections: object) -> Path:
    """A matrix file in tmp_path for `project`; sections override the defaults (one bookworm cell)."""
    data: dict[str, object] = {
        "name": "t",
        "project": str(project),
        "matrix": {"debian": ["bookworm"]},
        "image": {"base": "matrix-run/debian:{debian}"},
        "tests": {"shards": 2, "timeout": 300},
        "strategy": {"fail-fast": False},
    }
    data.update(sections)
    path = tmp_path / "matrix.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def run_cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "runner.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        check=False,
    )


def results(out: Path) -> dict:  # type: ignore[type-arg]
    return json.loads((out / "results.json").read_text())


def containers_of(client, run_id: str) -> list:  # type: ignore[no-untyped-def,type-arg]
    return client.containers.list(all=True, filters={"label": f"matrix-run.run={run_id}"})
