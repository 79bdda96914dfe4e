from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.helpers import make_dataset
from tte_recsys.config import PairConfig, SplitConfig
from tte_recsys.data.split import temporal_split
from tte_recsys.evaluation.baselines import EASE, CoOccurrence, ItemKNN, Popularity, ease_weights
from tte_recsys.retrieval import topk_excluding


def test_ease_matches_direct_numpy() -> None:
    rng = np.random.default_rng(0)
    x = (rng.random((30, 8)) < 0.4).astype(np.float64)
    lam = 5.0
    p = np.linalg.inv(x.T @ x + lam * np.eye(8))
    b = np.eye(8) - p / np.diag(p)[None, :]
    np.fill_diagonal(b, 0.0)
    np.testing.assert_allclose(ease_weights(x, lam), b, rtol=1e-9, atol=1e-12)


def test_topk_excluding_masks_trigger_breaks_ties_by_index_and_pads() -> None:
    scores = torch.tensor([[1.0, 5.0, 5.0, -torch.inf], [2.0, 2.0, 2.0, 2.0]])
    got = topk_excluding(scores, np.array([1, 0]), 3)
    np.testing.assert_array_equal(got, [[2, 0, -1], [1, 2, 3]])


def test_topk_excluding_equals_a_stable_sort_of_whole_rows() -> None:
    # topk_excluding sorts only candidates; the reference sorts every row. Integer scores and
    # -inf cells make ties at the k-th place common, where the two could disagree.
    # Wide rows with few distinct values also take the path that fetches k + 17 columns and must
    # notice a tie at its edge; continuous scores take it without ties.
    rng = np.random.default_rng(0)
    for i in range(600):
        t, n, k = (int(x) for x in rng.integers(1, [12, 50, 70] if i % 3 == 0 else [12, 300, 40]))
        if i % 3 == 2:
            scores = rng.normal(size=(t, n)).astype(np.float32)
        else:
            scores = rng.integers(-3, 4 if i % 3 == 0 else 8, (t, n)).astype(np.float32)
        scores[rng.random((t, n)) < 0.2] = -np.inf
        triggers = rng.integers(0, n, t)
        masked = scores.copy()
        masked[np.arange(t), triggers] = -np.inf
        order = np.argsort(-masked, axis=1, kind="stable")[:, :k]  # ties: lower column first
        want = np.full((t, k), -1)
        want[:, : order.shape[1]] = np.where(np.isneginf(np.take_along_axis(masked, order, 1)), -1, order)
        np.testing.assert_array_equal(topk_excluding(scores, triggers, k), want)


def _split():  # type: ignore[no-untyped-def]
    # Train (t <= 8): u: A B C; v: A B; w: B D; x: D. Later interactions only make the split valid.
    rows = [
        ("u", "A", 1),
        ("u", "B", 2),
        ("u", "C", 3),
        ("v", "A", 4),
        ("v", "B", 5),
        ("w", "B", 6),
        ("w", "D", 7),
        ("x", "D", 8),
        ("y", "E", 9),
        ("y", "F", 10),
    ]
    ds = make_dataset(rows)
    return ds, temporal_split(ds, PairConfig(window=2), SplitConfig())


def test_popularity_and_cooccurrence_by_hand() -> None:
    ds, s = _split()
    code = {c: i for i, c in enumerate(ds.items["item_id"].to_list())}
    a, b, c, d = (code[x] for x in "ABCD")
    # train counts: A2 B3 C1 D2 (E, F: 0)
    np.testing.assert_array_equal(Popularity(s).retrieve(np.array([b]), 3), [[a, d, c]])
    # users in common with B: A 2, C 1, D 1; ties (C, D) broken by popularity (D 2 > C 1)
    np.testing.assert_array_equal(CoOccurrence(s, ds.num_users).retrieve(np.array([b]), 3), [[a, d, c]])
    # cosine with C: A = 1/sqrt(1*2), B = 1/sqrt(1*3), then the rest by popularity
    np.testing.assert_array_equal(ItemKNN(s, ds.num_users).retrieve(np.array([c]), 3), [[a, b, d]])


def test_ease_retriever_ranks_by_weight_row() -> None:
    ds, s = _split()
    e = EASE(s, ds.num_users, lam=1.0)
    trig = np.array([0, 1])
    got = e.retrieve(trig, 3)
    assert not (got == trig[:, None]).any()
    assert got.shape == (2, 3)
    with pytest.raises(AssertionError):
        np.testing.assert_array_equal(got[0], got[1])


def test_ease_max_items_keeps_the_most_engaged_train_items() -> None:
    ds, s = _split()
    code = {c: i for i, c in enumerate(ds.items["item_id"].to_list())}
    a, b, c, d = (code[x] for x in "ABCD")
    assert sorted(EASE(s, ds.num_users, lam=1.0).active.tolist()) == sorted([a, b, c, d])
    capped = EASE(s, ds.num_users, lam=1.0, max_items=2)  # counts A2 B3 C1 D2: B, then A (lower code)
    assert sorted(capped.active.tolist()) == sorted([b, min(a, d)])
    got = capped.retrieve(np.array([b, c]), 3)
    assert got[0].tolist() == [min(a, d), -1, -1]  # only the kept items are scored
    assert got[1].tolist() == [-1, -1, -1]  # C is outside the kept items: no weights
