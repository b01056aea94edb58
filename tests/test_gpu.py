"""GPU shards: exactly the GPUs Ray assigned, numbered as the shard sees them; shm and ipc; GPU count and type per
cell; Docker asked before a node's first GPU shard whether it can pass GPUs; scripts/gpu-check.sh without a GPU.

This machine has no GPU. The integration test simulates a GPU node as close to the real interface as one can without
one: a private Docker 20.10 engine whose PATH holds a stand-in ``nvidia-container-runtime-hook`` (a shell script
that reads the OCI state on its stdin and exits 0; it does nothing real). Finding that binary is what makes dockerd
register its NVIDIA device driver (moby daemon/nvidia_linux.go), so a device request with capabilities [["gpu"]]
is taken by the real driver code: the request's ids reach the container's inspect data, dockerd adds
NVIDIA_VISIBLE_DEVICES=<ids> to the container's environment and the hook as an OCI prestart hook, and runc runs
it. A Ray node started with ``--num-gpus=2`` and DOCKER_HOST on that engine plays the GPU node.

What stays unverified without a physical GPU: that the real hook (nvidia-container-cli) injects the device nodes,
the driver's libraries and nvidia-smi into the container; that CUDA in a container sees exactly those devices as
cuda:0..n-1 (and with CUDA_DEVICE_ORDER=PCI_BUS_ID in the order MATRIX_RUN_GPU_IDS lists them); that Ray on a real
GPU node advertises ``accelerator_type:<its GPU>`` by itself (here the nodes are given it with --resources); and
the torch tests of scripts/gpu-check.sh on a GPU (here only their no-GPU path runs).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from runner import cluster, config, matrix, node_engine
from runner.errors import ConfigError
from runner.execution import ShardOutcome, ShardRequest
from runner.executors import docker as docker_executor
from runner.executors import host as host_executor
from runner.images import ImageSpec
from runner.matrix import Resources
from runner.results import Status
from runner.scheduler import Node, eligible, may_take, why_unservable
from tests.conftest import BASE, ROOT, TwoNodeRay, results, run_cli, write_matrix
from tests.test_cluster import _node_ids
from tests.test_scheduler import FakeTransport, cell, drive, make

MiB = 1024**2


def load(tmp_path: Path, text: str) -> config.MatrixFile:
    path = tmp_path / "m.yaml"
    path.write_text(text, encoding="utf-8")
    return config.load(path)


def request(**resources: Any) -> ShardRequest:
    return ShardRequest(
        run_id="r",
        cell_id="c",
        shard="shard-1of1",
        attempt=1,
        image=ImageSpec(base="python:3.11-slim"),
        command=("python", "-m", "pytest"),
        files=(),
        resources=Resources(**resources),
    )


# --- resources.shm, resources.ipc, resources.gpu-type: validation and templating ----------------------------------


def test_shm_ipc_and_gpu_type_load_and_reach_the_cells(tmp_path: Path) -> None:
    mf = load(tmp_path, 'matrix: {python: ["3.11"]}\nresources: {gpus: 2, ipc: host, gpu-type: H100}\n')
    assert (mf.resources.shm, mf.resources.ipc, mf.resources.gpu_type) == ("", "host", "H100")
    mf = load(tmp_path, 'matrix: {python: ["3.11"]}\nresources: {gpus: 2, shm: 2g, ipc: shareable, gpu-type: H100}\n')
    (only,) = matrix.expand(mf)
    assert only.resources == Resources(gpus=2.0, shm=2 * 1024**3, ipc="shareable", gpu_type="H100")
    (plain,) = matrix.expand(load(tmp_path, 'matrix: {python: ["3.11"]}\n'))
    assert (plain.resources.shm, plain.resources.ipc, plain.resources.gpu_type) == (None, "", "")


@pytest.mark.parametrize(
    ("resources", "key", "problem"),
    [
        ("{ipc: hots}", "resources.ipc", "'hots' is not one of private, shareable, host"),
        ("{shm: lots}", "resources.shm", "'lots' is not a memory size; write e.g. '2g' or '512m'"),
        ("{gpu-type: 'H 100'}", "resources.gpu-type", "'H 100' is not a GPU type; write Ray's accelerator type"),
        ("{shm: 1g, ipc: host}", "resources.shm", "has no effect with ipc: host"),
        ("{gpu_type: H100}", "resources.gpu_type", "unknown key 'gpu_type'; did you mean 'gpu-type'?"),
    ],
)
def test_bad_shm_ipc_or_gpu_type_is_one_line_naming_file_key_and_fix(
    tmp_path: Path, resources: str, key: str, problem: str
) -> None:
    path = tmp_path / "m.yaml"
    path.write_text(f'matrix: {{python: ["3.11"]}}\nresources: {resources}\n', encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        config.load(path)
    message = str(err.value)
    assert message.startswith(f"{path}:2: {key}: "), message
    assert problem in message
    assert "\n" not in message


MATRIX_OF_GPUS = """\
matrix:
  hardware: [cpu, one, two]
  include:
    - {hardware: cpu, cpus: "2", gpus: "0", gpu: any, ipc: private, shm: 64m}
    - {hardware: one, cpus: "4", gpus: "1", gpu: A10G, ipc: shareable, shm: 1g}
    - {hardware: two, cpus: "8", gpus: "2", gpu: H100, ipc: host, shm: 2g}
resources: {cpus: "{cpus}", gpus: "{gpus}", gpu-type: "{gpu}", ipc: "{ipc}"}
image: {base: "matrix-run/debian:bookworm"}
"""


def test_gpu_count_type_cpus_and_ipc_are_templated_per_cell(tmp_path: Path) -> None:
    cells = {c.axes["hardware"]: c.resources for c in matrix.expand(load(tmp_path, MATRIX_OF_GPUS))}
    assert cells["cpu"] == Resources(cpus=2.0, gpus=0.0, ipc="private")  # gpu-type "any": no constraint
    assert cells["one"] == Resources(cpus=4.0, gpus=1.0, gpu_type="A10G", ipc="shareable")
    assert cells["two"] == Resources(cpus=8.0, gpus=2.0, gpu_type="H100", ipc="host")
    shm = MATRIX_OF_GPUS.replace('ipc: "{ipc}"}', 'shm: "{shm}"}')
    cells = {c.axes["hardware"]: c.resources for c in matrix.expand(load(tmp_path, shm))}
    assert [cells[h].shm for h in ("cpu", "one", "two")] == [64 * MiB, 1024 * MiB, 2048 * MiB]


@pytest.mark.parametrize(
    ("include", "key", "problem"),
    [
        ("{hardware: x, gpus: '0', gpu: H100}", "resources.gpu-type", "asks for GPU type 'H100' but for no GPU"),
        ("{hardware: x, gpus: '1', gpu: H100, ipc: hots}", "resources.ipc", "'hots' is not one of private"),
        ("{hardware: x, gpus: '1', gpu: H100, shm: 512k}", "resources.shm", "'512k' is below 1m"),
        ("{hardware: x, gpus: '1', gpu: H100, shm: 1g, ipc: host}", "resources.shm", "has no effect with ipc: host"),
        ("{hardware: x, gpus: many, gpu: H100}", "resources.gpus", "'many' is not a number"),
    ],
)
def test_a_bad_rendered_resource_names_the_cell_and_the_key(
    tmp_path: Path, include: str, key: str, problem: str
) -> None:
    text = (
        f"matrix:\n  include:\n    - {include}\nimage: {{base: 'matrix-run/debian:bookworm'}}\n"
        'resources: {gpus: "{gpus}", gpu-type: "{gpu}", ipc: "{ipc}", shm: "{shm}"}\n'
    )
    if "ipc" not in include:
        text = text.replace(', ipc: "{ipc}"', "")
    if "shm" not in include:
        text = text.replace(', shm: "{shm}"', "")
    with pytest.raises(ConfigError) as err:
        matrix.expand(load(tmp_path, text))
    assert f" {key}: " in str(err.value)
    assert problem in str(err.value)


# --- what a shard is told about its GPUs ----------------------------------------------------------------------------


def test_a_container_numbers_its_gpus_from_zero_and_keeps_the_host_ids_for_the_record(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("MATRIX_RUN_GPU_MODE", raising=False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")  # what Ray sets in its worker: host ids
    req = ShardRequest(**{**vars(request(gpus=2.0)), "env": (("CUDA_VISIBLE_DEVICES", "7"), ("KEEP", "1"))})
    env = docker_executor._environment(req, docker_executor.ordered_gpus(("3", "2")))
    assert env["MATRIX_RUN_GPU_IDS"] == "2,3"
    assert env["CUDA_VISIBLE_DEVICES"] == "0,1"  # neither Ray's host ids nor a passed-through value
    assert env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    assert "NVIDIA_VISIBLE_DEVICES" not in env  # dockerd's NVIDIA driver sets it from the device request
    assert env["KEEP"] == "1"
    monkeypatch.setenv("MATRIX_RUN_GPU_MODE", "nvidia-env")
    assert docker_executor._environment(req, ("2", "3"))["NVIDIA_VISIBLE_DEVICES"] == "2,3"
    cpu = docker_executor._environment(request(), ())
    assert cpu["NVIDIA_VISIBLE_DEVICES"] == "void"  # none, even under a default NVIDIA runtime
    assert "CUDA_VISIBLE_DEVICES" not in cpu
    assert "MATRIX_RUN_GPU_IDS" not in cpu


def test_ids_are_ordered_as_the_container_numbers_its_devices() -> None:
    assert docker_executor.ordered_gpus(("3", "10", "2")) == ("2", "3", "10")
    assert docker_executor.ordered_gpus(("GPU-b", "GPU-a")) == ("GPU-b", "GPU-a")  # UUIDs: Ray's order


def test_on_the_host_cuda_visible_devices_are_the_host_ids(tmp_path: Path) -> None:
    env = host_executor.shard_environment(request(gpus=2.0), tmp_path, tmp_path, tmp_path, "t", ("2", "3"))
    assert (env["CUDA_VISIBLE_DEVICES"], env["MATRIX_RUN_GPU_IDS"], env["CUDA_DEVICE_ORDER"]) == (
        "2,3",
        "2,3",
        "PCI_BUS_ID",
    )
    cpu = host_executor.shard_environment(request(), tmp_path, tmp_path, tmp_path, "t", ())
    assert cpu["CUDA_VISIBLE_DEVICES"] == ""
    assert "MATRIX_RUN_GPU_IDS" not in cpu


def test_the_container_gets_a_device_request_for_exactly_its_ids_and_shm_and_ipc(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MATRIX_RUN_GPU_MODE", raising=False)
    created: dict[str, Any] = {}
    client = SimpleNamespace(containers=SimpleNamespace(create=lambda image, **kw: created.update(kw)))
    req = request(gpus=2.0, memory=2**30, shm=512 * MiB, ipc="shareable")
    docker_executor._create(client, req, "tag", tmp_path, ("2", "3"))
    (device_request,) = created["device_requests"]
    assert device_request["DeviceIDs"] == ["2", "3"]
    assert device_request["Capabilities"] == [["gpu"]]
    assert (created["shm_size"], created["ipc_mode"]) == (512 * MiB, "shareable")
    created.clear()
    docker_executor._create(client, request(memory=2**30), "tag", tmp_path, ())
    assert "device_requests" not in created
    assert "shm_size" not in created
    assert "ipc_mode" not in created


# --- placement by GPU type -----------------------------------------------------------------------------------------


def test_gpu_type_places_on_nodes_of_that_type_and_names_what_is_missing() -> None:
    h100 = Node("h", cpus=8, gpus=2, gpu_types=frozenset({"H100"}))
    t4 = Node("t", cpus=8, gpus=1, gpu_types=frozenset({"T4"}))
    cpu = Node("c", cpus=8)
    assert [n.node_id for n in eligible([h100, t4, cpu], request(gpus=1.0, gpu_type="H100"))] == ["h"]
    assert [n.node_id for n in eligible([h100, t4, cpu], request(gpus=1.0))] == ["h", "t"]
    assert not may_take(t4, request(gpus=1.0, gpu_type="H100"))
    why = why_unservable([h100, t4, cpu], request(gpus=1.0, gpu_type="A10G"))
    assert why == (
        "no node has GPUs of type 'A10G' (resources.gpu-type; Ray advertises a node's GPU type as the resource "
        "'accelerator_type:A10G'); GPU types on this cluster: H100, T4"
    )
    assert why_unservable([h100, t4], request(gpus=2.0, gpu_type="T4")) == (
        "needs 2 GPU(s) per shard; the most any node has is 1"
    )


def test_nodes_advertise_their_gpu_type_and_shards_ask_ray_for_it(monkeypatch: pytest.MonkeyPatch) -> None:
    listed = [
        {"Alive": True, "NodeID": "n1", "Resources": {"CPU": 4.0, "GPU": 2.0, "accelerator_type:H100": 1.0}},
        {"Alive": True, "NodeID": "n2", "Resources": {"CPU": 4.0}},
    ]
    nodes = {n.node_id: n for n in cluster._nodes_of(listed, {})}
    assert nodes["n1"].gpu_types == frozenset({"H100"})
    assert nodes["n2"].gpu_types == frozenset()
    asked: dict[str, Any] = {}

    class Remote:
        def options(self, **options: Any) -> Remote:
            asked.update(options)
            return self

        def remote(self, *args: Any) -> str:
            return "ref"

    monkeypatch.setattr(cluster, "_remote_task", Remote())
    cluster.submit(request(gpus=1.0, gpu_type="H100"), None, 0)
    assert (asked["num_gpus"], asked["accelerator_type"]) == (1.0, "H100")  # Ray: accelerator_type:H100 (0.001)
    asked.clear()
    cluster.submit(request(gpus=1.0), None, 0)
    assert "accelerator_type" not in asked


# --- Docker asked before a node's first GPU shard ------------------------------------------------------------------

NO_DRIVER = 'could not select device driver "" with capabilities: [[gpu]]'  # Docker 20.10, word for word


def test_the_answer_is_kept_per_engine_and_an_engine_without_a_gpu_driver_is_named(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import docker.errors

    asked: list[dict[str, Any]] = []

    class Probe:
        def start(self) -> None:
            raise docker.errors.APIError("500 Server Error", explanation=NO_DRIVER)

        def remove(self, force: bool = False) -> None: ...

    def create(image: str, **kw: Any) -> Probe:
        asked.append(kw)
        return Probe()

    client: Any = SimpleNamespace(containers=SimpleNamespace(create=create))
    monkeypatch.setattr(docker_executor, "_gpu_answers", {})
    monkeypatch.setenv("DOCKER_HOST", "unix:///run/gpu-less.sock")
    req = request(gpus=1.0)
    why = docker_executor.gpu_problem(client, "tag", ("1",), req)
    assert why.startswith(f"Docker on node {os.uname().nodename} (unix:///run/gpu-less.sock) cannot pass GPUs: ")
    assert "no NVIDIA container runtime or CDI spec" in why
    assert "install nvidia-container-toolkit" in why
    assert NO_DRIVER in why
    assert asked[0]["device_requests"][0]["DeviceIDs"] == ["1"]
    assert docker_executor.gpu_problem(client, "tag", ("0",), req) == why
    assert len(asked) == 1  # asked once per engine and process
    monkeypatch.setenv("DOCKER_HOST", "unix:///run/other.sock")
    docker_executor.gpu_problem(client, "tag", ("0",), req)
    assert len(asked) == 2  # another engine is asked on its own


def test_a_node_that_cannot_pass_gpus_ends_the_cell_as_infra_after_its_infra_reruns() -> None:
    line = f"Docker on node gpu-box (unix:///var/run/docker.sock) cannot pass GPUs: no NVIDIA ... ({NO_DRIVER})"

    def script(req: ShardRequest) -> ShardOutcome:
        return ShardOutcome(req.cell_id, req.shard, req.attempt, None, infra_error=line, node_id="gpu")

    transport = FakeTransport([Node("gpu", cpus=2, gpus=1)], script)
    sched, _ = make([cell("g", gpus=1.0)], {"g": [1.0]}, transport, infra_retries=2)
    drive(sched, ["g"])
    assert [r.attempt for r in transport.submitted] == [1, 2, 3]  # retries.infra bounds the reruns
    result = sched.cell_result("g")
    assert result.status is Status.INFRA
    assert result.reason == f"shard-1of1: {line}"


# --- scripts/gpu-check.sh on a machine without a GPU ---------------------------------------------------------------


@pytest.mark.slow
def test_gpu_check_says_there_is_no_gpu_and_still_runs_the_host_executor_without_ray(tmp_path: Path) -> None:
    """No GPU and no torch here: the script says so on one line and exits 2, after the host executor ran the
    suite without Ray, pinned to the id given (its test that needs no torch passed; the torch ones skipped)."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "CUDA_VISIBLE_DEVICES")}
    env["MATRIX_RUN_STATE_DIR"] = str(tmp_path / "state")
    proc = subprocess.run(
        [str(ROOT / "scripts" / "gpu-check.sh"), "--gpus", "3", "--python", sys.executable, "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        check=False,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    (no_gpu,) = [line for line in out.splitlines() if line.startswith("gpu-check: NO GPU on ")]
    assert "nvidia-smi not found" in no_gpu
    assert "the host executor ran the suite without Ray" in no_gpu
    assert "gpu-check: given GPU ids 3; CUDA_VISIBLE_DEVICES=3" in out  # pinned, as the host numbers its GPUs
    (summary,) = [line for line in out.splitlines() if line.startswith("host-run: cell gpus-1: ")]
    assert "passed: 2 test(s), 1 passed, 0 failed, 1 skipped" in summary
    assert summary.endswith("GPU ids 3")
    assert "host-run:   skipped tests.test_torch_cuda: torch is not importable" in out
    assert (tmp_path / "gpus-1" / "report.jsonl").stat().st_size > 0


def test_gpu_check_refuses_a_python_without_pytest_in_one_line(tmp_path: Path) -> None:
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\ncase \"$2\" in 'import pytest') exit 1 ;; esac\nexit 0\n")
    fake.chmod(0o755)
    proc = subprocess.run(
        [str(ROOT / "scripts" / "gpu-check.sh"), "--python", str(fake)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 3
    assert proc.stdout.strip().endswith(
        "has no pytest: the tests run on PY's own packages and nothing is downloaded; install pytest into it"
    )


# --- a simulated GPU node: a real Docker 20.10 engine with the NVIDIA driver registered, a real Ray -------------------

FAKE_HOOK = """#!/bin/sh
# A stand-in for nvidia-container-runtime-hook on a machine without a GPU (tests/test_gpu.py). dockerd registers its
# NVIDIA device driver only when it finds this name on its PATH, and runc runs it as the prestart hook of every
# container with a GPU device request, the OCI state on stdin. It does nothing real: it injects no device.
cat >/dev/null
exit 0
"""

GPU_PROJECT_TEST = """
import json, os, time


def test_gpu_env():
    want = int(os.environ["WANT_GPUS"])
    ids = [g for g in os.environ.get("MATRIX_RUN_GPU_IDS", "").split(",") if g]
    rec = {k: os.environ.get(k) for k in (
        "MATRIX_RUN_CELL", "MATRIX_RUN_SHARD", "MATRIX_RUN_ATTEMPT", "MATRIX_RUN_GPU_IDS", "CUDA_VISIBLE_DEVICES",
        "NVIDIA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER")}
    shm = os.statvfs("/dev/shm")
    rec["shm"] = shm.f_blocks * shm.f_frsize
    rec["start"] = time.time()
    time.sleep(4)
    rec["end"] = time.time()
    print("GPUREC " + json.dumps(rec), flush=True)
    assert len(ids) == want
    if want:
        assert rec["CUDA_VISIBLE_DEVICES"] == ",".join(str(i) for i in range(want))
        assert rec["NVIDIA_VISIBLE_DEVICES"] == ",".join(ids)  # dockerd's driver, from the device request
        assert rec["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    else:
        assert rec["CUDA_VISIBLE_DEVICES"] is None and rec["NVIDIA_VISIBLE_DEVICES"] == "void"
"""


@contextlib.contextmanager
def gpu_engine(hooks: Path) -> Iterator[node_engine.NodeEngine]:
    """The private engine ``gpunode`` with the stand-in hook on its PATH (restarted if one runs without it)."""
    hooks.mkdir(parents=True, exist_ok=True)
    hook = hooks / "nvidia-container-runtime-hook"
    hook.write_text(FAKE_HOOK)
    hook.chmod(0o755)
    engine = node_engine.start("gpunode", 2, extra_path=str(hooks))
    try:
        with contextlib.suppress(OSError):
            if str(hooks) not in Path(f"/proc/{engine.pid}/environ").read_text(errors="replace"):
                node_engine.stop(engine)  # left running by an earlier session, without this hook
                engine = node_engine.start("gpunode", 2, extra_path=str(hooks))
        node_engine.copy_image(BASE, engine.host)
        yield engine
    finally:
        node_engine.stop(engine)


class Inspector:
    """Polls an engine for matrix-run's containers and keeps each one's inspect data: what reached Docker."""

    def __init__(self, host: str) -> None:
        import docker

        self.client = docker.DockerClient(base_url=host, timeout=30)
        self.seen: dict[str, dict[str, Any]] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self.stop.is_set():
            with contextlib.suppress(Exception):
                for listed in self.client.api.containers(all=True, filters={"label": "matrix-run.role"}):
                    if listed["Id"] not in self.seen:
                        with contextlib.suppress(Exception):
                            self.seen[listed["Id"]] = self.client.api.inspect_container(listed["Id"])
            self.stop.wait(0.2)

    def __enter__(self) -> Inspector:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=10)

    def left(self) -> list[dict[str, Any]]:
        try:
            return list(self.client.api.containers(all=True, filters={"label": "matrix-run.role"}))
        finally:
            self.client.close()


def _records(out: Path) -> list[dict[str, Any]]:
    recs = []
    for log in sorted((out / "logs").rglob("*.log")):
        for line in log.read_text(errors="replace").splitlines():
            _, found, rec = line.partition("GPUREC ")  # after pytest's "tests/test_gpu_a.py " under -s
            if found:
                recs.append(json.loads(rec))
    return recs


@pytest.mark.docker
@pytest.mark.ray
@pytest.mark.slow
def test_gpu_shards_get_exactly_their_gpus_on_a_simulated_gpu_node(tmp_path: Path, docker_client: Any) -> None:
    """Three nodes: a head without GPUs (this machine's engine); ``worker`` with 2 GPUs of type H100 on the
    simulated GPU engine; ``worker2`` with 1 GPU of type T4 on this machine's engine, which has no NVIDIA driver.
    Cells: CPU, 1 GPU (two shards), 2 GPUs (two shards), H100 for both; T4; A10G (no node has one)."""
    project = tmp_path / "project"
    (project / "tests").mkdir(parents=True)
    for name in ("a", "b"):
        (project / "tests" / f"test_gpu_{name}.py").write_text(GPU_PROJECT_TEST)
    matrix_file = write_matrix(
        tmp_path,
        project,
        matrix={
            "hardware": ["cpu", "one", "two", "t4", "a10g"],
            "include": [
                {"hardware": "cpu", "gpus": 0, "gpu": "any"},
                {"hardware": "one", "gpus": 1, "gpu": "H100"},
                {"hardware": "two", "gpus": 2, "gpu": "H100"},
                {"hardware": "t4", "gpus": 1, "gpu": "T4"},
                {"hardware": "a10g", "gpus": 1, "gpu": "A10G"},
            ],
        },
        image={"base": BASE},
        tests={
            "shards": 2,
            "timeout": 300,
            "install-project": False,
            "args": ["-s"],
            "env": {"WANT_GPUS": "{gpus}"},
        },
        retries={"flaky": 0, "infra": 1},
        resources={"cpus": 1, "gpus": "{gpus}", "gpu-type": "{gpu}", "shm": "256m", "ipc": "shareable"},
    )
    with gpu_engine(tmp_path / "hooks") as engine:
        ray_cluster = TwoNodeRay(
            head=("--num-cpus=1", "--num-gpus=0"),
            worker=("--num-cpus=2", "--num-gpus=2", "--resources=" + json.dumps({"accelerator_type:H100": 1})),
            worker_env=engine.env(),
            more_workers=(
                (("--num-cpus=1", "--num-gpus=1", "--resources=" + json.dumps({"accelerator_type:T4": 1})), {}),
            ),
        )
        try:
            ray_cluster.start()
            by_node = _node_ids(ray_cluster.address)
            h100 = next(n for n, r in by_node.items() if "accelerator_type:H100" in r)
            t4 = next(n for n, r in by_node.items() if "accelerator_type:T4" in r)
            out = tmp_path / "out"
            with Inspector(engine.host) as seen:
                proc = run_cli(
                    "run",
                    str(matrix_file),
                    "--out",
                    str(out),
                    "--plain",
                    "--address",
                    ray_cluster.address,
                    "--history",
                    str(tmp_path / "h.sqlite"),
                    env={"RAY_AUTH_MODE": "disabled"},
                )
            assert proc.returncode == 3, proc.stdout[-4000:] + proc.stderr[-3000:]
            left = seen.left()
        finally:
            ray_cluster.stop()
    cells = {c["axes"]["hardware"]: c for c in results(out)["cells"]}
    report = proc.stdout[-4000:] + proc.stderr[-3000:]

    # CPU cells never go to a GPU node; GPU cells only to the node of their type
    assert cells["cpu"]["status"] == "passed", report
    assert all(s["node_id"] not in (h100, t4) and s["gpu_ids"] == [] for s in cells["cpu"]["shards"])
    for hw, count in (("one", 1), ("two", 2)):
        assert cells[hw]["status"] == "passed", (cells[hw], report)
        for shard in cells[hw]["shards"]:
            assert shard["node_id"] == h100
            assert len(shard["gpu_ids"]) == count
    assert all(s["gpu_ids"] == ["0", "1"] for s in cells["two"]["shards"])

    # inside each container: the host ids for the record, CUDA numbering from 0, and dockerd's own
    # NVIDIA_VISIBLE_DEVICES from the device request (the project's test asserts them too)
    recs = [r for r in _records(out) if r["MATRIX_RUN_CELL"] in (cells["one"]["id"], cells["two"]["id"])]
    assert len(recs) == 4, recs
    for rec in recs:
        n = len(rec["MATRIX_RUN_GPU_IDS"].split(","))
        assert rec["CUDA_VISIBLE_DEVICES"] == ",".join(str(i) for i in range(n))
        assert rec["NVIDIA_VISIBLE_DEVICES"] == rec["MATRIX_RUN_GPU_IDS"]
        assert rec["shm"] == 256 * MiB  # resources.shm reached Docker's shm_size
    assert any(r["MATRIX_RUN_GPU_IDS"] == "1" and r["CUDA_VISIBLE_DEVICES"] == "0" for r in recs), recs

    # shards that ran at the same time had disjoint GPUs, and some did run at the same time
    overlapping = [
        (a, b) for i, a in enumerate(recs) for b in recs[i + 1 :] if a["start"] < b["end"] and b["start"] < a["end"]
    ]
    assert overlapping, "no two GPU shards ran at once: the disjointness below would say nothing"
    for a, b in overlapping:
        assert not set(a["MATRIX_RUN_GPU_IDS"].split(",")) & set(b["MATRIX_RUN_GPU_IDS"].split(",")), (a, b)

    # what reached Docker: each GPU shard's container inspect data names exactly its ids
    shard_containers = [i for i in seen.seen.values() if i["Config"]["Labels"].get("matrix-run.role") == "shard"]
    by_attempt = {(r["MATRIX_RUN_CELL"], r["MATRIX_RUN_SHARD"], r["MATRIX_RUN_ATTEMPT"]): r for r in recs}
    assert len(shard_containers) == 4, [i["Config"]["Labels"] for i in shard_containers]
    for inspect in shard_containers:
        labels = inspect["Config"]["Labels"]
        rec = by_attempt[(labels["matrix-run.cell"], labels["matrix-run.shard"], labels["matrix-run.attempt"])]
        (device_request,) = inspect["HostConfig"]["DeviceRequests"]
        assert device_request["DeviceIDs"] == rec["MATRIX_RUN_GPU_IDS"].split(",")
        assert device_request["Capabilities"] == [["gpu"]]
        assert (inspect["HostConfig"]["ShmSize"], inspect["HostConfig"]["IpcMode"]) == (256 * MiB, "shareable")
    checks = [i for i in seen.seen.values() if i["Config"]["Labels"].get("matrix-run.role") == "gpu-check"]
    assert all(i["HostConfig"]["DeviceRequests"][0]["Capabilities"] == [["gpu"]] for i in checks)
    assert left == [], "containers left on the GPU node's engine"

    # a GPU node whose Docker cannot pass GPUs: infra at once, naming the node, rerun retries.infra times only
    t4_cell = cells["t4"]
    assert t4_cell["status"] == "infra", t4_cell
    assert f"Docker on node {os.uname().nodename} (unix:///var/run/docker.sock) cannot pass GPUs" in t4_cell["reason"]
    assert "install nvidia-container-toolkit" in t4_cell["reason"]
    assert NO_DRIVER in t4_cell["reason"]
    kinds: dict[str, list[str]] = {}
    for attempt in t4_cell["shards"]:  # one entry per attempt
        assert attempt["node_id"] == t4
        kinds.setdefault(attempt["shard"], []).append(attempt["kind"])
    assert kinds == {"shard-1of2": ["infra", "infra"], "shard-2of2": ["infra", "infra"]}, t4_cell
    # and a GPU type no node has: no_capacity by name, before anything runs
    assert cells["a10g"]["status"] == "no_capacity"
    assert "no node has GPUs of type 'A10G'" in cells["a10g"]["reason"]
    assert "GPU types on this cluster: H100, T4" in cells["a10g"]["reason"]
    assert cells["a10g"]["attempts"] == 0
