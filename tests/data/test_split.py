"""Temporal split invariants on real data, and a hand-computed split."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from tests.helpers import make_dataset
from tte_recsys.config import PairConfig, SplitConfig
from tte_recsys.data.adapters import MovieLensAdapter
from tte_recsys.data.dataset import Dataset
from tte_recsys.data.pairs import directed_pairs, mine_pairs
from tte_recsys.data.split import popularity_counts, temporal_split


def test_hand_computed_split() -> None:
    # t = 1..10 for one user; quantiles 0.8 / 0.9 (nearest) are 8 and 9.
    items = "ABCDEFGHIJ"
    ds = make_dataset([("u", it, t + 1) for t, it in enumerate(items)] + [("v", "A", 1), ("v", "J", 2)])
    s = temporal_split(ds, PairConfig(window=2), SplitConfig())
    assert s.cutoffs == (8, 9)
    # Valid period (8, 9]: pair (H, I) at t=9. Test period (9, ...]: pair (I, J) at t=10.
    # I has no train interactions: a cold target, never a trigger. J is known through user v.
    code = {c: i for i, c in enumerate(ds.items["item_id"].to_list())}
    assert s.valid.triggers.tolist() == [code["H"]]  # I has no train interactions -> not a trigger
    assert s.valid.targets.tolist() == [code["I"]]
    assert s.valid.cold.tolist() == [True]
    assert s.test.triggers.tolist() == [code["J"]]  # (I, J) first seen in test; trigger J known, I not
    assert s.test.targets.tolist() == [code["I"]]
    assert s.test.cold.tolist() == [True]


@pytest.fixture(scope="module")
def ml_split():  # type: ignore[no-untyped-def]
    ds = MovieLensAdapter().load().sample_users(120)
    return ds, temporal_split(ds, PairConfig(), SplitConfig())


def test_no_test_or_valid_positive_was_seen_in_train(ml_split) -> None:  # type: ignore[no-untyped-def]
    s = ml_split[1]
    train_keys = set(zip(s.train_pairs["src"].to_list(), s.train_pairs["dst"].to_list(), strict=True))
    for ev in (s.valid, s.test):
        owner = np.repeat(ev.triggers, np.diff(ev.indptr))
        assert len(ev.targets) > 0
        assert not train_keys & set(zip(owner.tolist(), ev.targets.tolist(), strict=True))


def test_test_positives_were_not_seen_in_valid(ml_split) -> None:  # type: ignore[no-untyped-def]
    ds, s = ml_split
    pairs = directed_pairs(mine_pairs(ds.interactions, PairConfig(), cutoffs=list(s.cutoffs)), True)
    valid_keys = set(pairs.filter(pl.col("period") == 1).select("src", "dst").iter_rows())
    owner = np.repeat(s.test.triggers, np.diff(s.test.indptr))
    assert not valid_keys & set(zip(owner.tolist(), s.test.targets.tolist(), strict=True))


def test_triggers_known_and_cold_flags_match_train_counts(ml_split) -> None:  # type: ignore[no-untyped-def]
    s = ml_split[1]
    assert s.train["timestamp"].max() <= s.cutoffs[0]
    for ev in (s.valid, s.test):
        assert (s.item_counts[ev.triggers] > 0).all()
        np.testing.assert_array_equal(ev.cold, s.item_counts[ev.targets] == 0)
    assert s.test.cold.any()


def test_train_window_changes_the_train_pairs_and_nothing_else(ml_split) -> None:  # type: ignore[no-untyped-def]
    ds, s = ml_split
    # train_window equal to window is the default split, pair for pair.
    same = temporal_split(ds, PairConfig(train_window=5), SplitConfig())
    assert same.train_pairs.equals(s.train_pairs)
    wide = temporal_split(ds, PairConfig(train_window=10), SplitConfig())
    # The held-out positives are defined by `window` alone.
    for a, b in ((s.valid, wide.valid), (s.test, wide.test)):
        np.testing.assert_array_equal(a.triggers, b.triggers)
        np.testing.assert_array_equal(a.targets, b.targets)
    np.testing.assert_array_equal(s.item_counts, wide.item_counts)
    # A wider window keeps every narrow train pair, with at least its count, and adds others:
    # exactly the pairs of the train log mined at window 10.
    key = ["src", "dst"]
    joined = s.train_pairs.join(wide.train_pairs, on=key, how="left", suffix="_wide")
    assert joined["count_wide"].null_count() == 0
    assert (joined["count_wide"] >= joined["count"]).all()
    assert wide.train_pairs.height > s.train_pairs.height
    expect = directed_pairs(mine_pairs(s.train, PairConfig(window=10)), True).select("src", "dst", "count")
    assert wide.train_pairs.sort(key).equals(expect.sort(key))


def test_train_window_below_two_is_rejected() -> None:
    with pytest.raises(ValueError, match=r"pairs\.train_window=1"):
        PairConfig(train_window=1)


def test_split_rejects_a_log_without_time_spread() -> None:
    ds = make_dataset([("u", "A", 5), ("u", "B", 5), ("v", "A", 5)])
    with pytest.raises(ValueError, match="quantiles are equal"):
        temporal_split(ds, PairConfig(), SplitConfig())


def test_popularity_counts_per_time_on_the_shelf() -> None:
    # Train is t <= 7 (the 0.6 quantile of the 9 timestamps), starting at t = 0: a span of 7.
    # A: 4 train interactions, no listing date (counts as listed at the start); B: 2, listed at
    # t = 6 (1 time unit on the shelf); C: listed at t = 9, after the cutoff; D: listed at t = 0,
    # no train interactions.
    rows = [("u", "A", 0), ("v", "A", 1), ("w", "A", 2), ("x", "A", 3), ("u", "B", 6), ("v", "B", 7)]
    ds = make_dataset([*rows, ("u", "C", 9), ("v", "C", 10), ("w", "D", 11)])
    split_cfg = SplitConfig(valid_quantile=0.6, test_quantile=0.8)
    s = temporal_split(ds, PairConfig(window=2), split_cfg)
    assert s.cutoffs[0] == 7
    code = {c: i for i, c in enumerate(ds.items["item_id"].to_list())}
    # without listing dates: the train counts themselves
    assert popularity_counts(ds, s).tolist() == s.item_counts.astype(float).tolist()
    listed = {"A": None, "B": 6, "C": 9, "D": 0}
    ds2 = Dataset.build(
        ds.name,
        ds.items.with_columns(
            pl.Series("available_from", [listed[i] for i in ds.items["item_id"]], dtype=pl.Int64)
        ),
        ds.interactions,
    )
    got = popularity_counts(ds2, temporal_split(ds2, PairConfig(window=2), split_cfg), prior_span=0.25)
    # shelf time A 7, B 1, C 0, D 7; mean rate 6 / 15 = 0.4 per unit; prior weight b = 0.25 * 7
    rate, b, span = 0.4, 1.75, 7.0
    want = {"A": (4 + rate * b) / (7 + b), "B": (2 + rate * b) / (1 + b), "C": rate, "D": rate * b / (7 + b)}
    for item, r in want.items():
        assert got[code[item]] == pytest.approx(r * span)
    assert got[code["B"]] > got[code["A"]]  # 2 in 1 unit on the shelf beats 4 in 7
    assert got[code["D"]] < got[code["C"]]  # listed all along and never engaged < not yet seen
    with pytest.raises(ValueError, match="prior_span=0"):
        popularity_counts(ds2, s, prior_span=0)
