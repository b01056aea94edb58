"""Cells + test files (+ durations) -> [Shard]: what ``--dry-run`` prints. Pure apart from reading files.

Test files are found the way pytest would find them from the project's own configuration (``python_files``,
``testpaths``, ``norecursedirs``, ``--doctest-modules``), over the same file list that is shipped to the
containers. A file that pytest would skip whole at import is still a file here, so it is never dropped.
"""

from __future__ import annotations

import configparser
import fnmatch
import heapq
import math
import posixpath
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import tomllib

from runner.matrix import Cell
from runner.source import SourceTree

DEFAULT_PYTHON_FILES = ("test_*.py", "*_test.py")
DEFAULT_NORECURSE = ("*.egg", ".*", "_darcs", "build", "CVS", "dist", "node_modules", "venv", "{arch}")
MIN_PIECE_SECONDS = 0.01
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
class Piece:
    """A unit of planning: a whole file, or a part of a file too long for one shard."""

    file: str
    weight: float
    only: tuple[str, ...] = ()  # node ids this piece runs; empty = the whole file (minus ``skip``)
    skip: tuple[str, ...] = ()  # node ids other pieces run (the last piece of a split file takes new tests too)


@dataclass(frozen=True)
class Shard:
    cell_id: str
    index: int  # 1-based
    count: int
    files: tuple[str, ...]
    predicted: float = 0.0
    only: tuple[str, ...] = field(default=())  # node ids restricting the files they belong to
    skip: tuple[str, ...] = field(default=())  # node ids left to other shards

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


def estimate(
    tree: SourceTree,
    files: Sequence[str],
    history: Mapping[str, float] | None = None,
    default_per_test: float = 1.0,
) -> list[TestFile]:
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
    per_test = sum(s for s, _ in known) / max(1, sum(c for _, c in known)) if known else default_per_test
    return [TestFile(f, history.get(f, counts[f] * per_test)) for f in files]


def _lpt(weights: Sequence[tuple[float, str]], bins: int) -> tuple[list[list[int]], list[float]]:
    """Longest processing time first over (weight, tie-break) items: item indexes per bin, and bin loads."""
    heap: list[tuple[float, int]] = [(0.0, i) for i in range(bins)]
    buckets: list[list[int]] = [[] for _ in range(bins)]
    loads = [0.0] * bins
    for idx in sorted(range(len(weights)), key=lambda i: (-weights[i][0], weights[i][1])):
        load, b = heapq.heappop(heap)
        buckets[b].append(idx)
        loads[b] = load + weights[idx][0]
        heapq.heappush(heap, (loads[b], b))
    return buckets, loads


def _contiguous(items: Sequence[tuple[str, float]], parts: int) -> tuple[list[tuple[str, ...]], list[float]]:
    """Cut ordered (id, seconds) items into ``parts`` contiguous runs of about equal seconds."""
    total = sum(max(sec, 0.0) for _, sec in items)
    runs: list[list[str]] = [[]]
    loads = [0.0]
    done = 0.0
    for i, (nid, sec) in enumerate(items):
        left_parts = parts - len(runs)
        boundary = (total * len(runs)) / parts
        if runs[-1] and left_parts > 0 and done + max(sec, 0.0) / 2 > boundary and len(items) - i >= left_parts:
            runs.append([])
            loads.append(0.0)
        runs[-1].append(nid)
        loads[-1] += max(sec, 0.0)
        done += max(sec, 0.0)
    return [tuple(r) for r in runs], loads


def split_pieces(files: Sequence[TestFile], tests: Mapping[str, Mapping[str, float]], target: float) -> list[Piece]:
    """Whole files, except those predicted longer than ``target`` whose tests are known: those are cut by test id
    into contiguous runs, in pytest's order (``tests`` lists each file's tests in that order), so a test still
    follows the tests it followed before (suites whose classes set up state for the next ones keep working,
    except at a cut).

    Every part but the last names its tests; the last skips the others' tests, so a test that history does not
    know yet (new since the last run) still runs exactly once.
    """
    pieces: list[Piece] = []
    for tf in files:
        known = tests.get(tf.path, {})
        if target <= 0 or tf.weight <= target * 1.05 or len(known) < 2:
            pieces.append(Piece(tf.path, tf.weight))
            continue
        parts = min(len(known), math.ceil(tf.weight / target))
        items = list(known.items())
        ids, loads = _contiguous(items, parts)
        scale = tf.weight / max(sum(loads), 1e-9)  # history may not cover every test of the file
        everything = {nid for nid, _ in items}
        for i, part in enumerate(ids):
            if i < len(ids) - 1:
                if part:  # a bucket can stay empty (tests measured at 0 s): it is no piece at all
                    pieces.append(Piece(tf.path, loads[i] * scale, only=part))
            else:
                pieces.append(Piece(tf.path, loads[i] * scale, skip=tuple(sorted(everything - set(part)))))
    return pieces


@dataclass(frozen=True)
class Layout:
    """What one shard runs, before it is given a cell: files, parts of split files, predicted seconds."""

    files: tuple[str, ...]
    predicted: float
    only: tuple[str, ...] = ()
    skip: tuple[str, ...] = ()


def layout_lpt(
    files: Sequence[TestFile], shards: int, tests: Mapping[str, Mapping[str, float]] | None = None
) -> list[Layout]:
    """Longest-processing-time first: each piece, heaviest first, goes to the least loaded shard.

    A file longer than a fair shard (total / shards) is split by test id where history knows its tests. Every
    test lands in exactly one shard; the layout depends only on the inputs (ties break by path).
    """
    total = sum(f.weight for f in files)
    target = total / shards if shards > 1 else 0.0
    pieces = split_pieces(files, tests or {}, target)
    count = max(1, min(shards, len(pieces)))
    # a floor per piece: fast tests are measured at 0.000 s, and LPT over zero weights would pile every file
    # onto one shard (importing and collecting a file costs something anyway)
    buckets, loads = _lpt([(max(p.weight, MIN_PIECE_SECONDS), f"{p.file}\0{p.only[:1]}") for p in pieces], count)
    out = []
    for i, bucket in enumerate(buckets):
        by_file: dict[str, list[Piece]] = {}
        for j in bucket:
            by_file.setdefault(pieces[j].file, []).append(pieces[j])
        only: set[str] = set()
        skip: set[str] = set()
        for parts in by_file.values():
            if len(parts) == 1 and not parts[0].only and not parts[0].skip:
                continue  # a whole file: the common case
            rest = next((p for p in parts if not p.only), None)
            if rest is None:
                only.update(n for p in parts for n in p.only)
            else:  # this shard holds the file's last part: it runs all but what other shards run
                skip.update(set(rest.skip) - {n for p in parts for n in p.only})
        out.append(Layout(tuple(sorted(by_file)), loads[i], tuple(sorted(only)), tuple(sorted(skip))))
    return out


def shards_for(cell: Cell, layout: Sequence[Layout]) -> list[Shard]:
    return [
        Shard(cell.id, i + 1, len(layout), lay.files, lay.predicted, lay.only, lay.skip) for i, lay in enumerate(layout)
    ]


def plan_lpt(
    cell: Cell,
    files: Sequence[TestFile],
    shards: int,
    tests: Mapping[str, Mapping[str, float]] | None = None,
) -> list[Shard]:
    """One cell's shards (see ``layout_lpt``)."""
    return shards_for(cell, layout_lpt(files, shards, tests))


def auto_shards(predicted: float, target: float, slots: int) -> int:
    """``tests.shards: auto``: enough shards of about ``target`` seconds, never more than the free slots."""
    return max(1, min(math.ceil(predicted / max(target, 1e-9)), max(1, slots)))
