"""Matrix file -> frozen dataclasses, validated before anything runs.

Every problem is reported as one line naming the file, the key path and the line number where known.
Matrix values keep the text as written (``3.10`` stays ``"3.10"``, not the float ``3.1``).
"""

from __future__ import annotations

import difflib
import os
import posixpath
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from runner import dependencies
from runner.errors import ConfigError

# A value that reaches an image tag, a path or a command must look like a version or a name.
SAFE_VALUE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+\-*]{0,127}$")
SAFE_AXIS = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]{0,63}$")
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-]{0,63}$")
MEMORY = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*$", re.IGNORECASE)

# A control character (NUL, newline, ESC, DEL...) in a path, an argument or a variable is never meant.
CONTROL = re.compile(r"[\x00-\x1f\x7f]")
USER = re.compile(r"^(\d{1,10})(?::(\d{1,10}))?$")

DEFAULT_BASE = "python:{python}-slim"
DEFAULT_COMMAND = ("python", "-m", "pytest")
DEFAULT_OUTPUT_LIMIT = "64m"
MiB = 1024**2

# Limits on what a matrix file may make the loader do: all far above any hand-written matrix file.
MAX_FILE_BYTES = 1 * MiB  # checked before the file is parsed
MAX_DEPTH = 32  # nested mappings and lists, checked on the YAML event stream before anything is composed
MAX_ALIASES = 100  # YAML aliases (*name) in one file
MAX_ALIAS_NODES = 100_000  # nodes that the aliases of one file stand for, counted as if written out
MIN_OUTPUT_LIMIT = 1 * MiB
MIN_PIDS = 16

# project: folders that hold a system, not a project: exactly these ...
SYSTEM_FOLDERS = ("/", "/home", "/root", "/tmp", "/usr", "/var", "/opt", "/srv", "/mnt", "/media")
# ... and these with everything below them
SYSTEM_TREES = (
    "/etc",
    "/proc",
    "/sys",
    "/dev",
    "/boot",
    "/bin",
    "/sbin",
    "/lib",
    "/lib32",
    "/lib64",
    "/usr/bin",
    "/usr/sbin",
    "/usr/lib",
    "/usr/share",
    "/run",
)


@dataclass(frozen=True)
class ImageConfig:
    base: str = DEFAULT_BASE
    bootstrap: str | None = None
    dockerfile: Path | None = None
    install: tuple[str, ...] = ()
    pip_args: tuple[str, ...] = ()
    build_args: tuple[tuple[str, str], ...] = ()
    pytest: str = "pytest"
    ca_bundle: str = "auto"  # "auto", "none" or a host path
    wheelhouse: tuple[str, ...] = ("auto",)  # ("auto",), ("none",) or host folders of wheels
    cache: str = "auto"  # the node's package cache for image builds: "auto", "none" or a host folder
    installer: str = "uv"  # what installs the cell's packages in image builds: "uv" or "pip"
    heavy: tuple[str, ...] | None = ()  # more package names for the shared heavy layer; None: no heavy layer
    python: str = ""  # host executor: the interpreter (a name on PATH or a path); "" = python{python}, else python3
    registry: str = ""  # HOST[:PORT][/PREFIX]: build each image once, push it there by content tag, nodes pull it
    project_deps: bool = True  # install the project's declared dependencies (pyproject.toml) with the cell's own
    extras: tuple[str, ...] = ()  # the project's optional-dependencies to install, as pip install .[EXTRA]
    groups: tuple[str, ...] = ()  # PEP 735 dependency groups to install, as pip install --group GROUP


@dataclass(frozen=True)
class TestsConfig:
    command: tuple[str, ...] = DEFAULT_COMMAND
    args: tuple[str, ...] = ()
    paths: tuple[str, ...] = ()  # relative to workdir
    workdir: str = ""  # posix path relative to the project where the tests run; "" = the project root
    shards: int | str = 1  # an int >= 1 or "auto"
    shard_target: float = 60.0  # seconds a shard should take, for shards: auto
    split_files: bool = True  # cut a file longer than a fair shard into contiguous runs of tests
    timeout: float = 1800.0
    install_project: bool = True
    env: tuple[tuple[str, str], ...] = ()
    pass_env: tuple[str, ...] = ()
    network: str = "bridge"  # "bridge" or "none"
    user: str = "auto"  # "auto" (a non-root user where the image allows), "root", "UID" or "UID:GID"
    output_limit: int = 64 * MiB  # bytes: the cap on each output file read back from a shard


@dataclass(frozen=True)
class RetriesConfig:
    flaky: int = 2
    infra: int = 2


@dataclass(frozen=True)
class CoverageConfig:
    enabled: bool = False
    source: tuple[str, ...] = ()
    branch: bool = False


@dataclass(frozen=True)
class StrategyConfig:
    fail_fast: bool = True
    max_parallel: int = 0  # 0 = as many as the cluster has room for


@dataclass(frozen=True)
class ResourcesConfig:
    """Per-shard resources; each may be a template such as ``"{gpus}"`` resolved per cell."""

    cpus: str = "1"
    memory: str = ""
    gpus: str = "0"
    pids: int = 4096  # the container's pids limit
    shm: str = ""  # the container's /dev/shm size (Docker's shm_size); "" = Docker's default, 64m
    ipc: str = ""  # the container's IPC namespace: "private", "shareable" or "host"; "" = the engine's default
    gpu_type: str = ""  # the accelerator type the GPUs must be (Ray's "accelerator_type:T"); "" or "any" = any


@dataclass(frozen=True)
class ReportConfig:
    rows: str = ""  # the axis shown as the grid's rows on report.html; "" = chosen from the matrix
    columns: str = ""


@dataclass(frozen=True)
class QuarantineEntry:
    """A test whose failures are reported but do not change the exit code (``quarantine:`` / --quarantine)."""

    test: str  # a pytest node id, or a glob over node ids (fnmatch)
    cells: tuple[tuple[str, str], ...] = ()  # AXIS=VALUE filters, all of which a cell must match; () = every cell
    reason: str = ""


EXECUTORS = ("docker", "host")


@dataclass(frozen=True)
class MatrixFile:
    path: Path
    name: str
    project: Path
    axes: tuple[tuple[str, tuple[str, ...]], ...]
    include: tuple[tuple[tuple[str, str], ...], ...]
    exclude: tuple[tuple[tuple[str, str], ...], ...]
    image: ImageConfig = field(default_factory=ImageConfig)
    tests: TestsConfig = field(default_factory=TestsConfig)
    retries: RetriesConfig = field(default_factory=RetriesConfig)
    coverage: CoverageConfig = field(default_factory=CoverageConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    runs_on: str = ""  # a node label (template) a cell needs: the Ray resource "runs-on:LABEL"; "" = any node
    executor: str = ""  # template rendering to "docker" or "host"; "" = the cell's own executor value, else docker
    report: ReportConfig = field(default_factory=ReportConfig)
    quarantine: tuple[QuarantineEntry, ...] = ()
    requires: tuple[str, ...] = ()  # what the project declares for its cells (image.project-deps, extras, groups)
    lines: dict[str, int] = field(default_factory=dict, compare=False, repr=False)

    def error(self, key: str, problem: str) -> ConfigError:
        """A ConfigError for a key of this file, with its line."""
        return config_error(str(self.path), key, problem, _line_of(self.lines, key))


def one_line(text: str) -> str:
    """``text`` with its control characters escaped (``\\n``, ``\\x00``): a user error stays one line."""
    return CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


def config_error(file: str, key: str, problem: str, line: int | None = None) -> ConfigError:
    """A ConfigError that is one line whatever the file name, the key or the value in it hold."""
    return ConfigError(one_line(file), one_line(key), one_line(problem), line)


class KeyLines(dict[str, int]):
    """Key path -> line, and which key paths reach a node through a YAML alias (``other: *anchor``).

    The document is walked once per node, so the keys below an alias are not listed; ``real`` maps such a key
    onto the same node's key where the anchor was written.
    """

    def __init__(self) -> None:
        super().__init__()
        self.aliased: dict[str, str] = {}  # key path reached through an alias -> the node's first key path

    def real(self, key: str) -> str:
        for _ in range(MAX_DEPTH + 1):  # an alias may sit below another alias
            for cut in range(len(key), 0, -1):
                if cut == len(key) or key[cut] in ".[":
                    target = self.aliased.get(key[:cut])
                    if target is not None:
                        key = target + key[cut:]
                        break
            else:
                return key
        return key

    def find(self, key: str) -> int | None:
        line = self.get(key)
        return line if line is not None or not self.aliased else self.get(self.real(key))


def _line_of(lines: dict[str, int], key: str) -> int | None:
    return lines.find(key) if isinstance(lines, KeyLines) else lines.get(key)


class _Frame:
    """An open mapping or list while the YAML event stream is checked."""

    __slots__ = ("anchor", "index", "key", "key_next", "mapping", "path", "size")

    def __init__(self, path: str, mapping: bool, anchor: str | None) -> None:
        self.path = path
        self.mapping = mapping
        self.anchor = anchor
        self.index = 0
        self.key_next = True
        self.key = "?"
        self.size = 1  # nodes in this collection, aliases counted as written out

    def child(self) -> str:
        """The key path of the next node in this collection (a mapping's key is reported at the mapping)."""
        if not self.mapping:
            self.index += 1
            return f"{self.path}[{self.index - 1}]"
        self.key_next = not self.key_next
        if not self.key_next:  # this node is a key
            return self.path
        return f"{self.path}.{self.key}" if self.path else self.key


def _section(path: str) -> str:
    """``matrix.python[0][0][0]`` -> ``matrix.python``: the section and key to name for a problem deep inside."""
    m = re.match(r"[^.\[]*(?:\.[^.\[]*)?", path)
    return m.group() if m else path


def _check_events(file: str, text: str) -> None:
    """Refuse YAML nested deeper than MAX_DEPTH or with aliases that stand for too much, before composing it.

    Runs on the event stream (PyYAML's parser is a loop, not a recursion), so a file of 100,000 nested ``[`` or a
    "billion laughs" alias bomb is one line of error, never a RecursionError or gigabytes of memory.
    """
    stack: list[_Frame] = []
    sizes: dict[str, int] = {}  # anchor -> the nodes it stands for
    aliases = 0
    expanded = 0

    def close(size: int, anchor: str | None) -> None:
        if anchor is not None:
            sizes[anchor] = size
        if stack:
            stack[-1].size += size

    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.DocumentStartEvent):
            sizes.clear()
            continue
        if not isinstance(event, yaml.NodeEvent):
            if isinstance(event, yaml.CollectionEndEvent):
                frame = stack.pop()
                close(frame.size, frame.anchor)
            continue
        is_key = bool(stack) and stack[-1].mapping and stack[-1].key_next
        path = stack[-1].child() if stack else ""
        if is_key:
            stack[-1].key = event.value if isinstance(event, yaml.ScalarEvent) else "?"
        line = event.start_mark.line + 1 if event.start_mark is not None else None
        if isinstance(event, yaml.ScalarEvent):
            close(1, event.anchor)
        elif isinstance(event, yaml.AliasEvent):
            aliases += 1
            if aliases > MAX_ALIASES:
                raise config_error(
                    file,
                    _section(path),
                    f"more than {MAX_ALIASES} YAML aliases (*name) in one file; write the values out",
                    line,
                )
            size = sizes.get(event.anchor or "", 1)
            expanded += size
            if expanded > MAX_ALIAS_NODES:
                raise config_error(
                    file,
                    _section(path),
                    f"the YAML aliases stand for more than {MAX_ALIAS_NODES} values (*{event.anchor} expands to "
                    f"{size}); aliases of aliases multiply, write the values out",
                    line,
                )
            close(size, None)
        else:  # a mapping or a list starts
            if len(stack) >= MAX_DEPTH:
                raise config_error(
                    file,
                    _section(path),
                    f"YAML nested deeper than {MAX_DEPTH} levels of mappings and lists; "
                    "a matrix file needs a few, flatten it",
                    line,
                )
            stack.append(_Frame(path, isinstance(event, yaml.MappingStartEvent), event.anchor))


class _Doc:
    """A parsed YAML document with its source lines and raw scalar text, addressed by dotted key path."""

    def __init__(self, file: str, text: str) -> None:
        self.file = file
        self.lines = KeyLines()
        self.raw: dict[str, str] = {}
        try:
            _check_events(file, text)
            loader = yaml.SafeLoader(text)
            try:
                node = loader.get_single_node()
                self.data = loader.construct_document(node) if node is not None else None
            finally:
                loader.dispose()
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
            line = mark.line + 1 if mark is not None else None
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise config_error(file, "", f"malformed YAML: {problem}; fix the syntax", line) from None
        if node is not None:
            self._walk(node)

    def _walk(self, root: yaml.Node) -> None:
        """Record each key path's line and raw scalar text, visiting every node once.

        A node reached again through an alias is not walked again (an alias bomb would make that exponential):
        its key path is recorded as an alias of the first one instead (``KeyLines.real``).
        """
        first: dict[int, str] = {}  # id(collection node) -> the key path it was first reached by
        todo: list[tuple[yaml.Node, str]] = [(root, "")]
        while todo:
            node, path = todo.pop()
            if isinstance(node, yaml.ScalarNode):
                self.lines[path] = node.start_mark.line + 1
                self.raw[path] = node.value
                continue
            seen_at = first.get(id(node))
            if seen_at is not None:
                self.lines.setdefault(path, node.start_mark.line + 1)
                self.lines.aliased[path] = seen_at
                continue
            first[id(node)] = path
            self.lines[path] = node.start_mark.line + 1
            children: list[tuple[yaml.Node, str]] = []
            if isinstance(node, yaml.MappingNode):
                keys: set[str] = set()
                for key, value in node.value:
                    sub = f"{path}.{key.value}" if path else str(key.value)
                    if str(key.value) in keys:
                        raise config_error(
                            self.file, sub, f"'{key.value}' is defined twice; keep one", key.start_mark.line + 1
                        )
                    keys.add(str(key.value))
                    self.lines[sub] = key.start_mark.line + 1
                    children.append((value, sub))
            elif isinstance(node, yaml.SequenceNode):
                children = [(item, f"{path}[{i}]") for i, item in enumerate(node.value)]
            todo.extend(reversed(children))

    def text(self, key: str, value: Any) -> str:
        """The scalar as written at ``key`` (``3.10`` stays ``"3.10"``), else ``str(value)``."""
        raw = self.raw.get(key)
        if raw is None and self.lines.aliased:
            raw = self.raw.get(self.lines.real(key))
        return raw if raw is not None else str(value)

    def error(self, key: str, problem: str) -> ConfigError:
        return config_error(self.file, key, problem, self.lines.find(key))


def _check_keys(doc: _Doc, key: str, value: dict[str, Any], allowed: tuple[str, ...]) -> None:
    for k in value:
        if k not in allowed:
            sub = f"{key}.{k}" if key else str(k)
            close = difflib.get_close_matches(str(k), allowed, n=1, cutoff=0.6)
            hint = f"did you mean '{close[0]}'?" if close else f"known keys: {', '.join(allowed)}"
            raise doc.error(sub, f"unknown key '{k}'; {hint}")


def _mapping(doc: _Doc, key: str, value: Any, allowed: tuple[str, ...]) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise doc.error(key, f"must be a mapping (got {type(value).__name__}); write '{key}: {{...}}'")
    _check_keys(doc, key, value, allowed)
    return value


def _str(doc: _Doc, key: str, value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise doc.error(key, f"must be a string (got {type(value).__name__})")
    return doc.text(key, value)


def _str_list(doc: _Doc, key: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        raise doc.error(
            key, f"must be a list of strings, not one string; write {key.rsplit('.', maxsplit=1)[-1]}: [{value!r}]"
        )
    if not isinstance(value, list):
        raise doc.error(key, f"must be a list of strings (got {type(value).__name__})")
    return tuple(_str(doc, f"{key}[{i}]", v) for i, v in enumerate(value))


def _plain(doc: _Doc, key: str, text: str) -> str:
    """``text`` with no control character: a NUL or a newline in a path, argument or variable is never meant."""
    bad = CONTROL.search(text)
    if bad:
        raise doc.error(
            key, f"{text!r} contains the control character U+{ord(bad.group()):04X}; remove it (write plain text)"
        )
    return text


def _plain_list(doc: _Doc, key: str, value: Any) -> tuple[str, ...]:
    items = _str_list(doc, key, value)
    for i, item in enumerate(items):
        _plain(doc, f"{key}[{i}]", item)
    return items


def _int(doc: _Doc, key: str, value: Any, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise doc.error(key, f"must be an integer >= {minimum} (got {value!r})")
    if value < minimum:
        raise doc.error(key, f"must be >= {minimum} (got {value})")
    return value


def _positive(doc: _Doc, key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise doc.error(key, f"must be a number of seconds > 0 (got {value!r})")
    return float(value)


def _bool(doc: _Doc, key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise doc.error(key, f"must be true or false (got {value!r})")
    return value


def _str_map(doc: _Doc, key: str, value: Any) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, dict):
        raise doc.error(key, f"must be a mapping of names to strings (got {type(value).__name__})")
    return tuple((str(k), _str(doc, f"{key}.{k}", v)) for k, v in value.items())


def _safe_value(doc: _Doc, key: str, value: Any) -> str:
    if isinstance(value, (dict, list)) or value is None:
        raise doc.error(key, f"must be a single value such as 3.11 or cpu (got {type(value).__name__})")
    text = doc.text(key, value)
    if not SAFE_VALUE.match(text):
        raise doc.error(
            key,
            f"value {text!r} is not allowed: matrix values reach image tags and commands, "
            "so use letters, digits and . _ + - * only",
        )
    return text


def _combos(doc: _Doc, key: str, value: Any) -> tuple[tuple[tuple[str, str], ...], ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise doc.error(key, "must be a list of mappings, e.g. [{python: '3.9', numpy: '2.2.6'}]")
    out = []
    for i, entry in enumerate(value):
        sub = f"{key}[{i}]"
        if not isinstance(entry, dict) or not entry:
            raise doc.error(sub, "must be a non-empty mapping of axis names to values")
        pairs = []
        for k, v in entry.items():
            _axis_name(doc, f"{sub}.{k}", k)
            pairs.append((str(k), _safe_value(doc, f"{sub}.{k}", v)))
        out.append(tuple(pairs))
    return tuple(out)


def _axis_name(doc: _Doc, key: str, name: Any) -> str:
    if not isinstance(name, str) or not SAFE_AXIS.match(name):
        raise doc.error(key, f"axis name {name!r} must be letters, digits, _ and -, starting with a letter")
    return name


def _memory(doc: _Doc, key: str, value: Any) -> str:
    text = _str(doc, key, value)
    if "{" not in text and text and not MEMORY.match(text):
        raise doc.error(key, f"{text!r} is not a memory size; write e.g. '2g' or '512m'")
    return text


IPC_MODES = ("private", "shareable", "host")  # Docker's ipc_mode values for a container of its own
SHM_WITH_HOST_IPC = "has no effect with ipc: host (the container uses the host's /dev/shm); drop one of the two"


def _choice(doc: _Doc, key: str, value: Any, choices: tuple[str, ...]) -> str:
    """One of ``choices``, a template such as ``"{ipc}"`` (checked per cell), or "" (unset)."""
    text = _plain(doc, key, _str(doc, key, value)).strip()
    if text and "{" not in text and text not in choices:
        raise doc.error(key, f"{text!r} is not one of {', '.join(choices)}")
    return text


def _gpu_type(doc: _Doc, key: str, value: Any) -> str:
    """An accelerator type as Ray names it (H100, A10G, A100-80G; ray.util.accelerators), a template, or "any"."""
    text = _plain(doc, key, _str(doc, key, value)).strip()
    if text and "{" not in text and not SAFE_VALUE.match(text):
        raise doc.error(key, f"{text!r} is not a GPU type; write Ray's accelerator type, e.g. H100, A10G or A100-80G")
    return text


def _number_text(doc: _Doc, key: str, value: Any) -> str:
    text = _str(doc, key, value)
    if "{" not in text:
        try:
            if float(text) < 0:
                raise ValueError
        except ValueError:
            raise doc.error(key, f"{text!r} must be a number >= 0 (or a template such as '{{gpus}}')") from None
    return text


TOP_KEYS = (
    "name",
    "project",
    "matrix",
    "image",
    "tests",
    "retries",
    "coverage",
    "strategy",
    "resources",
    "runs-on",
    "executor",
    "report",
    "quarantine",
)
IMAGE_KEYS = (
    "base",
    "bootstrap",
    "dockerfile",
    "install",
    "pip-args",
    "build-args",
    "pytest",
    "ca-bundle",
    "wheelhouse",
    "cache",
    "installer",
    "heavy",
    "python",
    "registry",
    "project-deps",
    "extras",
    "groups",
)
TESTS_KEYS = (
    "command",
    "args",
    "paths",
    "shards",
    "shard-target",
    "split-files",
    "timeout",
    "install-project",
    "env",
    "pass-env",
    "network",
    "workdir",
    "user",
    "output-limit",
)
RETRIES_KEYS = ("flaky", "infra")
COVERAGE_KEYS = ("enabled", "source", "branch")
STRATEGY_KEYS = ("fail-fast", "max-parallel")
RESOURCES_KEYS = ("cpus", "memory", "gpus", "pids", "shm", "ipc", "gpu-type")
REPORT_KEYS = ("rows", "columns")
QUARANTINE_KEYS = ("test", "cells", "reason")


REGISTRY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.-]*(:[0-9]{1,5})?(/[a-z0-9][a-z0-9._/-]*)?$")


def _registry(doc: _Doc, value: object) -> str:
    text = _str(doc, "image.registry", value).strip().rstrip("/")
    if text and not REGISTRY.match(text):
        raise doc.error(
            "image.registry", f"{text!r} is not HOST[:PORT][/PREFIX] (e.g. 127.0.0.1:5000/matrix-run, no scheme)"
        )
    return text


def load(path: str | Path) -> MatrixFile:
    """Read and validate a matrix file. Raises ConfigError (one line, no traceback) on any problem."""
    p = Path(path)
    file = str(path)
    text = _read(p, file)
    doc = _Doc(file, text)
    data = doc.data
    if not isinstance(data, dict):
        raise doc.error("", "the matrix file must be a YAML mapping with at least a 'matrix' key")
    _check_keys(doc, "", data, TOP_KEYS)

    name = _str(doc, "name", data.get("name", p.stem))
    if not SAFE_NAME.match(name):
        raise doc.error("name", f"{name!r} must be letters, digits, . _ - (it names output folders and labels)")
    project = (p.parent / _str(doc, "project", data.get("project", "."))).resolve()
    _check_project(doc, project)
    if not project.is_dir():
        raise doc.error(
            "project", f"project folder {str(project)!r} does not exist; set it relative to the matrix file"
        )

    axes, include, exclude = _matrix(doc, data.get("matrix"))
    for i, combo in enumerate(exclude):
        for k, _ in combo:
            if k not in dict(axes):
                raise doc.error(
                    f"matrix.exclude[{i}].{k}",
                    f"'{k}' is not an axis of the matrix; axes are: {', '.join(a for a, _ in axes) or 'none'}",
                )

    img = _mapping(doc, "image", data.get("image"), IMAGE_KEYS)
    dockerfile = None
    if "dockerfile" in img:
        dockerfile = (p.parent / _str(doc, "image.dockerfile", img["dockerfile"])).resolve()
        if not dockerfile.is_file():
            raise doc.error(
                "image.dockerfile", f"{str(dockerfile)!r} does not exist; give a path relative to the matrix file"
            )
    image = ImageConfig(
        base=_str(doc, "image.base", img.get("base", DEFAULT_BASE)),
        bootstrap=_str(doc, "image.bootstrap", img["bootstrap"]) if img.get("bootstrap") is not None else None,
        dockerfile=dockerfile,
        install=_plain_list(doc, "image.install", img.get("install", [])),
        pip_args=_plain_list(doc, "image.pip-args", img.get("pip-args", [])),
        build_args=_str_map(doc, "image.build-args", img.get("build-args", {})),
        pytest=_str(doc, "image.pytest", img.get("pytest", "pytest")),
        ca_bundle=_host_path_option(doc, "image.ca-bundle", img.get("ca-bundle", "auto")),
        wheelhouse=_wheelhouse(doc, img.get("wheelhouse", "auto")),
        cache=_cache_option(doc, img.get("cache", "auto")),
        installer=_installer(doc, img.get("installer", "uv")),
        heavy=_heavy(doc, img.get("heavy", [])),
        python=_plain(doc, "image.python", _str(doc, "image.python", img.get("python", ""))),
        registry=_registry(doc, img.get("registry", "")),
        project_deps=_bool(doc, "image.project-deps", img.get("project-deps", True)),
        extras=_str_list(doc, "image.extras", img.get("extras", [])),
        groups=_str_list(doc, "image.groups", img.get("groups", [])),
    )

    t = _mapping(doc, "tests", data.get("tests"), TESTS_KEYS)
    shards: int | str = t.get("shards", 1)
    if shards != "auto":
        shards = _int(doc, "tests.shards", shards, minimum=1)
    timeout = t.get("timeout", 1800)
    command = _plain_list(doc, "tests.command", t.get("command", list(DEFAULT_COMMAND)))
    if not command:
        raise doc.error("tests.command", "must not be empty; the default is [python, -m, pytest]")
    network = _str(doc, "tests.network", t.get("network", "bridge"))
    if network not in ("bridge", "none"):
        raise doc.error("tests.network", f"must be 'bridge' or 'none' (got {network!r})")
    env = _str_map(doc, "tests.env", t.get("env", {}))
    for k, v in env:
        _plain(doc, f"tests.env.{k}", k)
        _plain(doc, f"tests.env.{k}", v)
    workdir = _workdir(doc, project, t.get("workdir", ""))
    tests = TestsConfig(
        command=command,
        args=_plain_list(doc, "tests.args", t.get("args", [])),
        paths=_plain_list(doc, "tests.paths", t.get("paths", [])),
        workdir=workdir,
        shards=shards,
        shard_target=_positive(doc, "tests.shard-target", t.get("shard-target", 60)),
        split_files=_bool(doc, "tests.split-files", t.get("split-files", True)),
        timeout=_positive(doc, "tests.timeout", timeout),
        install_project=_bool(doc, "tests.install-project", t.get("install-project", True)),
        env=env,
        pass_env=_plain_list(doc, "tests.pass-env", t.get("pass-env", [])),
        network=network,
        user=_user(doc, "tests.user", t.get("user", "auto")),
        output_limit=_size(doc, "tests.output-limit", t.get("output-limit", DEFAULT_OUTPUT_LIMIT), MIN_OUTPUT_LIMIT),
    )
    for i, tp in enumerate(tests.paths):
        joined = posixpath.normpath(posixpath.join(workdir, tp)) if tp else workdir
        if PurePosixPath(tp).is_absolute() or Path(tp).is_absolute() or joined == ".." or joined.startswith("../"):
            where = f" (paths are relative to tests.workdir {workdir!r})" if workdir else ""
            raise doc.error(f"tests.paths[{i}]", f"{tp!r} must be a path inside the project{where}")

    r = _mapping(doc, "retries", data.get("retries"), RETRIES_KEYS)
    retries = RetriesConfig(
        flaky=_int(doc, "retries.flaky", r.get("flaky", 2)),
        infra=_int(doc, "retries.infra", r.get("infra", 2)),
    )

    cov_raw = data.get("coverage")
    if isinstance(cov_raw, bool):
        coverage = CoverageConfig(enabled=cov_raw)
    else:
        c = _mapping(doc, "coverage", cov_raw, COVERAGE_KEYS)
        coverage = CoverageConfig(
            enabled=_bool(doc, "coverage.enabled", c.get("enabled", bool(c))),
            source=_str_list(doc, "coverage.source", c.get("source", [])),
            branch=_bool(doc, "coverage.branch", c.get("branch", False)),
        )

    s = _mapping(doc, "strategy", data.get("strategy"), STRATEGY_KEYS)
    strategy = StrategyConfig(
        fail_fast=_bool(doc, "strategy.fail-fast", s.get("fail-fast", True)),
        max_parallel=_int(doc, "strategy.max-parallel", s.get("max-parallel", 0)),
    )

    res = _mapping(doc, "resources", data.get("resources"), RESOURCES_KEYS)
    resources = ResourcesConfig(
        cpus=_number_text(doc, "resources.cpus", res.get("cpus", 1)),
        memory=_memory(doc, "resources.memory", res.get("memory", "")) if res.get("memory") is not None else "",
        gpus=_number_text(doc, "resources.gpus", res.get("gpus", 0)),
        pids=_int(doc, "resources.pids", res.get("pids", 4096), minimum=MIN_PIDS),
        shm=_memory(doc, "resources.shm", res["shm"]) if res.get("shm") is not None else "",
        ipc=_choice(doc, "resources.ipc", res.get("ipc", ""), IPC_MODES),
        gpu_type=_gpu_type(doc, "resources.gpu-type", res.get("gpu-type", "")),
    )
    if resources.shm and "{" not in resources.shm + resources.ipc and resources.ipc == "host":
        raise doc.error("resources.shm", SHM_WITH_HOST_IPC)

    report = _report(doc, data.get("report"), axes, include)

    try:  # the project's own dependencies, extras only for a project that is installed; groups for any
        requires = dependencies.requirements(
            project,
            image.extras if tests.install_project else (),
            image.groups,
            image.project_deps and tests.install_project,
        )
    except dependencies.DependencyError as exc:
        raise doc.error(exc.key, str(exc)) from None

    return MatrixFile(
        path=p,
        name=name,
        project=project,
        axes=axes,
        include=include,
        exclude=exclude,
        image=image,
        tests=tests,
        retries=retries,
        coverage=coverage,
        strategy=strategy,
        resources=resources,
        runs_on=_plain(doc, "runs-on", _str(doc, "runs-on", data.get("runs-on", ""))),
        executor=_plain(doc, "executor", _str(doc, "executor", data.get("executor", ""))),
        report=report,
        quarantine=quarantine_entries(doc, "quarantine", data.get("quarantine", [])),
        requires=requires,
        lines=doc.lines,
    )


def _report(
    doc: _Doc,
    value: Any,
    axes: tuple[tuple[str, tuple[str, ...]], ...],
    include: tuple[tuple[tuple[str, str], ...], ...],
) -> ReportConfig:
    """``report: {rows: AXIS, columns: AXIS}``: the axes of report.html's grid, each an axis of the matrix."""
    rep = _mapping(doc, "report", value, REPORT_KEYS)
    report = ReportConfig(
        rows=_str(doc, "report.rows", rep.get("rows", "")),
        columns=_str(doc, "report.columns", rep.get("columns", "")),
    )
    names = {a for a, _ in axes} | {k for combo in include for k, _ in combo}
    for key in ("rows", "columns"):
        chosen = getattr(report, key)
        if chosen and chosen not in names:
            known = ", ".join(sorted(names))
            raise doc.error(f"report.{key}", f"'{chosen}' is not an axis of the matrix; axes are: {known}")
    return report


def _filters(doc: _Doc, key: str, value: Any) -> tuple[tuple[str, str], ...]:
    """``cells:`` of a quarantine entry: "AXIS=VALUE", a list of those, or a mapping AXIS: VALUE."""
    if isinstance(value, dict):
        return tuple((_axis_name(doc, key, k), _safe_value(doc, f"{key}.{k}", v)) for k, v in value.items())
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list):
        raise doc.error(key, "must be AXIS=VALUE, a list of AXIS=VALUE, or a mapping of axis to value")
    out = []
    for i, item in enumerate(items):
        axis, sep, val = str(item).partition("=") if isinstance(item, str) else ("", "", "")
        if not sep or not axis.strip() or not val.strip():
            raise doc.error(f"{key}[{i}]", f"{item!r} must be AXIS=VALUE, e.g. python=3.11")
        out.append((_axis_name(doc, f"{key}[{i}]", axis.strip()), _safe_value(doc, f"{key}[{i}]", val.strip())))
    return tuple(out)


def quarantine_entries(doc: _Doc, key: str, value: Any) -> tuple[QuarantineEntry, ...]:
    """The ``quarantine:`` list (the matrix file's key, or the whole of a --quarantine file)."""
    if value is None:
        return ()
    if not isinstance(value, list):
        raise doc.error(key, "must be a list of entries {test: NODE_ID_OR_GLOB, cells: AXIS=VALUE, reason: TEXT}")
    out = []
    for i, raw in enumerate(value):
        where = f"{key}[{i}]"
        entry = _mapping(doc, where, raw, QUARANTINE_KEYS)
        if "test" not in entry:
            raise doc.error(where, "needs 'test': a pytest node id or a glob such as 'tests/test_io.py::*'")
        test = _plain(doc, f"{where}.test", _str(doc, f"{where}.test", entry["test"]))
        if not test.strip():
            raise doc.error(f"{where}.test", "must not be empty")
        out.append(
            QuarantineEntry(
                test=test,
                cells=_filters(doc, f"{where}.cells", entry["cells"]) if entry.get("cells") is not None else (),
                reason=_plain(doc, f"{where}.reason", _str(doc, f"{where}.reason", entry.get("reason", ""))),
            )
        )
    return tuple(out)


def load_quarantine(path: str | Path) -> tuple[QuarantineEntry, ...]:
    """A --quarantine FILE: the same list as the matrix file's ``quarantine:`` key, as the whole YAML document."""
    p = Path(path)
    file = str(path)
    doc = _Doc(file, _read(p, file))
    data = doc.data
    if isinstance(data, dict) and set(data) == {"quarantine"}:
        return quarantine_entries(doc, "quarantine", data["quarantine"])
    return quarantine_entries(doc, "", data)


def _read(p: Path, file: str) -> str:
    """The file's text, refusing a file over MAX_FILE_BYTES before a byte of it is parsed."""
    try:
        with p.open("rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            data = b"" if size > MAX_FILE_BYTES else fh.read(MAX_FILE_BYTES + 1)
        if size > MAX_FILE_BYTES or len(data) > MAX_FILE_BYTES:
            what = f"{size} bytes ({size / MiB:.1f} MiB)" if size > MAX_FILE_BYTES else f"over {MAX_FILE_BYTES} bytes"
            raise config_error(
                file,
                "",
                f"the matrix file is {what}, over the cap of {MAX_FILE_BYTES} bytes (1 MiB); "
                "a matrix file is a few hundred lines, trim it or split it into several",
            )
        return data.decode("utf-8")
    except FileNotFoundError:
        raise config_error(file, "", "matrix file not found; check the path") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise config_error(file, "", f"cannot read the matrix file ({exc.__class__.__name__})") from None


def system_folder(path: Path) -> str:
    """What makes ``path`` (resolved) no folder of a project's own: "home folder", "system folder", or ""."""
    try:
        home: Path | None = Path.home().resolve()
    except (RuntimeError, KeyError, OSError):
        home = None
    exact = {Path(f).resolve() for f in SYSTEM_FOLDERS}
    trees = [Path(t).resolve() for t in SYSTEM_TREES]
    if path in exact or any(path == t or t in path.parents for t in trees):
        return "system folder"
    return "home folder" if path == home else ""


def _check_project(doc: _Doc, project: Path) -> None:
    """Refuse a project folder that is a system folder or the home folder: its files would all be shipped."""
    what = system_folder(project)
    if what:
        whose = "your home folder" if what == "home folder" else "a system folder"
        raise doc.error("project", f"{str(project)!r} is {whose}; point project at the project's own folder")


def _workdir(doc: _Doc, project: Path, value: Any) -> str:
    """tests.workdir: a folder of the project, as a posix path relative to it ("" = the project root)."""
    key = "tests.workdir"
    text = _plain(doc, key, _str(doc, key, value))
    parts = PurePosixPath(text).parts
    if PurePosixPath(text).is_absolute() or Path(text).is_absolute() or ".." in parts or "\\" in text:
        raise doc.error(key, f"{text!r} must be a folder inside the project, relative to it (no '/...', no '..')")
    rel = "/".join(p for p in parts if p != ".")
    if not rel:
        return ""
    folder = project / rel
    if not folder.is_dir():
        raise doc.error(key, f"{rel!r} is not a folder of the project {str(project)!r}; create it or fix the path")
    try:
        folder.resolve().relative_to(project)
    except ValueError:
        raise doc.error(key, f"{rel!r} leads out of the project (a symlink); give a folder inside it") from None
    return rel


def _user(doc: _Doc, key: str, value: Any) -> str:
    """tests.user: "auto", "root", "UID" or "UID:GID"."""
    text = _str(doc, key, value).strip()
    m = USER.match(text)
    if text in ("auto", "root") or (m and all(int(g) < 2**32 - 1 for g in m.groups() if g is not None)):
        return text
    raise doc.error(
        key, f"{text!r} is not a user; write auto (a non-root user where the image allows), root, UID or UID:GID"
    )


def _size(doc: _Doc, key: str, value: Any, minimum: int) -> int:
    """A memory-size string such as '64m' -> bytes, at least ``minimum``."""
    text = _str(doc, key, value)
    if not MEMORY.match(text):
        raise doc.error(key, f"{text!r} is not a size; write e.g. '64m' or '1g'")
    size = parse_memory(text) or 0
    if size < minimum:
        raise doc.error(key, f"{text!r} is below the minimum of {minimum // MiB}m; write e.g. '64m'")
    return size


def _host_path_option(doc: _Doc, key: str, value: Any) -> str:
    if value is False or value is None:
        return "none"
    text = _str(doc, key, value)
    if text not in ("auto", "none") and not Path(text).exists():
        raise doc.error(key, f"{text!r} does not exist on this host; give a path, 'auto' or 'none'")
    return text


INSTALLERS = ("uv", "pip")
# a distribution name as PEP 508 allows it (``torch``, ``jax-cuda12-plugin``)
PACKAGE_NAME = re.compile(r"^([A-Za-z0-9]|[A-Za-z0-9][A-Za-z0-9._-]*[A-Za-z0-9])$")


def _wheelhouse(doc: _Doc, value: Any) -> tuple[str, ...]:
    """image.wheelhouse: auto, none, a host folder of wheels, or a list of folders (pip's --find-links, each)."""
    key = "image.wheelhouse"
    if not isinstance(value, list):
        return (_host_path_option(doc, key, value),)
    if not value:
        raise doc.error(key, "is an empty list; give folders of wheels, 'auto' or 'none'")
    folders = []
    for i, item in enumerate(value):
        text = _plain(doc, f"{key}[{i}]", _str(doc, f"{key}[{i}]", item))
        if text in ("auto", "none"):
            raise doc.error(f"{key}[{i}]", f"'{text}' stands alone (wheelhouse: {text}); a list names folders only")
        if not Path(text).is_dir():
            what = "is not a folder" if Path(text).exists() else "does not exist on this host"
            raise doc.error(f"{key}[{i}]", f"{text!r} {what}; give folders of wheels")
        if text in folders:
            raise doc.error(f"{key}[{i}]", f"{text!r} is listed twice; keep one")
        folders.append(text)
    return tuple(folders)


def _cache_option(doc: _Doc, value: Any) -> str:
    """image.cache: auto (a folder in matrix-run's private state folder on each node), none, or a host folder that
    exists or can be made (its parent exists)."""
    key = "image.cache"
    if value is False or value is None:
        return "none"
    text = _plain(doc, key, _str(doc, key, value))
    if text in ("auto", "none"):
        return text
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise doc.error(key, f"{text!r} is not a folder; give a folder for the package cache, 'auto' or 'none'")
    if not path.exists() and not path.absolute().parent.is_dir():
        raise doc.error(key, f"{text!r} cannot be made: its parent folder does not exist; give a folder, auto or none")
    return str(path.absolute())


def _installer(doc: _Doc, value: Any) -> str:
    text = _str(doc, "image.installer", value).strip()
    if text not in INSTALLERS:
        raise doc.error("image.installer", f"{text!r} is not an installer; write uv or pip")
    return text


def _heavy(doc: _Doc, value: Any) -> tuple[str, ...] | None:
    """image.heavy: more package names whose pins go to the shared heavy layer (a list), or none (no heavy layer)."""
    key = "image.heavy"
    if value is False or value == "none":
        return None
    names = _str_list(doc, key, value)
    for i, name in enumerate(names):
        if not PACKAGE_NAME.match(name):
            raise doc.error(f"{key}[{i}]", f"{name!r} is not a package name; write names such as torch or jaxlib")
    return names


def _matrix(
    doc: _Doc, value: Any
) -> tuple[
    tuple[tuple[str, tuple[str, ...]], ...],
    tuple[tuple[tuple[str, str], ...], ...],
    tuple[tuple[tuple[str, str], ...], ...],
]:
    if value is None:
        raise doc.error("matrix", "missing; add e.g. 'matrix: {python: [\"3.11\"]}'")
    if not isinstance(value, dict):
        raise doc.error("matrix", f"must be a mapping of axis names to lists (got {type(value).__name__})")
    axes = []
    for k, v in value.items():
        if k in ("include", "exclude"):
            continue
        name = _axis_name(doc, f"matrix.{k}", k)
        if not isinstance(v, list):
            raise doc.error(f"matrix.{k}", f"must be a list of values; write {k}: [{v!r}]")
        if not v:
            raise doc.error(f"matrix.{k}", "is an empty list; an empty axis makes an empty matrix")
        vals = tuple(_safe_value(doc, f"matrix.{k}[{i}]", item) for i, item in enumerate(v))
        if len(set(vals)) != len(vals):
            raise doc.error(f"matrix.{k}", "lists the same value twice")
        axes.append((name, vals))
    include = _combos(doc, "matrix.include", value.get("include"))
    exclude = _combos(doc, "matrix.exclude", value.get("exclude"))
    if not axes and not include:
        raise doc.error("matrix", "is empty; give at least one axis, e.g. python: ['3.11'], or an include list")
    return tuple(axes), include, exclude


def parse_memory(text: str) -> int | None:
    """'2g' -> bytes; '' -> None."""
    if not text:
        return None
    m = MEMORY.match(text)
    if not m:
        raise ValueError(text)
    scale = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}[m.group(2).lower()]
    return int(float(m.group(1)) * scale)
