"""Check matrix-run against a direct pytest run, cell by cell, in the very same image.

    python scripts/compare_direct.py MATRIX.yaml OUT_DIR [--select AXIS=VALUE ...]

OUT_DIR is the --out folder of a finished `matrix-run run` of MATRIX.yaml. For each cell, the project is copied
into a fresh folder, installed the way matrix-run installs it, and `python -m pytest --junitxml` runs the whole
suite in one container (no sharding, no plugin). The per-cell passed/failed/error/skipped counts of both are
printed side by side; exit 1 when any cell differs.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from runner import config, engine, images, matrix, source

# The project is installed as matrix-run installs it (editable, else a regular build), then plain pytest runs.
DIRECT = (
    "cd /src && export SETUPTOOLS_SCM_PRETEND_VERSION=${SETUPTOOLS_SCM_PRETEND_VERSION:-0.0.0+matrixrun}; "
    "PIP='python -m pip install -q --no-deps --no-build-isolation --no-index'; "
    "if [ -f pyproject.toml ] || [ -f setup.py ]; then "
    "$PIP -e . >/out/install.log 2>&1 || $PIP . >>/out/install.log 2>&1; fi; "
    "python -m pytest -q -p no:cacheprovider --junitxml=/out/direct.xml >/out/direct.log 2>&1; exit 0"
)


def _count(cases: Iterable[ET.Element]) -> Counter[str]:
    counts: Counter[str] = Counter()
    for tc in cases:
        tags = {c.tag for c in tc}
        if "failure" in tags:
            counts["failed"] += 1
        elif "error" in tags:
            counts["error"] += 1
        elif "skipped" in tags:
            counts["skipped"] += 1
        else:
            counts["passed"] += 1
    return counts


def count_junit(data: bytes) -> Counter[str]:
    """passed/failed/error/skipped counts from <testcase> elements."""
    return _count(ET.fromstring(data).iter("testcase")) if data.strip() else Counter()


def direct_counts(matrix_path: str, select: list[str]) -> dict[str, Counter[str]]:
    """cell id -> counts of a direct, unsharded pytest run in the cell's own image."""
    mf = config.load(matrix_path)
    cells = matrix.expand(mf, select)
    client = engine.connect()
    specs = images.specs_for(mf, cells, client)
    tree = source.snapshot(mf.project)
    out: dict[str, Counter[str]] = {}
    for cell in cells:
        tag, _ = images.ensure(client, specs[cell.id])
        with tempfile.TemporaryDirectory(prefix="matrix-run-direct-") as tmp:
            src, res = Path(tmp) / "src", Path(tmp) / "out"
            source.extract(tree.tarball, src)
            res.mkdir()
            client.containers.run(
                tag,
                ["/bin/sh", "-c", DIRECT],
                volumes={str(src): {"bind": "/src", "mode": "rw"}, str(res): {"bind": "/out", "mode": "rw"}},
                # the same variables matrix-run gives its shards, as one unsharded first attempt
                environment={
                    "HOME": "/tmp",
                    "MATRIX_RUN": "1",
                    "MATRIX_RUN_CELL": cell.id,
                    "MATRIX_RUN_SHARD": "shard-1of1",
                    "MATRIX_RUN_ATTEMPT": "1",
                },
                remove=True,
            )
            out[cell.id] = count_junit((res / "direct.xml").read_bytes() if (res / "direct.xml").exists() else b"")
    return out


def matrix_run_counts(out_dir: Path) -> dict[str, Counter[str]]:
    """cell id -> counts from matrix-run's merged junit.xml (flaky tests count as passed)."""
    root = ET.parse(out_dir / "junit.xml").getroot()
    result: dict[str, Counter[str]] = {}
    for suite in root.iter("testsuite"):
        result[suite.get("name", "")] = _count(suite.iter("testcase"))
    return result


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("matrix")
    parser.add_argument("out")
    parser.add_argument("--select", action="append", default=[])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    direct = direct_counts(args.matrix, args.select)
    ours = matrix_run_counts(Path(args.out))
    keys = ("passed", "failed", "error", "skipped")
    same = True
    rows = []
    for cell_id, d in direct.items():
        m = ours.get(cell_id, Counter())
        ok = all(d[k] == m[k] for k in keys)
        same &= ok
        rows.append(
            {"cell": cell_id, "direct": {k: d[k] for k in keys}, "matrix_run": {k: m[k] for k in keys}, "same": ok}
        )
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(f"{'cell':40} {'direct p/f/e/s':>22} {'matrix-run p/f/e/s':>22}  same")
        for r in rows:
            d, m = r["direct"], r["matrix_run"]
            print(
                f"{r['cell']:40} {'/'.join(str(d[k]) for k in keys):>22} {'/'.join(str(m[k]) for k in keys):>22}  "
                f"{'yes' if r['same'] else 'NO'}"
            )
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
