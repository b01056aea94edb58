"""runner/config.py: matrix files load into frozen dataclasses; every bad input is one line naming file, key, line."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from runner import cli, config
from runner.errors import ConfigError, ExitCode

MATRICES = Path(__file__).parent / "matrices"


def write(tmp_path: Path, text: str, name: str = "m.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


# --- valid files -----------------------------------------------------------------------------------------------


def test_design_example_loads_as_written() -> None:
    mf = config.load(MATRICES / "design-example.yaml")

    assert mf.name == "demo"
    assert mf.project == MATRICES.resolve()
    assert mf.axes == (("python", ("3.9", "3.11", "3.13")), ("numpy", ("1.26.4", "2.2.6")))
    assert mf.exclude == ((("python", "3.9"), ("numpy", "2.2.6")), (("python", "3.13"), ("numpy", "1.26.4")))
    assert mf.include == (
        (("python", "3.9"), ("debian", "bullseye")),
        (("python", "3.11"), ("debian", "bookworm")),
        (("python", "3.13"), ("debian", "trixie")),
    )
    assert mf.image.base == "matrix-run/debian:{debian}"
    assert mf.image.bootstrap == "{debian}"
    assert mf.image.install == ("numpy=={numpy}", "pytest-timeout")
    assert mf.tests.command == ("python", "-m", "pytest")
    assert mf.tests.paths == ("tests",)
    assert mf.tests.shards == 3
    assert mf.tests.timeout == 900.0
    assert mf.retries == config.RetriesConfig(flaky=2, infra=2)
    assert mf.strategy == config.StrategyConfig(fail_fast=False, max_parallel=0)
    assert mf.resources == config.ResourcesConfig(cpus="1", memory="2g", gpus="0")


def test_minimal_file_gets_the_documented_defaults(tmp_path: Path) -> None:
    path = write(tmp_path, 'matrix: {python: ["3.11"]}\n', name="nightly.yaml")

    mf = config.load(path)

    assert mf.name == "nightly"  # the file's stem
    assert mf.project == tmp_path.resolve()  # "." relative to the file
    assert mf.image.base == "python:{python}-slim"
    assert mf.image.bootstrap is None
    assert mf.tests.command == ("python", "-m", "pytest")
    assert mf.tests.shards == 1
    assert mf.retries == config.RetriesConfig(flaky=0, infra=2)
    assert mf.strategy.fail_fast is True
    assert mf.coverage.enabled is False
    assert mf.include == ()
    assert mf.exclude == ()


def test_project_is_relative_to_the_matrix_file_not_the_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "proj").mkdir()
    (tmp_path / "ci").mkdir()
    path = write(tmp_path / "ci", "project: ../proj\nmatrix: {python: ['3.11']}\n")
    monkeypatch.chdir(tmp_path / "proj")

    assert config.load(path).project == (tmp_path / "proj").resolve()


def test_matrix_values_keep_their_text() -> None:
    mf = config.load(MATRICES / "unquoted-versions.yaml")

    assert dict(mf.axes) == {"python": ("3.10", "3.9", "3.11"), "torch": ("2.0", "2.13.0")}
    assert mf.include == ((("python", "3.10"), ("extra", "1.20")),)


def test_yaml_11_booleans_and_ints_keep_their_text(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        matrix:
          flag: [yes, no, true]
          cuda: [12.0, 011]
          exclude:
            - {flag: no, cuda: 12.0}
        """,
    )

    mf = config.load(path)

    assert dict(mf.axes) == {"flag": ("yes", "no", "true"), "cuda": ("12.0", "011")}
    assert mf.exclude == ((("flag", "no"), ("cuda", "12.0")),)


def test_shards_auto_and_coverage_shorthand(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        matrix: {python: ["3.11"]}
        tests: {shards: auto}
        coverage: true
        """,
    )

    mf = config.load(path)

    assert mf.tests.shards == "auto"
    assert mf.coverage.enabled is True


def test_resources_may_be_templates(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        matrix: {gpus: [0, 1], mem: [1g, 512m]}
        resources: {cpus: 2.5, memory: "{mem}", gpus: "{gpus}"}
        """,
    )

    assert config.load(path).resources == config.ResourcesConfig(cpus="2.5", memory="{mem}", gpus="{gpus}")


def test_loaded_file_is_frozen() -> None:
    mf = config.load(MATRICES / "design-example.yaml")

    with pytest.raises(AttributeError):
        mf.name = "other"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("text", "expected"),
    [("2g", 2 * 1024**3), ("512m", 512 * 1024**2), ("1.5GiB", int(1.5 * 1024**3)), ("100", 100), ("", None)],
)
def test_parse_memory(text: str, expected: int | None) -> None:
    assert config.parse_memory(text) == expected


# --- bad files: one line naming the file, the key path, the line and the fix -----------------------------------

BAD_FILES = [
    pytest.param(
        """\
        name: x
        matrix:
          python: ['3.11']
           bad: indent
        """,
        "",
        4,
        ["malformed YAML", "fix the syntax"],
        id="malformed-yaml-indent",
    ),
    pytest.param(
        "name: x\nmatrix:\n\tpython: ['3.11']\n",
        "",
        3,
        ["malformed YAML", "'\\t'", "fix the syntax"],
        id="malformed-yaml-tab",
    ),
    pytest.param(
        """\
        matrix:
          python: ['3.11']
        retires: {flaky: 1}
        """,
        "retires",
        3,
        ["unknown key 'retires'", "did you mean 'retries'?"],
        id="unknown-top-level-key",
    ),
    pytest.param(
        """\
        matrix:
          python: ['3.11']
        tests:
          shard: 2
        """,
        "tests.shard",
        4,
        ["unknown key 'shard'", "did you mean 'shards'?"],
        id="unknown-nested-key",
    ),
    pytest.param(
        """\
        matrix:
          python: ['3.11']
        strategy: {fail_fast: false}
        """,
        "strategy.fail_fast",
        3,
        ["unknown key 'fail_fast'", "did you mean 'fail-fast'?"],
        id="underscore-for-dash",
    ),
    pytest.param(
        """\
        matrix:
          python: ['3.11']
        tests:
          zzz: 1
        """,
        "tests.zzz",
        4,
        ["unknown key 'zzz'", "known keys: command, args, paths, shards"],
        id="unknown-key-lists-known-keys",
    ),
    pytest.param(
        """\
        matrix:
          python: ['3.11']
        tests:
          shards: two
        """,
        "tests.shards",
        4,
        ["must be an integer >= 1", "'two'"],
        id="shards-not-an-int",
    ),
    pytest.param(
        """\
        matrix:
          python: ['3.11']
        tests:
          shards: 0
        """,
        "tests.shards",
        4,
        ["must be >= 1 (got 0)"],
        id="shards-zero",
    ),
    pytest.param(
        """\
        matrix:
          python: ['3.11']
        tests:
          timeout: -1
        """,
        "tests.timeout",
        4,
        ["must be a number of seconds > 0", "(got -1)"],
        id="negative-timeout",
    ),
    pytest.param(
        """\
        matrix:
          python: ['3.11']
        image:
          install: numpy
        """,
        "image.install",
        4,
        ["must be a list of strings, not one string", "write install: ['numpy']"],
        id="install-is-a-string",
    ),
    pytest.param(
        """\
        matrix:
          python: ['3.11']
        retries: {flaky: yes}
        """,
        "retries.flaky",
        3,
        ["must be an integer >= 0", "(got True)"],
        id="retries-bool",
    ),
    pytest.param(
        """\
        matrix:
          python: ['3.11']
        image: numpy
        """,
        "image",
        3,
        ["must be a mapping (got str)", "write 'image: {...}'"],
        id="section-not-a-mapping",
    ),
    pytest.param("matrix: {}\n", "matrix", 1, ["is empty", "give at least one axis"], id="empty-matrix"),
    pytest.param("name: x\n", "matrix", None, ["missing", "add e.g. 'matrix:"], id="no-matrix"),
    pytest.param(
        """\
        name: x
        matrix:
          python: []
        """,
        "matrix.python",
        3,
        ["is an empty list", "an empty axis makes an empty matrix"],
        id="empty-axis",
    ),
    pytest.param(
        """\
        matrix:
          python: '3.11'
        """,
        "matrix.python",
        2,
        ["must be a list of values", "write python: ['3.11']"],
        id="axis-not-a-list",
    ),
    pytest.param(
        """\
        matrix:
          python: ['3.11', '3.11']
        """,
        "matrix.python",
        2,
        ["lists the same value twice"],
        id="duplicate-axis-value",
    ),
    pytest.param(
        """\
        matrix:
          python: ['3.11', '3.13']
          exclude:
            - {pyton: '3.11'}
        """,
        "matrix.exclude[0].pyton",
        4,
        ["'pyton' is not an axis of the matrix", "axes are: python"],
        id="exclude-unknown-axis",
    ),
    pytest.param(
        """\
        matrix:
          python: ["3.11; rm -rf /"]
        """,
        "matrix.python[0]",
        2,
        ["'3.11; rm -rf /' is not allowed", "use letters, digits and . _ + - * only"],
        id="unsafe-axis-value",
    ),
    pytest.param(
        """\
        matrix:
          python: ['3.11']
          include:
            - {python: '3.11', extra: '$(id)'}
        """,
        "matrix.include[0].extra",
        4,
        ["'$(id)' is not allowed", "use letters, digits"],
        id="unsafe-include-value",
    ),
    pytest.param(
        """\
        matrix:
          "py thon": ['3.11']
        """,
        "matrix.py thon",
        2,
        ["axis name 'py thon' must be letters, digits, _ and -"],
        id="unsafe-axis-name",
    ),
    pytest.param(
        """\
        name: ../../etc
        matrix:
          python: ['3.11']
        """,
        "name",
        1,
        ["'../../etc' must be letters, digits, . _ -", "names output folders"],
        id="unsafe-name",
    ),
    pytest.param(
        """\
        project: no-such-folder
        matrix:
          python: ['3.11']
        """,
        "project",
        1,
        ["project folder", "no-such-folder", "does not exist", "set it relative to the matrix file"],
        id="missing-project",
    ),
    pytest.param(
        """\
        matrix:
          python: ['3.11']
        tests:
          paths: ["../elsewhere"]
        """,
        "tests.paths[0]",
        4,
        ["'../elsewhere' must be a path inside the project"],
        id="test-path-outside-project",
    ),
    pytest.param(
        """\
        matrix:
          python: ['3.11']
        resources:
          memory: lots
        """,
        "resources.memory",
        4,
        ["'lots' is not a memory size", "write e.g. '2g' or '512m'"],
        id="memory-lots",
    ),
    pytest.param(
        """\
        matrix:
          python: ['3.11']
        resources:
          cpus: many
        """,
        "resources.cpus",
        4,
        ["'many' must be a number >= 0"],
        id="cpus-not-a-number",
    ),
    pytest.param(
        """\
        matrix:
          python: ['3.11']
        tests:
          network: host
        """,
        "tests.network",
        4,
        ["must be 'bridge' or 'none'", "'host'"],
        id="network-host",
    ),
    pytest.param("- just\n- a list\n", "", 1, ["must be a YAML mapping", "'matrix' key"], id="not-a-mapping"),
]


@pytest.mark.parametrize(("text", "key", "line", "pieces"), BAD_FILES)
def test_bad_file_is_one_line_naming_file_key_line_and_fix(
    tmp_path: Path, text: str, key: str, line: int | None, pieces: list[str]
) -> None:
    path = write(tmp_path, text, name="ci.yaml")

    with pytest.raises(ConfigError) as info:
        config.load(path)

    message = str(info.value)
    where = f"{path}:{line}" if line else str(path)
    prefix = f"{where}: {key}: " if key else f"{where}: "
    assert message.startswith(prefix), message
    assert "\n" not in message
    for piece in pieces:
        assert piece in message, message
    assert (info.value.file, info.value.key, info.value.line) == (str(path), key, line)
    assert info.value.exit_code == ExitCode.USAGE


def test_missing_matrix_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"

    with pytest.raises(ConfigError, match=r"nope\.yaml: matrix file not found; check the path$"):
        config.load(path)


def test_duplicate_key_is_an_error(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        matrix:
          python: ['3.9', '3.11']
          python: ['3.13']
        """,
    )

    with pytest.raises(ConfigError, match=r":3: matrix\.python: "):
        config.load(path)


# --- the CLI turns a ConfigError into one stderr line and exit code 4 ---------------------------------------------


def test_cli_list_reports_config_error_as_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "matrix:\n  python: ['3.11']\nretires: {flaky: 1}\n")

    code = cli.main(["list", str(path)])

    out, err = capsys.readouterr()
    assert code == 4
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("matrix-run: error:")
    assert f"{path}:3: retires: unknown key 'retires'; did you mean 'retries'?" in lines[0]
    assert "Traceback" not in err


def test_cli_list_prints_the_cells_of_a_good_file(capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["list", str(MATRICES / "design-example.yaml")])

    out, err = capsys.readouterr()
    assert code == 0
    assert err == ""
    assert [line.split("\t")[0] for line in out.splitlines()] == [
        "python-3.9_numpy-1.26.4_debian-bullseye",
        "python-3.11_numpy-1.26.4_debian-bookworm",
        "python-3.11_numpy-2.2.6_debian-bookworm",
        "python-3.13_numpy-2.2.6_debian-trixie",
    ]
