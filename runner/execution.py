"""The types that cross the execution seam, and the seam itself. Plain data; no Docker, no Ray.

A ``ShardRequest`` goes in, a ``ShardOutcome`` comes out, on whichever node the transport (cluster.py) placed
the request; the ``Executor`` named by the request (executors/docker.py, executors/host.py) turns one into the
other. Everything here pickles: it crosses a Ray task boundary, and may land on another machine.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Protocol

from runner import outputs
from runner.config import CoverageConfig
from runner.images import SETUP_FAILED, ImageSpec
from runner.matrix import Resources

if TYPE_CHECKING:
    from runner.results import CellResult

__all__ = ["SETUP_FAILED", "AttemptKind", "Executor", "RunResults", "ShardOutcome", "ShardRequest"]


class AttemptKind(StrEnum):
    """How one shard attempt ended (results.evaluate decides)."""

    OK = "ok"  # pytest ran to its end; its tests say the rest
    TIMEOUT = "timeout"  # tests.timeout struck
    INFRA = "infra"  # the environment broke (engine, node, OOM): rerun elsewhere, never the tests' fault
    ERROR = "error"  # the command could not run the suite (no plugin start, a crash, an install that failed)
    NO_TESTS = "no_tests"  # pytest collected nothing

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class ShardRequest:
    run_id: str
    cell_id: str
    shard: str  # the shard's slug, e.g. "shard-2of3"
    attempt: int
    image: ImageSpec
    command: tuple[str, ...]
    files: tuple[str, ...]  # the shard's files; with ``complement``, the files it must leave to other shards
    complement: bool = False
    roots: tuple[str, ...] = ()  # what pytest is pointed at (tests.paths); empty = the project's own testpaths
    only: tuple[str, ...] = ()  # node ids restricting the files they belong to (a rerun, a split file)
    skip: tuple[str, ...] = ()  # node ids left to other shards
    rerun: bool = False  # ``only`` names tests to run again (a vanished id falls back to its function)
    timeout: float = 1800.0
    resources: Resources = field(default_factory=Resources)
    env: tuple[tuple[str, str], ...] = ()
    network: str = "bridge"
    install_project: bool = True
    source_digest: str = ""
    coverage: CoverageConfig = field(default_factory=CoverageConfig)
    workdir: str = ""  # tests.workdir: the folder the command runs in, relative to the project
    user: str = "auto"  # tests.user: "auto" (the unprivileged test user), "root", or "UID[:GID]"
    output_limit: int = outputs.DEFAULT_LIMIT  # bytes per output file read back (tests.output-limit)
    owner: str = ""  # the coordinator process that owns this run (workspace.owner_token), as a label
    job: str = ""  # the coordinator's Ray job (GCS-ADDRESS/JOB-ID): how a node on another host tells it is gone
    executor: str = "docker"  # which Executor runs it on its node: "docker" or "host"
    runs_on: str = ""  # the node label it must be placed on ("" = any node)
    python: str = "python3"  # the host executor's interpreter (a name on the node's PATH, or a path)


@dataclass(frozen=True)
class ShardOutcome:
    cell_id: str
    shard: str
    attempt: int
    exit_code: int | None  # None when the container never ran to an exit
    report: bytes = b""  # the plugin's JSON lines
    log: bytes = b""
    coverage: bytes = b""  # coverage data file, when coverage is on
    duration: float = 0.0
    timed_out: bool = False
    oom_killed: bool = False
    infra_error: str = ""  # the environment broke (Docker API, image, node); empty when it did not
    node: str = ""  # host name
    node_id: str = ""  # Ray node id, so an infra rerun can go elsewhere
    gpu_ids: tuple[str, ...] = ()
    output_problem: str = ""  # an output file that was there but could not be trusted (a link, a FIFO, too big)
    setup_error: str = ""  # the cell's environment could not be made on this node (no interpreter, pip failed)
    image_seconds: float = 0.0  # of ``duration``: making sure the cell's image was on the node (a build, if any)
    image_built: bool = False  # the shard found the image missing and built it (holding its test slot)


class Executor(Protocol):
    """Runs one shard attempt on the node this code runs on: request in, outcome out, never raising for trouble
    of the environment (that is an outcome with ``infra_error``)."""

    name: str

    def run(self, request: ShardRequest, tarball: bytes, gpu_ids: tuple[str, ...] = ()) -> ShardOutcome: ...

    def stop(self, request: ShardRequest) -> None:
        """End the attempt ``request`` that runs on this node in another thread (its ``run`` then returns soon)."""
        ...


@dataclass
class RunResults:
    run_id: str
    cells: list[CellResult]
    interrupted: bool
    cancelled: bool
    duration: float
    images_built: int
    images_reused: int
    image_check_seconds: float = 0.0  # the longest check of an image that was already there
    fail_fast_by: str = ""  # the cell whose confirmed failure cancelled the rest (strategy.fail-fast)
    cluster_lost: str = ""  # why the run lost its Ray cluster mid-run, when it did
    # how each cell's image reached each node before its shards: cell, node, hostname, how, seconds, error
    image_nodes: list[dict[str, object]] = field(default_factory=list)
