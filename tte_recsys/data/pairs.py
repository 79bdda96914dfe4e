"""Co-engagement pair mining: vectorised polars, no Python loop over rows.

Each user's history is sorted by time; interactions sharing a timestamp form a *tie group*
whose internal order is unknown. Two interactions pair when

* ``window``: some order of the ties puts them within ``window`` consecutive interactions,
  i.e. the later group starts at most ``window - 1`` positions after the earlier group ends
  (members of one tie group always pair with each other);
* ``max_seconds``: their timestamps differ by at most that many seconds;

(both must hold when both are set). Pairs are built between tie groups first (a few hops of a
shifted group table), then expanded to items, so the work is proportional to the output.
A pair occurrence takes the timestamp of its later interaction; occurrences are counted per
period between split cut-offs.
"""

from __future__ import annotations

import polars as pl

from tte_recsys.config import PairConfig

__all__ = ["PAIR_SCHEMA", "directed_pairs", "mine_pairs"]

PAIR_SCHEMA = {"src": pl.Int32, "dst": pl.Int32, "period": pl.Int8, "count": pl.UInt32, "first_ts": pl.Int64}


def _tie_groups(log: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Sort once; return (rows: item, ts in (user, ts) order) and (groups: user, ts, item, start, end).

    ``item`` of a group is its first row's item (the only one for the usual one-row group).

    A tie group is a run of equal (user, ts) in the sorted rows, so it is the row range
    ``[start, end]`` and needs no hash join to expand. The order of rows inside a tie does not
    matter: every result depends on tie groups as sets.
    """
    tmin, tmax = log["ts"].min(), log["ts"].max()
    span = int(tmax) - int(tmin) + 1 if log.height else 1  # type: ignore[arg-type]
    if log.height and (int(log["user"].max()) + 1) * span < 2**62:  # type: ignore[arg-type]
        # One packed int64 key sorts about twice as fast as the two columns (measured, 10M rows).
        key = log["user"].cast(pl.Int64) * span + (log["ts"] - tmin)
        rows = log.with_columns(key.alias("key")).sort("key")
        new = rows["key"] != rows["key"].shift(1)
    else:
        rows = log.sort("user", "ts")
        new = (rows["user"] != rows["user"].shift(1)) | (rows["ts"] != rows["ts"].shift(1))
    starts = rows.with_row_index("start").filter(new.fill_null(True))
    groups = starts.select(
        "user",
        "ts",
        "item",
        pl.col("start").cast(pl.Int64),
        (pl.col("start").shift(-1).fill_null(rows.height) - 1).cast(pl.Int64).alias("end"),
    )
    return rows.select("item", "ts"), groups


def _hop(groups: pl.LazyFrame, hop: int, cfg: PairConfig) -> pl.LazyFrame:
    """Row ranges of group pairs ``hop`` tie groups apart (same user) that qualify."""
    ok = pl.col("user").shift(-hop) == pl.col("user")
    if cfg.window is not None:
        ok = ok & (pl.col("start").shift(-hop) - pl.col("end") <= cfg.window - 1)
    if cfg.max_seconds is not None:
        ok = ok & (pl.col("ts").shift(-hop) - pl.col("ts") <= cfg.max_seconds)
    return (
        groups.select(
            pl.col("start").alias("a_start"),
            pl.col("end").alias("a_end"),
            pl.col("start").shift(-hop).alias("b_start"),
            pl.col("end").shift(-hop).alias("b_end"),
            pl.col("item").alias("a"),
            pl.col("item").shift(-hop).alias("b"),
            pl.col("ts").shift(-hop).alias("ts"),
            ok.fill_null(False).alias("ok"),
        )
        .filter("ok")
        .drop("ok")
    )


def _group_pairs(groups: pl.DataFrame, cfg: PairConfig) -> pl.LazyFrame:
    """Row ranges of qualifying pairs of distinct tie groups of one user (earlier ``a``, later ``b``)."""
    lg = groups.lazy()
    if cfg.window is not None:
        # b starts at least ``hop`` rows after a ends, so hops beyond window - 1 never qualify.
        return pl.concat([_hop(lg, h, cfg) for h in range(1, cfg.window)])
    # Time limit only: the condition is monotone in the hop, so stop at the first empty hop.
    out, hop = [], 1
    while (hit := _hop(lg, hop, cfg).collect()).height:
        out.append(hit.lazy())
        hop += 1
    schema = {
        **dict.fromkeys(("a_start", "a_end", "b_start", "b_end"), pl.Int64),
        "a": pl.Int32,
        "b": pl.Int32,
        "ts": pl.Int64,
    }
    return pl.concat(out) if out else pl.LazyFrame(schema=schema)


def _expand(ranges: pl.LazyFrame, rows: pl.DataFrame, within: bool) -> pl.DataFrame:
    """Group-pair row ranges -> one (a, b, ts) row per pair of interactions.

    ``ranges`` has a_start, a_end, b_start, b_end and, for one-row groups, their items ``a``,
    ``b`` and the later timestamp ``ts``. ``within``: a and b are the same tie group; each
    unordered pair of its rows is kept once.
    """
    single = (pl.col("a_start") == pl.col("a_end")) & (pl.col("b_start") == pl.col("b_end"))
    # Most groups are one interaction: their items came along with the hop; only ties need a gather.
    direct = ranges.filter(single).select("a", "b", "ts")
    pos = (
        ranges.filter(~single)
        .select(pl.int_ranges("a_start", pl.col("a_end") + 1).alias("pa"), "b_start", "b_end")
        .explode("pa")
        .select("pa", pl.int_ranges("b_start", pl.col("b_end") + 1).alias("pb"))
        .explode("pb")
    )
    if within:
        pos = pos.filter(pl.col("pa") < pl.col("pb"))
    p = pos.collect()
    multi = pl.DataFrame(
        {
            "a": rows["item"].gather(p["pa"]),
            "b": rows["item"].gather(p["pb"]),
            "ts": rows["ts"].gather(p["pb"]),
        }
    )
    return pl.concat([direct.collect(), multi]).filter(pl.col("a") != pl.col("b"))


def mine_pairs(interactions: pl.DataFrame, cfg: PairConfig, cutoffs: list[int] | None = None) -> pl.DataFrame:
    """Count co-engaged item pairs.

    Args:
        interactions: canonical interactions with codes (``user_idx``, ``item_idx``, ``timestamp``,
            ``weight``).
        cfg: window / time limit / rating threshold / symmetry.
        cutoffs: ascending timestamps splitting time into periods; an occurrence at time ``t``
            falls in period ``sum(t > c for c in cutoffs)`` (0 = before the first cut-off).

    Returns:
        Frame with :data:`PAIR_SCHEMA` columns, one row per (src, dst, period): ``count``
        occurrences, the first at ``first_ts``. Symmetric mode keeps one row per unordered pair
        (``src < dst``); use :func:`directed_pairs` for both directions. Directed mode has
        earlier -> later, and both directions for timestamp ties. Re-engaging the same item
        is not a pair.
    """
    log = interactions
    if cfg.min_rating is not None:
        log = log.filter(pl.col("weight") >= cfg.min_rating)
    log = log.select(
        pl.col("user_idx").alias("user"), pl.col("item_idx").alias("item"), pl.col("timestamp").alias("ts")
    )
    rows, groups = _tie_groups(log)
    ties = (
        groups.lazy()
        .filter(pl.col("end") > pl.col("start"))
        .select(
            pl.col("start").alias("a_start"),
            pl.col("end").alias("a_end"),
            pl.col("start").alias("b_start"),
            pl.col("end").alias("b_end"),
            pl.col("item").alias("a"),
            pl.col("item").alias("b"),
            "ts",
        )
    )
    within = _expand(ties, rows, within=True).with_columns(pl.lit(True).alias("tie"))
    across = _expand(_group_pairs(groups, cfg), rows, within=False).with_columns(pl.lit(False).alias("tie"))
    occ = pl.concat([within, across])
    if cfg.symmetric:
        occ = occ.select(
            pl.min_horizontal("a", "b").alias("src"), pl.max_horizontal("a", "b").alias("dst"), "ts"
        )
    else:
        tie_rev = occ.filter(pl.col("tie")).select(pl.col("b").alias("src"), pl.col("a").alias("dst"), "ts")
        occ = pl.concat([occ.select(pl.col("a").alias("src"), pl.col("b").alias("dst"), "ts"), tie_rev])
    period = pl.lit(0, dtype=pl.Int64)
    for c in sorted(cutoffs or []):
        period = period + (pl.col("ts") > c).cast(pl.Int64)
    n_periods = len(cutoffs or []) + 1
    n_items = int(log.select(pl.col("item").max()).item() or 0) + 1
    # One packed integer key groups faster than three columns.
    key = (pl.col("src").cast(pl.Int64) * n_items + pl.col("dst").cast(pl.Int64)) * n_periods + period
    agg = (
        occ.lazy()
        .group_by(key.alias("key"))
        .agg(pl.len().cast(pl.UInt32).alias("count"), pl.col("ts").min().alias("first_ts"))
        .sort("key")
        .collect()
    )
    pair = agg["key"] // n_periods
    return pl.DataFrame(
        {
            "src": (pair // n_items).cast(pl.Int32),
            "dst": (pair % n_items).cast(pl.Int32),
            "period": (agg["key"] % n_periods).cast(pl.Int8),
            "count": agg["count"],
            "first_ts": agg["first_ts"],
        }
    )


def directed_pairs(pairs: pl.DataFrame, symmetric: bool) -> pl.DataFrame:
    """Rows for both directions of symmetric pairs (``src < dst``); directed pairs unchanged."""
    if not symmetric:
        return pairs
    rev = pairs.with_columns(pl.col("src").alias("dst"), pl.col("dst").alias("src")).select(pairs.columns)
    return pl.concat([pairs, rev])
