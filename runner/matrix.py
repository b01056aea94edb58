"""MatrixFile -> [Cell]: GitHub Actions ``strategy.matrix`` semantics, stable readable ids. Pure.

The semantics, as GitHub documents them:
1. the cartesian product of the axes, in the order written;
2. ``exclude`` removes every combination that matches all key/values of an entry (partial matches count);
3. each ``include`` entry is added to every combination whose *original* axis values it does not overwrite
   (keys that an earlier include added may be overwritten); an entry that fits no combination becomes a new one.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from runner.config import (
    DEFAULT_BASE,
    EXECUTORS,
    IPC_MODES,
    SAFE_VALUE,
    SHM_WITH_HOST_IPC,
    MatrixFile,
    one_line,
    parse_memory,
)
from runner.errors import UserError

TEMPLATE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_\-]*)\}")

MAX_CELLS = 10_000  # cells of one matrix, counted before anything is expanded (the product plus the includes)


@dataclass(frozen=True)
class Resources:
    cpus: float = 1.0
    memory: int | None = None  # bytes
    gpus: float = 0.0
    pids: int = 4096  # the container's pids limit
    shm: int | None = None  # bytes of the container's /dev/shm; None = Docker's default (64 MiB)
    ipc: str = ""  # the container's IPC mode: "private", "shareable", "host"; "" = the engine's default
    gpu_type: str = ""  # the accelerator type the shard's GPUs must be (Ray's accelerator_type); "" = any


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
    runs_on: str = ""  # the node label the cell needs ("" = any node)
    executor: str = "docker"  # "docker" (a container per attempt) or "host" (a venv on the node)
    python: str = "python3"  # the host executor's interpreter: a name on the node's PATH, or a path

    @property
    def axes(self) -> dict[str, str]:
        return dict(self.values)


HUGE = 10**15  # a bound above this is not computed exactly (thousands of axes would make a huge integer)


def _log_product(mf: MatrixFile, axes: Sequence[tuple[str, Sequence[str]]] | None) -> float:
    lengths = [len(values) for _, values in (mf.axes if axes is None else axes)]
    return -math.inf if not lengths or not all(lengths) else math.fsum(math.log10(n) for n in lengths)


def size_bound(mf: MatrixFile, axes: Sequence[tuple[str, Sequence[str]]] | None = None) -> int:
    """The most cells the matrix can make: the product of the axes plus the includes, from the lengths alone.

    ``axes`` replaces the file's axes (narrowed by ``--select``); a bound over HUGE is given as HUGE.
    """
    magnitude = _log_product(mf, axes)
    if magnitude > math.log10(HUGE):
        return HUGE + len(mf.include)
    product = (
        0 if magnitude == -math.inf else math.prod(len(values) for _, values in (mf.axes if axes is None else axes))
    )
    return min(product, HUGE) + len(mf.include)


def check_size(mf: MatrixFile, axes: Sequence[tuple[str, Sequence[str]]] | None = None) -> int:
    """``size_bound``, refused over MAX_CELLS: checked before anything is expanded, so millions fail at once."""
    bound = size_bound(mf, axes)
    if bound > MAX_CELLS:
        count = str(bound) if bound < HUGE else f"about 10^{int(_log_product(mf, axes))}"
        raise mf.error(
            "matrix",
            f"{count} combinations is over the cap of {MAX_CELLS} cells; "
            "split the matrix into several files or narrow it with --select AXIS=VALUE",
        )
    return bound


def combinations(mf: MatrixFile, narrow: Mapping[str, set[str]] | None = None) -> list[dict[str, str]]:
    """The matrix combinations, in GitHub Actions order, as plain dicts.

    ``narrow`` (``--select``) keeps only the listed values of the axes it names before the product is taken;
    the caller still filters the result by it (an include may add a cell with other values).
    """
    narrow = narrow or {}
    axes = [(name, [v for v in values if name not in narrow or v in narrow[name]]) for name, values in mf.axes]
    check_size(mf, axes)
    names = [name for name, _ in axes]
    if names:
        product = [dict(zip(names, vals, strict=True)) for vals in itertools.product(*(v for _, v in axes))]
    else:
        product = []
    for entry in mf.exclude:
        ex = dict(entry)
        product = [c for c in product if any(c.get(k) != v for k, v in ex.items())]
    combos: list[dict[str, str]] = [dict(c) for c in product]
    extra: list[dict[str, str]] = []
    seen_extra: set[frozenset[tuple[str, str]]] = set()
    # combinations by their values of some original axes, built once per set of axes an include names
    index: dict[tuple[str, ...], dict[tuple[str, ...], list[int]]] = {}
    for entry in mf.include:
        inc = dict(entry)
        keys = tuple(k for k in names if k in inc)
        if keys not in index:
            by_values: dict[tuple[str, ...], list[int]] = {}
            for i, orig in enumerate(product):
                by_values.setdefault(tuple(orig[k] for k in keys), []).append(i)
            index[keys] = by_values
        matches = index[keys].get(tuple(inc[k] for k in keys), [])
        for i in matches:
            combos[i].update(inc)
        frozen = frozenset(inc.items())
        if not matches and frozen not in seen_extra:
            seen_extra.add(frozen)
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


MIN_SHM = 1024**2


def _resources(mf: MatrixFile, values: dict[str, str], cid: str) -> Resources:
    """``resources``, each value rendered for the cell (``gpus: "{gpus}"``, ``gpu-type: "{gpu}"``) and checked."""
    res = mf.resources

    def render(key: str, template: str) -> str:
        return _render(mf, f"resources.{key}", template, values, cid).strip() if template else ""

    memory_text = render("memory", res.memory)
    try:
        memory = parse_memory(memory_text)
    except ValueError:
        raise mf.error("resources.memory", f"{memory_text!r} is not a memory size; write e.g. '2g'") from None
    shm_text = render("shm", res.shm)
    try:
        shm = parse_memory(shm_text)
    except ValueError:
        raise mf.error("resources.shm", f"cell {cid}: {shm_text!r} is not a size; write e.g. '2g' or '512m'") from None
    if shm is not None and shm < MIN_SHM:
        raise mf.error("resources.shm", f"cell {cid}: {shm_text!r} is below 1m; write e.g. '2g' or '512m'")
    ipc = render("ipc", res.ipc)
    if ipc and ipc not in IPC_MODES:
        raise mf.error("resources.ipc", f"cell {cid}: {ipc!r} is not one of {', '.join(IPC_MODES)}")
    if shm is not None and ipc == "host":
        raise mf.error("resources.shm", f"cell {cid}: {SHM_WITH_HOST_IPC}")
    gpus = _number(mf, "resources.gpus", render("gpus", res.gpus))
    gpu_type = render("gpu-type", res.gpu_type)
    if gpu_type == "any":
        gpu_type = ""
    if gpu_type and not SAFE_VALUE.match(gpu_type):
        raise mf.error(
            "resources.gpu-type", f"cell {cid}: {gpu_type!r} is not a GPU type; write e.g. H100, A10G or A100-80G"
        )
    if gpu_type and not gpus:
        raise mf.error(
            "resources.gpu-type",
            f"cell {cid} asks for GPU type {gpu_type!r} but for no GPU (resources.gpus is 0); "
            "give it GPUs, or gpu-type 'any' for cells without",
        )
    return Resources(
        cpus=_number(mf, "resources.cpus", render("cpus", res.cpus)),
        memory=memory,
        gpus=gpus,
        pids=res.pids,
        shm=shm,
        ipc=ipc,
        gpu_type=gpu_type,
    )


def build_cell(mf: MatrixFile, values: dict[str, str], cid: str) -> Cell:
    """Resolve every template of the matrix file for one combination."""
    img, tests = mf.image, mf.tests
    resources = _resources(mf, values, cid)
    base = _render(mf, "image.base", img.base, values, cid)
    # an include entry that sets `executor: host` is enough; the top-level key templates it otherwise
    executor = _render(mf, "executor", mf.executor, values, cid) if mf.executor else values.get("executor", "docker")
    if executor not in EXECUTORS:
        raise mf.error("executor", f"cell {cid}: {executor!r} is not an executor; write docker or host")
    runs_on = _render(mf, "runs-on", mf.runs_on, values, cid) if mf.runs_on else ""
    if runs_on and not SAFE_VALUE.match(runs_on):
        raise mf.error("runs-on", f"cell {cid}: label {runs_on!r} must be letters, digits and . _ + - only")
    if img.python:
        python = _render(mf, "image.python", img.python, values, cid)
    else:
        python = f"python{values['python']}" if SAFE_VALUE.match(values.get("python", "")) else "python3"
    return Cell(
        runs_on=runs_on,
        executor=executor,
        python=python,
        id=cid,
        values=tuple(values.items()),
        base=base,
        bootstrap=_render(mf, "image.bootstrap", img.bootstrap, values, cid) if img.bootstrap else None,
        install=tuple(_render(mf, f"image.install[{i}]", s, values, cid) for i, s in enumerate(img.install)),
        build_args=tuple((k, _render(mf, f"image.build-args.{k}", v, values, cid)) for k, v in img.build_args),
        command=tuple(_render(mf, f"tests.command[{i}]", s, values, cid) for i, s in enumerate(tests.command))
        + tuple(_render(mf, f"tests.args[{i}]", s, values, cid) for i, s in enumerate(tests.args)),
        env=tuple((k, _render(mf, f"tests.env.{k}", v, values, cid)) for k, v in tests.env),
        resources=resources,
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
    """All cells of the matrix, filtered by ``--select`` (same axis: any of; different axes: all of).

    A selection on an original axis narrows that axis before the product is taken (the same cells as filtering
    the whole matrix: an include never changes an original axis's value), so ``--select`` brings a matrix over
    MAX_CELLS under it.
    """
    wanted = parse_selectors(select)
    names = {name for name, _ in mf.axes}
    if not wanted or size_bound(mf) <= MAX_CELLS:
        full: list[dict[str, str]] | None = combinations(mf)
        if not full:
            raise mf.error("matrix", "exclude removes every combination; nothing is left to run")
        known = {k for c in full for k in c}
    else:  # the whole matrix is over the cap: only the selected part is expanded
        full = None
        known = names | {k for entry in mf.include for k, _ in entry}
    for key in wanted:
        if key not in known:
            raise UserError(
                one_line(f"--select {key}=...: '{key}' is not an axis of {mf.path}; axes: {', '.join(sorted(known))}")
            )
    combos = full if full is not None else combinations(mf, {k: v for k, v in wanted.items() if k in names})
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
        raise UserError(
            one_line(f"--select {' '.join(select)} matches no cell of {mf.path}; see 'matrix-run list {mf.path}'")
        )
    return cells
