"""runner/matrix.py: GitHub Actions ``strategy.matrix`` semantics, templating, stable ids and ``--select``.

The include/exclude examples are the ones in GitHub's documentation ("Running variations of jobs in a workflow").
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from runner import config, matrix
from runner.errors import ConfigError, UserError

MATRICES = Path(__file__).parent / "matrices"


def load(tmp_path: Path, text: str) -> config.MatrixFile:
    path = tmp_path / "m.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return config.load(path)


def axes_of(cells: list[matrix.Cell]) -> list[dict[str, str]]:
    return [c.axes for c in cells]


# --- GitHub Actions semantics -------------------------------------------------------------------------------------


def test_product_is_in_the_order_written(tmp_path: Path) -> None:
    mf = load(tmp_path, "matrix: {os: [a, b], py: ['3.10', '3.9'], x: [1]}\n")

    assert matrix.combinations(mf) == [
        {"os": "a", "py": "3.10", "x": "1"},
        {"os": "a", "py": "3.9", "x": "1"},
        {"os": "b", "py": "3.10", "x": "1"},
        {"os": "b", "py": "3.9", "x": "1"},
    ]


def test_github_include_example() -> None:
    mf = config.load(MATRICES / "github-include.yaml")

    cells = matrix.expand(mf)

    expected = [
        {"fruit": "apple", "animal": "cat", "color": "pink", "shape": "circle"},
        {"fruit": "apple", "animal": "dog", "color": "green", "shape": "circle"},
        {"fruit": "pear", "animal": "cat", "color": "pink"},
        {"fruit": "pear", "animal": "dog", "color": "green"},
        {"fruit": "banana"},
        {"fruit": "banana", "animal": "cat"},
    ]
    assert axes_of(cells) == expected
    # keys appear in the order they were added: axes first, then include keys as they are applied
    assert [list(c.axes) for c in cells] == [list(e) for e in expected]


def test_github_expanding_configurations_example(tmp_path: Path) -> None:
    mf = load(
        tmp_path,
        """\
        matrix:
          os: [windows-latest, ubuntu-latest]
          node: [14, 16]
          include:
            - os: windows-latest
              node: 16
              npm: 6
        """,
    )

    assert matrix.combinations(mf) == [
        {"os": "windows-latest", "node": "14"},
        {"os": "windows-latest", "node": "16", "npm": "6"},
        {"os": "ubuntu-latest", "node": "14"},
        {"os": "ubuntu-latest", "node": "16"},
    ]


def test_github_adding_configurations_example(tmp_path: Path) -> None:
    # "this matrix will run 10 jobs": an include that overwrites an original value becomes a new combination
    mf = load(
        tmp_path,
        """\
        matrix:
          os: [macos-latest, windows-latest, ubuntu-latest]
          version: [10, 12, 14]
          include:
            - os: windows-latest
              version: 17
        """,
    )

    combos = matrix.combinations(mf)

    assert len(combos) == 10
    assert combos[-1] == {"os": "windows-latest", "version": "17"}
    assert all(c["version"] != "17" for c in combos[:-1])


def test_github_exclude_example(tmp_path: Path) -> None:
    mf = load(
        tmp_path,
        """\
        matrix:
          os: [macos-latest, windows-latest]
          version: [12, 14, 16]
          environment: [staging, production]
          exclude:
            - os: macos-latest
              version: 12
              environment: production
            - os: windows-latest
              version: 16
        """,
    )

    combos = matrix.combinations(mf)

    assert len(combos) == 9
    assert {"os": "macos-latest", "version": "12", "environment": "production"} not in combos
    assert not [c for c in combos if c["os"] == "windows-latest" and c["version"] == "16"]
    assert combos[0] == {"os": "macos-latest", "version": "12", "environment": "staging"}
    assert combos[-1] == {"os": "windows-latest", "version": "14", "environment": "production"}


def test_include_only_matrix(tmp_path: Path) -> None:
    # GitHub: "If you don't specify any matrix variables, all configurations under include will run."
    mf = load(
        tmp_path,
        """\
        matrix:
          include:
            - site: production
              datacenter: site-a
            - site: staging
              datacenter: site-b
        image: {base: "python:3.11-slim"}
        """,
    )

    cells = matrix.expand(mf)

    assert axes_of(cells) == [
        {"site": "production", "datacenter": "site-a"},
        {"site": "staging", "datacenter": "site-b"},
    ]
    assert [c.id for c in cells] == ["site-production_datacenter-site-a", "site-staging_datacenter-site-b"]


def test_include_matches_a_combination_removed_by_exclude_as_a_new_one(tmp_path: Path) -> None:
    # exclude runs first; an include entry for an excluded combination has nothing to extend, so it is added
    mf = load(
        tmp_path,
        """\
        matrix:
          python: ['3.9', '3.13']
          numpy: ['1.26.4', '2.2.6']
          exclude:
            - {python: '3.9', numpy: '2.2.6'}
          include:
            - {python: '3.9', numpy: '2.2.6', note: forced}
        """,
    )

    assert matrix.combinations(mf) == [
        {"python": "3.9", "numpy": "1.26.4"},
        {"python": "3.13", "numpy": "1.26.4"},
        {"python": "3.13", "numpy": "2.2.6"},
        {"python": "3.9", "numpy": "2.2.6", "note": "forced"},
    ]


def test_include_may_overwrite_keys_added_by_an_earlier_include(tmp_path: Path) -> None:
    mf = load(
        tmp_path,
        """\
        matrix:
          python: ['3.11', '3.13']
          include:
            - {debian: bookworm}
            - {python: '3.13', debian: trixie}
        """,
    )

    assert matrix.combinations(mf) == [
        {"python": "3.11", "debian": "bookworm"},
        {"python": "3.13", "debian": "trixie"},
    ]


def test_exclude_that_removes_everything_is_an_error(tmp_path: Path) -> None:
    mf = load(
        tmp_path,
        """\
        matrix:
          python: ['3.11']
          exclude:
            - {python: '3.11'}
        """,
    )

    with pytest.raises(ConfigError, match=r"m\.yaml:2: matrix: exclude removes every combination"):
        matrix.expand(mf)


# --- templates ------------------------------------------------------------------------------------------------------


def test_design_example_templates_resolve_per_cell() -> None:
    cells = matrix.expand(config.load(MATRICES / "design-example.yaml"))

    first = cells[0]
    assert first.id == "python-3.9_numpy-1.26.4_debian-bullseye"
    assert first.base == "matrix-run/debian:bullseye"
    assert first.bootstrap == "bullseye"
    assert first.install == ("numpy==1.26.4", "pytest-timeout")
    assert first.resources == matrix.Resources(cpus=1.0, memory=2 * 1024**3, gpus=0.0)
    assert [c.base for c in cells] == [
        "matrix-run/debian:bullseye",
        "matrix-run/debian:bookworm",
        "matrix-run/debian:bookworm",
        "matrix-run/debian:trixie",
    ]


def test_templates_in_base_install_command_args_and_resources(tmp_path: Path) -> None:
    mf = load(
        tmp_path,
        """\
        matrix:
          python: ['3.11']
          torch: ['2.13.0']
          gpus: [0, 1]
          mem: [512m]
        image:
          install: ["torch=={torch}", "--extra-index-url=https://example.invalid/{python}"]
          build-args: {PY: "{python}"}
        tests:
          command: [python, -X, "tag={python}-{torch}"]
          args: ["-k", "not gpu{gpus}"]
        resources: {cpus: "{gpus}", memory: "{mem}", gpus: "{gpus}"}
        """,
    )

    cpu, gpu = matrix.expand(mf)

    assert cpu.base == "python:3.11-slim"  # the default base is a template too
    assert cpu.install == ("torch==2.13.0", "--extra-index-url=https://example.invalid/3.11")
    assert cpu.build_args == (("PY", "3.11"),)
    assert cpu.command == ("python", "-X", "tag=3.11-2.13.0", "-k", "not gpu0")
    assert cpu.resources == matrix.Resources(cpus=0.0, memory=512 * 1024**2, gpus=0.0)
    assert gpu.resources == matrix.Resources(cpus=1.0, memory=512 * 1024**2, gpus=1.0)


def test_double_braces_are_literal_braces(tmp_path: Path) -> None:
    mf = load(
        tmp_path,
        """\
        matrix: {python: ['3.11']}
        tests:
          command: [python, -c, "print({{'v': '{python}'}})", "{{python}}", "{not a template"]
        """,
    )

    (cell,) = matrix.expand(mf)

    assert cell.command == ("python", "-c", "print({'v': '3.11'})", "{python}", "{not a template")


def test_escaped_brace_next_to_a_template(tmp_path: Path) -> None:
    mf = load(tmp_path, 'matrix: {python: ["3.11"]}\ntests: {command: [echo, "{{{python}}}"]}\n')

    (cell,) = matrix.expand(mf)

    assert cell.command == ("echo", "{3.11}")


@pytest.mark.parametrize(
    ("section", "key"),
    [
        ('image: {base: "img:{pyhton}"}', "image.base"),
        ('image: {install: [ok, "numpy=={numpy}"]}', r"image.install\[1\]"),
        ('tests: {command: [python, "{nope}"]}', r"tests.command\[1\]"),
        ('resources: {gpus: "{ngpu}"}', "resources.gpus"),
    ],
)
def test_unknown_template_name_is_a_config_error_naming_the_key(tmp_path: Path, section: str, key: str) -> None:
    mf = load(tmp_path, f"matrix: {{python: ['3.11']}}\n{section}\n")

    with pytest.raises(ConfigError, match=rf"m\.yaml:2: {key}: '\{{\w+\}}' is not an axis of cell python-3\.11"):
        matrix.expand(mf)


def test_template_of_a_key_only_some_cells_have_is_an_error(tmp_path: Path) -> None:
    mf = load(
        tmp_path,
        """\
        matrix:
          python: ['3.11', '3.13']
          include:
            - {python: '3.13', debian: trixie}
        image: {base: "matrix-run/debian:{debian}"}
        """,
    )

    with pytest.raises(ConfigError, match=r"image\.base: '\{debian\}' is not an axis of cell python-3\.11"):
        matrix.expand(mf)


# --- ids --------------------------------------------------------------------------------------------------------------


def test_cell_id_is_readable_and_derived_from_values_only() -> None:
    assert matrix.cell_id([("python", "3.11"), ("numpy", "2.2.6")]) == "python-3.11_numpy-2.2.6"
    assert matrix.cell_id([]) == "default"


def test_ids_are_stable_across_loads_and_selections() -> None:
    mf = config.load(MATRICES / "design-example.yaml")
    all_ids = [c.id for c in matrix.expand(mf)]

    again = [c.id for c in matrix.expand(config.load(MATRICES / "design-example.yaml"))]
    selected = [c.id for c in matrix.expand(mf, ["python=3.11"])]

    assert again == all_ids
    assert selected == [i for i in all_ids if i.startswith("python-3.11_")]
    assert len(set(all_ids)) == len(all_ids)


def test_colliding_ids_are_made_unique(tmp_path: Path) -> None:
    # {a: "x_b-y"} and {a: x, b: y} spell the same id
    mf = load(
        tmp_path,
        """\
        matrix:
          a: [x_b-y]
          include:
            - {a: x, b: y}
        image: {base: "python:3.11-slim"}
        """,
    )

    ids = [c.id for c in matrix.expand(mf)]

    assert ids == ["a-x_b-y", "a-x_b-y_2"]


# --- --select -------------------------------------------------------------------------------------------------------


@pytest.fixture
def grid(tmp_path: Path) -> config.MatrixFile:
    return load(
        tmp_path,
        """\
        matrix:
          python: ['3.9', '3.11', '3.13']
          numpy: ['1.26.4', '2.2.6']
          include:
            - {python: '3.13', debian: trixie}
        """,
    )


def test_select_same_axis_is_or(grid: config.MatrixFile) -> None:
    cells = matrix.expand(grid, ["python=3.9", "python=3.13"])

    assert [c.id for c in cells] == [
        "python-3.9_numpy-1.26.4",
        "python-3.9_numpy-2.2.6",
        "python-3.13_numpy-1.26.4_debian-trixie",
        "python-3.13_numpy-2.2.6_debian-trixie",
    ]


def test_select_different_axes_is_and(grid: config.MatrixFile) -> None:
    cells = matrix.expand(grid, ["python=3.11", "numpy=2.2.6"])

    assert [c.id for c in cells] == ["python-3.11_numpy-2.2.6"]


def test_select_on_an_include_key(grid: config.MatrixFile) -> None:
    cells = matrix.expand(grid, ["debian=trixie"])

    assert [c.axes["python"] for c in cells] == ["3.13", "3.13"]


def test_select_unknown_axis_is_a_user_error(grid: config.MatrixFile) -> None:
    with pytest.raises(UserError, match=r"--select pyton=\.\.\.: 'pyton' is not an axis of .*m\.yaml; axes: "):
        matrix.expand(grid, ["pyton=3.11"])


def test_select_matching_nothing_is_a_user_error(grid: config.MatrixFile) -> None:
    with pytest.raises(UserError, match=r"--select python=3\.12 matches no cell of .*m\.yaml"):
        matrix.expand(grid, ["python=3.12"])


def test_select_with_contradicting_axes_matches_nothing(grid: config.MatrixFile) -> None:
    with pytest.raises(UserError, match="matches no cell"):
        matrix.expand(grid, ["python=3.9", "debian=trixie"])


@pytest.mark.parametrize("selector", ["python", "=3.11", "python="])
def test_malformed_selector(grid: config.MatrixFile, selector: str) -> None:
    with pytest.raises(UserError, match="write AXIS=VALUE"):
        matrix.expand(grid, [selector])


def test_parse_selectors_groups_values_by_axis() -> None:
    assert matrix.parse_selectors(["python=3.11", "python=3.13", " numpy = 2.2.6 "]) == {
        "python": {"3.11", "3.13"},
        "numpy": {"2.2.6"},
    }


def test_default_base_needs_a_python_axis(tmp_path: Path) -> None:
    mf = load(tmp_path, "matrix: {fruit: [apple]}\n")

    with pytest.raises(
        ConfigError, match=r"image\.base: '\{python\}' is not an axis of cell fruit-apple; axes there: fruit"
    ):
        matrix.expand(mf)


# --- resources.pids, the cell cap, --select before the product, aliases ---------------------------------------------


def test_pids_reach_the_cell_resources(tmp_path: Path) -> None:
    (default,) = matrix.expand(load(tmp_path, "matrix: {python: ['3.11']}\n"))
    (set_,) = matrix.expand(load(tmp_path, "matrix: {python: ['3.11']}\nresources: {pids: 256}\n"))

    assert default.resources.pids == 4096
    assert set_.resources == matrix.Resources(pids=256)
    assert matrix.Resources().pids == 4096


def test_size_bound_is_the_product_plus_the_includes(tmp_path: Path) -> None:
    mf = load(
        tmp_path,
        """\
        matrix:
          a: [1, 2, 3]
          b: [x, y]
          exclude: [{a: 1}]
          include: [{a: 1, c: z}, {c: w}]
        image: {base: img}
        """,
    )

    assert matrix.size_bound(mf) == 3 * 2 + 2
    assert matrix.size_bound(mf, [("a", ["1"]), ("b", ["x", "y"])]) == 2 + 2
    assert matrix.check_size(mf) == 8


def test_cell_cap_names_the_matrix_key_and_its_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(matrix, "MAX_CELLS", 5)
    mf = load(tmp_path, "name: x\nmatrix:\n  a: [1, 2, 3]\n  b: [x, y]\nimage: {base: img}\n")

    with pytest.raises(ConfigError) as info:
        matrix.expand(mf)

    assert str(info.value) == (
        f"{mf.path}:3: matrix: 6 combinations is over the cap of 5 cells; "
        "split the matrix into several files or narrow it with --select AXIS=VALUE"
    )


TRICKY = """\
matrix:
  python: ['3.9', '3.11', '3.13']
  numpy: ['1.26', '2.2']
  os: [linux, mac]
  exclude:
    - {python: '3.9', numpy: '2.2'}
    - {os: mac, numpy: '1.26'}
  include:
    - {python: '3.13', debian: trixie}
    - {python: '3.9', numpy: '2.2', extra: gone}
    - {os: windows, python: '3.11'}
    - {debian: any}
    - {numpy: '2.2', debian: pinned}
    - {os: linux, extra: 'y'}
    - {os: windows, python: '3.11'}
image: {base: img}
"""

SELECTIONS = [
    ["python=3.9"],
    ["python=3.11"],
    ["python=3.9", "python=3.13"],
    ["numpy=2.2"],
    ["os=windows"],
    ["os=mac", "python=3.13"],
    ["debian=pinned"],
    ["extra=gone"],
    ["extra=y", "numpy=1.26"],
    ["python=3.12"],
]


@pytest.mark.parametrize("select", SELECTIONS, ids=[" ".join(s) for s in SELECTIONS])
def test_narrowing_by_select_before_the_product_gives_the_same_cells(tmp_path: Path, select: list[str]) -> None:
    mf = load(tmp_path, TRICKY)
    wanted = matrix.parse_selectors(select)

    def chosen(combos: list[dict[str, str]]) -> list[dict[str, str]]:
        return [c for c in combos if all(c.get(k) in vs for k, vs in wanted.items())]

    narrow = {k: v for k, v in wanted.items() if k in dict(mf.axes)}
    assert chosen(matrix.combinations(mf, narrow)) == chosen(matrix.combinations(mf))


@pytest.mark.parametrize("select", SELECTIONS[:-1], ids=[" ".join(s) for s in SELECTIONS[:-1]])
def test_expand_over_the_cap_with_select_gives_the_same_cells(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, select: list[str]
) -> None:
    mf = load(tmp_path, TRICKY)
    whole = [(c.id, c.values) for c in matrix.expand(mf, select)]
    monkeypatch.setattr(matrix, "MAX_CELLS", matrix.size_bound(mf) - 1)  # the whole matrix is now over the cap
    with pytest.raises(ConfigError, match="over the cap"):
        matrix.expand(mf)

    wanted = matrix.parse_selectors(select)
    narrowed_axes = [(k, [v for v in vs if k not in wanted or v in wanted[k]]) for k, vs in mf.axes]

    if matrix.size_bound(mf, narrowed_axes) <= matrix.MAX_CELLS:  # a selection on an axis narrows the product
        assert [(c.id, c.values) for c in matrix.expand(mf, select)] == whole
    else:  # on include keys only: nothing to narrow, still over the cap
        assert all(k not in dict(mf.axes) for k in wanted)
        with pytest.raises(ConfigError, match="over the cap"):
            matrix.expand(mf, select)


def test_select_over_the_cap_still_checks_the_axis_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mf = load(tmp_path, TRICKY)
    monkeypatch.setattr(matrix, "MAX_CELLS", 8)  # the whole matrix: 12 combinations and 7 includes

    with pytest.raises(UserError, match=r"'pyton' is not an axis of .*axes: debian, extra, numpy, os, python"):
        matrix.expand(mf, ["pyton=3.9"])
    with pytest.raises(UserError, match=r"--select python=3\.12 matches no cell"):
        matrix.expand(mf, ["python=3.12"])


def test_template_error_below_an_alias_gives_the_anchors_line(tmp_path: Path) -> None:
    mf = load(
        tmp_path,
        """\
        matrix: {python: ['3.11']}
        tests:
          args: &a
            - "-q"
            - "{nope}"
        image:
          install: *a
        """,
    )

    with pytest.raises(ConfigError) as info:
        matrix.expand(mf)

    assert str(info.value).startswith(f"{mf.path}:5: image.install[1]: '{{nope}}' is not an axis of cell python-3.11")
