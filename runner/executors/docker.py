"""The Docker executor: one shard attempt in one fresh container -> ShardOutcome. Docker lives here; Ray does not.

The request and the outcome are plain data carrying bytes, never host paths: the shard may run on another node.
The project arrives as a tarball (bytes) and is baked, with the project installed, into a thin source layer over
the cell image (once per node and snapshot); each attempt's container writes only to its own copy-on-write
layer, so shards never share a writable tree and the user's own tree is never mounted. Every container carries
the run/cell/shard labels and is removed on every path out of here: success, failure, timeout, exception.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runner import engine, images, outputs, workspace
from runner.errors import EnvironmentProblem
from runner.execution import SETUP_FAILED, ShardOutcome, ShardRequest
from runner.executors import write_inputs
from runner.masking import mask_report, mask_secrets

if TYPE_CHECKING:
    import docker

SRC = images.SOURCE_DIR  # baked into the source layer; each container writes to its own copy-on-write layer
OUT = "/mr/out"
SIDE = "/mr/side"


def labels_for(req: ShardRequest) -> dict[str, str]:
    return {
        engine.LABEL_RUN: req.run_id,
        engine.LABEL_CELL: req.cell_id,
        engine.LABEL_SHARD: req.shard,
        engine.LABEL_ATTEMPT: str(req.attempt),
        engine.LABEL_ROLE: "shard",
        engine.LABEL_OWNER: req.owner,
        engine.LABEL_JOB: req.job,
    }


# What a test suite may do as root (tests.user: root): Docker's defaults less raw sockets, device nodes, file
# capabilities, chroot and audit writes. The unprivileged test user (the default) has no capabilities at all.
ROOT_CAPABILITIES = ("CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID", "NET_BIND_SERVICE")
DEFAULT_MEMORY_FLOOR = 1024**3  # bytes: the least a shard gets when resources.memory is not set


def default_memory(cpus: float) -> int:
    """resources.memory unset: the node's memory shared out by CPUs (a shard asking for 1 of 16 CPUs gets 1/16),
    at least 1 GiB, at most all of it. Read on the node that runs the shard."""
    import psutil

    total = int(psutil.virtual_memory().total)
    share = int(total * min(1.0, max(cpus, 0.01) / max(os.cpu_count() or 1, 1)))
    return min(total, max(DEFAULT_MEMORY_FLOOR, share))


def container_user(req: ShardRequest) -> str | None:
    if req.user == "root":
        return None
    if req.user == "auto":
        return f"{images.TEST_UID}:{images.TEST_UID}"
    return req.user if ":" in req.user else f"{req.user}:{req.user}"


def gpu_mode() -> str:
    """How Ray's GPU ids reach a container: ``device-request`` (Docker's --gpus, the default: the engine's NVIDIA
    device driver, checked before a node's first GPU shard) or ``nvidia-env`` (NVIDIA_VISIBLE_DEVICES for hosts
    whose default runtime is nvidia-container-runtime; not checked). Set on the nodes with MATRIX_RUN_GPU_MODE."""
    mode = os.environ.get("MATRIX_RUN_GPU_MODE", "device-request")
    return mode if mode in ("device-request", "nvidia-env") else "device-request"


def ordered_gpus(gpu_ids: tuple[str, ...]) -> tuple[str, ...]:
    """Ray's GPU ids in the order the container numbers its devices: by index (NVML's, PCI bus order), so that
    ``MATRIX_RUN_GPU_IDS``'s k-th id is ``cuda:k`` inside. Ids that are not indices (UUIDs) keep Ray's order."""
    return tuple(sorted(gpu_ids, key=int)) if all(g.isdigit() for g in gpu_ids) else tuple(gpu_ids)


def gpu_environment(gpu_ids: tuple[str, ...], user_env: dict[str, str]) -> dict[str, str]:
    """What a container's processes are told about its GPUs. It sees only the devices of its device request,
    numbered from 0, so CUDA_VISIBLE_DEVICES counts 0..n-1: Ray's own CUDA_VISIBLE_DEVICES (host ids, set in its
    worker) would name devices the container does not have, and never reaches it. MATRIX_RUN_GPU_IDS keeps the
    host ids for the record. A shard without GPUs gets NVIDIA_VISIBLE_DEVICES=void: none, even where the engine's
    default runtime is NVIDIA's and the image says ``all`` (CUDA base images do)."""
    if not gpu_ids:
        return {"NVIDIA_VISIBLE_DEVICES": "void"}
    env = {
        "MATRIX_RUN_GPU_IDS": ",".join(gpu_ids),
        "CUDA_VISIBLE_DEVICES": ",".join(str(i) for i in range(len(gpu_ids))),
        "CUDA_DEVICE_ORDER": user_env.get("CUDA_DEVICE_ORDER", "PCI_BUS_ID"),  # as NVML and Docker number them
    }
    if gpu_mode() == "nvidia-env":
        env["NVIDIA_VISIBLE_DEVICES"] = ",".join(gpu_ids)
    # device-request: dockerd's NVIDIA driver sets NVIDIA_VISIBLE_DEVICES from the request's ids itself
    return env


def _environment(req: ShardRequest, gpu_ids: tuple[str, ...] = ()) -> dict[str, str]:
    env = dict(req.env)
    env.update(gpu_environment(gpu_ids, env))
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
    memory = req.resources.memory or default_memory(req.resources.cpus)
    kwargs["mem_limit"] = memory
    kwargs["memswap_limit"] = memory
    user = container_user(req)
    if user is not None:
        kwargs["user"] = user
        kwargs["cap_drop"] = ["ALL"]
    else:
        kwargs["cap_drop"] = ["ALL"]
        kwargs["cap_add"] = list(ROOT_CAPABILITIES)
    if req.resources.cpus:
        kwargs["nano_cpus"] = int(req.resources.cpus * 1e9)
    if gpu_ids and gpu_mode() == "device-request":
        kwargs["device_requests"] = [_device_request(gpu_ids)]
    if req.resources.shm:
        kwargs["shm_size"] = req.resources.shm
    if req.resources.ipc:
        kwargs["ipc_mode"] = req.resources.ipc
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
        pids_limit=req.resources.pids,
        security_opt=["no-new-privileges:true"],
        # the log is read back whole: keep the newest part of a suite that prints without end
        log_config=docker.types.LogConfig(
            type="json-file", config={"max-size": f"{max(1, req.output_limit // (1024 * 1024))}m", "max-file": "1"}
        ),
        **kwargs,
    )


def _device_request(gpu_ids: tuple[str, ...]) -> Any:
    """Exactly these GPUs, by id (``docker run --gpus '"device=2,3"'``)."""
    import docker.types

    return docker.types.DeviceRequest(device_ids=list(gpu_ids), capabilities=[["gpu"]])


NO_GPU_DRIVER = 'could not select device driver ""'  # Docker's answer when it has no NVIDIA device driver
GPU_CHECK_TTL = 300.0  # seconds a "cannot pass GPUs" answer is kept: a node fixed meanwhile is asked again
_gpu_answers: dict[str, tuple[str, float]] = {}  # engine address -> (why it cannot pass GPUs or "", asked when)


class CannotPassGpus(Exception):
    """This node's Docker engine cannot give a container GPUs: the shard's infra error, naming the node."""


def engine_address() -> str:
    return os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"


def gpu_problem(client: docker.DockerClient, tag: str, gpu_ids: tuple[str, ...], req: ShardRequest) -> str:
    """Why this node's engine cannot pass GPUs to a container ("" when it can). Docker itself is asked, once per
    engine and node process: a tiny container of ``tag`` with a device request for ``gpu_ids`` is started. Docker
    starts it only when a device driver took the request (the NVIDIA one registers itself when dockerd finds
    nvidia-container-runtime-hook on its PATH) and that driver's prestart hook succeeded."""
    where = engine_address()
    known = _gpu_answers.get(where)
    if known is not None and (not known[0] or time.monotonic() - known[1] < GPU_CHECK_TTL):
        return known[0]
    answer, definite = _ask_for_gpus(client, tag, gpu_ids, req, where)
    if definite:
        _gpu_answers[where] = (answer, time.monotonic())
    return answer


def _ask_for_gpus(
    client: docker.DockerClient, tag: str, gpu_ids: tuple[str, ...], req: ShardRequest, where: str
) -> tuple[str, bool]:
    """(why not or "", whether that answer holds for every GPU of the engine)."""
    import docker.errors

    node = socket.gethostname()
    labels = {**labels_for(req), engine.LABEL_ROLE: "gpu-check"}
    probe = client.containers.create(
        tag,
        entrypoint=["python", "-c", "pass"],
        command=[],
        labels=labels,
        network_mode="none",
        user=container_user(req) or "0:0",
        cap_drop=["ALL"],
        security_opt=["no-new-privileges:true"],
        device_requests=[_device_request(gpu_ids)],
    )
    try:
        probe.start()
        with contextlib.suppress(Exception):
            probe.wait(timeout=60)
        return "", True
    except docker.errors.APIError as exc:
        said = str(exc.explanation or exc).strip().splitlines()[0][:300] if str(exc.explanation or exc) else ""
        if NO_GPU_DRIVER in said:
            return (
                f"Docker on node {node} ({where}) cannot pass GPUs: no NVIDIA container runtime or CDI spec "
                f"(the engine says: {said}); install nvidia-container-toolkit there and restart dockerd, "
                "or run GPU cells there with executor: host",
                True,
            )
        return (
            f"Docker on node {node} ({where}) could not start a container with GPU(s) {','.join(gpu_ids)}: {said}",
            False,
        )
    finally:
        _remove(probe)


class DockerExecutor:
    """The default executor: each attempt in a fresh container of the cell's image (built on this node if missing)."""

    name = "docker"

    def run(self, request: ShardRequest, tarball: bytes, gpu_ids: tuple[str, ...] = ()) -> ShardOutcome:
        return run_shard(request, tarball, gpu_ids)

    def stop(self, request: ShardRequest) -> None:
        _remove_stale(engine.connect(), request)


def run_shard(req: ShardRequest, tarball: bytes, gpu_ids: tuple[str, ...] = ()) -> ShardOutcome:
    """Run one shard attempt to its end and return what it produced. Never raises for Docker trouble."""
    import docker.errors
    import requests.exceptions

    started = time.monotonic()
    node = socket.gethostname()
    gpu_ids = ordered_gpus(tuple(gpu_ids))
    # this attempt's private folder, claimed by this process: a sweep removes it once this process is gone
    attempt_id = f"{req.run_id}.{secrets.token_hex(6)}"
    work = workspace.work_dir(attempt_id)
    workspace.claim_run(attempt_id, workspace.owner_token())
    container = None
    exit_code: int | None = None
    timed_out = oom = False
    infra = ""
    log = b""
    image_seconds, image_built = 0.0, False
    try:
        client = engine.connect()
        labels = {engine.LABEL_RUN: req.run_id, engine.LABEL_OWNER: req.owner}
        cell_image = images.ensure_cell_image(
            client,
            req.image,
            tarball,
            req.source_digest,
            req.install_project,
            req.roots,
            labels=labels,
            workdir=req.workdir,
        )
        tag = cell_image.tag
        image_seconds = time.monotonic() - started
        image_built = cell_image.env_built or cell_image.layer_built
        if gpu_ids and gpu_mode() == "device-request":
            problem = gpu_problem(client, tag, gpu_ids, req)
            if problem:  # the same on every rerun here: retries.infra bounds them, and prefers another node
                raise CannotPassGpus(problem)
        (work / "out").mkdir(mode=0o700)
        user = container_user(req)
        if user is not None:  # the test user writes its reports here; the folder above stays root's own
            uid, _, gid = user.partition(":")
            os.chown(work / "out", int(uid), int(gid or uid))
        write_inputs(work / "out", req, SRC, OUT)
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
    except CannotPassGpus as exc:
        infra = str(exc)
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
        # what the container left is untrusted: read without following links, regular files only, capped
        report_out = outputs.read_output(work / "out", "report.jsonl", req.output_limit)
        coverage_out = outputs.read_output(work / "out", ".coverage", req.output_limit)
        workspace.release_run(attempt_id)
    report, log = mask_report(report_out.data, req.env), mask_secrets(log[-req.output_limit :], req.env)
    problems = [o.problem for o in (report_out, coverage_out) if o.problem]
    return ShardOutcome(
        cell_id=req.cell_id,
        shard=req.shard,
        attempt=req.attempt,
        exit_code=exit_code,
        report=report,
        log=log,
        coverage=coverage_out.data,
        duration=time.monotonic() - started,
        timed_out=timed_out,
        oom_killed=oom,
        infra_error=infra,
        node=node,
        gpu_ids=tuple(gpu_ids),
        output_problem="; ".join(problems),
        image_seconds=image_seconds,
        image_built=image_built,
    )


def _remove_stale(client: docker.DockerClient, req: ShardRequest) -> None:
    """This attempt's containers: one that Ray re-executes (its worker or node died) may find its earlier container
    still running; a cancelled attempt running in a thread (machine.py) is ended by removing its container."""
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


def _listed(label: str) -> tuple[Any, list[dict[str, Any]]]:
    """(client, this node's containers in any state carrying ``label``, ``KEY`` or ``KEY=VALUE``); (None, []) when
    no engine answers. The low-level list: docker-py's high-level one inspects each container, and fails on one
    removed meanwhile."""
    import docker.errors

    try:
        client = engine.connect(timeout=30)
        return client, list(client.api.containers(all=True, filters={"label": label}))
    except (docker.errors.DockerException, OSError, EnvironmentProblem):
        return None, []


def _remove_listed(client: Any, container: dict[str, Any]) -> bool:
    """Remove one container that ``_listed`` returned; False when it was gone already or could not be removed."""
    import docker.errors

    try:
        client.api.remove_container(container["Id"], force=True)
        return True
    except (docker.errors.DockerException, OSError):
        return False


def engine_answers() -> bool:
    """Whether this node's Docker engine answers (a node without one can serve only host cells)."""
    try:
        engine.connect(timeout=10)
        return True
    except EnvironmentProblem:
        return False


def remove_run_containers(run_id: str) -> int:
    """Stop and remove every container of a run on this node's engine (found by label). Returns the count.

    Also removes the run's attempt folders left on this node by a shard whose Ray worker died before its own
    cleanup (node lost, task force-cancelled by Ctrl-C or fail-fast).
    """
    client, listed = _listed(f"{engine.LABEL_RUN}={run_id}")
    removed = sum(_remove_listed(client, c) for c in listed)
    with contextlib.suppress(Exception):  # a node without its state folder has no attempt folders either
        workspace.release_runs(f"{run_id}.")
    return removed


def sweep_leftovers(gcs: str = "", live_jobs: frozenset[str] = frozenset()) -> tuple[int, int]:
    """Remove what earlier runs left on this node when their coordinator died (SIGKILL, a lost machine):
    containers whose owner label names a process of this host that no longer runs, or (``gcs``: swept for a Ray
    cluster, whose GCS address that is) a coordinator of that cluster on another host whose Ray job is not among
    ``live_jobs``; and shard work folders whose owning process is gone. Containers of live coordinators, and of
    coordinators that cannot be judged from here, stay. Returns (containers removed, work folders removed)."""

    removed = 0
    client, listed = _listed(engine.LABEL_OWNER)
    for c in listed:
        labels = c.get("Labels") or {}
        labels = labels if isinstance(labels, dict) else {}
        owner, job = str(labels.get(engine.LABEL_OWNER, "")), str(labels.get(engine.LABEL_JOB, ""))
        alive = workspace.owner_alive(owner) if owner else None
        if alive is None and gcs and job.startswith(f"{gcs}/"):
            alive = job.split("/", 1)[1] in live_jobs
        if alive is False and _remove_listed(client, c):
            removed += 1
    folders = len(workspace.sweep_dead_runs())
    return removed, folders
