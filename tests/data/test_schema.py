from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from tte_recsys.data.schema import (
    AttributeColumn,
    DataValidationError,
    canonical_interactions,
    canonical_items,
    check_interaction_items,
    read_table,
)


def _write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def _items(tmp_path: Path, text: str) -> pl.DataFrame:
    p = _write(tmp_path, "items.csv", text)
    return canonical_items(
        read_table(p), str(p), id_col="id", title_col="name", attributes={"cat": AttributeColumn("cat", "|")}
    )


def _log(tmp_path: Path, text: str, time_format: str | None = None) -> pl.DataFrame:
    p = _write(tmp_path, "log.csv", text)
    return canonical_interactions(
        read_table(p),
        str(p),
        user_col="u",
        item_col="i",
        time_col="t",
        weight_col="r",
        time_format=time_format,
    )


def test_valid_items_become_canonical(tmp_path: Path) -> None:
    df = _items(tmp_path, "id,name,cat\n1,A,x|y\n2,B,\n")
    assert df.columns == ["item_id", "title", "text", "image_path", "cat"]
    assert df["cat"].to_list() == [["x", "y"], []]
    assert df["item_id"].to_list() == ["1", "2"]


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataValidationError, match=r"nope\.csv: file not found"):
        read_table(tmp_path / "nope.csv")


def test_empty_file(tmp_path: Path) -> None:
    p = _write(tmp_path, "items.csv", "id,name\n")
    with pytest.raises(DataValidationError, match=r"items\.csv: no data rows"):
        read_table(p)


def test_missing_column_names_it_and_lists_present(tmp_path: Path) -> None:
    with pytest.raises(
        DataValidationError,
        match=r"items\.csv: missing column\(s\) 'cat' \(for attribute cat\); columns present: \['id', 'name'\]",
    ):
        _items(tmp_path, "id,name\n1,A\n")


def test_null_item_id_names_rows(tmp_path: Path) -> None:
    with pytest.raises(
        DataValidationError, match=r"column 'id' \(item_id\): 1 empty/null value\(s\) \(row 2: None\)"
    ):
        _items(tmp_path, "id,name,cat\n1,A,x\n,B,y\n")


def test_duplicate_item_ids_name_rows(tmp_path: Path) -> None:
    with pytest.raises(DataValidationError, match=r"duplicate item id\(s\): '7' at rows \[1, 3\]"):
        _items(tmp_path, "id,name,cat\n7,A,x\n8,B,y\n7,C,z\n")


def test_unparseable_timestamp_names_rows_and_format(tmp_path: Path) -> None:
    with pytest.raises(
        DataValidationError,
        match=r"column 't' \(timestamp\): 1 value\(s\) do not parse \(row 2: 'yesterday'\); expected integer Unix seconds or ISO-8601",
    ):
        _log(tmp_path, "u,i,t,r\na,1,2020-01-01T00:00:00,4\nb,2,yesterday,3\n")


def test_iso_and_formatted_timestamps_parse(tmp_path: Path) -> None:
    assert _log(tmp_path, "u,i,t,r\na,1,1970-01-01T00:01:00,4\n")["timestamp"].to_list() == [60]
    assert _log(tmp_path, "u,i,t,r\na,1,02/01/1970,4\n", time_format="%d/%m/%Y")["timestamp"].to_list() == [
        86400
    ]


def test_non_numeric_weight(tmp_path: Path) -> None:
    with pytest.raises(
        DataValidationError, match=r"column 'r' \(weight\): 1 value\(s\) are not numbers \(row 1: 'five'\)"
    ):
        _log(tmp_path, "u,i,t,r\na,1,5,five\n")


def test_mistyped_id_column(tmp_path: Path) -> None:
    p = tmp_path / "items.parquet"
    pl.DataFrame({"id": [1.5, 2.5], "name": ["a", "b"], "cat": ["x", "y"]}).write_parquet(p)
    with pytest.raises(
        DataValidationError, match=r"column 'id' \(item_id\): type Float64, expected text or integer"
    ):
        canonical_items(read_table(p), str(p), id_col="id", title_col="name")


def test_unknown_items_in_interactions(tmp_path: Path) -> None:
    items = _items(tmp_path, "id,name,cat\n1,A,x\n")
    log = _log(tmp_path, "u,i,t,r\na,1,5,4\nb,9,6,4\n")
    with pytest.raises(
        DataValidationError,
        match=r"log\.csv, column item_id: 1 interaction\(s\) name items not in the catalog items\.csv \(row 2: '9'\)"
        r".*data\.adapter\.unknown_items=drop",
    ):
        check_interaction_items(log, items, "log.csv", "items.csv")


def test_unknown_items_dropped_on_request_with_a_count(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    items = _items(tmp_path, "id,name,cat\n1,A,x\n2,B,y\n")
    log = _log(tmp_path, "u,i,t,r\na,1,5,4\nb,9,6,4\nb,2,7,4\nc,8,8,4\n")
    assert check_interaction_items(log, items, "log.csv", "items.csv", drop=True)["item_id"].to_list() == [
        "1",
        "2",
    ]
    assert "2 interaction(s) name items not in the catalog items.csv (row 2: '9', row 4: '8')" in caplog.text
    assert "2 interaction(s) kept" in caplog.text
    known = log.filter(pl.col("item_id") != "9").filter(pl.col("item_id") != "8")
    assert check_interaction_items(known, items, "log.csv", "items.csv").equals(known)


def test_a_log_with_no_catalog_item_is_an_error_even_when_dropping(tmp_path: Path) -> None:
    items = _items(tmp_path, "id,name,cat\n1,A,x\n")
    log = _log(tmp_path, "u,i,t,r\na,7,5,4\nb,9,6,4\n")
    with pytest.raises(
        DataValidationError, match=r"2 interaction\(s\) .* that is all of them; do the two files"
    ):
        check_interaction_items(log, items, "log.csv", "items.csv", drop=True)


def _listed(tmp_path: Path, text: str, time_format: str | None = None) -> pl.DataFrame:
    p = _write(tmp_path, "items.csv", text)
    return canonical_items(
        read_table(p), str(p), id_col="id", title_col="name", available_col="since", time_format=time_format
    )


def test_listing_dates_parse_and_an_empty_cell_is_unknown(tmp_path: Path) -> None:
    df = _listed(tmp_path, "id,name,since\n1,A,1970-01-01T00:01:00\n2,B,\n3,C, \n")
    assert df["available_from"].to_list() == [60, None, None]
    assert df.schema["available_from"] == pl.Int64
    assert _listed(tmp_path, "id,name,since\n1,A,120\n2,B,\n")["available_from"].to_list() == [120, None]
    assert _listed(tmp_path, "id,name,since\n1,A,02/01/1970\n", "%d/%m/%Y")["available_from"].to_list() == [
        86400
    ]


def test_unparseable_listing_date_names_row_and_role(tmp_path: Path) -> None:
    with pytest.raises(
        DataValidationError,
        match=r"items\.csv, column 'since' \(available_from\): 1 value\(s\) do not parse \(row 2: 'soon'\); "
        r"expected integer Unix seconds or ISO-8601 date-time \(or an empty cell: unknown\)",
    ):
        _listed(tmp_path, "id,name,since\n1,A,2020-01-01\n2,B,soon\n3,C,\n")


def test_float_seconds_parse_and_nan_is_unknown_for_listing_dates(tmp_path: Path) -> None:
    # pandas writes an integer column with gaps as float64, NaN for the gaps
    p = tmp_path / "items.parquet"
    pl.DataFrame({"id": ["1", "2"], "name": ["A", "B"], "since": [120.7, float("nan")]}).write_parquet(p)
    df = canonical_items(read_table(p), str(p), id_col="id", title_col="name", available_col="since")
    assert df["available_from"].to_list() == [120, None]
    log = tmp_path / "log.parquet"
    pl.DataFrame({"u": ["a"], "i": ["1"], "t": [60.9]}).write_parquet(log)
    assert canonical_interactions(read_table(log), str(log), "u", "i", "t")["timestamp"].to_list() == [60]
    pl.DataFrame({"u": ["a", "b"], "i": ["1", "1"], "t": [60.0, float("nan")]}).write_parquet(log)
    with pytest.raises(
        DataValidationError, match=r"column 't' \(timestamp\): 1 value\(s\) do not parse \(row 2"
    ):
        canonical_interactions(read_table(log), str(log), "u", "i", "t")
