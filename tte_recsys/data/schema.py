"""Canonical item / interaction tables and their validation at the boundary.

Canonical items: ``item_id`` (str, unique), ``title`` (str), ``text`` (str, may be empty),
``image_path`` (str or null), optionally ``available_from`` (int Unix seconds or null: when the
item went on sale / was listed), plus any number of categorical attribute columns of type
``list[str]``. Canonical interactions: ``user_id`` (str), ``item_id`` (str, in the catalog),
``timestamp`` (int, Unix seconds), ``weight`` (float or null, e.g. a rating).

Every check raises :class:`DataValidationError` naming the file, the column, example data rows
(1-based, header excluded) and what was expected.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import polars as pl

log = logging.getLogger(__name__)

__all__ = [
    "AttributeColumn",
    "DataValidationError",
    "canonical_interactions",
    "canonical_items",
    "check_interaction_items",
    "read_table",
]

_MAX_EXAMPLES = 5
_ROW = "__row"


class DataValidationError(ValueError):
    """Input data does not match the expected schema; the message says where and what was expected."""


@dataclass(frozen=True)
class AttributeColumn:
    """A categorical attribute read from ``column``; a string cell is split on ``sep`` (None: one value)."""

    column: str
    sep: str | None = None


def read_table(path: str | Path, separator: str | None = None) -> pl.DataFrame:
    """Read a CSV/TSV (every column as text, so parsing errors can be reported per row) or parquet file.

    Args:
        path: ``.parquet``/``.pq`` or a delimited text file.
        separator: the delimiter; by default tab for ``.tsv``/``.text``, otherwise comma.

    Raises:
        DataValidationError: the file is missing, unreadable or has no data rows.
    """
    p = Path(path)
    if not p.is_file():
        raise DataValidationError(f"{p}: file not found")
    try:
        if p.suffix in (".parquet", ".pq"):
            df = pl.read_parquet(p)
        else:
            sep = separator or ("\t" if p.suffix in (".tsv", ".text") else ",")
            df = pl.read_csv(p, separator=sep, infer_schema=False, quote_char='"')
    except (pl.exceptions.PolarsError, OSError) as e:
        raise DataValidationError(f"{p}: cannot be read as a table ({e})") from e
    if df.height == 0:
        raise DataValidationError(f"{p}: no data rows (expected a header line followed by at least one row)")
    return df


def _examples(df: pl.DataFrame, mask: pl.Expr | pl.Series, col: str) -> tuple[int, str]:
    bad = df.filter(mask)
    shown = ", ".join(f"row {r}: {v!r}" for r, v in bad.select(_ROW, col).head(_MAX_EXAMPLES).iter_rows())
    return bad.height, shown


def _require_columns(df: pl.DataFrame, cols: Mapping[str, str], source: str) -> None:
    missing = [f"{src!r} (for {role})" for role, src in cols.items() if src not in df.columns]
    if missing:
        raise DataValidationError(
            f"{source}: missing column(s) {', '.join(missing)}; columns present: {df.columns}"
        )


def _as_string(df: pl.DataFrame, src: str, source: str, role: str, nullable: bool) -> pl.Series:
    s = df[src]
    if s.dtype not in (
        pl.String,
        pl.Int8,
        pl.Int16,
        pl.Int32,
        pl.Int64,
        pl.UInt8,
        pl.UInt16,
        pl.UInt32,
        pl.UInt64,
    ):
        raise DataValidationError(
            f"{source}, column {src!r} ({role}): type {s.dtype}, expected text or integer values"
        )
    s = s.cast(pl.String)
    if not nullable:
        n, shown = _examples(df, s.is_null() | (s.str.strip_chars() == ""), src)
        if n:
            raise DataValidationError(
                f"{source}, column {src!r} ({role}): {n} empty/null value(s) ({shown}); expected a non-empty id"
            )
    return s


def _parse_timestamp(
    df: pl.DataFrame,
    src: str,
    source: str,
    time_format: str | None,
    nullable: bool = False,
    role: str = "timestamp",
) -> pl.Series:
    """Unix seconds from integers, date-times or text; ``nullable``: an empty cell is unknown (null)."""
    s = df[src]
    if nullable and s.dtype == pl.String:
        s = s.str.strip_chars().replace("", None)
    if s.dtype.is_integer():
        parsed = s.cast(pl.Int64)
    elif s.dtype.is_float():  # fractional seconds; pandas also writes an integer column with gaps as float
        s = s.fill_nan(None)
        parsed = s.floor().cast(pl.Int64, strict=False)
    elif s.dtype == pl.Datetime or s.dtype == pl.Date:
        parsed = s.cast(pl.Datetime("us")).dt.epoch("s")
    elif s.dtype == pl.String:
        as_int = s.str.strip_chars().cast(pl.Int64, strict=False)
        if time_format is None and as_int.null_count() == s.null_count():
            parsed = as_int
        else:
            try:
                parsed = (
                    s.str.strip_chars()
                    .str.to_datetime(format=time_format, strict=False, time_unit="us")
                    .dt.epoch("s")
                )
            except pl.exceptions.PolarsError:  # no date format fits the text: only integers parse
                parsed = as_int
    else:
        raise DataValidationError(
            f"{source}, column {src!r} ({role}): type {s.dtype}, expected Unix seconds or a date-time"
        )
    bad = parsed.is_null() & s.is_not_null() if nullable else parsed.is_null()
    n, shown = _examples(df, bad, src)
    if n:
        expected = f"format {time_format!r}" if time_format else "integer Unix seconds or ISO-8601 date-time"
        if nullable:
            expected += " (or an empty cell: unknown)"
        raise DataValidationError(
            f"{source}, column {src!r} ({role}): {n} value(s) do not parse ({shown}); expected {expected}"
        )
    return parsed.cast(pl.Int64)


def canonical_items(
    raw: pl.DataFrame,
    source: str,
    id_col: str,
    title_col: str,
    text_col: str | None = None,
    image_col: str | None = None,
    attributes: Mapping[str, AttributeColumn] | None = None,
    available_col: str | None = None,
    time_format: str | None = None,
) -> pl.DataFrame:
    """Map a raw item table to the canonical schema and validate it.

    Args:
        raw: the table as read (see :func:`read_table`).
        source: file name for error messages.
        id_col, title_col, text_col, image_col: source column names (text/image optional).
        attributes: canonical attribute name -> source column (+ separator).
        available_col: optional column with the time each item became available (Unix seconds or a
            date-time as for interaction timestamps, ``time_format``); empty cells mean unknown.

    Returns:
        The canonical items frame, in the input's row order.
    """
    attributes = dict(attributes or {})
    cols = {"item_id": id_col, "title": title_col}
    cols.update(
        {
            k: v
            for k, v in (("text", text_col), ("image_path", image_col), ("available_from", available_col))
            if v is not None
        }
    )
    cols.update({f"attribute {name}": a.column for name, a in attributes.items()})
    _require_columns(raw, cols, source)
    df = raw.with_columns((pl.int_range(pl.len()) + 1).alias(_ROW))
    ids = _as_string(df, id_col, source, "item_id", nullable=False)
    dup = df.with_columns(ids.alias("__id")).filter(pl.col("__id").is_duplicated())
    if dup.height:
        shown = ", ".join(
            f"{i!r} at rows {rows}"
            for i, rows in dup.group_by("__id", maintain_order=True)
            .agg(pl.col(_ROW))
            .head(_MAX_EXAMPLES)
            .iter_rows()
        )
        raise DataValidationError(
            f"{source}, column {id_col!r} (item_id): duplicate item id(s): {shown}; expected each item once"
        )
    out = {
        "item_id": ids,
        "title": df[title_col].cast(pl.String).fill_null(""),
        "text": df[text_col].cast(pl.String).fill_null("") if text_col else pl.Series([""] * df.height),
        "image_path": df[image_col].cast(pl.String)
        if image_col
        else pl.Series([None] * df.height, dtype=pl.String),
    }
    if available_col is not None:
        out["available_from"] = _parse_timestamp(
            df, available_col, source, time_format, nullable=True, role="available_from"
        )
    for name, a in attributes.items():
        s = df[a.column]
        if s.dtype == pl.List(pl.String):
            vals = s
        elif s.dtype == pl.String or s.dtype.is_integer():
            s = s.cast(pl.String).str.strip_chars()
            vals = (
                s.str.split(a.sep)
                if a.sep is not None
                else s.to_frame().select(pl.concat_list(s.name)).to_series()
            )
        else:
            raise DataValidationError(
                f"{source}, column {a.column!r} (attribute {name}): type {s.dtype}, "
                "expected text (optionally separated) or a list of strings"
            )
        out[name] = (
            vals.list.eval(pl.element().str.strip_chars())
            .list.eval(pl.element().filter(pl.element().is_not_null() & (pl.element() != "")))
            .fill_null([])
        )
    return pl.DataFrame(out).with_columns(pl.col("image_path").cast(pl.String))


def canonical_interactions(
    raw: pl.DataFrame,
    source: str,
    user_col: str,
    item_col: str,
    time_col: str,
    weight_col: str | None = None,
    time_format: str | None = None,
) -> pl.DataFrame:
    """Map a raw interaction log to the canonical schema and validate it.

    Timestamps may be integer Unix seconds, date-times, or strings in ``time_format``
    (a chrono/strftime format; ISO-8601 when None and the values are not integers).
    """
    cols = {"user_id": user_col, "item_id": item_col, "timestamp": time_col}
    if weight_col is not None:
        cols["weight"] = weight_col
    _require_columns(raw, cols, source)
    df = raw.with_columns((pl.int_range(pl.len()) + 1).alias(_ROW))
    out = {
        "user_id": _as_string(df, user_col, source, "user_id", nullable=False),
        "item_id": _as_string(df, item_col, source, "item_id", nullable=False),
        "timestamp": _parse_timestamp(df, time_col, source, time_format),
    }
    if weight_col is not None:
        w = df[weight_col].cast(pl.Float64, strict=False)
        n, shown = _examples(
            df.with_columns(w.alias("__w")),
            pl.col("__w").is_null() & pl.col(weight_col).is_not_null(),
            weight_col,
        )
        if n:
            raise DataValidationError(
                f"{source}, column {weight_col!r} (weight): {n} value(s) are not numbers ({shown})"
            )
        out["weight"] = w
    else:
        out["weight"] = pl.Series([None] * df.height, dtype=pl.Float64)
    return pl.DataFrame(out)


def check_interaction_items(
    interactions: pl.DataFrame,
    items: pl.DataFrame,
    source: str,
    catalog: str,
    drop: bool = False,
) -> pl.DataFrame:
    """Return the interactions whose item is in the catalog.

    An interaction that names another item is an error; with ``drop`` such interactions are left
    out instead, with a warning that counts them (a log often outlives the catalog snapshot it is
    joined with: delisted items). A log in which no item is in the catalog is an error either way.
    """
    known = pl.col("item_id").is_in(items["item_id"].implode())
    df = interactions.with_columns((pl.int_range(pl.len()) + 1).alias(_ROW))
    n, shown = _examples(df, ~known, "item_id")
    if not n:
        return interactions
    what = f"{source}, column item_id: {n} interaction(s) name items not in the catalog {catalog} ({shown})"
    if n == interactions.height:
        raise DataValidationError(f"{what}: that is all of them; do the two files use the same item ids?")
    if not drop:
        raise DataValidationError(
            f"{what}; expected every item id to appear in the catalog, "
            "or set data.adapter.unknown_items=drop to leave those interactions out"
        )
    log.warning("%s: left out (unknown_items=drop), %d interaction(s) kept", what, interactions.height - n)
    return interactions.filter(known)
