from __future__ import annotations

import pytest
import torch


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n", [8, 64, 256])
def test_matmul_against_a_loop(n: int, dtype: torch.dtype, gen: torch.Generator) -> None:
    a = torch.randn(n, 16, generator=gen, dtype=dtype)
    b = torch.randn(16, 4, generator=gen, dtype=dtype)
    loop = torch.stack([torch.stack([(a[i] * b[:, j]).sum() for j in range(4)]) for i in range(n)])
    torch.testing.assert_close(a @ b, loop)


def test_broadcasting_and_reductions(gen: torch.Generator) -> None:
    x = torch.randn(5, 1, 3, generator=gen)
    y = torch.randn(1, 4, 3, generator=gen)
    z = x + y
    assert z.shape == (5, 4, 3)
    torch.testing.assert_close(z.sum(dim=(0, 1)), 4 * x.sum(dim=(0, 1)) + 5 * y.sum(dim=(0, 1)))
    assert z.amax() >= z.mean() >= z.amin()


def test_einsum_is_batched_matmul(gen: torch.Generator) -> None:
    a = torch.randn(7, 3, 5, generator=gen)
    b = torch.randn(7, 5, 2, generator=gen)
    torch.testing.assert_close(torch.einsum("bij,bjk->bik", a, b), torch.bmm(a, b))


def test_dtype_promotion() -> None:
    assert (torch.ones(2, dtype=torch.int32) + torch.ones(2, dtype=torch.float16)).dtype == torch.float16
    assert (torch.ones(2, dtype=torch.int64) / 2).dtype == torch.get_default_dtype()
    assert torch.tensor([True, False]).sum().item() == 1


def test_indexing_and_views() -> None:
    x = torch.arange(24).reshape(2, 3, 4)
    assert x[:, 1, ::2].tolist() == [[4, 6], [16, 18]]
    view = x.transpose(0, 2)
    assert not view.is_contiguous()
    assert view.contiguous().view(-1).shape == (24,)
    x[0, 0, 0] = 100
    assert view[0, 0, 0] == 100  # a view shares storage


@pytest.mark.parametrize("n", [16, 128])
def test_linear_solve(n: int, gen: torch.Generator) -> None:
    a = torch.randn(n, n, generator=gen, dtype=torch.float64) + n * torch.eye(n, dtype=torch.float64)
    b = torch.randn(n, 3, generator=gen, dtype=torch.float64)
    x = torch.linalg.solve(a, b)
    torch.testing.assert_close(a @ x, b)
