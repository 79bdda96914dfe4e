"""What a reasoner is trained on: (query, positive target) pairs, and queries without labels.

* I2I (the default): query = a trigger item, positive = an item co-engaged with it in the
  **train** pairs of the split (never valid or test). :func:`distinct_batches` orders the pairs so
  that every batch of ``pairs_per_batch`` holds distinct items (in-batch negatives are other items).
* MMEB-style: (query, target) rows of a local parquet table (:func:`table_pairs`).
* Label-free (RESTRAIN): items alone (:func:`unlabeled_queries`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from tte_recsys.tte.items import ItemInput

__all__ = ["Side", "TrainingPair", "distinct_batches", "i2i_pairs", "table_pairs", "unlabeled_queries"]


@dataclass(frozen=True)
class Side:
    """One side of a pair: an id (the trace-cache and de-duplication key), its text, an optional image."""

    id: str
    text: str
    image: str | None = None


@dataclass(frozen=True)
class TrainingPair:
    """A query and its positive target; ``target`` is None for a label-free query (RESTRAIN)."""

    query: Side
    target: Side | None


def _side(item: ItemInput) -> Side:
    return Side(item.item_id, item.text, item.image_path)


def i2i_pairs(
    train_pairs: pl.DataFrame, items: Sequence[ItemInput], max_pairs: int, seed: int = 0
) -> list[TrainingPair]:
    """Up to ``max_pairs`` (trigger, co-engaged item) pairs drawn from the split's train pairs
    (``src``, ``dst`` item codes, one row per direction), each unordered pair at most once,
    weighted by co-engagement count.

    Raises:
        ValueError: the train pairs are empty, or name an item code outside the catalog.
    """
    if train_pairs.height == 0:
        raise ValueError("reasoner training: the split has no train pairs (a query with no positive)")
    src = train_pairs["src"].to_numpy().astype(np.int64)
    dst = train_pairs["dst"].to_numpy().astype(np.int64)
    bad = (src < 0) | (src >= len(items)) | (dst < 0) | (dst >= len(items))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"train pairs row {i}: item codes ({src[i]}, {dst[i]}) outside the catalog of {len(items)} items"
        )
    keep = src < dst  # the pairs are mined both ways: one row per unordered pair
    src, dst = src[keep], dst[keep]
    counts = train_pairs["count"].to_numpy()[keep].astype(np.float64)
    rng = np.random.default_rng(seed)
    n = min(max_pairs, len(src))
    pick = rng.choice(len(src), size=n, replace=False, p=counts / counts.sum())
    flip = rng.random(n) < 0.5  # either item may be the query
    out = []
    for j, f in zip(pick, flip, strict=True):
        q, t = (dst[j], src[j]) if f else (src[j], dst[j])
        out.append(TrainingPair(_side(items[q]), _side(items[t])))
    return out


def table_pairs(path: str | Path) -> list[TrainingPair]:
    """(query, target) pairs from a parquet table: ``query_text``, ``target_text`` and optionally
    ``query_id``, ``target_id`` (default: the row number), ``query_image``, ``target_image``.

    Raises:
        FileNotFoundError / ValueError: naming the file, the missing column or the bad row.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: pair table not found (expected parquet: query_text, target_text)")
    df = pl.read_parquet(p)
    missing = {"query_text", "target_text"} - set(df.columns)
    if missing:
        raise ValueError(f"{p}: missing column(s) {sorted(missing)}; columns present: {df.columns}")
    rows = df.to_dicts()
    out = []
    for i, r in enumerate(rows):
        for col in ("query_text", "target_text"):
            if not isinstance(r[col], str) or not r[col].strip():
                raise ValueError(f"{p}: row {i}, column {col!r} is empty or not text ({r[col]!r})")
        out.append(
            TrainingPair(
                Side(str(r.get("query_id", f"q{i}")), r["query_text"], r.get("query_image")),
                Side(str(r.get("target_id", f"t{i}")), r["target_text"], r.get("target_image")),
            )
        )
    return out


def unlabeled_queries(catalog: Sequence[Side], max_queries: int, seed: int = 0) -> list[TrainingPair]:
    """Up to ``max_queries`` catalog items as label-free queries (RESTRAIN), drawn at random."""
    usable = [x for x in catalog if x.text.strip() or x.image is not None]
    if not usable:
        raise ValueError("reasoner training: the catalog has no item with text or an image")
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(usable), size=min(max_queries, len(usable)), replace=False)
    return [TrainingPair(usable[int(i)], None) for i in pick]


def distinct_batches(
    pairs: Sequence[TrainingPair], pairs_per_batch: int, epochs: int = 1, seed: int = 0
) -> list[TrainingPair]:
    """``epochs`` shuffled passes over ``pairs``, ordered so that each consecutive block of
    ``pairs_per_batch`` pairs mentions every item id at most once (a pair that would repeat an
    item waits for a later block; the last block of a pass may be short and is dropped)."""
    if pairs_per_batch < 1:
        raise ValueError(f"pairs_per_batch={pairs_per_batch}: expected >= 1")
    rng = np.random.default_rng(seed)
    out: list[TrainingPair] = []
    for _ in range(epochs):
        waiting = [pairs[int(i)] for i in rng.permutation(len(pairs))]
        while len(waiting) >= pairs_per_batch:
            block: list[TrainingPair] = []
            seen: set[str] = set()
            rest = []
            for p in waiting:
                ids = {p.query.id} | ({p.target.id} if p.target is not None else set())
                if len(block) < pairs_per_batch and not ids & seen:
                    block.append(p)
                    seen |= ids
                else:
                    rest.append(p)
            if len(block) < pairs_per_batch:
                break
            out.extend(block)
            waiting = rest
    return out
