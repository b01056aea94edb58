"""End to end through the CLI: a real Docker engine, real containers, on this machine alone (no cluster)."""

from __future__ import annotations

import importlib.util
import xml.etree.ElementTree as ET
from collections import Counter

import pytest

from tests.conftest import PROJECTS, ROOT, containers_of, results, run_cli, write_matrix

pytestmark = [pytest.mark.docker, pytest.mark.ray, pytest.mark.slow]


def _compare_module():
    spec = importlib.util.spec_from_file_location("compare_direct", ROOT / "scripts" / "compare_direct.py")
    assert spec is not None
    assert spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_two_pythons_sharded_match_a_direct_pytest_run(tmp_path, docker_client):
    matrix = write_matrix(
        tmp_path,
        PROJECTS / "tiny",
        matrix={"debian": ["bullseye", "bookworm"]},
        tests={"shards": 3, "timeout": 300},
    )
    out = tmp_path / "out"
    proc = run_cli("run", str(matrix), "--out", str(out), "--plain")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    res = results(out)
    assert res["status"] == "passed"
    assert [c["id"] for c in res["cells"]] == ["debian-bullseye", "debian-bookworm"]
    for cell in res["cells"]:
        # 3 shards, each ran once; the module skipped at import is still there as one skipped case
        assert sorted(s["shard"] for s in cell["shards"]) == ["shard-1of3", "shard-2of3", "shard-3of3"]
        assert cell["tests"] == 17
        assert cell["skipped"] == 3
        assert cell["failures"] == 0

    root = ET.parse(out / "junit.xml").getroot()
    suites = root.findall("testsuite")
    assert [s.get("name") for s in suites] == ["debian-bullseye", "debian-bookworm"]
    for suite in suites:
        props = {p.get("name"): p.get("value") for p in suite.iter("property")}
        assert props["matrix.debian"] == suite.get("name").split("-", 1)[1]
        cases = suite.findall("testcase")
        assert int(suite.get("tests")) == len(cases)
        assert len({(c.get("classname"), c.get("name")) for c in cases}) == len(cases)  # each test once
        assert any(c.get("name") == "test_add[half \\xb5]" for c in cases)

    compare = _compare_module()
    direct = compare.direct_counts(str(matrix), [])
    ours = compare.matrix_run_counts(out)
    assert direct == ours
    assert direct["debian-bookworm"] == Counter(passed=14, skipped=3)

    assert not containers_of(docker_client, res["run_id"])
    for cell in res["cells"]:
        assert (out / "logs" / cell["id"] / "shard-1of3.attempt1.log").read_text()

    again = run_cli("run", str(matrix), "--out", str(out), "--plain")
    assert again.returncode == 0, again.stdout + again.stderr
    images = results(out)["images"]
    assert (images["built"], images["reused"]) == (0, 2)  # nothing rebuilt, not even the source layer
    assert images["check_seconds"] > 0


def test_a_failing_image_build_fails_only_its_cell(tmp_path, docker_client):
    matrix = write_matrix(
        tmp_path,
        PROJECTS / "tiny",
        matrix={
            "debian": ["bookworm"],
            "extra": ["pip", "matrix-run-no-such-package-xyz"],
        },
        image={"base": "matrix-run/debian:{debian}", "install": ["{extra}"]},
    )
    out = tmp_path / "out"
    proc = run_cli("run", str(matrix), "--out", str(out), "--plain")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    cells = {c["id"]: c for c in results(out)["cells"]}
    assert cells["debian-bookworm_extra-pip"]["status"] == "passed"
    bad = cells["debian-bookworm_extra-matrix-run-no-such-package-xyz"]
    assert bad["status"] == "error"
    assert "image build failed" in bad["reason"]
    assert "matrix-run-no-such-package-xyz" in bad["reason"]  # the log tail is shown
    assert list((out / "images").glob("*.log"))  # and the full log is saved


def test_dry_run_and_list_touch_nothing(tmp_path):
    matrix = write_matrix(
        tmp_path,
        PROJECTS / "tiny",
        matrix={"python": ["3.9", "3.11"], "os": ["bookworm"]},
        image={"base": "python:{python}-slim"},
    )
    proc = run_cli("run", str(matrix), "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert "python-3.9_os-bookworm" in proc.stdout
    assert "shard-2of2" in proc.stdout
    listed = run_cli("list", str(matrix), "--json")
    assert listed.returncode == 0
    assert '"python": "3.11"' in listed.stdout


def test_no_test_files_exit_5(tmp_path):
    project = tmp_path / "empty"
    project.mkdir()
    (project / "mod.py").write_text("x = 1\n")
    proc = run_cli("run", str(write_matrix(tmp_path, project)))
    assert proc.returncode == 5
    assert proc.stderr.count("\n") == 1
    assert "no test files found" in proc.stderr


def test_fail_fast_cancels_the_rest_of_the_matrix(tmp_path, docker_client):
    """GitHub Actions' fail-fast: the first genuine failure cancels queued and running shards of other cells."""
    matrix = write_matrix(
        tmp_path,
        PROJECTS / "faulty",
        matrix={
            "debian": ["bookworm"],
            "kind": ["fails", "slow"],
            "include": [{"kind": "fails", "fail": "1", "slow": "0"}, {"kind": "slow", "fail": "0", "slow": "120"}],
        },
        tests={"shards": 1, "timeout": 300, "env": {"FAULTY_FAIL": "{fail}", "FAULTY_SLOW": "{slow}"}},
        strategy={"fail-fast": True, "max-parallel": 0},
    )
    out = tmp_path / "out"
    proc = run_cli("run", str(matrix), "--out", str(out), "--plain", "--history", str(tmp_path / "h.sqlite"))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    res = results(out)
    cells = {c["axes"]["kind"]: c for c in res["cells"]}
    assert cells["fails"]["status"] == "failed"
    assert cells["fails"]["failed_tests"] == ["tests.test_flaky::test_always_fails"]
    assert cells["slow"]["status"] == "cancelled"
    trigger = cells["fails"]["id"]
    assert cells["slow"]["reason"] == (
        f"cancelled by fail-fast: {trigger} failed (strategy.fail-fast: false runs every cell)"
    )
    # fail-fast acts on a failure its reruns confirmed (retries.flaky defaults to 2), and says who triggered it
    assert [s["attempt"] for s in cells["fails"]["shards"]] == [1, 2, 3]
    assert f"fail-fast: {trigger} failed (after its reruns)" in proc.stdout
    assert f"fail-fast: {trigger} failed" in (out / "summary.md").read_text()
    assert res["fail_fast_by"] == trigger
    assert not containers_of(docker_client, res["run_id"])


def test_max_parallel_one_runs_shards_one_at_a_time(tmp_path, docker_client):
    matrix = write_matrix(tmp_path, PROJECTS / "tiny", tests={"shards": 3, "timeout": 300})
    out = tmp_path / "out"
    proc = run_cli("run", str(matrix), "--out", str(out), "--plain", "--max-parallel", "1")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    running = 0
    for line in proc.stdout.splitlines():  # the plain log: a shard starts only after the previous one ended
        if line.endswith(": running"):
            running += 1
            assert running == 1, proc.stdout
        elif " attempt " in line and ("done" in line or "failed" in line):
            running -= 1


def test_coverage_of_every_shard_merges_into_one_report(tmp_path, docker_client):
    """coverage: on -> each shard measures the project in its container; the coordinator combines the data files
    of all shards (remapping /src onto the project here) into one coverage.xml and htmlcov/."""
    out = tmp_path / "out"
    matrix = write_matrix(
        tmp_path,
        PROJECTS / "tiny",
        coverage={"enabled": True, "source": ["tiny"]},
        tests={"shards": 2, "timeout": 300},
    )

    proc = run_cli("run", str(matrix), "--out", str(out), "--plain")

    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = results(out)
    assert data["coverage"]["shards"] == 2
    assert data["coverage"]["xml"] == "coverage.xml"
    classes = {c.get("filename"): c for c in ET.parse(out / "coverage.xml").getroot().iter("class")}
    assert set(classes) == {"tiny/__init__.py"}  # coverage.source, relative to the project, never under /src
    hits = {int(ln.get("number")): int(ln.get("hits")) for ln in classes["tiny/__init__.py"].iter("line")}
    assert hits[max(hits)] > 0  # `return a + b`: run by the shard that holds test_math.py
    assert data["coverage"]["percent"] == 100.0
    assert (out / "htmlcov" / "index.html").is_file()
    assert "coverage: 100.0%" in proc.stdout
    assert not containers_of(docker_client, data["run_id"])


def test_cache_serves_the_passing_cell_and_runs_the_failing_one_again(tmp_path, docker_client):
    """--cache with one cell that passed and one that failed: the first is served from the cache, the second runs."""
    matrix = write_matrix(
        tmp_path,
        PROJECTS / "faulty",
        matrix={"debian": ["bookworm"], "fail": ["0", "1"]},
        tests={"shards": 1, "timeout": 300, "env": {"FAULTY_FAIL": "{fail}"}},
        retries={"flaky": 0, "infra": 0},
    )
    args = ("run", str(matrix), "--plain", "--history", str(tmp_path / "h.sqlite"))
    first = run_cli(*args, "--out", str(tmp_path / "first"))
    assert first.returncode == 1, first.stdout + first.stderr
    again = run_cli(*args, "--out", str(tmp_path / "again"), "--cache")
    assert again.returncode == 1, again.stdout + again.stderr
    assert "Traceback" not in again.stderr
    cells = {c["axes"]["fail"]: c for c in results(tmp_path / "again")["cells"]}
    assert cells["0"]["status"] == "cached"
    assert cells["1"]["status"] == "failed"
    assert len(cells["1"]["shards"]) == 1  # it ran again
