"""Cells + test files (+ durations) -> [Shard]: what ``--dry-run`` prints. Pure apart from reading files.

Test files are found the way pytest would find them from the project's own configuration (``python_files``,
``testpaths``, ``norecursedirs``, ``--doctest-modules``), over the same file list that is shipped to the
containers. A file that pytest would skip whole at import is still a file here, so it is never dropped.
"""

from __future__ import annotations

import configparser
import fnmatch
import heapq
import posixpath
import re
import shlex
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import tomllib

from runner.matrix import Cell
from runner.source import SourceTree

DEFAULT_PYTHON_FILES = ("test_*.py", "*_test.py")
DEFAULT_NORECURSE = ("*.egg", ".*", "_darcs", "build", "CVS", "dist", "node_modules", "venv", "{arch}")
TEST_DEF = re.compile(rb"^\s*(?:async\s+)?def\s+test|^\s*>>>", re.MULTILINE)


@dataclass(frozen=True)
class PytestSettings:
    """The parts of a project's pytest configuration that decide which files hold tests."""

    python_files: tuple[str, ...] = DEFAULT_PYTHON_FILES
    testpaths: tuple[str, ...] = ()
    norecursedirs: tuple[str, ...] = DEFAULT_NORECURSE
    doctest_modules: bool = False
    doctest_glob: tuple[str, ...] = ("test*.txt",)
    configfile: str = ""


@dataclass(frozen=True)
class TestFile:
    path: str  # relative to the project root, posix
    weight: float  # predicted seconds (or a proxy: number of tests)


@dataclass(frozen=True)
class Shard:
    cell_id: str
    index: int  # 1-based
    count: int
    files: tuple[str, ...]
    predicted: float = 0.0
    node_ids: tuple[str, ...] = field(default=())  # a subset of the files' tests; empty = whole files

    @property
    def id(self) -> str:
        return f"{self.cell_id}/shard-{self.index}of{self.count}"

    @property
    def slug(self) -> str:
        return f"shard-{self.index}of{self.count}"


def _split(value: object) -> tuple[str, ...]:
    if isinstance(value, list):
        return tuple(str(v) for v in value)
    if isinstance(value, str):
        return tuple(value.split())
    return ()


def read_pytest_settings(root: Path) -> PytestSettings:
    """Read pytest's ini options from the first config file pytest itself would use."""
    options: Mapping[str, object] | None = None
    configfile = ""
    for name in ("pytest.ini", ".pytest.ini", "pyproject.toml", "tox.ini", "setup.cfg"):
        path = root / name
        if not path.is_file():
            continue
        try:
            if name == "pyproject.toml":
                data = tomllib.loads(path.read_text(encoding="utf-8"))
                tool = data.get("tool", {}).get("pytest", {})
                if "ini_options" in tool:
                    options = tool["ini_options"]
                elif tool:
                    options = {k: v for k, v in tool.items() if not isinstance(v, dict)}
            else:
                parser = configparser.ConfigParser(interpolation=None)
                parser.read(path, encoding="utf-8")
                section = {"setup.cfg": "tool:pytest"}.get(name, "pytest")
                if parser.has_section(section):
                    options = dict(parser.items(section))
                elif name in ("pytest.ini", ".pytest.ini"):
                    options = {}
        except (OSError, ValueError, configparser.Error, tomllib.TOMLDecodeError):
            continue
        if options is not None:
            configfile = name
            break
    options = options or {}
    addopts = options.get("addopts", "")
    args = list(addopts) if isinstance(addopts, list) else shlex.split(str(addopts))
    globs = [a.split("=", 1)[1] for a in args if a.startswith("--doctest-glob=")]
    return PytestSettings(
        python_files=_split(options.get("python_files")) or DEFAULT_PYTHON_FILES,
        testpaths=_split(options.get("testpaths")),
        norecursedirs=_split(options.get("norecursedirs")) or DEFAULT_NORECURSE,
        doctest_modules="--doctest-modules" in args,
        doctest_glob=tuple(globs) or ("test*.txt",),
        configfile=configfile,
    )


def _matches(rel: str, patterns: Sequence[str]) -> bool:
    name = rel.rsplit("/", 1)[-1]
    return any(fnmatch.fnmatch(rel if "/" in p else name, p) for p in patterns)


def discover(tree: SourceTree, paths: Sequence[str], settings: PytestSettings) -> list[str]:
    """Files that pytest would collect tests from, given ``paths`` (or the project's testpaths, or the root)."""
    roots = [posixpath.normpath(p).strip("/") for p in (paths or settings.testpaths or (".",))]
    globbed = [r for r in roots if any(ch in r for ch in "*?[")]
    if globbed:  # pytest >= 7.2 expands wildcards in testpaths against the tree
        dirs = {posixpath.dirname(f) for f in tree.files}
        dirs |= {"/".join(d.split("/")[:i]) for d in dirs for i in range(1, d.count("/") + 1)}
        expanded = {d for d in dirs | set(tree.files) for g in globbed if fnmatch.fnmatchcase(d, g)}
        roots = [r for r in roots if r not in globbed] + sorted(expanded)
    selected: list[str] = []
    for rel in tree.files:
        parts = rel.split("/")
        in_root = any(r in (".", "") or rel == r or rel.startswith(r + "/") for r in roots)
        if not in_root:
            continue
        explicit = rel in roots
        if not explicit and any(_matches(d, settings.norecursedirs) for d in parts[:-1]):
            continue
        name = parts[-1]
        if name == "conftest.py":
            continue
        if name.endswith(".py"):
            if explicit or _matches(rel, settings.python_files) or (settings.doctest_modules and name != "setup.py"):
                selected.append(rel)
        elif _matches(rel, settings.doctest_glob) and _has_doctest(tree, rel):
            selected.append(rel)
    return selected


def _has_doctest(tree: SourceTree, rel: str) -> bool:
    """A text file that pytest collects by --doctest-glob yields tests only if it holds a ``>>>`` prompt."""
    try:
        return b">>>" in (tree.root / rel).read_bytes()
    except OSError:
        return True


def estimate(tree: SourceTree, files: Sequence[str], history: Mapping[str, float] | None = None) -> list[TestFile]:
    """Predicted seconds per file: from history where known, else from the count of test definitions.

    Unknown files get the mean seconds-per-test of the known ones, so both scales agree.
    """
    history = history or {}
    counts = {}
    for rel in files:
        try:
            counts[rel] = max(1, len(TEST_DEF.findall((tree.root / rel).read_bytes())))
        except OSError:
            counts[rel] = 1
    known = [(history[f], counts[f]) for f in files if f in history]
    per_test = sum(s for s, _ in known) / max(1, sum(c for _, c in known)) if known else 1.0
    return [TestFile(f, history.get(f, counts[f] * per_test)) for f in files]


Planner = Callable[[Cell, Sequence[TestFile], int], list[Shard]]


def plan_lpt(cell: Cell, files: Sequence[TestFile], shards: int) -> list[Shard]:
    """Longest-processing-time first: each file, heaviest first, goes to the least loaded shard.

    Every file lands in exactly one shard; the result depends only on the inputs (ties break by path).
    """
    count = max(1, min(shards, len(files)))
    heap: list[tuple[float, int]] = [(0.0, i) for i in range(count)]
    buckets: list[list[str]] = [[] for _ in range(count)]
    loads = [0.0] * count
    for tf in sorted(files, key=lambda f: (-f.weight, f.path)):
        load, i = heapq.heappop(heap)
        buckets[i].append(tf.path)
        loads[i] = load + tf.weight
        heapq.heappush(heap, (loads[i], i))
    return [
        Shard(cell_id=cell.id, index=i + 1, count=count, files=tuple(sorted(b)), predicted=loads[i])
        for i, b in enumerate(buckets)
    ]
