"""Shared fixtures. Tests marked `docker` need the engine and the bootstrapped base images (scripts/setup.sh
--base-images); they fail, never skip, when those are missing: a missing engine is a broken test machine."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path

import psutil
import pytest
import yaml

from runner.matrix import Cell, Resources

ROOT = Path(__file__).resolve().parent.parent
PROJECTS = ROOT / "tests" / "projects"
BASE = "matrix-run/debian:bookworm"
RAY = Path(sys.executable).parent / "ray"


# a plain cell for the planner's unit tests
CELL = Cell(
    id="python-3.11",
    values=(("python", "3.11"),),
    base="python:3.11-slim",
    bootstrap=None,
    install=(),
    build_args=(),
    command=("python", "-m", "pytest"),
    resources=Resources(),
)


@pytest.fixture(scope="session")
def docker_client():
    from runner import engine

    client = engine.connect()
    missing = [s for s in ("bookworm",) if not client.images.list(name=f"matrix-run/debian:{s}")]
    assert not missing, f"base images missing: {missing}; run scripts/setup.sh --base-images"
    return client


def write_matrix(tmp_path: Path, project: Path, **sections: object) -> Path:
    """A matrix file in tmp_path for `project`; sections override the defaults (one bookworm cell)."""
    data: dict[str, object] = {
        "name": "t",
        "project": str(project),
        "matrix": {"debian": ["bookworm"]},
        "image": {"base": "matrix-run/debian:{debian}"},
        "tests": {"shards": 2, "timeout": 300},
        "strategy": {"fail-fast": False},
    }
    data.update(sections)
    path = tmp_path / "matrix.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def run_cli(*args: str, timeout: float = 600, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """matrix-run in a subprocess, with extra environment variables."""
    return subprocess.run(
        [sys.executable, "-m", "runner.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        check=False,
        env={**os.environ, **(env or {})},
    )


def results(out: Path) -> dict:  # type: ignore[type-arg]
    """results.json of a run, checked against runner/results.schema.json (every field described, every type right)."""
    from tests.test_schema import validate_results

    return validate_results(out / "results.json")


def report_records(lines: Iterable[str]) -> list[dict]:  # type: ignore[type-arg]
    """The plugin's JSON records of one shard attempt, each test record given its ``nodeid`` (the plugin names a
    collected test by its index ``i`` in the collected ids). A line cut short (a live or killed shard) is left out."""
    records, collected = [], []
    for line in lines:
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if rec.get("event") == "collected":
            collected = rec["nodeids"]
        elif rec.get("event") == "test" and "i" in rec:
            rec["nodeid"] = collected[rec["i"]]
        records.append(rec)
    return records


def containers_of(client, run_id: str) -> list:  # type: ignore[no-untyped-def,type-arg]
    return client.containers.list(all=True, filters={"label": f"matrix-run.run={run_id}"})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class TwoNodeRay:
    """A head and a worker node started with `ray start` on this machine, each with 1 CPU and its own temp dir.

    Both nodes share this machine's Docker engine. Ray's token authentication (on by default for new clusters in
    this Ray) is turned off with RAY_AUTH_MODE=disabled: a second `ray start --address` on the same machine is
    otherwise refused with InvalidAuthToken. Teardown kills only the processes of these two nodes (found by their
    temp dirs) instead of `ray stop --force`, which would also stop any other Ray on the machine.
    """

    def __init__(
        self,
        head: tuple[str, ...] = ("--num-cpus=1",),
        worker: tuple[str, ...] = ("--num-cpus=1",),
        worker_env: dict[str, str] | None = None,
        more_workers: tuple[tuple[tuple[str, ...], dict[str, str]], ...] = (),
    ) -> None:
        """``worker_env``: extra environment of the worker node (DOCKER_HOST for an engine of its own);
        ``more_workers``: (args, env) of further worker nodes, named worker2, worker3, ..."""
        self.head_args, self.worker_args = head, worker
        self.workers: dict[str, tuple[tuple[str, ...], dict[str, str]]] = {"worker": (worker, worker_env or {})}
        for i, (args, env) in enumerate(more_workers, start=2):
            self.workers[f"worker{i}"] = (args, env)
        # short: Ray's unix socket paths under the temp dir must stay below 108 bytes
        self.root = Path(tempfile.mkdtemp(prefix="mrr-", dir="/tmp"))
        self.port = _free_port()
        self.client_port = _free_port()  # Ray's client server (ray[default] starts one on the head)
        self.address = f"127.0.0.1:{self.port}"
        self.env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}

    def _ports(self) -> list[str]:
        return [
            f"--dashboard-agent-listen-port={_free_port()}",
            f"--dashboard-agent-grpc-port={_free_port()}",
            f"--metrics-export-port={_free_port()}",
            f"--runtime-env-agent-port={_free_port()}",
            "--min-worker-port=0",
            "--max-worker-port=0",
            "--disable-usage-stats",
        ]

    def _start(self, *args: str, env: dict[str, str] | None = None) -> None:
        proc = subprocess.run(
            [str(RAY), "start", *args, *self._ports()],
            env={**self.env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr

    def start(self) -> None:
        self._start(
            "--head",
            f"--port={self.port}",
            *self.head_args,
            f"--temp-dir={self.root / 'head'}",
            "--include-dashboard=false",
            f"--dashboard-port={_free_port()}",
            f"--ray-client-server-port={self.client_port}",
        )
        for name, (args, env) in self.workers.items():
            self._start(f"--address={self.address}", *args, f"--temp-dir={self.root / name}", env=env)

    def processes(self, node: str) -> list[psutil.Process]:
        """The node's processes (found by its temp dir) and all their descendants (Ray workers)."""
        marker = str(self.root / node)
        client = f"--port={self.client_port}"  # the head's client server names no temp dir, but its own port
        roots = []
        for p in psutil.process_iter(["cmdline"]):
            with contextlib.suppress(psutil.Error):
                cmdline = p.info["cmdline"] or []
                # "worker" must not match "worker2": the temp dir is a whole path segment
                mine = any(marker + "/" in a or a.endswith(marker) for a in cmdline)
                server = node == "head" and client in cmdline and any("client.server" in a for a in cmdline)
                if mine or server:
                    roots.append(p)
        found = {p.pid: p for p in roots}
        for p in roots:
            with contextlib.suppress(psutil.Error):
                found.update({c.pid: c for c in p.children(recursive=True)})
        return list(found.values())

    def shard_task_on(self, node: str) -> bool:
        """Whether a Ray worker of ``node`` is executing a shard task now."""
        for p in self.processes(node):
            with contextlib.suppress(psutil.Error):
                title = " ".join(p.cmdline())  # a busy Ray worker is titled "ray::TASK NAME" (CELL/SHARD/attempt-N)
                if title.startswith("ray::") and ("/shard-" in title or "execute_shard" in title):
                    return True
        return False

    def kill(self, node: str) -> int:
        """SIGKILL the node: its raylet, agents and workers at once, as when the machine is lost."""
        procs = self.processes(node)
        for p in procs:
            with contextlib.suppress(psutil.Error):
                p.kill()
        psutil.wait_procs(procs, timeout=10)
        return len(procs)

    def kill_raylet(self, node: str) -> int:
        """SIGKILL only the node's raylet, as when it crashes while the host stays up; returns its pid."""
        raylet = next(p for p in self.processes(node) if p.name() == "raylet")
        raylet.kill()
        raylet.wait(timeout=10)
        return raylet.pid

    def restart(self, node: str) -> None:
        """Start a worker node again (after ``kill`` or ``kill_raylet``), with the same arguments."""
        self.kill(node)
        args, env = self.workers[node]
        self._start(f"--address={self.address}", *args, f"--temp-dir={self.root / node}", env=env)

    def stop(self) -> None:
        for node in (*self.workers, "head"):
            self.kill(node)
        shutil.rmtree(self.root, ignore_errors=True)
