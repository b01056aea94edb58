"""One run of a matrix: images and shards at once, from the first build to the last outcome.

The coordinator wires the run's parts together and owns what is not theirs to own: signals, the image-build pool,
joining the cluster, and cleaning up on every path out. What to run next, and what an outcome means, is the
scheduler's (scheduler.py, pure); placing a request on a node is the transport's (cluster.py, Ray); running it
there is the executor's (executors/). Raw shard outputs are written to the output folder as they arrive, so a
failure later in the run loses nothing already produced.
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

from runner import cluster, engine, images, quarantine
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
        sched: Scheduler | None = None
        try:
            swept = container.sweep_leftovers() if client is not None else (0, 0)
            swept = (swept[0] + host.sweep_processes(), swept[1])
            ray_cluster = self.opt.cluster or cluster.connect(self.opt.address)
            job = cluster.job_label()
            docker: dict[str, bool] = {}
            if not ray_cluster.started:
                removed, folders, docker = cluster.sweep_other_nodes()
                swept = (swept[0] + removed, swept[1] + folders)
            if any(swept):
                self.view.note(f"removed {swept[0]} container(s) and {swept[1]} work folder(s) of dead earlier runs")
            transport = cluster.RayTransport(ray_cluster, self.tree.tarball, self.opt.infra_retries, docker)
            docker[transport.here()] = client is not None
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
            builds = self._start_builds(pool, client, to_build) if client is not None else {}
            for cid, c in self.cells.items():
                if c.executor != "docker" and cid not in unservable:
                    sched.ready(cid)  # a host cell's environment is made on its node, by its first shard
            while not self.interrupted.is_set():
                lost = cluster.check_alive(ray_cluster)
                if lost:
                    sched.lose(lost)
                    break
                self._collect_builds(builds, sched)
                # checked here, after the cluster was: a last outcome may be Ray's word that its node died
                if sched.finished and (not builds or sched.cancelled):
                    break  # all done; or fail-fast struck, and what is still building is not waited for
                try:
                    sched.step(timeout=0.2)
                except cluster.ClusterLost as exc:
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
            self._remove_containers(ray_cluster)
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
        )

    def _remove_containers(self, ray_cluster: cluster.Cluster | None) -> None:
        """This run's containers, on every node the cluster still reaches and on this node's engine in any case."""
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
        took = time.monotonic() - started
        fresh = image.env_built or image.layer_built
        return image.env_tag, image.env_built, 0.0 if fresh else took, took

    def _collect_builds(self, builds: dict[Future[ImageReady], list[str]], sched: Scheduler) -> None:
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
                    sched.fail_cell(cid, f"{what}{exc}; full log: {log}\n{exc.log_tail}")
                continue
            except Exception as exc:  # a Docker or environment problem: fails these cells only
                for cid in cids:
                    self.view.image(cid, "failed", str(exc))
                    sched.fail_cell(cid, f"image build failed: {exc.__class__.__name__}: {exc}")
                continue
            if built:
                self.images_built += 1
            else:
                self.images_reused += 1
            for cid in cids:
                self.image_tags[cid] = tag
                self.view.image(cid, "built" if built else "cached", f"{tag} ({took:.1f} s)")
                sched.ready(cid)
