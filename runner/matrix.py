"""MatrixFile -> [Cell]: GitHub Actions ``strategy.matrix`` semantics, stable readable ids. Pure.

The semantics, as GitHub documents them:
1. the cartesian product of the axes, in the order written;
2. ``exclude`` removes every combination that matches all key/values of an entry (partial matches count);
3. each ``include`` entry is added to every combination whose *original* axis values it does not overwrite
   (keys that an earlier include added may be overwritten); an entry that fits no combination becomes a new one.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from runner.config import DEFAULT_BASE, MatrixFile, parse_memory
from runner.errors import UserError

TEMPLATE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_\-]*)\}")


@dataclass(frozen=True)
class Resources:
    cpus: float = 1.0
    memory: int | None = None  # bytes
    gpus: float = 0.0


@dataclass(frozen=True)
class Cell:
    """One environment of the matrix, with every template already resolved."""

    id: str
    values: tuple[tuple[str, str], ...]
    base: str
    bootstrap: str | None
    install: tuple[str, ...]
    build_args: tuple[tuple[str, str], ...]
    command: tuple[str, ...]
    resources: Resources
    env: tuple[tuple[str, str], ...] = ()  # tests.env, rendered for this cell

    @property
    def axes(self) -> dict[str, str]:
        return dict(self.values)


def combinations(mf: MatrixFile) -> list[dict[str, str]]:
    """The matrix combinations, in GitHub Actions order, as plain dicts."""
    names = [name for name, _ in mf.axes]
    if names:
        product = [dict(zip(names, vals, strict=True)) for vals in itertools.product(*(v for _, v in mf.axes))]
    else:
        product = []
    for entry in mf.exclude:
        ex = dict(entry)
        product = [c for c in product if any(c.get(k) != v for k, v in ex.items())]
    original = set(names)
    combos: list[dict[str, str]] = [dict(c) for c in product]
    extra: list[dict[str, str]] = []
    for entry in mf.include:
        inc = dict(entry)
        matched = False
        for combo, orig in zip(combos, product, strict=True):
            if all(orig[k] == v for k, v in inc.items() if k in original):
                combo.update(inc)
                matched = True
        if not matched and inc not in extra:
            extra.append(inc)
    return combos + extra


def cell_id(values: Iterable[tuple[str, str]]) -> str:
    """A readable, stable id derived only from the values: ``python-3.11_numpy-2.2.6``."""
    return "_".join(f"{k}-{v}" for k, v in values) or "default"


TOKEN = re.compile(r"\{\{|\}\}|\{([A-Za-z_][A-Za-z0-9_\-]*)\}")


def _render(mf: MatrixFile, key: str, template: str, values: dict[str, str], cid: str) -> str:
    """Replace ``{axis}`` by the cell's value; ``{{`` and ``}}`` stand for literal braces (as in str.format)."""

    def sub(m: re.Match[str]) -> str:
        token = m.group(0)
        if token == "{{":
            return "{"
        if token == "}}":
            return "}"
        name = m.group(1)
        if name not in values:
            known = ", ".join(values) or "none"
            hint = ""
            if key == "image.base" and mf.image.base == DEFAULT_BASE:
                hint = f" (the default image.base is {DEFAULT_BASE!r}: add a python axis or set image.base)"
            raise mf.error(key, f"'{{{name}}}' is not an axis of cell {cid}; axes there: {known}{hint}")
        return values[name]

    return TOKEN.sub(sub, template)


def _number(mf: MatrixFile, key: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise mf.error(key, f"{text!r} is not a number") from None
    if value < 0:
        raise mf.error(key, f"{text!r} must be >= 0")
    return value


def build_cell(mf: MatrixFile, values: dict[str, str], cid: str) -> Cell:
    """Resolve every template of the matrix file for one combination."""
    img, tests, res = mf.image, mf.tests, mf.resources
    memory_text = _render(mf, "resources.memory", res.memory, values, cid)
    try:
        memory = parse_memory(memory_text)
    except ValueError:
        raise mf.error("resources.memory", f"{memory_text!r} is not a memory size; write e.g. '2g'") from None
    base = _render(mf, "image.base", img.base, values, cid)
    return Cell(
        id=cid,
        values=tuple(values.items()),
        base=base,
        bootstrap=_render(mf, "image.bootstrap", img.bootstrap, values, cid) if img.bootstrap else None,
        install=tuple(_render(mf, f"image.install[{i}]", s, values, cid) for i, s in enumerate(img.install)),
        build_args=tuple((k, _render(mf, f"image.build-args.{k}", v, values, cid)) for k, v in img.build_args),
        command=tuple(_render(mf, f"tests.command[{i}]", s, values, cid) for i, s in enumerate(tests.command))
        + tuple(_render(mf, f"tests.args[{i}]", s, values, cid) for i, s in enumerate(tests.args)),
        env=tuple((k, _render(mf, f"tests.env.{k}", v, values, cid)) for k, v in tests.env),
        resources=Resources(
            cpus=_number(mf, "resources.cpus", _render(mf, "resources.cpus", res.cpus, values, cid)),
            memory=memory,
            gpus=_number(mf, "resources.gpus", _render(mf, "resources.gpus", res.gpus, values, cid)),
        ),
    )


def parse_selectors(selectors: Sequence[str]) -> dict[str, set[str]]:
    """``["python=3.11", "python=3.13", "numpy=2.2.6"]`` -> {python: {3.11, 3.13}, numpy: {2.2.6}}."""
    out: dict[str, set[str]] = {}
    for sel in selectors:
        key, sep, value = sel.partition("=")
        if not sep or not key or not value:
            raise UserError(f"--select {sel!r}: write AXIS=VALUE, e.g. --select python=3.11")
        out.setdefault(key.strip(), set()).add(value.strip())
    return out


def expand(mf: MatrixFile, select: Sequence[str] = ()) -> list[Cell]:
    """All cells of the matrix, filtered by ``--select`` (same axis: any of; different axes: all of)."""
    combos = combinations(mf)
    if not combos:
        raise mf.error("matrix", "exclude removes every combination; nothing is left to run")
    wanted = parse_selectors(select)
    known = {k for c in combos for k in c}
    for key in wanted:
        if key not in known:
            raise UserError(
                f"--select {key}=...: '{key}' is not an axis of {mf.path}; axes: {', '.join(sorted(known))}"
            )
    cells: list[Cell] = []
    seen: dict[str, int] = {}
    for values in combos:
        if any(values.get(k) not in vs for k, vs in wanted.items()):
            continue
        cid = cell_id(values.items())
        if cid in seen:
            seen[cid] += 1
            cid = f"{cid}_{seen[cid]}"
        else:
            seen[cid] = 1
        cells.append(build_cell(mf, values, cid))
    if not cells:
        raise UserError(f"--select {' '.join(select)} matches no cell of {mf.path}; see 'matrix-run list {mf.path}'")
    return cells
