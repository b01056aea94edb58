"""Ray, the transport: connect to a cluster or start an embedded one, place shard requests on nodes, and hand
their outcomes back in completion order (``RayTransport``, the scheduler's ``Transport``).

The scheduler, requests, executors and outcomes are the same with or without Ray: a run that joins no cluster
drives this machine alone (machine.py, no Ray to start); ``--address embedded`` starts an embedded Ray, a
cluster of one node.

Node and worker loss are retried by Ray itself (``max_retries``); test failures come back as data. A node
advertises a label L (``runs-on: L`` in a matrix) as the custom resource ``runs-on:L``; each shard of such a cell
asks for a sliver of it, so Ray places it on a labelled node only.
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

from runner import distribution
from runner.distribution import NodeImages, Prepared
from runner.errors import EnvironmentProblem
from runner.execution import ShardOutcome, ShardRequest
from runner.executors import executor_for
from runner.executors.docker import engine_answers, remove_run_containers, sweep_leftovers
from runner.executors.host import kill_run_processes, sweep_processes
from runner.scheduler import GPU_TYPE_RESOURCE, LABEL_RESOURCE, Node

LABEL_SLIVER = 0.0001  # of a node's "runs-on:L" resource, per shard: any positive amount on the node admits it


def execute_shard(request: ShardRequest, tarball: bytes) -> ShardOutcome:
    """The Ray task body: run one shard attempt with its executor on whichever node Ray chose."""
    import ray

    gpu_ids = tuple(str(g) for g in ray.get_gpu_ids())
    outcome = executor_for(request.executor).run(request, tarball, gpu_ids)
    return dataclasses.replace(outcome, node_id=ray.get_runtime_context().get_node_id())


def cleanup_node(run_id: str) -> int:
    """Remove this run's containers and host-executor processes from the node this runs on."""
    return remove_run_containers(run_id) + kill_run_processes(run_id)


def sweep_node(gcs: str, live_jobs: frozenset[str]) -> tuple[str, int, int, bool]:
    """Remove what dead coordinators left on the node this runs on (containers, work folders), and say whether
    its Docker engine answers: (node id, containers removed, folders removed, docker)."""
    import ray

    containers, folders = sweep_leftovers(gcs, live_jobs)
    containers += sweep_processes()
    return ray.get_runtime_context().get_node_id(), containers, folders, engine_answers()


def job_label() -> str:
    """This driver's Ray job as GCS-ADDRESS/JOB-ID: shards carry it, so a node can tell the coordinator is gone."""
    import ray

    ctx = ray.get_runtime_context()
    return f"{ctx.gcs_address}/{ctx.get_job_id()}"


def _live_jobs() -> frozenset[str]:
    from ray._private import state

    return frozenset(str(j["JobID"]) for j in state.jobs() if not j.get("IsDead"))


class ClusterLost(Exception):
    """The Ray cluster this run drives is gone (its GCS or raylet died): nothing more can run through it."""


@dataclass
class Cluster:
    """A connected Ray cluster; ``started`` when matrix-run started it (and so must stop it)."""

    address: str
    started: bool
    cpus: float
    gpus: float
    core_pids: tuple[int, ...] = ()  # an embedded Ray's GCS and raylet, watched for loss
    session_dir: str = ""  # an embedded Ray's session folder: every process of it names it
    lost: str = ""  # why the cluster was declared lost; then nothing talks to Ray again

    def slots(self, cpus_per_shard: float) -> int:
        return max(1, int(self.cpus // max(cpus_per_shard, 0.01)))


_remote_task: Any = None
_remote_inventory: Any = None
_remote_prepare: Any = None
_remote_cleanup: Any = None
_remote_sweep: Any = None


def local_node() -> Node:
    """This machine as the one node a run without a cluster has (machine.py), without asking Ray: for --dry-run."""
    from runner import machine

    return machine.this_node(engine_answers())


EMBEDDED = "embedded"  # --address embedded: an embedded Ray of the run's own on this machine


def resolve_address(address: str | None) -> str | None:
    """The cluster a run joins: ``address`` (--address), else RAY_ADDRESS, else the one that `matrix-run cluster up`
    (or ``join``) recorded here while it runs (its token then this process's); ``embedded`` for a Ray started by
    the run; None for this machine without Ray (also ``local``)."""
    from runner import local_cluster

    address = address or os.environ.get("RAY_ADDRESS") or None
    if address == "local":
        return None
    return address or local_cluster.running_address()


def connect(address: str | None = None, num_cpus: int | None = None) -> Cluster:
    """Join ``address`` (or RAY_ADDRESS), else the cluster that ``matrix-run cluster up`` (or ``join``) recorded on
    this machine while it runs, else start an embedded local Ray; quiet, no dashboard. ``local`` and ``embedded``
    force the embedded Ray. The recorded cluster's token is used for it (token authentication)."""
    import ray

    from runner import local_cluster, machine

    global _remote_task, _remote_cleanup, _remote_sweep
    given = address or os.environ.get("RAY_ADDRESS") or None
    address = resolve_address(given)
    if address == EMBEDDED:
        address = given = None
    if address is not None and address == given and (token_path := local_cluster.token_for(address)):
        local_cluster.use_token(token_path)  # the recorded cluster, named by its address
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
            # as a path: inside a submitted Ray Job, Ray deep-copies it to merge it with the job's runtime_env
            modules = [os.path.dirname(os.path.abspath(runner.__file__))]
            ray.init(address=address, runtime_env={"py_modules": modules}, **kwargs)
        else:
            # "local" starts a new Ray of this process's own; without it Ray joins the last cluster that
            # `ray start` made on this machine (/tmp/ray/ray_current_cluster), alive or dead
            ray.init(address="local", num_cpus=num_cpus, resources=machine.local_labels(), **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = address or "an embedded local Ray"
        raise EnvironmentProblem(
            f"Ray cluster not reachable at {where}: {str(exc).splitlines()[0][:160]}; "
            "check --address / RAY_ADDRESS, or omit it to run on this machine alone"
        ) from None
    finally:
        if main_thread and sigterm is not None:
            signal.signal(signal.SIGTERM, sigterm)
    if _remote_task is None:
        _remote_task = ray.remote(execute_shard)
        _remote_cleanup = ray.remote(cleanup_node)
        _remote_sweep = ray.remote(sweep_node)
    res = ray.cluster_resources()
    core: tuple[int, ...] = ()
    session = ""
    if not address:
        core = _core_pids()
        with contextlib.suppress(Exception):
            session = str(ray._private.worker._global_node.get_session_dir_path())  # type: ignore[attr-defined]
    return Cluster(
        address=address or "local",
        started=not address,
        cpus=float(res.get("CPU", 1)),
        gpus=float(res.get("GPU", 0)),
        core_pids=core,
        session_dir=session,
    )


def _core_pids() -> tuple[int, ...]:
    """The embedded Ray's GCS server and raylet: children of this process."""
    import psutil

    found = []
    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if child.name() in ("gcs_server", "raylet"):
                found.append(child.pid)
    return tuple(found)


def check_alive(cluster: Cluster) -> str:
    """Why the cluster is lost, or "" while it is not. Cheap enough for every turn of the run loop.

    An embedded Ray is watched through its own processes: once its GCS is gone, every Ray call blocks for a
    minute and then Ray's core ends this process, so the loss must be noticed without asking Ray.
    """
    import psutil

    if cluster.lost:
        return cluster.lost
    for pid in cluster.core_pids:
        try:
            proc = psutil.Process(pid)
            if proc.status() != psutil.STATUS_ZOMBIE:
                continue
            name = proc.name()
        except psutil.Error:
            name = "a core process"
        cluster.lost = f"the embedded Ray was lost ({name}, pid {pid}, is gone)"
        return cluster.lost
    return ""


def kill_leftovers(cluster: Cluster) -> int:
    """After an embedded Ray was lost: end its remaining processes (workers, agents), found by session folder."""
    import psutil

    if not cluster.started or not cluster.session_dir:
        return 0
    procs = []
    for proc in psutil.process_iter(["cmdline"]):
        with contextlib.suppress(psutil.Error):
            if proc.pid != os.getpid() and any(cluster.session_dir in a for a in proc.info["cmdline"] or []):
                procs.append(proc)
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(procs, timeout=5)
    return len(procs)


def _other_node(avoid: str, request: ShardRequest) -> Any:
    """A soft preference for an alive node other than ``avoid`` that may take the shard; None if there is none."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from runner.scheduler import may_take

    for node in _nodes_of(ray.nodes(), {}):
        if node.node_id != avoid and may_take(node, request):
            return NodeAffinitySchedulingStrategy(node_id=node.node_id, soft=True)
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
            "or omit it to run on this machine alone"
        ) from None


def submit(request: ShardRequest, tarball_ref: Any, max_retries: int, avoid_node: str = "", node: str = "") -> Any:
    """Submit one shard attempt; returns its ObjectRef. ``node``: the node the scheduler chose (a soft preference:
    should it die, Ray places the retry elsewhere); else ``avoid_node``: prefer any other node (infra reruns)."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    res = request.resources
    options: dict[str, Any] = {
        "num_cpus": res.cpus,
        "num_gpus": res.gpus,
        "max_retries": max_retries,
        "retry_exceptions": False,
        "name": f"{request.cell_id}/{request.shard}/attempt-{request.attempt}",
    }
    if request.runs_on:
        options["resources"] = {f"{LABEL_RESOURCE}{request.runs_on}": LABEL_SLIVER}
    if res.gpu_type:  # Ray asks for a sliver of the node's "accelerator_type:T" resource
        options["accelerator_type"] = res.gpu_type
    strategy: Any = None
    if node:
        strategy = NodeAffinitySchedulingStrategy(node_id=node, soft=True)
    else:
        strategy = _other_node(avoid_node, request) if avoid_node else None
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


def _nodes_of(listed: list[dict[str, Any]], docker: dict[str, bool]) -> list[Node]:
    """``ray.nodes()`` -> the alive ones as scheduler Nodes (labels from their ``runs-on:L`` resources, GPU types
    from their ``accelerator_type:T`` ones)."""
    nodes = []
    for node in listed:
        if not node.get("Alive"):
            continue
        res = node.get("Resources", {})
        labels = frozenset(k[len(LABEL_RESOURCE) :] for k, v in res.items() if k.startswith(LABEL_RESOURCE) and v > 0)
        node_id = str(node["NodeID"])
        types = frozenset(
            k[len(GPU_TYPE_RESOURCE) :] for k, v in res.items() if k.startswith(GPU_TYPE_RESOURCE) and v > 0
        )
        nodes.append(
            Node(node_id, float(res.get("CPU", 0)), float(res.get("GPU", 0)), labels, docker.get(node_id, True), types)
        )
    return nodes


def alive_nodes(timeout: float = 15.0, docker: dict[str, bool] | None = None) -> list[Node]:
    """The alive nodes, now; ``docker`` says which have no engine (unknown nodes are taken to have one).
    Raises ClusterLost when the GCS does not answer within ``timeout``."""
    import concurrent.futures

    import ray

    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="matrix-run-nodes")
    try:
        listed = pool.submit(ray.nodes).result(timeout=timeout)
    except concurrent.futures.TimeoutError:
        raise ClusterLost(f"the Ray cluster's GCS did not answer within {timeout:g} s") from None
    except Exception as exc:
        raise ClusterLost(f"the Ray cluster did not answer: {exc.__class__.__name__}: {exc}"[:300]) from None
    finally:
        pool.shutdown(wait=False)
    return _nodes_of(listed, docker or {})


def capacity(timeout: float = 15.0) -> Capacity:
    """What the alive nodes offer, now, in total. Raises ClusterLost as ``alive_nodes`` does."""
    nodes = alive_nodes(timeout)
    cpus = sum(n.cpus for n in nodes)
    return Capacity(cpus, sum(n.gpus for n in nodes), sum(n.cpus for n in nodes if not n.gpus))


def slots_for(cap: Capacity, mf: Any, max_parallel: int | None = None) -> int:
    """Shards of this matrix that the cluster runs at once: its CPUs (those of nodes without GPUs, where CPU-only
    shards go) over the most CPUs a shard asks for, capped by --max-parallel / strategy.max-parallel."""
    try:
        per_shard = float(mf.resources.cpus)
    except ValueError:  # a template such as "{cpus}": one CPU per shard is the planner's guess
        per_shard = 1.0
    slots = max(1, int(cap.for_cpu_shards() // max(per_shard, 0.01)))
    cap_by = max_parallel or mf.strategy.max_parallel
    return min(slots, cap_by) if cap_by else slots


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


def _on_other_nodes(remote: Any, args: tuple[Any, ...], timeout: float) -> list[Any]:
    """Run ``remote`` (a zero-CPU task) once on every alive node but this one; the results that came back within
    ``timeout``. A node that dies meanwhile is left out: it is checked again at the next run."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    if not ray.is_initialized() or remote is None:
        return []
    here = ray.get_runtime_context().get_node_id()
    refs = [
        remote.options(
            num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node["NodeID"], soft=False)
        ).remote(*args)
        for node in ray.nodes()
        if node.get("Alive") and node["NodeID"] != here
    ]
    if not refs:
        return []
    try:
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout)
        return [ray.get(r) for r in ready]
    except Exception:
        return []


def cleanup_all_nodes(run_id: str, timeout: float = 60.0) -> int:
    """Remove this run's containers on every alive node (this one's engine first); returns how many were removed."""
    removed = cleanup_node(run_id)
    return removed + sum(int(n) for n in _on_other_nodes(_remote_cleanup, (run_id,), timeout))


def sweep_other_nodes(timeout: float = 30.0) -> tuple[int, int, dict[str, bool]]:
    """``sweep_node`` on every alive node but this one (this one is swept before Ray starts): (containers and
    folders removed, node id -> whether its Docker engine answers)."""
    import ray

    ctx = ray.get_runtime_context()
    swept = _on_other_nodes(_remote_sweep, (ctx.gcs_address, _live_jobs()), timeout)
    return sum(c for _, c, _, _ in swept), sum(f for _, _, f, _ in swept), {n: d for n, _, _, d in swept}


class RayTransport:
    """The scheduler's Transport over a connected Ray cluster: one Ray task per shard attempt."""

    def __init__(self, cluster: Cluster, tarball: bytes, max_retries: int, docker: dict[str, bool]) -> None:
        self.cluster = cluster
        self.tarball = put(tarball)  # in the object store once; every task on every node reads it from there
        self.max_retries = max_retries
        self.docker = docker  # node id -> whether its Docker engine answers (nodes not in it: taken to have one)

    def submit(self, request: ShardRequest, avoid_node: str = "", node: str = "") -> Any:
        return submit(request, self.tarball, self.max_retries, avoid_node, node)

    # ------------------------------------------------------------------------------------- images onto nodes

    def inventory(self, timeout: float = 60.0) -> list[NodeImages]:
        """What every alive node's engine holds (nodes that do not answer within ``timeout`` are left out)."""
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        global _remote_inventory
        if _remote_inventory is None:
            _remote_inventory = ray.remote(distribution.inventory)
        refs = [
            _remote_inventory.options(
                num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node["NodeID"], soft=False)
            ).remote()
            for node in ray.nodes()
            if node.get("Alive")
        ]
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout)
        return [ray.get(r) for r in ready]

    def prepare(self, node_id: str, spec: Any, base: Any, args: tuple[Any, ...]) -> Any:
        """Start making a cell's image present on ``node_id`` (``distribution.prepare``), holding no CPU: no test
        slot waits for it. ``base``: an object ref of the base image's bytes, for a node that lacks it."""
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        global _remote_prepare
        if _remote_prepare is None:
            _remote_prepare = ray.remote(distribution.prepare)
        return _remote_prepare.options(
            num_cpus=0,
            max_retries=0,
            name=f"image/{spec.tag}",
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node_id, soft=False),
        ).remote(spec, self.tarball, *args, base=base)

    def prepared(self, handles: list[Any]) -> list[tuple[Any, Prepared | None, str]]:
        """(handle, result, error) for the ``prepare`` calls that have ended, without waiting."""
        import ray

        if not handles:
            return []
        done, _ = ray.wait(handles, num_returns=len(handles), timeout=0)
        out: list[tuple[Any, Prepared | None, str]] = []
        for ref in done:
            try:
                out.append((ref, ray.get(ref), ""))
            except Exception as exc:  # the node died meanwhile
                out.append((ref, None, f"{exc.__class__.__name__}: {str(exc).strip().splitlines()[0][:300]}"))
        return out

    def put(self, data: bytes) -> Any:
        return put(data)

    def completed(self, handles: list[Any], timeout: float) -> Iterator[tuple[Any, ShardOutcome | None, str]]:
        return completed(handles, timeout)

    def cancel(self, handles: list[Any]) -> None:
        cancel(handles)

    def nodes(self) -> list[Node]:
        return alive_nodes(docker=self.docker)

    def here(self) -> str:
        """This process's own node."""
        import ray

        return str(ray.get_runtime_context().get_node_id())


def shutdown(cluster: Cluster | None) -> None:
    import ray

    if cluster is not None and cluster.lost:
        kill_leftovers(cluster)  # Ray cannot stop what it no longer reaches; ray.shutdown() would block
        return
    if ray.is_initialized():
        ray.shutdown()
