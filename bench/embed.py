"""Batch item embedding: tte_recsys embed_items machinery vs sentence-transformers ``encode``.

Same model (all-MiniLM-L6-v2, packaged, or ``--model DIR``), same MovieLens item texts (title +
genres, as embed_items builds them), 2 threads, each method in its own process (a runtime's thread
pool must not compete with another's left spinning in the same process). Prints items/s, the ratio
to the peer and the cosine agreement with the peer's vectors, for fp32, fp32 + torch.compile
(freezing), ONNX Runtime and bf16 weights (a faster mode used only where the CPU has native bf16 or
a GPU is present). On a GPU both sides run there (``device=auto``); the CPU-only modes (compile,
ONNX) are left out and the peer also runs in bf16, the like-for-like reference for ours.

    python bench/embed.py [--items 9742] [--rounds 3] [--batch 64] [--model minilm]
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from tte_recsys.artifacts import write_manifest
from tte_recsys.data.adapters import MovieLensAdapter
from tte_recsys.serving.embed_job import embed_catalog
from tte_recsys.tte.factory import build_embedder
from tte_recsys.tte.items import embedding_text, item_inputs
from tte_recsys.tte.models import cpu_has_fast_bf16, resolve_model_dir
from tte_recsys.vectors import JobSpec, load_vectors

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # build_embedder's device=auto picks the same


def ours(items: list, mode: str, batch: int, model: str) -> tuple[float, np.ndarray, float]:
    """(items/s, vectors, one-off setup seconds) through embed_catalog into a temp folder."""
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        emb = build_embedder(
            model,
            dtype="bfloat16" if mode == "bf16" else "float32",
            compile=mode == "compiled",
            runtime="onnx" if mode == "onnx" else "torch",
            onnx_cache_dir=str(Path(d) / "onnx"),  # exported fresh: counted in setup
        )
        emb.encode([embedding_text(it) for it in items[:256]], batch_size=batch)  # warm-up (and compile)
        setup = time.perf_counter() - t0
        out = Path(d) / "vectors"
        spec = JobSpec("movielens", len(items), 2048, f"minilm|{mode}", "none")
        t = time.perf_counter()
        embed_catalog(items, emb, out, spec, batch_size=batch)
        secs = time.perf_counter() - t
        write_manifest(out, "embed_items", {"model_id": spec.model_id, "trace_version": "none"})
        vecs = load_vectors(out).vectors
    return len(items) / secs, vecs, setup


def child(method: str, n_items: int | None, batch: int, ref_path: str, model: str, repeat: int) -> None:
    """Time one method in this (fresh) process; print a JSON line."""
    torch.set_num_threads(2)
    items = item_inputs(MovieLensAdapter().load(), ["title", "genres"])[:n_items]
    items = [replace(it, item_id=f"{it.item_id}#{r}") for r in range(repeat) for it in items]
    texts = [embedding_text(it) for it in items]
    if method.startswith("st"):
        from sentence_transformers import SentenceTransformer

        bf16 = method.endswith("-bf16")
        bs = int(method[2:].removesuffix("-bf16"))
        st = SentenceTransformer(str(resolve_model_dir(model)), device=DEVICE)
        if bf16:
            st = st.to(torch.bfloat16)
        st.encode(texts[:256], batch_size=bs)
        t = time.perf_counter()
        vecs = st.encode(texts, batch_size=bs, normalize_embeddings=True, convert_to_numpy=True)
        ips, setup = len(texts) / (time.perf_counter() - t), 0.0
        if bs == batch and not bf16:
            np.save(ref_path, vecs)
    else:
        ips, vecs, setup = ours(items, method, batch, model)
    ref = np.load(ref_path)
    cos = (vecs * ref).sum(1)
    print(
        json.dumps({"ips": ips, "min_cos": float(cos.min()), "mean_cos": float(cos.mean()), "setup": setup})
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=None, help="first N MovieLens items (default: all 9,742)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="the catalog R times (a GPU needs more than 9,742 items to reach steady state)",
    )
    ap.add_argument("--rounds", type=int, default=3, help="every method once per round, interleaved")
    ap.add_argument("--child", default=None)
    ap.add_argument("--ref", default=None)
    ap.add_argument(
        "--model", default="minilm", help="a local sentence-transformers folder (default: packaged MiniLM)"
    )
    a = ap.parse_args()
    if a.child:
        child(a.child, a.items, a.batch, a.ref, a.model, a.repeat)
        return
    gpu = DEVICE == "cuda"
    modes = (["fp32"] if gpu else ["fp32", "compiled", "onnx"]) + (
        ["bf16"] if cpu_has_fast_bf16() or gpu else []
    )
    names = {f"st{a.batch}": f"sentence-transformers (batch {a.batch})"}
    if gpu:  # its bf16 mode is the like-for-like peer of ours
        names[f"st{a.batch}-bf16"] = f"sentence-transformers bf16 (batch {a.batch})"
    else:
        names["st32"] = "sentence-transformers (batch 32, its default)"
    names.update({m: f"tte_recsys embed_items ({m})" for m in modes})
    runs: dict[str, list[dict]] = {m: [] for m in names}
    with tempfile.TemporaryDirectory() as d:
        for rnd in range(a.rounds):
            ref = str(Path(d) / f"ref{rnd}.npy")
            for method in names:  # the peer at our batch size first: it writes the reference vectors
                cmd = [sys.executable, __file__, "--child", method, "--batch", str(a.batch), "--ref", ref]
                cmd += ["--model", a.model, "--repeat", str(a.repeat)]
                if a.items:
                    cmd += ["--items", str(a.items)]
                r = subprocess.run(cmd, capture_output=True, text=True, check=True)
                runs[method].append(json.loads(r.stdout.strip().splitlines()[-1]))
                print(f"round {rnd} {method}: {runs[method][-1]}", file=sys.stderr, flush=True)
    peer = f"st{a.batch}"
    where = torch.cuda.get_device_name() if gpu else f"{platform.machine()}, 2 threads"
    print(
        f"embedding {(a.items or 9742) * a.repeat:,} MovieLens item texts ({a.repeat}x the catalog) with {a.model} on {where}, "
        f"torch {torch.__version__}, each method in its own process, {a.rounds} interleaved rounds; "
        f"native CPU bf16: {cpu_has_fast_bf16()}"
    )
    print("items/s: best round; vs ST: median over rounds of (method / ST batch 64 in the same round)")
    print(f"{'method':52} {'items/s':>9} {'vs ST':>7} {'min cos':>9} {'mean cos':>9} {'setup s':>8}  rounds")
    for method, name in names.items():
        rs = runs[method]
        ratios = [r["ips"] / p["ips"] for r, p in zip(rs, runs[peer], strict=True)]
        print(
            f"{name:52} {max(r['ips'] for r in rs):9.1f} {float(np.median(ratios)):7.2f} "
            f"{min(r['min_cos'] for r in rs):9.6f} {float(np.mean([r['mean_cos'] for r in rs])):9.6f} "
            f"{max(r['setup'] for r in rs):8.1f}  {' '.join(f'{r:.2f}' for r in ratios)}"
        )
    if gpu:
        peer16 = runs[f"st{a.batch}-bf16"]
        r16 = [r["ips"] / p["ips"] for r, p in zip(runs["bf16"], peer16, strict=True)]
        print(f"ours bf16 / sentence-transformers bf16: median {float(np.median(r16)):.2f}")
    print("targets: fp32 ratio >= 1.3 at cosine >= 0.9999; a faster mode >= 2x at cosine >= 0.99")


if __name__ == "__main__":
    main()
