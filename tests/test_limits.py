"""Limits on what a matrix file can make matrix-run do, and the project folders it refuses.

Each hostile file is run as ``python -m runner.cli list FILE`` in a subprocess with a memory and CPU limit, so a
protection that is removed makes the test fail (a traceback, a kill, a timeout) instead of taking the machine
down: exit code 4, exactly one line on stderr naming the file, the key and the fix, fast and in little memory.
"""

from __future__ import annotations

import itertools
import os
import resource
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from runner import cli, config, matrix
from runner.errors import ConfigError
from tests.conftest import ROOT

MiB = 1024**2


@dataclass
class Listed:
    code: int
    out: str
    err: str
    seconds: float
    peak_mb: float  # the child's peak resident memory

    @property
    def lines(self) -> list[str]:
        return self.err.splitlines()


def _limits() -> None:  # in the child, before exec: a removed protection fails the test, not the machine
    resource.setrlimit(resource.RLIMIT_AS, (2 * 1024 * MiB, 2 * 1024 * MiB))
    resource.setrlimit(resource.RLIMIT_CPU, (60, 60))


def run_list(path: Path, *extra: str) -> Listed:
    """``python -m runner.cli list PATH`` with its exit code, output, wall time and peak RSS (from wait4)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.monotonic()
        proc = subprocess.Popen(
            [sys.executable, "-m", "runner.cli", "list", str(path), *extra],
            cwd=ROOT,
            stdout=out,
            stderr=err,
            preexec_fn=_limits,  # noqa: PLW1509  # the test process runs no threads; limits must hold before exec
        )
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own peak RSS (RUSAGE_CHILDREN mixes all children)
        seconds = time.monotonic() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        text_out, text_err = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    return Listed(proc.returncode, text_out, text_err, seconds, usage.ru_maxrss / 1024)


def assert_one_line(listed: Listed, *pieces: str) -> str:
    assert listed.code == 4, (listed.code, listed.err[-3000:])
    assert "Traceback" not in listed.err, listed.err[-3000:]
    assert len(listed.lines) == 1, listed.err[-3000:]
    line = listed.lines[0]
    assert line.startswith("matrix-run: error: "), line
    for piece in pieces:
        assert piece in line, line
    return line


def write(tmp_path: Path, text: str, name: str = "m.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def bomb_under_resources(use: str) -> str:
    """The bomb's anchors first (under resources, the section validated last), then ``use`` of them."""
    return "resources:\n  x-anchors:\n" + textwrap.indent(bomb(), "    ") + use


def bomb(levels: int = 9, width: int = 9) -> str:
    """The classic "billion laughs": each level a list of ``width`` aliases of the level before."""
    names = [chr(ord("a") + i) for i in range(levels)]
    lines = [f"{names[0]}: &{names[0]} [{', '.join(['lol'] * width)}]"]
    lines += [f"{n}: &{n} [{', '.join([f'*{p}'] * width)}]" for p, n in itertools.pairwise(names)]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def baseline_mb(tmp_path_factory: pytest.TempPathFactory) -> float:
    """The peak RSS of listing a one-cell matrix: what the interpreter and matrix-run's imports take."""
    path = tmp_path_factory.mktemp("baseline") / "ok.yaml"
    path.write_text("matrix: {python: ['3.11']}\n", encoding="utf-8")
    listed = run_list(path)
    assert listed.code == 0, listed.err
    return listed.peak_mb


# --- the file size, before parsing -------------------------------------------------------------------------------


def test_file_over_the_size_cap_is_refused_before_parsing(tmp_path: Path) -> None:
    # valid YAML: without the cap it would load and list its one cell
    path = tmp_path / "big.yaml"
    path.write_text("matrix: {python: ['3.11']}\n" + "#" * config.MAX_FILE_BYTES + "\n", encoding="utf-8")
    size = path.stat().st_size

    line = assert_one_line(run_list(path), f"{path}: ", f"{size} bytes", f"the cap of {config.MAX_FILE_BYTES} bytes")
    assert "trim it" in line


def test_file_at_the_size_cap_loads(tmp_path: Path) -> None:
    head = "matrix: {python: ['3.11']}\n#"
    path = tmp_path / "full.yaml"
    path.write_text(head + "x" * (config.MAX_FILE_BYTES - len(head) - 1) + "\n", encoding="utf-8")
    assert path.stat().st_size == config.MAX_FILE_BYTES

    assert config.load(path).axes == (("python", ("3.11",)),)


def test_size_cap_holds_for_a_file_that_is_not_a_regular_file(tmp_path: Path) -> None:
    # /dev/zero has no size to stat: the read itself stops at the cap
    line = assert_one_line(run_list(Path("/dev/zero")), "/dev/zero: ", f"over {config.MAX_FILE_BYTES} bytes")
    assert "1 MiB" in line


def test_constants() -> None:
    assert config.MAX_FILE_BYTES == 1024 * 1024
    assert config.MAX_DEPTH == 32
    assert config.MAX_ALIASES == 100
    assert matrix.MAX_CELLS == 10_000


# --- nesting depth, on the event stream ---------------------------------------------------------------------------


@pytest.mark.parametrize("levels", [33, 500, 100_000])
def test_deep_nesting_is_one_line_never_a_recursion_error(tmp_path: Path, levels: int) -> None:
    path = write(tmp_path, "matrix:\n  python: " + "[" * levels + "]" * levels + "\n")

    listed = run_list(path)

    assert_one_line(listed, f"{path}:2: matrix.python: ", f"nested deeper than {config.MAX_DEPTH} levels", "flatten")
    assert "RecursionError" not in listed.err
    assert listed.seconds < 10


def test_deep_nesting_at_the_top_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "{a: " * 1000 + "1" + "}" * 1000 + "\n")

    assert_one_line(run_list(path), f"{path}:1: a.a: YAML nested deeper than 32 levels")


def test_nesting_at_the_depth_cap_is_allowed(tmp_path: Path) -> None:
    # the top mapping, image and 30 lists: 32 levels are parsed (and then judged by the ordinary checks)
    path = write(tmp_path, "matrix: {python: ['3.11']}\nimage: {install: " + "[" * 30 + "]" * 30 + "}\n")
    with pytest.raises(ConfigError, match=r"m\.yaml:2: image\.install\[0\]: must be a string \(got list\)$"):
        config.load(path)

    path = write(tmp_path, "matrix: {python: ['3.11']}\nimage: {install: " + "[" * 31 + "]" * 31 + "}\n")
    with pytest.raises(ConfigError, match=r"m\.yaml:2: image\.install: YAML nested deeper than 32 levels"):
        config.load(path)


# --- aliases --------------------------------------------------------------------------------------------------------


def test_billion_laughs_is_one_line_fast_and_small(tmp_path: Path, baseline_mb: float) -> None:
    path = write(tmp_path, bomb())
    assert path.stat().st_size < 600

    listed = run_list(path)

    assert_one_line(listed, f"{path}:", f"more than {config.MAX_ALIAS_NODES} values", "write the values out")
    assert listed.seconds < 2, listed.seconds
    assert listed.peak_mb - baseline_mb < 200, (listed.peak_mb, baseline_mb)


@pytest.mark.parametrize(
    "where",
    [
        "matrix:\n  python: *i\n",
        "matrix:\n  python: ['3.11']\nimage:\n  install: *i\n",
        "matrix:\n  python: ['3.11']\ntests:\n  env: {X: *i}\n",
        "matrix:\n  python: ['3.11']\n  include: *i\n",
    ],
    ids=["axis", "install", "env", "include"],
)
def test_alias_bomb_inside_a_real_key_is_one_line(tmp_path: Path, baseline_mb: float, where: str) -> None:
    path = write(tmp_path, bomb_under_resources(where))

    listed = run_list(path)

    assert_one_line(listed, f"more than {config.MAX_ALIAS_NODES} values")
    assert listed.seconds < 2
    assert listed.peak_mb - baseline_mb < 200


CHECK_WITHOUT_EVENT_LIMITS = r"""
import sys, time
from runner import config, matrix
config.MAX_ALIASES = config.MAX_ALIAS_NODES = 10**12  # only the walk and the validation stand in the bomb's way
start = time.monotonic()
try:
    matrix.expand(config.load(sys.argv[1]))
except config.ConfigError as exc:
    print(exc)
print(time.monotonic() - start)
"""


@pytest.mark.parametrize(
    ("where", "piece"),
    [
        ("", "unknown key 'a'"),
        ("matrix:\n  python: *i\n", "matrix.python[0]: must be a single value"),
        ("matrix:\n  python: ['3.11']\nimage:\n  install: *i\n", "image.install[0]: must be a string (got list)"),
        ("matrix:\n  python: ['3.11']\ntests:\n  env: {X: *i}\n", "tests.env.X: must be a string (got list)"),
        ("matrix:\n  python: ['3.11']\n  include: *i\n", "matrix.include[0]: must be a non-empty mapping"),
        ("matrix:\n  python: ['3.11']\ncoverage:\n  source: *i\n", "coverage.source[0]: must be a string"),
    ],
    ids=["top", "axis", "install", "env", "include", "coverage"],
)
def test_walk_and_validation_visit_an_aliased_node_once(tmp_path: Path, where: str, piece: str) -> None:
    # with the event-stream limits lifted, 9**9 leaves shared through aliases must still cost one walk of each node
    text = bomb() if not where else bomb_under_resources(where)
    path = write(tmp_path, text)

    proc = subprocess.run(
        [sys.executable, "-c", CHECK_WITHOUT_EVENT_LIMITS, str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        preexec_fn=_limits,
    )

    assert proc.returncode == 0, proc.stderr[-3000:]
    message, seconds = proc.stdout.splitlines()
    assert piece in message, message
    assert float(seconds) < 2


def test_more_than_max_aliases_is_one_line(tmp_path: Path) -> None:
    # a valid file apart from its 101 aliases: without the cap it would list its cell
    many = ", ".join(["*q"] * (config.MAX_ALIASES + 1))
    path = write(tmp_path, f"matrix: {{python: ['3.11']}}\ntests:\n  env: {{Q: &q '-q'}}\n  args: [{many}]\n")

    assert_one_line(run_list(path), f"{path}:4: tests.args: ", f"more than {config.MAX_ALIASES} YAML aliases")


def test_max_aliases_is_allowed_and_keeps_the_text(tmp_path: Path) -> None:
    many = ", ".join(["*q"] * config.MAX_ALIASES)
    path = write(tmp_path, f"matrix: {{python: ['3.11']}}\ntests:\n  env: {{Q: &q 3.10}}\n  args: [{many}]\n")

    mf = config.load(path)

    assert mf.tests.args == ("3.10",) * config.MAX_ALIASES


# --- the number of cells, before expansion --------------------------------------------------------------------------


def axes_file(tmp_path: Path, lengths: list[int], includes: int = 0, name: str = "m.yaml") -> Path:
    lines = ["name: big", "matrix:"]
    lines += [f"  a{i}: [{', '.join(f'v{j}' for j in range(n))}]" for i, n in enumerate(lengths)]
    if includes:  # each a new cell: its value of a0 is no combination's
        lines.append("  include:")
        lines += [f"    - {{a0: new{k}}}" for k in range(includes)]
    lines.append("image: {base: img}")
    return write(tmp_path, "\n".join(lines) + "\n", name)


def test_ten_million_cells_fail_at_once(tmp_path: Path, baseline_mb: float) -> None:
    path = axes_file(tmp_path, [10] * 7)

    listed = run_list(path)

    assert_one_line(
        listed,
        f"{path}:3: matrix: 10000000 combinations is over the cap of {matrix.MAX_CELLS} cells",
        "split the matrix",
        "--select",
    )
    assert listed.seconds < 2
    assert listed.peak_mb - baseline_mb < 200


def test_cell_cap_is_checked_before_the_product_is_taken(tmp_path: Path) -> None:
    mf = config.load(axes_file(tmp_path, [10] * 7))

    start = time.monotonic()
    with pytest.raises(ConfigError, match=r"10000000 combinations is over the cap of 10000 cells"):
        matrix.combinations(mf)
    assert time.monotonic() - start < 0.5


def test_astronomic_matrix_is_named_by_its_magnitude(tmp_path: Path) -> None:
    mf = config.load(axes_file(tmp_path, [10] * 40))

    start = time.monotonic()
    with pytest.raises(ConfigError, match=r"about 10\^40 combinations is over the cap of 10000 cells"):
        matrix.expand(mf)
    assert time.monotonic() - start < 0.5


def test_exactly_max_cells_pass(tmp_path: Path) -> None:
    # the coordinator benchmark (scripts/bench.py) expands exactly 10,000 cells
    cells = matrix.expand(config.load(axes_file(tmp_path, [10, 10, 10, 10])))

    assert len(cells) == matrix.MAX_CELLS


def test_includes_count_towards_the_cap(tmp_path: Path) -> None:
    assert len(matrix.expand(config.load(axes_file(tmp_path, [100, 99], includes=100)))) == 9900 + 100

    path = axes_file(tmp_path, [100, 100], includes=1, name="over.yaml")
    assert_one_line(run_list(path), "10001 combinations is over the cap of 10000 cells")


def test_select_narrows_a_matrix_over_the_cap_before_expanding(tmp_path: Path) -> None:
    path = axes_file(tmp_path, [10] * 7)

    listed = run_list(path, "--select", "a0=v1", "--select", "a1=v2", "--select", "a2=v3")

    assert listed.code == 0, listed.err
    assert len(listed.out.splitlines()) == 10_000
    assert listed.out.splitlines()[0].split("\t")[0] == "a0-v1_a1-v2_a2-v3_a3-v0_a4-v0_a5-v0_a6-v0"
    # not narrowed enough: still one line
    assert_one_line(run_list(path, "--select", "a0=v1"), "1000000 combinations is over the cap")


def test_many_includes_expand_in_linear_time(tmp_path: Path) -> None:
    # 5,000 combinations and 5,000 includes, half of them matching one combination each, half new cells
    lines = [
        "matrix:",
        f"  a: [{', '.join(f'v{j}' for j in range(100))}]",
        "  b: [" + ", ".join(f"w{j}" for j in range(50)) + "]",
    ]
    lines.append("  include:")
    lines += [f"    - {{a: v{k % 100}, b: w{k // 100}, tag: t{k}}}" for k in range(2500)]
    lines += [f"    - {{a: x{k}, tag: n{k}}}" for k in range(2500)]
    lines.append("image: {base: img}")
    mf = config.load(write(tmp_path, "\n".join(lines) + "\n"))

    start = time.monotonic()
    cells = matrix.expand(mf)

    assert time.monotonic() - start < 2  # one pass over the combinations per include, not one per pair
    assert len(cells) == 5000 + 2500
    assert cells[0].axes == {"a": "v0", "b": "w0", "tag": "t0"}
    assert cells[-1].axes == {"a": "x2499", "tag": "n2499"}


# --- project: system folders ---------------------------------------------------------------------------------------

REFUSED_EXACT = ["/", "/home", "/root", "/tmp", "/usr", "/var", "/opt", "/srv", "/mnt", "/media"]
REFUSED_TREES = [
    "/etc",
    "/etc/ssl",
    "/proc",
    "/proc/self",
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
    "/usr/lib/python3",
    "/usr/share",
    "/usr/share/doc",
    "/run",
]


@pytest.mark.parametrize("folder", REFUSED_EXACT + REFUSED_TREES)
def test_system_folder_as_project_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str], folder: str) -> None:
    path = write(tmp_path, f"name: x\nproject: {folder}\nmatrix: {{python: ['3.11']}}\n")
    shown = str(Path(folder).resolve())

    code = cli.main(["list", str(path)])

    out, err = capsys.readouterr()
    assert code == 4
    assert out == ""
    assert err.splitlines() == [
        f"matrix-run: error: {path}:2: project: {shown!r} is a system folder; point project at the project's own folder"
    ]


def test_system_folder_message_as_documented(tmp_path: Path) -> None:
    path = write(tmp_path, "name: x\nproject: /etc\nmatrix: {python: ['3.11']}\n")

    assert_one_line(
        run_list(path), f"{path}:2: project: '/etc' is a system folder; point project at the project's own folder"
    )


def test_relative_path_to_the_root_is_refused(tmp_path: Path) -> None:
    up = os.path.relpath("/", tmp_path)
    path = write(tmp_path, f"project: {up}\nmatrix: {{python: ['3.11']}}\n")

    with pytest.raises(ConfigError, match=r":1: project: '/' is a system folder"):
        config.load(path)


def test_symlink_to_a_system_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "proj").symlink_to("/etc")
    path = write(tmp_path, "project: proj\nmatrix: {python: ['3.11']}\n")

    with pytest.raises(ConfigError, match=r":1: project: '/etc' is a system folder"):
        config.load(path)


def test_home_folder_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home" / "someone"
    home.mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    path = write(tmp_path, f"project: {home}\nmatrix: {{python: ['3.11']}}\n")

    with pytest.raises(ConfigError) as info:
        config.load(path)
    assert str(info.value) == (
        f"{path}:1: project: {str(home)!r} is your home folder; point project at the project's own folder"
    )

    (home / "proj").mkdir()
    assert (
        config.load(write(tmp_path, "project: home/someone/proj\nmatrix: {python: ['3.11']}\n")).project
        == (home / "proj").resolve()
    )


@pytest.mark.parametrize("folder", ["/usr/local", "/var/lib", "/opt/x", "/srv/x", "/mnt/x", "/home/x"])
def test_folders_below_the_exact_ones_are_not_system_folders(tmp_path: Path, folder: str) -> None:
    path = write(tmp_path, f"project: {folder}\nmatrix: {{python: ['3.11']}}\n")

    if Path(folder).is_dir():
        assert config.load(path).project == Path(folder).resolve()
    else:  # judged like any folder: most of these do not exist here
        with pytest.raises(ConfigError, match=r"project: project folder .* does not exist"):
            config.load(path)


def test_project_below_tmp_is_allowed(tmp_path: Path) -> None:
    assert config.load(write(tmp_path, "matrix: {python: ['3.11']}\n")).project == tmp_path.resolve()
