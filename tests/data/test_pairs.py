"""Pair mining against hand-computed examples."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from tests.helpers import make_dataset
from tte_recsys.config import PairConfig
from tte_recsys.data.dataset import Dataset
from tte_recsys.data.pairs import PAIR_SCHEMA, directed_pairs, mine_pairs


def _named(ds: Dataset, pairs: pl.DataFrame) -> dict[tuple[str, str], int]:
    """{(src id, dst id): total count} for readable assertions."""
    ids = ds.items["item_id"].to_list()
    agg = pairs.group_by("src", "dst").agg(pl.col("count").sum())
    return {(ids[s], ids[d]): c for s, d, c in agg.iter_rows()}


def test_window_counts_consecutive_interactions() -> None:
    ds = make_dataset([("u", "A", 1), ("u", "B", 2), ("u", "C", 3), ("u", "D", 4)])
    adj = mine_pairs(ds.interactions, PairConfig(window=2))
    assert _named(ds, adj) == {("A", "B"): 1, ("B", "C"): 1, ("C", "D"): 1}
    three = mine_pairs(ds.interactions, PairConfig(window=3))
    assert _named(ds, three) == {("A", "B"): 1, ("B", "C"): 1, ("C", "D"): 1, ("A", "C"): 1, ("B", "D"): 1}


def test_timestamp_ties_are_an_unordered_set() -> None:
    # B and C share t=20: they pair with each other and both are adjacent to A and to D.
    rows = [("u", "A", 10), ("u", "C", 20), ("u", "B", 20), ("u", "D", 30)]
    ds = make_dataset(rows)
    sym = mine_pairs(ds.interactions, PairConfig(window=2))
    assert _named(ds, sym) == {("A", "B"): 1, ("A", "C"): 1, ("B", "C"): 1, ("B", "D"): 1, ("C", "D"): 1}
    directed = mine_pairs(ds.interactions, PairConfig(window=2, symmetric=False))
    assert _named(ds, directed) == {
        ("A", "B"): 1,
        ("A", "C"): 1,
        ("B", "C"): 1,
        ("C", "B"): 1,
        ("B", "D"): 1,
        ("C", "D"): 1,
    }
    # The row order of a tie in the input does not matter.
    swapped = make_dataset([rows[0], rows[2], rows[1], rows[3]])
    assert _named(swapped, mine_pairs(swapped.interactions, PairConfig(window=2))) == _named(ds, sym)


def test_large_tie_group_pairs_fully_and_window_counts_positions_after_it() -> None:
    # A tie of 3 at t=1, then E. Window 2: E is adjacent to whichever of the tie comes last.
    ds = make_dataset([("u", "A", 1), ("u", "B", 1), ("u", "C", 1), ("u", "E", 2), ("u", "F", 3)])
    got = _named(ds, mine_pairs(ds.interactions, PairConfig(window=2)))
    assert got == {
        ("A", "B"): 1,
        ("A", "C"): 1,
        ("B", "C"): 1,
        ("A", "E"): 1,
        ("B", "E"): 1,
        ("C", "E"): 1,
        ("E", "F"): 1,
    }


def test_counts_sum_over_users_and_repeats_are_not_pairs() -> None:
    ds = make_dataset([("u", "A", 1), ("u", "A", 2), ("u", "B", 3), ("v", "B", 1), ("v", "A", 5)])
    assert _named(ds, mine_pairs(ds.interactions, PairConfig(window=2))) == {("A", "B"): 2}


def test_max_seconds_alone_and_with_window() -> None:
    ds = make_dataset([("u", "A", 0), ("u", "B", 100), ("u", "C", 250)])
    assert _named(ds, mine_pairs(ds.interactions, PairConfig(window=None, max_seconds=150))) == {
        ("A", "B"): 1,
        ("B", "C"): 1,
    }
    assert _named(ds, mine_pairs(ds.interactions, PairConfig(window=None, max_seconds=300))) == {
        ("A", "B"): 1,
        ("B", "C"): 1,
        ("A", "C"): 1,
    }
    assert _named(ds, mine_pairs(ds.interactions, PairConfig(window=2, max_seconds=300))) == {
        ("A", "B"): 1,
        ("B", "C"): 1,
    }


def test_rating_threshold_drops_interactions_before_windowing() -> None:
    ds = make_dataset([("u", "A", 1), ("u", "B", 2), ("u", "C", 3)])
    ds = Dataset.build("t", ds.items, ds.interactions.with_columns(pl.Series("weight", [5.0, 1.0, 4.0])))
    # B is dropped, so A and C become adjacent.
    assert _named(ds, mine_pairs(ds.interactions, PairConfig(window=2, min_rating=4.0))) == {("A", "C"): 1}


def test_periods_follow_the_later_interaction() -> None:
    ds = make_dataset(
        [("u", "A", 1), ("u", "B", 2), ("v", "A", 9), ("v", "B", 10), ("w", "B", 11), ("w", "C", 30)]
    )
    p = mine_pairs(ds.interactions, PairConfig(window=2), cutoffs=[5, 20])
    ids = ds.items["item_id"].to_list()
    rows = {(ids[s], ids[d], per): (c, f) for s, d, per, c, f in p.iter_rows()}
    assert rows == {("A", "B", 0): (1, 2), ("A", "B", 1): (1, 10), ("B", "C", 2): (1, 30)}


def test_directed_pairs_adds_reverse_rows_for_symmetric() -> None:
    ds = make_dataset([("u", "A", 1), ("u", "B", 2)])
    p = directed_pairs(mine_pairs(ds.interactions, PairConfig(window=2)), symmetric=True)
    assert _named(ds, p) == {("A", "B"): 1, ("B", "A"): 1}


def _brute_force(
    rows: list[tuple[str, str, int]], cfg: PairConfig, cuts: list[int]
) -> dict[tuple[str, str, int], int]:
    """The definition, literally: per user, for every two interactions, is there an order of the
    timestamp ties that puts them within the window? Period from the later timestamp."""
    out: dict[tuple[str, str, int], int] = {}
    for user in {r[0] for r in rows}:
        hist = sorted((t, i) for u, i, t in rows if u == user)
        for x in range(len(hist)):
            for y in range(x + 1, len(hist)):
                (ta, a), (tb, b) = hist[x], hist[y]
                if a == b:
                    continue
                if cfg.window is not None:
                    end_a = max(k for k, h in enumerate(hist) if h[0] == ta)  # a's tie group placed last
                    start_b = min(k for k, h in enumerate(hist) if h[0] == tb)  # b's tie group placed first
                    if ta != tb and start_b - end_a > cfg.window - 1:
                        continue
                if cfg.max_seconds is not None and tb - ta > cfg.max_seconds:
                    continue
                period = sum(tb > c for c in cuts)
                keys = (
                    [(min(a, b), max(a, b))] if cfg.symmetric else [(a, b)] + ([(b, a)] if ta == tb else [])
                )
                for s, d in keys:
                    out[(s, d, period)] = out.get((s, d, period), 0) + 1
    return out


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize(
    "cfg",
    [
        PairConfig(window=3),
        PairConfig(window=2, symmetric=False),
        PairConfig(window=None, max_seconds=2),
        PairConfig(window=4, max_seconds=3, symmetric=False),
    ],
)
def test_matches_brute_force_on_random_logs(seed: int, cfg: PairConfig) -> None:
    rng = np.random.default_rng(seed)
    rows = [(f"u{rng.integers(4)}", f"i{rng.integers(7)}", int(rng.integers(0, 12))) for _ in range(40)]
    ds = make_dataset(rows)
    ids = ds.items["item_id"].to_list()
    got = mine_pairs(ds.interactions, cfg, cutoffs=[4, 8])
    named = {(ids[s], ids[d], p): c for s, d, p, c, _ in got.iter_rows()}
    assert named == _brute_force(rows, cfg, [4, 8])


def test_empty_and_single_interaction_logs_give_empty_typed_frames() -> None:
    ds = make_dataset([("u", "A", 1)])
    for log, cfg in (
        (ds.interactions.head(0), PairConfig()),
        (ds.interactions, PairConfig(window=None, max_seconds=5)),
    ):
        out = mine_pairs(log, cfg)
        assert out.height == 0
        assert dict(out.schema) == PAIR_SCHEMA
