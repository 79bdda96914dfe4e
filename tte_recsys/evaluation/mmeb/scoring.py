"""MMEB-V2 scoring: deterministic ranking with a stated tie rule, hit@1 and linear-gain NDCG@5,
and the leaderboard means (meta-task, modality, overall).

Unlike the reference: ties never go wherever an unstable sort leaves them (``pessimistic``, the
default, ranks a relevant candidate after every other candidate of the same score; ``optimistic``
before), and each graded label stays with its own document (no set in between), so the score
does not depend on ``PYTHONHASHSEED``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

__all__ = ["TIES", "TaskScore", "aggregate", "ndcg_at_k", "score_task", "top_k_order"]

TIES = ("pessimistic", "optimistic")
_BLOCK_FLOATS = 1 << 25  # the (chunk, C) score block of one matmul: 128 MB of float32
_DENSE_FACTOR = 8  # local lists: one matmul over the whole pool while it is at most this x a list


def top_k_order(scores: np.ndarray, grades: np.ndarray, k: int, ties: str = "pessimistic") -> np.ndarray:
    """Indices of the ``k`` best candidates of one query, best first.

    Descending score; an exact tie goes against the higher grade (``pessimistic``) or to it
    (``optimistic``), then to the earlier candidate. Only candidates scoring at least the k-th
    best are sorted, which gives the same prefix as sorting them all.

    Args:
        scores: (C,) dot products; grades: (C,) relevance, 0 for non-relevant.
    """
    if ties not in TIES:
        raise ValueError(f"ties={ties!r}: expected one of {list(TIES)}")
    k = min(k, len(scores))
    thresh = np.partition(scores, len(scores) - k)[len(scores) - k]
    cand = np.flatnonzero(scores >= thresh)  # (c',) every candidate that can be in the top k
    tie_key = grades[cand] if ties == "pessimistic" else -grades[cand]
    return cand[np.lexsort((cand, tie_key, -scores[cand]))][:k]


def ndcg_at_k(ranked_grades: np.ndarray, all_grades: np.ndarray, k: int = 5) -> float:
    """Linear-gain NDCG@k: sum grade / log2(rank + 1) over the top k, over the ideal DCG from the
    query's positive grades sorted (0 when it has none)."""
    disc = 1.0 / np.log2(np.arange(2, k + 2))  # (k,)
    ideal = np.sort(all_grades[all_grades > 0])[::-1][:k]
    idcg = float(ideal @ disc[: len(ideal)])
    top = ranked_grades[:k]
    return float(top @ disc[: len(top)]) / idcg if idcg > 0 else 0.0


def _first_relevant_rank(scores: np.ndarray, grades: np.ndarray, ties: str) -> int:
    """1-based rank of the first relevant candidate under the tie rule."""
    best = scores[grades > 0].max()
    before = int((scores > best).sum())
    if ties == "pessimistic":
        before += int(((scores == best) & (grades <= 0)).sum())
    return before + 1


@dataclass(frozen=True)
class TaskScore:
    """A task's score (mean over queries, in percent) and its per-query predictions."""

    score: float
    per_query: np.ndarray
    predictions: pl.DataFrame


def score_task(
    q: np.ndarray,
    c: np.ndarray,
    lists: Sequence[np.ndarray] | None,
    relevance: Sequence[Mapping[int, float]],
    metric: str,
    names: Sequence[str] | None = None,
    query_names: Sequence[str] | None = None,
    ties: str = "pessimistic",
    top_k: int = 10,
) -> TaskScore:
    """Score one task.

    Args:
        q: (Q, D) query embeddings; c: (C, D) candidate embeddings (unit rows: dot = cosine).
        lists: per query, the candidate indices it ranks (local); None ranks every candidate (global).
        relevance: per query, candidate index -> grade (> 0); a query needs at least one.
        metric: ``hit@1`` or ``ndcg_linear@5``.
        names, query_names: for the predictions table (default: indices).
    """
    if metric not in ("hit@1", "ndcg_linear@5"):
        raise ValueError(f"metric={metric!r}: expected 'hit@1' or 'ndcg_linear@5'")
    if len(q) != len(relevance) or (lists is not None and len(lists) != len(q)):
        raise ValueError(f"{len(q)} query vectors, {len(relevance)} relevance maps, lists {len(lists or [])}")
    names = list(names) if names is not None else [str(i) for i in range(len(c))]
    k_out = max(top_k, 5)
    per_query = np.zeros(len(q), dtype=np.float64)
    rows: dict[str, list[Any]] = {"query": [], "top": [], "top_scores": [], "first_relevant_rank": []}
    # Global tasks, and local ones whose pool is small next to a list, score a block of queries
    # against every candidate in one matmul; local lists from a large pool gather their rows.
    mean_list = float(np.mean([len(x) for x in lists])) if lists else 0.0
    dense = lists is None or len(c) <= _DENSE_FACTOR * mean_list
    chunk = max(1, _BLOCK_FLOATS // max(len(c), 1))
    for start in range(0, len(q), chunk):
        block = q[start : start + chunk] @ c.T if dense else None  # (b, C)
        for j in range(min(chunk, len(q) - start)):
            i = start + j
            rel = relevance[i]
            if not rel:
                raise ValueError(f"query {i} has no relevant candidate")
            idx = np.arange(len(c)) if lists is None else lists[i]
            row = block[j] if block is not None else None  # (C,)
            s = c[idx] @ q[i] if row is None else row if lists is None else row[idx]  # (n,)
            pos = {int(x): p for p, x in enumerate(idx)} if lists is not None else None
            g = np.zeros(len(idx))
            for cand, grade in rel.items():
                g[cand if pos is None else pos[cand]] = grade
            order = top_k_order(s, g, k_out, ties)
            if metric == "hit@1":
                per_query[i] = float(g[order[0]] > 0)
            else:
                per_query[i] = ndcg_at_k(g[order], g, 5)
            rows["query"].append(query_names[i] if query_names is not None else str(i))
            rows["top"].append([names[int(idx[o])] for o in order[:top_k]])
            rows["top_scores"].append([float(s[o]) for o in order[:top_k]])
            rows["first_relevant_rank"].append(_first_relevant_rank(s, g, ties))
    preds = pl.DataFrame(rows).with_columns(pl.Series("score", per_query))
    return TaskScore(100.0 * float(per_query.mean()), per_query, preds)


def aggregate(scores: Mapping[str, float], meta: Mapping[str, tuple[str, str]]) -> dict[str, Any]:
    """Plain means: per meta-task and per modality (over their tasks), and overall (over every
    task scored). ``meta``: task -> (modality, meta-task)."""
    by_meta: dict[str, list[float]] = {}
    by_mod: dict[str, list[float]] = {}
    for t, v in scores.items():
        mod, mt = meta[t]
        by_meta.setdefault(f"{mod}/{mt}", []).append(v)
        by_mod.setdefault(mod, []).append(v)
    return {
        "meta_tasks": {k: {"score": float(np.mean(v)), "tasks": len(v)} for k, v in by_meta.items()},
        "modalities": {k: {"score": float(np.mean(v)), "tasks": len(v)} for k, v in by_mod.items()},
        "overall": {"score": float(np.mean(list(scores.values()))) if scores else None, "tasks": len(scores)},
    }
