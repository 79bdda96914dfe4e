"""The in-memory dataset: canonical tables plus dense integer codes for items and users."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from tte_recsys.artifacts import read_manifest, write_parquet

__all__ = ["Dataset"]

_ITEMS, _INTERACTIONS, _RELATIONS = "items.parquet", "interactions.parquet", "relations.parquet"


@dataclass(frozen=True)
class Dataset:
    """Validated canonical tables of one dataset.

    Attributes:
        name: dataset name (reports, manifests).
        items: canonical items; row ``i`` is item code ``i`` everywhere in the library.
        interactions: canonical interactions plus ``item_idx`` (i32) and ``user_idx`` (i32) codes.
        relations: optional item->item relations (``src_item_id``, ``dst_item_id``, ``relation``).
    """

    name: str
    items: pl.DataFrame
    interactions: pl.DataFrame
    relations: pl.DataFrame | None = None

    @classmethod
    def build(
        cls,
        name: str,
        items: pl.DataFrame,
        interactions: pl.DataFrame,
        relations: pl.DataFrame | None = None,
    ) -> Dataset:
        """Attach integer codes: items in catalog order, users in sorted id order."""
        codes = items.select("item_id", pl.int_range(pl.len(), dtype=pl.Int32).alias("item_idx"))
        inter = interactions.drop("item_idx", "user_idx", strict=False).join(
            codes, on="item_id", how="left", maintain_order="left"
        )
        inter = inter.with_columns(pl.col("user_id").rank("dense").cast(pl.Int32).sub(1).alias("user_idx"))
        return cls(name=name, items=items, interactions=inter, relations=relations)

    @property
    def num_items(self) -> int:
        return self.items.height

    @property
    def num_users(self) -> int:
        return self.interactions["user_idx"].n_unique()

    def item_codes(self, item_ids: list[str] | pl.Series) -> np.ndarray:
        """Item ids -> codes; ``KeyError`` names the first unknown id."""
        s = pl.Series("item_id", item_ids, dtype=pl.String)
        codes = s.to_frame().join(
            self.items.select("item_id", pl.int_range(pl.len(), dtype=pl.Int64).alias("c")),
            on="item_id",
            how="left",
            maintain_order="left",
        )["c"]
        if codes.null_count():
            bad = s.filter(codes.is_null())[0]
            raise KeyError(f"item id {bad!r} is not in dataset {self.name!r} ({self.num_items} items)")
        return codes.to_numpy()

    def sample_users(self, n_users: int, seed: int = 0) -> Dataset:
        """A smaller dataset: ``n_users`` users chosen by seeded hash, their interactions, all items they touch."""
        users = self.interactions.select(pl.col("user_id").unique(maintain_order=True))
        keep = users.with_columns(pl.col("user_id").hash(seed).alias("h")).sort("h").head(n_users)
        inter = self.interactions.join(keep.select("user_id"), on="user_id", how="semi")
        items = self.items.join(inter.select(pl.col("item_id").unique()), on="item_id", how="semi")
        return self._subset(items, inter)

    def head_items(self, n_items: int) -> Dataset:
        """A smaller dataset: the first ``n_items`` catalog items and the interactions and relations among them."""
        items = self.items.head(n_items)
        return self._subset(
            items, self.interactions.filter(pl.col("item_id").is_in(items["item_id"].implode()))
        )

    def _subset(self, items: pl.DataFrame, interactions: pl.DataFrame) -> Dataset:
        """Rebuild with these items and interactions; relations keep only links among the items (codes renumbered)."""
        keep = items["item_id"].implode()
        rel = self.relations
        if rel is not None:
            rel = rel.filter(pl.col("src_item_id").is_in(keep) & pl.col("dst_item_id").is_in(keep))
        return Dataset.build(self.name, items, interactions.drop("item_idx", "user_idx"), rel)

    def save(self, out_dir: str | Path) -> None:
        """Write the canonical tables as parquet (codes are derived on load, not stored)."""
        out = Path(out_dir)
        write_parquet(out / _ITEMS, self.items)
        write_parquet(out / _INTERACTIONS, self.interactions.drop("item_idx", "user_idx"))
        if self.relations is not None:
            write_parquet(out / _RELATIONS, self.relations)

    @classmethod
    def load(cls, data_dir: str | Path) -> Dataset:
        """Load tables written by ``pipelines.prepare_data`` after verifying the folder's manifest."""
        d = Path(data_dir)
        manifest = read_manifest(d, kind="prepare_data")
        rel = pl.read_parquet(d / _RELATIONS) if (d / _RELATIONS).is_file() else None
        return cls.build(
            manifest["dataset"], pl.read_parquet(d / _ITEMS), pl.read_parquet(d / _INTERACTIONS), rel
        )

    def stats(self) -> dict[str, int]:
        return {"items": self.num_items, "users": self.num_users, "interactions": self.interactions.height}
