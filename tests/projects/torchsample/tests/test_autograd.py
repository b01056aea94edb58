from __future__ import annotations

import os

import pytest
import torch

from torchsample import TinyMLP, fit, make_regression, mse

SCALE = int(os.environ.get("TORCHSAMPLE_SCALE", "1"))  # more of the training tests (scripts/bench.py --torch)


def test_gradient_of_a_polynomial() -> None:
    x = torch.tensor([0.5, -1.0, 2.0], requires_grad=True)
    y = (x**3 - 2 * x).sum()
    y.backward()
    torch.testing.assert_close(x.grad, 3 * x.detach() ** 2 - 2)


def test_gradcheck_of_the_model() -> None:
    torch.manual_seed(0)
    model = TinyMLP(4, hidden=5).double()
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda inp: model(inp), (x,))


def test_second_derivative() -> None:
    x = torch.tensor(1.5, requires_grad=True)
    (g,) = torch.autograd.grad(torch.sin(x) * x, x, create_graph=True)
    (h,) = torch.autograd.grad(g, x)
    torch.testing.assert_close(h, 2 * torch.cos(x.detach()) - x.detach() * torch.sin(x.detach()))


def test_no_grad_builds_no_graph() -> None:
    w = torch.ones(3, requires_grad=True)
    with torch.no_grad():
        y = (w * 2).sum()
    assert not y.requires_grad


@pytest.mark.parametrize("seed", range(6 * SCALE))
def test_training_lowers_the_loss(seed: int) -> None:
    torch.manual_seed(seed)
    x, y = make_regression(1024, 8, seed=seed)
    model = TinyMLP(8)
    before = mse(model, x, y)
    losses = fit(model, x, y, epochs=25, seed=seed)
    assert losses[-1] < losses[0]
    assert mse(model, x, y) < 0.1 * before


def test_training_is_reproducible() -> None:
    runs = []
    for _ in range(2):
        torch.manual_seed(7)
        x, y = make_regression(256, 4, seed=7)
        runs.append(fit(TinyMLP(4), x, y, epochs=5, seed=7))
    assert runs[0] == runs[1]
