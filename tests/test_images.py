"""Cell images: the image keys (wheelhouses, cache, installer, heavy), the heavy/light split and the tags, the
sizes in results.json and summary.md (pure); then on a real Docker engine: heavy layers shared by cells, the
package cache, both installers, and source layers (what a shard starts from)."""

from __future__ import annotations

import contextlib
import dataclasses
import textwrap
import uuid
from pathlib import Path

import pytest
import yaml

from runner import config, images, plan, summary, workspace
from runner.errors import ConfigError
from runner.execution import RunResults
from runner.images import ImageSpec
from tests.conftest import write_matrix


def image_file(tmp_path: Path, image: dict[str, object]) -> Path:
    """A one-cell matrix file in tmp_path with this image section."""
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump({"name": "t", "matrix": {"python": ["3.11"]}, "image": image}, sort_keys=False))
    return path


def image_error(tmp_path: Path, image: dict[str, object]) -> str:
    with pytest.raises(ConfigError) as info:
        config.load(image_file(tmp_path, image))
    return str(info.value)


# --- image.wheelhouse: one folder, or a list of folders -----------------------------------------------------------


def test_wheelhouse_takes_a_folder_a_list_of_folders_auto_or_none(tmp_path: Path) -> None:
    first, second = tmp_path / "wheels-a", tmp_path / "wheels b"
    first.mkdir()
    second.mkdir()
    load = lambda value: config.load(image_file(tmp_path, {"wheelhouse": value})).image.wheelhouse  # noqa: E731
    assert load(str(first)) == (str(first),)
    assert load([str(first), str(second)]) == (str(first), str(second))
    assert load("auto") == ("auto",)
    assert load("none") == load(False) == ("none",)
    assert config.load(image_file(tmp_path, {})).image.wheelhouse == ("auto",)


@pytest.mark.parametrize(
    ("value", "key", "problem"),
    [
        pytest.param(["{a}", "{missing}"], "image.wheelhouse[1]", "does not exist on this host", id="missing"),
        pytest.param(["{a}", "{file}"], "image.wheelhouse[1]", "is not a folder", id="a-file"),
        pytest.param(["{a}", "auto"], "image.wheelhouse[1]", "'auto' stands alone", id="auto-in-a-list"),
        pytest.param(["{a}", "{a}"], "image.wheelhouse[1]", "listed twice", id="twice"),
        pytest.param([], "image.wheelhouse", "empty list", id="empty"),
        pytest.param([["{a}"]], "image.wheelhouse[0]", "must be a string", id="nested"),
        pytest.param("{missing}", "image.wheelhouse", "does not exist on this host", id="one-missing"),
    ],
)
def test_a_bad_wheelhouse_is_one_line_naming_file_key_and_fix(
    tmp_path: Path, value: object, key: str, problem: str
) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "file").write_text("")
    subst = {"{a}": str(tmp_path / "a"), "{file}": str(tmp_path / "file"), "{missing}": str(tmp_path / "nope")}
    value = [subst.get(v, v) if isinstance(v, str) else v for v in value] if isinstance(value, list) else subst[value]
    message = image_error(tmp_path, {"wheelhouse": value})
    assert message.startswith(f"{tmp_path / 'm.yaml'}:")
    assert f" {key}: " in message
    assert problem in message
    assert "\n" not in message


def test_every_wheelhouse_reaches_the_spec_and_its_listing_the_tag(tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    for folder in (first, second):
        folder.mkdir()
        (folder / f"pkg_{folder.name}-1.0-py3-none-any.whl").write_bytes(b"x")
    mf = config.load(image_file(tmp_path, {"base": "b:1", "wheelhouse": [str(first), str(second)]}))
    cells = plan.matrix.expand(mf)

    spec = images.specs_for(mf, cells)[cells[0].id]

    assert spec.wheelhouses == (str(first.resolve()), str(second.resolve()))
    assert spec.wheelhouse == str(first.resolve())  # one folder, for callers that take one
    moved = dataclasses.replace(spec, wheelhouses=(str(tmp_path / "elsewhere"),))
    assert moved.tag == spec.tag  # where the wheels are is no part of the tag ...
    (second / "pkg_c-2.0-py3-none-any.whl").write_bytes(b"yy")
    assert images.specs_for(mf, cells)[cells[0].id].tag != spec.tag  # ... what they are is
    assert images.find_wheelhouses("none") == ()
    assert images.find_wheelhouses((str(first), str(first))) == (str(first.resolve()),)


# --- image.cache and image.installer ------------------------------------------------------------------------------


def test_cache_is_auto_none_or_a_folder_and_never_part_of_the_tag(tmp_path: Path) -> None:
    load = lambda value: config.load(image_file(tmp_path, {"base": "b:1", "cache": value})).image.cache  # noqa: E731
    assert config.load(image_file(tmp_path, {})).image.cache == "auto"
    assert load("none") == load(False) == "none"
    assert load(str(tmp_path)) == str(tmp_path)
    assert load(str(tmp_path / "new")) == str(tmp_path / "new")  # made on first use
    (tmp_path / "file").write_text("")
    assert "image.cache: " in image_error(tmp_path, {"cache": str(tmp_path / "file")})
    assert "is not a folder" in image_error(tmp_path, {"cache": str(tmp_path / "file")})
    assert "its parent folder does not exist" in image_error(tmp_path, {"cache": str(tmp_path / "x" / "y")})
    spec = ImageSpec(base="b:1", cache="auto")
    assert {dataclasses.replace(spec, cache=c).tag for c in ("none", str(tmp_path), "auto")} == {spec.tag}


def test_cache_auto_is_a_folder_of_the_private_state_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(workspace.STATE_DIR_ENV, str(tmp_path / "state"))
    auto = images.cache_folder("auto")
    assert auto == tmp_path / "state" / images.CACHE_DIR
    assert auto is not None
    assert auto.is_dir()
    assert (auto.stat().st_mode & 0o777) == 0o700
    assert images.cache_folder("none") is None
    assert images.cache_folder(str(tmp_path / "mine")) == tmp_path / "mine"
    assert (tmp_path / "mine").is_dir()


def test_installer_is_uv_or_pip_and_part_of_the_tag(tmp_path: Path) -> None:
    assert config.load(image_file(tmp_path, {})).image.installer == "uv"
    assert config.load(image_file(tmp_path, {"installer": "pip"})).image.installer == "pip"
    message = image_error(tmp_path, {"installer": "conda"})
    assert " image.installer: 'conda' is not an installer; write uv or pip" in message
    assert "installer: conda" not in message
    assert message.count("\n") == 0
    uv = ImageSpec(base="b:1", install=("torch==2.13.0+cpu",), installer="uv")
    pip = dataclasses.replace(uv, installer="pip")
    assert uv.tag != pip.tag
    assert uv.heavy_tag != pip.heavy_tag


def test_the_uv_executable_comes_from_matrix_runs_own_environment() -> None:
    uv = images.uv_binary()
    assert uv is not None, "uv is a dependency of matrix-run (pyproject.toml): pip install -e . installs it"
    assert Path(uv).is_file()


# --- the heavy layer: which requirements go there -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("requirement", "name"),
    [
        ("torch==2.13.0+cpu", "torch"),
        ("Torch_Vision>=0.28", "torch-vision"),
        ("torch[opt-einsum]==2.14.1", "torch"),
        ("torch @ file:///wheels/torch-2.13.0+cpu-cp311-cp311-linux_x86_64.whl", "torch"),
        ("jax[cuda12]; python_version >= '3.10'", "jax"),
        ("nvidia-cudnn-cu13==9.24.0.43", "nvidia-cudnn-cu13"),
        ("six", "six"),
        ("--index-url", None),
        ("./vendored/torch", None),
        ("git+https://github.com/pytorch/vision", None),
        ("/wheels/torch-2.13.0-cp311-cp311-linux_x86_64.whl", None),
    ],
)
def test_package_name_of_a_requirement(requirement: str, name: str | None) -> None:
    assert images.package_name(requirement) == name


def test_the_heavy_pins_are_split_from_the_rest() -> None:
    install = ("torch==2.13.0+cpu", "torchmetrics==1.9.0", "nvidia-nccl-cu13==2.30.7", "pytest-timeout", "jaxlib")
    assert images.split_heavy(install) == (
        ("torch==2.13.0+cpu", "nvidia-nccl-cu13==2.30.7", "jaxlib"),
        ("torchmetrics==1.9.0", "pytest-timeout"),
    )
    more = images.split_heavy(install, ("TorchMetrics",))  # image.heavy: names as written, normalized
    assert more[0] == ("torch==2.13.0+cpu", "torchmetrics==1.9.0", "nvidia-nccl-cu13==2.30.7", "jaxlib")
    assert images.split_heavy(install, None) == ((), install)  # image.heavy: none
    options = ("--extra-index-url", "https://download.pytorch.org/whl/cpu", "torch==2.13.0")
    assert images.split_heavy(options) == ((), options)  # an option applies to the whole line: not split
    assert images.split_heavy(("six", "attrs")) == ((), ("six", "attrs"))


def test_cells_with_the_same_heavy_pins_name_the_same_heavy_layer() -> None:
    a = ImageSpec(base="matrix-run/debian:bookworm", install=("torch==2.13.0+cpu", "six"), wheelhouse_digest="w")
    b = dataclasses.replace(a, install=("attrs==25.4.0", "torch==2.13.0+cpu"))
    assert a.heavy == ("torch==2.13.0+cpu",)
    assert a.heavy_tag == b.heavy_tag != ""
    assert a.heavy_tag.startswith(images.HEAVY_REPO + ":")
    assert a.tag != b.tag  # their own images differ
    for other in (
        dataclasses.replace(a, install=("torch==2.14.1", "six")),
        dataclasses.replace(a, base="matrix-run/debian:trixie"),
        dataclasses.replace(a, pip_args=("--no-index",)),
        dataclasses.replace(a, wheelhouse_digest="another listing"),
        dataclasses.replace(a, ca_bundle=b"---CERT---"),
    ):
        assert other.heavy_tag != a.heavy_tag
    assert dataclasses.replace(a, cache="none", wheelhouses=("/elsewhere",)).heavy_tag == a.heavy_tag
    assert ImageSpec(base="b:1", install=("six",)).heavy_tag == ""
    assert dataclasses.replace(a, heavy_names=None).heavy_tag == ""
    assert dataclasses.replace(a, heavy_names=None).tag != a.tag  # another way of building it: another image


def test_image_heavy_lists_names_or_turns_the_layer_off(tmp_path: Path) -> None:
    load = lambda value: config.load(image_file(tmp_path, {"heavy": value})).image.heavy  # noqa: E731
    assert config.load(image_file(tmp_path, {})).image.heavy == ()
    assert load(["torchmetrics", "lightning"]) == ("torchmetrics", "lightning")
    assert load("none") is None
    assert load(False) is None
    assert " image.heavy[1]: 'torch==2.13' is not a package name" in image_error(
        tmp_path, {"heavy": ["six", "torch==2.13"]}
    )
    assert " image.heavy: must be a list of strings, not one string" in image_error(tmp_path, {"heavy": "torch"})


# --- the images section of results.json and summary.md ------------------------------------------------------------


class FakeImage:
    def __init__(self, layers: list[str], size: int, parent: str = "", labels: dict[str, str] | None = None) -> None:
        self.attrs = {"RootFS": {"Layers": layers}, "Size": size, "Parent": parent, "Config": {"Labels": labels}}


class FakeImages:
    def __init__(self, known: dict[str, FakeImage]) -> None:
        self.known = known

    def get(self, ref: str) -> FakeImage:
        import docker.errors

        if ref not in self.known:
            raise docker.errors.ImageNotFound(ref)
        return self.known[ref]


class FakeClient:
    def __init__(self, known: dict[str, FakeImage]) -> None:
        self.images = FakeImages(known)


def four_cells_on_two_heavy_layers() -> FakeClient:
    """base (100) -> heavy torch A (+1000), heavy torch B (+5000) -> two cells of 10 and 20 on each."""
    heavy_a, heavy_b = "matrix-run/heavy:a", "matrix-run/heavy:b"
    known = {
        "sha256:base": FakeImage(["L0"], 100),
        heavy_a: FakeImage(["L0", "HA"], 1100, parent="sha256:base", labels={images.LABEL_BASE_ID: "sha256:base"}),
        heavy_b: FakeImage(["L0", "HB"], 5100, labels={images.LABEL_BASE_ID: "sha256:base"}),  # no Parent: labels
    }
    for heavy, layers, size in ((heavy_a, ["L0", "HA"], 1100), (heavy_b, ["L0", "HB"], 5100)):
        for own in (10, 20):
            labels = {images.LABEL_HEAVY: heavy, images.LABEL_BASE_ID: "sha256:base"}
            known[f"env:{heavy[-1]}{own}"] = FakeImage([*layers, f"C{heavy[-1]}{own}"], size + own, heavy, labels)
    return FakeClient(known)


def test_disk_held_together_counts_every_layer_once() -> None:
    client = four_cells_on_two_heavy_layers()
    tags = {"env:a10": ["a-six"], "env:a20": ["a-attrs"], "env:b10": ["b-six"], "env:b20": ["b-attrs"]}

    disk = images.disk_usage(client, tags)  # type: ignore[arg-type]

    assert disk.disk == 100 + 1000 + 5000 + 10 + 20 + 10 + 20  # base, two heavy layers, four cell layers
    assert disk.sizes == 1110 + 1120 + 5110 + 5120  # what `docker images` adds up to
    assert disk.heavy_layers == 2
    assert [(i.tag, i.cells, i.size, i.own, i.heavy) for i in disk.images][:2] == [
        ("env:a10", ("a-six",), 1110, 10, "matrix-run/heavy:a"),
        ("env:a20", ("a-attrs",), 1120, 20, "matrix-run/heavy:a"),
    ]
    one_per_torch = images.disk_usage(client, {"env:a10": ["a"], "env:b10": ["b"]})  # type: ignore[arg-type]
    assert one_per_torch.disk == 100 + 1000 + 5000 + 10 + 10
    gone = images.disk_usage(client, {"env:a10": ["a"], "env:missing": ["m"]})  # type: ignore[arg-type]
    assert [i.tag for i in gone.images] == ["env:a10"]
    assert images.measure_disk({"cell": ""}) is None  # no image: nothing to measure, no engine asked


def test_the_images_section_of_results_json_and_the_summary_line(tmp_path: Path) -> None:
    from tests.test_schema import validate_results

    disk = images.disk_usage(four_cells_on_two_heavy_layers(), {"env:a10": ["a-six"], "env:b20": ["b-attrs"]})  # type: ignore[arg-type]
    run = RunResults("demo-20250101-000000-abcdef", [], False, False, 1.0, 2, 0)
    path = tmp_path / "results.json"

    summary.write_results_json(run, path, "demo", "passed", summary.ExitCode.OK, disk=disk)

    data = validate_results(path)
    assert data["images"] == {
        "built": 2,
        "reused": 0,
        "check_seconds": 0.0,
        "disk_bytes": 100 + 1000 + 5000 + 10 + 20,
        "size_sum_bytes": 1110 + 5120,
        "heavy_layers": 2,
        "cell_images": [
            {"tag": "env:a10", "cells": ["a-six"], "size_bytes": 1110, "own_bytes": 10, "heavy": "matrix-run/heavy:a"},
            {
                "tag": "env:b20",
                "cells": ["b-attrs"],
                "size_bytes": 5120,
                "own_bytes": 20,
                "heavy": "matrix-run/heavy:b",
            },
        ],
    }
    summary.write_results_json(run, path, "demo", "passed", summary.ExitCode.OK)  # sizes unknown: the counts only
    assert set(validate_results(path)["images"]) == {"built", "reused", "check_seconds"}

    big = images.ImagesDisk(
        (images.ImageSize("env:1", ("c1",), 1_500_000_000, 10_000_000, "h"),) * 4, 7_100_000_000, 15_300_000_000, 2
    )
    text = summary.summary_markdown(run, "demo", "passed", disk=big)
    assert (
        "Images: 4 cell images hold 7.1 GB on disk together (every layer once, bases included; their sizes add up "
        "to 15.3 GB), built on 2 heavy layers" in text.splitlines()
    )
    one = images.ImagesDisk((images.ImageSize("env:1", ("c1",), 320_000_000, 5_000_000),), 320_000_000, 0, 0)
    assert "Images: 1 cell image holds 320 MB on disk (its base included)" in summary.summary_markdown(
        run, "demo", "passed", disk=one
    )
    assert "Images:" not in summary.summary_markdown(run, "demo", "passed")


# --- on a real Docker engine --------------------------------------------------------------------------------------


def _project(tmp_path: Path) -> Path:
    project = tmp_path / "proj"
    (project / "tests").mkdir(parents=True)
    (project / "tests" / "test_x.py").write_text("def test_x():\n    import iniconfig\n")
    return project


@pytest.mark.docker
def test_cells_that_pin_the_same_heavy_packages_share_one_heavy_layer_built_once(
    tmp_path: Path, docker_client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two cells with the same heavy pin (here iniconfig, made heavy by image.heavy) and another small package
    each: one heavy layer, built once, is below both images (their RootFS layers start with its layers); each
    image holds its own package on top, in the same venv; the disk they hold together counts it once."""
    monkeypatch.setenv(workspace.STATE_DIR_ENV, str(tmp_path / "state"))  # a cold package cache of this test's own
    marker = f"mr-heavy-{uuid.uuid4().hex[:8]}"  # a pip option no earlier run used: a heavy layer of this test's own
    matrix = write_matrix(
        tmp_path,
        _project(tmp_path),
        matrix={"small": ["six", "tomli"]},
        image={
            "base": "matrix-run/debian:bookworm",
            "install": ["iniconfig==2.1.0", "{small}"],
            "heavy": ["iniconfig"],
            "pip-args": ["--config-setting", f"marker={marker}"],
        },
        tests={"shards": 1, "install-project": False},
    )
    planned = plan.plan_matrix(str(matrix), [])
    specs = images.specs_for(planned.mf, planned.cells, docker_client)
    six, tomli = (specs[c.id] for c in planned.cells)
    assert six.heavy_tag == tomli.heavy_tag != ""
    made: list[str] = []
    try:
        steps: list[str] = []
        first, built = images.ensure(docker_client, six, step=steps.append)
        made += [first, six.heavy_tag]
        assert built
        assert steps == [
            "installing the heavy layer (iniconfig==2.1.0), shared by cells with the same pins",
            "installing 2 packages",  # pytest and six: the light rest
        ]
        heavy_id = docker_client.images.get(six.heavy_tag).id

        steps = []
        second, built = images.ensure(docker_client, tomli, step=steps.append)
        made.append(second)
        assert built
        assert steps == ["installing 2 packages"]  # the heavy layer was there: not rebuilt
        assert docker_client.images.get(six.heavy_tag).id == heavy_id

        heavy_layers = docker_client.images.get(six.heavy_tag).attrs["RootFS"]["Layers"]
        for tag in (first, second):
            layers = docker_client.images.get(tag).attrs["RootFS"]["Layers"]
            assert layers[: len(heavy_layers)] == heavy_layers
            assert len(layers) == len(heavy_layers) + 1  # one layer of its own on top
            assert docker_client.images.get(tag).labels[images.LABEL_HEAVY] == six.heavy_tag
        check = (
            "import iniconfig, pytest, importlib.util as u; print(bool(u.find_spec('six')), bool(u.find_spec('tomli')))"
        )
        assert docker_client.containers.run(first, ["python", "-c", check], remove=True).split() == [b"True", b"False"]
        assert docker_client.containers.run(second, ["python", "-c", check], remove=True).split() == [b"False", b"True"]
        assert (tmp_path / "state" / images.CACHE_DIR / "uv").is_dir()  # uv kept what it fetched

        disk = images.disk_usage(docker_client, {first: ["six"], second: ["tomli"]})
        assert disk.heavy_layers == 1
        base_size = docker_client.images.get("matrix-run/debian:bookworm").attrs["Size"]
        assert disk.disk == disk.sizes - (docker_client.images.get(six.heavy_tag).attrs["Size"])
        assert disk.disk > base_size
    finally:
        for ref in made:
            with contextlib.suppress(Exception):
                docker_client.images.remove(ref, force=True)


@pytest.mark.docker
def test_the_pip_installer_builds_over_a_heavy_layer_with_the_cache_mounted(
    tmp_path: Path, docker_client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """installer: pip (the recipe before uv) still builds, over a heavy layer too, and is given the package cache.
    (Whether pip stores anything there depends on the index: pip keeps only downloads that come with HTTP cache
    headers, which PyPI sends and some proxies strip.)"""
    cache = tmp_path / "cache"
    spec = ImageSpec(
        base="matrix-run/debian:bookworm",
        install=("iniconfig==2.1.0", "six"),
        pip_args=("--config-settings", f"marker=mr-pip-{uuid.uuid4().hex[:8]}"),
        installer="pip",
        heavy_names=("iniconfig",),
        cache=str(cache),
        ca_bundle=images.find_ca_bundle("auto"),
    )
    given: list[tuple[dict[str, dict[str, str]], dict[str, str]]] = []
    real = images._run_and_commit

    def provisioning(client, image, command, volumes, env, *rest):  # type: ignore[no-untyped-def]
        given.append((volumes, env))
        return real(client, image, command, volumes, env, *rest)

    monkeypatch.setattr(images, "_run_and_commit", provisioning)
    try:
        tag, built = images.ensure(docker_client, spec, log=tmp_path / "build.log")
        assert built
        out = docker_client.containers.run(tag, ["python", "-c", "import iniconfig, six, pytest"], remove=True)
        assert out == b""
        assert len(given) == 2  # the heavy layer, then the cell's own
        for volumes, env in given:
            assert volumes[str(cache)] == {"bind": images.CACHE_IN_CONTAINER, "mode": "rw"}
            assert env["PIP_CACHE_DIR"] == f"{images.CACHE_IN_CONTAINER}/pip"
            assert "PIP_NO_CACHE_DIR" not in env
        log = (tmp_path / "build.log").read_text()
        assert "-m pip install" in log
        assert "uv pip install" not in log
    finally:
        for ref in (spec.tag, spec.heavy_tag):
            with contextlib.suppress(Exception):
                docker_client.images.remove(ref, force=True)


@pytest.mark.docker
def test_source_layer_holds_compiled_modules_and_pytests_rewritten_tests(tmp_path: Path, docker_client) -> None:
    """Shards run with PYTHONDONTWRITEBYTECODE: the layer must already hold the bytecode, including pytest's
    assertion rewrites, so no shard compiles the project again. A file that fails to collect does not stop it."""
    project = tmp_path / "proj"
    files = {
        "pkg/__init__.py": f"# {uuid.uuid4()}: a snapshot no earlier run has built a layer for\n",
        "pkg/mod.py": "def double(x):\n    return 2 * x\n",
        "tests/conftest.py": "import pytest\n",
        "tests/test_ok.py": "from pkg.mod import double\n\ndef test_double():\n    assert double(2) == 4\n",
        "tests/test_broken.py": "raise ImportError('this file cannot be collected')\n",
        # outside tests.paths: the shards never import it, so neither may the layer's collection
        "scripts/test_side_effect.py": "open('/src/IMPORTED_OUTSIDE_ROOTS', 'w').close()\n",
    }
    for rel, text in files.items():
        (project / rel).parent.mkdir(parents=True, exist_ok=True)
        (project / rel).write_text(textwrap.dedent(text))
    matrix = write_matrix(tmp_path, project, tests={"shards": 1, "install-project": False, "paths": ["tests"]})
    planned = plan.plan_matrix(str(matrix), [])
    cell = planned.cells[0]
    env_tag, _ = images.ensure(docker_client, images.specs_for(planned.mf, [cell], docker_client)[cell.id])

    tag, built = images.ensure_source_layer(
        docker_client,
        env_tag,
        planned.tree.tarball,
        planned.tree.digest,
        install_project=False,
        roots=planned.mf.tests.paths,
    )

    assert built
    listing = docker_client.containers.run(
        tag, ["sh", "-c", "ls /src /src/pkg/__pycache__ /src/tests/__pycache__"], remove=True
    ).decode()
    assert "mod.cpython-311.pyc" in listing
    assert "test_ok.cpython-311-pytest-" in listing  # pytest's own cache of the rewritten module
    assert "conftest.cpython-311-pytest-" in listing
    assert "IMPORTED_OUTSIDE_ROOTS" not in listing


@pytest.mark.docker
def test_the_image_tag_does_not_depend_on_whether_the_base_exists_yet(tmp_path: Path, docker_client) -> None:
    """A cold run bootstraps or pulls its base during the run: the tag computed before that (base absent) must be
    the tag after it, or the second run rebuilds every image. A base that changes under its name (re-pulled)
    rebuilds the image in place, under the same tag."""
    base = f"matrix-run/t-base:{uuid.uuid4().hex[:10]}"
    project = tmp_path / "proj"
    (project / "tests").mkdir(parents=True)
    (project / "tests" / "test_x.py").write_text("def test_x():\n    pass\n")
    matrix = write_matrix(
        tmp_path,
        project,
        image={"base": base},
        tests={"shards": 1, "install-project": False},
    )
    planned = plan.plan_matrix(str(matrix), [])
    cell = planned.cells[0]
    assert images.local_image_id(docker_client, base) is None
    before = images.specs_for(planned.mf, [cell], docker_client)[cell.id]
    bookworm = docker_client.images.get("matrix-run/debian:bookworm")
    trixie = docker_client.images.get("matrix-run/debian:trixie")
    repo, _, tag = base.partition(":")
    try:
        bookworm.tag(repo, tag)  # the base arrives, as a bootstrap or a pull during a cold run makes it
        after = images.specs_for(planned.mf, [cell], docker_client)[cell.id]
        assert after.tag == before.tag

        steps: list[str] = []
        first, built_first = images.ensure(docker_client, after, step=steps.append)
        assert steps == ["installing 1 package"]  # what the live view and the log show while it runs
        again, built_again = images.ensure(docker_client, images.specs_for(planned.mf, [cell], docker_client)[cell.id])
        assert (first, built_first) == (before.tag, True)
        assert (again, built_again) == (before.tag, False)  # the second run builds nothing

        trixie.tag(repo, tag)  # the base changed under its name: rebuilt, same tag, from the new base
        rebuilt, built = images.ensure(docker_client, after)
        assert (rebuilt, built) == (before.tag, True)
        labels = docker_client.images.get(rebuilt).labels
        assert labels[images.LABEL_BASE_ID] == trixie.id
    finally:
        for ref in (before.tag, base):
            with contextlib.suppress(Exception):
                docker_client.images.remove(ref, force=True)
