"""The one interface every retriever implements, and the top-K helper they share."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np
import torch

__all__ = ["ItemRetriever", "topk_excluding"]


@runtime_checkable
class ItemRetriever(Protocol):
    """Anything that returns K candidate item codes for a batch of trigger item codes.

    ``retrieve(triggers, k)`` takes (T,) int64 codes and returns (T, k) int64 codes, best first,
    never containing the trigger itself; ``-1`` pads rows with fewer than k candidates.
    """

    name: str

    def retrieve(self, triggers: np.ndarray, k: int) -> np.ndarray: ...


def topk_excluding(scores: np.ndarray | torch.Tensor, triggers: np.ndarray, k: int) -> np.ndarray:
    """Top-k columns of each row of ``scores`` (T, N), the row's trigger masked out.

    Columns scored ``-inf`` are never returned (their slots are -1). Ties resolve towards the lower
    column index, so results are deterministic: the order of a stable descending sort of the row.

    Returns:
        (T, k) int64 codes.
    """
    s = torch.as_tensor(scores)  # (T, N), not modified
    n_rows, n = s.shape
    out = np.full((n_rows, k), -1, dtype=np.int64)
    k_eff = min(k, n)
    if k_eff == 0 or n_rows == 0:
        return out
    trig = torch.as_tensor(triggers, dtype=torch.long)[:, None]  # (T, 1)
    # One pass: the best m columns, the trigger among them masked. Every column scoring at least
    # the row's k-th best is among them unless the m-th column ties with it (then: _exact).
    m = min(n, k_eff + 17)
    vals, idx = torch.topk(s, m, dim=1, sorted=False)  # (T, m)
    floor = vals.min(dim=1, keepdim=True).values  # the m-th best of the unmasked row
    vals = vals.masked_fill(idx == trig, -torch.inf)
    kth = torch.topk(vals, k_eff, dim=1, sorted=False).values.min(dim=1, keepdim=True).values
    if m < n and not bool(((floor < kth) | torch.isneginf(kth)).all()):
        return _exact(s, trig, k_eff, out)
    _ordered(vals, idx, k_eff, out)
    return out


def _ordered(vals: torch.Tensor, idx: torch.Tensor, k_eff: int, out: np.ndarray) -> None:
    """Order candidates (T, c) best first, ties to the lower column; the first k_eff into ``out``."""
    idx, order = torch.sort(idx, dim=1)
    vals = torch.gather(vals, 1, order)
    vals, order = torch.sort(vals, dim=1, descending=True, stable=True)
    idx = torch.gather(idx, 1, order)[:, :k_eff]
    idx[torch.isneginf(vals[:, :k_eff])] = -1
    out[:, :k_eff] = idx.numpy()


def _exact(s: torch.Tensor, trig: torch.Tensor, k_eff: int, out: np.ndarray) -> np.ndarray:
    """Whatever the ties: every column at or above a row's k-th score is a candidate (the top-c of
    the row, c the most any row has), and only those are sorted."""
    s = s.clone()
    s.scatter_(1, trig, -torch.inf)
    kth = torch.topk(s, k_eff, dim=1, sorted=False).values.min(dim=1, keepdim=True).values  # (T, 1)
    c = int((s >= kth).sum(dim=1).max())
    vals, idx = torch.topk(s, c, dim=1, sorted=False)  # (T, c)
    _ordered(vals, idx, k_eff, out)
    return out
