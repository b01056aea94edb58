"""DataLoader with worker processes (num_workers=2): every item once, made by the two workers."""

from __future__ import annotations

import os

import pytest
import torch
from torch.utils.data import DataLoader

from torchsample import SquaresDataset


@pytest.mark.parametrize("persistent", [False, True])
def test_two_workers_make_every_item_once(persistent: bool) -> None:
    loader = DataLoader(SquaresDataset(64), batch_size=8, num_workers=2, persistent_workers=persistent)
    values, squares, workers, pids = [], [], set(), set()
    for _ in range(2 if persistent else 1):
        values, squares = [], []
        for value, square, worker, pid in loader:
            values += value.tolist()
            squares += square.tolist()
            workers |= set(worker.tolist())
            pids |= set(pid.tolist())
    assert sorted(values) == [float(i) for i in range(64)]
    assert squares == [v * v for v in values]
    assert workers == {0, 1}
    assert os.getpid() not in pids and len(pids) == 2  # two processes of their own, not this one


def test_shuffled_order_is_seeded() -> None:
    def order(seed: int) -> list[float]:
        gen = torch.Generator().manual_seed(seed)
        loader = DataLoader(SquaresDataset(32), batch_size=4, shuffle=True, num_workers=2, generator=gen)
        return [v for value, *_ in loader for v in value.tolist()]

    assert order(1) == order(1)
    assert order(1) != order(2)
    assert sorted(order(1)) == [float(i) for i in range(32)]


def test_worker_init_fn_runs_in_each_worker(tmp_path) -> None:
    def init(worker_id: int) -> None:
        (tmp_path / f"worker-{worker_id}").write_text(str(os.getpid()))

    list(DataLoader(SquaresDataset(8), batch_size=2, num_workers=2, worker_init_fn=init))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["worker-0", "worker-1"]
