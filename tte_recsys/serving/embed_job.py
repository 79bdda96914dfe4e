"""Batch item embedding: catalog (+ traces) -> an item-vector folder (:mod:`tte_recsys.vectors`).

Only one shard's texts and vectors are in memory at a time; see :mod:`tte_recsys.vectors` for the
folder format, resume and the rank -> shard rule.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import polars as pl

from tte_recsys.tte.embedder import Encoder
from tte_recsys.tte.fusion import TraceFusion, item_vectors, trace_vectors
from tte_recsys.tte.items import ItemInput
from tte_recsys.vectors import JobSpec, write_shards

__all__ = ["embed_catalog", "embed_trace_catalog"]


def _shard_rows(
    chunk: Sequence[ItemInput], vecs: np.ndarray, spec: JobSpec, found: Mapping[str, object]
) -> pl.DataFrame:
    """One shard's rows of the item-vector format: (n, D') vectors of ``chunk``, in its order."""
    vecs = np.asarray(vecs, dtype=np.float32)
    return pl.DataFrame(
        {
            "item_id": [it.item_id for it in chunk],
            "vector": pl.Series(vecs, dtype=pl.Array(pl.Float32, vecs.shape[1])),
            "model_id": spec.model_id,
            "trace_version": spec.trace_version,
            "has_trace": [it.item_id in found for it in chunk],
        }
    )


def embed_catalog(
    items: Sequence[ItemInput],
    embedder: Encoder,
    out_dir: Path,
    spec: JobSpec,
    traces: Mapping[str, str] | None = None,
    rank: int = 0,
    world_size: int = 1,
    batch_size: int = 64,
    fusion: TraceFusion | None = None,
) -> dict[str, int]:
    """Embed this rank's shards of ``items`` into ``out_dir/shards``; returns counts (written, skipped).

    ``traces`` (item id -> trace) enter each vector as ``fusion`` says (:mod:`tte_recsys.tte.fusion`;
    default: fused with the default weight)."""
    empty = [it for it in items if it.is_empty]
    if empty:
        raise ValueError(
            f"{len(empty)} item(s) have no text and no image (e.g. {[it.item_id for it in empty[:5]]}): "
            f"their content fields {sorted(empty[0].fields)} are all empty; fill them in the catalog, "
            "or add fields that have text "
            "(data.content_fields)"
        )
    found = {i: [t] for i, t in (traces or {}).items()}
    how = fusion or TraceFusion()

    def compute(start: int, end: int) -> pl.DataFrame:
        chunk = items[start:end]
        vecs = item_vectors(embedder, chunk, found, how, batch_size)  # (n, D')
        return _shard_rows(chunk, vecs, spec, found)

    return write_shards(len(items), out_dir, spec, compute, rank, world_size)


def embed_trace_catalog(
    items: Sequence[ItemInput],
    embedder: Encoder,
    out_dir: Path,
    spec: JobSpec,
    traces: Mapping[str, str],
    rank: int = 0,
    world_size: int = 1,
    batch_size: int = 64,
) -> dict[str, int]:
    """The trace vectors of ``items`` (:func:`~tte_recsys.tte.fusion.trace_vectors`: each trace
    embedded alone; a zero row for an item without one) into ``out_dir/shards``, in the
    item-vector folder format: what fusion and the MTMH tower's trace input read."""
    found = {i: [t] for i, t in traces.items()}

    def compute(start: int, end: int) -> pl.DataFrame:
        chunk = items[start:end]
        vecs = trace_vectors(embedder, [found.get(it.item_id, []) for it in chunk], batch_size)
        return _shard_rows(chunk, vecs, spec, found)

    return write_shards(len(items), out_dir, spec, compute, rank, world_size, desc="embed traces")
