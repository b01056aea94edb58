"""The pure scheduler against a hand-written fake transport: no Docker, no Ray.

The fake runs nothing: each submitted request gets the outcome a script gives for it (by cell, shard, attempt),
and finishes when the test says so, so the order of submissions, admissions and cancellations is exact.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import pytest

from runner.execution import ShardOutcome, ShardRequest
from runner.matrix import Cell, Resources
from runner.plan import Shard
from runner.results import Status
from runner.scheduler import Node, Scheduler, eligible, request_shape, why_unservable
from tests.test_results import jsonl, phases

Script = Callable[[ShardRequest], ShardOutcome]


class RecordingView:
    def __init__(self) -> None:
        self.events: list[tuple[str, ...]] = []

    def begin(self, cells: dict[str, int]) -> None: ...

    def image(self, cell_id: str, state: str, detail: str = "") -> None: ...

    def shard(self, cell_id: str, shard: str, attempt: int, state: str, passed: int = 0, failed: int = 0) -> None:
        self.events.append(("shard", cell_id, shard, str(attempt), state))

    def cell(self, cell_id: str, status: str, counts: dict[str, int], reason: str = "") -> None:
        self.events.append(("cell", cell_id, status))

    def note(self, text: str) -> None:
        self.events.append(("note", text))

    def end(self) -> None: ...


class FakeTransport:
    """Holds submitted requests until ``finish`` (or ``auto``) completes them with the script's outcome."""

    def __init__(self, nodes: list[Node], script: Script, auto: bool = True) -> None:
        self._nodes = nodes
        self.script = script
        self.auto = auto
        self.submitted: list[ShardRequest] = []
        self.sent_to: list[str] = []  # the node the scheduler chose for each submission
        self.running: dict[int, ShardRequest] = {}
        self.done: list[tuple[int, ShardOutcome | None, str]] = []
        self.cancelled: list[ShardRequest] = []
        self.most_at_once = 0

    def submit(self, request: ShardRequest, avoid_node: str = "", node: str = "") -> Any:
        handle = len(self.submitted)
        self.submitted.append(request)
        self.sent_to.append(node)
        self.running[handle] = request
        self.most_at_once = max(self.most_at_once, len(self.running))
        return handle

    def finish(self, handle: int) -> None:
        req = self.running.pop(handle)
        try:
            self.done.append((handle, self.script(req), ""))
        except RuntimeError as exc:  # the transport gave up on this request (a lost node)
            self.done.append((handle, None, f"ray: {exc}"))

    def completed(self, handles: list[Any], timeout: float) -> Iterable[tuple[Any, ShardOutcome | None, str]]:
        if self.auto:
            for handle in sorted(self.running):
                self.finish(handle)
                break  # one at a time: each completion frees a slot before the next is handed out
        out, self.done = [d for d in self.done if d[0] in handles], [d for d in self.done if d[0] not in handles]
        return out

    def cancel(self, handles: list[Any]) -> None:
        for handle in handles:
            if handle in self.running:
                self.cancelled.append(self.running.pop(handle))
                self.done.append((handle, None, "cancelled"))

    def nodes(self) -> list[Node]:
        return self._nodes


def passing(req: ShardRequest) -> ShardOutcome:
    nodeid = f"tests/test_{req.shard.replace('-', '_')}.py::test_it"
    recs = [{"event": "start"}, {"event": "collected", "nodeids": [nodeid]}, *phases(nodeid, "passed")]
    recs.append({"event": "end"})
    return ShardOutcome(req.cell_id, req.shard, req.attempt, 0, report=jsonl(recs))


def failing(req: ShardRequest) -> ShardOutcome:
    nodeid = f"tests/test_{req.shard.replace('-', '_')}.py::test_it"
    recs = [{"event": "start"}, {"event": "collected", "nodeids": [nodeid]}, *phases(nodeid, "failed")]
    recs.append({"event": "end"})
    return ShardOutcome(req.cell_id, req.shard, req.attempt, 1, report=jsonl(recs))


def cell(cid: str, cpus: float = 1.0, gpus: float = 0.0, runs_on: str = "", executor: str = "docker") -> Cell:
    return Cell(
        id=cid,
        values=(("python", cid),),
        base="python:3.11-slim",
        bootstrap=None,
        install=(),
        build_args=(),
        command=("python", "-m", "pytest"),
        resources=Resources(cpus=cpus, gpus=gpus),
        runs_on=runs_on,
        executor=executor,
    )


def prototype(c: Cell) -> ShardRequest:
    return request_shape(c)  # what placement reads; the fake runs nothing else of a request


def shards_of(cid: str, predicted: list[float]) -> list[Shard]:
    n = len(predicted)
    return [Shard(cid, i + 1, n, (f"tests/test_shard_{i + 1}of{n}.py",), predicted=p) for i, p in enumerate(predicted)]


def make(
    cells: list[Cell],
    plan: dict[str, list[float]],
    transport: FakeTransport,
    **kwargs: Any,
) -> tuple[Scheduler, RecordingView]:
    view = RecordingView()
    sched = Scheduler(
        {cid: shards_of(cid, p) for cid, p in plan.items()},
        cells,
        {c.id: prototype(c) for c in cells},
        transport,
        view,
        **kwargs,
    )
    return sched, view


def drive(sched: Scheduler, cells: Iterable[str], limit: int = 200) -> None:
    sched.check_capacity()
    for cid in cells:
        sched.ready(cid)
    for _ in range(limit):
        if sched.finished:
            return
        sched.step(timeout=0)
    raise AssertionError("the scheduler never finished")


TWO_CPUS = [Node("n1", cpus=2)]


def test_priority_is_longest_predicted_shard_across_the_matrix() -> None:
    transport = FakeTransport([Node("n1", cpus=1)], passing)
    sched, _ = make([cell("a"), cell("b")], {"a": [1.0, 5.0], "b": [3.0]}, transport)
    drive(sched, ["a", "b"])
    order = [(r.cell_id, r.shard) for r in transport.submitted]
    assert order == [("a", "shard-2of2"), ("b", "shard-1of1"), ("a", "shard-1of2")]
    assert {sched.cell_result(c).status for c in ("a", "b")} == {Status.PASSED}


def test_capacity_bounds_what_runs_at_once() -> None:
    transport = FakeTransport(TWO_CPUS, passing)
    sched, _ = make([cell("a")], {"a": [1.0] * 6}, transport)
    drive(sched, ["a"])
    assert len(transport.submitted) == 6
    assert transport.most_at_once == 2


def test_max_parallel_caps_below_capacity() -> None:
    transport = FakeTransport([Node("n1", cpus=8)], passing)
    sched, _ = make([cell("a")], {"a": [1.0] * 5}, transport, max_parallel=1)
    drive(sched, ["a"])
    assert transport.most_at_once == 1


def test_shards_that_need_two_cpus_take_two_slots() -> None:
    transport = FakeTransport([Node("n1", cpus=4)], passing)
    sched, _ = make([cell("a", cpus=2)], {"a": [1.0] * 4}, transport)
    drive(sched, ["a"])
    assert transport.most_at_once == 2


def test_a_failed_test_is_rerun_and_a_pass_then_makes_it_flaky() -> None:
    def script(req: ShardRequest) -> ShardOutcome:
        return failing(req) if req.attempt == 1 else passing(req)

    transport = FakeTransport(TWO_CPUS, script)
    sched, _ = make([cell("a")], {"a": [1.0]}, transport, flaky_retries=2)
    drive(sched, ["a"])
    assert [(r.attempt, r.rerun, r.only) for r in transport.submitted] == [
        (1, False, ()),
        (2, True, ("tests/test_shard_1of1.py::test_it",)),
    ]
    assert sched.cell_result("a").status is Status.FLAKY


def test_fail_fast_cancels_running_queued_and_waiting_cells_after_the_reruns() -> None:
    transport = FakeTransport(TWO_CPUS, failing, auto=False)
    sched, view = make([cell("a"), cell("b"), cell("c")], {"a": [5.0], "b": [1.0, 1.0], "c": [1.0]}, transport)
    sched.check_capacity()
    sched.ready("a")
    sched.ready("b")  # c's image is still being built
    sched.step(timeout=0)
    assert [r.cell_id for r in transport.submitted] == ["a", "b"]
    transport.finish(0)  # a fails; with no rerun budget that failure is confirmed
    sched.step(timeout=0)
    assert sched.fail_fast_by == "a"
    assert sched.cancelled
    sched.step(timeout=0)  # the transport reports b's shard as cancelled
    assert sched.finished
    assert [r.cell_id for r in transport.cancelled] == ["b"]
    sched.ready("c")  # the image arrives after fail-fast struck: nothing of c runs
    sched.step(timeout=0)
    assert len(transport.submitted) == 2
    assert sched.cell_result("a").status is Status.FAILED
    assert sched.cell_result("b").status is Status.CANCELLED
    assert sched.cell_result("c").status is Status.CANCELLED
    assert "cancelled by fail-fast: a failed" in sched.cell_result("c").reason
    assert any(e[0] == "note" and "strategy.fail-fast: false" in e[1] for e in view.events)


def test_fail_fast_waits_for_the_reruns_of_a_flaky_failure() -> None:
    def script(req: ShardRequest) -> ShardOutcome:
        return failing(req) if (req.cell_id, req.attempt) == ("a", 1) else passing(req)

    transport = FakeTransport(TWO_CPUS, script)
    sched, _ = make([cell("a"), cell("b")], {"a": [5.0], "b": [1.0]}, transport, flaky_retries=1)
    drive(sched, ["a", "b"])
    assert not sched.cancelled
    assert sched.cell_result("a").status is Status.FLAKY
    assert sched.cell_result("b").status is Status.PASSED


def test_without_fail_fast_every_cell_runs() -> None:
    transport = FakeTransport(TWO_CPUS, failing)
    sched, _ = make([cell("a"), cell("b")], {"a": [1.0], "b": [1.0]}, transport, fail_fast=False)
    drive(sched, ["a", "b"])
    assert {sched.cell_result(c).status for c in ("a", "b")} == {Status.FAILED}


def test_interrupt_stops_submitting_and_stop_cancels_what_runs() -> None:
    transport = FakeTransport(TWO_CPUS, passing, auto=False)
    sched, _ = make([cell("a")], {"a": [1.0] * 4}, transport)
    sched.check_capacity()
    sched.ready("a")
    sched.step(timeout=0)
    assert len(transport.submitted) == 2
    sched.interrupt()
    sched.step(timeout=0)
    sched.stop()
    assert len(transport.submitted) == 2
    assert len(transport.cancelled) == 2
    result = sched.cell_result("a")
    assert result.status is Status.CANCELLED
    assert result.reason == "interrupted"


def test_a_request_the_transport_gave_up_on_is_infra_and_final() -> None:
    def script(req: ShardRequest) -> ShardOutcome:
        raise RuntimeError("node lost after 2 retries")

    transport = FakeTransport(TWO_CPUS, script)
    sched, _ = make([cell("a")], {"a": [1.0]}, transport, infra_retries=2)
    drive(sched, ["a"])
    assert len(transport.submitted) == 1  # the transport's own retries were spent: no second layer on top
    result = sched.cell_result("a")
    assert result.status is Status.INFRA
    assert "node lost" in result.reason


def test_losing_the_transport_keeps_finished_shards_and_reports_the_rest_as_infra() -> None:
    transport = FakeTransport([Node("n1", cpus=1)], passing, auto=False)
    sched, _ = make([cell("a")], {"a": [3.0, 2.0, 1.0]}, transport)
    sched.check_capacity()
    sched.ready("a")
    sched.step(timeout=0)
    transport.finish(0)
    sched.step(timeout=0)  # shard 1 done
    sched.step(timeout=0)  # shard 2 now runs
    assert len(transport.running) == 1
    sched.lose("the embedded Ray was lost")
    assert sched.finished
    result = sched.cell_result("a")
    kinds = sorted(str(a.kind) for a in result.attempts)
    assert kinds == ["infra", "infra", "ok"]
    assert result.status is Status.INFRA
    sched.stop()
    assert transport.cancelled == []  # nothing is asked of a lost transport
    assert len(transport.running) == 1


def test_cells_no_node_can_serve_are_no_capacity_up_front_and_the_rest_run() -> None:
    nodes = [Node("cpu", cpus=2, labels=frozenset({"linux"})), Node("gpu", cpus=4, gpus=1, labels=frozenset({"linux"}))]
    cells = [cell("lin", runs_on="linux"), cell("mac", runs_on="macos-14"), cell("big", gpus=2), cell("g", gpus=1)]
    transport = FakeTransport(nodes, passing)
    sched, view = make(cells, {c.id: [1.0] for c in cells}, transport)
    drive(sched, ["lin", "g"])
    assert sched.cell_result("mac").status is Status.NO_CAPACITY
    assert "no node has the label 'macos-14'" in sched.cell_result("mac").reason
    assert sched.cell_result("big").status is Status.NO_CAPACITY
    assert "2 GPU(s)" in sched.cell_result("big").reason
    assert {r.cell_id for r in transport.submitted} == {"lin", "g"}
    assert ("cell", "mac", "no_capacity") in view.events


def test_cpu_shards_keep_off_gpu_nodes_when_cpu_nodes_exist() -> None:
    nodes = [Node("cpu", cpus=1), Node("gpu", cpus=4, gpus=1)]
    transport = FakeTransport(nodes, passing, auto=False)
    sched, _ = make([cell("a"), cell("g", gpus=1)], {"a": [1.0] * 3, "g": [1.0]}, transport)
    sched.check_capacity()
    sched.ready("a")
    sched.ready("g")
    sched.step(timeout=0)
    # one CPU shard on the CPU node, the GPU shard on the GPU node; the other CPU shards wait for the CPU node
    assert sorted(r.cell_id for r in transport.submitted) == ["a", "g"]


def test_docker_cells_need_a_node_with_an_engine_host_cells_do_not() -> None:
    nodes = [Node("mac", cpus=2, labels=frozenset({"macos"}), docker=False)]
    d, h = cell("d", runs_on="macos"), cell("h", runs_on="macos", executor="host")
    assert "Docker engine" in why_unservable(nodes, prototype(d))
    assert why_unservable(nodes, prototype(h)) == ""
    assert eligible(nodes, prototype(h)) == nodes


@pytest.mark.parametrize("shards", [1, 3])
def test_each_request_carries_the_cells_fields_and_its_shards_own(shards: int) -> None:
    transport = FakeTransport(TWO_CPUS, passing)
    transport._nodes = [Node("n1", cpus=2, labels=frozenset({"linux"}))]
    sched, _ = make([cell("a", runs_on="linux")], {"a": [1.0] * shards}, transport)
    drive(sched, ["a"])
    first = next(r for r in transport.submitted if r.shard == f"shard-1of{shards}")
    assert first.runs_on == "linux"
    assert first.attempt == 1
    assert first.complement  # the first shard takes every file no other shard names
    assert set(first.files) == {f"tests/test_shard_{i}of{shards}.py" for i in range(2, shards + 1)}


def test_a_quarantined_failure_never_sets_off_fail_fast() -> None:
    transport = FakeTransport(TWO_CPUS, failing)
    sched, _ = make(
        [cell("a"), cell("b")],
        {"a": [5.0], "b": [1.0]},
        transport,
        held=lambda c, test: test.first.nodeid == "tests/test_shard_1of1.py::test_it" and c.id == "a",
    )
    drive(sched, ["a", "b"])
    assert sched.fail_fast_by == "b"  # a's failure is held; b's is not, and it is the one that fired
    assert sched.cell_result("a").status is Status.FAILED  # quarantine.apply decides the reported status later


def test_a_cell_ready_on_some_nodes_runs_only_there_until_more_are_ready() -> None:
    nodes = [Node("a1", cpus=1), Node("b1", cpus=1)]
    transport = FakeTransport(nodes, passing, auto=False)
    sched, _ = make([cell("a")], {"a": [1.0] * 4}, transport)
    sched.check_capacity()
    sched.ready("a", "a1")
    sched.step(timeout=0)
    sched.step(timeout=0)
    # b1 has room but not the image: one shard at a time, on a1
    assert transport.sent_to == ["a1"]
    sched.ready("a", "b1")
    sched.step(timeout=0)
    assert transport.sent_to == ["a1", "b1"]
    transport.auto = True
    for _ in range(20):
        if sched.finished:
            break
        sched.step(timeout=0)
    assert sched.cell_result("a").status is Status.PASSED
    assert set(transport.sent_to) == {"a1", "b1"}


def test_when_no_node_holding_the_image_is_alive_any_eligible_node_serves() -> None:
    transport = FakeTransport([Node("b1", cpus=1)], passing)
    sched, _ = make([cell("a")], {"a": [1.0, 1.0]}, transport)
    sched.check_capacity()
    sched.ready("a", "gone")  # ready on a node that has left the cluster since
    for _ in range(20):
        if sched.finished:
            break
        sched.step(timeout=0)
    assert transport.sent_to == ["b1", "b1"]
    assert sched.cell_result("a").status is Status.PASSED


def test_an_infra_rerun_goes_to_another_node_when_there_is_one() -> None:
    def script(req: ShardRequest) -> ShardOutcome:
        out = passing(req)
        if req.attempt == 1:
            return ShardOutcome(req.cell_id, req.shard, 1, None, infra_error="docker: gone", node_id="n1")
        return out

    transport = FakeTransport([Node("n1", cpus=1), Node("n2", cpus=1)], script)
    sched, _ = make([cell("a")], {"a": [1.0]}, transport, infra_retries=1)
    drive(sched, ["a"])
    assert transport.sent_to == ["n1", "n2"]
