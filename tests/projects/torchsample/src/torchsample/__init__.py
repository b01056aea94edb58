"""Small PyTorch helpers: data, a tiny model and its training loop."""

from __future__ import annotations

from torchsample.data import SquaresDataset, make_regression
from torchsample.model import TinyMLP, best_device, fit, mse

__all__ = ["SquaresDataset", "TinyMLP", "best_device", "fit", "make_regression", "mse"]
