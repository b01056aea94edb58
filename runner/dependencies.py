"""The project's own requirements: what ``pip install .[EXTRA]`` and ``pip install --group GROUP`` would add to a
cell's environment, read from pyproject.toml (PEP 621 ``[project]``, PEP 735 ``[dependency-groups]``) without
building anything.

A cell's image holds its dependencies, never the project's code (the project is installed over it with
``--no-deps`` at run time), so the project's declared dependencies go into the image with the cell's
``image.install`` lines and are resolved together with them: a pin in the matrix (``numpy=={numpy}``) and the
project's ``numpy>=1.24`` make one install, as ``pip install numpy==1.26.4 .`` would.

Dependencies a build backend computes (``dynamic = ["dependencies"]``, a setup.py) cannot be read without running
the project's code: they are not added, and asking for extras or groups of such a project is an error that says
to list them in ``image.install``.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?")


class DependencyError(ValueError):
    """A requested extra or group the project does not declare: ``key`` is the matrix key that asked for it."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


def normalize(name: str) -> str:
    """PEP 503 / PEP 685 normalized form of a project, extra or group name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _pyproject(project: Path) -> dict[str, Any] | None:
    path = project / "pyproject.toml"
    if not path.is_file():
        return None
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return None  # an unreadable pyproject.toml: the project's install (not this) says what is wrong


def _strings(value: object) -> list[str]:
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []


def requirements(
    project: Path, extras: tuple[str, ...] = (), groups: tuple[str, ...] = (), dependencies: bool = True
) -> tuple[str, ...]:
    """The requirement lines the project declares: its ``dependencies`` (when ``dependencies``), those of each of
    ``extras``, and each of ``groups``, in that order, each line once. A project's reference to itself
    (``pkg[a,b]`` in an extra of ``pkg``) stands for those extras. Raises DependencyError for an extra or group
    that is not declared (key ``image.extras`` / ``image.groups``)."""
    data = _pyproject(project)
    out: list[str] = []
    if extras or dependencies:
        out += _project_requirements(data, extras, dependencies)
    if groups:
        out += _group_requirements(data, groups)
    return tuple(dict.fromkeys(out))


def _project_requirements(data: dict[str, Any] | None, extras: tuple[str, ...], dependencies: bool) -> list[str]:
    table = data.get("project") if data else None
    if not isinstance(table, dict):
        if extras:
            raise DependencyError(
                "image.extras",
                "the project declares no [project] table in pyproject.toml (its extras are a build backend's "
                "to compute): list their packages in image.install",
            )
        return []
    dynamic = set(_strings(table.get("dynamic")))
    optional = table.get("optional-dependencies")
    declared = {normalize(k): _strings(v) for k, v in optional.items()} if isinstance(optional, dict) else {}
    if extras and "optional-dependencies" in dynamic:
        raise DependencyError(
            "image.extras",
            "the project's optional-dependencies are dynamic (computed by its build backend): list their packages "
            "in image.install",
        )
    for extra in extras:
        if normalize(extra) not in declared:
            known = ", ".join(sorted(declared)) or "none"
            raise DependencyError(
                "image.extras", f"{extra!r} is not an extra of the project (pyproject.toml declares: {known})"
            )
    own = normalize(str(table.get("name", "")))
    out: list[str] = []
    if dependencies and "dependencies" not in dynamic:
        out += _expand(_strings(table.get("dependencies")), own, declared, set())
    for extra in extras:
        out += _expand(declared[normalize(extra)], own, declared, {normalize(extra)})
    return out


def _expand(lines: list[str], own: str, declared: dict[str, list[str]], seen: set[str]) -> list[str]:
    """``lines`` with the project's references to its own extras replaced by those extras' lines."""
    out: list[str] = []
    for line in lines:
        m = _NAME.match(line)
        if not own or m is None or normalize(m.group(1)) != own:
            out.append(line.strip())
            continue
        for extra in (m.group(2) or "[]")[1:-1].split(","):
            name = normalize(extra.strip())
            if name and name in declared and name not in seen:
                out += _expand(declared[name], own, declared, seen | {name})
    return out


def _group_requirements(data: dict[str, Any] | None, groups: tuple[str, ...]) -> list[str]:
    table = data.get("dependency-groups") if data else None
    declared = {normalize(k): v for k, v in table.items()} if isinstance(table, dict) else {}
    out: list[str] = []
    for group in groups:
        if normalize(group) not in declared:
            known = ", ".join(sorted(declared)) or "none"
            raise DependencyError(
                "image.groups",
                f"{group!r} is not a dependency group of the project ([dependency-groups] in pyproject.toml "
                f"declares: {known})",
            )
        out += _group(declared, normalize(group), ())
    return out


def _group(declared: dict[str, Any], name: str, path: tuple[str, ...]) -> list[str]:
    if name in path:
        raise DependencyError("image.groups", f"dependency group {name!r} includes itself ({' -> '.join(path)})")
    if name not in declared:
        raise DependencyError(
            "image.groups", f"dependency group {path[-1]!r} includes {name!r}, which pyproject.toml does not declare"
        )
    entries = declared[name]
    out: list[str] = []
    for entry in entries if isinstance(entries, list) else []:
        if isinstance(entry, str):
            out.append(entry.strip())
        elif isinstance(entry, dict) and isinstance(entry.get("include-group"), str):
            out += _group(declared, normalize(entry["include-group"]), (*path, name))
    return out
