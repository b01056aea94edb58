"""`matrix-run run MATRIX --submit URL` and `matrix-run attach JOB_ID`: the coordinator as a Ray Job on a real
cluster started by `matrix-run cluster up` (token authentication on), the outputs brought back through the Jobs
API, the run's own exit code, a killed CLI, and Ctrl-C stopping the job with its containers removed. No mocks.
"""

from __future__ import annotations

import json
import os
import pty
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
import yaml

from runner import jobs
from runner.cli import build_parser
from tests.conftest import PROJECTS, ROOT, results, write_matrix
from tests.test_cluster_cmd import Up, processes_of

FAILING_TESTS = {
    "test_ok.py": "def test_one():\n    assert 1 + 1 == 2\n\n\ndef test_two():\n    assert True\n",
    "test_bad.py": "def test_fails():\n    assert 1 == 2, 'wrong on purpose'\n\n\ndef test_passes():\n    pass\n",
}
SLOW_TESTS = {
    "test_slow_a.py": "import time\n\n\ndef test_a():\n    time.sleep(300)\n",
    "test_slow_b.py": "import time\n\n\ndef test_b():\n    time.sleep(300)\n",
}


# ------------------------------------------------------------------------------------------------ pure parts


def test_forwarded_flags_keep_the_run_flags_less_what_the_client_handles() -> None:
    argv = [
        "run",
        "--shards=3",
        "m.yaml",
        "--out",
        "o",
        "--select",
        "python=3.11",
        "--submit",
        "http://h:8265",
        "--no-fail-fast",
        "--env",
        "A=1",
        "--quarantine",
        "q.yaml",
        "--token-file",
        "t",
        "--retries",
        "0",
        "--strict-flaky",
    ]
    assert jobs.forwarded_flags(argv, build_parser()) == [
        "--shards=3",
        "--select",
        "python=3.11",
        "--no-fail-fast",
        "--retries",
        "0",
        "--strict-flaky",
    ]


def test_rewrite_matrix_points_project_and_dockerfile_and_keeps_the_rest_as_written() -> None:
    text = (
        "name: demo\nproject: ../somewhere   # the project\nmatrix:\n  python: [3.10, '3.13']\n"
        "image:\n  dockerfile: docker/Dockerfile\n  install: ['numpy=={numpy}']\n"
    )
    new = jobs.rewrite_matrix(text, "../project", "../project/docker/Dockerfile")
    assert new.splitlines()[1] == 'project: "../project"   # the project'
    assert "  python: [3.10, '3.13']" in new  # 3.10 stays the text 3.10
    assert '  dockerfile: "../project/docker/Dockerfile"' in new
    assert len(new.splitlines()) == len(text.splitlines())
    assert yaml.safe_load(jobs.rewrite_matrix("matrix: {a: [1]}\n", "../project", None))["project"] == "../project"


# ------------------------------------------------------------------------------------------------ on a cluster


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Any:
    cluster = Up(tmp_path_factory.mktemp("submit-state"), "--workers", "2", "--cpus-per-worker", "1")
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.down()


def _project(root: Path, files: dict[str, str]) -> Path:
    (root / "tests").mkdir(parents=True)
    for name, text in files.items():
        (root / "tests" / name).write_text(text)
    return root


def _cases(out: Path) -> dict[tuple[str, str, str], str]:
    """(suite, classname, name) -> outcome of every test case in junit.xml."""
    cases = {}
    for suite in ET.parse(out / "junit.xml").getroot().findall("testsuite"):
        for case in suite.findall("testcase"):
            kinds = [c.tag for c in case if c.tag not in ("system-out", "system-err", "properties")]
            cases[(suite.get("name", ""), case.get("classname", ""), case.get("name", ""))] = "/".join(kinds) or "ok"
    return cases


def _local_and_submitted(up: Up, matrix: Path, tmp_path: Path) -> tuple[subprocess.CompletedProcess[str], ...]:
    local = up.cli(
        "run", str(matrix), "--out", str(tmp_path / "local"), "--plain", "--address", "local",
        "--history", str(tmp_path / "local.sqlite"),
    )  # fmt: skip
    submitted = up.cli(
        "run", str(matrix), "--out", str(tmp_path / "submitted"), "--submit", up.state()["dashboard_url"]
    )
    return local, submitted


@pytest.mark.parametrize("which", ["passing", "failing"])
@pytest.mark.docker
@pytest.mark.ray
@pytest.mark.slow
def test_submit_gives_the_runs_exit_code_and_the_same_junit_as_a_local_run(
    up: Up, tmp_path: Path, docker_client: Any, which: str
) -> None:
    if which == "passing":
        matrix = write_matrix(tmp_path, PROJECTS / "tiny")
    else:
        project = _project(tmp_path / "failing", FAILING_TESTS)
        matrix = write_matrix(tmp_path, project, tests={"shards": 2, "timeout": 300, "install-project": False})
    local, submitted = _local_and_submitted(up, matrix, tmp_path)
    want = 0 if which == "passing" else 1
    assert local.returncode == want, local.stdout[-3000:] + local.stderr[-2000:]
    assert submitted.returncode == want, submitted.stdout[-4000:] + submitted.stderr[-2000:]
    assert "submitted job matrix-run-t-" in submitted.stdout
    assert "PASSED" in submitted.stdout or "FAILED" in submitted.stdout  # the job's log, followed
    out = tmp_path / "submitted"
    assert _cases(out) == _cases(tmp_path / "local")
    for name in ("junit.xml", "results.json", "summary.md", "report.html"):
        assert (out / name).is_file(), name
    res = results(out)
    assert res["exit_code"] == want
    workers = {n["node_id"] for n in json.loads(up.cli("cluster", "status", "--json").stdout)["nodes"] if n["cpus"]}
    used = {s["node_id"] for c in res["cells"] for s in c["shards"]}
    assert used
    assert used <= workers  # the shards ran on the cluster's workers
    assert list((out / "logs").rglob("*.log"))
    if which == "failing":
        outcomes = set(_cases(out).values())
        assert any(o.startswith("failure") for o in outcomes), outcomes  # failed, with its reruns


def _wait_for(log: Path, text: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        content = log.read_text(errors="replace") if log.exists() else ""
        if text in content:
            return content
        time.sleep(0.3)
    raise AssertionError(f"{text!r} not in {log} within {timeout} s:\n{content[-3000:]}")


def _popen(up: Up, log: Path, *args: str) -> subprocess.Popen[bytes]:
    with log.open("wb") as fh:
        return subprocess.Popen(
            [sys.executable, "-m", "runner.cli", *args],
            cwd=ROOT,
            stdout=fh,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **up.env},
        )


@pytest.mark.docker
@pytest.mark.ray
@pytest.mark.slow
def test_a_killed_cli_leaves_the_job_running_and_attach_collects_its_outputs(
    up: Up, tmp_path: Path, docker_client: Any
) -> None:
    matrix = write_matrix(tmp_path, PROJECTS / "tiny")
    log = tmp_path / "submit.log"
    cli = _popen(up, log, "run", str(matrix), "--out", str(tmp_path / "first"), "--submit", up.state()["dashboard_url"])
    try:
        text = _wait_for(log, "attempt 1: running", 300)
        cli.send_signal(signal.SIGKILL)
        cli.wait(30)
    finally:
        if cli.poll() is None:
            cli.kill()
    job_id = text.split("submitted job ", 1)[1].split()[0]
    assert not (tmp_path / "first" / "junit.xml").exists()
    attached = up.cli("attach", job_id, "--out", str(tmp_path / "attached"))
    assert attached.returncode == 0, attached.stdout[-3000:] + attached.stderr[-2000:]
    res = results(tmp_path / "attached")
    assert res["status"] == "passed"
    assert [c["tests"] for c in res["cells"]] == [17]
    again = up.cli("attach", job_id, "--out", str(tmp_path / "again"))
    assert again.returncode == 4, again.stderr
    assert "collected already" in again.stderr


@pytest.mark.docker
@pytest.mark.ray
@pytest.mark.slow
def test_ctrl_c_on_a_terminal_asks_and_no_leaves_the_job_running(up: Up, tmp_path: Path, docker_client: Any) -> None:
    matrix = write_matrix(tmp_path, PROJECTS / "tiny")
    log = tmp_path / "submit.log"
    master, terminal = pty.openpty()
    with log.open("wb") as fh:
        cli = subprocess.Popen(
            [sys.executable, "-m", "runner.cli", "run", str(matrix), "--out", str(tmp_path / "first"), "--submit",
             up.state()["dashboard_url"]],
            cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT, stdin=terminal, env={**os.environ, **up.env},
        )  # fmt: skip
    os.close(terminal)
    try:
        text = _wait_for(log, "attempt 1: running", 300)
        cli.send_signal(signal.SIGINT)
        _wait_for(log, "[y/N]", 30)
        os.write(master, b"n\n")
        assert cli.wait(60) == 2, log.read_text()[-3000:]
    finally:
        os.close(master)
        if cli.poll() is None:
            cli.kill()
    assert "goes on" in log.read_text()
    job_id = text.split("submitted job ", 1)[1].split()[0]
    attached = up.cli("attach", job_id, "--out", str(tmp_path / "attached"))
    assert attached.returncode == 0, attached.stdout[-3000:] + attached.stderr[-2000:]
    assert results(tmp_path / "attached")["status"] == "passed"  # the job was not stopped


@pytest.mark.docker
@pytest.mark.ray
@pytest.mark.slow
def test_ctrl_c_without_a_terminal_stops_the_job_and_its_containers(up: Up, tmp_path: Path, docker_client: Any) -> None:
    project = _project(tmp_path / "slow", SLOW_TESTS)
    matrix = write_matrix(
        tmp_path, project, name="slowjob", tests={"shards": 2, "timeout": 600, "install-project": False}
    )
    log = tmp_path / "submit.log"
    out = tmp_path / "out"
    cli = _popen(up, log, "run", str(matrix), "--out", str(out), "--submit", up.state()["dashboard_url"])

    def ours() -> list[Any]:
        listed = docker_client.containers.list(all=True, filters={"label": "matrix-run.run"})
        return [c for c in listed if c.labels["matrix-run.run"].startswith("slowjob-")]

    try:
        deadline = time.monotonic() + 300
        while len(ours()) < 2:
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            assert cli.poll() is None, log.read_text()[-3000:]
            time.sleep(0.5)
        cli.send_signal(signal.SIGINT)  # stdin is no terminal: the job is stopped without asking
        assert cli.wait(240) == 2, log.read_text()[-4000:]
    finally:
        if cli.poll() is None:
            cli.kill()
    text = log.read_text()
    assert "stopping job" in text
    assert "STOPPED" in text
    assert not ours()  # the coordinator inside the job handled the stop signal: no container left on any node
    res = results(out)
    assert res["exit_code"] == 2
    assert [c["status"] for c in res["cells"]] == ["cancelled"]


@pytest.mark.docker
@pytest.mark.ray
@pytest.mark.slow
def test_submit_with_a_wrong_token_is_one_line_and_exit_3(up: Up, tmp_path: Path) -> None:
    matrix = write_matrix(tmp_path, PROJECTS / "tiny")
    token = tmp_path / "wrong-token"
    token.write_text("not-the-token\n")
    proc = up.cli(
        "run", str(matrix), "--out", str(tmp_path / "o"), "--submit", up.state()["dashboard_url"],
        "--token-file", str(token),
    )  # fmt: skip
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert "refused" in proc.stderr
    assert "--token-file" in proc.stderr


@pytest.mark.docker
@pytest.mark.ray
@pytest.mark.slow
def test_cluster_down_stops_a_running_job_first_so_no_container_is_left(
    up: Up, tmp_path: Path, docker_client: Any
) -> None:
    """Last in this file: it stops the module's cluster (the fixture's own `cluster down` then finds nothing)."""
    project = _project(tmp_path / "slow", SLOW_TESTS)
    matrix = write_matrix(
        tmp_path, project, name="downjob", tests={"shards": 2, "timeout": 600, "install-project": False}
    )
    log = tmp_path / "submit.log"
    cli = _popen(up, log, "run", str(matrix), "--out", str(tmp_path / "out"), "--submit", up.state()["dashboard_url"])

    def ours() -> list[Any]:
        listed = docker_client.containers.list(all=True, filters={"label": "matrix-run.run"})
        return [c for c in listed if c.labels["matrix-run.run"].startswith("downjob-")]

    try:
        deadline = time.monotonic() + 300
        while len(ours()) < 2:
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.5)
        cli.kill()  # the CLI is gone; the job runs on
        cli.wait(30)
    finally:
        if cli.poll() is None:
            cli.kill()
    state = up.state()
    down = up.down()
    assert down.returncode == 0, down.stdout + down.stderr
    assert "1 running job(s)" in down.stdout
    assert not ours()
    assert not processes_of(state)
