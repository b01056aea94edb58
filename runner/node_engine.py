"""A Docker engine of a node's own, beside this machine's main one: what makes one machine act as several nodes.

A real cluster's nodes each have their own Docker engine, so an image built on one is not on another. To try that
on one machine (``matrix-run cluster up --own-engines``, the tests), a node gets a second ``dockerd`` with its own
data root, exec root, pid file, socket and bridge; a Ray worker started with ``DOCKER_HOST`` set to that socket uses
it. Base images move between engines with ``docker save | docker load`` (``copy_image``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from runner.errors import EnvironmentProblem

STATE = Path("/var/lib/matrix-run-engines")  # data roots (images) of the nodes' engines, kept between runs


@dataclass(frozen=True)
class NodeEngine:
    """A running private engine: ``host`` is what DOCKER_HOST names."""

    name: str
    host: str  # unix:///run/matrix-run-NAME.sock
    pid: int
    bridge: str
    data_root: str

    def env(self) -> dict[str, str]:
        return {"DOCKER_HOST": self.host}


def _paths(name: str) -> tuple[Path, Path, Path, Path]:
    run = Path("/run")
    return (
        STATE / name,
        run / f"matrix-run-{name}",
        run / f"matrix-run-{name}.pid",
        run / f"matrix-run-{name}.sock",
    )


def _bridge(name: str, index: int) -> str:
    bridge = f"br-mr{index}"
    subprocess.run(["ip", "link", "add", bridge, "type", "bridge"], capture_output=True, check=False)
    subprocess.run(["ip", "addr", "add", f"172.31.{250 - index}.1/24", "dev", bridge], capture_output=True, check=False)
    up = subprocess.run(["ip", "link", "set", bridge, "up"], capture_output=True, text=True, check=False)
    if up.returncode != 0:
        raise EnvironmentProblem(f"cannot make the bridge {bridge} for engine {name}: {up.stderr.strip()[:200]}")
    return bridge


def _answers(sock: Path) -> bool:
    if not sock.exists():
        return False
    proc = subprocess.run(
        ["docker", "-H", f"unix://{sock}", "version", "--format", "{{.Server.Version}}"],
        capture_output=True,
        check=False,
        timeout=30,
    )
    return proc.returncode == 0


def start(name: str, index: int, extra_path: str = "", timeout: float = 60.0) -> NodeEngine:
    """Start (or find running) the engine NAME; ``index`` (1-40) picks its bridge and subnet. ``extra_path`` goes
    first on the daemon's PATH (a folder of runtime hooks, e.g. for a GPU node)."""
    if os.geteuid() != 0 or shutil.which("dockerd") is None:
        raise EnvironmentProblem("a node engine of its own needs root and dockerd ('apt-get install -y docker.io')")
    data, exec_root, pidfile, sock = _paths(name)
    if pidfile.exists() and _answers(sock):
        return NodeEngine(name, f"unix://{sock}", int(pidfile.read_text().strip() or 0), f"br-mr{index}", str(data))
    if pidfile.exists():  # a daemon killed earlier leaves its pid file, and a new dockerd refuses to start
        pidfile.unlink()
    bridge = _bridge(name, index)
    data.mkdir(parents=True, exist_ok=True)
    log = data.parent / f"{name}.log"
    env = dict(os.environ)
    env.pop("DOCKER_HOST", None)
    if extra_path:
        env["PATH"] = f"{extra_path}:{env.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [
                "dockerd",
                f"--data-root={data}",
                f"--exec-root={exec_root}",
                f"--pidfile={pidfile}",
                f"-H=unix://{sock}",
                f"--bridge={bridge}",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace").splitlines()[-5:]
            raise EnvironmentProblem(f"engine {name} did not start (exit {proc.returncode}): {' | '.join(tail)}")
        if _answers(sock):
            return NodeEngine(name, f"unix://{sock}", proc.pid, bridge, str(data))
        time.sleep(0.5)
    proc.kill()
    raise EnvironmentProblem(f"engine {name} did not answer within {timeout:g} s; see {log}")


def stop(engine: NodeEngine, remove_data: bool = False, timeout: float = 30.0) -> None:
    """Stop the engine by its pid (never another engine), then its bridge; its images stay unless ``remove_data``."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(engine.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(engine.pid, 0)
        except ProcessLookupError:
            break
        with contextlib.suppress(ChildProcessError):
            os.waitpid(engine.pid, os.WNOHANG)
        time.sleep(0.2)
    else:
        with contextlib.suppress(ProcessLookupError):
            os.kill(engine.pid, signal.SIGKILL)
    subprocess.run(["ip", "link", "delete", engine.bridge], capture_output=True, check=False)
    if remove_data:
        shutil.rmtree(engine.data_root, ignore_errors=True)


def copy_image(ref: str, to_host: str, from_host: str = "") -> None:
    """``docker save REF | docker load`` from one engine (default: this machine's) to another."""
    src_env = {**os.environ}
    src_env.pop("DOCKER_HOST", None)
    if from_host:
        src_env["DOCKER_HOST"] = from_host
    save = subprocess.Popen(["docker", "save", ref], stdout=subprocess.PIPE, env=src_env)
    assert save.stdout is not None
    load = subprocess.run(
        ["docker", "load", "-q"],
        stdin=save.stdout,
        capture_output=True,
        text=True,
        env={**os.environ, "DOCKER_HOST": to_host},
        check=False,
    )
    save.stdout.close()
    save.wait()
    if save.returncode != 0 or load.returncode != 0:
        raise EnvironmentProblem(f"copying {ref} to the engine at {to_host} failed: {load.stderr.strip()[:200]}")
