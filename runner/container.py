"""Run one shard attempt in one fresh container -> ShardOutcome. Docker lives here; Ray does not.

The request and the outcome are plain data carrying bytes, never host paths: the shard may run on another node.
The project arrives as a tarball (bytes) and is baked, with the project installed, into a thin source layer over
the cell image (once per node and snapshot); each attempt's container writes only to its own copy-on-write
layer, so shards never share a writable tree and the user's own tree is never mounted. Every container carries
the run/cell/shard labels and is removed on every path out of here: success, failure, timeout, exception.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from runner import engine, images
from runner.config import CoverageConfig
from runner.images import ImageSpec
from runner.matrix import Resources

if TYPE_CHECKING:
    import docker

SRC = images.SOURCE_DIR  # baked into the source layer; each container writes to its own copy-on-write layer
OUT = "/mr/out"
SIDE = "/mr/side"
SETUP_FAILED = images.SETUP_FAILED  # the project could not be installed in the cell image


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


@dataclass(frozen=True)
class ShardOutcome:
    cell_id: str
    shard: str
    attempt: int
    exit_code: int | None  # None when the container never ran to an exit
    junit: bytes = b""
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


SECRET_MARKS = ("TOKEN", "SECRET", "PASSWORD", "PASSWD", "KEY", "CREDENTIAL", "AUTH", "COOKIE", "SESSION")


def is_secret(name: str) -> bool:
    """Variables named like secrets: their values never reach a log or a report."""
    return any(mark in name.upper() for mark in SECRET_MARKS)


def mask_secrets(data: bytes, env: tuple[tuple[str, str], ...]) -> bytes:
    """Replace the values of secret-named variables by *** in output that will be stored or shown."""
    for name, value in env:
        if is_secret(name) and len(value) >= 4:
            data = data.replace(value.encode(), b"***")
    return data


def labels_for(req: ShardRequest) -> dict[str, str]:
    return {
        engine.LABEL_RUN: req.run_id,
        engine.LABEL_CELL: req.cell_id,
        engine.LABEL_SHARD: req.shard,
        engine.LABEL_ATTEMPT: str(req.attempt),
        engine.LABEL_ROLE: "shard",
    }


def gpu_mode() -> str:
    """How Ray's GPU ids reach a container: ``device-request`` (Docker's --gpus, the default) or ``nvidia-env``
    (NVIDIA_VISIBLE_DEVICES for hosts whose default runtime is nvidia-container-runtime). Set on the nodes
    with MATRIX_RUN_GPU_MODE."""
    mode = os.environ.get("MATRIX_RUN_GPU_MODE", "device-request")
    return mode if mode in ("device-request", "nvidia-env") else "device-request"


def _environment(req: ShardRequest, gpu_ids: tuple[str, ...] = ()) -> dict[str, str]:
    env = dict(req.env)
    if gpu_ids:
        env["MATRIX_RUN_GPU_IDS"] = ",".join(gpu_ids)  # host ids, as Ray assigned them
        if gpu_mode() == "nvidia-env":
            env["NVIDIA_VISIBLE_DEVICES"] = ",".join(gpu_ids)
    env.update(
        {
            "MATRIX_RUN": "1",
            "MATRIX_RUN_ID": req.run_id,
            "MATRIX_RUN_CELL": req.cell_id,
            "MATRIX_RUN_SHARD": req.shard,
            "MATRIX_RUN_ATTEMPT": str(req.attempt),
            "PYTHONPATH": SIDE + (":" + env["PYTHONPATH"] if env.get("PYTHONPATH") else ""),
            "PYTHONDONTWRITEBYTECODE": "1",
            "PIP_DISABLE_PIP_VERSION_CHECK": "1",
            "HOME": "/tmp",
        }
    )
    return env


@engine.api_call
def _create(client: docker.DockerClient, req: ShardRequest, tag: str, work: Path, gpu_ids: tuple[str, ...]):  # type: ignore[no-untyped-def]
    import docker.types

    kwargs: dict[str, object] = {}
    if req.resources.memory:
        kwargs["mem_limit"] = req.resources.memory
        kwargs["memswap_limit"] = req.resources.memory
    if req.resources.cpus:
        kwargs["nano_cpus"] = int(req.resources.cpus * 1e9)
    if gpu_ids and gpu_mode() == "device-request":
        kwargs["device_requests"] = [docker.types.DeviceRequest(device_ids=list(gpu_ids), capabilities=[["gpu"]])]
    return client.containers.create(
        tag,
        command=["python", f"{SIDE}/entry.py", f"{OUT}/request.json"],
        working_dir=SRC,
        environment=_environment(req, gpu_ids),
        labels=labels_for(req),
        volumes={
            str(work / "out"): {"bind": OUT, "mode": "rw"},
            str(images.SIDE_DIR): {"bind": SIDE, "mode": "ro"},
        },
        network_mode=req.network,
        detach=True,
        init=True,
        **kwargs,
    )


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:
        return b""


def run_shard(req: ShardRequest, tarball: bytes, gpu_ids: tuple[str, ...] = ()) -> ShardOutcome:
    """Run one shard attempt to its end and return what it produced. Never raises for Docker trouble."""
    import docker.errors
    import requests.exceptions

    started = time.monotonic()
    node = socket.gethostname()
    work = Path(tempfile.mkdtemp(prefix=f"matrix-run-{req.run_id}-"))
    container = None
    exit_code: int | None = None
    timed_out = oom = False
    infra = ""
    log = b""
    try:
        client = engine.connect()
        labels = {engine.LABEL_RUN: req.run_id}
        tag = images.ensure_cell_image(
            client, req.image, tarball, req.source_digest, req.install_project, req.roots, labels=labels
        ).tag
        (work / "out").mkdir()
        (work / "out" / "request.json").write_text(
            json.dumps(
                {
                    "src": SRC,
                    "out": OUT,
                    "command": list(req.command),
                    "roots": list(req.roots),
                    "select": bool(req.only or req.skip),
                    "install_project": req.install_project,
                    "coverage": {"source": list(req.coverage.source), "branch": req.coverage.branch}
                    if req.coverage.enabled
                    else None,
                }
            )
        )
        if req.only or req.skip:
            select = {"only": list(req.only), "skip": list(req.skip), "fallback": req.rerun}
            (work / "out" / "select.json").write_text(json.dumps(select))
        files = {"exclude" if req.complement else "include": list(req.files)}
        (work / "out" / "files.json").write_text(json.dumps(files))
        _remove_stale(client, req)
        container = _create(client, req, tag, work, gpu_ids)
        container.start()
        try:
            result = container.wait(timeout=req.timeout)
            exit_code = int(result.get("StatusCode", -1))
        except (requests.exceptions.ReadTimeout, requests.exceptions.ConnectionError):
            timed_out = True
            _kill(container)
        state = _state(container)
        oom = bool(state.get("OOMKilled"))
        if exit_code is None and not timed_out:
            exit_code = int(state.get("ExitCode", -1))
        log = container.logs(stdout=True, stderr=True)
    except images.SetupFailed as exc:
        exit_code = SETUP_FAILED
        log = exc.log_tail.encode()
    except images.BuildFailed as exc:
        infra = f"image: {exc}"
        log = exc.log_tail.encode()
    except (docker.errors.DockerException, requests.exceptions.RequestException, OSError) as exc:
        infra = f"docker: {exc.__class__.__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:500]
    except Exception as exc:  # an EnvironmentProblem from connect(), or anything the engine threw at us
        infra = f"{exc.__class__.__name__}: {exc}"[:500]
    finally:
        if container is not None:
            _remove(container)
        out = work / "out"
        junit, report, coverage = _read(out / "junit.xml"), _read(out / "report.jsonl"), _read(out / ".coverage")
        shutil.rmtree(work, ignore_errors=True)
    junit, report, log = (mask_secrets(b, req.env) for b in (junit, report, log))
    return ShardOutcome(
        cell_id=req.cell_id,
        shard=req.shard,
        attempt=req.attempt,
        exit_code=exit_code,
        junit=junit,
        report=report,
        log=log,
        coverage=coverage,
        duration=time.monotonic() - started,
        timed_out=timed_out,
        oom_killed=oom,
        infra_error=infra,
        node=node,
        gpu_ids=tuple(gpu_ids),
    )


def _remove_stale(client: docker.DockerClient, req: ShardRequest) -> None:
    """A task that Ray re-executes (its worker or node died) may find its earlier container still running."""
    selector = [f"{k}={v}" for k, v in labels_for(req).items()]
    for old in client.containers.list(all=True, filters={"label": selector}):
        _remove(old)


def _state(container) -> dict:  # type: ignore[no-untyped-def,type-arg]
    container.reload()
    return dict(container.attrs.get("State", {}))


def _kill(container) -> None:  # type: ignore[no-untyped-def]
    import docker.errors

    with contextlib.suppress(docker.errors.APIError):
        container.kill()


def _remove(container) -> None:  # type: ignore[no-untyped-def]
    import docker.errors

    for _ in range(3):
        try:
            container.remove(force=True)
            return
        except docker.errors.NotFound:
            return
        except docker.errors.APIError:
            time.sleep(0.5)


def remove_run_containers(run_id: str) -> int:
    """Stop and remove every container of a run on this node's engine (found by label). Returns the count.

    Also removes the run's attempt folders left on this node by a shard whose Ray worker died before its own
    cleanup (node lost, task force-cancelled by Ctrl-C or fail-fast).
    """
    import docker.errors

    removed = 0
    try:
        client = engine.connect(timeout=30)
    except Exception:
        client = None
    if client is not None:
        for c in client.containers.list(all=True, filters={"label": f"{engine.LABEL_RUN}={run_id}"}):
            try:
                c.remove(force=True)
                removed += 1
            except docker.errors.APIError:
                pass
    for work in Path(tempfile.gettempdir()).glob(f"matrix-run-{run_id}-*"):
        if work.is_dir() and not work.is_symlink():
            shutil.rmtree(work, ignore_errors=True)
    return removed
