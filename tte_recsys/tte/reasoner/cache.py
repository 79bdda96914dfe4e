"""Trace cache: append-only parquet parts keyed by (item_id, content_hash, reasoner_id, prompt).

Each flush writes a new part file atomically under a writer-specific name, so a killed run loses
at most its unflushed batch and concurrent ranks never write the same file. Reading merges all
parts (the newest entry wins for a repeated key).
"""

from __future__ import annotations

import uuid
from pathlib import Path

import polars as pl

from tte_recsys.artifacts import write_parquet

__all__ = ["CACHE_SCHEMA", "KEY", "CacheCorruptError", "TraceCache"]

KEY = ("item_id", "content_hash", "reasoner_id", "prompt")
CACHE_SCHEMA = {
    **dict.fromkeys(KEY, pl.String),
    "raw": pl.String,
    "thinking": pl.String,
    "summary": pl.String,
    "issue": pl.String,
}


class CacheCorruptError(ValueError):
    """A cache part cannot be read; the message names it."""


class TraceCache:
    """Cache folder of one or many writers.

    Args:
        root: the cache folder (created).
        writer: a name unique among concurrent writers (e.g. ``rank0``).
    """

    def __init__(self, root: str | Path, writer: str = "main") -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.writer = writer

    def parts(self) -> list[Path]:
        return sorted(self.root.glob("part-*.parquet"))

    def load(self) -> pl.DataFrame:
        """All cached traces, one row per key."""
        frames = []
        for p in self.parts():
            try:
                df = pl.read_parquet(p)
            except (pl.exceptions.PolarsError, OSError) as e:
                raise CacheCorruptError(
                    f"trace cache part {p} cannot be read ({e}); delete that file to regenerate its traces "
                    "(the other parts are intact)"
                ) from e
            missing = set(CACHE_SCHEMA) - set(df.columns)
            if missing:
                raise CacheCorruptError(f"trace cache part {p} lacks column(s) {sorted(missing)}; delete it")
            frames.append(df.select(list(CACHE_SCHEMA)).with_columns(pl.lit(p.name).alias("_part")))
        if not frames:
            return pl.DataFrame(schema=CACHE_SCHEMA)
        # Part names sort by writer then time; keep the last entry written for each key.
        return pl.concat(frames).sort("_part").unique(subset=list(KEY), keep="last").drop("_part")

    def lookup(self, keys: pl.DataFrame) -> pl.DataFrame:
        """Cached rows for ``keys`` (the KEY columns), in the order of ``keys``; misses are absent."""
        return self.load().join(keys, on=list(KEY), how="inner", maintain_order="right")

    def append(self, rows: pl.DataFrame) -> Path | None:
        """Write ``rows`` (CACHE_SCHEMA columns) as a new part; nothing for an empty frame."""
        if rows.height == 0:
            return None
        name = f"part-{self.writer}-{uuid.uuid1().hex}.parquet"  # uuid1 starts with time: later sorts later
        path = self.root / name
        write_parquet(path, rows.select(list(CACHE_SCHEMA)))
        return path
