"""The torch example end to end (matrices/torch.yaml, tests/projects/torchsample): real torch in real cell images.

Torch comes from the wheelhouses the matrix names (this machine's /opt/wheels holds the CPU build of torch 2.13.0;
/opt/pypi*/files hold the CUDA build of 2.14.1 and its nvidia-* wheels), never from the index. The CPU cells of
torch 2.13.0 run on every CI run (about 2 minutes cold: the heavy layer is a 0.8 GB venv); the GPU cells are
no_capacity on a machine without GPUs. The 2.14.1 cell (a 5.8 GB CUDA build) runs with
MATRIX_RUN_TEST_TORCH_CUDA_BUILD=1 only: building it takes longer than CI allows for it.
"""

from __future__ import annotations

import os
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, results, run_cli

pytestmark = [pytest.mark.docker, pytest.mark.ray, pytest.mark.slow]

MATRIX = ROOT / "matrices" / "torch.yaml"
CPU_2_13 = "python-3.11_torch-2.13.0_hardware-cpu_gpus-0_build-2.13.0+cpu"
GPU_2_13 = "python-3.11_torch-2.13.0_hardware-gpu_gpus-1_build-2.13.0"
CPU_2_14 = "python-3.11_torch-2.14.1_hardware-cpu_gpus-0_build-2.14.1"
GPU_TESTS = 4  # tests/projects/torchsample/tests/test_gpu.py


@pytest.fixture(scope="module")
def wheelhouses() -> list[str]:
    """The wheel folders torch.yaml installs torch from; a machine without them cannot run this test."""
    folders = yaml.safe_load(MATRIX.read_text())["image"]["wheelhouse"]
    missing = [f for f in folders if not Path(f).is_dir()]
    if missing:
        pytest.fail(f"the torch wheels matrices/torch.yaml names are not on this machine: {missing}")
    return folders


def cases(out: Path, cell: str) -> dict[str, str]:
    """test name -> outcome (passed, skipped, failed) of one cell's suite in junit.xml."""
    suite = next(s for s in ET.parse(out / "junit.xml").getroot().iter("testsuite") if s.get("name") == cell)
    found = {}
    for case in suite.iter("testcase"):
        outcome = next((child.tag for child in case if child.tag in ("failure", "error", "skipped")), "passed")
        found[f"{case.get('classname')}::{case.get('name')}"] = outcome
    return found


def image_log(out: Path, res: dict, cell: str) -> str | None:  # type: ignore[type-arg]
    """The cell image's build log; None when this run found the image already built (a warm machine)."""
    tag = next(c["image"] for c in res["cells"] if c["id"] == cell)
    log = out / "images" / f"{tag.split(':')[-1]}.log"
    return log.read_text() if log.is_file() else None


def downloaded_mib(log: str) -> dict[str, float]:
    """What uv downloaded, as its build log names it (``Downloading nvidia-nvjitlink (44.5MiB)``): name -> MiB."""
    scale = {"KiB": 1 / 1024, "MiB": 1.0, "GiB": 1024.0}
    found = re.findall(r"^Downloading (\S+) \(([\d.]+)(KiB|MiB|GiB)\)$", log, re.MULTILINE)
    return {name: float(size) * scale[unit] for name, size, unit in found}


def run_torch(tmp_path: Path, *select: str) -> tuple[Path, dict]:  # type: ignore[type-arg]
    out = tmp_path / "out"
    args = ["run", str(MATRIX), "--out", str(out), "--history", str(tmp_path / "history.sqlite"), "--plain"]
    proc = run_cli(*args, *(f"--select={s}" for s in select), "--skip-unavailable", timeout=1800)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return out, results(out)


def test_the_cpu_cell_of_torch_2_13_runs_its_own_torch_and_the_gpu_cell_is_no_capacity(
    tmp_path: Path, docker_client, wheelhouses: list[str]
) -> None:
    out, res = run_torch(tmp_path, "torch=2.13.0")

    cells = {c["id"]: c for c in res["cells"]}
    assert set(cells) == {CPU_2_13, GPU_2_13}
    assert cells[GPU_2_13]["status"] == "no_capacity"  # asks for 1 GPU; this machine has none
    assert "GPU" in cells[GPU_2_13]["reason"]
    cpu = cells[CPU_2_13]
    assert cpu["status"] == "passed", cpu["reason"]
    assert cpu["skipped"] == GPU_TESTS  # CUDA tests skip on a CPU cell
    got = cases(out, CPU_2_13)
    assert got["tests.test_build::test_torch_build[torch-2.13.0+cpu-cpu]"] == "passed"  # its own torch, by name
    assert got["tests.test_data::test_two_workers_make_every_item_once[False]"] == "passed"  # 2 worker processes
    assert {k for k, v in got.items() if v == "skipped"} == {k for k in got if k.startswith("tests.test_gpu::")}

    # torch is in a heavy layer below the cell's own; it came from the wheelhouse, not the index
    assert res["images"]["heavy_layers"] == 1
    (image,) = res["images"]["cell_images"]
    assert image["heavy"].startswith("matrix-run/heavy:")
    assert image["own_bytes"] < 100_000_000 < image["size_bytes"]
    log = image_log(out, res, CPU_2_13)
    if log is not None:  # built by this run (as on CI's clean machines): uv took torch from the wheelhouse
        assert "uv pip install" in log
        assert "torch==2.13.0+cpu" in log
        assert "torch" not in downloaded_mib(log)
    assert "Images: 1 cell image holds" in (out / "summary.md").read_text()


@pytest.mark.skipif(
    os.environ.get("MATRIX_RUN_TEST_TORCH_CUDA_BUILD") != "1",
    reason="torch 2.14.1's CUDA build is a 5.8 GB venv: set MATRIX_RUN_TEST_TORCH_CUDA_BUILD=1 to build and run it",
)
def test_both_torch_versions_on_cpu_each_report_their_own_and_nothing_large_is_downloaded(
    tmp_path: Path, docker_client, wheelhouses: list[str]
) -> None:
    out, res = run_torch(tmp_path, "hardware=cpu")

    cells = {c["id"]: c for c in res["cells"]}
    assert {cells[c]["status"] for c in (CPU_2_13, CPU_2_14)} == {"passed"}
    builds = {cell: [name for name in cases(out, cell) if "test_torch_build[" in name] for cell in (CPU_2_13, CPU_2_14)}
    assert builds[CPU_2_13] == ["tests.test_build::test_torch_build[torch-2.13.0+cpu-cpu]"]
    (name,) = builds[CPU_2_14]
    assert name.startswith("tests.test_build::test_torch_build[torch-2.14.1")  # the CUDA build, on a CPU
    assert res["images"]["heavy_layers"] == 2
    # torch, triton and the nvidia-* wheels of the wheelhouses were installed from there; what uv downloaded
    # (it names each download over 1 MiB) is small: a newer nvidia-nvjitlink than the wheelhouse's (torch asks for
    # a range), cuda-bindings (in no wheelhouse), pip
    log = image_log(out, res, CPU_2_14) or ""
    downloads = downloaded_mib(log)
    assert not {name for name in downloads if name in ("torch", "triton") or name.startswith("nvidia-cu")}, downloads
    assert sum(downloads.values()) < 100, downloads
