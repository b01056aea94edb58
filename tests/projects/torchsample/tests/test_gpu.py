"""CUDA: skipped on a CPU cell, and a failure on a GPU cell (hardware: gpu) whose torch sees no GPU."""

from __future__ import annotations

import pytest
import torch

from torchsample import TinyMLP, best_device, fit, make_regression

pytestmark = pytest.mark.gpu


def test_the_cell_has_the_one_gpu_it_asked_for() -> None:
    assert torch.cuda.device_count() == 1
    assert best_device().type == "cuda"


def test_matmul_on_the_gpu_matches_the_cpu(gen: torch.Generator) -> None:
    a = torch.randn(256, 128, generator=gen, dtype=torch.float64)
    b = torch.randn(128, 64, generator=gen, dtype=torch.float64)
    torch.testing.assert_close((a.cuda() @ b.cuda()).cpu(), a @ b)


def test_training_on_the_gpu() -> None:
    torch.manual_seed(0)
    x, y = make_regression(512, 8, seed=0)
    losses = fit(TinyMLP(8), x, y, epochs=10, device=torch.device("cuda"))
    assert losses[-1] < losses[0]


def test_pinned_memory_loader_to_the_gpu() -> None:
    loader = torch.utils.data.DataLoader(torch.arange(64.0), batch_size=16, num_workers=2, pin_memory=True)
    total = sum(batch.cuda(non_blocking=True).sum() for batch in loader)
    assert float(total) == sum(range(64))
