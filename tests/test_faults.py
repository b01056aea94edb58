"""Fault injection through the CLI (issue 3): flaky and failing tests, a hung test, a container killed from
outside, the OOM killer, a lost Ray node, Ctrl-C, broken environments and the security defaults.

Real Docker, real Ray, no mocks. Every fault lives in the sample project tests/projects/faulty and is switched on
per run through ``tests.env`` (a literal mapping passed into the containers). All runs use the same single
bookworm cell, so its image is built at most once for the whole file. Each run gets its own ``--history`` so the
duration history of one test cannot reshape the shards of another.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
import uuid
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

import psutil
import pytest
import yaml

from runner import workspace
from tests.conftest import PROJECTS, ROOT, TwoNodeRay, containers_of, report_records, results, run_cli, write_matrix

pytestmark = [pytest.mark.docker, pytest.mark.ray, pytest.mark.slow]

FAULTY = PROJECTS / "faulty"
CELL = "debian-bookworm"
TOTAL = 27  # test cases of the faulty project (3 of them skipped unless FAULTY_SECURITY=1)
SKIPPED = 3

FLAKY = "tests.test_flaky::test_flaky"
ALWAYS = "tests.test_flaky::test_always_fails"
HANG = "tests.test_hang::test_hang"
SECRET_TEST = "tests.test_security::test_secret_reaches_the_test_but_not_the_logs"


# ------------------------------------------------------------------------------------------------ helpers


def _matrix(tmp_path: Path, env: dict[str, str], name: str = "t", **sections: object) -> Path:
    tests: dict[str, object] = {"shards": 2, "timeout": 300, "env": env}
    tests.update(sections.pop("tests", {}))  # type: ignore[call-overload]
    return write_matrix(tmp_path, FAULTY, name=name, tests=tests, **sections)


def _run_args(matrix: Path, out: Path, *extra: str) -> list[str]:
    history = out.parent / f"{out.name}.history.sqlite"  # one per run: no run's durations reshape another's shards
    return ["run", str(matrix), "--out", str(out), "--plain", "--history", str(history), *extra]


def _cli(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, timeout=timeout, env=env)


def _popen(*args: str, env: dict[str, str] | None = None, log: Path) -> subprocess.Popen[bytes]:
    """matrix-run in the background, in its own session (a process group of its own, as a terminal job)."""
    with log.open("wb") as fh:
        return subprocess.Popen(
            [sys.executable, "-m", "runner.cli", *args],
            cwd=ROOT,
            stdout=fh,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )


def _cell(out: Path) -> dict:  # type: ignore[type-arg]
    cells = results(out)["cells"]
    assert [c["id"] for c in cells] == [CELL]
    return cells[0]


def _cases(out: Path) -> dict[str, ET.Element]:
    """classname::name -> <testcase> of the one cell; asserts every test case appears exactly once."""
    root = ET.parse(out / "junit.xml").getroot()
    suites = root.findall("testsuite")
    assert [s.get("name") for s in suites] == [CELL]
    keys = [f"{c.get('classname')}::{c.get('name')}" for c in suites[0].findall("testcase")]
    dupes = [k for k, n in Counter(keys).items() if n > 1]
    assert not dupes, f"test cases reported more than once: {dupes}"
    assert int(suites[0].get("tests", "-1")) == len(keys)
    return dict(zip(keys, suites[0].findall("testcase"), strict=True))


def _children(case: ET.Element) -> list[str]:
    return [child.tag for child in case if child.tag not in ("system-out", "system-err", "properties")]


def _key(nodeid: str) -> str:
    """results.json's and junit.xml's name of a (class-less, unparametrized) test: tests/a.py::t -> tests.a::t."""
    return nodeid.replace(".py::", "::").replace("/", ".")


def _status(case: ET.Element) -> str:
    return "/".join(_children(case)) or "passed"


def _report(out: Path, shard: str, attempt: int) -> tuple[list[str], list[str]]:
    """(collected node ids, node ids that finished) of one shard attempt's streamed report."""
    path = out / "shards" / CELL / f"{shard}.attempt{attempt}.report.jsonl"
    collected: list[str] = []
    finished: list[str] = []
    for rec in report_records(path.read_text().splitlines()):
        if rec.get("event") == "collected":
            collected = rec["nodeids"]
        elif rec.get("event") == "test" and rec["when"] == "teardown":
            finished.append(rec["nodeid"])
    return collected, finished


def _attempts(cell: dict, shard: str) -> list[dict]:  # type: ignore[type-arg]
    return sorted((s for s in cell["shards"] if s["shard"] == shard), key=lambda s: s["attempt"])


def _shard_of(out: Path, nodeid: str) -> str:
    """The shard whose first attempt collected ``nodeid``."""
    owners = []
    for path in (out / "shards" / CELL).glob("*.attempt1.report.jsonl"):
        shard = path.name.split(".")[0]
        if nodeid in _report(out, shard, 1)[0]:
            owners.append(shard)
    assert len(owners) == 1, f"{nodeid} collected by {owners}"
    return owners[0]


def _assert_complete(out: Path, cases: dict[str, ET.Element], skipped: int = SKIPPED) -> None:
    """Every test of the project once, and results.json agreeing with junit.xml."""
    assert len(cases) == TOTAL, sorted(cases)
    cell = _cell(out)
    assert cell["tests"] == TOTAL
    assert cell["skipped"] == skipped == sum(_children(c) == ["skipped"] for c in cases.values())


def _nothing_left(client, run_id: str, wait: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    """No container of the run on the engine, and no attempt folder of it on this node (both nodes, here)."""
    deadline = time.monotonic() + wait
    while containers_of(client, run_id) and time.monotonic() < deadline:
        time.sleep(0.5)
    left = [c.name for c in containers_of(client, run_id)]
    assert not left, f"containers of run {run_id} left behind: {left}"
    state = workspace.private_dir()
    assert (state / "work").is_dir(), "the run's shards made no attempt folder where this check looks"
    folders = list((state / "work").glob(f"{run_id}.*")) + list((state / "runs").glob(f"{run_id}.*"))
    assert not folders, f"attempt folders of run {run_id} left behind: {folders}"


def _shard_containers(client, name: str) -> list:  # type: ignore[no-untyped-def,type-arg]
    """Running shard containers of the run whose matrix is called ``name`` (run ids are NAME-time-hex)."""
    import docker.errors

    for _ in range(5):  # docker-py inspects each listed container: one removed meanwhile raises NotFound
        try:
            found = client.containers.list(filters={"label": "matrix-run.role=shard", "status": "running"})
            break
        except docker.errors.NotFound:
            time.sleep(0.1)
    else:
        return []
    return [c for c in found if c.labels.get("matrix-run.run", "").startswith(f"{name}-")]


def _live_report(container) -> list[dict]:  # type: ignore[no-untyped-def,type-arg]
    """The report a running shard streams into its bind-mounted output folder (this host is the Ray node)."""
    with contextlib.suppress(Exception):
        container.reload()
        for mount in container.attrs.get("Mounts", []):
            if mount.get("Destination") == "/mr/out":
                lines = (Path(mount["Source"]) / "report.jsonl").read_text().splitlines()
                return report_records(line for line in lines if line.strip().endswith("}"))
    return []


def _running_test(container) -> str | None:  # type: ignore[no-untyped-def]
    """The node id that the shard in ``container`` has set up and not yet torn down."""
    started, finished = [], set()
    for rec in _live_report(container):
        if rec.get("event") == "test" and rec["when"] == "setup":
            started.append(rec["nodeid"])
        elif rec.get("event") == "test" and rec["when"] == "teardown":
            finished.add(rec["nodeid"])
    return next((n for n in started if n not in finished), None)


def _wait_for(what: str, check, timeout: float, proc: subprocess.Popen[bytes] | None = None, log: Path | None = None):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"matrix-run exited ({proc.returncode}) before {what}:\n{log.read_text() if log else ''}")
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}:\n{log.read_text() if log else ''}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Kill a matrix-run left running by a failed test, with what it started (its process group)."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)


# ------------------------------------------------------------------------------------------------ 1. flaky


def test_flaky_and_failing_tests_are_told_apart(tmp_path, docker_client):
    out = tmp_path / "out"
    matrix = _matrix(tmp_path, {"FAULTY_FLAKY": "1", "FAULTY_FAIL": "1"}, retries={"flaky": 2, "infra": 2})
    proc = run_cli(*_run_args(matrix, out))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    res = results(out)
    assert res["status"] == "failed"
    assert res["exit_code"] == 1
    cell = _cell(out)
    assert cell["status"] == "failed"
    assert cell["flaky_tests"] == [FLAKY]
    assert cell["failed_tests"] == [ALWAYS]
    assert (cell["flaky"], cell["failures"], cell["errors"], cell["timeouts"]) == (1, 1, 0, 0)
    assert cell["passed"] == TOTAL - SKIPPED - 1  # the flaky test counts as passed

    cases = _cases(out)
    _assert_complete(out, cases)
    assert _children(cases[FLAKY]) == ["flakyFailure"]
    assert _children(cases[ALWAYS]) == ["failure", "rerunFailure", "rerunFailure"]
    assert "attempt 1" in (cases[ALWAYS].find("failure").get("message") or "")  # type: ignore[union-attr]
    passing = [k for k, c in cases.items() if k not in (FLAKY, ALWAYS) and "skipped" not in _children(c)]
    assert len(passing) == TOTAL - SKIPPED - 2
    assert all(_children(cases[k]) == [] for k in passing)

    # reruns ran exactly the failed tests, in a fresh container each, never the whole shard
    shard = _shard_of(out, "tests/test_flaky.py::test_flaky")
    assert [a["attempt"] for a in _attempts(cell, shard)] == [1, 2, 3]
    first, _ = _report(out, shard, 1)
    assert len(first) > 2
    assert _report(out, shard, 2)[0] == ["tests/test_flaky.py::test_flaky", "tests/test_flaky.py::test_always_fails"]
    assert _report(out, shard, 3)[0] == ["tests/test_flaky.py::test_always_fails"]
    assert not list((out / "shards" / CELL).glob("*.attempt4.*"))
    assert all(len(_attempts(cell, s)) == 1 for s in {a["shard"] for a in cell["shards"]} - {shard})
    _nothing_left(docker_client, res["run_id"])

    # only the flaky test fails: the run passes, unless flaky tests are strict
    only_flaky = _matrix(tmp_path, {"FAULTY_FLAKY": "1"}, retries={"flaky": 1, "infra": 2})
    out2 = tmp_path / "out2"
    proc = run_cli(*_run_args(only_flaky, out2))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert results(out2)["status"] == "passed"
    assert _cell(out2)["status"] == "flaky"
    assert _cell(out2)["flaky_tests"] == [FLAKY]
    assert _children(_cases(out2)[FLAKY]) == ["flakyFailure"]

    out3 = tmp_path / "out3"
    proc = run_cli(*_run_args(only_flaky, out3, "--strict-flaky"))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert results(out3)["status"] == "flaky"
    assert _cell(out3)["flaky_tests"] == [FLAKY]


# ------------------------------------------------------------------------------------------------ 2. timeout


def test_a_hanging_test_times_out_and_its_neighbours_keep_their_results(tmp_path, docker_client):
    out = tmp_path / "out"
    matrix = _matrix(tmp_path, {"FAULTY_HANG": "1"}, tests={"timeout": 15})
    started = time.monotonic()
    proc = run_cli(*_run_args(matrix, out), timeout=180)
    assert time.monotonic() - started < 120, "the hung test was not cut at tests.timeout"
    assert proc.returncode == 1, proc.stdout + proc.stderr
    res = results(out)
    cell = _cell(out)
    assert cell["status"] == "timeout"
    assert cell["timeouts"] == 1
    assert cell["failed_tests"] == [HANG]
    assert (cell["failures"], cell["flaky"]) == (0, 0)
    assert cell["passed"] == TOTAL - SKIPPED - 1

    cases = _cases(out)
    _assert_complete(out, cases)
    assert _children(cases[HANG]) == ["error"]
    assert "timeout" in (cases[HANG].find("error").get("message") or "")  # type: ignore[union-attr]
    for name in ("before_hang_a", "before_hang_b", "after_hang_a", "after_hang_b"):
        assert _children(cases[f"tests.test_hang::test_{name}"]) == [], name

    shard = _shard_of(out, "tests/test_hang.py::test_hang")
    attempts = _attempts(cell, shard)
    assert [a["kind"] for a in attempts] == ["timeout", "ok"]
    collected, finished = _report(out, shard, 1)
    # the neighbours before the hang finished in attempt 1 and were not run again
    assert "tests/test_hang.py::test_before_hang_a" in finished
    assert "tests/test_hang.py::test_before_hang_b" in finished
    assert "tests/test_hang.py::test_hang" not in finished
    # the rerun took exactly the tests that had not started, once
    not_started = [n for n in collected if n not in finished and n != "tests/test_hang.py::test_hang"]
    assert "tests/test_hang.py::test_after_hang_a" in not_started
    rerun, rerun_finished = _report(out, shard, 2)
    assert rerun == not_started
    assert rerun_finished == not_started
    assert not list((out / "shards" / CELL).glob(f"{shard}.attempt3.*"))
    _nothing_left(docker_client, res["run_id"])


def test_tests_that_a_timed_out_rerun_never_reached_are_reported_not_lost(tmp_path, docker_client):
    # test_hang times out, and so does test_after_hang_a in the one rerun: what follows it never runs
    out = tmp_path / "out"
    matrix = _matrix(tmp_path, {"FAULTY_HANG": "2"}, tests={"timeout": 10})
    proc = run_cli(*_run_args(matrix, out), timeout=180)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    cases = _cases(out)
    shard = _shard_of(out, "tests/test_hang.py::test_hang")
    cell = _cell(out)
    # the security tests are skipped when they run; never run, they are reported as such instead
    _assert_complete(out, cases, skipped=sum(_children(c) == ["skipped"] for c in cases.values()))
    assert cell["status"] == "timeout"
    assert [a["kind"] for a in _attempts(cell, shard)] == ["timeout", "timeout"]  # a timeout is rerun once only
    rerun, rerun_finished = _report(out, shard, 2)
    assert rerun[0] == "tests/test_hang.py::test_after_hang_a"
    assert rerun_finished == []
    never_ran = rerun[1:]
    assert "tests/test_hang.py::test_after_hang_b" in never_ran
    for nodeid in ("tests/test_hang.py::test_hang", "tests/test_hang.py::test_after_hang_a"):
        key = _key(nodeid)
        assert _children(cases[key]) == ["error"]
        assert "limit during this test" in (cases[key].find("error").get("message") or "")  # type: ignore[union-attr]
    for nodeid in never_ran:  # each still reported once, as not run, never silently dropped
        key = _key(nodeid)
        assert _children(cases[key]) == ["error"], key
        assert (cases[key].find("error").get("message") or "").startswith("not run:")  # type: ignore[union-attr]
    assert cell["timeouts"] == 2 + len(never_ran)
    assert sorted(cell["failed_tests"]) == sorted(_key(n) for n in ["tests/test_hang.py::test_hang", *rerun])
    assert (cell["failures"], cell["flaky"]) == (0, 0)
    assert cell["passed"] + cell["skipped"] + cell["timeouts"] == TOTAL
    _nothing_left(docker_client, results(out)["run_id"])


# ------------------------------------------------------------------------------------------------ 3. docker kill


def test_a_container_killed_from_outside_is_infra_and_its_tests_rerun(tmp_path, docker_client):
    name = f"kill{uuid.uuid4().hex[:6]}"
    out = tmp_path / "out"
    matrix = _matrix(tmp_path, {"FAULTY_SLOW": "6"}, name=name)
    log = tmp_path / "matrix-run.log"
    proc = _popen(*_run_args(matrix, out), log=log)
    try:

        def slow_running():  # type: ignore[no-untyped-def]
            for c in _shard_containers(docker_client, name):
                if _running_test(c) == "tests/test_resources.py::test_slow":
                    return c
            return None

        victim = _wait_for("the slow test to run", slow_running, 120, proc, log)
        run_id = victim.labels["matrix-run.run"]
        docker_client.containers.get(victim.id).kill()
        code = proc.wait(180)
    finally:
        _stop(proc)
    assert code == 0, log.read_text()
    res = results(out)
    assert res["run_id"] == run_id
    assert res["status"] == "passed"
    cell = _cell(out)
    assert cell["status"] == "passed"
    shard = victim.labels["matrix-run.shard"]
    attempts = _attempts(cell, shard)
    assert [a["kind"] for a in attempts] == ["infra", "ok"]
    assert "signal" in attempts[0]["reason"]
    collected, finished = _report(out, shard, 1)
    assert "tests/test_resources.py::test_before_slow" in finished
    rerun, rerun_finished = _report(out, shard, 2)
    # the killed test goes first, then the ones that had not started; nothing that finished runs again
    assert rerun[0] == "tests/test_resources.py::test_slow"
    assert sorted(rerun) == sorted(n for n in collected if n not in finished)
    assert sorted(rerun_finished) == sorted(rerun)

    cases = _cases(out)
    _assert_complete(out, cases)
    assert Counter(_status(c) for c in cases.values()) == Counter(passed=TOTAL - SKIPPED, skipped=SKIPPED)
    _nothing_left(docker_client, run_id)


# ------------------------------------------------------------------------------------------------ 4. OOM


def test_the_oom_killer_is_infra_and_the_shard_completes_on_rerun(tmp_path, docker_client):
    out = tmp_path / "out"
    matrix = _matrix(tmp_path, {"FAULTY_OOM": "1"}, resources={"memory": "128m"})
    proc = run_cli(*_run_args(matrix, out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    res = results(out)
    cell = _cell(out)
    assert cell["status"] == "passed"
    shard = _shard_of(out, "tests/test_resources.py::test_memory_hog")
    attempts = _attempts(cell, shard)
    assert [a["kind"] for a in attempts] == ["infra", "ok"]
    assert "OOM" in attempts[0]["reason"]
    collected, finished = _report(out, shard, 1)
    assert "tests/test_resources.py::test_memory_hog" not in finished
    rerun, rerun_finished = _report(out, shard, 2)
    assert rerun[0] == "tests/test_resources.py::test_memory_hog"
    assert sorted(rerun) == sorted(n for n in collected if n not in finished)
    assert sorted(rerun_finished) == sorted(rerun)
    cases = _cases(out)
    _assert_complete(out, cases)
    assert _children(cases["tests.test_resources::test_memory_hog"]) == []
    assert cell["passed"] == TOTAL - SKIPPED
    _nothing_left(docker_client, res["run_id"])


# ------------------------------------------------------------------------------------------------ 5. Ray node lost


def test_a_lost_ray_node_loses_no_test_and_leaves_no_container(tmp_path, docker_client):
    ray_cluster = TwoNodeRay()
    try:
        ray_cluster.start()
        name = f"node{uuid.uuid4().hex[:6]}"
        out = tmp_path / "out"
        # every test sleeps 1 s: 4 shards of ~7 s, two at a time (one per node)
        matrix = _matrix(tmp_path, {"FAULTY_DELAY": "1"}, name=name, tests={"shards": 4}, resources={"cpus": 1})
        log = tmp_path / "matrix-run.log"
        proc = _popen(
            *_run_args(matrix, out, "--address", ray_cluster.address), env={"RAY_AUTH_MODE": "disabled"}, log=log
        )
        try:
            _wait_for(
                "a shard running on the worker node",
                lambda: ray_cluster.shard_task_on("worker") and len(_shard_containers(docker_client, name)) == 2,
                180,
                proc,
                log,
            )
            running = _shard_containers(docker_client, name)
            run_id = running[0].labels["matrix-run.run"]
            assert ray_cluster.kill("worker") > 0
            code = proc.wait(300)
        finally:
            _stop(proc)
        assert code == 0, log.read_text()
        res = results(out)
        assert res["run_id"] == run_id
        assert res["status"] == "passed"
        cell = _cell(out)
        assert cell["status"] == "passed"
        assert sorted({a["shard"] for a in cell["shards"]}) == [f"shard-{i}of4" for i in range(1, 5)]
        # Ray re-executed the lost task (same attempt number); the runner's own layer did not add a rerun
        assert all(a["kind"] == "ok" and a["attempt"] == 1 for a in cell["shards"]), cell["shards"]
        cases = _cases(out)
        _assert_complete(out, cases)
        assert cell["passed"] == TOTAL - SKIPPED
        # both "nodes" share this engine: the lost node's container was removed too
        _nothing_left(docker_client, run_id)
    finally:
        ray_cluster.stop()


def test_a_cluster_run_sweeps_every_node_of_containers_whose_coordinator_is_gone(tmp_path, docker_client):
    """On a cluster, a node's leftovers may belong to a coordinator on another host: there the coordinator's Ray
    job decides. A container labelled with a dead job of this cluster is removed at the start of the next run (by
    the sweep task on the other node); one whose coordinator cannot be judged from there (no job label) stays."""
    ray_cluster = TwoNodeRay()
    made = []
    try:
        ray_cluster.start()
        # the GCS address as Ray names it (the node's address, not the 127.0.0.1 we joined by)
        ask = "import ray; ray.init(address=__import__('sys').argv[1]); print(ray.get_runtime_context().gcs_address)"
        gcs = subprocess.run(
            [sys.executable, "-c", ask, ray_cluster.address],
            capture_output=True,
            text=True,
            check=True,
            env=ray_cluster.env,
        ).stdout.split()[-1]
        labels = {"matrix-run.run": f"gone-{uuid.uuid4().hex[:6]}", "matrix-run.role": "shard"}
        dead = {**labels, "matrix-run.owner": "another-host:4242:1.000", "matrix-run.job": f"{gcs}/7f000000"}
        unknown = {**labels, "matrix-run.owner": "another-host:4243:1.000"}
        for lab in (dead, unknown):
            c = docker_client.containers.create("matrix-run/debian:bookworm", ["sleep", "300"], labels=lab)
            c.start()
            made.append(c)
        matrix = _matrix(tmp_path, {}, tests={"shards": 1})
        proc = _cli(
            *_run_args(matrix, tmp_path / "out", "--address", ray_cluster.address), env={"RAY_AUTH_MODE": "disabled"}
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        left = {c.id for c in docker_client.containers.list(all=True, filters={"label": "matrix-run.run"})}
        assert made[0].id not in left  # its job is not alive on this cluster: swept
        assert made[1].id in left  # nothing tells whether its coordinator lives: kept
    finally:
        for c in made:
            with contextlib.suppress(Exception):
                c.remove(force=True)
        ray_cluster.stop()


# ------------------------------------------------------------------------------------------------ 6. interrupts


@pytest.mark.parametrize(
    ("signum", "group"),
    [(signal.SIGINT, False), (signal.SIGTERM, False), (signal.SIGINT, True)],
    # Ctrl-C in a terminal signals the whole foreground process group: the embedded Ray's processes as well
    ids=["SIGINT", "SIGTERM", "Ctrl-C-to-the-process-group"],
)
def test_an_interrupt_stops_everything_and_writes_partial_reports(tmp_path, docker_client, signum, group):
    name = f"sig{uuid.uuid4().hex[:6]}"
    out = tmp_path / "out"
    matrix = _matrix(tmp_path, {"FAULTY_SLOW": "120"}, name=name)
    log = tmp_path / "matrix-run.log"
    proc = _popen(*_run_args(matrix, out, "--address", "embedded"), log=log)
    try:

        def only_slow_shard_left():  # type: ignore[no-untyped-def]
            # the other shard has finished and reported; the slow one is in its long test
            running = _shard_containers(docker_client, name)
            if len(running) == 1 and _running_test(running[0]) == "tests/test_resources.py::test_slow":
                text = log.read_text()
                if re.search(r"shard-\dof2 attempt 1: done", text):
                    return running[0]
            return None

        victim = _wait_for("one finished shard and the slow one running", only_slow_shard_left, 120, proc, log)
        run_id = victim.labels["matrix-run.run"]
        if group:
            os.killpg(proc.pid, signum)
        else:
            proc.send_signal(signum)
        code = proc.wait(60)
    finally:
        _stop(proc)
    assert code == 2, log.read_text()
    res = results(out)
    assert res["run_id"] == run_id
    assert res["status"] == "interrupted"
    assert res["exit_code"] == 2
    cell = _cell(out)
    assert cell["status"] == "cancelled"
    # the finished shard's tests are in the partial report; the interrupted shard's are not invented
    done = [a for a in cell["shards"] if a["kind"] == "ok"]
    assert len(done) == 1
    assert done[0]["shard"] != victim.labels["matrix-run.shard"]
    cases = _cases(out)  # parses: valid XML, each test once
    assert len(cases) == done[0]["tests"] > 0
    assert "tests.test_resources::test_slow" not in cases
    _nothing_left(docker_client, run_id)


def test_losing_the_embedded_ray_keeps_finished_shards_and_reports_the_rest_as_infra(tmp_path, docker_client):
    """`ray stop` (every process of the embedded Ray, `--address embedded`, killed) while one shard has finished and
    one still runs: the run notices at once, without asking Ray (whose core ends a process that lost its GCS after
    a minute), keeps the finished shard's results, reports the rest as infra, exits 3, and leaves no container or
    Ray process."""
    name = f"lost{uuid.uuid4().hex[:6]}"
    out = tmp_path / "out"
    matrix = _matrix(tmp_path, {"FAULTY_SLOW": "120"}, name=name, retries={"flaky": 0, "infra": 0})
    log = tmp_path / "matrix-run.log"
    proc = _popen(*_run_args(matrix, out, "--address", "embedded"), log=log)
    try:

        def only_slow_shard_left():  # type: ignore[no-untyped-def]
            running = _shard_containers(docker_client, name)
            slow = len(running) == 1 and _running_test(running[0]) == "tests/test_resources.py::test_slow"
            if slow and re.search(r"shard-\dof2 attempt 1: done", log.read_text()):
                return running[0]
            return None

        victim = _wait_for("one finished shard and the slow one running", only_slow_shard_left, 120, proc, log)
        run_id = victim.labels["matrix-run.run"]
        ray_procs = psutil.Process(proc.pid).children(recursive=True)
        assert any(p.name() == "gcs_server" for p in ray_procs), [p.name() for p in ray_procs]
        for p in ray_procs:  # what `ray stop --force` does to it
            with contextlib.suppress(psutil.Error):
                p.kill()
        started = time.monotonic()
        code = proc.wait(90)
        took = time.monotonic() - started
    finally:
        _stop(proc)
    assert code == 3, log.read_text()
    assert took < 30, f"noticing the lost Ray took {took:.0f} s"
    res = results(out)
    assert (res["run_id"], res["status"], res["exit_code"]) == (run_id, "infra", 3)
    assert "embedded Ray was lost" in res["cluster_lost"]
    cell = _cell(out)
    assert cell["status"] == "infra"
    kinds = {a["shard"]: a["kind"] for a in cell["shards"]}
    assert sorted(kinds.values()) == ["infra", "ok"], cell["shards"]
    assert kinds[victim.labels["matrix-run.shard"]] == "infra"
    finished = next(a for a in cell["shards"] if a["kind"] == "ok")
    cases = _cases(out)
    assert sum(_children(c) != ["error"] for c in cases.values()) == finished["tests"] > 0  # kept, each once
    assert "infra" in (out / "summary.md").read_text()
    _nothing_left(docker_client, run_id)
    alive = [p for p in ray_procs if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not alive, f"processes of the lost Ray left running: {alive}"


# ------------------------------------------------------------------------------------- 7. broken environments


def _write(path: Path, data: dict[str, object]) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


BASE_IMAGE = "matrix-run/debian:{debian}"


def _doc(project: object, **sections: object) -> dict[str, object]:
    return {
        "name": "t",
        "project": str(project),
        "matrix": {"debian": ["bookworm"]},
        "image": {"base": BASE_IMAGE},
        **sections,
    }


def _case_docker(tmp: Path) -> tuple[list[str], dict[str, str], str]:
    m = _write(tmp / "m.yaml", _doc(FAULTY))
    return (
        [str(m)],
        {"DOCKER_HOST": "unix:///nonexistent.sock"},
        (
            "matrix-run: error: Docker engine not reachable at unix:///nonexistent.sock: start it "
            "(e.g. 'dockerd &' or 'systemctl start docker') or set DOCKER_HOST"
        ),
    )


def _case_ray(tmp: Path) -> tuple[list[str], dict[str, str], str]:
    m = _write(tmp / "m.yaml", _doc(FAULTY))
    return (
        [str(m), "--address", "127.0.0.1:1"],
        {},
        (
            "matrix-run: error: Ray cluster not reachable at 127.0.0.1:1 (Connection refused); check --address / "
            "RAY_ADDRESS, or omit it to run on this machine alone"
        ),
    )


def _case_base(tmp: Path) -> tuple[list[str], dict[str, str], str]:
    m = _write(tmp / "m.yaml", _doc(FAULTY, image={"base": "matrix-run/nope:1"}))
    # the reason in the parentheses is the engine's (no network here, or "pull access denied" with one)
    return (
        [str(m)],
        {},
        (
            r"matrix-run: error: base image matrix-run/nope:1 is not on this host and cannot be pulled \(.+\); set "
            r"image\.bootstrap to a Debian suite, or run 'matrix-run images bootstrap SUITE --tag matrix-run/nope:1'"
        ),
    )


def _case_project(tmp: Path) -> tuple[list[str], dict[str, str], str]:
    m = _write(tmp / "m.yaml", _doc("/nonexistent/project"))
    return (
        [str(m)],
        {},
        (
            f"matrix-run: error: {m}:2: project: project folder '/nonexistent/project' does not exist; "
            "set it relative to the matrix file"
        ),
    )


def _case_no_tests(tmp: Path) -> tuple[list[str], dict[str, str], str]:
    (tmp / "empty").mkdir()
    (tmp / "empty" / "mod.py").write_text("x = 1\n")
    m = _write(tmp / "m.yaml", _doc(tmp / "empty"))
    return (
        [str(m)],
        {},
        (
            f"matrix-run: error: {m}: tests.paths: no test files found under . in {tmp / 'empty'} "
            "(looked for test_*.py *_test.py); set tests.paths"
        ),
    )


def _case_yaml(tmp: Path) -> tuple[list[str], dict[str, str], str]:
    m = tmp / "m.yaml"
    m.write_text(f"name: t\nproject: {FAULTY}\nmatrix:\n  debian: [bookworm\ntests: {{}}\n")
    return [str(m)], {}, f"matrix-run: error: {m}:5: malformed YAML: expected ',' or ']', but got ':'; fix the syntax"


def _case_unknown_key(tmp: Path) -> tuple[list[str], dict[str, str], str]:
    m = tmp / "m.yaml"
    m.write_text(f"name: t\nproject: {FAULTY}\nmatrix: {{debian: [bookworm]}}\ntests:\n  shard: 2\n")
    return [str(m)], {}, f"matrix-run: error: {m}:5: tests.shard: unknown key 'shard'; did you mean 'shards'?"


def _case_bad_type(tmp: Path) -> tuple[list[str], dict[str, str], str]:
    m = tmp / "m.yaml"
    m.write_text(f"name: t\nproject: {FAULTY}\nmatrix: {{debian: [bookworm]}}\ntests:\n  timeout: soon\n")
    return [str(m)], {}, f"matrix-run: error: {m}:5: tests.timeout: must be a number of seconds > 0 (got 'soon')"


@pytest.mark.parametrize(
    ("case", "code"),
    [
        (_case_docker, 3),
        (_case_ray, 3),
        (_case_base, 3),
        (_case_project, 4),
        (_case_no_tests, 5),
        (_case_yaml, 4),
        (_case_unknown_key, 4),
        (_case_bad_type, 4),
    ],
    ids=[
        "docker-unreachable",
        "ray-unreachable",
        "base-missing",
        "no-project",
        "no-tests",
        "bad-yaml",
        "unknown-key",
        "bad-type",
    ],
)
def test_broken_environments_give_one_line_and_an_exit_code(tmp_path, case, code):
    args, env, expected = case(tmp_path)
    out = tmp_path / "out"
    proc = _cli(*_run_args(Path(args[0]), out, *args[1:]), env=env, timeout=120)
    assert proc.returncode == code, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert proc.stderr.count("\n") == 1, proc.stderr
    line = proc.stderr.rstrip("\n")
    if case is _case_base:
        assert re.fullmatch(expected, line), line
    else:
        assert line == expected
    assert not (out / "results.json").exists()  # nothing ran, so nothing pretends to be a result


# ------------------------------------------------------------------------------------------------ 8. security


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("matrix", {"python": ["3.11; rm -rf /"]}, "matrix.python[0]: value '3.11; rm -rf /' is not allowed"),
        ("matrix", {"python": ["$(id)"]}, "matrix.python[0]: value '$(id)' is not allowed"),
        ("name", "../../etc", "name: '../../etc' must be letters, digits, . _ -"),
    ],
    ids=["value-shell", "value-subst", "name-path"],
)
def test_unsafe_matrix_input_is_rejected_before_anything_runs(tmp_path, field, value, message):
    doc: dict[str, object] = {"name": "t", "project": str(FAULTY), "matrix": {"python": ["3.11"]}}
    doc[field] = value
    matrix = _write(tmp_path / "m.yaml", doc)
    proc = run_cli("run", str(matrix), "--out", str(tmp_path / "out"), "--dry-run")
    assert proc.returncode == 4, proc.stdout + proc.stderr
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


def test_secrets_env_allowlist_and_network_none(tmp_path, docker_client):
    out = tmp_path / "out"
    matrix = _matrix(
        tmp_path,
        {"FAULTY_SECURITY": "1"},
        tests={"pass-env": ["FAULTY_PASSED_ON"], "network": "none"},
        retries={"flaky": 0, "infra": 2},
    )
    proc = _cli(
        *_run_args(matrix, out, "--env", "MY_TOKEN=supersecretvalue"),
        env={"FAULTY_HOST_ONLY": "leak", "FAULTY_PASSED_ON": "allowed"},
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    cell = _cell(out)
    # the secret reached the test (it asserts the value, then fails on purpose so the value lands in the log)
    assert cell["failed_tests"] == [SECRET_TEST]
    cases = _cases(out)
    assert _children(cases[SECRET_TEST]) == ["failure"]
    assert _children(cases["tests.test_security::test_host_variable_not_listed_does_not_reach_the_container"]) == []
    assert _children(cases["tests.test_security::test_network_none_has_no_way_out"]) == []
    assert cell["skipped"] == 0

    logs = list((out / "logs").rglob("*.log"))
    assert logs
    everything = [p for p in out.rglob("*") if p.is_file()]
    leaks = [str(p.relative_to(out)) for p in everything if b"supersecretvalue" in p.read_bytes()]
    assert not leaks, f"the secret leaked into {leaks}"
    assert "supersecretvalue" not in proc.stdout + proc.stderr
    # it was there to leak: the test printed it, and the mask replaced it
    assert any(b"the token is ***" in p.read_bytes() for p in logs)
    assert b"lands in the log and the JUnit: ***" in (out / "junit.xml").read_bytes()
    _nothing_left(docker_client, results(out)["run_id"])
