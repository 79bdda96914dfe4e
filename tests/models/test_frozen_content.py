"""FrozenContent keeps one copy of its table per device it has served."""

from __future__ import annotations

import torch

from tte_recsys.models.content import FrozenContent


def test_one_copy_per_device_and_the_master_stays_put() -> None:
    table = torch.arange(12, dtype=torch.float64).reshape(4, 3)
    content = FrozenContent(table)
    assert content.dim == 3 and content.table.dtype == torch.float32
    codes = torch.tensor([2, 0])
    torch.testing.assert_close(content(codes), table[codes].float())
    # a second device (meta stands in for a GPU here): its own copy, made once
    out = content(codes.to("meta"))
    assert out.device.type == "meta" and out.shape == (2, 3)
    meta_copy = content._copies[torch.device("meta")]
    content(codes.to("meta"))
    assert content._copies[torch.device("meta")] is meta_copy
    # the CPU side (validation, export) still reads the master, never moved
    assert content.table.device.type == "cpu"
    torch.testing.assert_close(content(codes), table[codes].float())
    assert len(content._copies) == 2
