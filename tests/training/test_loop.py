"""The training loop's loss log: read back from the device in blocks of steps (not every step),
every step recorded in order, and a non-finite loss named with the step where it happened."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tests.helpers import STEPS, tiny_fit
from tte_recsys.data.labels import DeviceLabels
from tte_recsys.models.content import FrozenContent
from tte_recsys.training import loop
from tte_recsys.training.loop import TrainerConfig


def test_every_step_is_logged_in_order(tmp_path: Path) -> None:
    res = tiny_fit(tmp_path / "ck")
    assert [x["step"] for x in res.losses] == list(range(1, STEPS + 1))
    assert all(np.isfinite(x["loss"]) for x in res.losses)
    assert res.losses[-1]["loss"] < res.losses[0]["loss"]


def test_a_non_finite_loss_names_its_step(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real, calls = loop.mtmh_loss, []

    def nan_at_step_5(*args: Any, **kw: Any) -> dict[str, torch.Tensor]:
        terms = real(*args, **kw)
        calls.append(1)
        if len(calls) == 5:  # read back with steps 1-16: the error must still say step 5
            terms["loss"] = terms["loss"] * float("nan")
        return terms

    monkeypatch.setattr(loop, "mtmh_loss", nan_at_step_5)
    with pytest.raises(FloatingPointError, match="loss is nan at step 5: lower trainer"):
        tiny_fit(tmp_path / "ck")


def test_labels_built_on_the_device_train_exactly_as_the_loaders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The label matrix made on the training device (what a GPU run does) instead of by the loader:
    the same labels bit for bit, so the same loss curve, semantic terms included."""
    calls = []
    build = DeviceLabels.__call__
    monkeypatch.setattr(DeviceLabels, "__call__", lambda self, r, c: calls.append(1) or build(self, r, c))
    loader = tiny_fit(tmp_path / "loader", labels_on_device=False)
    assert not calls
    device = tiny_fit(tmp_path / "device", labels_on_device=True)
    assert len(calls) == STEPS
    assert [r["rel"] for r in loader.losses] == [r["rel"] for r in device.losses]
    assert loader.losses == device.losses
    assert len({round(r["rel"], 6) for r in loader.losses}) > 1  # the semantic term is live


class _DroppedContent(FrozenContent):
    """Fixed vectors through dropout in training: a tower that draws from the global generator
    every step, as MiniLM's dropout or LoRA's does inside a trainable content tower."""

    def __init__(self, p: float = 0.5) -> None:
        super().__init__(torch.randn(8, 4, generator=torch.Generator().manual_seed(1)))
        self.drop = torch.nn.Dropout(p)

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        return self.drop(super().forward(codes))


def test_a_resumed_run_draws_the_same_random_numbers(tmp_path: Path) -> None:
    """The checkpoint carries the random generator's state: with dropout in the model, the run
    resumed at step 10 follows the uninterrupted one exactly."""
    full = tiny_fit(tmp_path / "full", 20, ckpt_every=5, content=_DroppedContent())
    tiny_fit(tmp_path / "cut", 10, ckpt_every=5, content=_DroppedContent())
    resumed = tiny_fit(tmp_path / "cut", 20, resume=True, ckpt_every=5, content=_DroppedContent())
    assert resumed.losses == full.losses
    undropped = tiny_fit(tmp_path / "p0", 20, content=_DroppedContent(p=0.0))
    assert undropped.losses[:-1] != full.losses[:-1]  # the dropout is live in this model


def test_loader_workers_default_to_the_device(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)
    monkeypatch.setattr(loop.os, "cpu_count", lambda: 16)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    auto = TrainerConfig()
    assert loop.loader_workers(auto, cpu) == 1  # the CPU's cores train
    assert loop.loader_workers(auto, gpu) == 8  # half of 16 cores
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # 4 GPU processes on the node share the cores
    assert loop.loader_workers(auto, gpu) == 2
    monkeypatch.setattr(loop.os, "cpu_count", lambda: 2)
    assert loop.loader_workers(auto, gpu) == 1
    assert loop.loader_workers(TrainerConfig(num_workers=3), gpu) == 3  # an explicit count wins
    assert loop.loader_workers(TrainerConfig(num_workers=0), cpu) == 0
    with pytest.raises(ValueError, match=r"trainer\.num_workers=-1"):
        TrainerConfig(num_workers=-1)
