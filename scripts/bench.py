"""matrix-run's benchmark: its targets measured side by side against what a user would do instead, in one run.

    .venv/bin/python scripts/bench.py [--sdist NAME==VERSION ...] [--work DIR] [--skip-suite] [--json FILE]
    .venv/bin/python scripts/bench.py --torch [--skip-cuda-build] [--work DIR] [--json FILE]

Workloads: real third-party suites from PyPI sdists (default: pygments, small, ~10 s of tests per cell; attrs,
medium; pyparsing, where one file, test_unit.py, holds most of the time), each across Python 3.9 / 3.11 / 3.13
(Debian bullseye / bookworm / trixie images, bootstrapped offline when missing) or those its requires-python
admits; a suite other than those three with its own test extra or dependency group (`test` / `tests`) when it
declares one. One table per suite:

  A    what a user writes instead: one `docker run` per cell in turn, pytest on the whole suite
  B    one container per cell, as many at a time as there are slots, no sharding
  C0   matrix-run, cold duration history (`shards: auto`)
  C    matrix-run, warm history (the second run): targets C <= 1.15 x LBw, A / C >= 1.6, B / C >= 1.2; on this
       machine alone, without Ray (machine.py: no cluster to join)
  Cr   C on an embedded Ray of the run's own (`--address embedded`): what every run without a cluster paid before
  Ck   C on a kept local Ray (`matrix-run cluster up --workers 0`, joined without --address): a one-node cluster
       that stays up, as a lab node keeps it
  E    matrix-run --cache, nothing changed
  LBw  A / slots + one container start: the work bound
Also: a warm run of a one-test, one-cell matrix against a bare `docker run --rm IMAGE python -m pytest` of that
test (target: within 2 s), 10,000-cell expand+plan and 100,000-case merge (time, peak memory), one frame of the
live view with 10,000 shards, and the median per-shard overhead against a bare `docker run --rm IMAGE true`.

A, B, C0 and C run in the same images (dependency image + the project layer matrix-run builds), built before any
timing starts and timed apart. Figures are ratios from this one run.

--torch: torch cell images and the torch example (matrices/torch.yaml; its wheelhouses must be on this machine):
  (a) cold builds (no layer, an empty package cache) of a first torch 2.13.0 (CPU) cell image and of a second cell
      with the same torch and another small package: target second <= 0.25 x first. Also the first with
      installer: pip (what the default is chosen by), and with uv over a warm package cache.
  (b) the disk 4 cells over 2 torch versions (2.13.0+cpu, 2.14.1: 2 cells each, differing in one small package)
      hold together: target <= 1.3 x the disk of one image per torch version (and what they would hold as one
      layer each, the recipe before heavy layers). --skip-cuda-build measures (b) with torch 2.13.0 alone.
  (c) the torch example's CPU cells (both torch versions), warm: A, B, C0, C and LBw as above: C <= 1.15 x LBw.
The bench's images for (a) and (b) are built on a bench-only tag of the bookworm base (so nothing a run or a test
built is reused) and removed at the end, with their package caches.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
SUITES = {"3.9": "bullseye", "3.11": "bookworm", "3.13": "trixie"}
EXTRA = {
    "pyparsing": ["railroad-diagrams", "jinja2"],
    "attrs": ["cloudpickle", "hypothesis", "pympler"],
    "pygments": ["wcag-contrast-ratio"],
}


def sh(cmd: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, text=True, capture_output=True, check=False, **kw)  # type: ignore[call-overload]


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def fetch(sdist: str, work: Path) -> Path:
    """Download and unpack the sdist; returns the project folder."""
    name = sdist.split("==", maxsplit=1)[0]
    dest = work / "sdist"
    if not dest.exists():
        dest.mkdir(parents=True)
        proc = sh([PY, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-d", str(dest), sdist])
        if proc.returncode:
            sys.exit(f"bench: cannot download {sdist}: {proc.stderr[-500:]}")
        archive = next(dest.glob("*.tar.gz"))
        with tarfile.open(archive) as tar:
            tar.extractall(dest, filter="data")
    project = next(p for p in dest.iterdir() if p.is_dir() and p.name.lower().startswith(name.lower()[:4]))
    return project


def suite_pythons(project: Path) -> list[str]:
    """The bench's Pythons (3.9 / 3.11 / 3.13) that the project's requires-python admits."""
    import tomllib

    from packaging.specifiers import SpecifierSet

    pyproject = project / "pyproject.toml"
    data = tomllib.loads(pyproject.read_text(encoding="utf-8")) if pyproject.is_file() else {}
    wanted = SpecifierSet(str(data.get("project", {}).get("requires-python", "")))
    return [v for v in SUITES if wanted.contains(f"{v}.0")] or list(SUITES)


def suite_test_deps(project: Path) -> dict[str, list[str]]:
    """image.extras / image.groups for the project's test requirements, as its own CI would install them: an
    extra or a dependency group named test or tests (PEP 621, PEP 735)."""
    from runner import dependencies

    def declared(extras: tuple[str, ...] = (), groups: tuple[str, ...] = ()) -> bool:
        try:
            dependencies.requirements(project, extras, groups, dependencies=False)
        except dependencies.DependencyError:
            return False
        return True

    extra = next(([n] for n in ("test", "tests") if declared(extras=(n,))), [])
    group = next(([n] for n in ("test", "tests") if declared(groups=(n,))), [])
    return {key: names for key, names in (("extras", extra), ("groups", group)) if names}


def write_matrix(work: Path, project: Path, name: str) -> Path:
    path = work / "bench.yaml"
    pythons = suite_pythons(project)
    image: dict[str, object] = {
        "base": "matrix-run/debian:{debian}",
        "bootstrap": "{debian}",
        # the default suites' test requirements as measured since they were chosen; any other suite's its own
        **({"install": EXTRA[name]} if name in EXTRA else {"install": [], **suite_test_deps(project)}),
    }
    doc = {
        "name": "bench",
        "project": str(project),
        "matrix": {"python": pythons, "include": [{"python": v, "debian": SUITES[v]} for v in pythons]},
        "image": image,
        "tests": {"shards": "auto", "timeout": 1800},
        "strategy": {"fail-fast": False},
    }
    path.write_text(json.dumps(doc, indent=2) + "\n")  # JSON is YAML
    return path


def prepare_images(matrix: Path, select: tuple[str, ...] = ()) -> dict[str, str]:
    """cell id -> the image matrix-run's shards start from (dependencies + project layer), built now."""
    sys.path.insert(0, str(ROOT))
    from runner import engine, images, plan

    planned = plan.plan_matrix(str(matrix), list(select))
    client = engine.connect()
    specs = images.specs_for(planned.mf, planned.cells, client)
    out = {}
    for cell in planned.cells:
        tag = images.ensure_cell_image(
            client,
            specs[cell.id],
            planned.tree.tarball,
            planned.tree.digest,
            planned.mf.tests.install_project,
            planned.mf.tests.paths,
        ).tag
        out[cell.id] = tag
    return out


def cell_envs(matrix: Path, select: tuple[str, ...] = ()) -> dict[str, tuple[tuple[str, str], ...]]:
    """cell id -> the cell's tests.env, as matrix-run gives it to the containers."""
    from runner import config
    from runner import matrix as expand

    return {cell.id: cell.env for cell in expand.expand(config.load(matrix), select)}


def docker_pytest(tag: str, env: tuple[tuple[str, str], ...] = ()) -> float:
    started = time.monotonic()
    flags = [f"--env={k}={v}" for k, v in env]
    proc = sh(["docker", "run", "--rm", *flags, tag, "python", "-m", "pytest", "-q", "-p", "no:cacheprovider"])
    if proc.returncode not in (0, 1):
        sys.exit(f"bench: direct pytest in {tag} failed: {proc.stdout[-800:]}{proc.stderr[-800:]}")
    return time.monotonic() - started


def run_matrix(
    matrix: Path, out: Path, history: Path, *extra: str, env: dict[str, str] | None = None
) -> tuple[float, dict]:  # type: ignore[type-arg]
    started = time.monotonic()
    proc = sh(
        [PY, "-m", "runner.cli", "run", str(matrix), "--out", str(out), "--history", str(history), "--plain", *extra],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
    )
    took = time.monotonic() - started
    if proc.returncode not in (0, 1):  # 1: the suite has genuine failures (attrs on Debian's 3.11.2 does), as in A
        sys.exit(f"bench: matrix-run failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-2000:]}")
    return took, json.loads((out / "results.json").read_text())


def per_file_seconds(out: Path) -> dict[str, float]:
    """(cell, file) -> seconds from the merged JUnit."""
    import xml.etree.ElementTree as ET

    files: dict[str, float] = {}
    for suite in ET.parse(out / "junit.xml").getroot().iter("testsuite"):
        for tc in suite.iter("testcase"):
            key = f"{suite.get('name')}::{tc.get('file') or tc.get('classname')}"
            files[key] = files.get(key, 0.0) + float(tc.get("time") or 0)
    return files


def bare_docker_start(tag: str, n: int = 7) -> float:
    times = []
    for _ in range(n):
        started = time.monotonic()
        sh(["docker", "run", "--rm", tag, "true"])
        times.append(time.monotonic() - started)
    return statistics.median(times)


def shard_overhead(work: Path, base_tag: str) -> tuple[float, float]:
    """Median (coordinator wall - pytest session time) over 12 trivial shards, and the bare container start."""
    project = work / "overhead-project"
    (project / "tests").mkdir(parents=True, exist_ok=True)
    for i in range(12):
        (project / "tests" / f"test_{i:02d}.py").write_text("def test_ok():\n    assert True\n")
    matrix = work / "overhead.yaml"
    matrix.write_text(
        f"name: overhead\nproject: {project}\nmatrix: {{debian: [bookworm]}}\n"
        'image: {base: "matrix-run/debian:{debian}"}\ntests: {shards: 12, install-project: false}\n'
    )
    out = work / "overhead-out"
    history = work / "overhead.sqlite"
    run_matrix(matrix, out, history)  # builds the tiny image and layer outside the measurement
    _, res = run_matrix(matrix, out, history)
    overheads = [shard["wall"] - shard["session"] for shard in res["cells"][0]["shards"]]
    return statistics.median(overheads), bare_docker_start(base_tag)


COORDINATOR = r"""
import json, resource, sys, time, tempfile, pathlib
sys.path.insert(0, sys.argv[1])
what = sys.argv[2]
work = pathlib.Path(tempfile.mkdtemp())
if what == "plan":
    from runner import plan
    proj = work / "proj"; (proj / "tests").mkdir(parents=True)
    for i in range(60):
        (proj / "tests" / f"test_{i}.py").write_text("".join(f"def test_{j}():\n    pass\n" for j in range(20)))
    axes = {"a": [str(i) for i in range(10)], "b": [str(i) for i in range(10)],
            "c": [str(i) for i in range(10)], "d": [str(i) for i in range(10)]}
    (work / "m.yaml").write_text(json.dumps({"name": "big", "project": str(proj), "matrix": axes,
        "image": {"base": "img:{a}"}, "tests": {"shards": 4}}))
    t0 = time.perf_counter()
    planned = plan.plan_matrix(str(work / "m.yaml"), [])
    took = time.perf_counter() - t0
    assert len(planned.cells) == 10000, len(planned.cells)
    assert sum(len(s) for s in planned.shards.values()) == 40000
elif what == "view":
    import io
    from rich.console import Console
    from runner.progress import LiveView
    view = LiveView()
    view.console = Console(file=io.StringIO(), force_terminal=True, width=140)
    cells = {f"python-3.{c % 4 + 9}_torch-2.{c // 4}_cell-{c}": 4 for c in range(2500)}  # 10,000 shards
    view.begin(cells)
    t0 = time.perf_counter()
    for cid, n in cells.items():
        for s in range(n):
            view.shard(cid, f"shard-{s + 1}of{n}", 1, "running")
            view.shard(cid, f"shard-{s + 1}of{n}", 1, "done", 100, s % 2)
        view.cell(cid, "passed", {"passed": 400, "failures": 2})
    events = time.perf_counter() - t0
    frames = []
    for _ in range(20):
        t1 = time.perf_counter()
        view.console.print(view._render())
        frames.append(time.perf_counter() - t1)
    view.end()
    frames.sort()
    took = frames[len(frames) // 2]
    print(json.dumps({"seconds": took, "events_per_s": 2 * 10000 / events,
                      "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
    sys.exit(0)
else:
    import random
    from runner import junit, results
    from runner.execution import ShardOutcome
    rng = random.Random(1)
    outcomes = []
    for c in range(20):
        for s in range(5):
            recs = [{"event": "start"}]
            for k in range(1000):
                nodeid = f"tests/test_{c}_{s}_{k // 50}.py::test_{k}[p-{rng.random():.6f}]"
                for when in ("setup", "call", "teardown"):
                    rec = {"event": "test", "nodeid": nodeid, "when": when, "duration": 0.001 * (k % 10),
                           "outcome": "failed" if when == "call" and k % 97 == 0 else "passed",
                           "file": nodeid.split("::")[0], "line": k, "stop": 1.0 + k}
                    if rec["outcome"] == "failed":
                        rec["longrepr"], rec["message"] = "Traceback\nAssertionError", "boom"
                    recs.append(rec)
            recs.append({"event": "end"})
            data = "".join(json.dumps(r) + "\n" for r in recs).encode()
            outcomes.append(ShardOutcome(f"cell-{c}", f"shard-{s}", 1, 1, report=data))
    t0 = time.perf_counter()
    cells = {}
    for o in outcomes:
        cells.setdefault(o.cell_id, []).append(results.evaluate(o))
    merged = []
    for cid, atts in cells.items():
        tests = results.fold(atts)
        status, reason = results.cell_status(tests, atts)
        merged.append(results.CellResult(cid, {"cell": cid}, status, reason, tests, atts, 1.0))
    junit.write_merged(merged, work / "junit.xml", "big")
    took = time.perf_counter() - t0
    assert sum(len(c.tests) for c in merged) == 100000
print(json.dumps({"seconds": took, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def coordinator_figure(what: str) -> dict[str, float]:
    proc = sh([PY, "-c", COORDINATOR, str(ROOT), what])
    if proc.returncode:
        sys.exit(f"bench: coordinator {what} failed: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def one_test_fixed_cost(work: Path) -> tuple[float, float]:
    """A warm run of a one-test, one-cell matrix against a bare `docker run --rm IMAGE python -m pytest` of it."""
    project = work / "one-test"
    (project / "tests").mkdir(parents=True, exist_ok=True)
    (project / "tests" / "test_one.py").write_text("def test_one():\n    assert 1 + 1 == 2\n")
    matrix = work / "one-test.yaml"
    matrix.write_text(
        f"name: onetest\nproject: {project}\nmatrix: {{debian: [bookworm]}}\n"
        'image: {base: "matrix-run/debian:{debian}"}\ntests: {shards: 1, install-project: false}\n'
    )
    history = work / "one-test.sqlite"
    run_matrix(matrix, work / "one-test-out", history)  # images, layer, history: warm from here on
    runs = [run_matrix(matrix, work / "one-test-out", history)[0] for _ in range(3)]
    tag = prepare_images(matrix)["debian-bookworm"]
    bare = []
    for _ in range(3):
        started = time.monotonic()
        sh(["docker", "run", "--rm", tag, "python", "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"])
        bare.append(time.monotonic() - started)
    return statistics.median(runs), statistics.median(bare)


def suite_figures(sdist: str, work: Path, slots: int) -> dict[str, float]:
    """A, B, the cold and warm matrix-run, --cache, and the bound LBw for one real suite."""
    project = fetch(sdist, work)
    matrix = write_matrix(work, project, sdist.split("==", maxsplit=1)[0])
    print(f"bench: {sdist} in {project}, {slots} slots; preparing images (timed apart)", flush=True)
    return matrix_figures(matrix, work, slots)


def matrix_figures(
    matrix: Path, work: Path, slots: int, select: tuple[str, ...] = (), warm: bool = False
) -> dict[str, float]:
    """A, B, the cold and warm matrix-run, --cache, and the bound LBw for one matrix (its selected cells).

    ``warm``: each cell's suite runs once, untimed, before A: multi-GB images (torch) are read from disk by the
    first run after a build only, and that run would weigh on A alone.
    """
    fig: dict[str, float] = {}
    started = time.monotonic()
    tags = prepare_images(matrix, select)
    fig["images_s"] = time.monotonic() - started
    envs = cell_envs(matrix, select)
    runs = [(tags[cid], envs[cid]) for cid in tags]
    if warm:
        print("bench: warming (each cell's suite once, untimed)", flush=True)
        for tag, env in runs:
            docker_pytest(tag, env)

    print("bench: A (cells one after another)", flush=True)
    fig["A"] = sum(docker_pytest(tag, env) for tag, env in runs)
    print("bench: B (cells in parallel)", flush=True)
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=slots) as pool:
        list(pool.map(lambda run: docker_pytest(*run), runs))
    fig["B"] = time.monotonic() - started

    history = work / "history.sqlite"
    history.unlink(missing_ok=True)
    chosen = [f"--select={s}" for s in select]
    print("bench: C0 (matrix-run, cold history)", flush=True)
    fig["C0"], _ = run_matrix(matrix, work / "out-c0", history, *chosen)
    print("bench: C (matrix-run, warm history)", flush=True)
    fig["C"], res = run_matrix(matrix, work / "out-c", history, *chosen)
    print("bench: Cr (matrix-run on an embedded Ray of its own: --address embedded)", flush=True)
    fig["Cr"], _ = run_matrix(matrix, work / "out-cr", history, "--address", "embedded", *chosen)
    print("bench: Ck (matrix-run on a kept local Ray: cluster up --workers 0)", flush=True)
    state = {"MATRIX_RUN_STATE_DIR": str(work / "kept-cluster")}
    cli = [PY, "-m", "runner.cli", "cluster"]
    ports = [str(free_port()), str(free_port())]
    up = sh(
        [*cli, "up", "--workers", "0", "--port", ports[0], "--dashboard-port", ports[1]],
        cwd=ROOT,
        env={**os.environ, **state},
    )
    if up.returncode != 0:
        sys.exit(f"bench: cluster up failed:\n{up.stdout[-2000:]}\n{up.stderr[-2000:]}")
    try:
        fig["Ck"], _ = run_matrix(matrix, work / "out-ck", history, *chosen, env=state)
    finally:
        sh([*cli, "down"], cwd=ROOT, env={**os.environ, **state})
    print("bench: E (matrix-run --cache, nothing changed)", flush=True)
    fig["E"], res_e = run_matrix(matrix, work / "out-e", history, "--cache", *chosen)
    passed = {c["id"] for c in res["cells"] if c["status"] == "passed"}
    assert all(c["status"] == "cached" for c in res_e["cells"] if c["id"] in passed), res_e["cells"]
    fig["tests_per_cell"] = res["cells"][0]["tests"]
    fig["shards_C"] = sum(len({s["shard"] for s in c["shards"]}) for c in res["cells"])
    firsts = [s for c in res["cells"] for s in c["shards"] if s["attempt"] == 1]
    fig["overhead_C"] = statistics.median(s["wall"] - s["session"] for s in firsts) if firsts else 0.0
    files = per_file_seconds(work / "out-c")
    fig["total_test_seconds"] = sum(files.values())
    fig["longest_file"] = max(files.values())
    fig["start"] = bare_docker_start(next(iter(tags.values())))
    fig["LBw"] = fig["A"] / slots + fig["start"]
    return fig


def suite_rows(sdist: str, fig: dict[str, float], slots: int) -> list[tuple[str, str, str, str]]:
    a, b, c, lbw = fig["A"], fig["B"], fig["C"], fig["LBw"]

    def verdict(ok: bool) -> str:
        return "met" if ok else "MISSED"

    return [
        (f"{sdist}: {fig['tests_per_cell']:.0f} tests per cell", "", "", ""),
        ("A  a docker run per cell, in turn", f"{a:.1f} s", f"{a / lbw:.2f} x LBw", ""),
        ("B  a container per cell, slots at a time", f"{b:.1f} s", f"{b / lbw:.2f} x LBw", ""),
        ("C0 matrix-run, cold history", f"{fig['C0']:.1f} s", f"{fig['C0'] / lbw:.2f} x LBw", ""),
        (
            "C  matrix-run, warm history",
            f"{c:.1f} s",
            f"{c / lbw:.2f} x LBw",
            f"target <= 1.15 x LBw  {verdict(c <= 1.15 * lbw)}; {fig['shards_C']:.0f} shards, "
            f"{fig['overhead_C']:.2f} s per shard beyond pytest",
        ),
        ("   A / C", f"{a / c:.2f} x", "", f"target >= 1.6  {verdict(a / c >= 1.6)}"),
        ("   B / C", f"{b / c:.2f} x", "", f"target >= 1.2  {verdict(b / c >= 1.2)}"),
        (
            "Cr matrix-run on an embedded Ray",
            f"{fig['Cr']:.1f} s",
            f"{fig['Cr'] / lbw:.2f} x LBw",
            f"Cr - C {fig['Cr'] - c:.1f} s: the embedded Ray's start and stop (--address embedded)",
        ),
        (
            "Ck matrix-run on a kept local Ray",
            f"{fig['Ck']:.1f} s",
            f"{fig['Ck'] / lbw:.2f} x LBw",
            f"A / Ck {a / fig['Ck']:.2f}, B / Ck {b / fig['Ck']:.2f} (cluster up --workers 0, joined)",
        ),
        ("E  matrix-run --cache, unchanged", f"{fig['E']:.2f} s", "", ""),
        (
            "LBw = A / slots + one container start",
            f"{lbw:.1f} s",
            "",
            f"{slots} slots, start {fig['start']:.2f} s; JUnit test time {fig['total_test_seconds']:.1f} s, "
            f"longest file {fig['longest_file']:.1f} s",
        ),
        ("   images built before timing", f"{fig['images_s']:.1f} s", "", "dependency images + source layers"),
    ]


DEFAULT_SUITES = ("pygments==2.21.0", "attrs==25.4.0", "pyparsing==3.3.3")

TORCH_MATRIX = ROOT / "matrices" / "torch.yaml"
TORCH_BUILDS = ("2.13.0+cpu", "2.14.1")  # the CPU build of 2.13.0 (a 0.8 GB venv), the CUDA build of 2.14.1 (5.8 GB)
SMALL = ("six", "tomli")  # what the cells that share a torch differ in
TORCH_SCALE = 16  # the example's training tests, 16 times over, for (c): about a minute per cell, not 6 s


def torch_specs(work: Path, base: str, installer: str, cache: Path, builds: tuple[str, ...], smalls: tuple[str, ...]):  # type: ignore[no-untyped-def]
    """(torch build, small package) -> ImageSpec of a cell with both, on ``base``, as matrix-run makes it."""
    import yaml

    from runner import images, plan

    wheelhouse = yaml.safe_load(TORCH_MATRIX.read_text())["image"]["wheelhouse"]
    matrix = work / f"torch-{installer}-{base.rsplit(':', 1)[-1]}.yaml"
    matrix.write_text(
        yaml.safe_dump(
            {
                "name": "torchbench",
                "project": str(TORCH_MATRIX.parent / yaml.safe_load(TORCH_MATRIX.read_text())["project"]),
                "matrix": {"build": list(builds), "small": list(smalls)},
                "image": {
                    "base": base,
                    "install": ["torch=={build}", "{small}"],
                    "wheelhouse": wheelhouse,
                    "installer": installer,
                    "cache": str(cache),
                },
                "tests": {"install-project": False},
            },
            sort_keys=False,
        )
    )
    planned = plan.plan_matrix(str(matrix), [])
    specs = images.specs_for(planned.mf, planned.cells)
    return {(c.axes["build"], c.axes["small"]): specs[c.id] for c in planned.cells}


def torch_build_figures(work: Path, cuda_build: bool) -> dict[str, float]:
    """(a) cold builds of torch cell images, with uv and with pip; (b) the disk 4 cells over 2 torch versions hold."""
    sys.path.insert(0, str(ROOT))
    from runner import engine, images

    client = engine.connect()
    work.mkdir(parents=True, exist_ok=True)
    run = secrets.token_hex(4)
    bases: list[str] = []
    made: list[str] = []
    caches: list[Path] = []

    def base(name: str) -> str:
        """A bench-only tag of the bookworm base: every layer above it is cold."""
        repo, tag = "matrix-run/bench-base", f"{name}-{run}"
        client.images.get("matrix-run/debian:bookworm").tag(repo, tag)
        bases.append(f"{repo}:{tag}")
        return f"{repo}:{tag}"

    def cache(name: str) -> Path:
        path = work / f"cache-{name}-{run}"
        caches.append(path)
        return path

    def build(spec, what: str) -> float:  # type: ignore[no-untyped-def]
        print(f"bench: building {what}", flush=True)
        started = time.monotonic()
        _, built = images.ensure(client, spec, log=work / "torch-images" / f"{what.replace(' ', '_')}.log")
        took = time.monotonic() - started
        assert built, what
        made.extend(t for t in (spec.tag, spec.heavy_tag) if t and t not in made)
        print(f"bench:   {took:.1f} s", flush=True)
        return took

    fig: dict[str, float] = {}
    builds = TORCH_BUILDS if cuda_build else TORCH_BUILDS[:1]
    try:
        uv = torch_specs(work, base("uv"), "uv", cache("uv"), builds, SMALL)
        fig["a_first_s"] = build(uv[builds[0], SMALL[0]], f"torch {builds[0]} + {SMALL[0]}, uv, cold")
        fig["a_second_s"] = build(uv[builds[0], SMALL[1]], f"torch {builds[0]} + {SMALL[1]}, uv, same torch")
        pip = torch_specs(work, base("pip"), "pip", cache("pip"), builds[:1], SMALL[:1])
        fig["a_first_pip_s"] = build(pip[builds[0], SMALL[0]], f"torch {builds[0]} + {SMALL[0]}, pip, cold")
        pip.update(torch_specs(work, bases[-1], "pip", caches[-1], builds[:1], SMALL[1:2]))
        fig["a_second_pip_s"] = build(pip[builds[0], SMALL[1]], f"torch {builds[0]} + {SMALL[1]}, pip, same torch")
        warm = torch_specs(work, base("uvwarm"), "uv", caches[0], builds[:1], SMALL[:1])
        fig["a_first_warm_cache_s"] = build(
            warm[builds[0], SMALL[0]], f"torch {builds[0]} + {SMALL[0]}, uv, warm cache"
        )
        for other in builds[1:]:
            fig["b_first_other_s"] = build(uv[other, SMALL[0]], f"torch {other} + {SMALL[0]}, uv, cold layers")
            fig["b_second_other_s"] = build(uv[other, SMALL[1]], f"torch {other} + {SMALL[1]}, uv, same torch")
        cells = {uv[key].tag: [f"{key[0]}+{key[1]}"] for key in uv}
        every = images.disk_usage(client, cells)
        one_each = images.disk_usage(client, {uv[b, SMALL[0]].tag: [b] for b in builds})
        base_size = int(client.images.get("matrix-run/debian:bookworm").attrs["Size"])
        fig["b_cells"] = len(cells)
        fig["b_disk_bytes"] = every.disk
        fig["b_one_per_torch_bytes"] = one_each.disk
        fig["b_size_sum_bytes"] = every.sizes
        fig["b_one_layer_bytes"] = base_size + sum(i.size - base_size for i in every.images)  # no heavy layers
        fig["images"] = [dataclasses.asdict(i) for i in every.images]  # type: ignore[assignment]
    finally:
        for tag in reversed(made):
            for layer in client.images.list(filters={"label": f"matrix-run.env={tag}"}):
                sh(["docker", "rmi", "-f", layer.id])
            sh(["docker", "rmi", tag])
        for tag in bases:
            sh(["docker", "rmi", tag])
        for path in caches:
            shutil.rmtree(path, ignore_errors=True)
    return fig


EXAMPLE = f"(c) torch example, CPU cells, shards: auto, TORCHSAMPLE_SCALE={TORCH_SCALE}"


def torch_rows(fig: dict[str, float], ex: dict[str, float], slots: int) -> list[tuple[str, str, str, str]]:
    def verdict(ok: bool) -> str:
        return "met" if ok else "MISSED"

    if not fig:
        return suite_rows(EXAMPLE, ex, slots)
    first, second = fig["a_first_s"], fig["a_second_s"]
    disk, two = fig["b_disk_bytes"], fig["b_one_per_torch_bytes"]
    versions = "2 torch versions" if "b_first_other_s" in fig else "1 torch version (--skip-cuda-build)"
    rows = [
        ("torch cell images (bench-only base, cold layers)", "", "", ""),
        ("(a) first cell, torch 2.13.0+cpu + six, uv", f"{first:.1f} s", "empty package cache", ""),
        (
            "    second cell, same torch + tomli, uv",
            f"{second:.1f} s",
            f"{second / first:.2f} x first",
            f"target <= 0.25 x first  {verdict(second <= 0.25 * first)}",
        ),
        (
            "    first cell with installer: pip",
            f"{fig['a_first_pip_s']:.1f} s",
            f"{fig['a_first_pip_s'] / first:.2f} x uv",
            "",
        ),
        (
            "    second cell with installer: pip",
            f"{fig['a_second_pip_s']:.1f} s",
            f"{fig['a_second_pip_s'] / second:.2f} x uv",
            "",
        ),
        (
            "    first cell, uv, warm package cache",
            f"{fig['a_first_warm_cache_s']:.1f} s",
            f"{fig['a_first_warm_cache_s'] / first:.2f} x cold",
            "",
        ),
    ]
    if "b_first_other_s" in fig:
        rows += [
            ("    torch 2.14.1 (CUDA build) + six, uv", f"{fig['b_first_other_s']:.1f} s", "", ""),
            (
                "    torch 2.14.1 + tomli, uv",
                f"{fig['b_second_other_s']:.1f} s",
                f"{fig['b_second_other_s'] / fig['b_first_other_s']:.2f} x",
                "",
            ),
        ]
    rows += [
        (
            f"(b) disk of {fig['b_cells']:.0f} cells over {versions}",
            f"{disk / 1e9:.2f} GB",
            f"{disk / two:.2f} x one image per torch",
            f"target <= 1.3  {verdict(disk <= 1.3 * two)}; one per torch {two / 1e9:.2f} GB, sizes add up to "
            f"{fig['b_size_sum_bytes'] / 1e9:.2f} GB, one layer each (no heavy layers) "
            f"{fig['b_one_layer_bytes'] / 1e9:.2f} GB",
        ),
    ]
    if ex:
        rows += [("", "", "", ""), *suite_rows(EXAMPLE, ex, slots)]
    return rows


def torch_example_matrix(work: Path) -> Path:
    """matrices/torch.yaml as the bench runs it: shards: auto (as the real suites), the suite at TORCH_SCALE."""
    import yaml

    data = yaml.safe_load(TORCH_MATRIX.read_text())
    data["project"] = str((TORCH_MATRIX.parent / data["project"]).resolve())
    data["tests"]["shards"] = "auto"
    data["tests"]["env"]["TORCHSAMPLE_SCALE"] = str(TORCH_SCALE)
    path = work / "torch-example.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def torch_figures(
    work: Path, slots: int, cuda_build: bool, builds_too: bool = True
) -> tuple[dict[str, object], list[tuple[str, str, str, str]]]:
    work.mkdir(parents=True, exist_ok=True)
    builds = torch_build_figures(work / "builds", cuda_build) if builds_too else {}
    select = ("hardware=cpu",) if cuda_build else ("hardware=cpu", "torch=2.13.0")
    (work / "example").mkdir(parents=True, exist_ok=True)
    matrix = torch_example_matrix(work / "example")
    print(f"bench: torch example {' '.join(select)}, {slots} slots; preparing images (timed apart)", flush=True)
    example = matrix_figures(matrix, work / "example", slots, select, warm=True)
    return {"builds": builds, "example": example}, torch_rows(builds, example, slots)


def report(rows: list[tuple[str, str, str, str]], fig: dict[str, object], json_path: str | None) -> int:
    """The figures as a table on stdout, and as JSON into ``json_path`` when given."""
    width = max(len(r[0]) for r in rows)
    print()
    for r in rows:
        print(f"{r[0]:<{width}}  {r[1]:>10}  {r[2]:<28} {r[3]}")
    if json_path:
        Path(json_path).write_text(json.dumps(fig, indent=2))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sdist", action="append", help=f"a PyPI sdist to measure (default: {DEFAULT_SUITES})")
    parser.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "matrix-run-bench"))
    parser.add_argument("--skip-suite", action="store_true", help="only the coordinator and overhead figures")
    parser.add_argument("--torch", action="store_true", help="only the torch figures (matrices/torch.yaml)")
    parser.add_argument(
        "--skip-cuda-build", action="store_true", help="--torch without torch 2.14.1's 5.8 GB CUDA build"
    )
    parser.add_argument("--skip-builds", action="store_true", help="--torch: only the torch example's figures (c)")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    slots = os.cpu_count() or 1
    fig: dict[str, object] = {}
    rows: list[tuple[str, str, str, str]] = []

    if args.torch:
        fig, rows = torch_figures(work / "torch", slots, not args.skip_cuda_build, not args.skip_builds)
        return report(rows, fig, args.json)

    if not args.skip_suite:
        for sdist in args.sdist or DEFAULT_SUITES:
            suite = suite_figures(sdist, work / sdist.replace("==", "-"), slots)
            fig[sdist] = suite
            table = suite_rows(sdist, suite, slots)
            rows += [*table, ("", "", "", "")]
            for r in table:  # as each suite finishes: a long bench shows its figures as it goes
                print(f"  {r[0]:<40}  {r[1]:>10}  {r[2]:<16} {r[3]}", flush=True)

    print("bench: one-test fixed cost", flush=True)
    ours, bare_pytest = one_test_fixed_cost(work)
    print("bench: coordinator figures", flush=True)
    plan_fig = coordinator_figure("plan")
    merge_fig = coordinator_figure("merge")
    view_fig = coordinator_figure("view")
    print("bench: per-shard overhead", flush=True)
    overhead, bare = shard_overhead(work, "matrix-run/debian:bookworm")
    fig.update(
        one_test_s=ours,
        one_test_bare_s=bare_pytest,
        plan10k_s=plan_fig["seconds"],
        plan10k_mb=plan_fig["peak_mb"],
        merge100k_s=merge_fig["seconds"],
        merge100k_mb=merge_fig["peak_mb"],
        view_frame_ms=view_fig["seconds"] * 1000,
        view_events_per_s=view_fig["events_per_s"],
        shard_overhead_s=overhead,
        docker_run_true_s=bare,
    )
    rows += [
        (
            "one-test matrix, warm run",
            f"{ours:.2f} s",
            f"bare docker run pytest {bare_pytest:.2f} s",
            f"diff {ours - bare_pytest:+.2f} s, target <= +2 s  {'met' if ours - bare_pytest <= 2 else 'MISSED'}",
        ),
        (
            "10k-cell expand+plan",
            f"{plan_fig['seconds']:.2f} s",
            f"{plan_fig['peak_mb']:.0f} MB peak RSS",
            "target < 2 s, < 300 MB",
        ),
        (
            "100k-case merge",
            f"{merge_fig['seconds']:.2f} s",
            f"{merge_fig['peak_mb']:.0f} MB peak RSS",
            "target < 10 s, < 1 GB",
        ),
        (
            "live view, 10k shards",
            f"{view_fig['seconds'] * 1000:.0f} ms",
            f"{view_fig['events_per_s']:,.0f} events/s",
            "one frame drawn (median); refresh every 500 ms",
        ),
        (
            "per-shard overhead (median)",
            f"{overhead:.2f} s",
            f"docker run true {bare:.2f} s",
            f"diff {overhead - bare:+.2f} s, target <= +0.5 s",
        ),
    ]
    return report(rows, fig, args.json)


if __name__ == "__main__":
    sys.exit(main())
