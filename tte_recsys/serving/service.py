"""The retrieval service: a serving bundle behind HTTP (docs/serving.md).

An ASGI app (Starlette), served by uvicorn through ``python -m pipelines.serve``::

    GET  /v1/similar/{item_id}?k=10&head=merged   one item's top-k, exactly BundleRetriever.search's
    POST /v1/similar  {"item_ids": [...], "k": 10, "head": "merged"}   a batch: one FAISS search per head
    GET  /v1/bundle   the loaded bundle: version, model, heads, items, ANN recall, when it was built
    GET  /healthz     the process answers          GET /readyz   a verified bundle is loaded
    GET  /metrics     Prometheus text: requests and errors by route and status, latency, bundle, reloads
    POST /admin/reload  {"bundle_dir": ...} (optional): only on the admin listener, off unless configured

The bundle is loaded once, verified (:meth:`BundleRetriever.load`: every file's sha256, dims, probes).
**Hot swap**: a reload (the admin route, or the watcher when ``bundle_dir`` -- a symlink the daily
job repoints, or a folder rewritten in place -- changes) loads and verifies the new bundle in a
worker thread, off the request path, then swaps it in with one reference assignment. A request
reads that reference once, when it starts, so requests in flight finish on the bundle they began
with. A bundle that fails to load is refused with the reason, and the old one keeps serving.

Every bad request gets a 4xx JSON body ``{"error": "..."}`` naming the problem; an unexpected
failure a 500 JSON body (the traceback goes to the server log only); a request not answered
within ``request_timeout_s`` a 503.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import faiss
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    generate_latest,
)
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tte_recsys.artifacts import MANIFEST_NAME
from tte_recsys.serving.retriever import BundleRetriever, Hit, QueryResult, UnknownHead

__all__ = [
    "CONFIG_ENV",
    "BundleRefused",
    "LoadedBundle",
    "Service",
    "ServiceConfig",
    "app_from_env",
    "config_to_env",
    "load_bundle",
]

log = logging.getLogger(__name__)
CONFIG_ENV = "TTE_RECSYS_SERVICE"  # the ServiceConfig as JSON, for uvicorn's worker processes
MERGED = "merged"
JSON_TYPE = "application/json"
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


@dataclass(frozen=True)
class ServiceConfig:
    """What the service serves and its limits (``configs/serve.yaml``).

    Attributes:
        bundle_dir: an ``export_faiss`` output folder, or a symlink to one.
        share: the coeng head's share K1/K of the merged list; None: the bundle's (chosen on valid).
        default_k: k when a request names none. max_k: the largest k a request may ask.
        max_batch: ids in one ``POST /v1/similar``.
        max_body_bytes: the largest request body.
        request_timeout_s: a request not answered within this time (reading its body, waiting
            for a search thread, searching) gets a 503.
        search_threads: searches running at once, each in a worker thread (FAISS releases the
            GIL while it searches); further requests wait, within their timeout.
        faiss_threads: OpenMP threads of one FAISS search (set in each search thread: OpenMP's
            setting is per calling thread); 0: FAISS's default (every core). 1 by default:
            concurrent requests are the parallelism, and a multi-threaded search of one query on
            a busy machine waits on its threads (measured: 6.6 ms on 2 threads against 0.74 ms
            on 1, docs/serving.md).
        cache_mb: memory for single-id answers kept per bundle (the encoded answer, by id, k
            and head), least recently used dropped; 0: no cache. A hit costs microseconds, a
            search about a millisecond (docs/serving.md, "Cache": measured).
        watch_interval_s: > 0: check ``bundle_dir`` this often (the folder a symlink points to,
            the manifest's inode and mtime) and swap when it changes; 0: no watcher.
        admin: serve ``POST /admin/reload`` (on the admin listener only).
    """

    bundle_dir: str
    share: float | None = None
    default_k: int = 10
    max_k: int = 100
    max_batch: int = 256
    max_body_bytes: int = 65536
    request_timeout_s: float = 2.0
    search_threads: int = 2
    faiss_threads: int = 1
    cache_mb: float = 64.0
    watch_interval_s: float = 0.0
    admin: bool = False

    def __post_init__(self) -> None:
        if not str(self.bundle_dir):
            raise ValueError("service: bundle_dir is empty; expected an export_faiss output folder")
        positive = {
            "max_k": self.max_k,
            "max_batch": self.max_batch,
            "max_body_bytes": self.max_body_bytes,
            "search_threads": self.search_threads,
            "request_timeout_s": self.request_timeout_s,
        }
        for name, value in positive.items():
            if not value > 0:
                raise ValueError(f"service.{name}={value}: expected > 0")
        if not 1 <= self.default_k <= self.max_k:
            raise ValueError(
                f"service.default_k={self.default_k}: expected 1 <= default_k <= max_k={self.max_k}"
            )
        for name, number in {
            "cache_mb": self.cache_mb,
            "watch_interval_s": self.watch_interval_s,
            "faiss_threads": self.faiss_threads,
        }.items():
            if number < 0:
                raise ValueError(f"service.{name}={number}: expected >= 0")


class ApiError(Exception):
    """A request the service refuses: its HTTP status and the message the client reads."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


class BundleRefused(ValueError):
    """A bundle that did not load or verify; the one already loaded keeps serving."""


class _LRU:
    """Encoded answers by (item id, k, head) within a memory budget, least recently used dropped.
    Used from the event loop thread only, so it needs no lock."""

    ENTRY_OVERHEAD = 256  # bytes per entry besides the answer: key, bytes header, dict slot (measured ~230)

    def __init__(self, budget_bytes: int) -> None:
        self.budget = budget_bytes
        self.bytes = 0
        self._entries: OrderedDict[tuple[str, int, str], bytes] = OrderedDict()

    def _cost(self, key: tuple[str, int, str], body: bytes) -> int:
        return len(body) + len(key[0]) + self.ENTRY_OVERHEAD

    def get(self, key: tuple[str, int, str]) -> bytes | None:
        body = self._entries.get(key)
        if body is not None:
            self._entries.move_to_end(key)
        return body

    def put(self, key: tuple[str, int, str], body: bytes) -> None:
        cost = self._cost(key, body)
        if key in self._entries or cost > self.budget:
            return
        self._entries[key] = body
        self.bytes += cost
        while self.bytes > self.budget:
            old, old_body = self._entries.popitem(last=False)
            self.bytes -= self._cost(old, old_body)


Signature = tuple[str, int, int]  # (resolved folder, manifest inode, manifest mtime in ns)


def _signature(source: str) -> Signature:
    """What the watcher compares: the folder ``source`` resolves to and its manifest's identity."""
    real = os.path.realpath(source)
    try:
        st = os.stat(Path(real) / MANIFEST_NAME)
    except OSError:
        return (real, -1, -1)
    return (real, st.st_ino, st.st_mtime_ns)


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class LoadedBundle:
    """A verified bundle and what the service knows about it; swapped whole, never mutated
    (apart from its own answer cache)."""

    retriever: BundleRetriever
    source: str  # the path as configured (a symlink, maybe)
    signature: Signature  # source's resolution when it was loaded: signature[0] is the folder read
    loaded_at: float
    cache: _LRU | None

    @property
    def version(self) -> str:
        """The first 12 hex digits of the manifest's sha256: names this bundle everywhere."""
        return self.retriever.fingerprint[:12]

    @property
    def path(self) -> str:
        return self.signature[0]

    def summary(self) -> dict[str, Any]:
        """``GET /v1/bundle``: the manifest's model, heads, items and ANN quality, and when it was built."""
        m, r = self.retriever.manifest, self.retriever
        heads = {
            h: {
                "dim": m["heads"][h]["dim"],
                "index": m["heads"][h]["index"]["kind"],
                "ann": m["heads"][h]["ann"],
                "share": r.shares[h],
            }
            for h in r.heads
        }
        return {
            "version": self.version,
            "manifest_sha256": r.fingerprint,
            "path": self.path,
            "source": self.source,
            "model_export": m.get("model_export"),
            "model_dir": m.get("model_dir"),
            "items": len(r.item_ids),
            "heads": heads,
            "item_bias": r.item_bias is not None,
            "built_at": _iso(self.signature[2] / 1e9),  # the manifest's mtime: the export writes it last
            "loaded_at": _iso(self.loaded_at),
        }


def load_bundle(source: str, share: float | None, cache_mb: float) -> LoadedBundle:
    """Resolve ``source`` once and load and verify the folder it names (blocking: call it off
    the event loop)."""
    sig = _signature(source)
    retriever = BundleRetriever.load(sig[0], share=share)
    cache = _LRU(int(cache_mb * 2**20)) if cache_mb > 0 else None
    return LoadedBundle(retriever, source, sig, time.time(), cache)


class _Metrics:
    """The service's Prometheus metrics, in a registry of its own (one per app)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "tte_requests", "HTTP requests by route and status", ["route", "status"], registry=r
        )
        self.errors = Counter(
            "tte_request_errors", "HTTP requests answered 4xx or 5xx", ["route", "status"], registry=r
        )
        self.latency = Histogram(
            "tte_request_seconds",
            "request latency in the service, from the request to the response's last byte",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.bundle = Info("tte_bundle", "the bundle being served", registry=r)
        self.items = Gauge("tte_bundle_items", "items in the bundle being served", registry=r)
        self.loaded = Gauge(
            "tte_bundle_loaded_timestamp_seconds", "when the served bundle was loaded", registry=r
        )
        self.reloads = Counter(
            "tte_reloads", "bundle reloads by result (ok, refused)", ["result"], registry=r
        )
        self.cache = Counter("tte_cache", "single-id answer cache lookups by result", ["result"], registry=r)
        self.cache_bytes = Gauge(
            "tte_cache_bytes", "the served bundle's answer cache, bytes (estimated)", registry=r
        )

    def publish(self, b: LoadedBundle) -> None:
        self.bundle.info(
            {
                "version": b.version,
                "path": b.path,
                "model_export": str(b.retriever.manifest.get("model_export")),
            }
        )
        self.items.set(len(b.retriever.item_ids))
        self.cache_bytes.set(0)
        self.loaded.set(b.loaded_at)


class _Instrument:
    """Outermost ASGI layer: counts every request by route template and status and times it."""

    def __init__(self, app: ASGIApp, metrics: _Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.requests.labels(route, str(status)).inc()
            if status >= 400:
                self.metrics.errors.labels(route, str(status)).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - start)


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()


def _hits(hits: list[Hit]) -> list[dict[str, Any]]:
    return [{"item_id": h.item_id, "score": h.score, "head": h.head, "title": h.title} for h in hits]


def _query(q: QueryResult) -> dict[str, Any]:
    return {"item_id": q.query, "title": q.title, "results": _hits(q.hits), "error": q.error}


def _error(status: int, message: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


class Service:
    """The app's state: the loaded bundle (one reference, swapped whole), metrics, limits.

    Args:
        cfg: what to serve and the limits.
        admin_address: the (host, port) of the admin listener; ``POST /admin/reload`` answers
            only requests that arrived there (and only with ``cfg.admin``).
    """

    def __init__(self, cfg: ServiceConfig, admin_address: tuple[str, int] | None = None) -> None:
        self.cfg = cfg
        self.admin_address = admin_address
        self.bundle: LoadedBundle | None = None
        self.last_refused: dict[str, str] | None = None
        self.metrics = _Metrics()
        self._searches = anyio.CapacityLimiter(cfg.search_threads)
        self._reload_lock = asyncio.Lock()

    # --- loading and hot swap -------------------------------------------------------------

    def load(self) -> LoadedBundle:
        """The first load, blocking (before the server listens): raises if the bundle does not verify."""
        self._swap(load_bundle(self.cfg.bundle_dir, self.cfg.share, self.cfg.cache_mb))
        assert self.bundle is not None
        return self.bundle

    def _swap(self, new: LoadedBundle) -> None:
        self.bundle = new  # the swap: one reference assignment; running requests keep the one they read
        self.metrics.publish(new)

    async def reload(self, bundle_dir: str | None = None) -> LoadedBundle:
        """Load and verify ``bundle_dir`` (default: the current bundle's configured path, resolved
        again) in a worker thread, then swap it in. Reloads run one at a time.

        Raises:
            BundleRefused: naming the bundle and why; the current bundle keeps serving.
        """
        async with self._reload_lock:
            current = self.bundle
            source = bundle_dir or (current.source if current is not None else self.cfg.bundle_dir)
            try:
                new = await anyio.to_thread.run_sync(load_bundle, source, self.cfg.share, self.cfg.cache_mb)
            except Exception as e:  # whatever stops a candidate from loading must not stop serving
                self.metrics.reloads.labels("refused").inc()
                reason = str(e) or type(e).__name__
                self.last_refused = {"source": source, "reason": reason, "at": _iso(time.time())}
                still = (
                    f"still serving {current.version} from {current.path}" if current else "no bundle loaded"
                )
                log.error("bundle %s refused: %s; %s", source, reason, still)
                raise BundleRefused(f"bundle {source} refused: {reason}; {still}") from e
            self._swap(new)
            self.metrics.reloads.labels("ok").inc()
            previous = current.version if current else None
            log.info("serving bundle %s from %s (was %s)", new.version, new.path, previous)
            return new

    async def _watch(self) -> None:
        """Reload when the watched path changes; a refused candidate is not retried until it changes again."""
        refused: Signature | None = None
        while True:
            await asyncio.sleep(self.cfg.watch_interval_s)
            current = self.bundle
            if current is None:
                continue
            sig = await anyio.to_thread.run_sync(_signature, current.source)
            if sig in (current.signature, refused):
                continue
            try:
                await self.reload(current.source)
                refused = None
            except BundleRefused:
                refused = sig

    @contextlib.asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        if self.bundle is None:  # a uvicorn worker process (workers > 1): load here, once
            self._swap(
                await anyio.to_thread.run_sync(
                    load_bundle, self.cfg.bundle_dir, self.cfg.share, self.cfg.cache_mb
                )
            )
        watcher = asyncio.create_task(self._watch()) if self.cfg.watch_interval_s > 0 else None
        try:
            yield
        finally:
            if watcher is not None:
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher

    # --- request handling -----------------------------------------------------------------

    def _current(self) -> LoadedBundle:
        b = self.bundle
        if b is None:
            raise ApiError(503, "no bundle loaded yet")
        return b

    def _k(self, raw: Any) -> int:
        if raw is None:
            return self.cfg.default_k
        try:
            k = int(raw) if isinstance(raw, str | int) and not isinstance(raw, bool) else None
        except ValueError:
            k = None
        if k is None or not 1 <= k <= self.cfg.max_k:
            raise ApiError(422, f"k={raw!r} is out of range: expected an integer from 1 to {self.cfg.max_k}")
        return k

    @staticmethod
    def _head(raw: Any) -> str | None:
        if raw is None or raw == MERGED:
            return None
        if not isinstance(raw, str):
            raise ApiError(422, f"head={raw!r}: expected a head name or {MERGED!r}")
        return raw

    async def _search(self, fn: Callable[[], tuple[int, bytes]]) -> tuple[int, bytes]:
        """``fn`` (a search and its encoding) in a worker thread, at most ``search_threads`` at once."""
        threads = self.cfg.faiss_threads

        def job() -> tuple[int, bytes]:
            if threads:
                faiss.omp_set_num_threads(threads)  # this thread's OpenMP setting
            return fn()

        try:
            return await anyio.to_thread.run_sync(job, limiter=self._searches, abandon_on_cancel=True)
        except UnknownHead as e:
            raise ApiError(422, f"{e}, or {MERGED!r} (the default)") from None

    async def _read_json(self, request: Request) -> Any:
        """The body as JSON, refused (413) past ``max_body_bytes`` before it is all read."""
        limit = self.cfg.max_body_bytes
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise ApiError(413, f"request body of {declared} bytes is over the limit of {limit} bytes")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise ApiError(413, f"request body is over the limit of {limit} bytes")
        if not body:
            return None
        try:
            return json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ApiError(400, f"malformed JSON body: {e}") from None

    def _within_timeout(
        self, handler: Callable[[Request], Awaitable[Response]]
    ) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            timeout = self.cfg.request_timeout_s
            try:
                with anyio.fail_after(timeout):
                    return await handler(request)
            except TimeoutError:
                return _error(503, f"request not answered within {timeout:g} s (service.request_timeout_s)")

        return endpoint

    async def similar_one(self, request: Request) -> Response:
        b = self._current()
        unknown = sorted(set(request.query_params) - {"k", "head"})
        if unknown:
            raise ApiError(422, f"unknown query parameter(s) {unknown}: expected k and head")
        item_id = request.path_params["item_id"]
        k = self._k(request.query_params.get("k"))
        head = self._head(request.query_params.get("head"))
        key = (item_id, k, head or MERGED)
        if b.cache is not None:
            cached = b.cache.get(key)
            self.metrics.cache.labels("hit" if cached is not None else "miss").inc()
            if cached is not None:
                return Response(cached, media_type=JSON_TYPE)

        def answer() -> tuple[int, bytes]:
            q = b.retriever.search([item_id], k, head)[0]
            if q.error is not None:
                return 404, _dumps({"error": q.error})
            out = {"item_id": item_id, "title": q.title, "k": k, "head": head or MERGED, "bundle": b.version}
            return 200, _dumps({**out, "results": _hits(q.hits)})

        status, body = await self._search(answer)
        if status == 200 and b.cache is not None:
            b.cache.put(key, body)
            if b is self.bundle:
                self.metrics.cache_bytes.set(b.cache.bytes)
        return Response(body, status_code=status, media_type=JSON_TYPE)

    async def similar_batch(self, request: Request) -> Response:
        b = self._current()
        body = await self._read_json(request)
        example = '{"item_ids": ["1", "2"], "k": 10, "head": "merged"}'
        if not isinstance(body, dict):
            raise ApiError(400, f"the body must be a JSON object like {example}")
        unknown = sorted(set(body) - {"item_ids", "k", "head"})
        if unknown:
            raise ApiError(422, f"unknown field(s) {unknown}: expected item_ids, k, head")
        ids = body.get("item_ids")
        if not isinstance(ids, list):
            raise ApiError(400, f"item_ids must be a list of item id strings, like {example}")
        bad = next((i for i, x in enumerate(ids) if not isinstance(x, str)), None)
        if bad is not None:
            raise ApiError(400, f"item_ids[{bad}] is {ids[bad]!r}: item ids are strings")
        if not ids:
            raise ApiError(422, "item_ids is empty")
        if len(ids) > self.cfg.max_batch:
            raise ApiError(422, f"{len(ids)} item ids in one request, over the limit of {self.cfg.max_batch}")
        k, head = self._k(body.get("k")), self._head(body.get("head"))

        def answer() -> tuple[int, bytes]:
            qs = b.retriever.search(ids, k, head)
            out = {"k": k, "head": head or MERGED, "bundle": b.version, "queries": [_query(q) for q in qs]}
            return 200, _dumps(out)

        status, payload = await self._search(answer)
        return Response(payload, status_code=status, media_type=JSON_TYPE)

    async def bundle_info(self, request: Request) -> Response:
        return JSONResponse({**self._current().summary(), "last_refused": self.last_refused})

    async def healthz(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(self, request: Request) -> Response:
        b = self.bundle
        if b is None:
            return JSONResponse({"ready": False, "error": "no bundle loaded yet"}, status_code=503)
        return JSONResponse({"ready": True, "bundle": b.version})

    async def prometheus(self, request: Request) -> Response:
        return Response(generate_latest(self.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def admin_reload(self, request: Request) -> Response:
        server = request.scope.get("server")
        if not (self.cfg.admin and self.admin_address and server and tuple(server[:2]) == self.admin_address):
            raise ApiError(404, "not found: the admin routes answer on the admin listener only, when enabled")
        body = await self._read_json(request) or {}
        if not isinstance(body, dict) or sorted(set(body) - {"bundle_dir"}):
            raise ApiError(
                400, 'the body must be empty or a JSON object like {"bundle_dir": "/path/to/bundle"}'
            )
        bundle_dir = body.get("bundle_dir")
        if bundle_dir is not None and not isinstance(bundle_dir, str):
            raise ApiError(400, f"bundle_dir={bundle_dir!r}: expected a path string")
        previous = self._current().version
        try:
            new = await self.reload(bundle_dir)
        except BundleRefused as e:
            return _error(422, str(e))
        return JSONResponse({"reloaded": True, "previous": previous, "bundle": new.summary()})

    # --- the app --------------------------------------------------------------------------

    def app(self) -> ASGIApp:
        """The ASGI app: routes, JSON errors, the lifespan (watcher), metrics outermost."""

        async def api_error(request: Request, exc: Exception) -> Response:
            assert isinstance(exc, ApiError)
            return _error(exc.status, exc.message)

        async def http_error(request: Request, exc: Exception) -> Response:
            assert isinstance(exc, HTTPException)
            what = {404: "not found", 405: "method not allowed"}.get(exc.status_code, str(exc.detail))
            allow = (exc.headers or {}).get("Allow")
            message = f"{what}: {request.method} {request.url.path}" + (
                f" (allowed: {allow})" if allow else ""
            )
            return _error(exc.status_code, message, exc.headers)

        async def server_error(request: Request, exc: Exception) -> Response:
            log.exception("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
            return _error(500, f"internal error ({type(exc).__name__}); the server log has the details")

        routes = [
            Route("/v1/similar/{item_id:path}", self._within_timeout(self.similar_one), methods=["GET"]),
            Route("/v1/similar", self._within_timeout(self.similar_batch), methods=["POST"]),
            Route("/v1/bundle", self.bundle_info, methods=["GET"]),
            Route("/healthz", self.healthz, methods=["GET"]),
            Route("/readyz", self.readyz, methods=["GET"]),
            Route("/metrics", self.prometheus, methods=["GET"]),
            Route("/admin/reload", self.admin_reload, methods=["POST"]),
        ]
        app = Starlette(
            routes=routes,
            exception_handlers={ApiError: api_error, HTTPException: http_error, Exception: server_error},
            lifespan=self._lifespan,
        )
        return _Instrument(app, self.metrics)


def config_to_env(cfg: ServiceConfig) -> str:
    """The config as the JSON that :func:`app_from_env` reads (uvicorn's worker processes)."""
    return json.dumps(dataclasses.asdict(cfg))


def app_from_env() -> ASGIApp:
    """The app for uvicorn's worker processes (``workers > 1``): the config comes from
    ``TTE_RECSYS_SERVICE``; each worker loads the bundle in its lifespan."""
    return Service(ServiceConfig(**json.loads(os.environ[CONFIG_ENV]))).app()
