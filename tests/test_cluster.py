"""The Ray boundary: what crosses it pickles, and shards land where their resources say."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys

import pytest
from ray import cloudpickle

from runner import cluster
from runner.execution import ShardOutcome, ShardRequest
from runner.images import ImageSpec
from runner.matrix import Resources
from tests.conftest import ROOT, TwoNodeRay, results, write_matrix


def _request() -> ShardRequest:
    return ShardRequest(
        run_id="r",
        cell_id="python-3.11",
        shard="shard-1of2",
        attempt=1,
        image=ImageSpec(base="python:3.11-slim", install=("numpy==2.2.6",), ca_bundle=b"---CERT---"),
        command=("python", "-m", "pytest"),
        files=("tests/test_a.py",),
        only=("tests/test_a.py::test_x[a b]",),
        resources=Resources(cpus=1.0, memory=2**30, gpus=1.0),
        env=(("MY_TOKEN", "secret"),),
    )


def test_the_task_function_and_its_data_pickle():
    # Ray ships the task function by cloudpickle and its arguments and result by pickle
    fn = cloudpickle.loads(cloudpickle.dumps(cluster.execute_shard))
    assert fn.__name__ == "execute_shard"
    req = _request()
    assert pickle.loads(pickle.dumps(req)) == req
    outcome = ShardOutcome("c", "shard-1of2", 1, 0, report=b'{"event": "start"}\n', gpu_ids=("0",))
    assert pickle.loads(pickle.dumps(outcome)) == outcome


def test_what_crosses_the_boundary_carries_bytes_not_host_paths():
    req = _request()
    for value in vars(req).values():
        assert not (isinstance(value, str) and value.startswith("/")), value
    assert req.image.dockerfile_context is None  # host paths only for the coordinator's own Dockerfile builds


def test_capacity_keeps_cpu_shards_off_gpu_nodes_when_cpu_nodes_exist():
    cap = cluster.Capacity(cpus=3, gpus=1, cpus_without_gpus=2)
    assert cap.for_cpu_shards() == 2
    assert cluster.Capacity(cpus=4, gpus=1, cpus_without_gpus=0).for_cpu_shards() == 4


GPU_PROJECT_TEST = """
import os


def test_gpu_ids_reach_gpu_shards_only():
    ids = os.environ.get("MATRIX_RUN_GPU_IDS")
    if os.environ["HARDWARE"] == "gpu":
        assert ids == "0" and os.environ["NVIDIA_VISIBLE_DEVICES"] == "0"
    else:
        assert ids is None and os.environ["NVIDIA_VISIBLE_DEVICES"] == "void"  # no GPU, whatever the runtime
"""


def _node_ids(address: str) -> dict[str, dict[str, float]]:
    code = (
        "import json, ray; ray.init(address=%r); "
        "print(json.dumps({n['NodeID']: n['Resources'] for n in ray.nodes() if n['Alive']}))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code % address],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "RAY_AUTH_MODE": "disabled"},
        timeout=120,
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.docker
@pytest.mark.ray
@pytest.mark.slow
def test_gpu_cells_go_to_the_gpu_node_and_cpu_cells_keep_off_it(tmp_path, docker_client):
    """A head with 2 CPUs and no GPU, a worker advertising a GPU (`ray start --num-gpus=1`): the GPU cell's shards
    run on the worker with Ray's GPU id, the CPU cell's shards on the head.

    Unverified here (no physical GPU on this machine): that Docker's device request really exposes the device.
    The nodes run with MATRIX_RUN_GPU_MODE=nvidia-env, so the id travels as NVIDIA_VISIBLE_DEVICES (what
    nvidia-container-runtime reads) instead of a device request this engine could not satisfy.
    """
    project = tmp_path / "gpu-project"
    (project / "tests").mkdir(parents=True)
    for i in range(3):
        (project / "tests" / f"test_gpu_{i}.py").write_text(GPU_PROJECT_TEST)
    matrix = write_matrix(
        tmp_path,
        project,
        matrix={
            "debian": ["bookworm"],
            "hardware": ["cpu", "gpu"],
            "include": [{"hardware": "cpu", "gpus": 0}, {"hardware": "gpu", "gpus": 1}],
        },
        tests={"shards": 3, "timeout": 300, "install-project": False, "env": {"HARDWARE": "{hardware}"}},
        resources={"cpus": 1, "gpus": "{gpus}"},
    )
    env = {"RAY_AUTH_MODE": "disabled", "MATRIX_RUN_GPU_MODE": "nvidia-env"}
    os.environ.update(env)  # the nodes inherit it from `ray start`
    ray_cluster = TwoNodeRay(head=("--num-cpus=2", "--num-gpus=0"), worker=("--num-cpus=1", "--num-gpus=1"))
    try:
        ray_cluster.start()
        nodes = _node_ids(ray_cluster.address)
        gpu_node = next(n for n, res in nodes.items() if res.get("GPU"))
        out = tmp_path / "out"
        argv = [sys.executable, "-m", "runner.cli", "run", str(matrix), "--out", str(out), "--plain"]
        proc = subprocess.run(
            [*argv, "--address", ray_cluster.address],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=600,
            check=False,
        )
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
        cells = {c["axes"]["hardware"]: c for c in results(out)["cells"]}
        for shard in cells["gpu"]["shards"]:
            assert shard["node_id"] == gpu_node
            assert shard["gpu_ids"] == ["0"]
        for shard in cells["cpu"]["shards"]:
            assert shard["node_id"] != gpu_node
            assert shard["gpu_ids"] == []
        assert cells["gpu"]["tests"] == cells["cpu"]["tests"] == 3
    finally:
        for key in env:
            os.environ.pop(key, None)
        ray_cluster.stop()
