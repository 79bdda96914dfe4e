"""The one interface every retriever implements, and the top-K helper they share."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np
import torch

__all__ = ["Retriever", "topk_excluding"]


@runtime_checkable
class Retriever(Protocol):
    """Anything that returns K candidate item codes for a batch of trigger item codes.

    ``retrieve(triggers, k)`` takes (T,) int64 codes and returns (T, k) int64 codes, best first,
    never containing the trigger itself; ``-1`` pads rows with fewer than k candidates.
    """

    name: str

    def retrieve(self, triggers: np.ndarray, k: int) -> np.ndarray: ...


def topk_excluding(scores: np.ndarray | torch.Tensor, triggers: np.ndarray, k: int) -> np.ndarray:
    """Top-k columns of each row of ``scores`` (T, N), the row's trigger masked out.

    Columns scored ``-inf`` are never returned (their slots are -1). Ties resolve towards the lower
    column index, so results are deterministic.

    Returns:
        (T, k) int64 codes.
    """
    s = torch.as_tensor(scores).clone()  # (T, N)
    rows = torch.arange(s.shape[0])
    s[rows, torch.as_tensor(triggers, dtype=torch.long)] = -torch.inf
    k_eff = min(k, s.shape[1])
    out = np.full((s.shape[0], k), -1, dtype=np.int64)
    if k_eff == 0 or s.shape[0] == 0:
        return out
    # Exact and deterministic without sorting whole rows: every column scoring at least the row's
    # k-th best value is a candidate (more than k only on ties); the candidates are the top-c of
    # the row (c = the most any row has), and a stable sort of those, by column then by score,
    # orders ties towards the lower column index, as a stable sort of the whole row would.
    kth = torch.topk(s, k_eff, dim=1, sorted=False).values.min(dim=1, keepdim=True).values  # (T, 1)
    c = int((s >= kth).sum(dim=1).max())
    vals, idx = torch.topk(s, c, dim=1, sorted=False)  # (T, c)
    idx, order = torch.sort(idx, dim=1)
    vals = torch.gather(vals, 1, order)
    vals, order = torch.sort(vals, dim=1, descending=True, stable=True)
    idx = torch.gather(idx, 1, order)
    vals, idx = vals[:, :k_eff], idx[:, :k_eff]  # (T, k_eff)
    idx[torch.isneginf(vals)] = -1
    out[:, :k_eff] = idx.numpy()
    return out
