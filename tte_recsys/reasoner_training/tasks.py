"""What a reasoner is trained on: (query, positive target) pairs, and queries without labels.

* I2I (the default): query = a trigger item, positive = an item co-engaged with it in the
  **train** pairs of the split (never valid or test).
* MMEB-style: (query, target) rows of a local parquet table (:func:`table_pairs`).
* Label-free (RESTRAIN): items alone (:func:`unlabeled_queries`).

The catalog reward scores an item's trace by its positives (:func:`item_positives`: every partner
of the item in the pairs); :class:`TaskData` is what a run trains and measures on.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from tte_recsys.tte.items import ItemInput

__all__ = [
    "ItemPositives",
    "Side",
    "TaskData",
    "TrainingPair",
    "i2i_pairs",
    "item_positives",
    "item_side",
    "table_pairs",
    "unlabeled_queries",
]


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


@dataclass(frozen=True)
class ItemPositives:
    """An item to write a trace for, and the catalog ids its trace should rank high."""

    side: Side
    positives: tuple[str, ...]


@dataclass
class TaskData:
    """What a run trains and measures on.

    Attributes:
        catalog: the items the catalog reward ranks (and RESTRAIN's answers come from).
        pairs: the training pairs.
        heldout: pairs never trained on (valid), for the held-out reward.
        items: the catalog's :class:`ItemInput` by id, where the sides were rendered from one (a
            dataset or the toy task; a pair table has none): a teacher's traces are generated and
            cached from these, as the catalog's are.
    """

    catalog: list[Side]
    pairs: list[TrainingPair]
    heldout: list[TrainingPair]
    items: dict[str, ItemInput] = field(default_factory=dict)


def item_side(item: ItemInput) -> Side:
    """The side of a catalog item: its id, its rendered fields, its image."""
    return Side(item.item_id, item.text, item.image_path)


def item_positives(pairs: Sequence[TrainingPair], catalog_ids: Collection[str]) -> list[ItemPositives]:
    """Every item of ``pairs`` with the catalog ids of its partners there (in first-seen order):
    a pair's query gets its target, and its target its query where the query is a catalog item
    (co-engagement runs both ways; a pair table's queries are not in the catalog)."""
    sides: dict[str, Side] = {}
    partners: dict[str, dict[str, None]] = {}
    for p in pairs:
        if p.target is None:
            continue
        for a, b in ((p.query, p.target), (p.target, p.query)):
            if b.id in catalog_ids and a.id != b.id:
                sides.setdefault(a.id, a)
                partners.setdefault(a.id, {})[b.id] = None
    return [ItemPositives(sides[i], tuple(ps)) for i, ps in partners.items()]


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
        out.append(TrainingPair(item_side(items[q]), item_side(items[t])))
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
