"""runner/dependencies.py: what a project declares for its cells (PEP 621 dependencies and extras, PEP 735 groups),
and how a matrix file asks for it (image.project-deps, image.extras, image.groups). Pure logic, no Docker."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from runner import cli, config, dependencies, images
from runner.errors import ExitCode

PYPROJECT = """\
[build-system]
requires = ["setuptools>=64"]
build-backend = "setuptools.build_meta"

[project]
name = "Demo_Pkg"
version = "1.0"
dependencies = ["numpy>=1.24", "tomli; python_version < '3.11'"]

[project.optional-dependencies]
Test = ["pytest-timeout", "hypothesis>=6"]
plots = ["matplotlib"]
all = ["demo-pkg[test,plots]", "rich"]

[dependency-groups]
lint = ["ruff"]
dev = [{include-group = "lint"}, "pytest-xdist", "numpy>=1.24"]
"""


def project(tmp_path: Path, text: str = PYPROJECT) -> Path:
    root = tmp_path / "proj"
    root.mkdir(exist_ok=True)
    (root / "pyproject.toml").write_text(text)
    return root


def test_the_project_dependencies_come_first_then_extras_then_groups_each_line_once(tmp_path: Path) -> None:
    got = dependencies.requirements(project(tmp_path), extras=("test",), groups=("dev",))

    assert got == (
        "numpy>=1.24",
        "tomli; python_version < '3.11'",  # markers stay: the cell's own Python decides
        "pytest-timeout",
        "hypothesis>=6",
        "ruff",  # include-group first, in place
        "pytest-xdist",
    )


def test_an_extra_naming_the_project_itself_stands_for_those_extras(tmp_path: Path) -> None:
    got = dependencies.requirements(project(tmp_path), extras=("all",), dependencies=False)

    assert got == ("pytest-timeout", "hypothesis>=6", "matplotlib", "rich")


def test_names_of_extras_and_groups_compare_normalized(tmp_path: Path) -> None:
    assert dependencies.requirements(project(tmp_path), extras=("TEST",), dependencies=False) == (
        "pytest-timeout",
        "hypothesis>=6",
    )
    assert dependencies.requirements(project(tmp_path), groups=("Lint",), dependencies=False) == ("ruff",)


def test_dynamic_dependencies_or_no_pyproject_add_nothing(tmp_path: Path) -> None:
    dynamic = '[project]\nname = "d"\nversion = "1"\ndynamic = ["dependencies"]\ndependencies = ["ignored"]\n'
    assert dependencies.requirements(project(tmp_path, dynamic)) == ()
    assert dependencies.requirements(tmp_path) == ()  # a setup.py project: its backend's to compute
    assert dependencies.requirements(project(tmp_path, "[tool.black]\n")) == ()
    assert dependencies.requirements(project(tmp_path, "not toml = = =")) == ()


@pytest.mark.parametrize(
    ("text", "extras", "groups", "key", "words"),
    [
        (PYPROJECT, ("docs",), (), "image.extras", ["'docs' is not an extra", "declares: all, plots, test"]),
        (PYPROJECT, (), ("docs",), "image.groups", ["'docs' is not a dependency group", "declares: dev, lint"]),
        ("[tool.x]\n", ("test",), (), "image.extras", ["no [project] table", "list their packages in image.install"]),
        (
            '[project]\nname = "d"\ndynamic = ["optional-dependencies"]\n',
            ("test",),
            (),
            "image.extras",
            ["dynamic", "image.install"],
        ),
        ('[dependency-groups]\na = [{include-group = "b"}]\n', (), ("a",), "image.groups", ["includes 'b'"]),
        (
            '[dependency-groups]\na = [{include-group = "b"}]\nb = [{include-group = "a"}]\n',
            (),
            ("a",),
            "image.groups",
            ["includes itself", "a -> b"],
        ),
    ],
    ids=["unknown-extra", "unknown-group", "no-project-table", "dynamic-extras", "missing-include", "group-cycle"],
)
def test_what_the_project_does_not_declare_is_an_error_naming_the_key(
    tmp_path: Path, text: str, extras: tuple[str, ...], groups: tuple[str, ...], key: str, words: list[str]
) -> None:
    with pytest.raises(dependencies.DependencyError) as err:
        dependencies.requirements(project(tmp_path, text), extras=extras, groups=groups)

    assert err.value.key == key
    for word in words:
        assert word in str(err.value)


def matrix(tmp_path: Path, image: str = "", tests: str = "") -> Path:
    project(tmp_path)
    path = tmp_path / "m.yaml"
    path.write_text(
        textwrap.dedent(
            f"""\
            name: m
            project: proj
            matrix: {{python: ["3.11"]}}
            image: {{install: ["numpy=={{python}}"]{image}}}
            tests: {{shards: 1{tests}}}
            """
        )
    )
    return path


def test_a_matrix_installs_the_project_dependencies_by_default_next_to_its_own_lines(tmp_path: Path) -> None:
    mf = config.load(matrix(tmp_path))

    assert mf.requires == ("numpy>=1.24", "tomli; python_version < '3.11'")
    from runner import matrix as expand

    cells = expand.expand(mf)
    spec = images.specs_for(mf, cells)[cells[0].id]
    # one install: the cell's pin and the project's range are resolved together
    assert spec.install == ("numpy==3.11",)
    assert {"numpy>=1.24", "setuptools>=64"} <= set(spec.extra)


def test_project_deps_false_extras_and_groups(tmp_path: Path) -> None:
    mf = config.load(matrix(tmp_path, ", project-deps: false, extras: [test], groups: [lint]"))

    assert mf.requires == ("pytest-timeout", "hypothesis>=6", "ruff")


def test_a_project_that_is_not_installed_brings_its_groups_only(tmp_path: Path) -> None:
    """PEP 735 groups are for projects that are no package too; dependencies and extras are a package's."""
    mf = config.load(matrix(tmp_path, ", extras: [test], groups: [lint]", ", install-project: false"))

    assert mf.requires == ("ruff",)


@pytest.mark.parametrize(
    ("image", "key", "words"),
    [
        (", extras: [docs]", "image.extras", ["'docs' is not an extra of the project"]),
        (", groups: [docs]", "image.groups", ["'docs' is not a dependency group"]),
        (", extras: test", "image.extras", ["must be a list of strings, not one string"]),
        (", project-deps: maybe", "image.project-deps", ["must be true or false"]),
    ],
    ids=["unknown-extra", "unknown-group", "extras-not-a-list", "project-deps-not-a-bool"],
)
def test_bad_input_is_one_line_naming_file_and_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], image: str, key: str, words: list[str]
) -> None:
    path = matrix(tmp_path, image)

    code = cli.main(["run", str(path), "--dry-run"])

    err = capsys.readouterr().err.strip()
    assert code == ExitCode.USAGE
    assert len(err.splitlines()) == 1, err
    assert str(path) in err
    assert key in err
    assert "Traceback" not in err
    for word in words:
        assert word in err
