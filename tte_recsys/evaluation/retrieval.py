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
    # torch.topk does not promise an order among equal values; a stable descending sort does.
    vals, idx = torch.sort(s, dim=1, descending=True, stable=True)
    vals, idx = vals[:, :k_eff], idx[:, :k_eff]  # (T, k_eff)
    idx[torch.isneginf(vals)] = -1
    out = np.full((s.shape[0], k), -1, dtype=np.int64)
    out[:, :k_eff] = idx.numpy()
    return out
