"""The second training view of the split, train + valid (docs/design.md, "Selection and final
scoring"): an invariant test over random logs, a hand-made log, item age, and a baseline refit
against a direct count."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from tests.helpers import make_dataset
from tte_recsys.config import PairConfig, SplitConfig
from tte_recsys.data.pairs import directed_pairs, mine_pairs
from tte_recsys.data.split import item_age_days, temporal_split
from tte_recsys.evaluation.baselines import CoOccurrence, Popularity
from tte_recsys.serving.merge import age_bias, sum_biases


def _random_log(seed: int) -> list[tuple[str, str, int]]:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(200, 600))
    users = rng.integers(0, 25, n)
    items = rng.integers(0, 40, n)
    times = rng.integers(0, 60, n)  # coarse: many ties
    return [(f"u{u}", f"i{i:02d}", int(t)) for u, i, t in zip(users, items, times, strict=True)]


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("window", [2, 5])
def test_the_refit_view_holds_train_and_valid_and_nothing_of_test(seed: int, window: int) -> None:
    ds = make_dataset(_random_log(seed))
    cfg = PairConfig(window=window)
    split = temporal_split(ds, cfg, SplitConfig())
    view = split.refit_view()
    c_valid, c_test = split.cutoffs
    log = ds.interactions
    # no test interaction, and every interaction up to the test cut-off
    assert view.train["timestamp"].max() <= c_test  # type: ignore[operator]
    assert view.train.height == log.filter(pl.col("timestamp") <= c_test).height
    assert (view.item_counts >= split.item_counts).all()
    counts = np.bincount(
        log.filter(pl.col("timestamp") <= c_test)["item_idx"].to_numpy(), minlength=ds.num_items
    )
    np.testing.assert_array_equal(view.item_counts, counts)
    # its pairs are the pairs of the train + valid log, mined alone
    direct = directed_pairs(mine_pairs(log.filter(pl.col("timestamp") <= c_test), cfg), cfg.symmetric)
    direct = direct.group_by("src", "dst").agg(pl.col("count").sum()).sort("src", "dst")
    assert view.train_pairs.sort("src", "dst").equals(direct.select("src", "dst", "count"))
    # the same test positives, cold flags from the refit data; nothing to validate on
    np.testing.assert_array_equal(view.test.triggers, split.test.triggers)
    np.testing.assert_array_equal(view.test.targets, split.test.targets)
    np.testing.assert_array_equal(view.test.cold_items, counts == 0)
    assert view.valid.num_triggers == 0 and view.fit_end == c_test and split.fit_end == c_valid
    with pytest.raises(ValueError, match="already the refit view"):
        view.refit_view()


def test_a_hand_made_log() -> None:
    # t = 1..10 for user u, cut-offs 8 / 9 (see test_split). Window 2.
    items = "ABCDEFGHIJ"
    ds = make_dataset([("u", it, t + 1) for t, it in enumerate(items)] + [("v", "A", 1), ("v", "J", 2)])
    split = temporal_split(ds, PairConfig(window=2), SplitConfig())
    view = split.refit_view()
    code = {c: i for i, c in enumerate(ds.items["item_id"].to_list())}
    # I (t = 9) is in valid: cold for a train-only model, known to the refit one
    assert split.test.cold.tolist() == [True] and view.test.cold.tolist() == [False]
    pairs = {(int(s), int(d)) for s, d in view.train_pairs.select("src", "dst").iter_rows()}
    assert (code["H"], code["I"]) in pairs and (
        code["I"],
        code["J"],
    ) not in pairs  # (I, J) is at t = 10: test
    # Popularity refit: counts up to t = 9, so I (1 interaction) ties with B..H and J (ties to the
    # lower code); fit on train, I has 0 and comes last
    a = np.array([code["A"]])
    assert Popularity(view).retrieve(a, 9)[0].tolist() == [code[c] for c in "BCDEFGHIJ"]
    assert Popularity(split).retrieve(a, 9)[0].tolist() == [code[c] for c in "BCDEFGHJI"]
    # CoOccurrence: users who engaged both items, in the fit's data: u engaged A..I up to t = 9
    # (J only at t = 10, in test), v engaged A and J
    row = {c: 1 for c in "BCDEFGHIJ"} | {"A": 2}
    want = np.array([row[c] for c in items], dtype=np.float64)
    np.testing.assert_array_equal(CoOccurrence(view, ds.num_users)._sim[code["A"]].toarray()[0], want)
    want[code["I"]] = 0  # I is valid-period only
    np.testing.assert_array_equal(CoOccurrence(split, ds.num_users)._sim[code["A"]].toarray()[0], want)


def test_item_age_and_its_prior() -> None:
    day = 86_400
    rows = [
        ("u", "a", 0),
        ("u", "b", 5 * day),
        ("v", "c", 8 * day),
        ("v", "a", 9 * day),
        ("w", "d", 10 * day),
    ]
    ds = make_dataset(rows)
    split = temporal_split(ds, PairConfig(window=2), SplitConfig(valid_quantile=0.6, test_quantile=0.8))
    assert split.cutoffs == (8 * day, 9 * day)
    code = {c: i for i, c in enumerate(ds.items["item_id"].to_list())}
    train_age = item_age_days(ds, split)  # at 8 days, seen up to 8 days
    assert train_age[code["a"]] == 8 and train_age[code["b"]] == 3 and train_age[code["c"]] == 0
    assert train_age[code["d"]] == 0  # never seen: new
    refit_age = item_age_days(ds, split.refit_view())  # at 9 days
    assert refit_age[code["a"]] == 9 and refit_age[code["c"]] == 1
    listed = ds.items.with_columns(pl.lit(2 * day, dtype=pl.Int64).alias("available_from"))
    dated = type(ds).build(
        "dated", listed, ds.interactions.select("user_id", "item_id", "timestamp", "weight")
    )
    assert (
        item_age_days(dated, temporal_split(dated, PairConfig(window=2), SplitConfig(0.6, 0.8))) == 6
    ).all()
    bias = age_bias(train_age, 0.1)
    assert bias is not None and bias[code["d"]] == 0.0 and bias[code["a"]] == pytest.approx(-0.1 * np.log(9))
    assert age_bias(train_age, 0.0) is None and sum_biases(None, None) is None
    np.testing.assert_allclose(sum_biases(bias, np.ones_like(bias)), bias + 1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="item-age prior weight -1"):
        age_bias(train_age, -1)
