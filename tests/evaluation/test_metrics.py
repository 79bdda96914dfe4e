from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from tests.helpers import make_dataset
from tte_recsys.config import EvalConfig, LabelConfig
from tte_recsys.data.labels import RelevanceLabeler
from tte_recsys.data.split import EvalSet
from tte_recsys.evaluation.metrics import cold_share_at_k, coverage_at_k, paired_bootstrap, recall_at_k
from tte_recsys.evaluation.protocol import evaluate_retriever

# trigger 0 -> {2, 3 (cold)}, trigger 1 -> {4}
EV = EvalSet(
    triggers=np.array([0, 1]),
    indptr=np.array([0, 2, 3]),
    targets=np.array([2, 3, 4]),
    cold_items=np.array([False, False, False, True, False, False, False, False]),  # item 3
)


def test_recall_by_hand() -> None:
    topk = np.array([[2, 5], [6, 7]])
    assert recall_at_k(EV, topk) == pytest.approx((1 / 2 + 0) / 2)
    assert recall_at_k(EV, np.array([[3, 2], [4, -1]])) == pytest.approx(1.0)
    assert recall_at_k(EV, np.array([[5], [4]])) == pytest.approx(0.5)


def test_cold_recall_averages_only_triggers_with_cold_targets() -> None:
    assert recall_at_k(EV, np.array([[3, 5], [4, 6]]), only_cold=True) == pytest.approx(1.0)
    assert recall_at_k(EV, np.array([[2, 5], [4, 6]]), only_cold=True) == pytest.approx(0.0)


def test_coverage_by_hand() -> None:
    assert coverage_at_k(np.array([[2, 5], [5, -1]]), 10) == pytest.approx(0.2)


def test_recall_rejects_misaligned_rows() -> None:
    with pytest.raises(ValueError, match="expected one per trigger"):
        recall_at_k(EV, np.array([[2, 5]]))


class _Fixed:
    name = "fixed"

    def __init__(self, lists: dict[int, list[int]]) -> None:
        self.lists = lists

    def retrieve(self, triggers: np.ndarray, k: int) -> np.ndarray:
        return np.array([self.lists[int(t)][:k] for t in triggers])


def test_evaluate_retriever_semrel_and_contract() -> None:
    genres = {str(i): g for i, g in enumerate([["a"], ["b"], ["a"], ["a", "b"], ["b"], ["c"]])}
    ds = make_dataset([("u", "0", 1)], items=genres)
    lab = RelevanceLabeler.from_dataset(ds, LabelConfig(fields={"genres": 1.0}))
    cfg = EvalConfig(ks=(1, 2), select_k=2)
    m = evaluate_retriever(_Fixed({0: [2, 3], 1: [5, 4]}), EV, lab, 6, cfg)
    # labels: trigger 0 {a}: item 2 {a} -> 1, item 3 {a,b} -> 1/2; trigger 1 {b}: item 5 {c} -> 0, item 4 {b} -> 1
    assert m["semrel@1"] == pytest.approx((1 + 0) / 2)
    assert m["semrel@2"] == pytest.approx((1 + 0.5 + 0 + 1) / 4)
    assert m["recall@1"] == pytest.approx((1 / 2 + 0) / 2)
    assert m["recall@2"] == pytest.approx((1 + 1) / 2)
    assert m["cold_recall@2"] == pytest.approx(1.0)
    assert m["coverage@2"] == pytest.approx(4 / 6)
    with pytest.raises(ValueError, match="retriever 'fixed' returned a trigger among its own candidates"):
        evaluate_retriever(_Fixed({0: [0, 3], 1: [5, 4]}), EV, lab, 6, cfg)


def test_cold_share_counts_retrieved_slots_holding_cold_items() -> None:
    genres = {str(i): ["a"] for i in range(6)}
    lab = RelevanceLabeler.from_dataset(
        make_dataset([("u", "0", 1)], items=genres), LabelConfig(fields={"genres": 1.0})
    )
    cold_items = np.array([False, False, False, True, False, True])  # items 3 and 5
    ev = EvalSet.from_pairs(pl.DataFrame({"src": [0, 0, 1], "dst": [2, 3, 4]}), cold_items)
    assert ev.cold.tolist() == [False, True, False]
    m = evaluate_retriever(_Fixed({0: [2, 3], 1: [5, 4]}), ev, lab, 6, EvalConfig(ks=(1, 2), select_k=2))
    assert m["cold_share@1"] == pytest.approx(1 / 2)  # [2], [5]
    assert m["cold_share@2"] == pytest.approx(2 / 4)  # 3 and 5 among 4 slots
    assert cold_share_at_k(np.array([[3, -1], [5, 4]]), cold_items) == pytest.approx(2 / 3)  # -1: empty slot
    m = evaluate_retriever(_Fixed({0: [2, 3], 1: [5, 4]}), EV, lab, 6, EvalConfig(ks=(2,), select_k=2))
    assert m["cold_share@2"] == pytest.approx(1 / 4)  # EV: only item 3 is cold


def test_paired_bootstrap_against_references() -> None:
    rng = np.random.default_rng(3)
    b = rng.random(2000)
    a = b + rng.normal(0.01, 0.1, 2000)
    got = paired_bootstrap(a, b, resamples=1000, seed=0)
    d = a - b
    half = 1.96 * d.std(ddof=1) / np.sqrt(len(d))  # the normal-theory interval it should approach
    assert got["n"] == 2000 and got["diff"] == pytest.approx(d.mean())
    assert got["lo"] == pytest.approx(d.mean() - half, abs=0.15 * half)
    assert got["hi"] == pytest.approx(d.mean() + half, abs=0.15 * half)
    # the seeded reference: the percentile interval of 1000 resampled means drawn with seed 0
    idx = np.random.default_rng(0).integers(0, len(d), size=(1000, len(d)))
    lo, hi = np.percentile(d[idx].mean(axis=1), [2.5, 97.5])
    assert (got["lo"], got["hi"]) == (pytest.approx(lo), pytest.approx(hi))
    assert paired_bootstrap(a, b, seed=0) == got  # deterministic for a seed
    # a method against itself: exactly 0; a constant shift: exactly that shift
    same = paired_bootstrap(b, b)
    assert (same["diff"], same["lo"], same["hi"]) == (0.0, 0.0, 0.0)
    shift = paired_bootstrap(b + 0.5, b)
    assert shift["lo"] == pytest.approx(0.5) and shift["hi"] == pytest.approx(0.5)
    # triggers without a counted positive (NaN in either) are left out of both
    nan = paired_bootstrap(np.array([1.0, np.nan, 0.0]), np.array([0.0, 1.0, np.nan]))
    assert nan["n"] == 1 and nan["diff"] == 1.0
    with pytest.raises(ValueError, match="one length"):
        paired_bootstrap(np.zeros(3), np.zeros(4))
