"""Classical I2I baselines, each fitted on the train period of a :class:`TemporalSplit`.

* ``Popularity``: the most engaged items, the same list for every trigger.
* ``CoOccurrence`` ("also engaged"): how many users engaged both items in the train period.
  Not the window miner's pair counts: test positives are pairs *first seen* in the test period,
  so a pair counted in the train windows can never be one (measured: recall@10 exactly 0).
* ``ItemKNN``: cosine similarity of item columns of the user x item train matrix.
* ``ContentCosine``: cosine of content vectors (``embed_items`` output); needs no interactions,
  so it is the only baseline that can retrieve cold items.
* ``EASE`` (Steck, 2019): closed-form item-item model, ``B = I - P / diag(P)`` with
  ``P = (X^T X + lambda I)^-1``; lambda is chosen on the valid split.

Sparse scorers rank items with a positive score first, then the rest by train popularity, so
their lists are always K long and ties never depend on item order.
"""

from __future__ import annotations

import logging

import numpy as np
import polars as pl
import scipy.sparse as sp
import torch

from tte_recsys.data.split import TemporalSplit
from tte_recsys.retrieval import topk_excluding

log = logging.getLogger(__name__)

__all__ = [
    "EASE",
    "CoOccurrence",
    "ContentCosine",
    "ItemKNN",
    "Popularity",
    "ease_weights",
    "user_item_matrix",
]


def user_item_matrix(train: pl.DataFrame, num_users: int, num_items: int) -> sp.csr_matrix:
    """(U, N) binary engagement matrix of the train period."""
    u = train["user_idx"].to_numpy().astype(np.int64)
    i = train["item_idx"].to_numpy().astype(np.int64)
    x = sp.csr_matrix((np.ones(len(u), np.float32), (u, i)), shape=(num_users, num_items))
    x.data[:] = 1.0
    return x


def _popularity_fallback(counts: np.ndarray) -> np.ndarray:
    """Train counts squashed into [0, 1): ranks popular items first among zero-score items."""
    return (counts / (counts.max(initial=0) + 1.0)).astype(np.float32)


class Popularity:
    """The most engaged train items (minus the trigger)."""

    name = "popularity"

    def __init__(self, split: TemporalSplit) -> None:
        self._scores = torch.from_numpy(split.item_counts.astype(np.float32))  # (N,)

    def retrieve(self, triggers: np.ndarray, k: int) -> np.ndarray:
        return topk_excluding(self._scores.expand(len(triggers), -1), triggers, k)


class _SparseRowScorer:
    """Scores rows of a sparse (N, N) item-item matrix; positives first, popularity after.

    With ``integer_scores`` (counts) popularity also orders items of equal count: adding a value
    in [0, 1) to an integer keeps the order between different counts exact.
    """

    name = "sparse"

    def __init__(self, sim: sp.csr_matrix, counts: np.ndarray, integer_scores: bool) -> None:
        self._sim = sim.tocsr()
        self._fallback = _popularity_fallback(counts)  # (N,)
        self._integer = integer_scores

    def retrieve(self, triggers: np.ndarray, k: int) -> np.ndarray:
        rows = np.asarray(self._sim[triggers].todense(), dtype=np.float64)  # (T, N)
        if self._integer:
            scores = rows + self._fallback[None, :]  # (T, N) lexicographic (count, popularity)
        else:
            scores = np.where(rows > 0, rows + 1.0, self._fallback[None, :])  # (T, N)
        return topk_excluding(scores, triggers, k)


class CoOccurrence(_SparseRowScorer):
    """Number of users who engaged both items in the train period."""

    name = "cooccurrence"

    def __init__(self, split: TemporalSplit, num_users: int) -> None:
        x = user_item_matrix(split.train, num_users, len(split.item_counts))
        super().__init__((x.T @ x).tocsr(), split.item_counts, integer_scores=True)


class ItemKNN(_SparseRowScorer):
    """Cosine similarity between items' user vectors (train period)."""

    name = "item_knn"

    def __init__(self, split: TemporalSplit, num_users: int) -> None:
        x = user_item_matrix(split.train, num_users, len(split.item_counts))
        norms = np.sqrt(np.asarray(x.sum(axis=0)).ravel())  # (N,)
        inv = np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)
        xn = x @ sp.diags(inv)  # (U, N) unit columns
        super().__init__((xn.T @ xn).tocsr(), split.item_counts, integer_scores=False)


def ease_weights(x: np.ndarray | sp.csr_matrix, lam: float) -> np.ndarray:
    """EASE item-item weights for a (U, N) matrix: (N, N), zero diagonal. float64 throughout."""
    xs = x.astype(np.float64) if isinstance(x, sp.csr_matrix) else sp.csr_matrix(np.asarray(x, np.float64))
    g = torch.from_numpy(np.asarray((xs.T @ xs).todense()))  # (N, N) Gram matrix
    g.diagonal().add_(lam)
    p = torch.cholesky_inverse(torch.linalg.cholesky(g))  # (N, N) = (G + lambda I)^-1
    b = -p / p.diagonal()[None, :]  # B_ij = -P_ij / P_jj
    b.diagonal().zero_()
    return b.numpy()


class EASE:
    """EASE on the train period, restricted to items with train interactions (others score -inf).

    EASE inverts a dense (A, A) matrix: 8 A^2 bytes in float64, several times over (20k items:
    3.2 GB each). ``max_items`` bounds A to the most engaged train items (ties: lower code), the
    usual way to run EASE on a large catalog; the rest score -inf like items never engaged.
    """

    name = "ease"

    def __init__(
        self, split: TemporalSplit, num_users: int, lam: float, max_items: int | None = None
    ) -> None:
        n = len(split.item_counts)
        self.lam = lam
        active = np.flatnonzero(split.item_counts > 0)
        if max_items is not None and len(active) > max_items:
            keep = np.argsort(-split.item_counts[active], kind="stable")[:max_items]
            log.info(
                "EASE on the %d most engaged of %d train items (eval.ease_max_items)", max_items, len(active)
            )
            active = np.sort(active[keep])
        self.active = active  # (A,) item codes EASE scores
        x = user_item_matrix(split.train, num_users, n)[:, self.active]
        self._b = torch.from_numpy(ease_weights(x, lam).astype(np.float32))  # (A, A)
        self._pos = np.full(n, -1, dtype=np.int64)
        self._pos[self.active] = np.arange(len(self.active))
        self._n = n

    def retrieve(self, triggers: np.ndarray, k: int) -> np.ndarray:
        scores = torch.full((len(triggers), self._n), -torch.inf)  # (T, N)
        known = self._pos[triggers] >= 0
        rows = self._b[torch.as_tensor(self._pos[triggers][known])]  # (T_known, A)
        sub = torch.full((len(rows), self._n), -torch.inf)
        sub[:, torch.as_tensor(self.active)] = rows
        scores[torch.as_tensor(known)] = sub
        return topk_excluding(scores, triggers, k)


class ContentCosine:
    """Nearest items by cosine of unit content vectors (N, D) aligned with item codes.

    ``queries`` (N, D): the triggers' own vectors where they differ from the candidates' (trace
    fusion on the trigger side only: ``embedder.trace_side=trigger``); None: ``vectors``."""

    name = "content"

    def __init__(self, vectors: np.ndarray, queries: np.ndarray | None = None) -> None:
        self._v = torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32))  # (N, D)
        q = self._v if queries is None else torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32))
        if q.shape != self._v.shape:
            raise ValueError(f"content queries {tuple(q.shape)} and candidates {tuple(self._v.shape)} differ")
        self._q = q

    def retrieve(self, triggers: np.ndarray, k: int) -> np.ndarray:
        scores = self._q[torch.as_tensor(triggers, dtype=torch.long)] @ self._v.T  # (T, N)
        return topk_excluding(scores, triggers, k)
