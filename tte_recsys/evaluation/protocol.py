"""Evaluate any :class:`ItemRetriever` on an :class:`EvalSet`, and the classical-baseline suite."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from tte_recsys.config import EvalConfig
from tte_recsys.data.labels import RelevanceLabeler
from tte_recsys.data.split import EvalSet, TemporalSplit
from tte_recsys.evaluation.baselines import EASE, CoOccurrence, ItemKNN, Popularity
from tte_recsys.evaluation.metrics import (
    cold_share_at_k,
    coverage_at_k,
    paired_bootstrap,
    per_trigger_recall,
    recall_at_k,
)
from tte_recsys.progress import progress
from tte_recsys.retrieval import ItemRetriever

__all__ = [
    "Metrics",
    "evaluate_baselines",
    "evaluate_baselines_both_ways",
    "evaluate_retriever",
    "paired_intervals",
    "retrieve_all",
]

log = logging.getLogger(__name__)
Metrics = dict[str, float]


def retrieve_all(retriever: ItemRetriever, triggers: np.ndarray, k: int, batch_size: int) -> np.ndarray:
    """(T,) triggers -> (T, k) codes, in batches; checks the ItemRetriever contract."""
    out = []
    for start in progress(
        range(0, len(triggers), batch_size),
        desc=f"retrieve {retriever.name}",
        leave=False,
        disable=len(triggers) <= batch_size,
    ):
        t = triggers[start : start + batch_size]
        r = np.asarray(retriever.retrieve(t, k))
        if r.shape != (len(t), k):
            raise ValueError(f"retriever {retriever.name!r} returned shape {r.shape}, expected {(len(t), k)}")
        if (r == t[:, None]).any():
            raise ValueError(f"retriever {retriever.name!r} returned a trigger among its own candidates")
        out.append(r)
    return np.concatenate(out) if out else np.zeros((0, k), dtype=np.int64)


def evaluate_retriever(
    retriever: ItemRetriever, evalset: EvalSet, labeler: RelevanceLabeler, num_items: int, cfg: EvalConfig
) -> Metrics:
    """recall@K, semrel@K, coverage@K, cold_recall@K and cold_share@K (the share of retrieved
    slots holding cold items) for every K in ``cfg.ks``."""
    kmax = max(cfg.ks)
    topk = retrieve_all(retriever, evalset.triggers, kmax, cfg.batch_size)  # (T, Kmax)
    labels = labeler.topk(evalset.triggers, topk)  # (T, Kmax)
    m: Metrics = {}
    for k in sorted(cfg.ks):
        top = topk[:, :k]
        m[f"recall@{k}"] = recall_at_k(evalset, top)
        m[f"semrel@{k}"] = float(labels[:, :k].mean()) if len(top) else float("nan")
        m[f"coverage@{k}"] = coverage_at_k(top, num_items)
        m[f"cold_recall@{k}"] = recall_at_k(evalset, top, only_cold=True)
        m[f"cold_share@{k}"] = cold_share_at_k(top, evalset.cold_items)
    return m


def evaluate_baselines(
    split: TemporalSplit,
    labeler: RelevanceLabeler,
    num_users: int,
    cfg: EvalConfig,
    extra: dict[str, Callable[[], ItemRetriever]] | None = None,
    ease_lambda: float | None = None,
) -> tuple[dict[str, Metrics], dict[str, object]]:
    """Fit every classical baseline on the split's fit data (train; train + valid in its refit
    view); choose EASE's lambda on valid, or take ``ease_lambda`` (chosen there before); score on test.

    Args:
        extra: more retrievers to include, by name (built lazily).
        ease_lambda: EASE's lambda, already chosen on valid (the refit view has no valid to choose on).

    Returns:
        (test metrics per method, selection record: the lambda grid with valid recall and the choice).
    """
    n = len(split.item_counts)
    key = f"recall@{cfg.select_k}"

    def score(r: ItemRetriever, which: EvalSet) -> Metrics:
        return evaluate_retriever(r, which, labeler, n, cfg)

    grid: dict[str, float] = {}
    best: tuple[float, EASE] | None = None
    if ease_lambda is not None:
        best = (math.nan, EASE(split, num_users, ease_lambda, cfg.ease_max_items))
    for lam in progress(cfg.ease_lambdas if best is None else (), desc="EASE lambda on valid", leave=False):
        model = EASE(split, num_users, lam, cfg.ease_max_items)
        v = score(model, split.valid)[key]
        grid[str(lam)] = v
        log.info("EASE lambda=%s valid %s=%.4f", lam, key, v)
        if best is None or (not math.isnan(v) and v > best[0]):
            best = (v, model)
    if best is None:
        raise ValueError("eval.ease_lambdas is empty")
    makers: dict[str, Callable[[], ItemRetriever]] = {
        "popularity": lambda: Popularity(split),
        "cooccurrence": lambda: CoOccurrence(split, num_users),
        "item_knn": lambda: ItemKNN(split, num_users),
        "ease": lambda: best[1],
        **(extra or {}),
    }
    results = {
        name: score(make(), split.test) for name, make in progress(makers.items(), desc="baselines on test")
    }
    ease = best[1]
    selection: dict[str, object] = {
        "ease": {"valid_" + key: grid, "lambda": ease.lam, "items": len(ease.active)}
    }
    return results, selection


def evaluate_baselines_both_ways(
    split: TemporalSplit,
    labeler: RelevanceLabeler,
    num_users: int,
    cfg: EvalConfig,
    extra: dict[str, Callable[[], ItemRetriever]] | None = None,
    refit_extra: dict[str, Callable[[], ItemRetriever]] | None = None,
) -> tuple[dict[str, Metrics], dict[str, Metrics] | None, dict[str, object]]:
    """The baselines fit on train (EASE lambda chosen on valid) and, with ``cfg.refit``, refit on
    train + valid with that lambda; both scored on the same test positives. Returns (train-only
    rows, refit rows or None, selection). ``refit_extra``: the refit view's own extra rows."""
    methods, selection = evaluate_baselines(split, labeler, num_users, cfg, extra=extra)
    if not cfg.refit:
        return methods, None, selection
    lam = float(selection["ease"]["lambda"])  # type: ignore[index]
    refit, _ = evaluate_baselines(
        split.refit_view(), labeler, num_users, cfg, extra=refit_extra, ease_lambda=lam
    )
    return methods, refit, selection


def paired_intervals(
    rows: Mapping[str, Callable[[], ItemRetriever]],
    pairs: Sequence[tuple[str, str]],
    evalset: EvalSet,
    k: int,
    batch_size: int,
    resamples: int = 1000,
) -> dict[str, dict[str, float]]:
    """Per ``(row, reference)`` pair whose two rows are both in ``rows``: the paired bootstrap 95%
    interval (:func:`~tte_recsys.evaluation.metrics.paired_bootstrap`) of the per-trigger
    recall@``k`` difference, row minus reference, on ``evalset``. Keyed ``"<row> vs <reference>"``."""
    per: dict[str, np.ndarray] = {}
    for name in dict.fromkeys(n for pair in pairs for n in pair if n in rows):
        per[name] = per_trigger_recall(evalset, retrieve_all(rows[name](), evalset.triggers, k, batch_size))
    return {
        f"{a} vs {b}": {"k": k, **paired_bootstrap(per[a], per[b], resamples)}
        for a, b in pairs
        if a in per and b in per
    }
