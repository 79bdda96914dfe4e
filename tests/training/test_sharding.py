"""Tables start from the same seeded weights whichever way the planner shards them: table-wise
(the CPU plan) or data-parallel (a plan the GPU planner may choose), through the same gather."""

from __future__ import annotations

import pytest
import torch
from torchrec.distributed.planner.types import ParameterConstraints

from tte_recsys.models.mtmh import ModelConfig, MTMHModel
from tte_recsys.training import sharding
from tte_recsys.training.sharding import init_tables, process_group, shard_model, unsharded_state


@pytest.mark.parametrize("plan", ["table_wise", "data_parallel"])
def test_tables_start_from_the_seeded_weights(plan: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if plan == "data_parallel":  # the CPU constraints, with the sharding type swapped

        def constraints(**kw: object) -> ParameterConstraints:
            return ParameterConstraints(sharding_types=["data_parallel"], compute_kernels=["dense"])

        monkeypatch.setattr(sharding, "ParameterConstraints", constraints)
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
