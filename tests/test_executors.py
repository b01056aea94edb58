"""The executors end to end: placement by node label on a real two-node Ray, the host executor beside the Docker
one, cells no node can serve, and a hung test under the host executor (no process left behind)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.conftest import PROJECTS, TwoNodeRay, containers_of, results, run_cli, write_matrix

pytestmark = [pytest.mark.docker, pytest.mark.ray, pytest.mark.slow]

TINY = PROJECTS / "tiny"
HOSTEXEC = PROJECTS / "hostexec"
PYTHON = f"python{sys.version_info.major}.{sys.version_info.minor}"


def run_processes(run_id: str) -> list[int]:
    """Processes of this machine that belong to the run (its shards, and anything they started)."""
    found = []
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if proc.environ().get("MATRIX_RUN_ID") == run_id:
                found.append(proc.pid)
    return found


def direct_counts(project: Path, tmp: Path) -> dict[str, int]:
    """What a plain pytest of the project reports in a virtual environment of its own (made from this machine's
    interpreter, pytest and the project installed), with the variables its tests expect of a shard."""
    venv = tmp / "direct-venv"
    subprocess.run([PYTHON, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    copy = tmp / "direct-tree"  # pip and pytest write into the tree they run in: never the project's own
    shutil.copytree(project, copy)
    for argv in ([*pip, "pytest", "setuptools>=64", "wheel"], [*pip, "--no-build-isolation", "--no-deps", str(copy)]):
        done = subprocess.run(argv, timeout=600, capture_output=True, text=True, check=False)
        assert done.returncode == 0, done.stdout + done.stderr
    junit = tmp / "direct-junit.xml"
    env = {"PATH": os.environ["PATH"], "MATRIX_RUN": "1", "MATRIX_RUN_ATTEMPT": "1", "MATRIX_RUN_CELL": "direct"}
    env["MATRIX_RUN_SHARD"] = "shard-1of1"
    subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={junit}", "tests"],
        cwd=copy,
        env=env,
        capture_output=True,
        check=False,
        timeout=120,
    )
    from junitparser import JUnitXml

    cases = [case for suite in JUnitXml.fromfile(str(junit)) for case in suite]
    skipped = sum(1 for c in cases if any(r._tag == "skipped" for r in c.result))
    failed = sum(1 for c in cases if any(r._tag in ("failure", "error") for r in c.result))
    return {"tests": len(cases), "skipped": skipped, "failures": failed}


@pytest.fixture(scope="module")
def labelled_cluster() -> Iterator[TwoNodeRay]:
    """A head node labelled linux and a worker labelled hostpy, as `ray start --resources` labels nodes."""
    cluster = TwoNodeRay(
        head=("--num-cpus=1", "--resources=" + json.dumps({"runs-on:linux": 1000})),
        worker=("--num-cpus=1", "--resources=" + json.dumps({"runs-on:hostpy": 1000})),
    )
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


def three_rows(tmp_path: Path) -> Path:
    return write_matrix(
        tmp_path,
        TINY,
        matrix={
            "os": ["linux", "hostpy", "macos-14"],
            "include": [
                {"os": "hostpy", "executor": "host"},
                {"os": "macos-14", "executor": "host"},
            ],
        },
        image={"base": "matrix-run/debian:bookworm", "python": PYTHON},
        tests={"shards": 1, "timeout": 300},
        **{"runs-on": "{os}"},
    )


def test_labels_place_cells_the_host_executor_runs_one_and_no_capacity_is_up_front(
    tmp_path: Path, docker_client, labelled_cluster: TwoNodeRay
) -> None:
    matrix = three_rows(tmp_path)
    out = tmp_path / "out"
    env = {"RAY_AUTH_MODE": "disabled", "MATRIX_RUN_SECRET_ON_NODE": "not for the tests"}
    args = ["run", str(matrix), "--out", str(out), "--plain", "--address", labelled_cluster.address]
    proc = run_cli(*args, "--history", str(tmp_path / "h.sqlite"), env=env)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    res = results(out)
    cells = {c["id"]: c for c in res["cells"]}
    linux, hostpy, macos = (cells[i] for i in ("os-linux", "os-hostpy_executor-host", "os-macos-14_executor-host"))
    direct = direct_counts(TINY, tmp_path)
    for cell in (linux, hostpy):
        assert cell["status"] == "passed", cell
        assert (cell["tests"], cell["skipped"], cell["failures"]) == (
            direct["tests"],
            direct["skipped"],
            direct["failures"],
        )
    assert macos["status"] == "no_capacity"
    assert "no node has the label 'macos-14'" in macos["reason"]
    assert not macos["attempts"]
    assert res["exit_code"] == 3
    assert containers_of(docker_client, res["run_id"]) == []
    assert run_processes(res["run_id"]) == []

    # the same matrix with --skip-unavailable: the cell is still listed, and the run is green
    again = run_cli(*args, "--out", str(tmp_path / "again"), "--skip-unavailable", env=env)
    assert again.returncode == 0, again.stdout + again.stderr
    assert {c["id"]: c["status"] for c in results(tmp_path / "again")["cells"]}["os-macos-14_executor-host"] == (
        "no_capacity"
    )


def test_dry_run_says_where_each_cell_can_run(tmp_path: Path, labelled_cluster: TwoNodeRay) -> None:
    matrix = three_rows(tmp_path)
    proc = run_cli(
        "run", str(matrix), "--dry-run", "--address", labelled_cluster.address, env={"RAY_AUTH_MODE": "disabled"}
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = {
        line.split(" (")[0].strip(): line for line in proc.stdout.splitlines() if " (docker" in line or " (host" in line
    }
    assert "no_capacity" in lines["os-macos-14_executor-host"]
    assert "no_capacity" not in lines["os-linux"]
    assert "no_capacity" not in lines["os-hostpy_executor-host"]
    listed = json.loads(run_cli("list", str(matrix), "--json").stdout)
    assert [(c["runs_on"], c["executor"]) for c in listed] == [
        ("linux", "docker"),
        ("hostpy", "host"),
        ("macos-14", "host"),
    ]


def test_a_hung_test_under_the_host_executor_times_out_and_leaves_no_process(tmp_path: Path) -> None:
    matrix = write_matrix(
        tmp_path,
        HOSTEXEC,
        matrix={"python": [f"{sys.version_info.major}.{sys.version_info.minor}"]},
        image={"base": "python:{python}-slim"},  # not used by a host cell, but rendered like any cell's
        executor="host",
        tests={"shards": 1, "timeout": 20, "env": {"HOSTEXEC_HANG": "1"}},
    )
    out = tmp_path / "out"
    started = time.monotonic()
    proc = run_cli("run", str(matrix), "--out", str(out), "--plain", "--history", str(tmp_path / "h.sqlite"))
    assert time.monotonic() - started < 150, "the hung test was not cut at tests.timeout"
    assert proc.returncode == 1, proc.stdout + proc.stderr
    res = results(out)
    (cell,) = res["cells"]
    assert cell["status"] == "timeout"
    assert cell["failed_tests"] == ["tests.test_hang::test_hangs_with_a_detached_child"]
    assert cell["passed"] == 5  # its neighbours before the hang, and the rerun of the one after it
    assert run_processes(res["run_id"]) == [], "a process of the timed-out shard is still running"
    assert not (HOSTEXEC / "written-by-a-test.txt").exists()  # the project tree is never where tests run


def test_a_missing_interpreter_is_an_error_naming_the_node_and_the_interpreter(tmp_path: Path) -> None:
    matrix = write_matrix(
        tmp_path,
        HOSTEXEC,
        matrix={"python": ["2.5"]},
        image={"base": "python:{python}-slim"},
        executor="host",
        tests={"shards": 1, "timeout": 60},
    )
    out = tmp_path / "out"
    proc = run_cli("run", str(matrix), "--out", str(out), "--plain", "--history", str(tmp_path / "h.sqlite"))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    (cell,) = results(out)["cells"]
    assert cell["status"] == "error"
    assert f"node {os.uname().nodename} has no interpreter 'python2.5'" in cell["reason"]
