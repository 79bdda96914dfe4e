"""Multi-head retrieval merged by quota (docs/design.md, "Serving": top-K1 from the coeng head, top-K2 from the
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

from tte_recsys.retrieval import topk_excluding

__all__ = [
    "HeadVectorsRetriever",
    "age_bias",
    "merge_by_quota",
    "popularity_bias",
    "quota_shares",
    "sum_biases",
]


# Fewer rows than this are merged row by row: the vectorised path's fixed cost is larger there
# (2 heads, k = 10: 1 row 50 us against 290 us, 4 rows 140 against 370, 8 rows 300 against 330;
# measured 2026-12-02 on a busy 2-core Intel Xeon VM). A served single-id query is one row.
ROW_BY_ROW_BELOW = 8


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

    ``train_counts`` may be fractional: with listing dates in the catalog the pipeline passes
    counts per time on the shelf (:func:`tte_recsys.data.split.popularity_counts`).

    Added to every candidate's score in every head. The model's scores are cosines of unit
    vectors, which hold a catalog's popularity skew poorly; where that skew carries the
    co-engagement signal, the selection on valid turns this on (docs/results.md). None for weight 0.
    """
    if weight < 0:
        raise ValueError(f"popularity prior weight {weight}: expected >= 0")
    if weight == 0:
        return None
    return (weight * np.log1p(np.asarray(train_counts, dtype=np.float64))).astype(np.float32)


def age_bias(age_days: np.ndarray, weight: float) -> np.ndarray | None:
    """The item-age prior: ``-weight * log(1 + age in days)`` per item, so newer items score higher
    (a freshness prior; :func:`tte_recsys.data.split.item_age_days`). None for weight 0."""
    if weight < 0:
        raise ValueError(f"item-age prior weight {weight}: expected >= 0")
    if weight == 0:
        return None
    return (-weight * np.log1p(np.asarray(age_days, dtype=np.float64))).astype(np.float32)


def sum_biases(*biases: np.ndarray | None) -> np.ndarray | None:
    """The per-item score bias of several priors (None where all are off)."""
    present = [b for b in biases if b is not None]
    if not present:
        return None
    total = present[0].astype(np.float32)
    for b in present[1:]:
        total = total + b
    return total


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
    if lists[0].shape[0] < ROW_BY_ROW_BELOW:
        return _merge_rows(lists, w, k)
    fast = _merge_full_lists(lists, w, k)
    return fast if fast is not None else _merge_rows(lists, w, k)


def _head_order(w: np.ndarray, taken: Sequence[int], p: int) -> list[int]:
    """Heads by priority at slot ``p``: weighted heads by deficit (ties to the earlier head), then
    zero-share heads (they only fill when the others run out)."""
    return sorted(range(len(w)), key=lambda j: (w[j] == 0, taken[j] - w[j] * p, j))


def _merge_rows(
    lists: Sequence[np.ndarray], w: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The rule, row by row: any lists (padding, short lists, heads that run out)."""
    n_rows, n_heads = lists[0].shape[0], len(lists)
    codes = np.full((n_rows, k), -1, dtype=np.int64)
    source = np.full((n_rows, k), -1, dtype=np.int64)
    position = np.full((n_rows, k), -1, dtype=np.int64)
    rows = [lst.tolist() for lst in lists]  # python lists: this loop is per-slot bookkeeping
    for r in range(n_rows):
        cands = [rows[h][r] for h in range(n_heads)]
        ptr, taken, seen = [0] * n_heads, [0] * n_heads, set()
        for p in range(1, k + 1):
            chosen = -1
            for h in _head_order(w, taken, p):
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


def _merge_full_lists(
    lists: Sequence[np.ndarray], w: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """The same rule vectorised over rows, for the common case: every head offers at least k
    distinct candidates per row (after dropping ``-1``). None when that does not hold.

    Then no head runs out (a head with n_h slots skips at most the k - n_h items the others
    took), so which head fills slot p is the same for every row, and an item is a duplicate
    exactly when another head's pointer has passed it: a table of where each item sits in the
    other heads' lists decides every skip without a set per row.
    """
    n_rows, n_heads = lists[0].shape[0], len(lists)
    compact, where = [], []  # per head: (T, k) candidates without -1, and their original columns
    for lst in lists:
        order = np.argsort(lst < 0, axis=1, kind="stable")[:, :k]  # valid entries first, in order
        c = np.take_along_axis(lst, order, axis=1)
        if c.shape[1] < k or (c < 0).any():
            return None
        compact.append(c.astype(np.int64))
        where.append(order)
    pattern, taken = [], [0] * n_heads
    for p in range(1, k + 1):
        h = _head_order(w, taken, p)[0]
        pattern.append(h)
        taken[h] += 1
    for c in compact:
        srt = np.sort(c, axis=1)
        if (srt[:, 1:] == srt[:, :-1]).any():  # a head repeats an item in one row
            return None
    # pos[h, g]: (T, k) the column of head h's candidate in head g's list (k: absent). One sort of
    # the two lists side by side per row: equal neighbours are the shared items, h's copy first.
    pos: dict[tuple[int, int], np.ndarray] = {}
    rows = np.arange(n_rows)
    for h in range(n_heads):
        for g in range(n_heads):
            if g == h:
                continue
            both = np.concatenate([compact[h], compact[g]], axis=1)  # (T, 2k)
            order = np.argsort(both, axis=1, kind="stable")
            same = np.take_along_axis(both, order, axis=1)
            r, i = np.nonzero(same[:, 1:] == same[:, :-1])
            table = np.full((n_rows, k), k, dtype=np.int64)
            table[r, order[r, i]] = order[r, i + 1] - k
            pos[h, g] = table
    ptr = np.zeros((n_heads, n_rows), dtype=np.int64)
    codes = np.empty((n_rows, k), dtype=np.int64)
    source = np.empty((n_rows, k), dtype=np.int64)
    position = np.empty((n_rows, k), dtype=np.int64)
    for p, h in enumerate(pattern):
        while True:  # skip, row by row, the candidates another head has already taken
            if (ptr[h] >= k).any():  # cannot happen (see above); the row-by-row rule if it does
                return None
            dup = np.zeros(n_rows, dtype=bool)
            for g in range(n_heads):
                if g != h:
                    dup |= pos[h, g][rows, ptr[h]] < ptr[g]
            if not dup.any():
                break
            ptr[h] += dup
        codes[:, p] = compact[h][rows, ptr[h]]
        source[:, p] = h
        position[:, p] = where[h][rows, ptr[h]]
        ptr[h] += 1
    return codes, source, position


def _heads_and_weights(available: list[str], shares: Mapping[str, float]) -> tuple[list[str], list[float]]:
    """The heads a quota names, in ``available``'s order, and their shares; unknown names raise."""
    unknown = sorted(set(shares) - set(available))
    if unknown:
        raise ValueError(f"quota names heads {unknown} the model does not have ({sorted(available)})")
    heads = [h for h in available if h in shares]
    return heads, [float(shares[h]) for h in heads]


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
        self.heads, self._w = _heads_and_weights(list(vectors), shares)
        self._v = {h: np.ascontiguousarray(vectors[h], dtype=np.float32) for h in self.heads}
        self.name = name
        n = len(next(iter(self._v.values()))) if self._v else 0
        if item_bias is not None and np.shape(item_bias) != (n,):
            raise ValueError(f"item_bias has shape {np.shape(item_bias)}; expected ({n},), one per item")
        self._bias = None if item_bias is None else np.asarray(item_bias, dtype=np.float32)[None, :]
        self._lists: dict[tuple[str, int, bytes], np.ndarray] = {}

    def with_shares(self, shares: Mapping[str, float], name: str) -> HeadVectorsRetriever:
        """The same vectors and bias under other quota shares, reusing every search done so far."""
        other = copy.copy(self)
        other.heads, other._w = _heads_and_weights(self.heads, shares)
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
