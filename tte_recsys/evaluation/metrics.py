"""I2I retrieval metrics, pure functions of retrieved codes and held-out positives."""

from __future__ import annotations

import numpy as np

from tte_recsys.data.split import EvalSet

__all__ = ["cold_share_at_k", "coverage_at_k", "hits", "recall_at_k"]


def hits(evalset: EvalSet, topk: np.ndarray) -> np.ndarray:
    """(T, K) retrieved codes -> (P,) bool: is each positive of each trigger retrieved in the top-K?"""
    owner = np.repeat(np.arange(evalset.num_triggers), np.diff(evalset.indptr))  # (P,)
    found = np.zeros(len(owner), dtype=bool)
    step = 65_536  # (step, K) comparisons at a time
    for s in range(0, len(owner), step):
        o, t = owner[s : s + step], evalset.targets[s : s + step]
        found[s : s + step] = (topk[o] == t[:, None]).any(axis=1)  # -1 padding never matches
    return found


def recall_at_k(evalset: EvalSet, topk: np.ndarray, only_cold: bool = False) -> float:
    """Mean over triggers of (positives in the top-K) / (positives).

    Args:
        evalset: held-out positives.
        topk: (T, K) codes aligned with ``evalset.triggers``.
        only_cold: count only cold positives, averaging over triggers that have at least one.
    """
    if topk.shape[0] != evalset.num_triggers:
        raise ValueError(f"topk has {topk.shape[0]} rows, expected one per trigger ({evalset.num_triggers})")
    h = hits(evalset, topk).astype(np.float64)  # (P,)
    keep = evalset.cold if only_cold else np.ones(len(h), dtype=bool)
    owner = np.repeat(np.arange(evalset.num_triggers), np.diff(evalset.indptr))
    n_pos = np.bincount(owner[keep], minlength=evalset.num_triggers)  # (T,)
    n_hit = np.bincount(owner[keep], weights=h[keep], minlength=evalset.num_triggers)  # (T,)
    has = n_pos > 0
    return float(np.mean(n_hit[has] / n_pos[has])) if has.any() else float("nan")


def coverage_at_k(topk: np.ndarray, num_items: int) -> float:
    """Fraction of the catalog that appears in at least one top-K list."""
    return float(np.count_nonzero(np.bincount(topk[topk >= 0], minlength=num_items)) / num_items)


def cold_share_at_k(topk: np.ndarray, cold_items: np.ndarray) -> float:
    """Share of the filled top-K slots (code >= 0) that hold cold items."""
    filled = topk[topk >= 0]
    return float(cold_items[filled].mean()) if len(filled) else float("nan")
