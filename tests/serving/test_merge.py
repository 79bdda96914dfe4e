"""Quota merge against hand-worked examples, and the in-memory multi-head retriever."""

from __future__ import annotations

import numpy as np
import pytest

from tte_recsys.evaluation.quota import choose_point
from tte_recsys.serving.merge import HeadVectorsRetriever, merge_by_quota, popularity_bias, quota_shares
from tte_recsys.serving.merge import _merge_full_lists as merge_full_lists
from tte_recsys.serving.merge import _merge_rows as merge_rows

COENG = np.array([[1, 2, 3, 4, 5, 6]])
SEM = np.array([[2, 7, 8, 1, 9, 10]])


def test_half_half_interleaves_and_drops_duplicates() -> None:
    # slot 1: tie -> coeng 1; slot 2: sem 2; slot 3: coeng's 2 is taken -> 3; slot 4: sem 7;
    # slot 5: coeng 4; slot 6: sem 8 (sem's 1 comes later and would be a duplicate anyway).
    codes, src, pos = merge_by_quota([COENG, SEM], [0.5, 0.5], 6)
    assert codes.tolist() == [[1, 2, 3, 7, 4, 8]]
    assert src.tolist() == [[0, 1, 0, 1, 0, 1]]
    assert pos.tolist() == [[0, 0, 2, 1, 3, 2]]  # where each came from in its head's list


def test_every_prefix_honours_the_quota() -> None:
    # K1/K = 0.6: top-5 holds 3 coeng + 2 semantic items, and so does top-5 of a longer list.
    codes5, src5, _ = merge_by_quota([COENG, SEM], [0.6, 0.4], 5)
    assert codes5.tolist() == [[1, 2, 3, 7, 4]]
    assert (src5 == 0).sum() == 3
    codes10, _, _ = merge_by_quota([COENG, SEM], [0.6, 0.4], 10)
    assert codes10[:, :5].tolist() == codes5.tolist()


def test_exhausted_head_leaves_its_slots_to_the_other() -> None:
    codes, src, _ = merge_by_quota([COENG[:, :2], SEM], [1.0, 0.0], 6)
    assert codes.tolist() == [[1, 2, 7, 8, 9, 10]]
    assert src.tolist() == [[0, 0, 1, 1, 1, 1]]


def test_padding_and_short_lists() -> None:
    codes, src, _ = merge_by_quota([np.array([[3, -1]]), np.array([[3, -1]])], [0.5, 0.5], 4)
    assert codes.tolist() == [[3, -1, -1, -1]]
    assert src.tolist() == [[0, -1, -1, -1]]


def test_bad_shares() -> None:
    with pytest.raises(ValueError, match="non-negative"):
        merge_by_quota([COENG, SEM], [-0.5, 1.5], 3)
    with pytest.raises(ValueError, match="K1/K"):
        quota_shares(["coeng", "semantic"], 1.5)


def test_retriever_never_returns_the_trigger_and_follows_each_head() -> None:
    rng = np.random.default_rng(0)
    v = rng.normal(size=(20, 4)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    vecs = {"coeng": v, "semantic": v[::-1].copy()}
    trig = np.array([0, 5, 19])
    only = HeadVectorsRetriever(vecs, {"coeng": 1.0}, "c").retrieve(trig, 5)
    exact = np.argsort(-(v[trig] @ v.T) + np.eye(20)[trig] * 1e9, axis=1, kind="stable")[:, :5]
    assert only.tolist() == exact.tolist()
    both = HeadVectorsRetriever(vecs, {"coeng": 0.5, "semantic": 0.5}, "m").retrieve(trig, 8)
    assert not (both == trig[:, None]).any()
    assert all(len(set(r)) == 8 for r in both.tolist())
    with pytest.raises(ValueError, match="does not have"):
        HeadVectorsRetriever(vecs, {"other": 1.0}, "x")


def test_choose_point_tolerance_rule() -> None:
    pts = [
        {"share": 1.0, "recall@50": 0.100, "semrel@50": 0.30},
        {"share": 0.8, "recall@50": 0.097, "semrel@50": 0.40},  # within 5% of best: admissible
        {"share": 0.5, "recall@50": 0.090, "semrel@50": 0.60},  # 10% below: not admissible
    ]
    assert choose_point(pts, 50, 0.05)["share"] == 0.8
    assert choose_point(pts, 50, 0.0)["share"] == 1.0
    assert choose_point(pts, 50, 0.2)["share"] == 0.5


def test_item_bias_moves_boosted_items_up_in_every_head() -> None:
    v = np.eye(4, dtype=np.float32)[[0, 1, 2, 3, 0]] * 0.5 + np.float32(0.5) / 4  # 5 items, dim 4
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    vecs = {"coeng": v, "semantic": v[:, ::-1].copy()}
    plain = HeadVectorsRetriever(vecs, {"coeng": 1.0}, "p").retrieve(np.array([0]), 1)
    assert plain.tolist() == [[4]]  # item 4 has item 0's vector
    bias = np.array([0, 0, 0, 1.0, 0], dtype=np.float32)  # a large boost for item 3
    for shares in ({"coeng": 1.0}, {"semantic": 1.0}, {"coeng": 0.5, "semantic": 0.5}):
        got = HeadVectorsRetriever(vecs, shares, "b", item_bias=bias).retrieve(np.array([0]), 2)
        assert got.tolist() == [[3, 4]]
    with pytest.raises(ValueError, match=r"item_bias has shape \(3,\); expected \(5,\), one per item"):
        HeadVectorsRetriever(vecs, {"coeng": 1.0}, "b", item_bias=np.zeros(3))


def test_popularity_bias_is_weighted_log_counts() -> None:
    got = popularity_bias(np.array([0, 1, 9]), 0.1)
    assert got is not None
    np.testing.assert_allclose(got, [0.0, 0.1 * np.log(2.0), 0.1 * np.log(10.0)], rtol=1e-6)
    assert popularity_bias(np.array([3, 4]), 0.0) is None
    with pytest.raises(ValueError, match=">= 0"):
        popularity_bias(np.array([3]), -0.1)


def test_with_shares_reuses_searches_and_equals_a_fresh_retriever() -> None:
    rng = np.random.default_rng(1)
    v = rng.normal(size=(30, 6)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    vecs = {"coeng": v, "semantic": v[:, ::-1].copy()}
    bias = rng.random(30).astype(np.float32) * 0.1
    trig = np.array([1, 4, 9])
    base = HeadVectorsRetriever(vecs, quota_shares(list(vecs), 1.0), "b", item_bias=bias)
    base.retrieve(trig, 10)
    searched = dict(base._lists)
    for s in (0.8, 0.5, 0.0):
        swept = base.with_shares(quota_shares(list(vecs), s), f"s{s}").retrieve(trig, 10)
        fresh = HeadVectorsRetriever(vecs, quota_shares(list(vecs), s), "f", item_bias=bias).retrieve(
            trig, 10
        )
        np.testing.assert_array_equal(swept, fresh)
    assert base._lists.keys() == searched.keys()  # the sweep searched nothing new
    with pytest.raises(ValueError, match="does not have"):
        base.with_shares({"other": 1.0}, "x")


def test_vectorised_merge_equals_the_row_by_row_rule() -> None:
    # merge_by_quota takes a vectorised path when every head offers k distinct candidates per row
    # (after -1s); it must give exactly the row-by-row rule's codes, heads and positions.
    rng = np.random.default_rng(0)
    fast = 0
    for _ in range(1500):
        n_heads, n_rows, k = (int(x) for x in rng.integers(1, [4, 8, 12]))
        n = int(rng.integers(k + 2, 3 * k + 5))
        lists = []
        for _h in range(n_heads):
            width = int(rng.integers(k, k + 3)) if rng.random() < 0.8 else int(rng.integers(1, k + 3))
            lst = np.stack([rng.permutation(n)[:width] for _ in range(n_rows)])
            if rng.random() < 0.3:
                lst[rng.random(lst.shape) < 0.15] = -1  # padding, or a masked trigger
            if rng.random() < 0.05 and width > 1:
                lst[:, 1] = lst[:, 0]  # a head repeating an item
            lists.append(lst)
        w = rng.random(n_heads) * (rng.random(n_heads) > 0.3)
        w[0] += w.sum() == 0
        rule = merge_rows(lists, w / w.sum(), k)
        vectorised = merge_full_lists(lists, w / w.sum(), k)
        fast += vectorised is not None
        for got, want in zip(merge_by_quota(lists, list(w), k), rule, strict=True):
            np.testing.assert_array_equal(got, want)
        # the vectorised path itself (merge_by_quota merges fewer than ROW_BY_ROW_BELOW rows row by row)
        for got, want in zip(vectorised or rule, rule, strict=True):
            np.testing.assert_array_equal(got, want)
    assert 300 < fast < 1500  # both paths were exercised
