"""The Ray boundary: what crosses it pickles, and shards land where their resources say."""

from __future__ import annotations

import pickle

from ray import cloudpickle

from runner import cluster
from runner.container import ShardOutcome, ShardRequest
from runner.images import ImageSpec
from runner.matrix import Resources


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
    outcome = ShardOutcome("c", "shard-1of2", 1, 0, junit=b"<testsuites/>", gpu_ids=("0",))
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
