"""runner/coverage_merge.py: shards' coverage data (paths under /src in the containers) -> one report here."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import coverage

from runner import coverage_merge


def _data_file(tmp: Path, name: str, lines: dict[str, list[int]]) -> bytes:
    data = coverage.CoverageData(basename=str(tmp / name))
    data.add_lines(lines)
    data.write()
    return (tmp / name).read_bytes()


def _project(root: Path) -> Path:
    pkg = root / "proj" / "src" / "pkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "mod.py").write_text("def one():\n    return 1\n\n\ndef two():\n    return 2\n")
    (root / "proj" / "pyproject.toml").write_text('[tool.coverage.report]\nexclude_lines = ["def two"]\n')
    return root / "proj"


def test_shards_combine_onto_the_project_with_its_own_config(tmp_path: Path) -> None:
    project = _project(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    first = _data_file(tmp_path, "a", {"/src/src/pkg/mod.py": [1, 2], "/src/src/pkg/__init__.py": []})
    second = _data_file(tmp_path, "b", {"/src/src/pkg/mod.py": [1, 5]})  # another cell ran other tests

    summary = coverage_merge.write_merged([first, second, b""], project, out, "t")

    assert summary is not None
    assert summary.shards == 2
    classes = {c.get("filename"): c for c in ET.parse(out / "coverage.xml").getroot().iter("class")}
    assert set(classes) == {"src/pkg/mod.py", "src/pkg/__init__.py"}  # relative to the project, never /src
    hits = {int(ln.get("number")): int(ln.get("hits")) for ln in classes["src/pkg/mod.py"].iter("line")}
    # lines 1-2 from one shard, 1 from both; "def two" and its body are excluded by the project's config
    assert hits == {1: 1, 2: 1}
    assert summary.percent == 100.0
    assert (out / "htmlcov" / "index.html").is_file()


def test_no_data_no_report(tmp_path: Path) -> None:
    assert coverage_merge.write_merged([b"", b""], tmp_path, tmp_path, "t") is None
    assert not (tmp_path / "coverage.xml").exists()
