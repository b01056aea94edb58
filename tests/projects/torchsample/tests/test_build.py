"""Which torch each cell runs: the test id names the build and the device, so every cell's report shows its own."""

from __future__ import annotations

import os

import pytest
import torch

DEVICE = f"cuda{torch.version.cuda}" if torch.cuda.is_available() else "cpu"
BUILD = f"torch-{torch.__version__}-{DEVICE}"


@pytest.mark.parametrize("build", [BUILD])
def test_torch_build(build: str, record_property) -> None:
    expected = os.environ.get("TORCHSAMPLE_TORCH", "")
    print(f"torchsample: {build} (torch.version.cuda = {torch.version.cuda})")
    record_property("torch", torch.__version__)
    record_property("device", DEVICE)
    if expected:  # the matrix's torch axis: the cell runs the torch it asked for
        assert torch.__version__.split("+")[0] == expected, (torch.__version__, expected)


def test_the_cpu_build_is_threaded_as_asked() -> None:
    assert torch.get_num_threads() == int(os.environ.get("OMP_NUM_THREADS", "1"))
