"""What pytest would collect, read from the project's own configuration: its settings (``python_files``,
``testpaths``, ``norecursedirs``, ``--doctest-modules``, ``addopts``), the files it would collect tests from over the
same file list that is shipped to the containers, and the options with which no shard could run. Pure apart from
reading files.

A file that pytest would skip whole at import is still a file here, so it is never dropped.
"""

from __future__ import annotations

import configparser
import fnmatch
import posixpath
import re
import shlex
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

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
    configdir: str = ""  # the config file's folder relative to the project ("" = the root): pytest's rootdir
    addopts: tuple[str, ...] = ()  # the config's addopts, split as pytest splits them


# Options that make pytest run no test, or wait for a person, whatever matrix-run adds: a run with them could only
# end as "error" in every shard (or hang until tests.timeout), so they are refused before any container starts.
CONFLICTING_OPTIONS = {
    "--collect-only": "collects tests without running them",
    "--co": "collects tests without running them",
    "--setup-only": "runs fixtures, not tests",
    "--setup-plan": "shows fixtures, runs no test",
    "--fixtures": "lists fixtures, runs no test",
    "--funcargs": "lists fixtures, runs no test",
    "--fixtures-per-test": "lists fixtures, runs no test",
    "--markers": "lists markers, runs no test",
    "--pdb": "stops in a debugger that no one can answer inside a shard",
    "--trace": "stops in a debugger that no one can answer inside a shard",
    "--help": "prints help, runs no test",
    "--version": "prints the version, runs no test",
    "-p no:matrix_run_plugin": "blocks the plugin matrix-run reads every result from",
}


def conflicting_option(args: Sequence[str]) -> tuple[str, str] | None:
    """The first of ``args`` that no shard can run with, and why; None when there is none."""
    for i, arg in enumerate(args):
        name = arg.split("=", 1)[0]
        if name in CONFLICTING_OPTIONS:
            return name, CONFLICTING_OPTIONS[name]
        joined = f"{arg} {args[i + 1]}" if arg == "-p" and i + 1 < len(args) else arg.replace("-pno:", "-p no:")
        if joined in CONFLICTING_OPTIONS:
            return joined, CONFLICTING_OPTIONS[joined]
    return None


def _split(value: object) -> tuple[str, ...]:
    if isinstance(value, list):
        return tuple(str(v) for v in value)
    if isinstance(value, str):
        return tuple(value.split())
    return ()


def _config_candidates(root: Path, start: str) -> list[tuple[str, str]]:
    """(folder relative to the project, file name) in the order pytest looks: from where it runs, upwards."""
    folders = [start.strip("/")] if start.strip("/") else []
    while folders and "/" in folders[-1]:
        folders.append(folders[-1].rsplit("/", 1)[0])
    folders.append("")
    names = ("pytest.ini", ".pytest.ini", "pyproject.toml", "tox.ini", "setup.cfg")
    return [(folder, name) for folder in folders for name in names]


def read_pytest_settings(root: Path, start: str = "") -> PytestSettings:
    """Read pytest's ini options from the first config file pytest itself would use when run in ``start`` (a
    folder of the project, tests.workdir), looking upwards to the project root."""
    options: Mapping[str, object] | None = None
    configfile = ""
    configdir = ""
    for folder, name in _config_candidates(root, start):
        path = root / folder / name
        if not path.is_file() or path.is_symlink():
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
            configfile, configdir = f"{folder}/{name}".lstrip("/"), folder
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
        configdir=configdir,
        addopts=tuple(args),
    )


def _matches(rel: str, patterns: Sequence[str]) -> bool:
    name = rel.rsplit("/", 1)[-1]
    return any(fnmatch.fnmatch(rel if "/" in p else name, p) for p in patterns)


def pytest_roots(paths: Sequence[str], settings: PytestSettings, workdir: str = "") -> list[str]:
    """What pytest is pointed at, relative to the project: ``paths`` (relative to ``workdir``); without them the
    config's testpaths when pytest runs in its rootdir (as pytest does), else the folder it runs in."""
    if paths:
        base, chosen = workdir, list(paths)
    elif settings.testpaths and workdir.strip("/") == settings.configdir:
        base, chosen = settings.configdir, list(settings.testpaths)
    else:
        base, chosen = workdir, ["."]
    return [posixpath.normpath(posixpath.join(base, p.split("::", 1)[0])).strip("/") for p in chosen]


def discover(tree: SourceTree, paths: Sequence[str], settings: PytestSettings, workdir: str = "") -> list[str]:
    """Files that pytest would collect tests from, given ``paths`` (or the project's testpaths, or the root)."""
    roots = ["." if r in ("", ".") else r for r in pytest_roots(paths, settings, workdir)]
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


def count_tests(tree: SourceTree, files: Sequence[str]) -> dict[str, int]:
    """Test definitions (``def test``, doctest prompts) per file, at least 1: the planner's proxy where nothing
    was measured. Reads each file once."""
    counts = {}
    for rel in files:
        try:
            counts[rel] = max(1, len(TEST_DEF.findall((tree.root / rel).read_bytes())))
        except OSError:
            counts[rel] = 1
    return counts
