"""Nodes with Docker engines of their own: images reach every node before its shards do.

A head and a worker share this machine's engine; a second worker has an engine of its own (runner/node_engine.py:
its own dockerd, data root and bridge), which starts without any image, as a new machine would. Real Docker
engines and a real three-node Ray throughout.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from runner import node_engine
from tests.conftest import ROOT, TwoNodeRay, results, write_matrix
from tests.test_cluster import _node_ids

pytestmark = [pytest.mark.docker, pytest.mark.ray, pytest.mark.slow]

TEST_FILE = """
import time

import pytest


@pytest.mark.parametrize("i", range(3))
def test_sleep(i):
    time.sleep(0.4)
    assert i < 3
"""


@pytest.fixture(scope="module")
def own_engine() -> Iterator[node_engine.NodeEngine]:
    """A node engine of its own (one for the module: the tests empty it where they need it empty)."""
    if shutil.which("dockerd") is None or os.geteuid() != 0:
        pytest.skip("needs root and dockerd for a second engine")
    engine = node_engine.start("nodeb", 1)
    try:
        yield engine
    finally:
        node_engine.stop(engine)


@pytest.fixture(scope="module")
def nodes(own_engine: node_engine.NodeEngine) -> Iterator[TwoNodeRay]:
    """head and worker on this machine's engine (label 'main'), worker2 on ``own_engine`` (label 'nodeb'); one
    cluster for the module (starting three nodes takes longer than most of these tests' runs)."""
    main = '--resources={"runs-on:main": 1000}'
    ray_nodes = TwoNodeRay(
        head=("--num-cpus=1", main),
        worker=("--num-cpus=1", main),
        more_workers=((("--num-cpus=1", '--resources={"runs-on:nodeb": 1000}'), own_engine.env()),),
    )
    try:
        ray_nodes.start()
        yield ray_nodes
    finally:
        ray_nodes.stop()


@pytest.fixture
def empty_engine(own_engine: node_engine.NodeEngine) -> node_engine.NodeEngine:
    """``own_engine`` without any image or container: no base image, no cell image, as a new machine."""
    _empty(own_engine)
    return own_engine


def _empty(engine: node_engine.NodeEngine) -> None:
    client = docker.DockerClient(base_url=engine.host)
    for c in client.containers.list(all=True):
        c.remove(force=True)
    # A child image must go before its parent (the engine refuses a parent with children even when forced), and
    # the list comes in no such order: remove what can go until nothing is left.
    images = client.images.list(all=True)
    while images:
        for im in images:
            try:
                client.images.remove(im.id, force=True)
            except docker.errors.NotFound:
                pass
            except docker.errors.APIError as e:
                if e.status_code != 409:
                    raise
        left = client.images.list(all=True)
        assert len(left) < len(images), f"images the engine will not remove: {[im.id for im in left]}"
        images = left
    client.close()


def _project(tmp_path: Path, files: int) -> Path:
    project = tmp_path / "proj"
    (project / "tests").mkdir(parents=True)
    for i in range(files):
        (project / "tests" / f"test_part_{i}.py").write_text(TEST_FILE)
    return project


def _run(matrix: Path, out: Path, address: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "runner.cli", "run", str(matrix), "--out", str(out), "--plain", "--address", address]
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    return subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, timeout=timeout, env=env, check=False)


def _run_containers(host: str, run_id: str) -> list[str]:
    client = docker.DockerClient(base_url=host)
    try:
        return [c["Id"] for c in client.api.containers(all=True, filters={"label": f"matrix-run.run={run_id}"})]
    finally:
        client.close()


def test_with_a_registry_the_coordinator_builds_once_and_the_other_node_pulls(
    tmp_path: Path, nodes: TwoNodeRay, empty_engine: node_engine.NodeEngine
) -> None:
    registry, port, store = _registry()
    project = _project(tmp_path, 2)
    matrix = write_matrix(
        tmp_path,
        project,
        matrix={"pool": ["nodeb"]},
        image={"base": "matrix-run/debian:bookworm", "registry": f"127.0.0.1:{port}/mr-test"},
        tests={"shards": 2, "timeout": 300, "install-project": False},
        **{"runs-on": "{pool}"},
    )
    try:
        out = tmp_path / "out"
        proc = _run(matrix, out, nodes.address)
        assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
        data = results(out)
        assert data["cells"][0]["passed"] == 6
        # the cell may run on nodeb only: the coordinator built and pushed its image, nodeb pulled it
        assert [r["how"] for r in data["image_nodes"]] == ["pulled"], data["image_nodes"]
        # the node built nothing: it holds no base image, only what it pulled and the thin source layer over it
        client = docker.DockerClient(base_url=empty_engine.host)
        tags = {t for im in client.images.list() for t in im.tags}
        client.close()
        assert not any(t.startswith("matrix-run/debian") for t in tags), tags
        assert any(t.startswith(f"127.0.0.1:{port}/mr-test/env:") for t in tags), tags
    finally:
        registry.send_signal(signal.SIGTERM)
        registry.wait(timeout=30)
        shutil.rmtree(store, ignore_errors=True)


def test_every_node_gets_the_image_before_its_shards_and_no_shard_builds(
    tmp_path: Path, nodes: TwoNodeRay, empty_engine: node_engine.NodeEngine
) -> None:
    project = _project(tmp_path, 4)
    matrix = write_matrix(
        tmp_path,
        project,
        matrix={"pool": ["main", "nodeb"], "debian": ["bookworm"]},
        tests={"shards": 4, "timeout": 300, "install-project": False},
        **{"runs-on": "{pool}"},
    )
    ids = _node_ids(nodes.address)
    node_b = next(n for n, res in ids.items() if "runs-on:nodeb" in res)
    out = tmp_path / "out"
    proc = _run(matrix, out, nodes.address)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    data = results(out)
    cells = {c["axes"]["pool"]: c for c in data["cells"]}
    for cell in cells.values():
        assert (cell["status"], cell["tests"], cell["passed"]) == ("passed", 12, 12)  # as pytest: 4 files x 3
    shards = [s for c in cells.values() for s in c["shards"]]
    assert {s["node_id"] for s in shards} == set(ids)  # every node ran shards
    assert {s["node_id"] for s in cells["nodeb"]["shards"]} == {node_b}
    # no shard's time includes an image build: each found its cell's image on its node
    assert not [s for s in shards if s["image_built"]], shards
    # the node with an engine of its own got the base shipped and the cell image built there, before its shards
    made = [r for r in data["image_nodes"] if r["node_id"] == node_b]
    assert [(r["cell"], r["how"]) for r in made] == [(cells["nodeb"]["id"], "built (base loaded)")], made
    assert "image nodeb" in proc.stdout or "making it on node" in proc.stdout
    # nothing of the run is left on either engine
    for host in ("unix:///var/run/docker.sock", empty_engine.host):
        assert _run_containers(host, data["run_id"]) == []
    # a second run finds the images on every node: nothing is made anywhere
    out2 = tmp_path / "out2"
    proc = _run(matrix, out2, nodes.address)
    assert proc.returncode == 0, proc.stdout[-4000:]
    again = results(out2)
    assert {r["how"] for r in again["image_nodes"]} == {"present"}, again["image_nodes"]
    assert all(r["node"] for r in again["image_nodes"]), again["image_nodes"]  # each named by its host


def _registry() -> tuple[subprocess.Popen[bytes], int, Path]:
    binary = shutil.which("docker-registry")
    if binary is None:
        pytest.skip("Debian's docker-registry package is not installed (scripts/setup.sh installs it)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    store = Path(tempfile.mkdtemp(prefix="mr-registry-"))
    config = store / "config.yml"
    config.write_text(
        f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {store / 'data'}\nhttp:\n  addr: 127.0.0.1:{port}\n"
    )
    proc = subprocess.Popen([binary, "serve", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc, port, store
        time.sleep(0.2)
    proc.kill()
    raise AssertionError("the registry did not start")


SLOW_FILE = """
import os
import time


def test_slow():
    time.sleep(float(os.environ["SLOW"]))
"""


def test_a_node_whose_raylet_died_is_clean_by_the_next_run(
    tmp_path: Path, nodes: TwoNodeRay, own_engine: node_engine.NodeEngine
) -> None:
    """worker2's raylet is killed while it runs a shard (its host, and its engine, stay up): the shard is run again
    elsewhere and the run passes; the container it left on worker2's engine is gone after the next run there. The
    module's last test: it restarts worker2."""
    project = tmp_path / "proj"
    (project / "tests").mkdir(parents=True)
    for i in range(3):
        (project / "tests" / f"test_slow_{i}.py").write_text(SLOW_FILE)

    def matrix(slow: float) -> Path:
        tests = {"shards": 3, "timeout": 300, "install-project": False, "env": {"SLOW": str(slow)}}
        return write_matrix(tmp_path, project, tests=tests)  # no runs-on: any of the three nodes

    # a first, quick run builds the cell's image; worker2's engine gets a copy of it (its own build might not end
    # before that run does), so that the next run has a shard on each of the three nodes at once
    warm = _run(matrix(0), tmp_path / "warm", nodes.address)
    assert warm.returncode == 0, warm.stdout[-4000:]
    main_engine = docker.from_env()
    env_tag = results(tmp_path / "warm")["cells"][0]["image"]
    layers = main_engine.images.list(filters={"label": [f"matrix-run.env={env_tag}"]})
    newest = max(layers, key=lambda im: str(im.attrs.get("Created", "")))
    node_engine.copy_image(newest.tags[0], own_engine.host)
    main_engine.close()
    out = tmp_path / "out"
    argv = [sys.executable, "-m", "runner.cli", "run", str(matrix(12)), "--out", str(out), "--plain"]
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    proc = subprocess.Popen(
        [*argv, "--address", nodes.address], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=ROOT, env=env
    )
    client_b = docker.DockerClient(base_url=own_engine.host)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if client_b.api.containers(filters={"label": "matrix-run.role=shard"}):
            break
        time.sleep(0.5)
    running = client_b.api.containers(filters={"label": "matrix-run.role=shard"})
    assert running, "no shard ever ran on worker2"
    nodes.kill_raylet("worker2")
    stdout, _ = proc.communicate(timeout=400)
    assert proc.returncode == 0, stdout.decode()[-4000:]
    data = results(out)
    assert data["cells"][0]["passed"] == 3
    run_id = data["run_id"]
    left = client_b.api.containers(all=True, filters={"label": f"matrix-run.run={run_id}"})
    assert left, "the killed node's container was removed without its raylet: this test no longer tests the sweep"
    nodes.restart("worker2")
    out2 = tmp_path / "out2"
    again = subprocess.run(
        [*argv[:-3], "--out", str(out2), "--plain", "--address", nodes.address],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=400,
        check=False,
    )
    assert again.returncode == 0, again.stdout[-4000:]
    assert client_b.api.containers(all=True, filters={"label": f"matrix-run.run={run_id}"}) == []
    client_b.close()
