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


def _tie_groups(log: pl.DataFrame) -> tuple[pl.LazyFrame, pl.LazyFrame]:
    """(groups: gid, user, ts, start, end) and (members: gid, item, ts), ``gid`` in (user, ts) order."""
    lf = (
        log.lazy()
        .sort("user", "ts", "item")
        .with_columns(pl.int_range(pl.len(), dtype=pl.Int64).alias("pos"))
        .with_columns(pl.struct("user", "ts").rank("dense").cast(pl.Int64).alias("gid"))
    )
    groups = (
        lf.group_by("gid")
        .agg(
            pl.col("user").first(),
            pl.col("ts").first(),
            pl.col("pos").min().alias("start"),
            pl.col("pos").max().alias("end"),
        )
        .sort("gid")
    )
    return groups, lf.select("gid", "item", "ts")


def _group_pairs(groups: pl.DataFrame, cfg: PairConfig) -> pl.DataFrame:
    """Pairs of distinct tie groups (earlier ``ga``, later ``gb``) of one user that qualify."""
    out = []
    hop = 1
    while True:
        shifted = groups.select(
            pl.col("gid").alias("ga"),
            pl.col("gid").shift(-hop).alias("gb"),
            (pl.col("user").shift(-hop) == pl.col("user")).alias("same_user"),
            (pl.col("start").shift(-hop) - pl.col("end")).alias("gap"),
            (pl.col("ts").shift(-hop) - pl.col("ts")).alias("dt"),
        ).filter(pl.col("same_user"))
        ok = pl.lit(True)
        if cfg.window is not None:
            ok = ok & (pl.col("gap") <= cfg.window - 1)
        if cfg.max_seconds is not None:
            ok = ok & (pl.col("dt") <= cfg.max_seconds)
        hit = shifted.filter(ok).select("ga", "gb")
        # Both conditions are monotone in the hop: once no group pair qualifies, none further will.
        if hit.height == 0:
            break
        out.append(hit)
        hop += 1
    if not out:
        return pl.DataFrame(schema={"ga": pl.Int64, "gb": pl.Int64})
    return pl.concat(out)


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
    groups_lf, members = _tie_groups(log)
    groups = groups_lf.collect()
    gpairs = _group_pairs(groups, cfg).lazy()

    within = (
        members.join(members, on="gid", suffix="_b")
        .filter(pl.col("item") < pl.col("item_b"))
        .select(pl.col("item").alias("a"), pl.col("item_b").alias("b"), "ts", pl.lit(True).alias("tie"))
    )
    across = (
        gpairs.join(members, left_on="ga", right_on="gid")
        .join(members.rename({"item": "item_b", "ts": "ts_b"}), left_on="gb", right_on="gid")
        .filter(pl.col("item") != pl.col("item_b"))
        .select(
            pl.col("item").alias("a"),
            pl.col("item_b").alias("b"),
            pl.col("ts_b").alias("ts"),
            pl.lit(False).alias("tie"),
        )
    )
    occ = pl.concat([within, across])
    if cfg.symmetric:
        occ = occ.select(
            pl.min_horizontal("a", "b").alias("src"), pl.max_horizontal("a", "b").alias("dst"), "ts"
        )
    else:
        tie_rev = occ.filter(pl.col("tie")).select(pl.col("b").alias("src"), pl.col("a").alias("dst"), "ts")
        occ = pl.concat([occ.select(pl.col("a").alias("src"), pl.col("b").alias("dst"), "ts"), tie_rev])
    cuts = sorted(cutoffs or [])
    period = pl.lit(0, dtype=pl.Int8)
    for c in cuts:
        period = period + (pl.col("ts") > c).cast(pl.Int8)
    return (
        occ.with_columns(period.alias("period"))
        .group_by("src", "dst", "period")
        .agg(pl.len().cast(pl.UInt32).alias("count"), pl.col("ts").min().alias("first_ts"))
        .with_columns(pl.col("src").cast(pl.Int32), pl.col("dst").cast(pl.Int32))
        .select(list(PAIR_SCHEMA))
        .sort("src", "dst", "period")
        .collect(engine="streaming")
    )


def directed_pairs(pairs: pl.DataFrame, symmetric: bool) -> pl.DataFrame:
    """Rows for both directions of symmetric pairs (``src < dst``); directed pairs unchanged."""
    if not symmetric:
        return pairs
    rev = pairs.with_columns(pl.col("src").alias("dst"), pl.col("dst").alias("src")).select(pairs.columns)
    return pl.concat([pairs, rev])
