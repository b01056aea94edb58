"""Datasets: a synthetic regression problem, and a dataset that says which worker process made each item."""

from __future__ import annotations

import os

import torch
from torch.utils.data import Dataset, get_worker_info


def make_regression(n: int, features: int, seed: int, noise: float = 0.01) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` samples of y = X @ w + b + noise, with a fixed seed (the same data in every shard and cell)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, features, generator=gen)
    w = torch.randn(features, 1, generator=gen)
    y = x @ w + 0.5 + noise * torch.randn(n, 1, generator=gen)
    return x, y


class SquaresDataset(Dataset):
    """Item i is (i, i*i, the id of the worker process that made it, its pid): a DataLoader's workers show."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, int, int]:
        info = get_worker_info()
        worker = info.id if info is not None else -1
        value = torch.tensor(float(i))
        return value, value * value, worker, os.getpid()

