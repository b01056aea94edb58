"""Matrix file -> frozen dataclasses, validated before anything runs.

Every problem is reported as one line naming the file, the key path and the line number where known.
Matrix values keep the text as written (``3.10`` stays ``"3.10"``, not the float ``3.1``).
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from runner.errors import ConfigError

# A value that reaches an image tag, a path or a command must look like a version or a name.
SAFE_VALUE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+\-*]{0,127}$")
SAFE_AXIS = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]{0,63}$")
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-]{0,63}$")
MEMORY = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*$", re.IGNORECASE)

DEFAULT_BASE = "python:{python}-slim"
DEFAULT_COMMAND = ("python", "-m", "pytest")


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
    wheelhouse: str = "auto"  # "auto", "none" or a host path


@dataclass(frozen=True)
class TestsConfig:
    command: tuple[str, ...] = DEFAULT_COMMAND
    args: tuple[str, ...] = ()
    paths: tuple[str, ...] = ()
    shards: int | str = 1  # an int >= 1 or "auto"
    shard_target: float = 60.0  # seconds a shard should take, for shards: auto
    split_files: bool = True  # cut a file longer than a fair shard into contiguous runs of tests
    timeout: float = 1800.0
    install_project: bool = True
    env: tuple[tuple[str, str], ...] = ()
    pass_env: tuple[str, ...] = ()
    network: str = "bridge"  # "bridge" or "none"


@dataclass(frozen=True)
class RetriesConfig:
    flaky: int = 0
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
    lines: dict[str, int] = field(default_factory=dict, compare=False, repr=False)

    def error(self, key: str, problem: str) -> ConfigError:
        """A ConfigError for a key of this file, with its line."""
        return ConfigError(str(self.path), key, problem, self.lines.get(key))


class _Doc:
    """A parsed YAML document with its source lines and raw scalar text, addressed by dotted key path."""

    def __init__(self, file: str, text: str) -> None:
        self.file = file
        self.lines: dict[str, int] = {}
        self.raw: dict[str, str] = {}
        try:
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
            raise ConfigError(file, "", f"malformed YAML: {problem}; fix the syntax", line) from None
        if node is not None:
            self._walk(node, "")

    def _walk(self, node: yaml.Node, path: str) -> None:
        self.lines[path] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            seen: set[str] = set()
            for key, value in node.value:
                sub = f"{path}.{key.value}" if path else str(key.value)
                if str(key.value) in seen:
                    raise ConfigError(
                        self.file, sub, f"'{key.value}' is defined twice; keep one", key.start_mark.line + 1
                    )
                seen.add(str(key.value))
                self.lines[sub] = key.start_mark.line + 1
                self._walk(value, sub)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                self._walk(item, f"{path}[{i}]")
        elif isinstance(node, yaml.ScalarNode):
            self.raw[path] = node.value

    def error(self, key: str, problem: str) -> ConfigError:
        return ConfigError(self.file, key, problem, self.lines.get(key))


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
    return doc.raw.get(key, str(value))


def _str_list(doc: _Doc, key: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        raise doc.error(
            key, f"must be a list of strings, not one string; write {key.rsplit('.', maxsplit=1)[-1]}: [{value!r}]"
        )
    if not isinstance(value, list):
        raise doc.error(key, f"must be a list of strings (got {type(value).__name__})")
    return tuple(_str(doc, f"{key}[{i}]", v) for i, v in enumerate(value))


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
    text = doc.raw.get(key, str(value))
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
)
RETRIES_KEYS = ("flaky", "infra")
COVERAGE_KEYS = ("enabled", "source", "branch")
STRATEGY_KEYS = ("fail-fast", "max-parallel")
RESOURCES_KEYS = ("cpus", "memory", "gpus")


def load(path: str | Path) -> MatrixFile:
    """Read and validate a matrix file. Raises ConfigError (one line, no traceback) on any problem."""
    p = Path(path)
    file = str(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(file, "", "matrix file not found; check the path") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(file, "", f"cannot read the matrix file ({exc.__class__.__name__})") from None
    doc = _Doc(file, text)
    data = doc.data
    if not isinstance(data, dict):
        raise doc.error("", "the matrix file must be a YAML mapping with at least a 'matrix' key")
    _check_keys(doc, "", data, TOP_KEYS)

    name = _str(doc, "name", data.get("name", p.stem))
    if not SAFE_NAME.match(name):
        raise doc.error("name", f"{name!r} must be letters, digits, . _ - (it names output folders and labels)")
    project = (p.parent / _str(doc, "project", data.get("project", "."))).resolve()
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
        install=_str_list(doc, "image.install", img.get("install", [])),
        pip_args=_str_list(doc, "image.pip-args", img.get("pip-args", [])),
        build_args=_str_map(doc, "image.build-args", img.get("build-args", {})),
        pytest=_str(doc, "image.pytest", img.get("pytest", "pytest")),
        ca_bundle=_host_path_option(doc, "image.ca-bundle", img.get("ca-bundle", "auto")),
        wheelhouse=_host_path_option(doc, "image.wheelhouse", img.get("wheelhouse", "auto")),
    )

    t = _mapping(doc, "tests", data.get("tests"), TESTS_KEYS)
    shards: int | str = t.get("shards", 1)
    if shards != "auto":
        shards = _int(doc, "tests.shards", shards, minimum=1)
    timeout = t.get("timeout", 1800)
    command = _str_list(doc, "tests.command", t.get("command", list(DEFAULT_COMMAND)))
    if not command:
        raise doc.error("tests.command", "must not be empty; the default is [python, -m, pytest]")
    network = _str(doc, "tests.network", t.get("network", "bridge"))
    if network not in ("bridge", "none"):
        raise doc.error("tests.network", f"must be 'bridge' or 'none' (got {network!r})")
    tests = TestsConfig(
        command=command,
        args=_str_list(doc, "tests.args", t.get("args", [])),
        paths=_str_list(doc, "tests.paths", t.get("paths", [])),
        shards=shards,
        shard_target=_positive(doc, "tests.shard-target", t.get("shard-target", 60)),
        split_files=_bool(doc, "tests.split-files", t.get("split-files", True)),
        timeout=_positive(doc, "tests.timeout", timeout),
        install_project=_bool(doc, "tests.install-project", t.get("install-project", True)),
        env=_str_map(doc, "tests.env", t.get("env", {})),
        pass_env=_str_list(doc, "tests.pass-env", t.get("pass-env", [])),
        network=network,
    )
    for i, tp in enumerate(tests.paths):
        if Path(tp).is_absolute() or ".." in Path(tp).parts:
            raise doc.error(f"tests.paths[{i}]", f"{tp!r} must be a path inside the project")

    r = _mapping(doc, "retries", data.get("retries"), RETRIES_KEYS)
    retries = RetriesConfig(
        flaky=_int(doc, "retries.flaky", r.get("flaky", 0)),
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
    )

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
        lines=doc.lines,
    )


def _host_path_option(doc: _Doc, key: str, value: Any) -> str:
    if value is False or value is None:
        return "none"
    text = _str(doc, key, value)
    if text not in ("auto", "none") and not Path(text).exists():
        raise doc.error(key, f"{text!r} does not exist on this host; give a path, 'auto' or 'none'")
    return text


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
