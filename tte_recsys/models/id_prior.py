"""A content prior for under-trained item-id embeddings, applied after training.

An item with no train interactions keeps the random initial row of the id table (norm ~0.01,
against ~1 for trained rows), so the trunk sees an input it never saw in training, and an item
with a handful of interactions has a row trained on a handful of pairs. Both are what a catalog's
newest items look like. This module predicts every item's id row from what is known without
interactions (its content vector and its pooled categorical features) by ridge regression fitted
on the well-trained rows, and shrinks each row towards that prediction by its train count::

    row_i <- w_i * row_i + (1 - w_i) * predicted_i,    w_i = n_i / (n_i + shrink)

so a cold item (n = 0) gets the prediction and a popular one keeps its trained row. Like
MetaEmb-style id-embedding generators (Pan et al., SIGIR 2019), but closed-form and post hoc: no
retraining, and an export carries the adjusted table, so serving needs nothing new.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from tte_recsys.models.mtmh import ID_FEATURE, ItemFeatures, MTMHModel, table_name

__all__ = ["IdPrior", "apply_id_prior", "apply_id_priors", "id_table_key"]


@dataclass(frozen=True)
class IdPrior:
    """Attributes:
    shrink: pseudo-count of the prior (0: off; 1: an item with one interaction gets half its
        trained row and half the prediction).
    min_count: rows of items with at least this many train interactions fit the regression.
    ridge: L2 penalty of the regression, on the raw inputs (unit content vectors, the
        categorical tables' rows).
    """

    shrink: float = 1.0
    min_count: int = 5
    ridge: float = 1.0

    def __post_init__(self) -> None:
        if self.shrink < 0:
            raise ValueError(f"id_prior.shrink={self.shrink}: expected >= 0 (0 turns the prior off)")
        if self.min_count < 1:
            raise ValueError(f"id_prior.min_count={self.min_count}: expected >= 1")
        if self.ridge <= 0:
            raise ValueError(f"id_prior.ridge={self.ridge}: expected > 0")


def id_table_key() -> str:
    """The id table's key in an (unsharded) MTMH state dict."""
    return f"ebc.embedding_bags.{table_name(ID_FEATURE)}.weight"


@torch.no_grad()
def _side_inputs(model: MTMHModel, features: ItemFeatures, batch_size: int = 4096) -> np.ndarray:
    """(N, F) what the model knows of each item besides its id: content vector ++ pooled categoricals."""
    parts = []
    id_dim = model.cfg.id_dim
    was_training = model.training
    model.eval()  # a trainable content tower: no dropout
    for start in range(0, features.num_items, batch_size):
        codes = np.arange(start, min(start + batch_size, features.num_items))
        cols = [model.ebc(features.kjt(codes)).values()[:, id_dim:]]  # categoricals (the id comes first)
        if model.content is not None:
            cols.append(model.content(torch.from_numpy(codes)))
        parts.append(torch.cat(cols, dim=1).double().numpy())
    model.train(was_training)
    return np.concatenate(parts)


def apply_id_priors(
    model: MTMHModel,
    state: dict[str, torch.Tensor],
    features: ItemFeatures,
    counts: np.ndarray,
    priors: list[IdPrior],
) -> list[tuple[dict[str, torch.Tensor], dict[str, Any]]]:
    """``state`` with its id table shrunk towards the content prior, once per prior, with fit
    statistics. The prediction (a pass over the catalog and a ridge fit) is made once per
    ``(min_count, ridge)`` and shared by the priors that differ only in ``shrink``.

    Args:
        model: a plain (unsharded) model of the state's shape; ``state`` is loaded into it.
        state: an unsharded state dict (the trained model).
        features: the items' features (the model's categoricals).
        counts: (N,) train interactions per item code.
        priors: the priors' settings; one with ``shrink == 0`` gives ``state`` unchanged.
    """
    key = id_table_key()
    predictions: dict[tuple[int, float], tuple[np.ndarray, dict[str, Any]]] = {}
    n = np.asarray(counts, dtype=np.float64)
    table: np.ndarray | None = None  # the trained rows in float64, converted once
    out = []
    for prior in priors:
        if prior.shrink == 0:
            out.append((state, {"shrink": 0.0}))
            continue
        fit_key = (prior.min_count, prior.ridge)
        if fit_key not in predictions:
            predictions[fit_key] = _predict_rows(model, state, features, counts, prior)
        pred, stats = predictions[fit_key]
        if table is None:  # after _predict_rows, which checks that the state has the table
            table = state[key].detach().double().numpy()
        w = (n / (n + prior.shrink))[:, None]
        new = w * table + (1.0 - w) * pred
        out.append(
            ({**state, key: torch.from_numpy(new).to(state[key].dtype)}, {"shrink": prior.shrink, **stats})
        )
    return out


def apply_id_prior(
    model: MTMHModel,
    state: dict[str, torch.Tensor],
    features: ItemFeatures,
    counts: np.ndarray,
    prior: IdPrior,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """:func:`apply_id_priors` for one prior."""
    return apply_id_priors(model, state, features, counts, [prior])[0]


def _predict_rows(
    model: MTMHModel,
    state: dict[str, torch.Tensor],
    features: ItemFeatures,
    counts: np.ndarray,
    prior: IdPrior,
) -> tuple[np.ndarray, dict[str, Any]]:
    """(N, id_dim) every item's id row predicted from its side inputs, and fit statistics."""
    key = id_table_key()
    if key not in state:
        raise ValueError(f"id prior: the state has no id table {key!r}")
    table = state[key].detach().double().numpy()  # (N, id_dim)
    counts = np.asarray(counts, dtype=np.float64)
    if counts.shape != (table.shape[0],):
        raise ValueError(f"id prior: {counts.shape[0]} item counts for an id table of {table.shape[0]} rows")
    fit = counts >= prior.min_count
    if fit.sum() < 2:
        raise ValueError(
            f"id prior: {int(fit.sum())} items have >= {prior.min_count} train interactions; "
            "lower id_prior.min_count or turn the prior off (shrink 0)"
        )
    model.load_state_dict(state, strict=False)
    x = _side_inputs(model, features)  # (N, F)
    z = np.concatenate([x, np.ones((len(x), 1))], axis=1)  # (N, F + 1)
    a, y = z[fit], table[fit]
    reg = prior.ridge * np.eye(z.shape[1])
    reg[-1, -1] = 0.0  # the intercept is not penalised
    coef = np.linalg.solve(a.T @ a + reg, a.T @ y)  # (F + 1, id_dim)
    resid = ((a @ coef - y) ** 2).sum()
    r2 = 1.0 - resid / max(((y - y.mean(0)) ** 2).sum(), 1e-12)
    stats = {"fit_items": int(fit.sum()), "cold_items": int((counts == 0).sum()), "fit_r2": float(r2)}
    return z @ coef, stats
