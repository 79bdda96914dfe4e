"""Dataset adapters: raw files -> validated :class:`Dataset`.

Each adapter is a small object built by Hydra from ``configs/data/*.yaml`` (``_target_``) with one
method, ``load()``. The two public datasets ship inside the package (``tte_recsys/data/builtin``,
with their SOURCE.md and license notes); ``root`` points an adapter at another copy.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import polars as pl

from tte_recsys.data.dataset import Dataset
from tte_recsys.data.schema import (
    AttributeColumn,
    DataValidationError,
    canonical_interactions,
    canonical_items,
    check_interaction_items,
    read_table,
)

__all__ = ["AmazonOfficeAdapter", "MovieLensAdapter", "TabularAdapter", "builtin_root"]


def builtin_root(name: str) -> Path:
    """Folder of a dataset carried inside the package."""
    return Path(str(resources.files("tte_recsys.data.builtin").joinpath(name)))


@dataclass(frozen=True)
class MovieLensAdapter:
    """MovieLens ``ml-latest-small`` layout (movies.csv, ratings.csv, tags.csv).

    Items get ``genres`` (from movies.csv) and ``tags`` (lower-cased user tags) attributes; the
    rating becomes the interaction weight.
    """

    root: str | None = None
    name: str = "movielens"

    def load(self) -> Dataset:
        root = Path(self.root) if self.root else builtin_root("movielens_latest_small")
        movies_f, ratings_f, tags_f = root / "movies.csv", root / "ratings.csv", root / "tags.csv"
        movies = read_table(movies_f).with_columns(pl.col("genres").replace("(no genres listed)", ""))
        items = canonical_items(
            movies,
            str(movies_f),
            id_col="movieId",
            title_col="title",
            attributes={"genres": AttributeColumn("genres", "|")},
        )
        if tags_f.is_file():
            raw_tags = read_table(tags_f)
            tags = (
                raw_tags.select(
                    pl.col("movieId").alias("item_id"), pl.col("tag").str.to_lowercase().str.strip_chars()
                )
                .group_by("item_id")
                .agg(pl.col("tag").unique().sort().alias("tags"))
            )
            items = items.join(tags, on="item_id", how="left", maintain_order="left").with_columns(
                pl.col("tags").fill_null([])
            )
        inter = canonical_interactions(
            read_table(ratings_f),
            str(ratings_f),
            user_col="userId",
            item_col="movieId",
            time_col="timestamp",
            weight_col="rating",
        )
        check_interaction_items(inter, items, str(ratings_f), str(movies_f))
        return Dataset.build(self.name, items, inter)


@dataclass(frozen=True)
class AmazonOfficeAdapter:
    """Amazon Office Products 5-core in the ReChorus layout (train/dev/test.csv, item_meta.csv, Office.text).

    Items get ``category`` and ``brand`` attributes (id 0 = missing -> empty list); the
    ``also_bought`` (r_complement) and ``also_viewed`` (r_substitute) lists become relations.
    All three interaction files are joined into one log; the project splits it by time itself.
    """

    root: str | None = None
    name: str = "amazon_office"

    def load(self) -> Dataset:
        root = Path(self.root) if self.root else builtin_root("amazon_office_products_5core")
        meta_f, text_f, index_f = root / "item_meta.csv", root / "Office.text", root / "Office.item2index"
        meta = read_table(meta_f, separator="\t")
        text = read_table(text_f, separator="\t")
        if not index_f.is_file():
            raise DataValidationError(f"{index_f}: file not found (maps ASIN -> item_id)")
        index = pl.read_csv(
            index_f, separator="\t", has_header=False, new_columns=["id", "item_id"], infer_schema=False
        )
        titles = text.join(index, on="id", how="inner").select("item_id", pl.col("text").alias("title"))
        raw = meta.join(titles, on="item_id", how="left", maintain_order="left").with_columns(
            pl.col("title").fill_null(""),
            *(
                pl.when(pl.col(c) == "0").then(None).otherwise(pl.col(c)).alias(c)
                for c in ("i_category", "i_brand")
            ),
        )
        items = canonical_items(
            raw,
            str(meta_f),
            id_col="item_id",
            title_col="title",
            attributes={"category": AttributeColumn("i_category"), "brand": AttributeColumn("i_brand")},
        )
        relations = pl.concat(
            [
                raw.select(
                    pl.col("item_id").alias("src_item_id"),
                    pl.col(col).str.strip_chars("[] ").str.split(",").alias("dst_item_id"),
                    pl.lit(rel).alias("relation"),
                )
                .explode("dst_item_id")
                .with_columns(pl.col("dst_item_id").str.strip_chars())
                .filter(pl.col("dst_item_id") != "")
                for col, rel in (("r_complement", "also_bought"), ("r_substitute", "also_viewed"))
            ]
        )
        logs = []
        for split in ("train", "dev", "test"):
            f = root / f"{split}.csv"
            inter = canonical_interactions(
                read_table(f, separator="\t"), str(f), user_col="user_id", item_col="item_id", time_col="time"
            )
            check_interaction_items(inter, items, str(f), str(meta_f))
            logs.append(inter)
        return Dataset.build(self.name, items, pl.concat(logs), relations)


@dataclass(frozen=True)
class TabularAdapter:
    """Any catalog + interaction log in CSV/TSV/parquet, driven by a column mapping.

    Attributes:
        items_path, interactions_path: the two files (``.csv``, ``.tsv``, ``.parquet``).
        item_columns: canonical -> source column for ``item_id``, ``title`` and optionally ``text``,
            ``image_path``, ``available_from`` (when the item was listed: its popularity prior
            then counts train interactions per time on the shelf) (a key mapped to None is absent).
        attributes: attribute name -> ``{column, sep}`` (sep splits a text cell into several values);
            None: no attributes.
        interaction_columns: canonical -> source column for ``user_id``, ``item_id``, ``timestamp``
            and optionally ``weight``.
        time_format: strftime-style format for text timestamps (None: integers or ISO-8601).
        separator: delimiter for text files (None: by extension).
        unknown_items: ``error`` (default) when the log names items the catalog lacks, or ``drop``
            to leave those interactions out with a warning that counts them.
    """

    items_path: str
    interactions_path: str
    item_columns: Mapping[str, str | None] = field(
        default_factory=lambda: {
            "item_id": "item_id",
            "title": "title",
            "text": None,
            "image_path": None,
            "available_from": None,
        }
    )
    attributes: Mapping[str, Mapping[str, str | None]] | None = None
    interaction_columns: Mapping[str, str | None] = field(
        default_factory=lambda: {
            "user_id": "user_id",
            "item_id": "item_id",
            "timestamp": "timestamp",
            "weight": None,
        }
    )
    time_format: str | None = None
    separator: str | None = None
    unknown_items: str = "error"
    name: str = "tabular"

    def load(self) -> Dataset:
        if self.unknown_items not in ("error", "drop"):
            raise ValueError(
                f"data.adapter.unknown_items: expected error or drop, got {self.unknown_items!r}"
            )
        # A column mapped to None is absent (the config lists the optional ones as null).
        ic = {k: v for k, v in self.item_columns.items() if v is not None}
        xc = {k: v for k, v in self.interaction_columns.items() if v is not None}
        for role, have, need, opt in (
            ("item_columns", ic, {"item_id", "title"}, {"text", "image_path", "available_from"}),
            ("interaction_columns", xc, {"user_id", "item_id", "timestamp"}, {"weight"}),
        ):
            if not need <= set(have) or set(have) - need - opt:
                raise ValueError(
                    f"data.adapter.{role}: got keys {sorted(have)}; required {sorted(need)}, optional {sorted(opt)}"
                )
        attrs = {}
        for name, spec in (self.attributes or {}).items():
            if "column" not in spec or set(spec) - {"column", "sep"}:
                raise ValueError(
                    f"data.adapter.attributes.{name}: expected keys column (and optional sep), got {sorted(spec)}"
                )
            attrs[name] = AttributeColumn(str(spec["column"]), spec.get("sep"))
        items = canonical_items(
            read_table(self.items_path, self.separator),
            self.items_path,
            id_col=ic["item_id"],
            title_col=ic["title"],
            text_col=ic.get("text"),
            image_col=ic.get("image_path"),
            attributes=attrs,
            available_col=ic.get("available_from"),
            time_format=self.time_format,
        )
        inter = canonical_interactions(
            read_table(self.interactions_path, self.separator),
            self.interactions_path,
            user_col=xc["user_id"],
            item_col=xc["item_id"],
            time_col=xc["timestamp"],
            weight_col=xc.get("weight"),
            time_format=self.time_format,
        )
        inter = check_interaction_items(
            inter, items, self.interactions_path, self.items_path, drop=self.unknown_items == "drop"
        )
        return Dataset.build(self.name, items, inter)
