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
    assert mf.tests.workdir == ""
    assert mf.tests.user == "auto"
    assert mf.tests.output_limit == 64 * 1024**2
    assert mf.retries == config.RetriesConfig(flaky=2, infra=2)
    assert mf.resources.pids == 4096
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
    pytest.param(
        "matrix: {python: ['3.11']}\ntests:\n  workdir: /abs\n",
        "tests.workdir",
        3,
        ["'/abs' must be a folder inside the project", "no '..'"],
        id="workdir-absolute",
    ),
    pytest.param(
        "matrix: {python: ['3.11']}\ntests:\n  workdir: sub/../..\n",
        "tests.workdir",
        3,
        ["'sub/../..' must be a folder inside the project"],
        id="workdir-dotdot",
    ),
    pytest.param(
        "matrix: {python: ['3.11']}\ntests:\n  workdir: nowhere\n",
        "tests.workdir",
        3,
        ["'nowhere' is not a folder of the project", "create it or fix the path"],
        id="workdir-missing",
    ),
    pytest.param(
        "matrix: {python: ['3.11']}\ntests:\n  workdir: [a]\n",
        "tests.workdir",
        3,
        ["must be a string (got list)"],
        id="workdir-not-a-string",
    ),
    pytest.param(
        "matrix: {python: ['3.11']}\ntests:\n  user: nobody\n",
        "tests.user",
        3,
        ["'nobody' is not a user", "write auto", "root, UID or UID:GID"],
        id="user-name",
    ),
    pytest.param(
        "matrix: {python: ['3.11']}\ntests:\n  user: '1000:'\n",
        "tests.user",
        3,
        ["'1000:' is not a user"],
        id="user-trailing-colon",
    ),
    pytest.param(
        "matrix: {python: ['3.11']}\ntests:\n  user: -1\n",
        "tests.user",
        3,
        ["'-1' is not a user"],
        id="user-negative",
    ),
    pytest.param(
        "matrix: {python: ['3.11']}\ntests:\n  user: 99999999999\n",
        "tests.user",
        3,
        ["'99999999999' is not a user"],
        id="user-too-big",
    ),
    pytest.param(
        "matrix: {python: ['3.11']}\ntests:\n  output-limit: lots\n",
        "tests.output-limit",
        3,
        ["'lots' is not a size", "write e.g. '64m'"],
        id="output-limit-not-a-size",
    ),
    pytest.param(
        "matrix: {python: ['3.11']}\ntests:\n  output-limit: 512k\n",
        "tests.output-limit",
        3,
        ["'512k' is below the minimum of 1m"],
        id="output-limit-too-small",
    ),
    pytest.param(
        "matrix: {python: ['3.11']}\nresources:\n  pids: 15\n",
        "resources.pids",
        3,
        ["must be >= 16 (got 15)"],
        id="pids-too-few",
    ),
    pytest.param(
        "matrix: {python: ['3.11']}\nresources:\n  pids: many\n",
        "resources.pids",
        3,
        ["must be an integer >= 16", "'many'"],
        id="pids-not-an-int",
    ),
    pytest.param(
        "matrix: {python: ['3.11']}\nresources:\n  pids: '{pids}'\n",
        "resources.pids",
        3,
        ["must be an integer >= 16"],
        id="pids-template",
    ),
    pytest.param(
        "matrix: {python: ['3.11']}\nreport: {rows: torch}\n",
        "report.rows",
        2,
        ["'torch' is not an axis of the matrix", "axes are: python"],
        id="report-rows-not-an-axis",
    ),
    pytest.param(
        "matrix: {python: ['3.11']}\nquarantine:\n  - {tests: 'a.py::t'}\n",
        "quarantine[0].tests",
        3,
        ["unknown key 'tests'", "did you mean 'test'?"],
        id="quarantine-typo",
    ),
    pytest.param(
        "matrix: {python: ['3.11']}\nquarantine:\n  - {reason: flaky}\n",
        "quarantine[0]",
        3,
        ["needs 'test'"],
        id="quarantine-without-test",
    ),
    pytest.param(
        "matrix: {python: ['3.11']}\nquarantine:\n  - {test: 'a.py::t', cells: [python]}\n",
        "quarantine[0].cells[0]",
        3,
        ["must be AXIS=VALUE"],
        id="quarantine-bad-cells",
    ),
    pytest.param(
        "matrix: {python: ['3.11']}\nquarantine: {test: x}\n",
        "quarantine",
        2,
        ["must be a list of entries"],
        id="quarantine-not-a-list",
    ),
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


# --- control characters: never meant in a path, an argument or a variable ---------------------------------------

CONTROL_KEYS = [
    ("tests:\n  paths: [{v}]\n", "tests.paths[0]"),
    ("tests:\n  command: [python, {v}]\n", "tests.command[1]"),
    ("tests:\n  args: [-q, {v}]\n", "tests.args[1]"),
    ("tests:\n  env: {{NAME: {v}}}\n", "tests.env.NAME"),
    ("tests:\n  pass-env: [{v}]\n", "tests.pass-env[0]"),
    ("tests:\n  workdir: {v}\n", "tests.workdir"),
    ("image:\n  install: [numpy, {v}]\n", "image.install[1]"),
    ("image:\n  pip-args: [{v}]\n", "image.pip-args[0]"),
]
CONTROLS = [("\\0", "U+0000"), ("\\n", "U+000A"), ("\\t", "U+0009"), ("\\e", "U+001B"), ("\\x7f", "U+007F")]


@pytest.mark.parametrize(("section", "key"), CONTROL_KEYS, ids=[k for _, k in CONTROL_KEYS])
@pytest.mark.parametrize(("escape", "code"), CONTROLS, ids=[c for _, c in CONTROLS])
def test_control_character_is_one_line_naming_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], section: str, key: str, escape: str, code: str
) -> None:
    (tmp_path / "tests").mkdir()
    value = f'"tests{escape}x"'  # a YAML escape in a double-quoted string: the only way to write most of them
    path = write(tmp_path, "matrix:\n  python: ['3.11']\n" + section.format(v=value), name="ci.yaml")

    exit_code = cli.main(["list", str(path)])

    out, err = capsys.readouterr()
    assert exit_code == 4
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert f"{path}:4: {key}: " in lines[0]
    assert f"contains the control character {code}; remove it" in lines[0]
    assert "Traceback" not in err


def test_control_character_in_an_env_name_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, 'matrix: {python: ["3.11"]}\ntests:\n  env: {"A\\0B": x}\n')

    with pytest.raises(ConfigError) as info:
        config.load(path)

    assert str(info.value) == (
        f"{path}:3: tests.env.A\\x00B: 'A\\x00B' contains the control character U+0000; remove it (write plain text)"
    )


@pytest.mark.parametrize(
    ("text", "piece"),
    [
        ('matrix: {python: ["3.11"]}\ntests: {"sh\\nard": 2}\n', "tests.sh\\nard: unknown key 'sh\\nard'"),
        ('matrix: {"py\\nthon": ["3.11"]}\n', "matrix.py\\nthon: axis name 'py\\nthon' must be"),
        ('matrix: {python: ["3.11"]}\nname: "a\\nb"\n', "name: 'a\\nb' must be letters"),
        ('matrix: {python: ["3.11"]}\nimage: {dockerfile: "no\\nfile"}\n', "image.dockerfile: "),
    ],
    ids=["key", "axis-name", "name", "dockerfile"],
)
def test_a_newline_anywhere_in_a_problem_stays_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, piece: str
) -> None:
    path = write(tmp_path, text)

    code = cli.main(["list", str(path)])

    err = capsys.readouterr().err
    assert code == 4
    assert len(err.splitlines()) == 1, err
    assert piece in err, err


def test_a_newline_in_the_file_name_stays_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["list", str(tmp_path / "no\nsuch.yaml")])

    err = capsys.readouterr().err
    assert code == 4
    assert err.splitlines() == [f"matrix-run: error: {tmp_path}/no\\nsuch.yaml: matrix file not found; check the path"]


def test_plain_values_and_unicode_pass(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        matrix: {python: ["3.11"]}
        image: {install: ["numpy>=2; python_version > '3.9'"], pip-args: ["--index-url", "https://x/simple"]}
        tests: {paths: ["tests/tëst dir"], args: ["-k", "not slow"], env: {MSG: "héllo wörld ✓"}, pass-env: [HOME]}
        """,
    )

    mf = config.load(path)

    assert mf.tests.paths == ("tests/tëst dir",)
    assert mf.tests.env == (("MSG", "héllo wörld ✓"),)


# --- new keys: tests.workdir, tests.user, tests.output-limit, resources.pids; retries.flaky defaults to 2 ------


def test_workdir_is_a_project_folder_and_paths_are_relative_to_it(tmp_path: Path) -> None:
    (tmp_path / "pkg" / "core" / "tests").mkdir(parents=True)
    (tmp_path / "shared-tests").mkdir()
    path = write(
        tmp_path,
        """\
        matrix: {python: ["3.11"]}
        tests:
          workdir: ./pkg/core/
          paths: [tests, ../../shared-tests]
        """,
    )

    mf = config.load(path)

    assert mf.tests.workdir == "pkg/core"
    assert mf.tests.paths == ("tests", "../../shared-tests")  # inside the project once joined with the workdir


@pytest.mark.parametrize("value", ["''", ".", "./"])
def test_workdir_root_is_the_empty_string(tmp_path: Path, value: str) -> None:
    path = write(tmp_path, f'matrix: {{python: ["3.11"]}}\ntests: {{workdir: {value}}}\n')

    assert config.load(path).tests.workdir == ""


def test_test_paths_must_stay_inside_the_project_when_joined_with_the_workdir(tmp_path: Path) -> None:
    (tmp_path / "pkg").mkdir()
    path = write(tmp_path, 'matrix: {python: ["3.11"]}\ntests:\n  workdir: pkg\n  paths: [../../elsewhere]\n')

    with pytest.raises(ConfigError) as info:
        config.load(path)

    assert str(info.value) == (
        f"{path}:4: tests.paths[0]: '../../elsewhere' must be a path inside the project "
        "(paths are relative to tests.workdir 'pkg')"
    )


def test_workdir_must_be_a_folder(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x", encoding="utf-8")
    path = write(tmp_path, 'matrix: {python: ["3.11"]}\ntests: {workdir: afile}\n')

    with pytest.raises(ConfigError, match=r":2: tests\.workdir: 'afile' is not a folder of the project"):
        config.load(path)


def test_workdir_symlink_out_of_the_project_is_refused(tmp_path: Path) -> None:
    (tmp_path / "proj").mkdir()
    (tmp_path / "outside").mkdir()
    (tmp_path / "proj" / "link").symlink_to(tmp_path / "outside")
    path = write(tmp_path / "proj", 'matrix: {python: ["3.11"]}\ntests: {workdir: link}\n')

    with pytest.raises(ConfigError, match=r":2: tests\.workdir: 'link' leads out of the project"):
        config.load(path)


@pytest.mark.parametrize(
    ("value", "expected"),
    [("auto", "auto"), ("root", "root"), ("1000", "1000"), ("'1000:1000'", "1000:1000"), ("1000:59", "1000:59")],
)
def test_tests_user(tmp_path: Path, value: str, expected: str) -> None:
    # 1000:59 is a YAML 1.1 base-60 integer (60059): the text as written is kept
    path = write(tmp_path, f'matrix: {{python: ["3.11"]}}\ntests: {{user: {value}}}\n')

    assert config.load(path).tests.user == expected


@pytest.mark.parametrize(("value", "expected"), [("128m", 128 * 1024**2), ("1g", 1024**3), ("1048576", 1024**2)])
def test_tests_output_limit_is_bytes(tmp_path: Path, value: str, expected: int) -> None:
    path = write(tmp_path, f'matrix: {{python: ["3.11"]}}\ntests: {{output-limit: {value}}}\n')

    assert config.load(path).tests.output_limit == expected


def test_resources_pids(tmp_path: Path) -> None:
    path = write(tmp_path, 'matrix: {python: ["3.11"]}\nresources: {pids: 16}\n')

    assert config.load(path).resources == config.ResourcesConfig(pids=16)


def test_retries_flaky_defaults_to_two_and_may_be_zero(tmp_path: Path) -> None:
    assert config.RetriesConfig().flaky == 2
    assert config.load(write(tmp_path, 'matrix: {python: ["3.11"]}\nretries: {infra: 1}\n')).retries == (
        config.RetriesConfig(flaky=2, infra=1)
    )
    assert config.load(write(tmp_path, 'matrix: {python: ["3.11"]}\nretries: {flaky: 0}\n')).retries.flaky == 0


def test_new_keys_are_known_keys() -> None:
    assert {"workdir", "user", "output-limit"} <= set(config.TESTS_KEYS)
    assert "pids" in config.RESOURCES_KEYS


# --- YAML aliases: each node is walked once; values reached through an alias keep their text -------------------


def test_values_through_an_alias_keep_their_text(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        matrix:
          python: &py [3.10, 3.9]
          again: *py
          include:
            - {python: 3.10, extra: &x 1.20}
            - {python: 3.9, extra: *x}
        """,
    )

    mf = config.load(path)

    assert dict(mf.axes) == {"python": ("3.10", "3.9"), "again": ("3.10", "3.9")}
    assert mf.include == ((("python", "3.10"), ("extra", "1.20")), (("python", "3.9"), ("extra", "1.20")))


def test_problem_below_an_alias_names_the_key_used_and_the_line_written(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        matrix: {python: ["3.11"]}
        coverage:
          source: &src
            - mypkg
            - [nested]
        tests:
          args: *src
        """,
    )

    with pytest.raises(ConfigError) as info:
        config.load(path)

    assert str(info.value) == f"{path}:5: tests.args[1]: must be a string (got list)"


def test_key_lines_map_keys_below_an_alias_onto_the_anchor() -> None:
    lines = config.KeyLines()
    lines.update({"a": 1, "a[0]": 2, "a[0].k": 3, "b": 7})
    lines.aliased.update({"b": "a", "c.d": "b"})

    assert lines.real("b[0].k") == "a[0].k"
    assert lines.real("c.d[0]") == "a[0]"  # an alias of an alias
    assert lines.find("b") == 7  # the key that uses the alias has its own line
    assert lines.find("b[0].k") == 3
    assert lines.find("zz") is None


def test_runs_on_and_executor_are_templated_per_cell(tmp_path: Path) -> None:
    from runner import matrix

    path = write(
        tmp_path,
        "matrix:\n  os: [linux, mac]\n  python: ['3.12']\n  include:\n    - {os: mac, executor: host}\n"
        "runs-on: 'lab-{os}'\nimage: {python: '/opt/py/{python}/bin/python'}\n",
    )
    cells = {c.id: c for c in matrix.expand(config.load(path))}
    linux, mac = cells["os-linux_python-3.12"], cells["os-mac_python-3.12_executor-host"]
    assert (linux.runs_on, linux.executor) == ("lab-linux", "docker")
    assert (mac.runs_on, mac.executor, mac.python) == ("lab-mac", "host", "/opt/py/3.12/bin/python")


def test_an_executor_that_is_not_docker_or_host_names_the_cell(tmp_path: Path) -> None:
    from runner import matrix

    path = write(tmp_path, "matrix:\n  python: ['3.12']\n  ex: [podman]\nexecutor: '{ex}'\n")
    with pytest.raises(ConfigError, match=r"cell python-3\.12_ex-podman") as info:
        matrix.expand(config.load(path))
    assert "write docker or host" in str(info.value)


def test_a_quarantine_file_is_the_same_list(tmp_path: Path) -> None:
    path = write(tmp_path, "- {test: 'tests/test_io.py::*', cells: {python: '3.11'}, reason: flaky on CI}\n", "q.yaml")
    (entry,) = config.load_quarantine(path)
    assert (entry.test, entry.cells, entry.reason) == ("tests/test_io.py::*", (("python", "3.11"),), "flaky on CI")
