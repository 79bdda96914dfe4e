"""A generated shop catalog + interaction log, for running the pipelines on data shaped unlike
MovieLens or Amazon Office: what the tabular adapter meets in the field. It is a stress test
with a known structure, not a benchmark of anyone's data.

Structure: items belong to one of 40 categories and 300 brands and arrive over time (an item is
never bought before its arrival); each user prefers 3 categories; every interaction picks one of
the user's categories, then an item of it that has arrived, with probability proportional to its
popularity, 1 / rank (Zipf's law). So the co-engagement signal is category x popularity, the
popularity skew is heavy (1% of the items take half the interactions), and titles carry the
category (through the product noun) but no popularity.

    python bench/synthetic_shop.py OUT_DIR [--items 30000] [--users 20000] [--interactions 300000]

writes OUT_DIR/items.csv (sku, name, cat, tags, listed: the arrival, ISO-8601) and OUT_DIR/log.csv
(uid, sku, when: ISO-8601), then prints the train_i2i command that runs on them (``listed`` as the
catalog's ``available_from``; leave that override out to run without listing dates).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import polars as pl

NOUNS = [
    "lamp",
    "chair",
    "desk",
    "pen",
    "notebook",
    "stapler",
    "folder",
    "binder",
    "marker",
    "cable",
    "mouse",
    "keyboard",
    "bottle",
    "mug",
    "bag",
]
ADJS = [
    "red",
    "blue",
    "compact",
    "large",
    "ergonomic",
    "wireless",
    "durable",
    "premium",
    "classic",
    "mini",
    "pro",
    "eco",
]
CATS, BRANDS = 40, 300


def generate(items: int, users: int, interactions: int, seed: int = 0) -> tuple[pl.DataFrame, pl.DataFrame]:
    rng = np.random.default_rng(seed)
    cat = rng.integers(0, CATS, items)
    brand = rng.integers(0, BRANDS, items)
    arrival = np.sort(rng.uniform(0, 1, items)) ** 0.5  # more items arrive early than late
    adj = rng.integers(0, len(ADJS), (items, 2))
    names = [
        f"{ADJS[a]} {NOUNS[c % len(NOUNS)]} {ADJS[b]} by brand{br}"
        for a, b, c, br in zip(adj[:, 0], adj[:, 1], cat, brand, strict=True)
    ]
    catalog = pl.DataFrame(
        {
            "sku": [f"S{i:06d}" for i in range(items)],
            "name": names,
            "cat": [f"cat{c}" for c in cat],
            "tags": [f"cat{c}|brand{b}" for c, b in zip(cat, brand, strict=True)],
            "listed": _iso(arrival),
        }
    )
    pop = 1.0 / (1.0 + rng.permutation(items))  # Zipf's law: popularity 1 / rank, ranks at random
    user = rng.integers(0, users, interactions)
    t = rng.uniform(0, 1, interactions)
    liked = rng.integers(0, CATS, (users, 3))
    chosen_cat = liked[user, rng.integers(0, 3, interactions)]
    bought = np.empty(interactions, dtype=np.int64)
    by_cat = [np.flatnonzero(cat == c) for c in range(CATS)]  # item codes per category, by arrival
    for c in range(CATS):
        rows = np.flatnonzero(chosen_cat == c)
        members = by_cat[c]
        # the items of c that have arrived by each interaction's time: a prefix of `members`
        arrived = np.maximum(np.searchsorted(arrival[members], t[rows], side="right"), 1)
        cum = np.cumsum(pop[members])
        u = rng.uniform(0, 1, len(rows)) * cum[arrived - 1]
        bought[rows] = members[np.minimum(np.searchsorted(cum, u, side="right"), arrived - 1)]
    log = pl.DataFrame(
        {"uid": [f"u{u}" for u in user], "sku": catalog["sku"].gather(bought), "when": _iso(t)}
    )
    return catalog, log


def _iso(t: np.ndarray) -> pl.Series:
    """Times in [0, 1] -> ISO-8601 text over about a year from 2017-07-14."""
    when = pl.from_epoch(pl.Series((1_500_000_000 + t * 3e7).astype(np.int64)), time_unit="s")
    return when.dt.strftime("%Y-%m-%dT%H:%M:%S")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("--items", type=int, default=30_000)
    ap.add_argument("--users", type=int, default=20_000)
    ap.add_argument("--interactions", type=int, default=300_000)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    catalog, log = generate(a.items, a.users, a.interactions, a.seed)
    a.out.mkdir(parents=True, exist_ok=True)
    catalog.write_csv(a.out / "items.csv")
    log.write_csv(a.out / "log.csv")
    print(f"{len(catalog)} items, {len(log)} interactions in {a.out}; run:")
    print(
        "python -m pipelines.train_i2i data=tabular "
        f"data.adapter.items_path={a.out / 'items.csv'} data.adapter.interactions_path={a.out / 'log.csv'} "
        "data.adapter.item_columns.item_id=sku data.adapter.item_columns.title=name "
        "data.adapter.item_columns.available_from=listed "
        "data.adapter.interaction_columns.user_id=uid data.adapter.interaction_columns.item_id=sku "
        "data.adapter.interaction_columns.timestamp=when "
        "'data.adapter.attributes={category: {column: cat}, tags: {column: tags, sep: \"|\"}}' "
        "data.item_features=[category] 'data.labels.fields={category: 1.0}'"
    )


if __name__ == "__main__":
    main()
