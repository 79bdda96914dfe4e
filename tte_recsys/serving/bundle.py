"""The serving bundle: per-head FAISS indexes over a trained model's item vectors.

Layout of a bundle folder::

    vectors/part-*.parquet   item_idx, item_id, one Array(Float32, D) column per head (the batch
                             embedding job's shards: streaming, resumable, data-parallel), and
                             ``bias`` when the model carries a per-item score bias
    <head>.faiss             one index per head, ids = item codes (int64); with a bias, over
                             [v, bias] (D + 1 dims), searched with [q, 1]: score = q.v + bias
    ids.parquet              item_idx -> item_id (string ids kept exactly)
    items.parquet            item_id, title (what serving shows)
    manifest.json            schema version, the model export's manifest hash, config, heads, dims,
                             index kinds and parameters, counts, probes, ANN quality, sha256 per file

A *probe* per head (the index's answers for a few stored vectors, recorded at build time) lets the
loader detect an index file that belongs to another model even when its checksum was updated.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import faiss
import numpy as np
import polars as pl

from tte_recsys.artifacts import atomic_path, write_manifest, write_parquet
from tte_recsys.serving.faiss_index import IndexConfig, build_index, exact_topk, measure, near_queries
from tte_recsys.vectors import SHARDS, JobSpec, write_shards

# only a type here: readers of a bundle (the retriever, the service) skip the model's imports
if TYPE_CHECKING:
    from tte_recsys.models.export import ExportedModel

__all__ = ["KIND", "PROBES", "build_bundle", "query_rows", "read_head_chunks", "write_vectors"]

log = logging.getLogger(__name__)
KIND = "faiss_bundle"
PROBES = 8
QUERY_RADIUS = 0.3  # ANN quality is measured with queries this far from their items (as bench/ann.py)
VECTORS = "vectors"
BIAS = "bias"


def write_vectors(
    model: ExportedModel,
    out: Path,
    shard_size: int,
    rank: int = 0,
    world_size: int = 1,
    batch_size: int = 4096,
) -> dict[str, int]:
    """Every item's per-head vectors as parquet shards under ``out/vectors`` (this rank's shards)."""
    spec = JobSpec("export", len(model.item_ids), shard_size, f"mtmh_export:{model.fingerprint}", "")

    def compute(start: int, end: int) -> pl.DataFrame:
        codes = np.arange(start, end)
        vecs = model.encode(codes, batch_size)
        cols: dict[str, Any] = {"item_idx": codes, "item_id": model.item_ids[start:end]}
        for h, v in vecs.items():
            cols[h] = pl.Series(v, dtype=pl.Array(pl.Float32, v.shape[1]))
        if model.item_bias is not None:
            cols[BIAS] = model.item_bias[start:end].astype(np.float32)
        return pl.DataFrame(cols)

    return write_shards(
        len(model.item_ids), out / VECTORS, spec, compute, rank, world_size, desc="item vectors"
    )


def read_head_chunks(
    bundle: Path, head: str, biased: bool = False
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(ids, vectors) per shard of one head, in item-code order; ``biased``: [v, bias] rows."""
    for part in sorted((bundle / VECTORS / SHARDS).glob("part-*.parquet")):
        df = pl.read_parquet(part, columns=["item_idx", head, *([BIAS] if biased else [])])
        v = df[head].to_numpy().astype(np.float32)
        if biased:
            v = np.concatenate([v, df[BIAS].to_numpy().astype(np.float32)[:, None]], axis=1)
        yield df["item_idx"].to_numpy().astype(np.int64), v


def query_rows(vectors: np.ndarray, biased: bool) -> np.ndarray:
    """(Q, D) unit query vectors as an index searches them: [q, 1] when the items carry a bias."""
    q = np.ascontiguousarray(vectors, dtype=np.float32)
    return np.concatenate([q, np.ones((len(q), 1), np.float32)], axis=1) if biased else q


def build_bundle(
    model: ExportedModel,
    out: Path,
    cfg: IndexConfig,
    recall_k: int = 100,
    eval_queries: int = 1000,
    titles: list[str] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Indexes, id table, item metadata and manifest from the vectors already in ``out/vectors``
    (rank 0 only). Returns the per-head summary (dims, index parameters, ANN recall, QPS)."""
    n = len(model.item_ids)
    ids = pl.DataFrame({"item_idx": np.arange(n, dtype=np.int64), "item_id": model.item_ids})
    write_parquet(out / "ids.parquet", ids)
    write_parquet(
        out / "items.parquet", pl.DataFrame({"item_id": model.item_ids, "title": titles or [""] * n})
    )
    rng = np.random.default_rng(0)
    biased = model.item_bias is not None
    heads: dict[str, Any] = {}
    for h in model.heads:
        chunks = lambda h=h: read_head_chunks(out, h, biased)  # noqa: E731 - a fresh iterator per pass
        dim = next(chunks())[1].shape[1]
        index, params = build_index(chunks, n, dim, cfg)
        with atomic_path(out / f"{h}.faiss") as tmp:
            faiss.write_index(index, str(tmp))
        sample = np.sort(rng.choice(n, size=min(eval_queries, n), replace=False))
        base = np.concatenate([v[np.isin(i, sample)] for i, v in chunks()])
        base = base[:, :-1] if biased else base  # the items' unit vectors
        q = query_rows(near_queries(base, QUERY_RADIUS, rng), biased)
        k = min(recall_k, n)
        _, exact = exact_topk(q, chunks, k)
        quality = measure(index, q, exact, k)
        probe_q = query_rows(base[:PROBES], biased)
        _, probe_ids = index.search(np.ascontiguousarray(probe_q), min(10, n))
        heads[h] = {
            "dim": int(dim),
            "count": int(index.ntotal),
            "index": params,
            "ann": quality,
            "probe": {"queries": probe_q.tolist(), "ids": probe_ids.tolist()},
        }
        log.info(
            "head %s: %s, %d x %d, recall@%d %.4f, %.0f QPS",
            h,
            params["kind"],
            n,
            dim,
            k,
            quality[f"recall@{k}"],
            quality["qps"],
        )
    write_manifest(
        out,
        KIND,
        {
            "model_export": model.fingerprint,
            "index_config": dataclasses.asdict(cfg),
            "heads": heads,
            "head_names": model.heads,
            "count": n,
            "item_bias": biased,
            "pop_prior": model.manifest.get("pop_prior", 0.0),
            "share": model.manifest.get("share", 1.0),
            **(extra or {}),
        },
    )
    return heads
