"""matrix-run's benchmark: every figure of issue 4 measured side by side, in one run, on this machine.

    .venv/bin/python scripts/bench.py [--sdist NAME==VERSION] [--work DIR] [--skip-suite] [--json FILE]

Workload: a real third-party test suite (default pyparsing 3.3.3 from PyPI, ~2,100 tests in 13 files) across
Python 3.9 / 3.11 / 3.13 (Debian bullseye / bookworm / trixie images, bootstrapped offline when missing).

  A   what a user writes instead: a shell loop, one `docker run` per cell in turn, pytest on the whole suite
  B   one container per cell, cells in parallel up to the core count, no sharding
  C   matrix-run, cold duration history (`shards: auto`)
  D   matrix-run, warm history (the second run)
  E   matrix-run --cache, nothing changed
  LB  this machine's lower bound: max(longest single file, total test time / slots) + one container start,
      from the per-file durations measured in D
Coordinator figures: 10,000-cell expand+plan and 100,000-case JUnit merge (time, peak memory), one frame of the
live view with 10,000 shards (and how many shard events per second it takes in), and the median per-shard
overhead of matrix-run against a bare `docker run --rm IMAGE true`.

A, B, C and D run in the same images (dependency image + the project layer matrix-run builds), built before any
timing starts, so image builds are measured by none of them. Figures are ratios from this one run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
SUITES = {"3.9": "bullseye", "3.11": "bookworm", "3.13": "trixie"}
EXTRA = {"pyparsing": ["railroad-diagrams", "jinja2"], "attrs": ["cloudpickle", "hypothesis", "pympler"]}


def sh(cmd: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, text=True, capture_output=True, check=False, **kw)  # type: ignore[call-overload]


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


def write_matrix(work: Path, project: Path, name: str) -> Path:
    path = work / "bench.yaml"
    extra = json.dumps(EXTRA.get(name, []))
    path.write_text(
        textwrap.dedent(
            f"""\
            name: bench
            project: {project}
            matrix:
              python: ["3.9", "3.11", "3.13"]
              include:
                - {{python: "3.9", debian: bullseye}}
                - {{python: "3.11", debian: bookworm}}
                - {{python: "3.13", debian: trixie}}
            image:
              base: "matrix-run/debian:{{debian}}"
              bootstrap: "{{debian}}"
              install: {extra}
            tests:
              shards: auto
              timeout: 1800
            strategy: {{fail-fast: false}}
            """
        )
    )
    return path


def prepare_images(matrix: Path) -> dict[str, str]:
    """cell id -> the image matrix-run's shards start from (dependencies + project layer), built now."""
    sys.path.insert(0, str(ROOT))
    from runner import cli, engine, images

    planned = cli.plan_run(str(matrix), [])
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


def docker_pytest(tag: str) -> float:
    started = time.monotonic()
    proc = sh(["docker", "run", "--rm", tag, "python", "-m", "pytest", "-q", "-p", "no:cacheprovider"])
    if proc.returncode not in (0, 1):
        sys.exit(f"bench: direct pytest in {tag} failed: {proc.stdout[-800:]}{proc.stderr[-800:]}")
    return time.monotonic() - started


def run_matrix(matrix: Path, out: Path, history: Path, *extra: str) -> tuple[float, dict]:  # type: ignore[type-arg]
    started = time.monotonic()
    proc = sh(
        [PY, "-m", "runner.cli", "run", str(matrix), "--out", str(out), "--history", str(history), "--plain", *extra],
        cwd=ROOT,
    )
    took = time.monotonic() - started
    if proc.returncode != 0:
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
    import xml.etree.ElementTree as ET

    overheads = []
    for shard in res["cells"][0]["shards"]:
        raw = out / "shards" / res["cells"][0]["id"] / f"{shard['shard']}.attempt{shard['attempt']}.junit.xml"
        session = float(ET.parse(raw).getroot().find("testsuite").get("time"))  # type: ignore[union-attr]
        overheads.append(shard["wall"] - session)
    return statistics.median(overheads), bare_docker_start(base_tag)


COORDINATOR = r"""
import json, resource, sys, time, tempfile, pathlib
sys.path.insert(0, sys.argv[1])
what = sys.argv[2]
work = pathlib.Path(tempfile.mkdtemp())
if what == "plan":
    from runner import cli
    proj = work / "proj"; (proj / "tests").mkdir(parents=True)
    for i in range(60):
        (proj / "tests" / f"test_{i}.py").write_text("".join(f"def test_{j}():\n    pass\n" for j in range(20)))
    axes = {"a": [str(i) for i in range(10)], "b": [str(i) for i in range(10)],
            "c": [str(i) for i in range(10)], "d": [str(i) for i in range(10)]}
    (work / "m.yaml").write_text(json.dumps({"name": "big", "project": str(proj), "matrix": axes,
        "image": {"base": "img:{a}"}, "tests": {"shards": 4}}))
    t0 = time.perf_counter()
    planned = cli.plan_run(str(work / "m.yaml"), [])
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
    from runner.container import ShardOutcome
    rng = random.Random(1)
    outcomes = []
    for c in range(20):
        for s in range(5):
            cases = "".join(
                f'<testcase classname="tests.test_{c}_{s}_{k // 50}" name="test_{k}[p-{rng.random():.6f}]" '
                f'file="tests/test_{c}_{s}_{k // 50}.py" line="{k}" time="0.0{k % 10}">'
                + ('<failure message="boom">Traceback\nAssertionError</failure>' if k % 97 == 0 else "")
                + "</testcase>" for k in range(1000))
            xml = f'<testsuites><testsuite name="pytest" tests="1000">{cases}</testsuite></testsuites>'
            outcomes.append(ShardOutcome(f"cell-{c}", f"shard-{s}", 1, 1, junit=xml.encode()))
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sdist", default="pyparsing==3.3.3")
    parser.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "matrix-run-bench"))
    parser.add_argument("--skip-suite", action="store_true", help="only the coordinator and overhead figures")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    slots = os.cpu_count() or 1
    fig: dict[str, float] = {}

    if not args.skip_suite:
        project = fetch(args.sdist, work)
        matrix = write_matrix(work, project, args.sdist.split("==")[0])
        print(f"bench: {args.sdist} in {project}, {slots} slots; preparing images (not timed)", flush=True)
        tags = prepare_images(matrix)

        print("bench: A (cells one after another)", flush=True)
        fig["A"] = sum(docker_pytest(tag) for tag in tags.values())
        print("bench: B (cells in parallel)", flush=True)
        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=slots) as pool:
            list(pool.map(docker_pytest, tags.values()))
        fig["B"] = time.monotonic() - started

        history = work / "history.sqlite"
        history.unlink(missing_ok=True)
        print("bench: C (matrix-run, cold history)", flush=True)
        fig["C"], _ = run_matrix(matrix, work / "out-c", history)
        print("bench: D (matrix-run, warm history)", flush=True)
        fig["D"], res_d = run_matrix(matrix, work / "out-d", history)
        print("bench: E (matrix-run --cache, nothing changed)", flush=True)
        fig["E"], res_e = run_matrix(matrix, work / "out-e", history, "--cache")
        assert all(c["status"] == "cached" for c in res_e["cells"]), res_e["cells"]
        fig["tests_per_cell"] = res_d["cells"][0]["tests"]
        fig["shards_D"] = sum(len({s["shard"] for s in c["shards"]}) for c in res_d["cells"])

        files = per_file_seconds(work / "out-d")
        start = bare_docker_start(next(iter(tags.values())))
        fig["total_test_seconds"] = sum(files.values())
        fig["longest_file"] = max(files.values())
        fig["LB"] = max(fig["longest_file"], fig["total_test_seconds"] / slots) + start

    print("bench: coordinator figures", flush=True)
    plan_fig = coordinator_figure("plan")
    merge_fig = coordinator_figure("merge")
    fig["plan10k_s"], fig["plan10k_mb"] = plan_fig["seconds"], plan_fig["peak_mb"]
    fig["merge100k_s"], fig["merge100k_mb"] = merge_fig["seconds"], merge_fig["peak_mb"]
    view_fig = coordinator_figure("view")
    fig["view_frame_ms"], fig["view_events_per_s"] = view_fig["seconds"] * 1000, view_fig["events_per_s"]
    print("bench: per-shard overhead", flush=True)
    overhead, bare = shard_overhead(work, "matrix-run/debian:bookworm")
    fig["shard_overhead_s"], fig["docker_run_true_s"] = overhead, bare

    rows = []
    if not args.skip_suite:
        a, b, d, lb = fig["A"], fig["B"], fig["D"], fig["LB"]
        rows += [
            ("A  shell loop, cells in turn", f"{a:.1f} s", f"{a / lb:.2f} x LB", ""),
            ("B  cells in parallel, no shards", f"{b:.1f} s", f"{b / lb:.2f} x LB", ""),
            ("C  matrix-run, cold history", f"{fig['C']:.1f} s", f"{fig['C'] / lb:.2f} x LB", ""),
            ("D  matrix-run, warm history", f"{d:.1f} s", f"{d / lb:.2f} x LB", "target <= 1.15 x LB"),
            ("   A / D", f"{a / d:.2f} x", "", "target >= 1.6"),
            ("   B / D", f"{b / d:.2f} x", "", "target >= 1.2"),
            ("E  matrix-run --cache, unchanged", f"{fig['E']:.2f} s", "", "target < 3 s"),
            (
                "LB lower bound",
                f"{lb:.1f} s",
                "",
                f"tests {fig['total_test_seconds']:.1f} s, longest file {fig['longest_file']:.1f} s, {slots} slots",
            ),
        ]
    rows += [
        (
            "10k-cell expand+plan",
            f"{fig['plan10k_s']:.2f} s",
            f"{fig['plan10k_mb']:.0f} MB peak RSS",
            "target < 2 s, < 300 MB",
        ),
        (
            "100k-case JUnit merge",
            f"{fig['merge100k_s']:.2f} s",
            f"{fig['merge100k_mb']:.0f} MB peak RSS",
            "target < 10 s, < 1 GB",
        ),
        (
            "live view, 10k shards",
            f"{fig['view_frame_ms']:.0f} ms",
            f"{fig['view_events_per_s']:,.0f} events/s",
            "one frame drawn (median); refresh every 500 ms",
        ),
        (
            "per-shard overhead (median)",
            f"{overhead:.2f} s",
            f"docker run true {bare:.2f} s",
            f"diff {overhead - bare:+.2f} s, target <= +0.5 s",
        ),
    ]
    width = max(len(r[0]) for r in rows)
    print()
    for r in rows:
        print(f"{r[0]:<{width}}  {r[1]:>10}  {r[2]:<24} {r[3]}")
    if args.json:
        Path(args.json).write_text(json.dumps(fig, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
