"""Which shard attempt runs next, and what its outcome means for the rest of the run. Pure: no Docker, no Ray.

The scheduler holds the run's mutable state (shards queued, running, done; the attempts each produced) and drives
a ``Transport`` (cluster.py's Ray transport in a run; a hand-written fake in the tests), which places each
``ShardRequest`` on a node where its ``Executor`` runs it. What the scheduler decides:

- the order: reruns first (they hold a cell back), then the longest predicted shard across the matrix (LPT);
- admission: a shard is handed over only when a node that may take it (its ``runs-on`` label, GPUs; CPU-only
  shards keep to nodes without GPUs when there are any) has room now, and within ``max-parallel``, so that the
  transport never queues work and fail-fast or Ctrl-C have little to cancel;
- cells that no alive node can serve are ``no_capacity`` before anything runs; nothing waits for them;
- after each outcome: a rerun of the failed tests (retry.py decides), or the shard is done; a confirmed failure
  under fail-fast cancels the rest.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from runner.execution import ShardOutcome, ShardRequest
from runner.matrix import Cell
from runner.plan import Shard
from runner.progress import View
from runner.results import BAD, Attempt, CellResult, Status, TestHistory, cell_status, evaluate, fold
from runner.retry import Budget, decide

LABEL_RESOURCE = "runs-on:"  # a node advertises label L as the Ray custom resource "runs-on:L"
GPU_TYPE_RESOURCE = "accelerator_type:"  # Ray's resource for a node's GPU type ("accelerator_type:H100")
CAPACITY_REFRESH = 2.0  # seconds between looks at the nodes: they come and go


@dataclass(frozen=True)
class Node:
    """One alive node as the transport sees it: what it offers, and the labels it advertises."""

    node_id: str
    cpus: float
    gpus: float = 0.0
    labels: frozenset[str] = frozenset()
    docker: bool = True  # the node has a Docker engine that answers (the docker executor needs one)
    gpu_types: frozenset[str] = frozenset()  # its GPUs' accelerator types, from Ray's "accelerator_type:T"


class Transport(Protocol):
    """Places shard requests on nodes and reports their outcomes in completion order (cluster.py: Ray)."""

    def submit(self, request: ShardRequest, avoid_node: str = "", node: str = "") -> Any:
        """Start ``request`` on ``node`` (the scheduler's choice; "" = any node that can take it, preferring one
        other than ``avoid_node``); a handle for ``completed`` and ``cancel``."""
        ...

    def completed(self, handles: list[Any], timeout: float) -> Iterable[tuple[Any, ShardOutcome | None, str]]:
        """(handle, outcome, error) for handles that finished within ``timeout``; outcome None means error says why
        (``"cancelled"``, or the transport gave up: a node lost after its retries)."""
        ...

    def cancel(self, handles: list[Any]) -> None: ...

    def nodes(self) -> list[Node]:
        """The alive nodes, now."""
        ...


@dataclass
class ShardState:
    shard: Shard
    cell: Cell
    budget: Budget
    attempts: list[Attempt] = field(default_factory=list)
    next_attempt: int = 1
    done: bool = False
    cancelled: bool = False
    started: float = 0.0
    ended: float = 0.0


# (rank, -predicted seconds, sequence, shard, node ids to select, node to avoid)
QueueEntry = tuple[int, float, int, ShardState, tuple[str, ...], str]


def request_shape(cell: Cell) -> ShardRequest:
    """A request with just what placement reads (resources, label, executor): for --dry-run, before any image."""
    from runner.images import ImageSpec

    return ShardRequest(
        run_id="",
        cell_id=cell.id,
        shard="",
        attempt=0,
        image=ImageSpec(base=cell.base),
        command=cell.command,
        files=(),
        resources=cell.resources,
        executor=cell.executor,
        runs_on=cell.runs_on,
    )


def may_take(node: Node, request: ShardRequest) -> bool:
    """Whether ``node`` may run ``request`` at all (room aside)."""
    res = request.resources
    if request.runs_on and request.runs_on not in node.labels:
        return False
    if request.executor == "docker" and not node.docker:
        return False
    if res.gpu_type and res.gpu_type not in node.gpu_types:
        return False
    return node.gpus + 1e-9 >= res.gpus and node.cpus + 1e-9 >= res.cpus


def eligible(nodes: list[Node], request: ShardRequest) -> list[Node]:
    """The nodes a request may go to; CPU-only shards keep to nodes without GPUs when any of those may take it."""
    fit = [n for n in nodes if may_take(n, request)]
    if not request.resources.gpus:
        plain = [n for n in fit if not n.gpus]
        return plain or fit
    return fit


def why_unservable(nodes: list[Node], request: ShardRequest) -> str:
    """Why no alive node can ever serve ``request`` ("" when one can): the first thing missing, by name."""
    if eligible(nodes, request):
        return ""
    res = request.resources
    if not nodes:
        return "no alive node"
    if request.runs_on:
        nodes, have = _narrow(nodes, request.runs_on, lambda n: n.labels)
        if not nodes:
            return (
                f"no node has the label {request.runs_on!r} (runs-on; a node advertises it as the Ray resource "
                f"'{LABEL_RESOURCE}{request.runs_on}'); labels on this cluster: {have}"
            )
    if res.gpu_type:
        nodes, have = _narrow(nodes, res.gpu_type, lambda n: n.gpu_types)
        if not nodes:
            return (
                f"no node has GPUs of type {res.gpu_type!r} (resources.gpu-type; Ray advertises a node's GPU type "
                f"as the resource '{GPU_TYPE_RESOURCE}{res.gpu_type}'); GPU types on this cluster: {have}"
            )
    if res.gpus:
        most = max(n.gpus for n in nodes)
        if most + 1e-9 < res.gpus:
            return f"needs {res.gpus:g} GPU(s) per shard; the most any node has is {most:g}"
    if request.executor == "docker" and not any(n.docker for n in nodes):
        return "no node has a Docker engine that answers (the docker executor needs one; executor: host needs none)"
    most_cpus = max(n.cpus for n in nodes)
    return f"needs {res.cpus:g} CPU(s) per shard; the most any node offers is {most_cpus:g}"


def _narrow(nodes: list[Node], want: str, tags: Callable[[Node], frozenset[str]]) -> tuple[list[Node], str]:
    """The nodes whose ``tags`` hold ``want``; when none does, also what the nodes hold instead (joined)."""
    having = [n for n in nodes if want in tags(n)]
    return having, "" if having else ", ".join(sorted({t for n in nodes for t in tags(n)}) or ["none"])


def _with_room(options: list[Node], free: dict[str, list[float]], request: ShardRequest) -> Node | None:
    """The first of ``options`` with room for ``request`` now, given ``free`` [cpus, gpus] per node."""
    res = request.resources
    for node in options:
        cpus, gpus = free[node.node_id]
        if cpus + 1e-9 >= res.cpus and gpus + 1e-9 >= res.gpus:
            return node
    return None


def _take(free: dict[str, list[float]], node: Node, request: ShardRequest) -> None:
    free[node.node_id][0] -= request.resources.cpus
    free[node.node_id][1] -= request.resources.gpus


def _room(nodes: list[Node], running: list[tuple[ShardRequest, str]]) -> dict[str, list[float]]:
    """Free [cpus, gpus] per node once ``running`` (request, node it was sent to) is accounted for; a request sent
    to no node in particular, or to one gone since, is placed first-fit, as the transport would."""
    free = {n.node_id: [n.cpus, n.gpus] for n in nodes}
    by_id = {n.node_id: n for n in nodes}
    for req, node_id in running:
        if node_id in by_id:
            _take(free, by_id[node_id], req)
            continue
        options = eligible(nodes, req)
        if options:
            _take(free, _with_room(options, free, req) or options[0], req)
    return free


class Scheduler:
    """The run's shards from queued to done, through a ``Transport``. Call ``ready`` (a cell's image is there, on
    one node or on all), ``fail_cell`` (it never will be) and ``step`` until ``finished``; ``cell_result`` then says
    what each cell did. A cell ready on some nodes only has its shards placed on those nodes (an image missing on a
    node would be built there by the shard, holding a test slot), unless none of them is alive any more.

    ``prototypes`` holds one request per cell with every cell-level field filled in; the scheduler fills in the
    shard's own part (files, selection, attempt) for each submission.
    """

    def __init__(
        self,
        shards: dict[str, list[Shard]],
        cells: list[Cell],
        prototypes: dict[str, ShardRequest],
        transport: Transport,
        view: View,
        *,
        max_parallel: int = 0,
        fail_fast: bool = True,
        flaky_retries: int = 0,
        infra_retries: int = 2,
        timeout: float = 1800.0,
        on_outcome: Callable[[ShardOutcome], None] = lambda outcome: None,
        held: Callable[[Cell, TestHistory], bool] = lambda cell, test: False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cells = {c.id: c for c in cells}
        self.prototypes = prototypes
        self.transport = transport
        self.view = view
        self.max_parallel = max_parallel
        self.fail_fast = fail_fast
        self.timeout = timeout
        self.on_outcome = on_outcome  # raw outputs are saved as they arrive: nothing produced is lost later
        self.held = held  # a quarantined test: its failure never triggers fail-fast
        self.clock = clock
        self.states: dict[str, list[ShardState]] = {
            cid: [ShardState(s, self.cells[cid], Budget(flaky_retries, infra_retries)) for s in ss]
            for cid, ss in shards.items()
            if cid in self.cells  # cells served by --cache have a plan but do not run
        }
        self.waiting = set(self.states)  # cells whose image is not there yet
        self.ready_on: dict[str, set[str] | None] = {}  # cell -> nodes holding its image (None: every node)
        self.errors: dict[str, str] = {}  # cell -> why it could not run (image build failed)
        self.unservable: dict[str, str] = {}  # cell -> why no node can serve it (no_capacity)
        self.queue: list[QueueEntry] = []
        self.seq = itertools.count()
        self.inflight: dict[Any, tuple[ShardState, ShardRequest, tuple[str, ...]]] = {}
        self.placed: dict[Any, str] = {}  # handle -> the node it was sent to
        self.submitted: dict[Any, float] = {}
        self.cancelled = False
        self.interrupted = False
        self.fail_fast_by = ""
        self.lost = ""  # why the transport was lost; then nothing is asked of it again
        self.finished_cells: set[str] = set()
        self._nodes: list[Node] = []
        self._nodes_at = float("-inf")

    # ------------------------------------------------------------------------------------------------ inputs

    def check_capacity(self) -> dict[str, str]:
        """Before anything runs: mark every cell that no alive node can serve as ``no_capacity``. Returns them."""
        nodes = self._alive_nodes(force=True)
        for cid in list(self.states):
            why = why_unservable(nodes, self.prototypes[cid])
            if why:
                self.unservable[cid] = why
                self.waiting.discard(cid)
                self.view.cell(cid, str(Status.NO_CAPACITY), {}, why)
                self.finished_cells.add(cid)
        return dict(self.unservable)

    def ready(self, cell_id: str, node_id: str | None = None) -> None:
        """The cell's image is there (on ``node_id``; None: wherever its shards go, e.g. a host cell, whose
        environment each node makes): queue its shards on the first call (or cancel them, when fail-fast struck
        meanwhile); later calls add nodes its shards may go to."""
        if node_id is None:
            self.ready_on[cell_id] = None
        else:
            nodes = self.ready_on.setdefault(cell_id, set())
            if nodes is not None:
                nodes.add(node_id)
        if cell_id not in self.waiting:
            return
        self.waiting.discard(cell_id)
        for state in self.states[cell_id]:
            if self.cancelled:
                state.cancelled = True
            else:
                self._enqueue(state, ())
        if self.cancelled:
            self._finish_cell(cell_id)

    def fail_cell(self, cell_id: str, reason: str) -> None:
        """The cell cannot run at all (its image could not be built): an ``error`` with ``reason``."""
        self.waiting.discard(cell_id)
        self.errors[cell_id] = reason
        self._finish_cell(cell_id)

    @property
    def finished(self) -> bool:
        """Nothing runs and nothing will: all done, or fail-fast struck (what is queued or waiting is cancelled)."""
        return not self.inflight and (self.cancelled or self.interrupted or (not self.queue and not self.waiting))

    # ------------------------------------------------------------------------------------------------ the loop

    def step(self, timeout: float = 0.2) -> None:
        """Submit what fits, then take the outcomes that arrive within ``timeout``."""
        if not self.cancelled and not self.interrupted:
            self._submit_what_fits()
        if self.finished:
            return
        for handle, outcome, error in self.transport.completed(list(self.inflight), timeout):
            self._handle(handle, outcome, error)
            if self.interrupted:
                break

    def _alive_nodes(self, force: bool = False) -> list[Node]:
        now = self.clock()
        if force or now - self._nodes_at > CAPACITY_REFRESH:
            self._nodes = self.transport.nodes()
            self._nodes_at = now
        return self._nodes

    def _enqueue(self, state: ShardState, select: tuple[str, ...], avoid_node: str = "") -> None:
        rank = 0 if state.next_attempt > 1 else 1
        heapq.heappush(self.queue, (rank, -state.shard.predicted, next(self.seq), state, select, avoid_node))

    def _submit_what_fits(self) -> None:
        if not self.queue:
            return
        nodes = self._alive_nodes()
        free = _room(nodes, [(req, self.placed.get(h, "")) for h, (_, req, _) in self.inflight.items()])
        deferred = []
        while self.queue:
            if self.max_parallel and len(self.inflight) >= self.max_parallel:
                break
            entry = heapq.heappop(self.queue)
            req = self.prototypes[entry[3].cell.id]
            place = _with_room(self._options(nodes, req, entry[5]), free, req)
            if place is None:
                deferred.append(entry)
                continue
            _take(free, place, req)
            self._submit(entry, place.node_id)
        for entry in deferred:
            heapq.heappush(self.queue, entry)

    def _options(self, nodes: list[Node], req: ShardRequest, avoid_node: str) -> list[Node]:
        """Where a shard of ``req``'s cell may go now: eligible nodes holding its image (any eligible node when none
        of those is alive), other than ``avoid_node`` when there is another."""
        options = eligible(nodes, req)
        ready = self.ready_on.get(req.cell_id)
        if ready is not None:
            options = [n for n in options if n.node_id in ready] or options
        if avoid_node:
            options = [n for n in options if n.node_id != avoid_node] or options
        return options

    def request_for(self, state: ShardState, select: tuple[str, ...]) -> ShardRequest:
        """The cell's request with this shard's part: its files (the first shard takes every file no other shard
        names, so nothing can fall between), its node-id selection, or, for a rerun, just the tests to run again."""
        shard = state.shard
        files: tuple[str, ...]
        only: tuple[str, ...]
        skip: tuple[str, ...]
        if select:
            files, complement, only, skip = tuple(sorted({n.split("::", 1)[0] for n in select})), False, select, ()
        elif shard.index == 1:
            files, complement, only, skip = self._others_files(state), True, shard.only, shard.skip
        else:
            files, complement, only, skip = shard.files, False, shard.only, shard.skip
        return dataclasses.replace(
            self.prototypes[state.cell.id],
            shard=shard.slug,
            attempt=state.next_attempt,
            files=files,
            complement=complement,
            only=only,
            skip=skip,
            rerun=bool(select),
        )

    def _others_files(self, state: ShardState) -> tuple[str, ...]:
        """Files wholly run by the cell's other shards (a file split across shards stays with its parts)."""
        mine = set(state.shard.files)
        return tuple(sorted({f for s in self.states[state.cell.id] if s is not state for f in s.shard.files} - mine))

    def _submit(self, entry: QueueEntry, node: str) -> None:
        state, select, avoid_node = entry[3], entry[4], entry[5]
        req = self.request_for(state, select)
        state.next_attempt += 1
        if not state.started:
            state.started = self.clock()
        handle = self.transport.submit(req, avoid_node, node)
        self.inflight[handle] = (state, req, select)
        self.placed[handle] = node
        self.submitted[handle] = self.clock()
        self.view.shard(req.cell_id, req.shard, req.attempt, "running")

    # ------------------------------------------------------------------------------------------------ outcomes

    def _handle(self, handle: Any, outcome: ShardOutcome | None, error: str) -> None:
        if handle not in self.inflight:
            return
        state, req, select = self.inflight.pop(handle)
        self.placed.pop(handle, None)
        wall = self.clock() - self.submitted.pop(handle, self.clock())
        if outcome is None:
            if error == "cancelled":
                state.cancelled = True
                if all(s.done or s.cancelled for s in self.states[state.cell.id]):
                    self._finish_cell(state.cell.id)
                return
            # the transport gave up after its own retries (node or worker lost): final for this attempt
            self._record(state, ShardOutcome(req.cell_id, req.shard, req.attempt, None, infra_error=error))
            return
        self.on_outcome(outcome)
        att = evaluate(outcome, req.timeout)
        att.wall = wall
        att.planned = () if req.rerun else state.shard.files  # the files the plan gave the shard
        state.attempts.append(att)
        rerun = None if self.cancelled else decide(att, state.budget, select)
        passed = sum(c.status is Status.PASSED for c in att.cases)
        failed = sum(c.status in BAD for c in att.cases)
        if rerun is not None:
            self.view.shard(req.cell_id, req.shard, req.attempt, f"rerun ({', '.join(rerun.reasons)})", passed, failed)
            # an environment that broke once may break again: an infra rerun goes to another node if there is one
            self._enqueue(state, rerun.select, outcome.node_id if "infra" in rerun.reasons else "")
            return
        self._shard_done(state, att, passed, failed)

    def _record(self, state: ShardState, outcome: ShardOutcome) -> None:
        """An attempt that ended without running (lost node, lost cluster): saved and final."""
        self.on_outcome(outcome)
        att = evaluate(outcome, self.timeout)
        state.attempts.append(att)
        self._shard_done(state, att)

    def _shard_done(self, state: ShardState, att: Attempt, passed: int = 0, failed: int = 0) -> None:
        state.done = True
        state.ended = self.clock()
        cell_id = state.cell.id
        tests = fold(state.attempts)
        # a genuine failure: a test failed, errored or timed out on every attempt, or pytest itself could not run
        # the shard; flaky tests and a broken environment (infra) are not
        genuine = any(h.status in BAD and not self.held(state.cell, h) for h in tests.values()) or att.kind == "error"
        done = "failed" if genuine or att.kind not in ("ok", "no_tests") else "done"
        self.view.shard(cell_id, state.shard.slug, att.attempt, done, passed, failed)
        if all(s.done or s.cancelled for s in self.states[cell_id]):
            self._finish_cell(cell_id)
        if genuine and self.fail_fast and not self.cancelled and not self.lost:
            self.fail_fast_by = cell_id
            self.view.note(
                f"fail-fast: {cell_id} failed (after its reruns); cancelling the rest of the matrix "
                "(strategy.fail-fast: false runs every cell)"
            )
            self.cancel_rest()

    # ------------------------------------------------------------------------------------------------ endings

    def cancel_rest(self) -> None:
        """fail-fast: cancel what runs (the transport reports each as cancelled), drop what is queued or waiting."""
        self.cancelled = True
        if not self.lost:
            self.transport.cancel(list(self.inflight))
        for entry in self.queue:
            entry[3].cancelled = True
        self.queue.clear()
        for cid in list(self.waiting):
            for state in self.states[cid]:
                state.cancelled = True
            self.waiting.discard(cid)
            self._finish_cell(cid)

    def interrupt(self) -> None:
        """Ctrl-C or SIGTERM: stop submitting; ``stop`` cancels the rest."""
        self.interrupted = True

    def lose(self, why: str) -> None:
        """The transport is gone: every shard not finished gets an ``infra`` attempt saying so; finished ones keep
        their results. Nothing is asked of the transport again."""
        self.lost = why
        self.view.note(f"{why}: reporting the shards that finished, the rest as infra")
        inflight = list(self.inflight.values())
        self.inflight.clear()
        self.placed.clear()
        for state, req, _ in inflight:
            self._record(state, ShardOutcome(req.cell_id, req.shard, req.attempt, None, infra_error=f"ray: {why}"))
        self.queue.clear()
        for cid, states in self.states.items():
            if cid in self.errors or cid in self.unservable:
                continue
            for state in states:
                if (
                    not state.done
                    and not state.cancelled
                    and (not state.attempts or state.attempts[-1].kind != "infra")
                ):
                    outcome = ShardOutcome(cid, state.shard.slug, state.next_attempt, None, infra_error=f"ray: {why}")
                    self._record(state, outcome)
        self.waiting.clear()

    def stop(self) -> None:
        """At the end, on every path: cancel what still runs, mark what never ran as cancelled."""
        if self.inflight and not self.lost:
            self.transport.cancel(list(self.inflight))
        for state, _, _ in self.inflight.values():
            state.cancelled = True
        self.inflight.clear()
        self.placed.clear()
        self.queue.clear()
        for states in self.states.values():
            for state in states:
                state.cancelled = state.cancelled or not state.done

    # ------------------------------------------------------------------------------------------------ results

    def _finish_cell(self, cell_id: str) -> None:
        if cell_id in self.finished_cells:
            return
        self.finished_cells.add(cell_id)
        res = self.cell_result(cell_id)
        self.view.cell(cell_id, str(res.status), res.counts(), res.reason.splitlines()[0] if res.reason else "")

    def cell_result(self, cell_id: str, image: str = "") -> CellResult:
        cell = self.cells[cell_id]
        states = self.states[cell_id]
        attempts = [a for s in states for a in s.attempts]
        tests = fold(attempts)
        if cell_id in self.unservable:
            status, reason = Status.NO_CAPACITY, self.unservable[cell_id]
        elif cell_id in self.errors:
            status, reason = Status.ERROR, self.errors[cell_id]
        else:
            status, reason = cell_status(tests, attempts)
            if any(s.cancelled and not s.done for s in states) and status not in (Status.FAILED, Status.INFRA):
                status = Status.CANCELLED
                if self.interrupted:
                    reason = "interrupted"
                else:
                    reason = (
                        f"cancelled by fail-fast: {self.fail_fast_by} failed "
                        "(strategy.fail-fast: false runs every cell)"
                    )
        spans = [(s.started, s.ended or self.clock()) for s in states if s.started]
        duration = max(e for _, e in spans) - min(b for b, _ in spans) if spans else 0.0
        return CellResult(
            cell_id=cell_id,
            axes=cell.axes,
            status=status,
            reason=reason,
            tests=tests,
            attempts=attempts,
            duration=duration,
            image=image,
        )
