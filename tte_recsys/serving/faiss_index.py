"""FAISS indexes for one head's unit vectors: choice by size, bounded-memory build, exact reference.

Inner product on L2-normalised vectors (the metric the model trained with). Below
``exact_below`` items the index is exact (``IndexFlatIP``); above it HNSW, IVF-Flat or IVF-PQ
(``large``), trained on a sample and filled chunk by chunk, so only one chunk of vectors is in
memory besides the index itself. Ids in the index are the 64-bit item codes. A GPU is used
for flat and IVF indexes when faiss sees one (``use_gpu``), and the index is moved back to the
CPU to be saved.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import faiss
import numpy as np

__all__ = ["IndexConfig", "build_index", "exact_topk", "measure", "near_queries", "set_search_params"]

KINDS = ("auto", "flat", "hnsw", "ivf_flat", "ivf_pq")
Chunks = Callable[[], Iterator[tuple[np.ndarray, np.ndarray]]]  # a fresh iterator of (ids, vectors) chunks


@dataclass(frozen=True)
class IndexConfig:
    """How each head's index is built and searched.

    Attributes:
        kind: ``auto`` (flat below ``exact_below`` items, else ``large``), or one of flat, hnsw,
            ivf_flat, ivf_pq.
        large: the kind ``auto`` picks for big catalogs (IVF-Flat: measured faster than HNSW and
            hnswlib at equal recall on clustered embeddings, see bench/ann.py).
        hnsw_m, ef_construction, ef_search: HNSW graph degree and beam widths.
        nlist: IVF lists (None: 4 sqrt(N), at least 1). nprobe: lists searched.
        pq_m, pq_bits: IVF-PQ sub-quantisers (must divide the dim) and bits per code.
        train_sample: vectors used to train IVF quantisers. add_chunk: vectors added per call.
        use_gpu: ``auto`` (when faiss sees a GPU) or ``never``.
    """

    kind: str = "auto"
    exact_below: int = 100_000
    large: str = "ivf_flat"
    hnsw_m: int = 32
    ef_construction: int = 128
    ef_search: int = 128
    nlist: int | None = None
    nprobe: int = 32
    pq_m: int = 16
    pq_bits: int = 8
    train_sample: int = 100_000
    add_chunk: int = 100_000
    use_gpu: str = "auto"

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"index.kind={self.kind!r}: expected one of {list(KINDS)}")
        if self.large not in KINDS[1:]:
            raise ValueError(f"index.large={self.large!r}: expected one of {list(KINDS[1:])}")
        if self.use_gpu not in ("auto", "never"):
            raise ValueError(f"index.use_gpu={self.use_gpu!r}: expected auto or never")

    def resolve(self, n: int) -> str:
        if self.kind != "auto":
            return self.kind
        return "flat" if n < self.exact_below else self.large


def _sample(chunks: Chunks, n: int, size: int, seed: int = 0) -> np.ndarray:
    """A uniform sample of ``size`` vectors, read chunk by chunk."""
    keep = np.sort(np.random.default_rng(seed).choice(n, size=min(size, n), replace=False))
    out, seen = [], 0
    for _, vecs in chunks():
        sel = keep[(keep >= seen) & (keep < seen + len(vecs))] - seen
        out.append(vecs[sel])
        seen += len(vecs)
    return np.ascontiguousarray(np.concatenate(out), dtype=np.float32)


def set_search_params(index: faiss.Index, cfg: IndexConfig) -> None:
    """Apply efSearch / nprobe to an index (through an IndexIDMap wrapper)."""
    inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap) else index
    if isinstance(inner, faiss.IndexHNSW):
        inner.hnsw.efSearch = cfg.ef_search
    ivf = faiss.try_extract_index_ivf(inner)
    if ivf is not None:
        ivf.nprobe = cfg.nprobe


def build_index(chunks: Chunks, n: int, dim: int, cfg: IndexConfig) -> tuple[faiss.Index, dict[str, Any]]:
    """Build an inner-product index over ``n`` vectors delivered by ``chunks``.

    Returns:
        (index on the CPU, the parameters used: kind, nlist, ... for the manifest).
    """
    kind = cfg.resolve(n)
    params: dict[str, Any] = {"kind": kind, "metric": "inner_product"}
    ip = faiss.METRIC_INNER_PRODUCT
    if kind == "flat":
        index: faiss.Index = faiss.IndexIDMap(faiss.IndexFlatIP(dim))
    elif kind == "hnsw":
        hnsw = faiss.IndexHNSWFlat(dim, cfg.hnsw_m, ip)
        hnsw.hnsw.efConstruction = cfg.ef_construction
        index = faiss.IndexIDMap(hnsw)
        params.update(M=cfg.hnsw_m, efConstruction=cfg.ef_construction, efSearch=cfg.ef_search)
    else:
        nlist = cfg.nlist or max(1, int(4 * math.sqrt(n)))
        nlist = min(nlist, n)
        quantizer = faiss.IndexFlatIP(dim)
        if kind == "ivf_flat":
            index = faiss.IndexIVFFlat(quantizer, dim, nlist, ip)
        else:
            if dim % cfg.pq_m:
                raise ValueError(f"index.pq_m={cfg.pq_m} must divide the head dim {dim}")
            index = faiss.IndexIVFPQ(quantizer, dim, nlist, cfg.pq_m, cfg.pq_bits, ip)
            params.update(pq_m=cfg.pq_m, pq_bits=cfg.pq_bits)
        params.update(nlist=nlist, nprobe=cfg.nprobe)
    gpu = cfg.use_gpu == "auto" and kind != "hnsw" and faiss.get_num_gpus() > 0
    if gpu:
        index = faiss.index_cpu_to_all_gpus(index)
    params["built_on"] = "gpu" if gpu else "cpu"
    if not index.is_trained:
        t0 = time.perf_counter()
        index.train(_sample(chunks, n, max(cfg.train_sample, 40 * params.get("nlist", 1))))
        params["train_seconds"] = round(time.perf_counter() - t0, 3)
    added = 0
    for ids, vecs in chunks():
        for s in range(0, len(ids), cfg.add_chunk):
            v = np.ascontiguousarray(vecs[s : s + cfg.add_chunk], dtype=np.float32)
            index.add_with_ids(v, np.ascontiguousarray(ids[s : s + cfg.add_chunk], dtype=np.int64))
            added += len(v)
    if added != n:
        raise ValueError(f"expected {n} vectors, the chunks delivered {added}")
    if gpu:
        index = faiss.index_gpu_to_cpu(index)
    set_search_params(index, cfg)
    return index, params


def near_queries(base: np.ndarray, radius: float, rng: np.random.Generator) -> np.ndarray:
    """Queries near but not on the (Q, D) unit vectors ``base``: each moved by a random direction
    of norm ``radius`` and renormalised (0.3: cosine about 0.96 to its item, whatever the dim)."""
    step = rng.normal(size=base.shape).astype(np.float32)
    step *= radius / np.linalg.norm(step, axis=1, keepdims=True)
    q = base + step
    return np.ascontiguousarray(q / np.linalg.norm(q, axis=1, keepdims=True), dtype=np.float32)


def exact_topk(queries: np.ndarray, chunks: Chunks, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product top-k of ``queries`` (Q, D) over all chunks, one chunk in memory at a time.

    Returns:
        (Q, k) scores and (Q, k) ids, best first.
    """
    q = np.ascontiguousarray(queries, dtype=np.float32)
    best_s = np.full((len(q), 0), -np.inf, dtype=np.float32)
    best_i = np.zeros((len(q), 0), dtype=np.int64)
    for ids, vecs in chunks():
        s = q @ np.ascontiguousarray(vecs, dtype=np.float32).T  # (Q, c)
        all_s = np.concatenate([best_s, s], axis=1)
        all_i = np.concatenate([best_i, np.broadcast_to(ids, s.shape)], axis=1)
        top = np.argsort(-all_s, axis=1, kind="stable")[:, :k]
        best_s, best_i = np.take_along_axis(all_s, top, 1), np.take_along_axis(all_i, top, 1)
    return best_s, best_i


def measure(index: faiss.Index, queries: np.ndarray, exact_ids: np.ndarray, k: int) -> dict[str, float]:
    """ANN recall@k against exact ids, and queries per second of one batched search."""
    q = np.ascontiguousarray(queries, dtype=np.float32)
    t0 = time.perf_counter()
    _, ids = index.search(q, k)
    qps = len(q) / max(time.perf_counter() - t0, 1e-9)
    hits = [len(set(a.tolist()) & set(b.tolist())) for a, b in zip(ids, exact_ids[:, :k], strict=True)]
    return {f"recall@{k}": float(np.mean(hits) / k), "qps": float(qps), "queries": float(len(q))}
