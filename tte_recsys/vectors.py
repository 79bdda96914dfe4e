"""The item-vector folder: parquet shards of unit vectors, one format for every batch vector job.

Items are cut into fixed shards of ``shard_size`` (by item code); shard ``c`` belongs to rank
``c % world_size``. Shard files are written atomically and skipped when present, so a killed job
resumes, and the files do not depend on how many ranks wrote them. ``job.json`` pins what the
folder holds (model, traces, items): resuming with another configuration is refused instead of
mixing vectors. With H meta-query heads the ``vector`` column holds the H unit vectors one after
another (head-major, H x D values). Written by :mod:`tte_recsys.serving.embed_job` and the serving
bundle; read by training (frozen content), the label teacher and evaluation, so it sits below all
of them.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from tte_recsys.artifacts import read_manifest, write_json, write_parquet
from tte_recsys.progress import progress

__all__ = ["SHARDS", "ItemVectors", "JobSpec", "load_vectors", "write_shards"]

log = logging.getLogger(__name__)
SHARDS = "shards"


@dataclass(frozen=True)
class JobSpec:
    """What an output folder holds; written as ``job.json`` and compared on resume."""

    dataset: str
    num_items: int
    shard_size: int
    model_id: str
    trace_version: str

    def __post_init__(self) -> None:
        if not (isinstance(self.shard_size, int) and self.shard_size >= 1):
            raise ValueError(
                f"shard_size={self.shard_size!r}: expected an integer >= 1 (items per vector shard)"
            )

    def check_or_write(self, out: Path) -> None:
        path = out / "job.json"
        mine = self.__dict__
        if path.is_file():
            theirs = json.loads(path.read_text())
            if theirs != mine:
                diff = {k: (theirs.get(k), v) for k, v in mine.items() if theirs.get(k) != v}
                raise ValueError(
                    f"{out} already holds vectors of another job (differs in {diff}, as (existing, requested)); "
                    "use a new output folder"
                )
        else:
            write_json(path, mine)


def write_shards(
    num_items: int,
    out_dir: Path,
    spec: JobSpec,
    compute: Callable[[int, int], pl.DataFrame],
    rank: int = 0,
    world_size: int = 1,
    desc: str = "embed",
) -> dict[str, int]:
    """The sharded, resumable, data-parallel loop every batch vector job shares.

    Items ``[c * shard_size, (c + 1) * shard_size)`` form shard ``c``, owned by rank ``c % world_size``;
    ``compute(start, end)`` returns that shard's rows, written atomically to
    ``out_dir/shards/part-<c>.parquet``. Shards already on disk are skipped (resume).
    """
    spec.check_or_write(out_dir)
    n_shards = math.ceil(num_items / spec.shard_size)
    mine = list(range(rank, n_shards, world_size))
    stats = {"shards_written": 0, "shards_skipped": 0, "items_embedded": 0}
    for c in progress(mine, desc=f"{desc} rank {rank}", disable=len(mine) < 2):
        path = out_dir / SHARDS / f"part-{c:05d}.parquet"
        if path.is_file():
            stats["shards_skipped"] += 1
            continue
        start, end = c * spec.shard_size, min((c + 1) * spec.shard_size, num_items)
        write_parquet(path, compute(start, end))
        stats["shards_written"] += 1
        stats["items_embedded"] += end - start
    return stats


@dataclass(frozen=True)
class ItemVectors:
    """Vectors of an ``embed_items`` folder: ``ids`` (N,) and ``vectors`` (N, D), unit rows."""

    ids: list[str]
    vectors: np.ndarray
    model_id: str
    trace_version: str
    folder: str = ""  # where they were read from, for messages

    def aligned(self, item_ids: Sequence[str]) -> np.ndarray:
        """(len(item_ids), D) rows in the order of ``item_ids``; error naming missing ids."""
        pos = {i: k for k, i in enumerate(self.ids)}
        missing = [i for i in item_ids if i not in pos]
        if missing:
            where = f" in {self.folder}" if self.folder else ""
            raise ValueError(
                f"{len(missing)} item(s) have no vector (e.g. {missing[:5]}){where}, of the catalog's "
                f"{len(item_ids)}: vectors of another dataset? re-run embed_items with this data config"
            )
        return self.vectors[[pos[i] for i in item_ids]]


def load_vectors(out_dir: str | Path) -> ItemVectors:
    """Read an ``embed_items`` output folder after verifying its manifest."""
    d = Path(out_dir)
    m = read_manifest(d, kind="embed_items")
    parts = [(f, pl.read_parquet(d / f)) for f in sorted(m["files"]) if f.startswith(f"{SHARDS}/")]
    if not parts:
        raise ValueError(f"{d}: no vector shards; expected an embed_items output folder")
    dims = {f: df.schema["vector"] for f, df in parts}
    if len(set(dims.values())) > 1:
        first = parts[0][0]
        other = next(f for f in dims if dims[f] != dims[first])
        raise ValueError(
            f"{d}: shards hold vectors of different dimensions ({first}: {dims[first]}, {other}: {dims[other]})"
        )
    df = pl.concat([df for _, df in parts])
    vectors = df["vector"].to_numpy().astype(np.float32)  # (N, D)
    bad = np.flatnonzero(~np.isfinite(vectors).all(axis=1))
    if len(bad):
        ids = [df["item_id"][int(i)] for i in bad[:5]]
        raise ValueError(
            f"{d}: {len(bad)} vector(s) hold NaN or infinite values (items {ids}); re-run embed_items"
        )
    return ItemVectors(df["item_id"].to_list(), vectors, str(m["model_id"]), str(m["trace_version"]), str(d))
