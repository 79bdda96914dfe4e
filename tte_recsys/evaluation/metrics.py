"""I2I retrieval metrics, pure functions of retrieved codes and held-out positives."""

from __future__ import annotations

import numpy as np

from tte_recsys.data.split import EvalSet

__all__ = [
    "cold_share_at_k",
    "coverage_at_k",
    "hits",
    "paired_bootstrap",
    "per_trigger_recall",
    "recall_at_k",
]


def hits(evalset: EvalSet, topk: np.ndarray) -> np.ndarray:
    """(T, K) retrieved codes -> (P,) bool: is each positive of each trigger retrieved in the top-K?"""
    owner = np.repeat(np.arange(evalset.num_triggers), np.diff(evalset.indptr))  # (P,)
    found = np.zeros(len(owner), dtype=bool)
    step = 65_536  # (step, K) comparisons at a time
    for s in range(0, len(owner), step):
        o, t = owner[s : s + step], evalset.targets[s : s + step]
        found[s : s + step] = (topk[o] == t[:, None]).any(axis=1)  # -1 padding never matches
    return found


def per_trigger_recall(evalset: EvalSet, topk: np.ndarray, only_cold: bool = False) -> np.ndarray:
    """(T,) per trigger: (positives in the top-K) / (positives); NaN where it has none counted.

    Args:
        evalset: held-out positives.
        topk: (T, K) codes aligned with ``evalset.triggers``.
        only_cold: count only cold positives.
    """
    if topk.shape[0] != evalset.num_triggers:
        raise ValueError(f"topk has {topk.shape[0]} rows, expected one per trigger ({evalset.num_triggers})")
    h = hits(evalset, topk).astype(np.float64)  # (P,)
    keep = evalset.cold if only_cold else np.ones(len(h), dtype=bool)
    owner = np.repeat(np.arange(evalset.num_triggers), np.diff(evalset.indptr))
    n_pos = np.bincount(owner[keep], minlength=evalset.num_triggers)  # (T,)
    n_hit = np.bincount(owner[keep], weights=h[keep], minlength=evalset.num_triggers)  # (T,)
    out = np.full(evalset.num_triggers, np.nan)
    has = n_pos > 0
    out[has] = n_hit[has] / n_pos[has]
    return out


def recall_at_k(evalset: EvalSet, topk: np.ndarray, only_cold: bool = False) -> float:
    """Mean over triggers of (positives in the top-K) / (positives) (:func:`per_trigger_recall`);
    with ``only_cold``, over the triggers that have a cold positive; NaN when none has."""
    per = per_trigger_recall(evalset, topk, only_cold)
    return float(np.nanmean(per)) if (~np.isnan(per)).any() else float("nan")


def coverage_at_k(topk: np.ndarray, num_items: int) -> float:
    """Fraction of the catalog that appears in at least one top-K list."""
    return float(np.count_nonzero(np.bincount(topk[topk >= 0], minlength=num_items)) / num_items)


def cold_share_at_k(topk: np.ndarray, cold_items: np.ndarray) -> float:
    """Share of the filled top-K slots (code >= 0) that hold cold items."""
    filled = topk[topk >= 0]
    return float(cold_items[filled].mean()) if len(filled) else float("nan")


def paired_bootstrap(
    a: np.ndarray, b: np.ndarray, resamples: int = 1000, seed: int = 0, level: float = 0.95
) -> dict[str, float]:
    """The mean of ``a - b`` over units (triggers) scored by both methods, and its paired
    bootstrap percentile interval: ``resamples`` resamples of the units with replacement, the same
    units for both methods in each. Units where either value is NaN (no positive counted) are
    dropped first. Returns ``{"diff", "lo", "hi", "n"}``; a difference is real at ``level`` when
    the interval excludes 0."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(
            f"paired_bootstrap: expected two (T,) arrays of one length, got {a.shape} and {b.shape}"
        )
    keep = ~(np.isnan(a) | np.isnan(b))
    d = a[keep] - b[keep]
    if len(d) == 0:
        return {"diff": float("nan"), "lo": float("nan"), "hi": float("nan"), "n": 0}
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(d), size=(resamples, len(d)))
    means = d[idx].mean(axis=1)
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(means, [tail, 100 - tail])
    return {"diff": float(d.mean()), "lo": float(lo), "hi": float(hi), "n": len(d)}
