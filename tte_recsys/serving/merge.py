"""Multi-head retrieval merged by quota (DESIGN.md: top-K1 from the coeng head, top-K2 from the
semantic head, duplicates and the trigger dropped).

Quotas are shares ``w_h`` (summing to 1). The merged list is built position by position: slot
``p`` goes to the head with the largest deficit ``w_h * p - taken_h`` (ties to the earlier head),
taking that head's best candidate not already listed. So *every prefix* honours the quota: the
top-K of a merged top-100 list holds ``round``-exact K1 = w_1 K coeng items and K2 = K - K1
semantic items, and one retrieval serves every cut-off. A head that runs out of candidates
leaves its slots to the others.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence

import numpy as np

from tte_recsys.evaluation.retrieval import topk_excluding

__all__ = ["HeadVectorsRetriever", "merge_by_quota", "popularity_bias", "quota_shares"]


def quota_shares(heads: Sequence[str], first_share: float) -> dict[str, float]:
    """Shares for a one- or two-head model from the first head's share ``K1 / K``."""
    if not 0.0 <= first_share <= 1.0:
        raise ValueError(f"quota share {first_share}: expected 0 <= K1/K <= 1")
    if len(heads) == 1:
        return {heads[0]: 1.0}
    if len(heads) != 2:
        raise ValueError(f"a K1/K share needs 1 or 2 heads, got {list(heads)}")
    return {heads[0]: first_share, heads[1]: 1.0 - first_share}


def popularity_bias(train_counts: np.ndarray, weight: float) -> np.ndarray | None:
    """The popularity prior: ``weight * log(1 + n)`` per item, ``n`` its train interactions.

    Added to every candidate's score in every head. The model's scores are cosines of unit
    vectors, which hold a catalog's popularity skew poorly; where that skew carries the
    co-engagement signal, the selection on valid turns this on (README). None for weight 0.
    """
    if weight < 0:
        raise ValueError(f"popularity prior weight {weight}: expected >= 0")
    if weight == 0:
        return None
    return (weight * np.log1p(np.asarray(train_counts, dtype=np.float64))).astype(np.float32)


def merge_by_quota(
    lists: Sequence[np.ndarray], shares: Sequence[float], k: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Merge per-head ranked lists.

    Args:
        lists: per head, (T, k_h) item codes best first (``-1`` = no candidate).
        shares: per head, its share of the merged list (non-negative; normalised to sum 1).
        k: merged list length.

    Returns:
        (T, k) codes (``-1`` padded), (T, k) index of the head that contributed each slot, and
        (T, k) the slot's position in that head's list (both -1 for padding), to look up scores.
    """
    if len(lists) != len(shares) or not lists:
        raise ValueError(f"{len(lists)} candidate lists for {len(shares)} shares")
    w = np.asarray(shares, dtype=np.float64)
    if (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"quota shares {list(shares)}: expected non-negative with a positive sum")
    w = w / w.sum()
    n_rows, n_heads = lists[0].shape[0], len(lists)
    codes = np.full((n_rows, k), -1, dtype=np.int64)
    source = np.full((n_rows, k), -1, dtype=np.int64)
    position = np.full((n_rows, k), -1, dtype=np.int64)
    rows = [lst.tolist() for lst in lists]  # python lists: this loop is per-slot bookkeeping
    for r in range(n_rows):
        cands = [rows[h][r] for h in range(n_heads)]
        ptr, taken, seen = [0] * n_heads, [0] * n_heads, set()
        for p in range(1, k + 1):
            # Weighted heads by deficit (ties to the earlier head), then zero-share heads as fill.
            order = sorted(range(n_heads), key=lambda j: (w[j] == 0, taken[j] - w[j] * p, j))
            chosen = -1
            for h in order:
                c = cands[h]
                while ptr[h] < len(c) and (c[ptr[h]] < 0 or c[ptr[h]] in seen):
                    ptr[h] += 1
                if ptr[h] < len(c):
                    chosen = h
                    break
            if chosen < 0:
                break
            item = cands[chosen][ptr[chosen]]
            codes[r, p - 1], source[r, p - 1], position[r, p - 1] = item, chosen, ptr[chosen]
            seen.add(item)
            taken[chosen] += 1
            ptr[chosen] += 1
    return codes, source, position


class HeadVectorsRetriever:
    """Exact per-head inner-product retrieval over in-memory unit vectors, merged by quota.

    Args:
        vectors: head -> (N, D) unit vectors aligned with item codes.
        shares: head -> share of the merged list (heads with share 0 are still searched, for
            filling when the others run out).
        name: the row name in reports.
        item_bias: (N,) added to every candidate's score in every head (the popularity prior of
            :func:`popularity_bias`, which the served bundle carries as an extra index dimension).

    Each head's top-K for a batch of triggers is kept, so :meth:`with_shares` copies, which share
    it, sweep the quota without searching again. The vectors must not change afterwards.
    """

    def __init__(
        self,
        vectors: Mapping[str, np.ndarray],
        shares: Mapping[str, float],
        name: str,
        item_bias: np.ndarray | None = None,
    ) -> None:
        unknown = sorted(set(shares) - set(vectors))
        if unknown:
            raise ValueError(f"quota names heads {unknown} the model does not have ({sorted(vectors)})")
        self.heads = [h for h in vectors if h in shares]
        self._v = {h: np.ascontiguousarray(vectors[h], dtype=np.float32) for h in self.heads}
        self._w = [float(shares[h]) for h in self.heads]
        self.name = name
        n = len(next(iter(self._v.values()))) if self._v else 0
        if item_bias is not None and np.shape(item_bias) != (n,):
            raise ValueError(f"item_bias has shape {np.shape(item_bias)}; expected ({n},), one per item")
        self._bias = None if item_bias is None else np.asarray(item_bias, dtype=np.float32)[None, :]
        self._lists: dict[tuple[str, int, bytes], np.ndarray] = {}

    def with_shares(self, shares: Mapping[str, float], name: str) -> HeadVectorsRetriever:
        """The same vectors and bias under other quota shares, reusing every search done so far."""
        other = copy.copy(self)
        unknown = sorted(set(shares) - set(self._v))
        if unknown:
            raise ValueError(f"quota names heads {unknown} this retriever does not have ({self.heads})")
        other.heads = [h for h in self.heads if h in shares]
        other._w = [float(shares[h]) for h in other.heads]
        other.name = name
        return other

    def _head_topk(self, h: str, triggers: np.ndarray, k: int) -> np.ndarray:
        key = (h, k, np.ascontiguousarray(triggers, dtype=np.int64).tobytes())
        if key not in self._lists:
            v = self._v[h]
            scores = v[triggers] @ v.T  # (T, N)
            if self._bias is not None:
                scores += self._bias
            self._lists[key] = topk_excluding(scores, triggers, k)  # (T, k)
        return self._lists[key]

    def retrieve(self, triggers: np.ndarray, k: int) -> np.ndarray:
        lists = [self._head_topk(h, triggers, k) for h in self.heads]
        if len(lists) == 1:
            return lists[0]
        return merge_by_quota(lists, self._w, k)[0]
