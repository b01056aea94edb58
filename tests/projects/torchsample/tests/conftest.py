"""The cell's hardware comes from the matrix (TORCHSAMPLE_HARDWARE: cpu or gpu). A test marked ``gpu`` is skipped on
a CPU cell without CUDA, and fails on a GPU cell where torch sees no GPU: that cell asked for one."""

from __future__ import annotations

import os

import pytest
import torch

HARDWARE = os.environ.get("TORCHSAMPLE_HARDWARE", "cpu")


def pytest_configure(config: pytest.Config) -> None:
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("gpu") is None or torch.cuda.is_available():
        return
    if HARDWARE == "gpu":
        pytest.fail(f"a GPU cell, but torch {torch.__version__} sees no CUDA device (torch.version.cuda = "
                    f"{torch.version.cuda}; CUDA_VISIBLE_DEVICES = {os.environ.get('CUDA_VISIBLE_DEVICES')!r})")
    pytest.skip("needs CUDA (a CPU cell)")


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(20260101)
