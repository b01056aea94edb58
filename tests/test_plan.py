"""runner/plan.py: pytest's own file discovery from the project's config, weights, and LPT shard planning."""

from __future__ import annotations

import itertools
import random
import textwrap
from pathlib import Path

import pytest

from runner import plan, pytest_config, source
from runner.source import SourceTree
from tests.conftest import CELL


def make_tree(root: Path, files: dict[str, str]) -> SourceTree:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text), encoding="utf-8")
    return source.snapshot(root)


def write(root: Path, name: str, text: str) -> None:
    (root / name).write_text(textwrap.dedent(text), encoding="utf-8")


# --- read_pytest_settings -------------------------------------------------------------------------------------------


def test_no_config_gives_pytest_defaults(tmp_path: Path) -> None:
    settings = pytest_config.read_pytest_settings(tmp_path)

    assert settings == pytest_config.PytestSettings()
    assert settings.python_files == ("test_*.py", "*_test.py")
    assert settings.configfile == ""


def test_pyproject_ini_options(tmp_path: Path) -> None:
    write(
        tmp_path,
        "pyproject.toml",
        """\
        [project]
        name = "p"

        [tool.pytest.ini_options]
        python_files = ["check_*.py", "*_spec.py"]
        testpaths = ["tests", "integration"]
        norecursedirs = ["fixtures", ".*"]
        addopts = "-ra --doctest-modules --doctest-glob=*.rst"
        """,
    )

    settings = pytest_config.read_pytest_settings(tmp_path)

    assert settings == pytest_config.PytestSettings(
        python_files=("check_*.py", "*_spec.py"),
        testpaths=("tests", "integration"),
        norecursedirs=("fixtures", ".*"),
        doctest_modules=True,
        doctest_glob=("*.rst",),
        configfile="pyproject.toml",
        addopts=("-ra", "--doctest-modules", "--doctest-glob=*.rst"),
    )


def test_pyproject_native_pytest_table(tmp_path: Path) -> None:
    # pytest 9's [tool.pytest] table takes native TOML types
    write(
        tmp_path,
        "pyproject.toml",
        """\
        [tool.pytest]
        testpaths = ["t"]
        addopts = ["-ra", "--doctest-modules"]
        """,
    )

    settings = pytest_config.read_pytest_settings(tmp_path)

    assert settings.testpaths == ("t",)
    assert settings.doctest_modules is True
    assert settings.configfile == "pyproject.toml"


def test_pytest_ini(tmp_path: Path) -> None:
    write(
        tmp_path,
        "pytest.ini",
        """\
        [pytest]
        python_files =
            check_*.py
            *_check.py
        testpaths = tests
        norecursedirs = data
        """,
    )

    settings = pytest_config.read_pytest_settings(tmp_path)

    assert settings.python_files == ("check_*.py", "*_check.py")
    assert settings.testpaths == ("tests",)
    assert settings.norecursedirs == ("data",)
    assert settings.configfile == "pytest.ini"


def test_setup_cfg_tool_pytest_section(tmp_path: Path) -> None:
    write(
        tmp_path,
        "setup.cfg",
        """\
        [metadata]
        name = p

        [tool:pytest]
        testpaths = src/tests
        addopts = --doctest-modules
        """,
    )

    settings = pytest_config.read_pytest_settings(tmp_path)

    assert settings.testpaths == ("src/tests",)
    assert settings.doctest_modules is True
    assert settings.configfile == "setup.cfg"


def test_tox_ini_pytest_section(tmp_path: Path) -> None:
    write(
        tmp_path,
        "tox.ini",
        """\
        [tox]
        envlist = py311

        [pytest]
        python_files = t_*.py
        """,
    )

    settings = pytest_config.read_pytest_settings(tmp_path)

    assert settings.python_files == ("t_*.py",)
    assert settings.configfile == "tox.ini"


def test_empty_pytest_ini_wins_over_pyproject(tmp_path: Path) -> None:
    # pytest: "pytest.ini files take precedence over other files, even when empty"
    write(tmp_path, "pytest.ini", "")
    write(tmp_path, "pyproject.toml", '[tool.pytest.ini_options]\ntestpaths = ["tests"]\n')

    settings = pytest_config.read_pytest_settings(tmp_path)

    assert settings.configfile == "pytest.ini"
    assert settings.testpaths == ()


def test_files_without_a_pytest_section_are_skipped(tmp_path: Path) -> None:
    write(tmp_path, "pyproject.toml", '[project]\nname = "p"\n')
    write(tmp_path, "tox.ini", "[tox]\nenvlist = py311\n")
    write(tmp_path, "setup.cfg", "[tool:pytest]\ntestpaths = found\n")

    settings = pytest_config.read_pytest_settings(tmp_path)

    assert settings.configfile == "setup.cfg"
    assert settings.testpaths == ("found",)


def test_pyproject_wins_over_tox_and_setup_cfg(tmp_path: Path) -> None:
    write(tmp_path, "pyproject.toml", '[tool.pytest.ini_options]\ntestpaths = ["a"]\n')
    write(tmp_path, "tox.ini", "[pytest]\ntestpaths = b\n")
    write(tmp_path, "setup.cfg", "[tool:pytest]\ntestpaths = c\n")

    assert pytest_config.read_pytest_settings(tmp_path).testpaths == ("a",)


def test_example_project_settings() -> None:
    root = Path(__file__).parent / "projects" / "example"

    settings = pytest_config.read_pytest_settings(root)

    assert settings.configfile == "pyproject.toml"
    assert settings.testpaths == ("tests",)
    assert settings.doctest_modules is False


# --- discover -------------------------------------------------------------------------------------------------------

LAYOUT = {
    "setup.py": "",
    "src/pkg/__init__.py": "",
    "src/pkg/core.py": "def f():\n    '''\n    >>> f()\n    1\n    '''\n    return 1\n",
    "tests/__init__.py": "",
    "tests/conftest.py": "",
    "tests/helpers.py": "",
    "tests/test_a.py": "def test_a():\n    pass\n",
    "tests/b_test.py": "def test_b():\n    pass\n",
    "tests/sub/test_c.py": "def test_c():\n    pass\n",
    "tests/testdoc.txt": ">>> 1\n1\n",
    "tests/fixtures/test_fixture_data.py": "",
    "tests/_darcs/test_d.py": "",
    "tests/.hidden/test_h.py": "",
    "tests/pkg.egg/test_e.py": "",
    "tests/CVS/test_cvs.py": "",
    "tests/test_skipped_at_import.py": "import pytest\n\npytest.importorskip('no_such_module')\n",
    "other/test_other.py": "",
}


@pytest.fixture
def tree(tmp_path: Path) -> SourceTree:
    return make_tree(tmp_path, LAYOUT)


def test_discover_default_patterns_and_norecursedirs(tree: SourceTree) -> None:
    files = pytest_config.discover(tree, [], pytest_config.PytestSettings())

    assert files == [
        "other/test_other.py",
        "tests/b_test.py",
        "tests/fixtures/test_fixture_data.py",
        "tests/sub/test_c.py",
        "tests/test_a.py",
        "tests/test_skipped_at_import.py",
        "tests/testdoc.txt",
    ]


def test_discover_lists_a_file_skipped_whole_at_import(tree: SourceTree) -> None:
    assert "tests/test_skipped_at_import.py" in pytest_config.discover(tree, ["tests"], pytest_config.PytestSettings())


def test_discover_never_lists_conftest_or_helpers(tree: SourceTree) -> None:
    files = pytest_config.discover(tree, [], pytest_config.PytestSettings(doctest_modules=True))

    assert "tests/conftest.py" not in files
    assert "tests/helpers.py" in files  # only because of --doctest-modules


def test_discover_testpaths_limit_the_search(tree: SourceTree) -> None:
    files = pytest_config.discover(tree, [], pytest_config.PytestSettings(testpaths=("tests/sub", "other")))

    assert files == ["other/test_other.py", "tests/sub/test_c.py"]


def test_discover_paths_override_testpaths(tree: SourceTree) -> None:
    files = pytest_config.discover(tree, ["other"], pytest_config.PytestSettings(testpaths=("tests",)))

    assert files == ["other/test_other.py"]


def test_discover_trailing_slash_in_paths(tree: SourceTree) -> None:
    assert pytest_config.discover(tree, ["tests/sub/"], pytest_config.PytestSettings()) == ["tests/sub/test_c.py"]


def test_discover_explicit_file_is_taken_whatever_its_name(tree: SourceTree) -> None:
    assert pytest_config.discover(tree, ["tests/helpers.py"], pytest_config.PytestSettings()) == ["tests/helpers.py"]


def test_discover_custom_python_files(tree: SourceTree) -> None:
    files = pytest_config.discover(tree, ["tests"], pytest_config.PytestSettings(python_files=("*_test.py",)))

    assert files == ["tests/b_test.py", "tests/testdoc.txt"]


def test_discover_custom_norecursedirs_replace_the_defaults(tree: SourceTree) -> None:
    files = pytest_config.discover(tree, ["tests"], pytest_config.PytestSettings(norecursedirs=("fixtures",)))

    assert "tests/fixtures/test_fixture_data.py" not in files
    assert "tests/.hidden/test_h.py" in files
    assert "tests/_darcs/test_d.py" in files


def test_discover_doctest_modules_takes_every_python_file_but_setup_and_conftest(tree: SourceTree) -> None:
    files = pytest_config.discover(tree, [], pytest_config.PytestSettings(doctest_modules=True))

    assert "src/pkg/core.py" in files
    assert "src/pkg/__init__.py" in files
    assert "tests/__init__.py" in files
    assert "setup.py" not in files
    assert "tests/conftest.py" not in files
    assert "tests/.hidden/test_h.py" not in files  # norecursedirs still apply


def test_discover_with_settings_read_from_the_project(tmp_path: Path) -> None:
    tree = make_tree(
        tmp_path,
        {
            "pyproject.toml": '[tool.pytest.ini_options]\ntestpaths = ["tests"]\npython_files = ["check_*.py"]\n',
            "tests/check_one.py": "",
            "tests/test_not_mine.py": "",
            "scripts/check_two.py": "",
        },
    )

    files = pytest_config.discover(tree, [], pytest_config.read_pytest_settings(tmp_path))

    assert files == ["tests/check_one.py"]


def test_discover_dot_slash_paths(tree: SourceTree) -> None:
    assert pytest_config.discover(tree, ["./tests/sub"], pytest_config.PytestSettings()) == ["tests/sub/test_c.py"]


def test_discover_testpaths_wildcards(tmp_path: Path) -> None:
    tree = make_tree(tmp_path, {"src/a/tests/test_a.py": "", "src/b/tests/test_b.py": "", "src/c/test_c.py": ""})

    files = pytest_config.discover(tree, [], pytest_config.PytestSettings(testpaths=("src/*/tests",)))

    assert files == ["src/a/tests/test_a.py", "src/b/tests/test_b.py"]


# --- estimate -------------------------------------------------------------------------------------------------------


def test_estimate_counts_test_definitions_without_history(tmp_path: Path) -> None:
    tree = make_tree(
        tmp_path,
        {
            "test_three.py": """\
                def test_a():
                    pass

                async def test_b():
                    pass

                class T:
                    def test_c(self):
                        pass
                """,
            "test_none.py": "import pytest\npytest.importorskip('x')\n",
            "doc.txt": ">>> 1\n1\n>>> 2\n2\n",
        },
    )

    weights = plan.estimate(tree, ["test_three.py", "test_none.py", "doc.txt"])

    assert weights == [
        plan.TestFile("test_three.py", 3.0),
        plan.TestFile("test_none.py", 1.0),  # at least one unit, never zero
        plan.TestFile("doc.txt", 2.0),
    ]


def test_estimate_uses_history_and_scales_unknown_files_to_it(tmp_path: Path) -> None:
    two = "def test_a():\n    pass\n\ndef test_b():\n    pass\n"
    tree = make_tree(tmp_path, {"test_known.py": two, "test_new.py": two + "def test_c():\n    pass\n"})

    weights = plan.estimate(tree, ["test_known.py", "test_new.py"], {"test_known.py": 10.0, "gone.py": 99.0})

    # 10 s over 2 known tests = 5 s per test; the new file has 3 tests
    assert weights == [plan.TestFile("test_known.py", 10.0), plan.TestFile("test_new.py", 15.0)]


def test_estimate_missing_file_counts_as_one(tmp_path: Path) -> None:
    tree = make_tree(tmp_path, {"test_a.py": ""})

    assert plan.estimate(tree, ["test_missing.py"]) == [plan.TestFile("test_missing.py", 1.0)]


# --- plan_lpt -------------------------------------------------------------------------------------------------------


def weights(values: list[float]) -> list[plan.TestFile]:
    return [plan.TestFile(f"tests/test_{i:03d}.py", w) for i, w in enumerate(values)]


def loads(shards: list[plan.Shard], files: list[plan.TestFile]) -> list[float]:
    by_path = {f.path: f.weight for f in files}
    return [sum(by_path[p] for p in s.files) for s in shards]


def optimal_makespan(values: list[float], m: int) -> float:
    best = float("inf")
    for assignment in itertools.product(range(m), repeat=len(values)):
        bins = [0.0] * m
        for w, b in zip(values, assignment, strict=True):
            bins[b] += w
        best = min(best, max(bins))
    return best


@pytest.mark.parametrize("count", [1, 2, 3, 5])
def test_every_file_in_exactly_one_shard(count: int) -> None:
    files = weights([random.Random(count).uniform(0.1, 50) for _ in range(23)])

    shards = plan.plan_lpt(CELL, files, count)

    placed = [p for s in shards for p in s.files]
    assert sorted(placed) == sorted(f.path for f in files)
    assert len(placed) == len(set(placed))
    assert [(s.index, s.count, s.cell_id) for s in shards] == [(i, count, CELL.id) for i in range(1, count + 1)]
    assert all(s.files for s in shards)
    assert [s.predicted for s in shards] == pytest.approx(loads(shards, files))


@pytest.mark.parametrize("seed", range(12))
def test_lpt_is_within_graham_bound_of_optimal(seed: int) -> None:
    rng = random.Random(seed)
    m = rng.choice([2, 3])
    values = [float(rng.randint(1, 30)) for _ in range(rng.randint(m + 1, 9))]
    files = weights(values)

    makespan = max(loads(plan.plan_lpt(CELL, files, m), files))

    # Graham (1969): LPT <= (4/3 - 1/(3m)) * OPT
    assert makespan <= (4 / 3 - 1 / (3 * m)) * optimal_makespan(values, m) + 1e-9


@pytest.mark.parametrize("seed", range(5))
def test_lpt_balances_many_files(seed: int) -> None:
    rng = random.Random(seed)
    values = [rng.uniform(0.5, 20.0) for _ in range(200)]
    files = weights(values)
    m = 7

    makespan = max(loads(plan.plan_lpt(CELL, files, m), files))

    # any greedy list schedule: <= sum/m + (1 - 1/m) * max; LPT on many small jobs is far tighter
    biggest = max(values)
    lower = max(sum(values) / m, biggest)
    assert makespan <= sum(values) / m + (1 - 1 / m) * biggest
    assert makespan <= 4 / 3 * lower


def test_lpt_classic_instance() -> None:
    # 2 machines, weights 3 3 2 2 2: LPT gives 7 (optimal is 6), the textbook worst case for m=2
    files = weights([3, 3, 2, 2, 2])

    shards = plan.plan_lpt(CELL, files, 2)

    assert sorted(loads(shards, files)) == [5.0, 7.0]


def test_plan_is_deterministic_and_independent_of_input_order() -> None:
    files = weights([5, 5, 5, 3, 3, 1, 1, 1, 1, 8])  # ties on purpose
    shuffled = list(files)
    random.Random(7).shuffle(shuffled)

    first = plan.plan_lpt(CELL, files, 3)

    assert plan.plan_lpt(CELL, files, 3) == first
    assert plan.plan_lpt(CELL, shuffled, 3) == first


def test_more_shards_than_files() -> None:
    files = weights([1.0, 2.0])

    shards = plan.plan_lpt(CELL, files, 8)

    assert len(shards) == 2
    assert {s.count for s in shards} == {2}
    assert sorted(s.files for s in shards) == [("tests/test_000.py",), ("tests/test_001.py",)]


def test_shard_ids_name_the_cell() -> None:
    shards = plan.plan_lpt(CELL, weights([1, 1, 1]), 3)

    assert [s.id for s in shards] == [
        "python-3.11/shard-1of3",
        "python-3.11/shard-2of3",
        "python-3.11/shard-3of3",
    ]
    assert shards[0].slug == "shard-1of3"


# --- options no shard can run with, refused before any container starts ------------------------------------------


def _conflict_project(tmp_path: Path, addopts: str = "") -> Path:
    project = tmp_path / "proj"
    (project / "tests").mkdir(parents=True)
    (project / "tests" / "test_x.py").write_text("def test_x():\n    pass\n")
    if addopts:
        (project / "pytest.ini").write_text(f"[pytest]\naddopts = {addopts}\n")
    return project


@pytest.mark.parametrize(
    "addopts", ["--collect-only", "-q --co", "--pdb", "-p no:matrix_run_plugin", "-pno:matrix_run_plugin"]
)
def test_an_addopts_option_that_runs_no_test_is_refused_in_one_line(tmp_path: Path, addopts: str) -> None:
    from runner.errors import UserError

    project = _conflict_project(tmp_path, addopts)
    matrix = tmp_path / "m.yaml"
    matrix.write_text(f"project: {project}\nmatrix: {{python: ['3.11']}}\n")
    with pytest.raises(UserError, match=r"pytest\.ini: addopts has .*every shard would fail") as info:
        plan.plan_matrix(str(matrix), [])
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("key", "value"), [("args", "['--collect-only']"), ("command", "[python, -m, pytest, --trace]")]
)
def test_a_test_command_option_that_runs_no_test_is_refused_naming_the_key(
    tmp_path: Path, key: str, value: str
) -> None:
    from runner.errors import ConfigError

    project = _conflict_project(tmp_path)
    matrix = tmp_path / "m.yaml"
    matrix.write_text(f"project: {project}\nmatrix: {{python: ['3.11']}}\ntests:\n  {key}: {value}\n")
    with pytest.raises(ConfigError, match=rf"m\.yaml:4: tests\.{key}: --"):
        plan.plan_matrix(str(matrix), [])


def test_options_that_only_change_how_tests_run_are_not_conflicts() -> None:
    assert (
        pytest_config.conflicting_option(["-x", "-q", "-p", "no:cacheprovider", "-n", "2", "--junitxml=o.xml"]) is None
    )


def test_a_file_measured_at_zero_says_nothing_of_what_an_unmeasured_file_costs() -> None:
    """A file whose tests are all deselected is measured at 0 s; the mean cost of a test, which weighs files the
    history does not know, comes from the files that ran tests."""
    tree = SourceTree(Path("."), (), b"", "d")
    counts = {"a.py": 2, "deselected.py": 100, "new.py": 4}

    weights = plan.estimate(tree, list(counts), {"a.py": 2.0, "deselected.py": 0.0}, counts=counts)

    assert {f.path: f.weight for f in weights} == {"a.py": 2.0, "deselected.py": 0.0, "new.py": 4.0}
