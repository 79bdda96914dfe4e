"""The retrieval service under load against the in-process BundleRetriever, in one run, on loopback
only, stopping by itself (docs/benchmarks.md and docs/serving.md, "Measured").

The bundle: --n items (default 1M) with random clustered unit vectors, two heads of --dim dims
(bench/ann.py's Gaussian mixture; IVF-Flat, export_faiss's default at that size), written by the
export code itself (write_vectors, build_bundle) into --bundle-dir, kept and reused while it
verifies. The service: ``python -m pipelines.serve`` as a user starts it, in a subprocess. Each
workload runs --seconds in this process (BundleRetriever.search from N threads) and --seconds
through HTTP at the same concurrency, in --rounds alternating slices:

- single ids (GET /v1/similar/{id}?k=10, ids uniform at random) at concurrency 1, 8 and 32;
- 64-id batches (POST /v1/similar, k=10) at concurrency 1 and 2;
- the cache decision: single ids drawn Zipf(1.1) at concurrency 8, through a server with
  service.cache_mb=0 and through the server as configured by default (with its answer cache),
  the hit rate read from /metrics. The workloads above go through the server without the cache,
  so that both sides do the same work;
- a --soak run (default 60 s) at concurrency 32 on the default server: failures, and the
  server's RSS every second (and its cache's bytes at the end).

The load generator is a minimal HTTP/1.1 keep-alive client on asyncio (one connection per unit of
concurrency, closed loop, no think time), lighter per request than httpx; it shares the machine's
cores with the server. Prints the CPU, the load average, the table, the ratios and the targets.

    python bench/serve.py [--n 1000000] [--seconds 10] [--rounds 5] [--soak 60] [--bundle-dir /tmp/tte_serve_bench]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import faiss
import numpy as np
import psutil
from ann import gaussian_mixture
from machine import cpu_name

from tte_recsys.artifacts import ManifestError, atomic_dir, read_manifest
from tte_recsys.serving.bundle import KIND, build_bundle, write_vectors
from tte_recsys.serving.faiss_index import IndexConfig
from tte_recsys.serving.retriever import BundleRetriever

ROOT = Path(__file__).resolve().parents[1]
K = 10
BATCH = 64


class RandomModel:
    """What write_vectors and build_bundle read from an ExportedModel: ids, heads, per-head vectors."""

    def __init__(self, n: int, dim: int, seed: int = 0) -> None:
        self.item_ids = [str(i) for i in range(n)]
        self.heads = ["coeng", "semantic"]
        clusters = max(n // 1000, 10)
        self._v = {
            h: gaussian_mixture(n, dim, clusters=clusters, spread=0.35, seed=seed + j)
            for j, h in enumerate(self.heads)
        }
        self.item_bias = None
        self.manifest = {"share": 0.5}
        self.fingerprint = f"random {n} x {dim}, seed {seed}"

    def encode(self, codes: np.ndarray, batch_size: int = 4096) -> dict[str, np.ndarray]:
        return {h: v[codes] for h, v in self._v.items()}


def ensure_bundle(path: Path, n: int, dim: int) -> None:
    try:
        if read_manifest(path, kind=KIND)["count"] == n:
            print(f"reusing the bundle in {path}")
            return
    except ManifestError:
        pass
    t0 = time.perf_counter()
    model = RandomModel(n, dim)
    with atomic_dir(path) as tmp:
        write_vectors(model, tmp, shard_size=65536)  # type: ignore[arg-type]
        build_bundle(model, tmp, IndexConfig(), titles=[f"item {i}" for i in range(n)])  # type: ignore[arg-type]
    print(f"built the bundle in {path} in {time.perf_counter() - t0:.0f} s")


@dataclass
class Result:
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    @property
    def qps(self) -> float:
        return len(self.latencies) / self.seconds

    def ms(self, q: float) -> float:
        return float(np.percentile(self.latencies, q) * 1e3)

    def add(self, other: Result) -> Result:
        self.seconds += other.seconds
        self.latencies += other.latencies
        self.failures += other.failures
        return self


def in_process(
    work: Callable[[random.Random], object], concurrency: int, seconds: float, faiss_threads: int
) -> Result:
    """``work`` from ``concurrency`` threads, back to back, for ``seconds``."""
    per: list[list[float]] = [[] for _ in range(concurrency)]
    stop_at = time.perf_counter() + seconds

    def worker(i: int) -> None:
        faiss.omp_set_num_threads(faiss_threads)  # OpenMP's setting is per calling thread
        rng = random.Random(i)
        while time.perf_counter() < stop_at:
            t0 = time.perf_counter()
            work(rng)
            per[i].append(time.perf_counter() - t0)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return Result(time.perf_counter() - t0, [x for p in per for x in p])


async def _load(
    host: str, port: int, request: Callable[[random.Random], bytes], concurrency: int, seconds: float
) -> Result:
    out = Result()
    stop_at = time.perf_counter() + seconds

    async def connection(i: int) -> None:
        rng = random.Random(1000 + i)
        reader, writer = await asyncio.open_connection(host, port)
        while time.perf_counter() < stop_at:
            t0 = time.perf_counter()
            try:
                writer.write(request(rng))
                head = await reader.readuntil(b"\r\n\r\n")
                m = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
                body = await reader.readexactly(int(m.group(1)) if m else 0)
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as e:
                out.failures.append(repr(e))
                writer.close()
                reader, writer = await asyncio.open_connection(host, port)
                continue
            out.latencies.append(time.perf_counter() - t0)
            if head[9:12] != b"200":
                out.failures.append(f"{head[:12]!r} {body[:200]!r}")
        writer.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(connection(i) for i in range(concurrency)))
    out.seconds = time.perf_counter() - t0
    return out


def http(
    url: tuple[str, int], request: Callable[[random.Random], bytes], concurrency: int, seconds: float
) -> Result:
    try:
        import uvloop

        factory = uvloop.new_event_loop
    except ImportError:
        factory = asyncio.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(_load(*url, request, concurrency, seconds))


class Server:
    """``python -m pipelines.serve`` in a subprocess on a free loopback port."""

    def __init__(self, bundle: Path, *args: str) -> None:
        cmd = [sys.executable, "-m", "pipelines.serve", f"bundle_dir={bundle}", "port=0", *args]
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(
            cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        m = re.search(r"http://([\d.]+):(\d+)", line)
        if not m:
            raise SystemExit(f"the server did not start: {line!r}")
        self.url = (m.group(1), int(m.group(2)))
        self.ps = psutil.Process(self.proc.pid)
        print(
            f"server {' '.join(args) or '(defaults)'}: up in {time.perf_counter() - t0:.1f} s, {line.strip()}"
        )

    def rss_mb(self) -> float:
        return float(self.ps.memory_info().rss / 2**20)

    def metric(self, name: str) -> float:
        import urllib.request

        with urllib.request.urlopen(f"http://{self.url[0]}:{self.url[1]}/metrics") as r:
            text = r.read().decode()
        return sum(float(v) for v in re.findall(rf"^{re.escape(name)} (\S+)$", text, re.M))

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=120)


def load_average() -> str:
    return "load average " + " ".join(f"{x:.1f}" for x in os.getloadavg())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=10.0, help="each workload, in process and through HTTP")
    ap.add_argument("--soak", type=float, default=60.0, help="the saturation run watching RSS and failures")
    ap.add_argument("--rounds", type=int, default=5, help="alternating slices per compared pair")
    ap.add_argument("--bundle-dir", default="/tmp/tte_serve_bench")
    ap.add_argument(
        "--faiss-threads", type=int, default=1, help="OpenMP threads per search, here and in the servers"
    )
    a = ap.parse_args()
    print(
        f"# bench/serve.py on {cpu_name()}, {os.cpu_count()} cores, faiss {faiss.__version__} "
        f"with {a.faiss_threads} thread(s) per search (service.faiss_threads)"
    )
    print(f"# {load_average()} (other work on this machine shares its cores)")
    bundle = Path(a.bundle_dir)
    ensure_bundle(bundle, a.n, a.dim)  # the build on every core, the searches below on --faiss-threads
    faiss.omp_set_num_threads(a.faiss_threads)
    t0 = time.perf_counter()
    r = BundleRetriever.load(bundle)
    print(f"in-process BundleRetriever.load: {time.perf_counter() - t0:.1f} s; {r.describe()}")
    ids = r.item_ids
    host = "127.0.0.1"

    def one_id(rng: random.Random) -> str:
        return ids[rng.randrange(len(ids))]

    def get(rng: random.Random) -> bytes:
        return f"GET /v1/similar/{one_id(rng)}?k={K} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()

    def post(rng: random.Random) -> bytes:
        body = json.dumps({"item_ids": [one_id(rng) for _ in range(BATCH)], "k": K}).encode()
        head = f"POST /v1/similar HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        return head.encode() + f"Content-Length: {len(body)}\r\n\r\n".encode() + body

    zipf = np.random.default_rng(7).zipf(1.1, size=2_000_000) - 1
    zipf = zipf[zipf < len(ids)]

    def get_zipf(rng: random.Random) -> bytes:
        item = ids[int(zipf[rng.randrange(len(zipf))])]
        return f"GET /v1/similar/{item}?k={K} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()

    for _ in range(200):  # warm the in-process caches and faiss's threads
        r.search([one_id(random.Random(0))], K)
    threads = f"service.faiss_threads={a.faiss_threads}"
    server = Server(bundle, threads, "service.cache_mb=0")
    http(server.url, get, 4, 2.0)  # warm up the server
    workloads = [
        (f"single id, concurrency {c}", c, lambda g: r.search([one_id(g)], K), get) for c in (1, 8, 32)
    ] + [
        (
            f"{BATCH}-id batch, concurrency {c}",
            c,
            lambda g: r.search([one_id(g) for _ in range(BATCH)], K),
            post,
        )
        for c in (1, 2)
    ]
    # Each pair is measured in --rounds alternating slices (in process, HTTP, in process, ...), so
    # that the other work on a shared machine weighs on both sides alike.
    part = a.seconds / a.rounds
    rows = []
    for name, c, work, request in workloads:
        mine, served = Result(), Result()
        for _ in range(a.rounds):
            mine.add(in_process(work, c, part, a.faiss_threads))
            served.add(http(server.url, request, c, part))
        rows.append((name, mine, served))
        print(
            f"  {name}: in process {mine.qps:,.0f}/s, HTTP {served.qps:,.0f}/s ({load_average()})", flush=True
        )

    cached_server = Server(bundle, threads)  # the default configuration: with the answer cache
    rss_idle = cached_server.rss_mb()
    http(cached_server.url, get, 4, 2.0)
    uniform_hits = cached_server.metric('tte_cache_total{result="hit"}')
    uniform_all = uniform_hits + cached_server.metric('tte_cache_total{result="miss"}')
    hits0 = cached_server.metric('tte_cache_total{result="hit"}')
    misses0 = cached_server.metric('tte_cache_total{result="miss"}')
    uncached, cached = Result(), Result()
    for _ in range(a.rounds):
        uncached.add(http(server.url, get_zipf, 8, part))
        cached.add(http(cached_server.url, get_zipf, 8, part))
    hits = cached_server.metric('tte_cache_total{result="hit"}') - hits0
    misses = cached_server.metric('tte_cache_total{result="miss"}') - misses0
    uncached_code = server.stop()
    server = cached_server

    # the saturation run: the default configuration, concurrency 32, RSS every second
    rss: list[float] = []
    cache: list[float] = []  # the answer cache's bytes (bounded by service.cache_mb), same seconds
    done = threading.Event()

    def sample() -> None:
        while not done.wait(1.0):
            rss.append(server.rss_mb())
            cache.append(server.metric("tte_cache_bytes") / 2**20)

    sampler = threading.Thread(target=sample)
    rss_start = server.rss_mb()
    sampler.start()
    soak = http(server.url, get, 32, a.soak)
    done.set()
    sampler.join()
    code = server.stop()

    print(f"\n# {load_average()}")
    print(
        "\n| workload | in-process QPS | p50 ms | p99 ms | HTTP QPS | p50 ms | p99 ms | HTTP / in-process | failed |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, mine, served in rows:
        print(
            f"| {name} | {mine.qps:,.0f} | {mine.ms(50):.2f} | {mine.ms(99):.2f} | {served.qps:,.0f} | "
            f"{served.ms(50):.2f} | {served.ms(99):.2f} | {served.qps / mine.qps:.2f}x | {len(served.failures)} |"
        )
    for name, res in (("cache (the default)", cached), ("no cache", uncached)):
        print(
            f"| Zipf(1.1) single ids, concurrency 8, {name} | - | - | - | {res.qps:,.0f} | "
            f"{res.ms(50):.2f} | {res.ms(99):.2f} | - | {len(res.failures)} |"
        )
    by = {name: (mine, served) for name, mine, served in rows}
    print("\ntargets:")
    for c in (1, 2):
        mine, served = by[f"{BATCH}-id batch, concurrency {c}"]
        ratio = served.qps / mine.qps
        print(f"- {BATCH}-id batches, concurrency {c}: HTTP {ratio:.2f}x in-process (target >= 0.7x)")
    mine, served = by["single id, concurrency 8"]
    alone = by["single id, concurrency 1"][0]
    print(
        f"- single id p99 at concurrency 8: HTTP {served.ms(99):.2f} ms against in-process "
        f"{mine.ms(99):.2f} ms + 5 ms = {mine.ms(99) + 5:.2f} ms (target: under it); stricter, against "
        f"one in-process caller's p99: {alone.ms(99):.2f} + 5 = {alone.ms(99) + 5:.2f} ms"
    )

    def trend(series: list[float]) -> float:  # MB per minute, a least-squares line over the samples
        return (
            float(np.polyfit(np.arange(len(series)), series, 1)[0] * 60) if len(series) > 1 else float("nan")
        )

    rest = [x - y for x, y in zip(rss, cache, strict=True)]
    print(
        f"- {a.soak:.0f} s at concurrency 32: {len(soak.latencies):,} requests, {soak.qps:,.0f}/s, "
        f"{len(soak.failures)} failed; server RSS idle {rss_idle:,.0f} MB, {rss_start:,.0f} MB at the start, "
        f"min {min(rss):,.0f}, max {max(rss):,.0f}, end {rss[-1]:,.0f} MB, trend {trend(rss):+.1f} MB/min; "
        f"of which the answer cache {cache[0]:,.1f} -> {cache[-1]:,.1f} MB; RSS less the cache "
        f"{rest[0]:,.0f} -> {rest[-1]:,.0f} MB (min {min(rest):,.0f}, max {max(rest):,.0f}), trend {trend(rest):+.1f} MB/min"
    )
    print(
        f"- cache: hit rate {hits / max(hits + misses, 1):.1%} on Zipf(1.1) ids, "
        f"{uniform_hits / max(uniform_all, 1):.1%} on uniform ids (2 s); on Zipf ids "
        f"{cached.qps / uncached.qps:.2f}x the QPS without it"
    )
    print(f"- servers exited {uncached_code} and {code} on SIGTERM")
    failed = [f for _, _, s in rows for f in s.failures] + soak.failures + uncached.failures + cached.failures
    if failed:
        print(f"failures ({len(failed)}), first: {failed[:3]}")


if __name__ == "__main__":
    main()
