"""`matrix-run cluster up | status | join | down` on a real multi-node Ray (every node a raylet of its own on this
machine), token authentication, and `run` joining the recorded cluster without --address. No mocks.

One cluster per module (starting one takes ~25 s on two cores); the last test stops it and checks with psutil that
no process of it remains. Every test keeps matrix-run's state in its own folder (MATRIX_RUN_STATE_DIR), and the
fixture always ends with `cluster down`: never `ray stop`, which would stop every other Ray on the machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.conftest import PROJECTS, ROOT, results, run_cli, write_matrix

pytestmark = [pytest.mark.docker, pytest.mark.ray, pytest.mark.slow]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return int(s.getsockname()[1])


class Up:
    """A cluster started by `matrix-run cluster up` with its own state folder and free ports."""

    def __init__(self, state_dir: Path, *args: str) -> None:
        self.env = {"MATRIX_RUN_STATE_DIR": str(state_dir)}
        self.port, self.dashboard_port = free_port(), free_port()
        self.args = args
        self.state_file = state_dir / "cluster" / "state.json"
        self.output = ""

    def cli(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return run_cli(*args, timeout=timeout, env=self.env)

    def start(self) -> None:
        proc = self.cli(
            "cluster", "up", *self.args, "--port", str(self.port), "--dashboard-port", str(self.dashboard_port)
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        self.output = proc.stdout

    def state(self) -> dict[str, Any]:
        return json.loads(self.state_file.read_text())

    def down(self) -> subprocess.CompletedProcess[str]:
        return self.cli("cluster", "down", timeout=120)


def processes_of(state: dict[str, Any]) -> list[psutil.Process]:
    """Live (not zombie) processes of a recorded cluster: recorded pids with their start time, and any process
    that names its temp folder or is its Ray Client server."""
    found = []
    for rec in state["pids"]:
        with contextlib.suppress(psutil.Error):
            proc = psutil.Process(rec["pid"])
            if abs(proc.create_time() - rec["create_time"]) < 0.05 and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
    for proc in psutil.process_iter(["cmdline"]):
        with contextlib.suppress(psutil.Error):
            cmd = " ".join(proc.info["cmdline"] or [])
            named = state["temp_root"] in cmd or (
                "ray.util.client.server" in cmd and f"--address={state['gcs_address']}" in cmd
            )
            if named and proc.status() != psutil.STATUS_ZOMBIE and proc.pid != os.getpid():
                found.append(proc)
    return found


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Any:
    cluster = Up(
        tmp_path_factory.mktemp("cluster-state"), "--workers", "2", "--label", "gpu-lab", "--gpus-per-worker", "1"
    )
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.down()


def _status(up: Up) -> dict[str, Any]:
    proc = up.cli("cluster", "status", "--json", timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(proc.stdout)


def test_up_prints_addresses_and_keeps_a_private_state(up: Up) -> None:
    state = up.state()
    assert state["role"] == "head"
    assert state["gcs_address"].endswith(f":{up.port}")
    assert state["dashboard_url"] == f"http://127.0.0.1:{up.dashboard_port}"
    for text in (state["gcs_address"], state["dashboard_url"], "cluster down", "cluster join", "--submit"):
        assert text in up.output
    if not Path("/usr/bin/nvidia-smi").exists():
        assert "simulated: this machine has no GPU" in up.output
    token = Path(state["token_path"])
    assert stat.S_IMODE(token.stat().st_mode) == 0o600
    assert stat.S_IMODE(up.state_file.stat().st_mode) == 0o600
    assert len(token.read_text().strip()) >= 32
    names = {p["name"] for p in state["pids"]}
    assert {"gcs_server", "raylet"} <= names  # the daemons `ray start` left, not `ray start` itself
    assert sum(1 for p in state["pids"] if p["name"] == "raylet") == 3


def test_status_lists_nodes_labels_gpus_and_images(up: Up) -> None:
    nodes = _status(up)["nodes"]
    assert len(nodes) == 3
    assert all(n["alive"] for n in nodes)
    head = [n for n in nodes if n["is_head"]]
    workers = [n for n in nodes if not n["is_head"]]
    assert len(head) == 1
    assert head[0]["cpus"] == 0
    assert head[0]["gpus"] == 0
    for node in workers:
        assert "gpu-lab" in node["labels"]
        assert "linux" in node["labels"]
        assert node["cpus"] == 1
        assert node["gpus"] == 1
        assert node["gpus_simulated"] == (node["gpus_physical"] == 0)
    for node in nodes:  # each node's own engine answered the task pinned to it
        assert node["docker"] is True, node
        assert "matrix-run/debian:bookworm" in node["images"]
        assert all(tag.startswith("matrix-run/") for tag in node["images"])
    text = up.cli("cluster", "status", timeout=180)
    assert text.returncode == 0, text.stderr
    assert "3 node(s), 3 alive" in text.stdout
    assert "gpu-lab" in text.stdout
    assert "simulated" in text.stdout
    assert "docker: answers" in text.stdout


def test_run_without_address_runs_on_the_recorded_cluster(up: Up, tmp_path: Path, docker_client: Any) -> None:
    matrix = write_matrix(tmp_path, PROJECTS / "tiny", **{"runs-on": "gpu-lab"})
    out = tmp_path / "out"
    proc = up.cli("run", str(matrix), "--out", str(out), "--plain", "--history", str(tmp_path / "h.sqlite"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "on the cluster that `matrix-run cluster up` started" in proc.stderr
    workers = {n["node_id"] for n in _status(up)["nodes"] if not n["is_head"]}
    res = results(out)
    used = {s["node_id"] for c in res["cells"] for s in c["shards"]}
    assert used
    assert used <= workers


def test_a_client_without_the_token_is_refused(up: Up, tmp_path: Path) -> None:
    state = up.state()
    url = f"{state['dashboard_url']}/api/jobs/"
    for headers, code in (({}, 401), ({"Authorization": "Bearer not-the-token"}, 403)):
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=20)
        assert err.value.code == code
    token = Path(state["token_path"]).read_text().strip()
    with urllib.request.urlopen(urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"}), timeout=20):
        pass

    # the GCS too: a driver with no token, and one with a wrong token, fail; the right token connects
    code = "import ray; ray.init(address=%r, log_to_driver=False); print('CONNECTED', len(ray.nodes()))"
    base = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    base["HOME"] = str(tmp_path)  # no ~/.ray/auth_token of this machine's user
    envs = {
        "none": base,
        "wrong": {**base, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "not-the-token"},
        "right": {**base, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": state["token_path"]},
    }
    procs = {
        name: subprocess.Popen(
            [sys.executable, "-c", code % state["gcs_address"]],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for name, env in envs.items()
    }
    outputs = {}
    for name, proc in procs.items():
        try:
            outputs[name] = (proc.communicate(timeout=150)[0], proc.returncode)
        finally:
            if proc.poll() is None:
                proc.kill()
    for name in ("none", "wrong"):
        text, rc = outputs[name]
        assert rc != 0, (name, text[-2000:])
        assert "CONNECTED" not in text, (name, text[-2000:])
    text, rc = outputs["right"]
    assert rc == 0, text[-2000:]
    assert "CONNECTED 3" in text, text[-2000:]


def test_join_adds_a_worker_that_down_stops_too(up: Up, tmp_path: Path) -> None:
    state = up.state()
    # without a token (another state folder, no RAY_AUTH_TOKEN): a one-line error before anything starts
    env = {"MATRIX_RUN_STATE_DIR": str(tmp_path / "other")}
    no_token = run_cli("cluster", "join", state["gcs_address"], env=env, timeout=60)
    assert no_token.returncode == 4, no_token.stderr
    assert "--token-file" in no_token.stderr
    assert "Traceback" not in no_token.stderr
    nobody = run_cli("cluster", "join", f"127.0.0.1:{free_port()}", "--token-file", state["token_path"], env=env)
    assert nobody.returncode == 3, nobody.stderr
    assert "nothing answers" in nobody.stderr

    joined = up.cli("cluster", "join", state["gcs_address"], "--label", "extra-lab", "--cpus", "1", timeout=300)
    assert joined.returncode == 0, joined.stdout + joined.stderr
    assert "joined the cluster" in joined.stdout
    assert len(up.state()["nodes"]) == 4
    nodes = _status(up)["nodes"]
    assert len([n for n in nodes if n["alive"]]) == 4
    assert [n for n in nodes if "extra-lab" in n["labels"]]


def test_up_refuses_a_second_cluster_and_a_taken_port(up: Up) -> None:
    again = up.cli("cluster", "up", "--workers", "0", "--port", str(free_port()), "--dashboard-port", str(free_port()))
    assert again.returncode == 4, again.stderr
    assert "already runs" in again.stderr
    other = Up(Path(up.env["MATRIX_RUN_STATE_DIR"]).parent / "taken")
    taken = other.cli("cluster", "up", "--workers", "0", "--port", str(up.port))
    assert taken.returncode == 4, taken.stderr
    assert f"port {up.port} is in use" in taken.stderr


def test_down_stops_every_process_it_started(up: Up, tmp_path: Path) -> None:
    state = up.state()
    assert processes_of(state)
    proc = up.down()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "stopped" in proc.stdout
    left = processes_of(state)
    assert not left, [(p.pid, p.name()) for p in left]
    assert not up.state_file.exists()
    assert not Path(state["token_path"]).exists()
    assert not Path(state["temp_root"]).exists()
    again = up.down()  # nothing recorded any more: says so, exit 0
    assert again.returncode == 0
    assert "nothing to stop" in again.stdout


def test_a_recorded_cluster_that_is_gone_is_ignored_with_a_note(tmp_path: Path) -> None:
    """`run` without --address runs on this machine alone when the state file's cluster no longer runs."""
    state_dir = tmp_path / "state"
    (state_dir / "cluster").mkdir(parents=True, mode=0o700)
    state_dir.chmod(0o700)
    gone = {
        "role": "head",
        "gcs_address": f"127.0.0.1:{free_port()}",
        "dashboard_url": "http://127.0.0.1:1",
        "token_path": "",
        "temp_root": "/tmp/mrc-gone-for-good",
        "host": socket.gethostname(),
        "nodes": [],
        "pids": [{"pid": 2**22 + 7, "create_time": time.time(), "name": "gcs_server"}],
        "started": 0.0,
        "ray_version": "",
    }
    path = state_dir / "cluster" / "state.json"
    path.write_text(json.dumps(gone))
    path.chmod(0o600)
    code = "from runner import local_cluster; print('ADDRESS', local_cluster.running_address())"
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "MATRIX_RUN_STATE_DIR": str(state_dir)},
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "ADDRESS None" in proc.stdout
    notes = [line for line in proc.stderr.splitlines() if "not running" in line]
    assert len(notes) == 1
    assert "running on this machine alone" in notes[0]


def test_own_engines_give_each_worker_a_docker_engine_that_down_stops(tmp_path: Path) -> None:
    """`cluster up --own-engines`: the worker's Docker engine is not this machine's (its images are its own), and
    `down` stops that engine by its pid."""
    cluster = Up(tmp_path / "state", "--workers", "1", "--cpus-per-worker", "1", "--head-cpus", "1", "--own-engines")
    try:
        cluster.start()
        engines = cluster.state()["engines"]
        assert [e["name"] for e in engines] == ["cluster-w1"]
        assert "Docker engine of its own at unix:///run/matrix-run-cluster-w1.sock" in cluster.output
        pid = engines[0]["pid"]
        assert psutil.pid_exists(pid)
        assert "dockerd" in psutil.Process(pid).name()
        nodes = _status(cluster)["nodes"]
        assert all(n["docker"] for n in nodes)
        worker = next(n for n in nodes if not n["is_head"])
        head = next(n for n in nodes if n["is_head"])
        assert "matrix-run/debian:bookworm" in head["images"]
        assert worker["images"] != head["images"]  # another engine: it holds only what it was given or built
    finally:
        proc = cluster.down()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    deadline = time.monotonic() + 30
    while psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline, "the worker's engine outlived `cluster down`"
        time.sleep(0.5)
