"""This machine as a run's one node, without Ray (runner/machine.py): its GPUs as nvidia-smi lists them, and the
transport that runs each attempt in a thread, against a hand-written fake executor (no Docker, no Ray). The real
executors behind it are exercised by every integration test of a run without a cluster (test_run, test_faults...)."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from runner.execution import ShardOutcome, ShardRequest
from runner.images import ImageSpec
from runner.machine import NODE_ID, Gpus, MachineTransport, parse_gpus, this_node
from runner.matrix import Resources
from runner.scheduler import Scheduler
from tests.test_scheduler import RecordingView, cell, prototype, shards_of

SMI = "0, NVIDIA H100 80GB HBM3\n1, NVIDIA H100 80GB HBM3\n2, Tesla T4\n"


def request(shard: str = "shard-1of1", attempt: int = 1, **resources: Any) -> ShardRequest:
    return ShardRequest(
        run_id="r",
        cell_id="c",
        shard=shard,
        attempt=attempt,
        image=ImageSpec(base="python:3.11-slim"),
        command=("python", "-m", "pytest"),
        files=(),
        resources=Resources(**resources),
    )


class GatedExecutor:
    """Runs nothing: each attempt waits until the test opens its gate (or ``stop`` ends it), then returns."""

    name = "fake"

    def __init__(self) -> None:
        self.gates: dict[tuple[str, int], threading.Event] = {}
        self.seen_gpus: dict[tuple[str, int], tuple[str, ...]] = {}
        self.stopped: list[tuple[str, int]] = []
        self.threads: set[str] = set()
        self.lock = threading.Lock()

    def gate(self, req: ShardRequest) -> threading.Event:
        with self.lock:
            return self.gates.setdefault((req.shard, req.attempt), threading.Event())

    def run(self, request: ShardRequest, tarball: bytes, gpu_ids: tuple[str, ...] = ()) -> ShardOutcome:
        self.threads.add(threading.current_thread().name)
        self.seen_gpus[request.shard, request.attempt] = gpu_ids
        if request.shard == "boom":
            raise KeyError("a bug in the executor")
        assert self.gate(request).wait(10), "the test never let this attempt end"
        return ShardOutcome(request.cell_id, request.shard, request.attempt, 0, node="this-host", gpu_ids=gpu_ids)

    def stop(self, request: ShardRequest) -> None:
        self.stopped.append((request.shard, request.attempt))
        self.gate(request).set()


def transport(gpus: Gpus | None = None) -> tuple[MachineTransport, GatedExecutor]:
    fake = GatedExecutor()
    return MachineTransport(b"tar", docker=True, gpus=gpus or Gpus(), executors=lambda name: fake), fake


def wait_for(t: MachineTransport, handles: list[Any], timeout: float = 5.0) -> list[tuple[Any, Any, str]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = list(t.completed(handles, 0.05))
        if got:
            return got
    raise AssertionError("nothing completed")


def test_gpus_as_nvidia_smi_lists_them_narrowed_by_cuda_visible_devices() -> None:
    assert parse_gpus(SMI, None) == Gpus(("0", "1", "2"), frozenset({"H100", "T4"}))
    assert parse_gpus(SMI, "2,0") == Gpus(("2", "0"), frozenset({"H100", "T4"}))  # in the order it names them
    assert parse_gpus(SMI, "") == Gpus()  # CUDA_VISIBLE_DEVICES="" hides every GPU
    assert parse_gpus(SMI, "NoDevFiles") == Gpus()
    assert parse_gpus("", None) == Gpus()  # nvidia-smi listed nothing
    node = this_node(docker=False, gpus=parse_gpus(SMI, "0,1"))
    assert (node.node_id, node.gpus, node.gpu_types, node.docker) == (NODE_ID, 2.0, frozenset({"H100"}), False)
    assert "linux" in node.labels  # the platform label, as an embedded Ray's node advertised it


def test_attempts_run_in_threads_and_come_back_in_completion_order_from_this_node() -> None:
    t, fake = transport()
    first, second = t.submit(request("shard-1of2")), t.submit(request("shard-2of2"))
    assert list(t.completed([first, second], 0.05)) == []  # both still running
    fake.gate(request("shard-2of2")).set()
    ((handle, outcome, error),) = wait_for(t, [first, second])
    assert (handle, outcome.shard, outcome.node_id, outcome.node, error) == (
        second,
        "shard-2of2",
        NODE_ID,
        "this-host",
        "",
    )
    fake.gate(request("shard-1of2")).set()
    ((handle, outcome, _),) = wait_for(t, [first])
    assert handle is first
    assert outcome.shard == "shard-1of2"
    assert len(fake.threads) == 2
    assert all(n.startswith("matrix-run-shard-c/") for n in fake.threads)
    t.close()


def test_gpus_are_handed_out_by_id_disjoint_and_given_back() -> None:
    t, fake = transport(Gpus(("0", "1", "2")))
    one, two = t.submit(request("a", gpus=1.0)), t.submit(request("b", gpus=2.0))
    cpu = t.submit(request("cpu"))
    time.sleep(0.1)
    assert fake.seen_gpus["a", 1] == ("0",)
    assert fake.seen_gpus["b", 1] == ("1", "2")
    assert fake.seen_gpus["cpu", 1] == ()
    fake.gate(request("b")).set()
    wait_for(t, [two])
    half1, half2 = t.submit(request("h1", gpus=0.5)), t.submit(request("h2", gpus=0.5))  # one device, shared
    time.sleep(0.1)
    assert fake.seen_gpus["h1", 1] == fake.seen_gpus["h2", 1] == ("1",)
    for h in ("a", "cpu", "h1", "h2"):
        fake.gate(request(h)).set()
    t.close()
    assert all(h.future.done() for h in (one, cpu, half1, half2))
    assert t._gpu_left == {"0": 1.0, "1": 1.0, "2": 1.0}  # every share back


def test_cancel_reports_at_once_stops_through_the_executor_and_close_waits_for_the_thread() -> None:
    t, fake = transport()
    handle = t.submit(request())
    t.cancel([handle])
    assert list(t.completed([handle], 0.05)) == [(handle, None, "cancelled")]
    assert ("shard-1of1", 1) in fake.stopped
    t.close(timeout=5)
    assert handle.future.done()
    assert not t._live


def test_a_bug_in_the_executor_comes_back_with_its_traceback() -> None:
    t, _ = transport()
    handle = t.submit(request("boom"))
    ((_, outcome, error),) = wait_for(t, [handle])
    assert outcome is None
    assert error.startswith("executor: KeyError: 'a bug in the executor'")
    assert "Traceback" in error
    assert "in run" in error


@pytest.mark.parametrize("gpus", [Gpus(), Gpus(("0",), frozenset({"T4"}))])
def test_a_gpu_cell_is_no_capacity_on_a_machine_without_gpus_and_runs_on_one_with(gpus: Gpus) -> None:
    t, fake = transport(gpus)
    gpu_cell = cell("gpu", gpus=1.0)
    (shard,) = shards_of("gpu", [1.0])
    sched = Scheduler({"gpu": [shard]}, [gpu_cell], {"gpu": prototype(gpu_cell)}, t, RecordingView())
    unservable = sched.check_capacity()
    if not gpus.ids:
        assert list(unservable) == ["gpu"]
        assert "GPU" in unservable["gpu"]
        return
    assert unservable == {}
    sched.ready("gpu")
    fake.gate(request(shard.slug)).set()
    deadline = time.monotonic() + 5
    while not sched.finished and time.monotonic() < deadline:
        sched.step(timeout=0.05)
    t.close()
    assert sched.finished
    assert fake.seen_gpus[shard.slug, 1] == ("0",)


def test_the_host_executor_stops_exactly_the_attempts_processes() -> None:
    """``HostExecutor.stop`` (what cancel does to a host attempt running in a thread): real processes tagged as two
    attempts of one shard; only the cancelled attempt's die, whatever session they moved to."""
    import os
    import subprocess
    import sys

    from runner.executors.host import HostExecutor

    def spawn(attempt: int) -> subprocess.Popen[bytes]:
        tags = {"MATRIX_RUN_ID": "r", "MATRIX_RUN_CELL": "c", "MATRIX_RUN_SHARD": "shard-1of1"}
        env = {**os.environ, **tags, "MATRIX_RUN_ATTEMPT": str(attempt)}
        code = "import time; time.sleep(60)"
        return subprocess.Popen([sys.executable, "-c", code], env=env, start_new_session=True)

    mine, other = spawn(2), spawn(3)
    try:
        time.sleep(0.3)  # their environments are readable once they run
        started = time.monotonic()
        HostExecutor().stop(request(attempt=2))
        mine.wait(10)  # killed and reaped by stop (psutil waits for what it kills): ended long before its 60 s
        assert time.monotonic() - started < 10
        assert other.poll() is None  # another attempt of the same shard runs on
    finally:
        for proc in (mine, other):
            proc.kill()
            proc.wait()
