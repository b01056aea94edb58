"""``matrix-run cluster up | status | down | join``: a real Ray cluster of several nodes, started with ``ray start``.

``up`` starts a head and N worker nodes on this machine, each its own raylet with its own ports and its own temp
folder (``--temp-dir``, per node) under one short private folder; ``join`` starts one worker node here that joins a
head elsewhere. Every node runs with Ray's token authentication on (``RAY_AUTH_MODE=token``, ``RAY_AUTH_TOKEN_PATH``
naming a 0600 file in matrix-run's private state folder), so a client without the token is refused by the GCS and by
the Jobs API alike.

What was started is kept in ``cluster/state.json`` of the private state folder: the GCS address, the Jobs API URL,
the token file, the temp folder and the processes (pid and start time; ``ray start`` leaves daemons behind it).
``down`` stops exactly those processes, and any that names the cluster's temp folder or GCS address (the ones Ray
started later: workers, agents, job drivers), with SIGTERM and then SIGKILL; never a machine-wide ``ray stop``,
which would also stop every other Ray on the machine.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from runner import node_engine, workspace
from runner.errors import EnvironmentProblem, UserError

STATE_NAME = "state.json"
TOKEN_NAME = "token"
START_TIMEOUT = 180.0  # seconds one `ray start` may take (a worker start never ends while its GCS is unreachable)
STOP_GRACE = 10.0  # seconds between SIGTERM and SIGKILL in `down`
JOB_STOP_WAIT = 120  # RAY_JOB_STOP_WAIT_TIME_S: a stopped job's coordinator removes its containers before SIGKILL
IMAGE_PREFIX = "matrix-run/"
# Ray's unix socket paths live under each node's temp folder and must stay below 108 bytes
MAX_TEMP_ROOT = 40


@dataclass(frozen=True)
class NodeSpec:
    """One node this machine runs for the cluster."""

    name: str  # head, worker-1, ... (join: joined-HOST-N)
    temp_dir: str
    cpus: float
    gpus: float
    gpus_simulated: bool
    labels: tuple[str, ...]


@dataclass(frozen=True)
class ProcessRecord:
    pid: int
    create_time: float
    name: str


@dataclass
class ClusterState:
    """What ``cluster up`` or ``cluster join`` started on this machine (the state file)."""

    role: str  # "head": cluster up; "worker": cluster join (nodes of a cluster whose head runs elsewhere)
    gcs_address: str
    dashboard_url: str  # "" for a worker-only state
    token_path: str  # "" when the cluster runs without token authentication
    temp_root: str
    host: str  # hostname of the machine that started it
    nodes: list[NodeSpec] = field(default_factory=list)
    pids: list[ProcessRecord] = field(default_factory=list)
    started: float = 0.0
    ray_version: str = ""
    engines: list[dict[str, Any]] = field(default_factory=list)  # --own-engines: each worker's node_engine

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> ClusterState:
        data = json.loads(text)
        data["nodes"] = [NodeSpec(**{**n, "labels": tuple(n["labels"])}) for n in data.get("nodes", [])]
        data["pids"] = [ProcessRecord(**p) for p in data.get("pids", [])]
        return cls(**data)


@dataclass(frozen=True)
class UpOptions:
    workers: int = 1
    cpus_per_worker: float | None = None  # default: this machine's CPUs shared out among the workers
    gpus_per_worker: float = 0.0
    labels: tuple[str, ...] = ()
    head_cpus: float | None = None  # default: 0 with workers (shards run on the workers), else all CPUs
    port: int = 6379
    dashboard_port: int = 8265
    host: str = "127.0.0.1"
    own_engines: bool = False  # each worker gets a Docker engine of its own (node_engine), as on separate machines


@dataclass(frozen=True)
class JoinOptions:
    address: str
    labels: tuple[str, ...] = ()
    cpus: float | None = None
    gpus: float = 0.0
    token_file: str = ""


@dataclass(frozen=True)
class DownResult:
    stopped: int  # processes ended by SIGTERM
    killed: int  # processes that needed SIGKILL
    remaining: tuple[int, ...]  # pids still there (should be none)
    jobs: int = 0  # running Ray Jobs asked to stop first


@dataclass(frozen=True)
class NodeStatus:
    node_id: str
    alive: bool
    address: str
    is_head: bool
    cpus: float
    gpus: float
    gpus_physical: int | None  # None: the node did not answer
    labels: tuple[str, ...]
    docker: bool | None
    images: tuple[str, ...]
    error: str = ""

    @property
    def gpus_simulated(self) -> bool:
        return self.gpus_physical is not None and self.gpus > self.gpus_physical

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "gpus_simulated": self.gpus_simulated}


# ------------------------------------------------------------------------------------------------ state file


def state_dir() -> Path:
    return workspace.subdir("cluster")


def state_path() -> Path:
    return state_dir() / STATE_NAME


def load_state() -> ClusterState | None:
    """The state file's cluster, or None when there is none."""
    path = state_path()
    try:
        fd = workspace.open_private(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    with os.fdopen(fd, "r", encoding="utf-8") as fh:
        text = fh.read()
    try:
        return ClusterState.from_json(text)
    except (ValueError, TypeError, KeyError) as exc:
        raise EnvironmentProblem(
            f"{path}: not a cluster state file ({exc.__class__.__name__}); remove it, and stop its Ray by hand"
        ) from None


def save_state(state: ClusterState) -> None:
    path = state_path()
    tmp = path.with_name(f".{STATE_NAME}.{secrets.token_hex(6)}.tmp")
    fd = workspace.open_private(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(state.to_json())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def remove_state() -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(state_path())


# ------------------------------------------------------------------------------------------------ token


def write_token(token: str) -> Path:
    """Keep ``token`` in the state folder's token file (0600, replaced atomically); its path."""
    path = state_dir() / TOKEN_NAME
    tmp = path.with_name(f".{TOKEN_NAME}.{secrets.token_hex(6)}.tmp")
    fd = workspace.open_private(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, token.encode())
        os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def read_token(path: str | Path) -> str:
    p = Path(path)
    try:
        token = p.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise UserError(
            f"token file {p}: cannot read it ({exc.strerror}); give the file `cluster up` printed"
        ) from None
    if not token or len(token) > 4096 or any(c.isspace() for c in token):
        raise UserError(f"token file {p}: does not hold one token (a single word); give the file `cluster up` printed")
    return token


def use_token(token_path: str) -> None:
    """Make this process's Ray clients authenticate with the token in ``token_path`` (children inherit it)."""
    os.environ["RAY_AUTH_MODE"] = "token"
    os.environ["RAY_AUTH_TOKEN_PATH"] = token_path
    os.environ.pop("RAY_AUTH_TOKEN", None)
    if "ray._raylet" in sys.modules:  # Ray caches its config and the token: make it read them again
        with contextlib.suppress(Exception):
            from ray._raylet import AuthenticationTokenLoader, Config  # type: ignore[attr-defined]

            Config.initialize("")
            AuthenticationTokenLoader.instance().reset_cache()


def _same_endpoint(a: str, b: str) -> bool:
    """Whether two host:port addresses name the same endpoint of this machine's cluster (loopback = node IP)."""
    ha, _, pa = a.split("://", 1)[-1].rstrip("/").rpartition(":")
    hb, _, pb = b.split("://", 1)[-1].rstrip("/").rpartition(":")
    if pa != pb:
        return False
    local = {"127.0.0.1", "localhost", "::1", "0.0.0.0", socket.gethostname(), _node_ip()}
    return ha == hb or (ha in local and hb in local)


def token_for(address: str) -> str:
    """The state file's token path when ``address`` (GCS host:port or a Jobs API URL) is its cluster's, else ""."""
    with contextlib.suppress(UserError, OSError):
        state = load_state()
        if state is None or not state.token_path:
            return ""
        if _same_endpoint(address, state.gcs_address) or (
            state.dashboard_url and _same_endpoint(address, state.dashboard_url)
        ):
            return state.token_path
    return ""


# ------------------------------------------------------------------------------------------------ processes


def _node_ip() -> str:
    with contextlib.suppress(Exception):
        from ray._private import services

        return str(services.get_node_ip_address())
    return "127.0.0.1"


def _proc_matches(cmdline: list[str], temp_root: str, gcs_address: str) -> bool:
    """A process of the cluster's nodes on this machine: it names the temp folder, or it is the head's Ray Client
    server (``ray.util.client.server --address=GCS``, whose command line names no folder)."""
    if any(temp_root + "/" in a or a == temp_root for a in cmdline):
        return True
    joined = " ".join(cmdline)
    return bool(gcs_address) and "ray.util.client.server" in joined and f"--address={gcs_address}" in joined


def _alive(proc: Any) -> bool:
    import psutil

    try:
        return bool(proc.status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


def cluster_processes(state: ClusterState) -> list[Any]:
    """Every live process of the state's nodes on this machine: the recorded ones (same pid and start time), those
    naming its temp folder or GCS address, and all their descendants (Ray workers, agents, job drivers)."""
    import psutil

    me = {os.getpid()}
    with contextlib.suppress(psutil.Error):
        me |= {p.pid for p in psutil.Process().parents()}
    found: dict[int, Any] = {}
    for rec in state.pids:
        with contextlib.suppress(psutil.Error):
            proc = psutil.Process(rec.pid)
            if abs(proc.create_time() - rec.create_time) < 0.05:
                found[proc.pid] = proc
    if state.temp_root:
        for proc in psutil.process_iter(["cmdline"]):
            with contextlib.suppress(psutil.Error):
                if _proc_matches(proc.info["cmdline"] or [], state.temp_root, state.gcs_address):
                    found[proc.pid] = proc
    for proc in list(found.values()):
        with contextlib.suppress(psutil.Error):
            found.update({c.pid: c for c in proc.children(recursive=True)})
    return [p for pid, p in found.items() if pid not in me and _alive(p)]


def _records(procs: list[Any]) -> list[ProcessRecord]:
    import psutil

    out = []
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            out.append(ProcessRecord(proc.pid, proc.create_time(), proc.name()))
    return sorted(out, key=lambda r: r.pid)


def stop_processes(procs: list[Any], grace: float = STOP_GRACE) -> DownResult:
    """SIGTERM, then SIGKILL for what is left after ``grace`` seconds."""
    import psutil

    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    left = [p for p in procs if _alive(p)]
    while left and time.monotonic() < deadline:
        time.sleep(0.2)
        left = [p for p in left if _alive(p)]
    for proc in left:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    deadline = time.monotonic() + 10
    remaining = [p for p in left if _alive(p)]
    while remaining and time.monotonic() < deadline:
        time.sleep(0.2)
        remaining = [p for p in remaining if _alive(p)]
    return DownResult(len(procs) - len(left), len(left), tuple(p.pid for p in remaining))


def is_running(state: ClusterState) -> bool:
    """Whether the state's cluster still runs: its nodes' core processes here are alive and its GCS answers."""
    import psutil

    if state.host != socket.gethostname():
        return False
    core = [r for r in state.pids if r.name in ("gcs_server", "raylet")]
    for rec in core:
        try:
            proc = psutil.Process(rec.pid)
            if abs(proc.create_time() - rec.create_time) >= 0.05 or not _alive(proc):
                return False
        except psutil.Error:
            return False
    return bool(core) and _reachable(state.gcs_address, 3.0)


def _reachable(address: str, timeout: float) -> bool:
    host, _, port = address.split("://", 1)[-1].rpartition(":")
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout).close()
        return True
    except (OSError, ValueError):
        return False


def running_address() -> str | None:
    """For ``run`` without --address: the GCS address of the cluster that ``cluster up``/``join`` recorded here when it
    still runs (its token is then this process's), else None; a recorded cluster that is gone gets a one-line note."""
    try:
        if not (workspace.private_dir() / "cluster" / STATE_NAME).exists():
            return None
        state = load_state()
    except (UserError, OSError):
        return None
    if state is None:
        return None
    if not is_running(state):
        how = "up" if state.role == "head" else "join"
        print(
            f"matrix-run: note: the cluster that `matrix-run cluster {how}` recorded ({state.gcs_address}) is not "
            "running; running on this machine alone (`matrix-run cluster down` forgets it)",
            file=sys.stderr,
        )
        return None
    if state.token_path:
        use_token(state.token_path)
    how = "up" if state.role == "head" else "join"
    print(f"matrix-run: on the cluster that `matrix-run cluster {how}` started ({state.gcs_address})", file=sys.stderr)
    return state.gcs_address


# ------------------------------------------------------------------------------------------------ ray start


def _ray_bin() -> str:
    here = Path(sys.executable).with_name("ray")
    if here.is_file():
        return str(here)
    found = shutil.which("ray")
    if not found:
        raise EnvironmentProblem("the `ray` command is not installed beside this Python; pip install 'ray[default]'")
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return int(s.getsockname()[1])


def _check_port_free(port: int, what: str, flag: str) -> None:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("", port))
        except OSError:
            raise UserError(f"{what} port {port} is in use on this machine (another Ray?); give {flag} PORT") from None


def physical_gpus() -> int:
    """NVIDIA GPUs this machine has (``nvidia-smi -L``); 0 without the tool or a driver."""
    tool = shutil.which("nvidia-smi")
    if not tool:
        return 0
    try:
        out = subprocess.run([tool, "-L"], capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return 0
    return sum(1 for line in out.stdout.splitlines() if line.startswith("GPU ")) if out.returncode == 0 else 0


def _node_env(token_path: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a node's `ray start` (its daemons, workers and job drivers inherit it)."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")}
    if token_path:
        env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=token_path)
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    env.setdefault("RAY_JOB_STOP_WAIT_TIME_S", str(JOB_STOP_WAIT))
    # a submitted job's entrypoint is `python -m runner.jobs ...`: the nodes' `python` is this one
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", os.defpath)])
    env.update(extra or {})
    return env


def _agent_ports() -> list[str]:
    return [
        f"--node-manager-port={_free_port()}",
        f"--object-manager-port={_free_port()}",
        f"--dashboard-agent-listen-port={_free_port()}",
        f"--dashboard-agent-grpc-port={_free_port()}",
        f"--metrics-export-port={_free_port()}",
        f"--runtime-env-agent-port={_free_port()}",
        "--min-worker-port=0",
        "--max-worker-port=0",
        "--disable-usage-stats",
    ]


def _resources(labels: tuple[str, ...]) -> str:
    from runner.scheduler import LABEL_RESOURCE

    return json.dumps({f"{LABEL_RESOURCE}{label}": 1000.0 for label in labels}, sort_keys=True)


def _ray_start(args: list[str], env: dict[str, str], temp_dir: str, what: str) -> None:
    """One `ray start`; a one-line error with Ray's last words when it fails or hangs."""
    cmd = [_ray_bin(), "start", *args]
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=START_TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        raise EnvironmentProblem(
            f"{what}: `ray start` did not finish within {START_TIMEOUT:.0f} s (is the GCS reachable, and is the token "
            f"right?); its logs: {temp_dir}"
        ) from None
    if proc.returncode != 0:
        lines = [ln.strip() for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
        errors = [ln for ln in lines if "Error" in ln or "error" in ln] or lines
        raise EnvironmentProblem(f"{what}: `ray start` failed: {(errors[-1] if errors else 'no output')[:300]}")


def _labels(extra: tuple[str, ...]) -> tuple[str, ...]:
    from runner.config import SAFE_NAME
    from runner.machine import local_labels
    from runner.scheduler import LABEL_RESOURCE

    for label in extra:
        if not SAFE_NAME.match(label):
            raise UserError(f"--label {label!r}: use letters, digits and . _ - (it names the Ray resource runs-on:L)")
    return tuple(sorted({*(k[len(LABEL_RESOURCE) :] for k in local_labels()), *extra}))


def _temp_root() -> str:
    """A short private folder for the nodes' Ray temp folders (Ray's socket paths must stay short)."""
    base = tempfile.gettempdir()
    if len(base) > MAX_TEMP_ROOT - 12:
        base = "/tmp"
    return tempfile.mkdtemp(prefix="mrc-", dir=base)  # mode 0700; Ray makes the node folders inside it 0777


def _gcs_address(temp_dir: str, port: int) -> str:
    """The GCS address the head advertises (Ray writes it into the node's temp folder)."""
    with contextlib.suppress(OSError):
        text = (Path(temp_dir) / "ray_current_cluster").read_text().strip()
        if text:
            return text
    return f"{_node_ip()}:{port}"


def stop_engines(state: ClusterState) -> None:
    """The workers' own Docker engines (--own-engines), by pid; their images stay for the next `up`."""
    for own in state.engines:
        with contextlib.suppress(Exception):
            node_engine.stop(node_engine.NodeEngine(**own))
    state.engines = []


def _cleanup_failed(state: ClusterState) -> None:
    stop_processes(cluster_processes(state), grace=3.0)
    stop_engines(state)
    _remove_temp_root(state.temp_root)


def _remove_temp_root(path: str) -> None:
    p = Path(path)
    if p.name.startswith("mrc-") and p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)


def _gpu_plan(workers: int, gpus: float) -> tuple[bool, list[dict[str, str]]]:
    """Whether the workers' GPUs are simulated (this machine has fewer), and each worker's extra environment: with
    enough real GPUs, worker k sees its own ones (CUDA_VISIBLE_DEVICES)."""
    have = physical_gpus()
    whole = int(gpus)
    if gpus <= 0:
        return False, [{} for _ in range(workers)]
    if have >= workers * whole and whole == gpus:
        return False, [
            {"CUDA_VISIBLE_DEVICES": ",".join(str(k * whole + i) for i in range(whole))} for k in range(workers)
        ]
    return True, [{} for _ in range(workers)]


def up(options: UpOptions) -> ClusterState:
    """Start a head and ``options.workers`` worker nodes on this machine, token authentication on; returns at once
    after the nodes started (they keep running), with the state file written."""
    import ray

    if options.workers < 0:
        raise UserError("--workers must be >= 0")
    for flag, value in (("--cpus-per-worker", options.cpus_per_worker), ("--head-cpus", options.head_cpus)):
        if value is not None and value < 0:
            raise UserError(f"{flag} must be >= 0")
    if options.gpus_per_worker < 0:
        raise UserError("--gpus-per-worker must be >= 0")
    existing = load_state()
    if existing is not None:
        if is_running(existing):
            raise UserError(
                f"a cluster recorded by `matrix-run cluster {'up' if existing.role == 'head' else 'join'}` already "
                f"runs here ({existing.gcs_address}); `matrix-run cluster down` first"
            )
        _cleanup_failed(existing)
        remove_state()
    _check_port_free(options.port, "the GCS", "--port")
    _check_port_free(options.dashboard_port, "the dashboard (Jobs API)", "--dashboard-port")
    labels = _labels(options.labels)
    ncpu = float(os.cpu_count() or 1)
    head_cpus = options.head_cpus if options.head_cpus is not None else (0.0 if options.workers else ncpu)
    # --label names the nodes that run shards: the workers, and the head only when it has CPUs for them
    head_labels = labels if head_cpus > 0 else _labels(())
    worker_cpus = options.cpus_per_worker
    if worker_cpus is None:
        worker_cpus = max(1.0, float(int(ncpu // max(options.workers, 1))))
    simulated, gpu_envs = _gpu_plan(options.workers, options.gpus_per_worker)

    token_path = str(write_token(secrets.token_urlsafe(32)))
    root = _temp_root()
    host = options.host
    dashboard_url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{options.dashboard_port}"
    state = ClusterState(
        role="head",
        gcs_address="",
        dashboard_url=dashboard_url,
        token_path=token_path,
        temp_root=root,
        host=socket.gethostname(),
        started=time.time(),
        ray_version=str(ray.__version__),
    )
    save_state(state)  # before anything starts: a `down` after a failed `up` still finds its processes
    env = _node_env(token_path)
    node_ip = [] if host in ("0.0.0.0", "::") else [f"--node-ip-address={host}"]
    try:
        head_dir = f"{root}/head"
        _ray_start(
            [
                "--head",
                f"--port={options.port}",
                *node_ip,
                "--include-dashboard=true",
                f"--dashboard-host={host}",
                f"--dashboard-port={options.dashboard_port}",
                f"--ray-client-server-port={_free_port()}",
                f"--temp-dir={head_dir}",
                f"--num-cpus={head_cpus:g}",
                "--num-gpus=0",
                f"--resources={_resources(head_labels)}",
                *_agent_ports(),
            ],
            env,
            head_dir,
            "the head node",
        )
        state.gcs_address = _gcs_address(head_dir, options.port)
        state.nodes.append(NodeSpec("head", head_dir, head_cpus, 0.0, False, head_labels))
        save_state(state)
        for k in range(1, options.workers + 1):
            node_dir = f"{root}/w{k}"
            engine_env: dict[str, str] = {}
            if options.own_engines:  # its images stay in its data root for the next `up`
                own = node_engine.start(f"cluster-w{k}", 10 + k)
                state.engines.append(dataclasses.asdict(own))
                save_state(state)
                engine_env = own.env()
            _ray_start(
                [
                    f"--address={state.gcs_address}",
                    *node_ip,
                    f"--temp-dir={node_dir}",
                    f"--num-cpus={worker_cpus:g}",
                    f"--num-gpus={options.gpus_per_worker:g}",
                    f"--resources={_resources(labels)}",
                    *_agent_ports(),
                ],
                {**env, **gpu_envs[k - 1], **engine_env},
                node_dir,
                f"worker node {k}",
            )
            state.nodes.append(
                NodeSpec(f"worker-{k}", node_dir, worker_cpus, options.gpus_per_worker, simulated, labels)
            )
            state.pids = _records(cluster_processes(state))
            save_state(state)
        _wait_for_nodes(state, 1 + options.workers)
    except BaseException:
        _cleanup_failed(state)
        remove_state()
        raise
    state.pids = _records(cluster_processes(state))
    save_state(state)
    return state


def _wait_for_nodes(state: ClusterState, count: int, timeout: float = 60.0) -> None:
    """Until the GCS lists ``count`` alive nodes started here (``ray start`` may return a moment before)."""
    from ray._raylet import GcsClient  # type: ignore[attr-defined]

    old = {k: os.environ.get(k) for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_TOKEN")}
    if state.token_path:
        use_token(state.token_path)
    try:
        client = GcsClient(address=state.gcs_address)
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(Exception):
                alive = [n for n in client.get_all_node_info(timeout=5).values() if n.state == 0]
                if len(alive) >= count:
                    return
            if time.monotonic() > deadline:
                raise EnvironmentProblem(
                    f"the cluster's nodes did not all register with the GCS within {timeout:.0f} s; logs under "
                    f"{state.temp_root}"
                )
            time.sleep(0.5)
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# ------------------------------------------------------------------------------------------------ join


def _join_token(options: JoinOptions) -> str:
    """The token to join with: --token-file, RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, or the state file's cluster's."""
    if options.token_file:
        return read_token(options.token_file)
    if os.environ.get("RAY_AUTH_TOKEN"):
        return os.environ["RAY_AUTH_TOKEN"].strip()
    if os.environ.get("RAY_AUTH_TOKEN_PATH"):
        return read_token(os.environ["RAY_AUTH_TOKEN_PATH"])
    path = token_for(options.address)
    if path:
        return read_token(path)
    if os.environ.get("RAY_AUTH_MODE", "").lower() == "disabled":
        return ""
    raise UserError(
        "cluster join: no token; give --token-file FILE (a copy of the token file `matrix-run cluster up` printed) "
        "or set RAY_AUTH_TOKEN (RAY_AUTH_MODE=disabled for a cluster started without a token)"
    )


def join(options: JoinOptions) -> ClusterState:
    """Start one worker node on this machine joined to the cluster at ``options.address``."""
    import ray

    address = options.address.split("://", 1)[-1].rstrip("/")
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise UserError(f"cluster join {options.address!r}: give the GCS address as HOST:PORT (e.g. 10.0.0.5:6379)")
    if (options.cpus is not None and options.cpus < 0) or options.gpus < 0:
        raise UserError("--cpus and --gpus must be >= 0")
    labels = _labels(options.labels)
    token = _join_token(options)
    if not _reachable(address, 5.0):
        raise EnvironmentProblem(
            f"cluster join: nothing answers at {address}; check the address, and that the head's GCS port is "
            "reachable from here (firewall)"
        )
    state = load_state()
    if state is not None and not is_running(state):
        _cleanup_failed(state)
        remove_state()
        state = None
    if state is not None and not _same_endpoint(state.gcs_address, address):
        raise UserError(
            f"this machine already runs nodes of the cluster at {state.gcs_address}; `matrix-run cluster down` first"
        )
    token_path = state.token_path if state is not None else (str(write_token(token)) if token else "")
    if state is None:
        state = ClusterState(
            role="worker",
            gcs_address=address,
            dashboard_url="",
            token_path=token_path,
            temp_root=_temp_root(),
            host=socket.gethostname(),
            started=time.time(),
            ray_version=str(ray.__version__),
        )
    save_state(state)
    k = 1 + sum(1 for n in state.nodes if n.name != "head")
    node_dir = f"{state.temp_root}/j{k}"
    gpus = options.gpus
    cpus = options.cpus if options.cpus is not None else float(os.cpu_count() or 1)
    env = _node_env(token_path, {} if token_path else {"RAY_AUTH_MODE": "disabled"})
    try:
        _ray_start(
            [
                f"--address={state.gcs_address}",
                f"--temp-dir={node_dir}",
                f"--num-cpus={cpus:g}",
                f"--num-gpus={gpus:g}",
                f"--resources={_resources(labels)}",
                *_agent_ports(),
            ],
            env,
            node_dir,
            "cluster join",
        )
    except BaseException:
        if not state.nodes:
            _cleanup_failed(state)
            remove_state()
            if token_path and Path(token_path).parent == state_dir():
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(token_path)
        raise
    state.nodes.append(NodeSpec(f"joined-{k}", node_dir, cpus, gpus, gpus > physical_gpus(), labels))
    state.pids = _records(cluster_processes(state))
    save_state(state)
    return state


# ------------------------------------------------------------------------------------------------ down


def stop_jobs(state: ClusterState, timeout: float = 60.0) -> int:
    """Before the nodes go: stop the cluster's running Ray Jobs through its Jobs API, so that a submitted run's
    coordinator removes its containers (it handles the stop signal); best effort, at most ``timeout`` seconds.
    Returns how many jobs were asked to stop."""
    if state.role != "head" or not state.dashboard_url or not is_running(state):
        return 0
    try:
        from ray.job_submission import JobStatus, JobSubmissionClient

        headers = {"Authorization": f"Bearer {read_token(state.token_path)}"} if state.token_path else {}
        client = JobSubmissionClient(state.dashboard_url, headers=headers)
        live = (JobStatus.PENDING, JobStatus.RUNNING)
        ids = [j.submission_id for j in client.list_jobs() if j.status in live and j.submission_id]
        for job_id in ids:
            with contextlib.suppress(Exception):
                client.stop_job(job_id)
        asked = len(ids)
        deadline = time.monotonic() + timeout
        while ids and time.monotonic() < deadline:
            time.sleep(1.0)
            ids = [i for i in ids if client.get_job_status(i) in live]
        return asked
    except Exception:  # the Jobs API is gone or refuses: the processes are stopped all the same
        return 0


def down() -> tuple[ClusterState | None, DownResult]:
    """Stop every process of the state's nodes on this machine, then forget the state (and its token and folders)."""
    state = load_state()
    if state is None:
        return None, DownResult(0, 0, ())
    jobs = stop_jobs(state)
    result = dataclasses.replace(stop_processes(cluster_processes(state)), jobs=jobs)
    if result.remaining:
        return state, result
    stop_engines(state)
    _remove_temp_root(state.temp_root)
    if state.token_path and Path(state.token_path).parent == state_dir():
        with contextlib.suppress(FileNotFoundError):
            os.unlink(state.token_path)
    remove_state()
    return state, result


# ------------------------------------------------------------------------------------------------ status


def node_report() -> dict[str, Any]:
    """The Ray task body of ``status``, on one node: its id, GPUs it really has, whether its Docker engine answers
    (DOCKER_HOST of the node honoured) and the matrix-run images in it."""
    import ray

    report: dict[str, Any] = {
        "node_id": ray.get_runtime_context().get_node_id(),
        "gpus_physical": physical_gpus(),
        "docker": False,
        "images": [],
        "error": "",
    }
    try:
        import docker

        client = docker.from_env(timeout=15)
        client.ping()
        report["docker"] = True
        tags = {t for img in client.images.list() for t in img.tags if t.startswith(IMAGE_PREFIX)}
        report["images"] = sorted(tags)
    except Exception as exc:
        report["error"] = f"docker: {exc.__class__.__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:200]
    return report


def status(timeout: float = 60.0) -> list[NodeStatus]:
    """The nodes of the connected cluster, each with what its own Docker engine holds (a zero-CPU task pinned to
    it). Call after ``cluster.connect``."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from runner.scheduler import LABEL_RESOURCE

    remote = ray.remote(node_report)
    listed = ray.nodes()
    refs = {
        n["NodeID"]: remote.options(
            num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=n["NodeID"], soft=False)
        ).remote()
        for n in listed
        if n.get("Alive")
    }
    reports: dict[str, dict[str, Any]] = {}
    if refs:
        ready, _ = ray.wait(list(refs.values()), num_returns=len(refs), timeout=timeout)
        for node_id, ref in refs.items():
            if ref in ready:
                try:
                    reports[node_id] = ray.get(ref)
                except Exception as exc:
                    reports[node_id] = {"error": f"{exc.__class__.__name__}: {str(exc).splitlines()[0]}"[:200]}
            else:
                reports[node_id] = {"error": f"no answer within {timeout:.0f} s"}
    out = []
    for n in listed:
        res = n.get("Resources", {}) or {}
        rep = reports.get(n["NodeID"], {})
        out.append(
            NodeStatus(
                node_id=str(n["NodeID"]),
                alive=bool(n.get("Alive")),
                address=f"{n.get('NodeManagerAddress', '')}:{n.get('NodeManagerPort', '')}",
                is_head="node:__internal_head__" in res,
                cpus=float(res.get("CPU", 0)),
                gpus=float(res.get("GPU", 0)),
                gpus_physical=rep.get("gpus_physical"),
                labels=tuple(sorted(k[len(LABEL_RESOURCE) :] for k, v in res.items() if k.startswith(LABEL_RESOURCE))),
                docker=rep.get("docker"),
                images=tuple(rep.get("images", ())),
                error=str(rep.get("error", "")),
            )
        )
    return sorted(out, key=lambda s: (not s.alive, not s.is_head, s.node_id))


def status_address(address: str | None) -> str:
    """Where ``cluster status`` looks: --address, RAY_ADDRESS, else the state file's cluster (which must run)."""
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address:
        path = token_for(address)
        if path:
            use_token(path)
        return address
    state = load_state()
    if state is None:
        raise UserError(
            "cluster status: no cluster recorded here (`matrix-run cluster up` starts one); give --address HOST:PORT"
        )
    if not is_running(state):
        raise EnvironmentProblem(
            f"cluster status: the cluster recorded here ({state.gcs_address}) is not running; "
            "`matrix-run cluster down` forgets it"
        )
    if state.token_path:
        use_token(state.token_path)
    return state.gcs_address


# ------------------------------------------------------------------------------------------------ what is printed


def _gpu_note(gpus: float, simulated: bool) -> str:
    if not gpus:
        return f"{gpus:g} GPU(s)"
    if not simulated:
        return f"{gpus:g} GPU(s)"
    have = physical_gpus()
    why = "this machine has no GPU" if have == 0 else f"this machine has {have} GPU(s)"
    return f"{gpus:g} GPU(s) (simulated: {why}; shards get Ray's GPU ids but no device)"


def describe_up(state: ClusterState) -> str:
    workers = [n for n in state.nodes if n.name != "head"]
    lines = [
        f"matrix-run cluster up: a head and {len(workers)} worker node(s) on this machine, token authentication on",
    ]
    engines = {f"worker-{e['name'].rsplit('-w', 1)[-1]}": e["host"] for e in state.engines}
    for node in state.nodes:
        labels = ", ".join(node.labels) or "none"
        own = f", Docker engine of its own at {engines[node.name]}" if node.name in engines else ""
        lines.append(
            f"  {node.name:<10} {node.cpus:g} CPU(s), {_gpu_note(node.gpus, node.gpus_simulated)}, labels: {labels}"
            f"{own}"
        )
    url = state.dashboard_url
    host = url.split("://", 1)[-1].rpartition(":")[0]
    lines += [
        f"GCS address:  {state.gcs_address}",
        f"Jobs API:     {url}",
        f"Token:        {state.token_path} (mode 0600; every node and client needs it)",
        f"Exposed:      the Jobs API on {host} only; Ray's own ports (GCS {state.gcs_address.rpartition(':')[2]}, each "
        "raylet's node and object manager, agents, workers) listen on every interface whatever --host says: "
        "firewall them; the token guards them all",
        "Run:          matrix-run run MATRIX                  (joins this cluster; no --address needed)",
        f"Submit:       matrix-run run MATRIX --submit {url}",
        f"Join:         matrix-run cluster join {state.gcs_address} --token-file COPY_OF_THE_TOKEN [--label L]"
        "   (on another machine)",
        "Inspect/stop: matrix-run cluster status | matrix-run cluster down",
        f"State:        {state_path()}",
    ]
    return "\n".join(lines)


def describe_join(state: ClusterState) -> str:
    node = state.nodes[-1]
    labels = ", ".join(node.labels) or "none"
    return (
        f"matrix-run cluster join: node {node.name} joined the cluster at {state.gcs_address}: {node.cpus:g} CPU(s), "
        f"{_gpu_note(node.gpus, node.gpus_simulated)}, labels: {labels}\n"
        "`matrix-run cluster down` on this machine stops it"
    )


HASHED_REPOS = ("matrix-run/env", "matrix-run/src", "matrix-run/base", "matrix-run/heavy")


def _images_summary(images: tuple[str, ...]) -> str:
    """Bases by name (``matrix-run/debian:bookworm``), content-hashed images counted per repository."""
    if not images:
        return "none"
    counts: dict[str, int] = {}
    named = []
    for tag in images:
        repo = tag.rpartition(":")[0]
        if repo in HASHED_REPOS:
            counts[repo] = counts.get(repo, 0) + 1
        else:
            named.append(tag)
    parts = [*named, *(f"{repo}:* x{n}" for repo, n in sorted(counts.items()))]
    return ", ".join(parts)


def describe_status(address: str, nodes: list[NodeStatus]) -> str:
    alive = sum(1 for n in nodes if n.alive)
    lines = [f"cluster at {address}: {len(nodes)} node(s), {alive} alive"]
    for n in nodes:
        gpus = f"{n.gpus:g} GPU(s)"
        if n.gpus_simulated:
            gpus += " (simulated: the node has " + (f"{n.gpus_physical}" if n.gpus_physical else "no") + " GPU)"
        role = "head" if n.is_head else "worker"
        labels = ", ".join(n.labels) or "none"
        lines.append(
            f"  {n.node_id[:12]}  {'alive' if n.alive else 'dead '}  {n.address:<22} {role:<6} {n.cpus:g} CPU(s), "
            f"{gpus}, labels: {labels}"
        )
        if not n.alive:
            continue
        if n.docker:
            lines.append(f"      docker: answers; matrix-run images: {_images_summary(n.images)}")
        else:
            lines.append(f"      docker: does not answer{': ' + n.error if n.error else ''}")
    return "\n".join(lines)
