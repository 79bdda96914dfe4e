"""Temporal split invariants on real data, and a hand-computed split."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from tests.conftest import make_dataset
from tte_recsys.config import PairConfig, SplitConfig
from tte_recsys.data.adapters import MovieLensAdapter
from tte_recsys.data.pairs import directed_pairs, mine_pairs
from tte_recsys.data.split import temporal_split


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


def test_split_rejects_a_log_without_time_spread() -> None:
    ds = make_dataset([("u", "A", 5), ("u", "B", 5), ("v", "A", 5)])
    with pytest.raises(ValueError, match="quantiles are equal"):
        temporal_split(ds, PairConfig(), SplitConfig())
