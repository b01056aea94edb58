"""One run of a matrix: images and shards at once, from the first build to the last outcome.

The coordinator wires the run's parts together and owns what is not theirs to own: signals, the image-build pool,
joining the cluster, and cleaning up on every path out. What to run next, and what an outcome means, is the
scheduler's (scheduler.py, pure); placing a request on a node is the transport's (cluster.py: Ray, on a cluster;
machine.py: this machine alone, for a run that joins none); running it there is the executor's (executors/). Raw
shard outputs are written to the output folder as they arrive, so a failure later in the run loses nothing already
produced.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from runner import cluster, distribution, engine, images, machine, quarantine
from runner.config import MatrixFile, QuarantineEntry
from runner.errors import EnvironmentProblem, ExitCode
from runner.execution import RunResults, ShardOutcome, ShardRequest
from runner.executors import docker as container
from runner.executors import host
from runner.images import ImageSpec
from runner.matrix import Cell
from runner.plan import Shard
from runner.progress import View
from runner.results import CellResult
from runner.scheduler import Scheduler
from runner.source import SourceTree

ImageReady = tuple[str, bool, float, float]  # (dependency image tag, built now, check seconds, seconds taken)


@dataclass
class RunOptions:
    run_id: str
    out: Path
    address: str | None = None
    max_parallel: int = 0
    fail_fast: bool = True
    flaky_retries: int = 0
    infra_retries: int = 2
    env: tuple[tuple[str, str], ...] = ()
    owner: str = ""  # workspace.owner_token() of this process: labels its containers and work folders
    cluster: Any = None  # a cluster.Cluster already joined (to size the plan for it); else the run connects
    quarantine: tuple[QuarantineEntry, ...] = ()  # tests whose failures never trigger fail-fast


def cell_request(
    mf: MatrixFile, cell: Cell, spec: ImageSpec, tree: SourceTree, options: RunOptions, job: str
) -> ShardRequest:
    """Everything a cell's shard requests share; the scheduler fills in each shard's own part."""
    return ShardRequest(
        run_id=options.run_id,
        cell_id=cell.id,
        shard="",
        attempt=0,
        image=spec,
        command=cell.command,
        files=(),
        roots=mf.tests.paths,
        timeout=mf.tests.timeout,
        resources=cell.resources,
        env=tuple({**dict(cell.env), **dict(options.env)}.items()),
        network=mf.tests.network,
        install_project=mf.tests.install_project,
        source_digest=tree.digest,
        coverage=mf.coverage,
        workdir=mf.tests.workdir,
        user=mf.tests.user,
        output_limit=mf.tests.output_limit,
        owner=options.owner,
        job=job,
        executor=cell.executor,
        runs_on=cell.runs_on,
        python=cell.python,
    )


def execute(
    mf: MatrixFile,
    planned_cells: list[Cell],
    shards: dict[str, list[Shard]],
    cached: dict[str, CellResult],
    specs: dict[str, ImageSpec],
    tree: SourceTree,
    options: RunOptions,
    plain: bool | None = None,
) -> tuple[RunResults, RunResults]:
    """The pipeline's execute step: images and shards of every cell --cache did not serve, with a live view.
    Returns (what ran, the whole matrix in plan order with the cached cells)."""
    from runner.progress import make_view

    to_run = [c for c in planned_cells if c.id not in cached]
    started = time.monotonic()
    if to_run:
        view = make_view(plain=plain)
        view.begin({c.id: len(shards[c.id]) for c in to_run})
        view.note(f"run {options.run_id}: {len(to_run)} cell(s) to run, {len(cached)} cached -> {options.out}")
        try:
            ran = Coordinator(mf, to_run, shards, specs, tree, options, view).run()
        finally:
            view.end()
    else:
        ran = RunResults(options.run_id, [], False, False, 0.0, 0, 0)
    by_id = {c.cell_id: c for c in ran.cells} | cached
    whole = dataclasses.replace(ran, cells=[by_id[c.id] for c in planned_cells], duration=time.monotonic() - started)
    return ran, whole


class Coordinator:
    def __init__(
        self,
        mf: MatrixFile,
        cells: list[Cell],
        shards: dict[str, list[Shard]],
        specs: dict[str, ImageSpec],
        tree: SourceTree,
        options: RunOptions,
        view: View,
    ) -> None:
        self.mf = mf
        self.cells = {c.id: c for c in cells}
        self.shards = shards
        self.specs = specs
        self.tree = tree
        self.opt = options
        self.view = view
        self.interrupted = threading.Event()
        self.image_tags: dict[str, str] = {}
        self.images_built = 0
        self.images_reused = 0
        self.image_check_seconds = 0.0
        self.shard_dir = options.out / "shards"
        self.log_dir = options.out / "logs"
        self.sched: Scheduler | None = None
        self.here = ""  # this process's Ray node
        self.targets: dict[str, list[str]] = {}  # cell -> the other nodes its image goes to (multi-node runs)
        self.deferred: dict[str, list[tuple[str, bool]]] = {}  # cell -> (node, needs the base) after the local build
        self.remote: dict[Any, tuple[str, str]] = {}  # a prepare in flight -> (cell, node)
        self.base_refs: dict[str, Any] = {}  # base image -> object ref of its bytes, shipped to nodes that lack it
        self.eligible_here: set[str] = set()
        self.image_nodes: list[dict[str, object]] = []

    # ------------------------------------------------------------------------------------------------ signals

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self.interrupted.is_set():  # second Ctrl-C: leave at once
            print("matrix-run: interrupted twice; exiting now", file=sys.stderr, flush=True)
            os._exit(int(ExitCode.INTERRUPTED))
        self.interrupted.set()
        self.view.note("interrupted: stopping shards and removing containers (Ctrl-C again to quit at once)")

    # ------------------------------------------------------------------------------------------------ the run

    def run(self) -> RunResults:
        started = time.monotonic()
        docker_cells = [cid for cid, c in self.cells.items() if c.executor == "docker"]
        client = engine.connect() if docker_cells else None
        old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="matrix-run-build")
        ray_cluster = None
        ray_transport: cluster.RayTransport | None = None  # on a cluster
        alone: machine.MachineTransport | None = None  # else: this machine, without Ray
        sched: Scheduler | None = None
        try:
            swept = container.sweep_leftovers() if client is not None else (0, 0)
            swept = (swept[0] + host.sweep_processes(), swept[1])
            job = ""
            if self.opt.cluster is None and self.opt.address is None:
                alone = machine.MachineTransport(self.tree.tarball, docker=client is not None)
            else:
                ray_cluster = self.opt.cluster or cluster.connect(self.opt.address)
                job = cluster.job_label()
                docker: dict[str, bool] = {}
                if not ray_cluster.started:
                    removed, folders, docker = cluster.sweep_other_nodes()
                    swept = (swept[0] + removed, swept[1] + folders)
                ray_transport = cluster.RayTransport(ray_cluster, self.tree.tarball, self.opt.infra_retries, docker)
                docker[ray_transport.here()] = client is not None
            transport = ray_transport or alone
            assert transport is not None
            if any(swept):
                self.view.note(f"removed {swept[0]} container(s) and {swept[1]} work folder(s) of dead earlier runs")
            prototypes = {
                cid: cell_request(self.mf, c, self.specs[cid], self.tree, self.opt, job)
                for cid, c in self.cells.items()
            }
            sched = self.sched = Scheduler(
                self.shards,
                list(self.cells.values()),
                prototypes,
                transport,
                self.view,
                max_parallel=self.opt.max_parallel,
                fail_fast=self.opt.fail_fast,
                flaky_retries=self.opt.flaky_retries,
                infra_retries=self.opt.infra_retries,
                timeout=self.mf.tests.timeout,
                on_outcome=self._save,
                held=lambda cell, test: quarantine.entry_for(self.opt.quarantine, cell.axes, test) is not None,
            )
            unservable = sched.check_capacity()
            to_build = [cid for cid in docker_cells if cid not in unservable]
            self.here = transport.here()
            if ray_transport is not None:
                self._plan_nodes(ray_transport, sched, to_build)
            builds = self._start_builds(pool, client, to_build) if client is not None else {}
            for cid, c in self.cells.items():
                if c.executor != "docker" and cid not in unservable:
                    sched.ready(cid)  # a host cell's environment is made on its node, by its first shard
            while not self.interrupted.is_set():
                lost = cluster.check_alive(ray_cluster) if ray_cluster is not None else ""
                if lost:
                    sched.lose(lost)
                    break
                self._collect_builds(builds, sched, ray_transport)
                if ray_transport is not None and self.remote:
                    self._collect_remote(ray_transport, sched)
                # checked here, after the cluster was: a last outcome may be Ray's word that its node died
                if sched.finished and (not builds or sched.cancelled):
                    break  # all done; or fail-fast struck, and what is still building is not waited for
                try:
                    sched.step(timeout=0.2)
                except cluster.ClusterLost as exc:
                    assert ray_cluster is not None  # only Ray's transport loses its cluster
                    ray_cluster.lost = str(exc)
                    sched.lose(str(exc))
                    break
        finally:
            for s, handler in old.items():
                signal.signal(s, handler)
            if sched is not None:
                if self.interrupted.is_set():
                    sched.interrupt()
                sched.stop()
            if self.remote and ray_cluster is not None and not ray_cluster.lost:
                cluster.cancel(list(self.remote))  # images still being made for a run that has ended
            self._remove_containers(ray_cluster)
            if alone is not None:
                alone.close()  # every attempt's thread has ended: nothing it started outlives the run
            pool.shutdown(wait=not self.interrupted.is_set(), cancel_futures=True)
            if ray_cluster is not None:
                cluster.shutdown(ray_cluster)
                if ray_cluster.lost:  # a worker that outlived its raylet may have started a container since
                    container.remove_run_containers(self.opt.run_id)
        cells = [sched.cell_result(cid, self.image_tags.get(cid, "")) for cid in self.cells] if sched else []
        return RunResults(
            run_id=self.opt.run_id,
            cells=cells,
            interrupted=self.interrupted.is_set(),
            cancelled=bool(sched and sched.cancelled),
            duration=time.monotonic() - started,
            images_built=self.images_built,
            images_reused=self.images_reused,
            image_check_seconds=self.image_check_seconds,
            fail_fast_by=sched.fail_fast_by if sched else "",
            cluster_lost=sched.lost if sched else "",
            image_nodes=self.image_nodes,
        )

    def _remove_containers(self, ray_cluster: cluster.Cluster | None) -> None:
        """This run's containers, on every node the cluster still reaches and on this node's engine in any case
        (``ray_cluster`` None: a run on this machine alone, or a cluster that is lost)."""
        removed = 0
        if ray_cluster is not None and not ray_cluster.lost:
            with contextlib.suppress(Exception):
                removed = cluster.cleanup_all_nodes(self.opt.run_id)
        else:  # without Ray: a lost or half-started cluster cannot do it
            removed = host.kill_run_processes(self.opt.run_id)
            with contextlib.suppress(EnvironmentProblem):
                removed += container.remove_run_containers(self.opt.run_id)
        if removed:
            self.view.note(f"removed {removed} container(s) of run {self.opt.run_id}")

    def _save(self, outcome: ShardOutcome) -> None:
        base = f"{outcome.shard}.attempt{outcome.attempt}"
        logs = self.log_dir / outcome.cell_id
        logs.mkdir(parents=True, exist_ok=True)
        (logs / f"{base}.log").write_bytes(outcome.log)
        raw = self.shard_dir / outcome.cell_id
        raw.mkdir(parents=True, exist_ok=True)
        if outcome.report:
            (raw / f"{base}.report.jsonl").write_bytes(outcome.report)
        if outcome.coverage:
            (raw / f"{base}.coverage").write_bytes(outcome.coverage)

    # ------------------------------------------------------------------------------------------------ images

    def _start_builds(
        self, pool: ThreadPoolExecutor, client: Any, cells: list[str]
    ) -> dict[Future[ImageReady], list[str]]:
        by_tag: dict[str, list[str]] = {}
        for cid in cells:
            by_tag.setdefault(self.specs[cid].tag, []).append(cid)
        builds: dict[Future[ImageReady], list[str]] = {}
        logs = self.opt.out / "images"
        for tag, cids in by_tag.items():
            for cid in cids:
                self.view.image(cid, "checking")
            log = logs / f"{tag.split(':')[-1]}.log"
            labels = {engine.LABEL_RUN: self.opt.run_id, engine.LABEL_OWNER: self.opt.owner}
            builds[pool.submit(self._prepare_image, client, self.specs[cids[0]], log, labels, cids)] = cids
        return builds

    def _prepare_image(
        self, client: Any, spec: ImageSpec, log: Path, labels: dict[str, str], cids: list[str]
    ) -> ImageReady:
        """The cell's dependency image, then its source layer (project unpacked and installed) on this node."""
        started = time.monotonic()

        def step(text: str) -> None:  # what the image step is doing now, for the live view and the log
            for cid in cids:
                self.view.image(cid, text)

        image = images.ensure_cell_image(
            client,
            spec,
            self.tree.tarball,
            self.tree.digest,
            self.mf.tests.install_project,
            self.mf.tests.paths,
            log,
            labels,
            workdir=self.mf.tests.workdir,
            step=step,
        )
        if self.mf.image.registry:  # built once, here; the other nodes pull it by its content tag
            step(f"pushing to {self.mf.image.registry}")
            distribution.push(client, image.env_tag, self.mf.image.registry)
        took = time.monotonic() - started
        fresh = image.env_built or image.layer_built
        return image.env_tag, image.env_built, 0.0 if fresh else took, took

    # ------------------------------------------------------------------------------------------------ other nodes

    def _plan_nodes(self, transport: cluster.RayTransport, sched: Scheduler, cells: list[str]) -> None:
        """On a cluster of several nodes: which nodes get each docker cell's image (those holding it first), and
        start making it there. This node's own engine is the coordinator's build (``_start_builds``); a node that
        lacks a cell's base, or every node when the images come from a registry, waits for that build."""
        nodes = transport.nodes()
        if len(nodes) <= 1 or not cells:
            return
        started = time.monotonic()
        found = transport.inventory()
        held = {n.node_id: n.tags for n in found}
        hosts = {n.node_id: n.hostname for n in found}
        requests = {cid: sched.prototypes[cid] for cid in cells}
        sources = {
            cid: images.source_layer_tag(
                self.specs[cid].tag,
                self.tree.digest,
                self.mf.tests.install_project,
                self.mf.tests.paths,
                self.mf.tests.workdir,
            )
            for cid in cells
        }
        plan = distribution.targets(requests, {cid: len(self.shards[cid]) for cid in cells}, nodes, held, sources)
        here_held = held.get(self.here, frozenset())
        for cid in cells:
            spec = self.specs[cid]
            self.eligible_here.update([cid] if self.here in plan.targets[cid] else [])
            self.targets[cid] = [n for n in plan.targets[cid] if n != self.here]
            for node in plan.ready[cid] - {self.here}:
                sched.ready(cid, node)
                self._record(cid, node, "present", 0.0, hosts.get(node, ""))
            for node in self.targets[cid]:
                if node in plan.ready[cid]:
                    continue
                need_base = distribution.missing_base(spec, held.get(node, frozenset()))
                if self.mf.image.registry or (need_base and images.base_ref(spec) not in here_held):
                    self.deferred.setdefault(cid, []).append((node, need_base))
                else:
                    self._start_remote(transport, sched, cid, node, need_base)
        placed = sum(len(t) for t in self.targets.values())
        self.view.note(
            f"images: {len(cells)} cell(s) onto {placed} other node placement(s) of {len(nodes) - 1} other node(s)"
            f" (inventory {time.monotonic() - started:.1f} s)"
        )

    def _start_remote(
        self, transport: cluster.RayTransport, sched: Scheduler, cid: str, node: str, need_base: bool
    ) -> None:
        spec = self.specs[cid]
        base = None
        if need_base and not self.mf.image.registry:
            ref = images.base_ref(spec)
            try:
                if ref not in self.base_refs:  # once per base, however many nodes lack it
                    self.base_refs[ref] = transport.put(distribution.save_image(ref))
            except images.BuildFailed as exc:
                self._record(cid, node, "failed", 0.0, "", f"on node {node[:12]}: the base could not be shipped: {exc}")
                self._fail_if_nowhere(cid, sched)
                return
            base = self.base_refs[ref]
        labels = {engine.LABEL_RUN: self.opt.run_id, engine.LABEL_OWNER: self.opt.owner}
        args = (
            self.tree.digest,
            self.mf.tests.install_project,
            self.mf.tests.paths,
            self.mf.tests.workdir,
            labels,
            self.mf.image.registry,
        )
        self.remote[transport.prepare(node, spec, base, args)] = (cid, node)
        self.view.image(cid, "to nodes", f"making it on node {node[:12]}")

    def _record(self, cid: str, node: str, how: str, seconds: float, host: str = "", error: str = "") -> None:
        self.image_nodes.append(
            {"cell": cid, "node_id": node, "node": host, "how": how, "seconds": round(seconds, 3), "error": error}
        )

    def _collect_remote(self, transport: cluster.RayTransport, sched: Scheduler) -> None:
        for handle, res, error in transport.prepared(list(self.remote)):
            cid, node = self.remote.pop(handle)
            if res is not None and not res.error:
                sched.ready(cid, node)
                self._record(cid, node, res.how, res.seconds, res.hostname)
                ready = sched.ready_on.get(cid) or set()
                self.view.image(cid, f"on {len(ready)} node(s)", f"{res.how} on {res.hostname} in {res.seconds:.1f} s")
                continue
            why = res.error if res is not None else f"on node {node[:12]}: {error}"
            self._record(cid, node, "failed", res.seconds if res else 0.0, res.hostname if res else "", why)
            self.view.note(f"{cid}: image not made {why}")
            self._fail_if_nowhere(cid, sched)

    def _fail_if_nowhere(self, cid: str, sched: Scheduler) -> None:
        """A cell whose image is on no node that may run it, and will not be: an error naming the nodes."""
        if cid not in sched.waiting or cid in self.eligible_here:
            return  # ready already, or this node's own build makes it ready (or fails the cell)
        if any(c == cid for c, _ in self.remote.values()) or self.deferred.get(cid):
            return
        errors = [str(r["error"]) for r in self.image_nodes if r["cell"] == cid and r["error"]]
        sched.fail_cell(cid, "the image could not be made on any node that may run the cell: " + "; ".join(errors))

    def _collect_builds(
        self,
        builds: dict[Future[ImageReady], list[str]],
        sched: Scheduler,
        transport: cluster.RayTransport | None,
    ) -> None:
        for fut in [f for f in builds if f.done()]:
            cids = builds.pop(fut)
            try:
                tag, built, check, took = fut.result()
                self.image_check_seconds = max(self.image_check_seconds, check)
            except images.BuildFailed as exc:
                log = self.opt.out / "images" / f"{self.specs[cids[0]].tag.split(':')[-1]}.log"
                what = "" if isinstance(exc, images.SetupFailed) else "image build failed: "
                for cid in cids:
                    self.view.image(cid, "failed", str(exc))
                    self.deferred.pop(cid, None)
                    sched.fail_cell(cid, f"{what}{exc}; full log: {log}\n{exc.log_tail}")
                continue
            except Exception as exc:  # a Docker or environment problem: fails these cells only
                for cid in cids:
                    self.view.image(cid, "failed", str(exc))
                    self.deferred.pop(cid, None)
                    sched.fail_cell(cid, f"image build failed: {exc.__class__.__name__}: {exc}")
                continue
            if built:
                self.images_built += 1
            else:
                self.images_reused += 1
            for cid in cids:
                self.image_tags[cid] = tag
                self.view.image(cid, "built" if built else "cached", f"{tag} ({took:.1f} s)")
                if cid not in self.targets:  # one node: this one
                    sched.ready(cid)
                    continue
                if cid in self.eligible_here:
                    sched.ready(cid, self.here)
                    self._record(cid, self.here, "built" if built else "present", took, "coordinator")
                for node, need_base in self.deferred.pop(cid, []):
                    assert transport is not None  # only a cluster's nodes wait for this build
                    self._start_remote(transport, sched, cid, node, need_base)
