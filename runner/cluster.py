"""Ray: connect to a cluster or start an embedded one, the shard task, results in completion order.

The embedded local Ray is just a cluster of one node: local and distributed runs take the same path.
Node and worker loss are retried by Ray itself (``max_retries``); test failures come back as data.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from runner.container import ShardOutcome, ShardRequest, remove_run_containers, run_shard
from runner.errors import EnvironmentProblem


def execute_shard(request: ShardRequest, tarball: bytes) -> ShardOutcome:
    """The Ray task body: run one shard attempt in a container on whichever node Ray chose."""
    import ray

    gpu_ids = tuple(str(g) for g in ray.get_gpu_ids())
    outcome = run_shard(request, tarball, gpu_ids)
    return dataclasses.replace(outcome, node_id=ray.get_runtime_context().get_node_id())


def cleanup_node(run_id: str) -> int:
    """Remove this run's containers from the node this runs on."""
    return remove_run_containers(run_id)


@dataclass
class Cluster:
    """A connected Ray cluster; ``started`` when matrix-run started it (and so must stop it)."""

    address: str
    started: bool
    cpus: float
    gpus: float

    def slots(self, cpus_per_shard: float) -> int:
        return max(1, int(self.cpus // max(cpus_per_shard, 0.01)))


_remote_task: Any = None
_remote_cleanup: Any = None


def connect(address: str | None = None, num_cpus: int | None = None) -> Cluster:
    """Join ``address`` (or RAY_ADDRESS), else start an embedded local Ray; quiet, no dashboard."""
    import ray

    global _remote_task, _remote_cleanup
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address:
        _check_reachable(address)
    kwargs: dict[str, Any] = {
        "include_dashboard": False,
        "log_to_driver": False,
        "configure_logging": True,
        "logging_level": logging.ERROR,
    }
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    # ray.init replaces the SIGTERM handler (with sys.exit), and its core worker a C-level one: keep the caller's,
    # so SIGTERM stops the run the way Ctrl-C does (containers removed, partial reports, exit 2)
    main_thread = threading.current_thread() is threading.main_thread()
    sigterm = signal.getsignal(signal.SIGTERM) if main_thread else None
    try:
        if address:
            import runner

            kwargs.pop("include_dashboard")
            ray.init(address=address, runtime_env={"py_modules": [runner]}, **kwargs)
        else:
            ray.init(num_cpus=num_cpus, **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = address or "an embedded local Ray"
        raise EnvironmentProblem(
            f"Ray cluster not reachable at {where}: {str(exc).splitlines()[0][:160]}; "
            "check --address / RAY_ADDRESS, or omit it to run on an embedded local Ray"
        ) from None
    finally:
        if main_thread and sigterm is not None:
            signal.signal(signal.SIGTERM, sigterm)
    if _remote_task is None:
        _remote_task = ray.remote(execute_shard)
        _remote_cleanup = ray.remote(cleanup_node)
    res = ray.cluster_resources()
    return Cluster(
        address=address or "local",
        started=not address,
        cpus=float(res.get("CPU", 1)),
        gpus=float(res.get("GPU", 0)),
    )


def _other_node(avoid: str, cpus: float, gpus: float) -> Any:
    """A soft preference for an alive node other than ``avoid`` that can hold the shard; None if there is none."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    for node in ray.nodes():
        res = node.get("Resources", {})
        if node.get("Alive") and node["NodeID"] != avoid and res.get("CPU", 0) >= cpus and res.get("GPU", 0) >= gpus:
            return NodeAffinitySchedulingStrategy(node_id=node["NodeID"], soft=True)
    return None


def _check_reachable(address: str) -> None:
    """Fail in seconds, not after Ray's minute of retries, when nothing listens at host:port."""
    target = address.split("://", 1)[-1]
    host, sep, port = target.rpartition(":")
    if address == "auto" or not sep or not port.isdigit():
        return
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=5).close()
    except OSError as exc:
        raise EnvironmentProblem(
            f"Ray cluster not reachable at {address} ({exc.strerror or exc}); check --address / RAY_ADDRESS, "
            "or omit it to run on an embedded local Ray"
        ) from None


def submit(request: ShardRequest, tarball_ref: Any, max_retries: int, avoid_node: str = "") -> Any:
    """Submit one shard attempt; returns its ObjectRef. ``avoid_node``: prefer any other node (infra reruns)."""
    res = request.resources
    options: dict[str, Any] = {
        "num_cpus": res.cpus,
        "num_gpus": res.gpus,
        "max_retries": max_retries,
        "retry_exceptions": False,
        "name": f"{request.cell_id}/{request.shard}/attempt-{request.attempt}",
    }
    strategy = _other_node(avoid_node, res.cpus, res.gpus) if avoid_node else None
    if strategy is not None:
        options["scheduling_strategy"] = strategy
    return _remote_task.options(**options).remote(request, tarball_ref)


@dataclass(frozen=True)
class Capacity:
    cpus: float  # all CPUs of alive nodes
    gpus: float
    cpus_without_gpus: float  # CPUs of alive nodes that have no GPU: where CPU-only shards belong

    def for_cpu_shards(self) -> float:
        return self.cpus_without_gpus if self.cpus_without_gpus > 0 else self.cpus


def capacity() -> Capacity:
    """What the alive nodes offer, now."""
    import ray

    cpus = gpus = plain = 0.0
    for node in ray.nodes():
        if not node.get("Alive"):
            continue
        res = node.get("Resources", {})
        cpus += float(res.get("CPU", 0))
        gpus += float(res.get("GPU", 0))
        if not res.get("GPU"):
            plain += float(res.get("CPU", 0))
    return Capacity(cpus, gpus, plain)


def put(data: bytes) -> Any:
    import ray

    return ray.put(data)


def completed(refs: list[Any], timeout: float) -> Iterator[tuple[Any, ShardOutcome | None, str]]:
    """Yield (ref, outcome, error) for refs that finished within ``timeout``, in completion order."""
    import ray
    import ray.exceptions

    if not refs:
        time.sleep(timeout)
        return
    # back as soon as one is done (a freed slot is filled at once), with whatever else is done by then
    done, rest = ray.wait(refs, num_returns=1, timeout=timeout, fetch_local=True)
    if done and rest:
        more, _ = ray.wait(rest, num_returns=len(rest), timeout=0, fetch_local=True)
        done += more
    for ref in done:
        try:
            yield ref, ray.get(ref), ""
        except ray.exceptions.TaskCancelledError:
            yield ref, None, "cancelled"
        except ray.exceptions.RayError as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            yield ref, None, f"ray: {exc.__class__.__name__}: {first}"[:500]


def cancel(refs: list[Any]) -> None:
    import ray

    for ref in refs:
        # a ref that already finished, or whose worker is gone, has nothing left to cancel
        with contextlib.suppress(Exception):
            ray.cancel(ref, force=True, recursive=True)


def cleanup_all_nodes(run_id: str, timeout: float = 60.0) -> int:
    """Remove this run's containers on every alive node (and locally); returns how many were removed."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    removed = remove_run_containers(run_id)
    if not ray.is_initialized() or _remote_cleanup is None:
        return removed
    refs = []
    for node in ray.nodes():
        if not node.get("Alive"):
            continue
        strategy = NodeAffinitySchedulingStrategy(node_id=node["NodeID"], soft=False)
        refs.append(_remote_cleanup.options(num_cpus=0, scheduling_strategy=strategy).remote(run_id))
    try:
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout)
        removed += sum(int(ray.get(r)) for r in ready)
    except Exception:  # a node died during cleanup; its engine is checked again at the next run
        pass
    return removed


def shutdown(cluster: Cluster | None) -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()
