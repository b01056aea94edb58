"""This machine as a run's one node, without Ray: the transport of a run that joins no cluster.

A run on one machine has nothing to place: Ray's embedded cluster of one node cost it 4-6 s of start and stop
(GCS, raylet, dashboard, agents and prestarted workers on every run) and about 3 CPU-seconds that the first shards
waited for. So a run without a cluster drives ``MachineTransport``: the same scheduler, requests, executors and
outcomes as on a cluster, each shard attempt in a thread of the coordinator (an executor mostly waits: on its
container, or on its process group). Ray is the transport once there is a cluster (cluster.py): ``matrix-run
cluster up``, ``--address``/``RAY_ADDRESS``, ``--submit``; ``--address embedded`` starts a Ray of the run's own.

What the scheduler sees of this machine (``this_node``) is what an embedded Ray's node would advertise: its CPUs,
its NVIDIA GPUs (``CUDA_VISIBLE_DEVICES`` honoured, as Ray does) and their accelerator type, its platform and
``MATRIX_RUN_LABELS`` labels, whether its Docker engine answers.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import platform
import re
import shutil
import subprocess
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field

from runner.execution import Executor, ShardOutcome, ShardRequest
from runner.executors import executor_for
from runner.scheduler import LABEL_RESOURCE, Node

NODE_ID = "local"  # this machine's node id in results.json (a cluster's nodes have Ray's hex ids)
_GPU_NAME = re.compile(r"\w+\s+([A-Z0-9]+)")  # "NVIDIA H100 80GB HBM3" -> "H100", as Ray names accelerator types


def local_labels() -> dict[str, float]:
    """The labels this machine advertises: its platform (linux, macos, windows) and those in MATRIX_RUN_LABELS
    (comma-separated), as ``runs-on:L`` resources (what an embedded Ray's node, or `cluster up`, gives Ray)."""
    names = {"darwin": "macos"}.get(platform.system().lower(), platform.system().lower())
    labels = [names, *(x.strip() for x in os.environ.get("MATRIX_RUN_LABELS", "").split(","))]
    return {f"{LABEL_RESOURCE}{label}": 1000.0 for label in labels if label}


@dataclass(frozen=True)
class Gpus:
    """This machine's GPUs a run may use: their ids (as CUDA_VISIBLE_DEVICES names them) and accelerator types."""

    ids: tuple[str, ...] = ()
    types: frozenset[str] = frozenset()


def parse_gpus(listing: str, visible: str | None) -> Gpus:
    """``nvidia-smi --query-gpu=index,name --format=csv,noheader`` output -> the GPUs a run may use, narrowed to
    ``visible`` (CUDA_VISIBLE_DEVICES, when set: indices; "" or "NoDevFiles" hide every GPU)."""
    found: dict[str, str] = {}
    for line in listing.splitlines():
        index, _, name = (part.strip() for part in line.partition(","))
        if index.isdigit():
            found[index] = name
    if visible is not None:
        wanted = [v.strip() for v in visible.split(",") if v.strip()]
        found = {i: found[i] for i in wanted if i in found}
    types = {m.group(1) for name in found.values() if (m := _GPU_NAME.match(name))}
    return Gpus(tuple(found), frozenset(types))


def detect_gpus() -> Gpus:
    """This machine's NVIDIA GPUs, through nvidia-smi (none without it, or when it fails)."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return Gpus()
    try:
        proc = subprocess.run(
            [smi, "--query-gpu=index,name", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return Gpus()
    if proc.returncode != 0:
        return Gpus()
    return parse_gpus(proc.stdout, os.environ.get("CUDA_VISIBLE_DEVICES"))


def this_node(docker: bool, gpus: Gpus | None = None) -> Node:
    """This machine as the scheduler's one node."""
    gpus = detect_gpus() if gpus is None else gpus
    labels = frozenset(k[len(LABEL_RESOURCE) :] for k in local_labels())
    return Node(NODE_ID, float(os.cpu_count() or 1), float(len(gpus.ids)), labels, docker, gpus.types)


@dataclass(eq=False)  # a handle is a dict key of the scheduler's: equal to itself alone
class Attempt:
    """One shard attempt running in a thread of this process: the transport's handle for it."""

    request: ShardRequest
    future: Future[ShardOutcome] = field(default_factory=Future)
    gpu_ids: tuple[str, ...] = ()
    cancelled: bool = False


class MachineTransport:
    """The scheduler's Transport on this machine alone: one thread per shard attempt, running its executor.

    The scheduler never submits more than the node has room for, so nothing queues here. GPUs are handed out by
    id from this machine's own, as Ray would assign them. ``cancel`` reports an attempt as cancelled at once and
    ends it through its executor (its container removed, its process group killed); ``close`` waits for every
    thread to end, ending again what a cancelled attempt started meanwhile, so nothing outlives the run."""

    def __init__(
        self,
        tarball: bytes,
        docker: bool,
        gpus: Gpus | None = None,
        executors: Callable[[str], Executor] = executor_for,
    ) -> None:
        self.tarball = tarball
        self.executors = executors  # an executor by name (the tests hand a fake one in)
        self.gpus = detect_gpus() if gpus is None else gpus
        self.node = this_node(docker, self.gpus)
        self._gpu_left = {g: 1.0 for g in self.gpus.ids}  # device id -> the share of it not handed out
        self._lock = threading.Lock()
        self._live: set[Attempt] = set()

    # ------------------------------------------------------------------------------------------ Transport

    def submit(self, request: ShardRequest, avoid_node: str = "", node: str = "") -> Attempt:
        attempt = Attempt(request, gpu_ids=self._take_gpus(request.resources.gpus))
        with self._lock:
            self._live.add(attempt)
        name = f"matrix-run-shard-{request.cell_id[:40]}/{request.shard}/{request.attempt}"
        threading.Thread(target=self._run, args=(attempt,), name=name, daemon=True).start()
        return attempt

    def completed(self, handles: list[Attempt], timeout: float) -> Iterator[tuple[Attempt, ShardOutcome | None, str]]:
        if not handles:
            time.sleep(timeout)
            return
        if not any(h.cancelled for h in handles):  # a cancelled one is reported at once, as Ray reports it
            wait([h.future for h in handles], timeout=timeout, return_when=FIRST_COMPLETED)
        for h in handles:
            if h.cancelled:
                yield h, None, "cancelled"
            elif h.future.done():
                exc = h.future.exception()
                if exc is None:
                    yield h, h.future.result(), ""
                else:  # a bug in the executor: its traceback goes with the attempt
                    lines = "".join(traceback.format_exception(exc)).strip()
                    yield h, None, f"executor: {exc.__class__.__name__}: {exc}\n{lines}"[:4000]

    def cancel(self, handles: list[Attempt]) -> None:
        for h in handles:
            if not h.future.done():
                h.cancelled = True
                self._stop(h)

    def nodes(self) -> list[Node]:
        return [self.node]

    def here(self) -> str:
        return NODE_ID

    def close(self, timeout: float = 120.0) -> None:
        """At the run's end: stop every attempt still running (a cancelled one may have started its container since
        it was stopped), again until its thread has ended."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                live = [a for a in self._live if not a.future.done()]
            if not live or time.monotonic() > deadline:
                return
            for attempt in live:
                self._stop(attempt)
            wait([a.future for a in live], timeout=0.5)

    # ------------------------------------------------------------------------------------------ threads

    def _take_gpus(self, amount: float) -> tuple[str, ...]:
        """Device ids for ``amount`` GPUs (the scheduler made sure they are free): whole devices for 1 or more, a
        device with that much left for a fraction, as Ray assigns them."""
        if amount <= 0:
            return ()
        with self._lock:
            if amount < 1:
                ids = [g for g, left in self._gpu_left.items() if left >= amount - 1e-9][:1]
            else:
                ids = [g for g, left in self._gpu_left.items() if left >= 1 - 1e-9][: math.ceil(amount)]
            for g in ids:
                self._gpu_left[g] -= min(amount, 1.0)
            return tuple(ids)

    def _give_back(self, ids: tuple[str, ...], amount: float) -> None:
        with self._lock:
            for g in ids:
                self._gpu_left[g] += min(amount, 1.0)

    def _run(self, attempt: Attempt) -> None:
        outcome: ShardOutcome | None = None
        error: BaseException | None = None
        try:
            outcome = self.executors(attempt.request.executor).run(attempt.request, self.tarball, attempt.gpu_ids)
            outcome = dataclasses.replace(outcome, node_id=NODE_ID)
        except BaseException as exc:  # handed to the scheduler with its traceback
            error = exc
        finally:  # its GPUs are free before the scheduler hears of the outcome and fills the slot
            self._give_back(attempt.gpu_ids, attempt.request.resources.gpus)
            with self._lock:
                self._live.discard(attempt)
        if error is not None:
            attempt.future.set_exception(error)
        else:
            attempt.future.set_result(outcome)  # type: ignore[arg-type]

    def _stop(self, attempt: Attempt) -> None:
        with contextlib.suppress(Exception):
            self.executors(attempt.request.executor).stop(attempt.request)
