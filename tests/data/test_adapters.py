from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from tte_recsys.data.adapters import AmazonOfficeAdapter, MovieLensAdapter, TabularAdapter


def test_builtin_movielens_matches_source_counts() -> None:
    ds = MovieLensAdapter().load()
    assert ds.stats() == {"items": 9742, "users": 610, "interactions": 100836}
    toy = ds.items.filter(pl.col("item_id") == "1").row(0, named=True)
    assert toy["title"] == "Toy Story (1995)"
    assert toy["genres"] == ["Adventure", "Animation", "Children", "Comedy", "Fantasy"]
    assert "pixar" in toy["tags"]
    no_genre = ds.items.filter(pl.col("genres").list.len() == 0).height
    assert no_genre == 34  # "(no genres listed)" becomes an empty list


def test_builtin_amazon_matches_source_counts() -> None:
    ds = AmazonOfficeAdapter().load()
    assert ds.stats() == {"items": 2420, "users": 4905, "interactions": 53258}
    assert ds.relations is not None
    counts = dict(ds.relations.group_by("relation").len().iter_rows())
    assert counts == {"also_bought": 38071, "also_viewed": 18345}
    assert (ds.items["title"] != "").all()


def _tabular_files(tmp_path: Path, fmt: str) -> tuple[Path, Path]:
    items = pl.DataFrame({"sku": ["a", "b", "c"], "name": ["A", "B", "C"], "cats": ["x|y", "y", ""]})
    log = pl.DataFrame(
        {
            "who": ["u", "u", "v"],
            "sku": ["a", "b", "c"],
            "when": ["2024-01-01T00:00:00", "2024-01-02T00:00:00", "2024-01-03T00:00:00"],
        }
    )
    ip, lp = tmp_path / f"items.{fmt}", tmp_path / f"log.{fmt}"
    for df, p in ((items, ip), (log, lp)):
        df.write_parquet(p) if fmt == "parquet" else df.write_csv(p)
    return ip, lp


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_tabular_adapter(tmp_path: Path, fmt: str) -> None:
    ip, lp = _tabular_files(tmp_path, fmt)
    ds = TabularAdapter(
        items_path=str(ip),
        interactions_path=str(lp),
        item_columns={"item_id": "sku", "title": "name"},
        attributes={"cats": {"column": "cats", "sep": "|"}},
        interaction_columns={"user_id": "who", "item_id": "sku", "timestamp": "when"},
    ).load()
    assert ds.items["cats"].to_list() == [["x", "y"], ["y"], []]
    assert ds.interactions["timestamp"].to_list() == [1704067200, 1704153600, 1704240000]


def test_tabular_adapter_mapping_errors(tmp_path: Path) -> None:
    ip, lp = _tabular_files(tmp_path, "csv")
    with pytest.raises(ValueError, match=r"item_columns: got keys \['id'\]; required \['item_id', 'title'\]"):
        TabularAdapter(items_path=str(ip), interactions_path=str(lp), item_columns={"id": "sku"}).load()
    with pytest.raises(ValueError, match=r"missing column\(s\) 'item_id' \(for item_id\)"):
        TabularAdapter(
            items_path=str(ip),
            interactions_path=str(lp),
            item_columns={"item_id": "item_id", "title": "name"},
        ).load()


def test_tabular_adapter_drops_unknown_log_items_on_request(tmp_path: Path) -> None:
    ip, lp = _tabular_files(tmp_path, "csv")
    pl.read_csv(ip).filter(pl.col("sku") != "c").write_csv(ip)  # "c" delisted; the log still names it
    kw = dict(
        items_path=str(ip),
        interactions_path=str(lp),
        item_columns={"item_id": "sku", "title": "name"},
        interaction_columns={"user_id": "who", "item_id": "sku", "timestamp": "when"},
    )
    with pytest.raises(
        ValueError, match=r"log\.csv, column item_id: 1 interaction\(s\) .*unknown_items=drop"
    ):
        TabularAdapter(**kw).load()
    ds = TabularAdapter(**kw, unknown_items="drop").load()
    assert ds.interactions["item_id"].to_list() == ["a", "b"]
    with pytest.raises(ValueError, match=r"data\.adapter\.unknown_items: expected error or drop, got 'skip'"):
        TabularAdapter(**kw, unknown_items="skip").load()
