"""ANN serving benchmark: exact IndexFlatIP vs our chosen index (tte_recsys.serving.faiss_index) vs
hnswlib, on 1M synthetic unit vectors x 64 dims with cluster structure (a Gaussian mixture, like
real embeddings), on pure noise (the worst case for every ANN index), and on the real trained
MovieLens item vectors. Queries lie near items, not on them. Prints QPS, recall@100 against exact
search, build time and peak RSS, all in one run.

    pip install hnswlib==0.8.0    # or: pip install -e ".[bench]"
    python bench/ann.py [--n 1000000] [--queries 1000] [--bundle-model outputs/final/movielens]
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import platform
import resource
import time
from pathlib import Path

import faiss
import numpy as np

from tte_recsys.serving.faiss_index import IndexConfig, build_index, measure, near_queries, set_search_params

K = 100


def rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # Linux: KiB -> GB


def unit(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x / np.linalg.norm(x, axis=1, keepdims=True), dtype=np.float32)


def gaussian_mixture(n: int, d: int, clusters: int, spread: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(clusters, d)).astype(np.float32)
    out = np.empty((n, d), dtype=np.float32)
    for s in range(0, n, 200_000):  # bounded temporaries
        e = min(s + 200_000, n)
        lab = rng.integers(0, clusters, e - s)
        out[s:e] = centers[lab] + spread * rng.normal(size=(e - s, d)).astype(np.float32)
    return unit(out)


def near(x: np.ndarray, q: int, radius: float, seed: int) -> np.ndarray:
    """``q`` queries near random items: item + a random direction of norm ``radius``, renormalised
    (radius 0.3: cosine about 0.96 to the item it came from, whatever the dim)."""
    rng = np.random.default_rng(seed)
    return near_queries(x[rng.choice(len(x), q, replace=False)], radius, rng)


def chunks_of(x: np.ndarray):  # type: ignore[no-untyped-def]
    return lambda: (
        (np.arange(s, min(s + 100_000, len(x))), x[s : s + 100_000]) for s in range(0, len(x), 100_000)
    )


def hnswlib_qps_at(points: list[tuple[float, float, int]], recall: float) -> float | None:
    """hnswlib's QPS at ``recall``: linear between the two ef points that bracket it."""
    pts = sorted(points)
    for (r0, q0, _), (r1, q1, _) in itertools.pairwise(pts):
        if r0 <= recall <= r1:
            return q0 if r1 == r0 else q0 + (q1 - q0) * (recall - r0) / (r1 - r0)
    return None


def run_set(name: str, x: np.ndarray, q: np.ndarray, with_hnswlib: bool, kind: str = "auto") -> None:
    n, d = x.shape
    print(f"\n### {name}: {n:,} x {d}, {len(q)} queries near items")
    flat = faiss.IndexFlatIP(d)
    flat.add(x)
    t0 = time.perf_counter()
    _, exact = flat.search(q, K)
    exact_qps = len(q) / (time.perf_counter() - t0)
    rows = [("exact IndexFlatIP", "-", 1.0, exact_qps, rss_gb())]
    del flat

    # Ours: the export's default kind for this size first (auto: IVF-Flat above 100k items), then
    # HNSW for reference; each over its search-width grid. "chosen" = the export's default
    # configuration (kind and search width), not the best point of the grid.
    default_kind = IndexConfig(kind=kind).resolve(n)
    chosen = None
    for k in dict.fromkeys([default_kind, "hnsw"]):
        cfg = IndexConfig(kind=k)
        t0 = time.perf_counter()
        index, params = build_index(chunks_of(x), n, d, cfg)
        build = time.perf_counter() - t0
        grid = {"hnsw": (32, 64, 128, 256), "ivf_flat": (4, 8, 16, 32, 64)}.get(k, (0,))
        for width in grid:
            c = dataclasses.replace(cfg, ef_search=width or cfg.ef_search, nprobe=width or cfg.nprobe)
            set_search_params(index, c)
            m = measure(index, q, exact, K)
            if k == "hnsw":
                label = f"HNSW (M={cfg.hnsw_m}, efC={cfg.ef_construction}) ef={width}"
            elif k == "ivf_flat":
                label = f"IVF{params['nlist']},Flat nprobe={width}"
            else:
                label = k
            default_width = {"hnsw": cfg.ef_search, "ivf_flat": cfg.nprobe}.get(k, 0)
            label += " (export default)" if k == default_kind and width == default_width else ""
            rows.append((f"tte_recsys {label}", f"{build:.1f}", m[f"recall@{K}"], m["qps"], rss_gb()))
            if k == default_kind and width == default_width:  # what export_faiss would serve
                chosen = (label, m[f"recall@{K}"], m["qps"])
        del index

    hnsw_points: list[tuple[float, float, int]] = []  # (recall, qps, ef)
    if with_hnswlib:
        import hnswlib

        t0 = time.perf_counter()
        h = hnswlib.Index(space="ip", dim=d)
        h.init_index(max_elements=n, M=16, ef_construction=200)
        h.add_items(x, np.arange(n), num_threads=-1)
        hbuild = time.perf_counter() - t0
        for ef in (100, 128, 256, 512):  # hnswlib needs ef >= k
            h.set_ef(ef)
            t0 = time.perf_counter()
            labels, _ = h.knn_query(q, k=K, num_threads=-1)
            qps = len(q) / (time.perf_counter() - t0)
            rec = float(
                np.mean([len(set(a.tolist()) & set(b.tolist())) for a, b in zip(labels, exact, strict=True)])
                / K
            )
            rows.append((f"hnswlib (M=16, efC=200) ef={ef}", f"{hbuild:.1f}", rec, qps, rss_gb()))
            hnsw_points.append((rec, qps, ef))
        del h

    print("\n| index | build s | recall@100 | QPS | peak RSS GB |\n|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]:.4f} | {r[3]:,.0f} | {r[4]:.2f} |")
    if chosen is not None:
        ratio = chosen[2] / exact_qps
        print(
            f"\nchosen: {chosen[0]} recall@100 {chosen[1]:.4f} at {chosen[2]:,.0f} QPS = {ratio:.1f}x exact"
        )
        print("  (target: recall@100 >= 0.95 at >= 10x exact QPS)")
        qps_at = hnswlib_qps_at(hnsw_points, chosen[1])
        if qps_at is not None:
            print(f"hnswlib at the same recall (interpolated between its ef points): {qps_at:,.0f} QPS")
            print(f"ours / hnswlib = {chosen[2] / qps_at:.2f}x (target >= 1)")
        elif with_hnswlib:
            print("hnswlib's ef grid does not bracket the chosen recall")
    else:
        print("\nthe export default was not measured")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument(
        "--bundle-model", default="outputs/final/movielens", help="a train_i2i run: its export's item vectors"
    )
    ap.add_argument("--skip-noise", action="store_true")
    ap.add_argument("--query-radius", type=float, default=0.3, help="distance of a query from its item")
    args = ap.parse_args()
    print(
        f"faiss {faiss.__version__}, threads {faiss.omp_get_max_threads()}, {platform.processor() or platform.machine()}"
    )
    t0 = time.perf_counter()
    x = gaussian_mixture(args.n, args.dim, clusters=max(args.n // 1000, 10), spread=0.35, seed=0)
    print(f"generated clustered set in {time.perf_counter() - t0:.1f} s")
    run_set(
        "Gaussian mixture (1 cluster per 1,000 items)",
        x,
        near(x, args.queries, args.query_radius, 1),
        with_hnswlib=True,
    )
    del x
    if not args.skip_noise:
        noise = unit(np.random.default_rng(2).normal(size=(args.n, args.dim)).astype(np.float32))
        run_set(
            "pure noise (worst case)",
            noise,
            near(noise, args.queries, args.query_radius, 3),
            with_hnswlib=True,
        )
        del noise
    export = Path(args.bundle_model) / "export"
    if (export / "manifest.json").is_file():
        from tte_recsys.models.export import load_export

        m = load_export(export)
        for head, v in m.encode().items():
            run_set(
                f"MovieLens trained item vectors, head {head}",
                v,
                near(v, min(args.queries, len(v) // 2), args.query_radius, 4),
                with_hnswlib=True,
                kind="hnsw",
            )
    else:
        print(f"\n(no trained export at {export}: run `make run` first for the real-vector rows)")


if __name__ == "__main__":
    main()
