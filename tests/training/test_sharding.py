"""Tables start from the same seeded weights whichever way the planner shards them: table-wise
(the CPU plan) or data-parallel (a plan the GPU planner may choose), through the same gather; and a
data-parallel run resumes exactly, like a table-wise one (tests/test_train_i2i.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torchrec.distributed.planner.types import ParameterConstraints

from tests.helpers import tiny_fit
from tte_recsys.models.mtmh import ModelConfig, MTMHModel
from tte_recsys.training import sharding
from tte_recsys.training.sharding import init_tables, process_group, shard_model, unsharded_state


def _force_data_parallel(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CPU constraints, with the sharding type swapped for data-parallel."""

    def constraints(**kw: object) -> ParameterConstraints:
        return ParameterConstraints(sharding_types=["data_parallel"], compute_kernels=["dense"])

    monkeypatch.setattr(sharding, "ParameterConstraints", constraints)


@pytest.mark.parametrize("plan", ["table_wise", "data_parallel"])
def test_tables_start_from_the_seeded_weights(plan: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if plan == "data_parallel":
        _force_data_parallel(monkeypatch)
    process_group()
    model = MTMHModel(
        ModelConfig(heads=("coeng",), content="none", hidden=(8,)),
        {"item_id": 10, "genres": 3},
        device="meta",
    )
    sh = shard_model(model, torch.device("cpu"), sparse_lr=0.05, dense_lr=1e-3)
    assert set(sh.plan.values()) == {f"{plan} ranks [0]"}
    init_tables(sh.dmp, seed=7)
    state = unsharded_state(sh.dmp)
    assert state is not None
    for name in ("ebc.embedding_bags.t_item_id.weight", "ebc.embedding_bags.t_genres.weight"):
        want = sharding._table_init(name, state[name].shape, 7)
        torch.testing.assert_close(state[name], want, rtol=0, atol=0)


def test_a_data_parallel_run_resumes_exactly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _force_data_parallel(monkeypatch)
    full = tiny_fit(tmp_path / "full", 20, ckpt_every=5)
    tiny_fit(tmp_path / "cut", 10, ckpt_every=5)
    resumed = tiny_fit(tmp_path / "cut", 20, resume=True, ckpt_every=5)
    assert set(full.plan.values()) == {"data_parallel ranks [0]"}
    assert resumed.losses == full.losses
    assert full.best_state is not None and resumed.best_state is not None
    for name, t in full.best_state.items():
        torch.testing.assert_close(resumed.best_state[name], t, rtol=0, atol=0)
