"""The content prior for under-trained id rows: exact on a linear toy, the shrinkage by count,
and clear errors."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import torch

from tte_recsys.models.content import FrozenContent
from tte_recsys.models.id_prior import IdPrior, apply_id_prior, apply_id_priors, id_table_key
from tte_recsys.models.mtmh import ItemFeatures, ModelConfig, MTMHModel

GENRES = [["a"], ["b"], ["c"], ["a", "b"], ["b", "c"], ["a", "c"], ["a"], ["c"]]
COUNTS = np.array([9, 7, 6, 5, 8, 0, 2, 0], dtype=np.int64)  # items 5, 7 cold; item 6 has 2


def _model(content: FrozenContent | None) -> tuple[MTMHModel, ItemFeatures]:
    items = pl.DataFrame({"genres": GENRES}, schema={"genres": pl.List(pl.String)})
    feats = ItemFeatures.from_items(items, ["genres"])
    cfg = ModelConfig(
        heads=("coeng",),
        id_dim=3,
        features=("genres",),
        feature_dim=2,
        hidden=(4,),
        content="none" if content is None else "frozen",
    )
    torch.manual_seed(0)
    return MTMHModel(cfg, feats.num_embeddings(), content), feats


def _pooled_genres(model: MTMHModel) -> np.ndarray:
    table = model.ebc.embedding_bags["t_genres"].weight.detach().double().numpy()  # rows a, b, c
    index = {"a": 0, "b": 1, "c": 2}
    return np.stack([table[[index[g] for g in gs]].mean(0) for gs in GENRES])  # (N, 2)


def test_cold_rows_get_the_prediction_and_rare_rows_shrink_towards_it() -> None:
    model, feats = _model(None)
    x = _pooled_genres(model)
    coef, bias = np.array([[1.0, -2.0, 0.5], [3.0, 0.0, 1.0]]), np.array([0.1, 0.2, -0.3])
    truth = x @ coef + bias  # (N, 3): what the warm rows are, exactly
    state = {k: v.clone() for k, v in model.state_dict().items()}
    rows = torch.from_numpy(truth).float()
    rows[5], rows[6], rows[7] = torch.tensor([0.01, -0.02, 0.0]), torch.tensor([5.0, 5.0, 5.0]), 0.0
    state[id_table_key()] = rows
    new, stats = apply_id_prior(model, state, feats, COUNTS, IdPrior(shrink=1.0, min_count=5, ridge=1e-9))
    got = new[id_table_key()].double().numpy()
    assert stats["fit_items"] == 5 and stats["cold_items"] == 2 and stats["fit_r2"] == pytest.approx(1.0)
    np.testing.assert_allclose(got[[5, 7]], truth[[5, 7]], atol=1e-4)  # cold: the prediction
    np.testing.assert_allclose(got[6], 2 / 3 * 5.0 + 1 / 3 * truth[6], atol=1e-4)  # n=2: 2/(2+1)
    np.testing.assert_allclose(got[:5], truth[:5], atol=1e-4)  # warm rows already on the line
    # Every other weight is untouched, and the input state is not modified.
    assert all(torch.equal(new[k], state[k]) for k in state if k != id_table_key())
    assert torch.equal(state[id_table_key()], rows)


def test_the_content_vector_is_an_input_of_the_prediction() -> None:
    content = torch.tensor(
        [[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [0.8, 0.6], [-1.0, 0.0], [0.0, -1.0], [0.3, 0.2], [0.5, -0.5]]
    )
    model, feats = _model(FrozenContent(content))
    coef = np.array([[2.0, 0.0, -1.0], [0.0, 1.0, 1.0]])
    truth = content.double().numpy() @ coef  # rows depend on content only
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state[id_table_key()] = torch.from_numpy(truth).float()
    state[id_table_key()][[5, 7]] = 0.0
    counts = np.array([9, 7, 6, 5, 8, 0, 6, 0])
    new, _ = apply_id_prior(model, state, feats, counts, IdPrior(shrink=1.0, min_count=5, ridge=1e-9))
    np.testing.assert_allclose(new[id_table_key()].double().numpy()[[5, 7]], truth[[5, 7]], atol=1e-4)


def test_shrink_zero_is_off_and_bad_settings_say_what_is_wrong() -> None:
    model, feats = _model(None)
    state = model.state_dict()
    same, stats = apply_id_prior(model, state, feats, COUNTS, IdPrior(shrink=0.0))
    assert same is state and stats == {"shrink": 0.0}
    with pytest.raises(ValueError, match="shrink=-1"):
        IdPrior(shrink=-1)
    with pytest.raises(ValueError, match="ridge=0"):
        IdPrior(ridge=0)
    with pytest.raises(ValueError, match="3 item counts for an id table of 8 rows"):
        apply_id_prior(model, state, feats, COUNTS[:3], IdPrior())
    with pytest.raises(ValueError, match="1 items have >= 9 train interactions"):
        apply_id_prior(model, state, feats, COUNTS, IdPrior(min_count=9))


class _DropoutContent(FrozenContent):
    """A content tower with dropout, like a trainable embedder in training mode."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__(table)
        self.drop = torch.nn.Dropout(0.5)

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        return self.drop(super().forward(codes))


def test_the_prediction_uses_the_model_in_eval_mode_and_restores_it() -> None:
    model, feats = _model(_DropoutContent(torch.randn(len(GENRES), 4)))
    model.train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    first, _ = apply_id_prior(model, state, feats, COUNTS, IdPrior())
    second, _ = apply_id_prior(model, state, feats, COUNTS, IdPrior())
    assert torch.equal(first[id_table_key()], second[id_table_key()])  # no dropout noise
    assert model.training


def test_priors_that_differ_in_shrink_share_one_prediction(monkeypatch: pytest.MonkeyPatch) -> None:
    from tte_recsys.models import id_prior

    model, feats = _model(FrozenContent(torch.randn(len(GENRES), 4)))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    priors = [IdPrior(shrink=s) for s in (0.0, 0.1, 1.0)]
    one_by_one = [apply_id_prior(model, state, feats, COUNTS, p) for p in priors]
    calls = []
    side_inputs = id_prior._side_inputs
    monkeypatch.setattr(id_prior, "_side_inputs", lambda *a: calls.append(1) or side_inputs(*a))
    together = apply_id_priors(model, state, feats, COUNTS, priors)
    assert len(calls) == 1  # one pass over the catalog, one fit
    for (st1, stats1), (st2, stats2) in zip(one_by_one, together, strict=True):
        assert stats1 == stats2 and torch.equal(st1[id_table_key()], st2[id_table_key()])
    assert together[0][0] is state
