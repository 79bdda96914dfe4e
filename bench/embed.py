"""Batch item embedding: tte_recsys embed_items machinery vs sentence-transformers ``encode``.

Same model (all-MiniLM-L6-v2, packaged), same MovieLens item texts (title + genres, as
embed_items builds them), one process, 2 threads. Prints items/s, the ratio to the peer and
the cosine agreement with the peer's vectors, for fp32, fp32 + torch.compile (freezing) and
bf16 weights (a faster mode used only where the CPU has AMX or a GPU is present).

    python bench/embed.py [--items 9742]
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from tte_recsys.artifacts import write_manifest
from tte_recsys.data.adapters import MovieLensAdapter
from tte_recsys.serving.embed_job import JobSpec, embed_catalog, load_vectors
from tte_recsys.tte.embedder import build_embedder
from tte_recsys.tte.items import embedding_text, item_inputs
from tte_recsys.tte.models import cpu_has_fast_bf16, resolve_model_dir


def ours(items: list, mode: str, batch: int) -> tuple[float, np.ndarray, float]:
    """(items/s, vectors, one-off setup seconds) through embed_catalog into a temp folder."""
    t0 = time.perf_counter()
    emb = build_embedder(
        "minilm", dtype="bfloat16" if mode == "bf16" else "float32", compile=mode == "compiled"
    )
    emb.encode([embedding_text(it) for it in items[:256]], batch_size=batch)  # warm-up (and compile)
    setup = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as d:
        spec = JobSpec("movielens", len(items), 2048, f"minilm|{mode}", "none")
        t = time.perf_counter()
        embed_catalog(items, emb, Path(d), spec, batch_size=batch)
        secs = time.perf_counter() - t
        write_manifest(d, "embed_items", {"model_id": spec.model_id, "trace_version": "none"})
        vecs = load_vectors(d).vectors
    return len(items) / secs, vecs, setup


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=None, help="first N MovieLens items (default: all 9,742)")
    ap.add_argument("--batch", type=int, default=64)
    a = ap.parse_args()
    torch.set_num_threads(2)
    from sentence_transformers import SentenceTransformer

    ds = MovieLensAdapter().load()
    items = item_inputs(ds, ["title", "genres"])[: a.items]
    texts = [embedding_text(it) for it in items]
    st = SentenceTransformer(str(resolve_model_dir("minilm")), device="cpu")
    st.encode(texts[:256], batch_size=a.batch)
    rows = {}
    for name, bs in (
        ("sentence-transformers (batch 32, its default)", 32),
        (f"sentence-transformers (batch {a.batch})", a.batch),
    ):
        t = time.perf_counter()
        ref = st.encode(texts, batch_size=bs, normalize_embeddings=True, convert_to_numpy=True)
        rows[name] = (len(texts) / (time.perf_counter() - t), None, 0.0)
    peer = rows[f"sentence-transformers (batch {a.batch})"][0]
    modes = ["fp32", "compiled", "onnx"] + (
        ["bf16"] if cpu_has_fast_bf16() or torch.cuda.is_available() else []
    )
    print(
        f"embedding {len(texts):,} MovieLens item texts with all-MiniLM-L6-v2 on {platform.machine()}, "
        f"torch {torch.__version__}, 2 threads; native bf16: {cpu_has_fast_bf16()}"
    )
    print(f"{'method':52} {'items/s':>9} {'vs ST':>7} {'min cos':>9} {'mean cos':>9} {'setup s':>8}")
    for name, (ips, _, _) in rows.items():
        print(f"{name:52} {ips:9.1f} {ips / peer:7.2f} {'-':>9} {'-':>9} {'-':>8}")
    for mode in modes:
        ips, vecs, setup = ours(items, mode, a.batch)
        cos = (vecs * ref).sum(1)
        print(
            f"{'tte_recsys embed_items (' + mode + ')':52} {ips:9.1f} {ips / peer:7.2f} {cos.min():9.6f} "
            f"{cos.mean():9.6f} {setup:8.1f}"
        )
    print("targets: fp32 ratio >= 1.3 at cosine >= 0.9999; a faster mode >= 2x at cosine >= 0.99")


if __name__ == "__main__":
    main()
