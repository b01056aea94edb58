"""One run of a matrix: images -> Ray tasks -> outcomes in completion order -> reruns -> cell results.

The coordinator owns the run's mutable state (which shards are queued, running, done; the attempts each
produced). Everything it decides is delegated: results.py classifies, retry.py picks reruns, images.py builds,
cluster.py talks to Ray. Raw shard outputs are written to the output folder as they arrive, so a failure later
in the run loses nothing already produced.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import os
import signal
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from runner import cluster, engine, images
from runner.config import MatrixFile
from runner.errors import ExitCode
from runner.execution import RunResults, ShardOutcome, ShardRequest
from runner.executors import docker as container
from runner.images import ImageSpec
from runner.matrix import Cell
from runner.plan import Shard
from runner.progress import View
from runner.results import BAD, Attempt, CellResult, Status, cell_status, evaluate, fold
from runner.retry import Budget, decide
from runner.source import SourceTree


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


ImageReady = tuple[str, bool, float, float]  # (dependency image tag, built now, check seconds, seconds taken)

# (rank, -predicted seconds, sequence, shard, node ids to select, Ray node to avoid)
QueueEntry = tuple[int, float, int, ShardState, tuple[str, ...], str]


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
        self.specs = specs
        self.tree = tree
        self.opt = options
        self.view = view
        self.states: dict[str, list[ShardState]] = {
            cid: [ShardState(s, self.cells[cid], Budget(options.flaky_retries, options.infra_retries)) for s in ss]
            for cid, ss in shards.items()
            if cid in self.cells  # cells served by --cache have a plan but do not run
        }
        self.build_errors: dict[str, str] = {}
        self.image_tags: dict[str, str] = {}
        self.queue: list[QueueEntry] = []
        self.seq = itertools.count()
        self.inflight: dict[Any, tuple[ShardState, ShardRequest, tuple[str, ...]]] = {}
        self.submitted: dict[Any, float] = {}
        self.interrupted = threading.Event()
        self.cancelled = False
        self.fail_fast_by = ""
        self.cluster_lost = ""
        self.job = ""  # this coordinator's Ray job, once connected (container label)
        self.finished_cells: set[str] = set()
        self.images_built = 0
        self.images_reused = 0
        self.image_check_seconds = 0.0
        self._capacity = cluster.Capacity(1.0, 0.0, 1.0)
        self._capacity_at = float("-inf")
        self.shard_dir = options.out / "shards"
        self.log_dir = options.out / "logs"

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
        client = engine.connect()
        old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="matrix-run-build")
        ray_cluster = None
        try:
            swept = container.sweep_leftovers()
            if any(swept):
                self.view.note(f"removed {swept[0]} container(s) and {swept[1]} work folder(s) of dead earlier runs")
            builds = self._start_builds(pool, client)
            ray_cluster = self.opt.cluster or cluster.connect(self.opt.address)
            self.job = cluster.job_label()
            if not ray_cluster.started:
                cluster.sweep_other_nodes()
            tarball = cluster.put(self.tree.tarball)
            while not self.interrupted.is_set():
                lost = cluster.check_alive(ray_cluster)
                if lost:
                    self._lose_cluster(lost)
                    break
                self._collect_builds(builds)
                try:
                    if not self.cancelled:
                        self._submit_what_fits(tarball)
                    if not self.inflight and (self.cancelled or (not self.queue and not builds)):
                        break  # all done, or fail-fast struck: what is queued or still building is cancelled
                    for ref, outcome, error in cluster.completed(list(self.inflight), timeout=0.2):
                        self._handle(ref, outcome, error)
                        if self.interrupted.is_set():
                            break
                except cluster.ClusterLost as exc:
                    ray_cluster.lost = str(exc)
                    self._lose_cluster(str(exc))
                    break
        finally:
            for s, handler in old.items():
                signal.signal(s, handler)
            self._stop_everything(ray_cluster)
            pool.shutdown(wait=not self.interrupted.is_set(), cancel_futures=True)
            if ray_cluster is not None:
                cluster.shutdown(ray_cluster)
                if ray_cluster.lost:  # a worker that outlived its raylet may have started a container since
                    container.remove_run_containers(self.opt.run_id)
        results = [self._cell_result(cid) for cid in self.cells]
        return RunResults(
            run_id=self.opt.run_id,
            cells=results,
            interrupted=self.interrupted.is_set(),
            cancelled=self.cancelled,
            duration=time.monotonic() - started,
            images_built=self.images_built,
            images_reused=self.images_reused,
            image_check_seconds=self.image_check_seconds,
            fail_fast_by=self.fail_fast_by,
            cluster_lost=self.cluster_lost,
        )

    def _lose_cluster(self, why: str) -> None:
        """The cluster is gone: every shard not finished yet gets an ``infra`` attempt saying so; finished ones keep
        their results. Nothing is asked of Ray again."""
        self.cluster_lost = why
        self.view.note(f"{why}: reporting the shards that finished, the rest as infra")
        inflight = list(self.inflight.values())
        self.inflight.clear()
        for state, req, _ in inflight:
            self._record_lost(state, req.attempt, why)
        self.queue.clear()
        for states in self.states.values():
            for state in states:
                pending = not state.done and not state.cancelled and state.cell.id not in self.build_errors
                if pending and (not state.attempts or state.attempts[-1].kind != "infra"):
                    self._record_lost(state, state.next_attempt, why)

    def _record_lost(self, state: ShardState, attempt: int, why: str) -> None:
        outcome = ShardOutcome(state.cell.id, state.shard.slug, attempt, None, infra_error=f"ray: {why}")
        att = evaluate(outcome, self.mf.tests.timeout)
        state.attempts.append(att)
        self._save(outcome)
        self._shard_done(state, att)

    def _stop_everything(self, ray_cluster: cluster.Cluster | None = None) -> None:
        lost = ray_cluster is None or bool(ray_cluster.lost)
        if self.inflight and not lost:
            cluster.cancel(list(self.inflight))
        for state, _, _ in self.inflight.values():
            state.cancelled = True
        self.inflight.clear()
        self.queue.clear()
        for states in self.states.values():  # queued, or waiting for an image that never came
            for state in states:
                state.cancelled = state.cancelled or not state.done
        removed = 0
        if not lost:
            with contextlib.suppress(Exception):
                removed = cluster.cleanup_all_nodes(self.opt.run_id)
        # the local engine in any case, without Ray: a lost or half-started cluster cannot do it
        removed += container.remove_run_containers(self.opt.run_id)
        if removed:
            self.view.note(f"removed {removed} container(s) of run {self.opt.run_id}")

    # ------------------------------------------------------------------------------------------------ images

    def _start_builds(self, pool: ThreadPoolExecutor, client: Any) -> dict[Future[ImageReady], list[str]]:
        by_tag: dict[str, list[str]] = {}
        for cid in self.cells:
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

    def _collect_builds(self, builds: dict[Future[ImageReady], list[str]]) -> None:
        for fut in [f for f in builds if f.done()]:
            cids = builds.pop(fut)
            try:
                tag, built, check, took = fut.result()
                self.image_check_seconds = max(self.image_check_seconds, check)
            except images.BuildFailed as exc:
                log = self.opt.out / "images" / f"{self.specs[cids[0]].tag.split(':')[-1]}.log"
                what = "" if isinstance(exc, images.SetupFailed) else "image build failed: "
                for cid in cids:
                    self.build_errors[cid] = f"{what}{exc}; full log: {log}\n{exc.log_tail}"
                    self.view.image(cid, "failed", str(exc))
                    self._finish_cell(cid)
                continue
            except Exception as exc:  # a Docker or environment problem: fails these cells only
                for cid in cids:
                    self.build_errors[cid] = f"image build failed: {exc.__class__.__name__}: {exc}"
                    self.view.image(cid, "failed", str(exc))
                    self._finish_cell(cid)
                continue
            if built:
                self.images_built += 1
            else:
                self.images_reused += 1
            for cid in cids:
                self.image_tags[cid] = tag
                self.view.image(cid, "built" if built else "cached", f"{tag} ({took:.1f} s)")
                for state in self.states[cid]:
                    if self.cancelled:  # fail-fast struck while this image was being built
                        state.cancelled = True
                    else:
                        self._enqueue(state, ())

    # ------------------------------------------------------------------------------------------------ shards

    def _enqueue(self, state: ShardState, select: tuple[str, ...], avoid_node: str = "") -> None:
        # reruns first (they hold a cell back), then the longest predicted shard (LPT across the matrix)
        rank = 0 if state.next_attempt > 1 else 1
        heapq.heappush(self.queue, (rank, -state.shard.predicted, next(self.seq), state, select, avoid_node))

    def _submit_what_fits(self, tarball: Any) -> None:
        """Submit queued shards, in priority order, while the cluster has room for them.

        Ray only ever holds shards it can start now, so the order of the matrix-wide queue (reruns, then the
        longest predicted shard) is the order shards really start in, and fail-fast or Ctrl-C have little to
        cancel. ``max-parallel`` caps the count on top.
        """
        if not self.queue:
            return
        now = time.monotonic()
        if now - self._capacity_at > 2.0:  # nodes come and go: look again every few seconds
            self._capacity = cluster.capacity()
            self._capacity_at = now
        cap = self._capacity
        cpu_shards = [req for _, req, _ in self.inflight.values() if not req.resources.gpus]
        used_cpu = sum(req.resources.cpus for _, req, _ in self.inflight.values())
        used_plain = sum(req.resources.cpus for req in cpu_shards)
        used_gpu = sum(req.resources.gpus for _, req, _ in self.inflight.values())
        deferred = []
        while self.queue:
            if self.opt.max_parallel and len(self.inflight) >= self.opt.max_parallel:
                break
            entry = heapq.heappop(self.queue)
            res = entry[3].cell.resources
            if res.gpus:  # GPU shards wait for a GPU; CPU-only shards keep to nodes without GPUs when there are any
                fits = used_gpu + res.gpus <= cap.gpus + 1e-9 and used_cpu + res.cpus <= cap.cpus + 1e-9
            else:
                fits = used_plain + res.cpus <= cap.for_cpu_shards() + 1e-9 or not self.inflight
            if fits:
                self._submit(entry, tarball)
                used_cpu += res.cpus
                used_gpu += res.gpus
                used_plain += 0 if res.gpus else res.cpus
            else:
                deferred.append(entry)
        for entry in deferred:
            heapq.heappush(self.queue, entry)

    def _submit(self, entry: QueueEntry, tarball: Any) -> None:
        state, select, avoid_node = entry[3], entry[4], entry[5]
        cell = state.cell
        shard = state.shard
        files: tuple[str, ...]
        only: tuple[str, ...]
        skip: tuple[str, ...]
        if select:  # a rerun of named tests: just their files, just those ids
            files, complement, only, skip = tuple(sorted({n.split("::", 1)[0] for n in select})), False, select, ()
        elif shard.index == 1:  # the first shard takes every file no other shard names: nothing can fall between
            files, complement, only, skip = self._others_files(state), True, shard.only, shard.skip
        else:
            files, complement, only, skip = shard.files, False, shard.only, shard.skip
        req = ShardRequest(
            run_id=self.opt.run_id,
            cell_id=cell.id,
            shard=shard.slug,
            attempt=state.next_attempt,
            image=self.specs[cell.id],
            command=cell.command,
            files=files,
            complement=complement,
            only=only,
            skip=skip,
            rerun=bool(select),
            roots=self.mf.tests.paths,
            timeout=self.mf.tests.timeout,
            resources=cell.resources,
            env=tuple({**dict(cell.env), **dict(self.opt.env)}.items()),
            network=self.mf.tests.network,
            install_project=self.mf.tests.install_project,
            source_digest=self.tree.digest,
            coverage=self.mf.coverage,
            workdir=self.mf.tests.workdir,
            user=self.mf.tests.user,
            output_limit=self.mf.tests.output_limit,
            owner=self.opt.owner,
            job=self.job,
        )
        state.next_attempt += 1
        if not state.started:
            state.started = time.monotonic()
        ref = cluster.submit(req, tarball, max_retries=self.opt.infra_retries, avoid_node=avoid_node)
        self.inflight[ref] = (state, req, select)
        self.submitted[ref] = time.monotonic()
        self.view.shard(cell.id, state.shard.slug, req.attempt, "running")

    def _others_files(self, state: ShardState) -> tuple[str, ...]:
        """Files wholly run by the cell's other shards (a file split across shards stays with its parts)."""
        mine = set(state.shard.files)
        return tuple(sorted({f for s in self.states[state.cell.id] if s is not state for f in s.shard.files} - mine))

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

    def _handle(self, ref: Any, outcome: ShardOutcome | None, error: str) -> None:
        state, req, select = self.inflight.pop(ref)
        wall = time.monotonic() - self.submitted.pop(ref, time.monotonic())
        if outcome is None:
            if error == "cancelled":
                state.cancelled = True
                return
            # Ray gave up after its own retries (node or worker lost): final for this attempt, not retried again
            outcome = ShardOutcome(req.cell_id, req.shard, req.attempt, None, infra_error=error)
            att = evaluate(outcome, req.timeout)
            state.attempts.append(att)
            self._save(outcome)
            self._shard_done(state, att)
            return
        self._save(outcome)
        att = evaluate(outcome, req.timeout)
        att.wall = wall
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

    def _shard_done(self, state: ShardState, att: Attempt, passed: int = 0, failed: int = 0) -> None:
        state.done = True
        state.ended = time.monotonic()
        cell_id = state.cell.id
        tests = fold(a for s in [state] for a in s.attempts)
        # a genuine failure: a test failed, errored or timed out on every attempt, or pytest itself could not run
        # the shard; flaky tests and a broken environment (infra) are not
        genuine = any(h.status in BAD for h in tests.values()) or att.kind == "error"
        self.view.shard(
            cell_id,
            state.shard.slug,
            att.attempt,
            "failed" if genuine or att.kind not in ("ok", "no_tests") else "done",
            passed,
            failed,
        )
        if all(s.done or s.cancelled for s in self.states[cell_id]):
            self._finish_cell(cell_id)
        if genuine and self.opt.fail_fast and not self.cancelled and not self.cluster_lost:
            self.cancelled = True
            self.fail_fast_by = cell_id
            self.view.note(
                f"fail-fast: {cell_id} failed (after its reruns); cancelling the rest of the matrix "
                "(strategy.fail-fast: false runs every cell)"
            )
            cluster.cancel(list(self.inflight))
            for entry in self.queue:
                entry[3].cancelled = True
            self.queue.clear()

    def _finish_cell(self, cell_id: str) -> None:
        if cell_id in self.finished_cells:
            return
        self.finished_cells.add(cell_id)
        res = self._cell_result(cell_id)
        self.view.cell(cell_id, str(res.status), res.counts(), res.reason.splitlines()[0] if res.reason else "")

    def _cell_result(self, cell_id: str) -> CellResult:
        cell = self.cells[cell_id]
        states = self.states[cell_id]
        attempts = [a for s in states for a in s.attempts]
        tests = fold(attempts)
        if cell_id in self.build_errors:
            status, reason = Status.ERROR, self.build_errors[cell_id]
        else:
            status, reason = cell_status(tests, attempts)
            if any(s.cancelled and not s.done for s in states) and status not in (Status.FAILED, Status.INFRA):
                status = Status.CANCELLED
                if self.interrupted.is_set():
                    reason = "interrupted"
                else:
                    reason = (
                        f"cancelled by fail-fast: {self.fail_fast_by} failed "
                        "(strategy.fail-fast: false runs every cell)"
                    )
        spans = [(s.started, s.ended or time.monotonic()) for s in states if s.started]
        duration = max(e for _, e in spans) - min(b for b, _ in spans) if spans else 0.0
        return CellResult(
            cell_id=cell_id,
            axes=cell.axes,
            status=status,
            reason=reason,
            tests=tests,
            attempts=attempts,
            duration=duration,
            image=self.image_tags.get(cell_id, ""),
        )
