"""The retrieval service (tte_recsys/serving/service.py) as users run it: ``python -m pipelines.serve``
in a subprocess on 127.0.0.1 and a free port, queried over HTTP with httpx, on the debug=tiny
bundle. Answers equal BundleRetriever's; every bad request gets its status and message; a bundle
swapped under load loses no request and switches at one point; SIGTERM lets a request in flight
finish and exits 0."""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import json
import random
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import polars as pl
import pytest
import uvicorn
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from pipelines import serve as serve_pipeline
from tests.helpers import CONFIG_DIR, ENV, ROOT, run_module
from tte_recsys.artifacts import MANIFEST_NAME, write_manifest, write_parquet
from tte_recsys.serving.bundle import KIND
from tte_recsys.serving.retriever import BundleRetriever, QueryResult
from tte_recsys.serving.service import _LRU, Service, ServiceConfig

Bundle = tuple[Path, Path, dict[str, Any]]


@dataclasses.dataclass
class Served:
    proc: subprocess.Popen[str]
    url: str
    admin: str | None
    log: Path

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=30)

    def stderr(self) -> str:
        return self.log.read_text()[-3000:]


def _die_with_the_tests() -> None:
    """In the server process (Linux): SIGTERM when the process that started it dies, so that a
    killed test run leaves no server behind (PR_SET_PDEATHSIG)."""
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)


def serve(bundle_dir: Path, log: Path, *args: str) -> Served:
    """``python -m pipelines.serve`` on a free port; returns once its "serving ..." line is out."""
    cmd = [sys.executable, "-m", "pipelines.serve", f"bundle_dir={bundle_dir}", "port=0", *args]
    with log.open("w") as err:
        p = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=ENV,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            preexec_fn=_die_with_the_tests if sys.platform == "linux" else None,
        )
    assert p.stdout is not None
    deadline = time.monotonic() + 120
    line = ""
    while not line and time.monotonic() < deadline and p.poll() is None:
        if select.select([p.stdout], [], [], 0.1)[0]:
            line = p.stdout.readline()
    if not line.startswith("serving "):
        p.kill()
        p.wait()
        raise AssertionError(f"no serving line; stderr:\n{log.read_text()[-3000:]}")
    urls = re.findall(r"http://[\d.]+:\d+", line)
    return Served(p, urls[0], urls[1] if "admin on" in line else None, log)


@pytest.fixture(scope="module")
def retriever(bundle: Bundle) -> BundleRetriever:
    return BundleRetriever.load(bundle[1])


@pytest.fixture(scope="module")
def server(bundle: Bundle, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    s = serve(bundle[1], tmp_path_factory.mktemp("server") / "stderr.txt")
    yield s
    s.stop()


def as_json(q: QueryResult) -> list[dict[str, Any]]:
    """What the service must answer for a query: the retriever's hits, field for field."""
    return [dataclasses.asdict(h) for h in q.hits]


def test_answers_equal_the_retriever_for_every_item(server: Served, retriever: BundleRetriever) -> None:
    version = retriever.fingerprint[:12]
    with httpx.Client(base_url=server.url) as c:
        for item in retriever.item_ids:  # every item, single GETs, the merged list
            r = c.get(f"/v1/similar/{quote(item, safe='')}", params={"k": 10})
            assert r.status_code == 200, r.text
            want = retriever.search([item], 10)[0]
            got = r.json()
            assert got["results"] == as_json(want) and len(got["results"]) == 10
            assert (got["item_id"], got["title"], got["bundle"], got["head"]) == (
                item,
                want.title,
                version,
                "merged",
            )
        for head in ["merged", *retriever.heads]:  # every item again per head, in batches of the limit
            ids = retriever.item_ids
            for s in range(0, len(ids), 256):
                batch = [*ids[s : s + 256][:255], "no-such-item"]
                r = c.post("/v1/similar", json={"item_ids": batch, "k": 7, "head": head})
                assert r.status_code == 200, r.text
                want_all = retriever.search(batch, 7, None if head == "merged" else head)
                got_all = r.json()["queries"]
                assert [q["item_id"] for q in got_all] == batch
                assert [q["results"] for q in got_all] == [as_json(w) for w in want_all]
                assert [q["error"] for q in got_all] == [w.error for w in want_all]
                assert got_all[-1]["error"] is not None and "no-such-item" in got_all[-1]["error"]
        one = c.get(f"/v1/similar/{ids[3]}", params={"head": "semantic"}).json()["results"]
        assert {h["head"] for h in one} == {"semantic"}  # a head's own list, not the merged one


def test_bundle_health_and_metrics(server: Served, retriever: BundleRetriever, bundle: Bundle) -> None:
    with httpx.Client(base_url=server.url) as c:
        assert c.get("/healthz").json() == {"status": "ok"}
        assert c.get("/readyz").json() == {"ready": True, "bundle": retriever.fingerprint[:12]}
        info = c.get("/v1/bundle").json()
        manifest = json.loads((bundle[1] / MANIFEST_NAME).read_text())
        assert info["items"] == len(retriever.item_ids) == manifest["count"]
        assert info["model_export"] == manifest["model_export"] and info["path"] == str(bundle[1])
        assert {h: v["ann"] for h, v in info["heads"].items()} == {
            h: manifest["heads"][h]["ann"] for h in manifest["head_names"]
        }
        assert info["built_at"] and info["loaded_at"] and info["last_refused"] is None

        def count(text: str, name: str, **labels: str) -> float:
            want = ",".join(f'{k}="{v}"' for k, v in labels.items())
            series = re.escape(f"{name}{{{want}}}" if labels else name)
            return sum(float(m) for m in re.findall(rf"^{series} (\S+)$", text, re.M))

        before = c.get("/metrics").text
        item = retriever.item_ids[0]
        answers = [c.get(f"/v1/similar/{item}", params={"k": 9}) for _ in range(3)]  # a key no test asked
        assert [a.status_code for a in answers] == [200] * 3 and len({a.content for a in answers}) == 1
        assert c.get("/v1/similar/no-such-item").status_code == 404
        after = c.get("/metrics")
        assert after.headers["content-type"].startswith("text/plain")
        route = "/v1/similar/{item_id:path}"
        diff = {
            name: count(after.text, name, **labels) - count(before, name, **labels)
            for name, labels in {
                "tte_requests_total": {"route": route, "status": "200"},
                "tte_request_errors_total": {"route": route, "status": "404"},
                "tte_request_seconds_count": {"route": route},
                "tte_cache_total": {"result": "hit"},
            }.items()
        }
        # the answer is computed once, then served from the cache; an unknown id is never cached
        assert diff == {
            "tte_requests_total": 3,
            "tte_request_errors_total": 1,
            "tte_request_seconds_count": 4,
            "tte_cache_total": 2,
        }
        assert count(after.text, "tte_cache_bytes") > len(answers[0].content)
        assert f'tte_bundle_info{{model_export="{manifest["model_export"]}"' in after.text
        assert f'version="{retriever.fingerprint[:12]}"' in after.text


def test_the_answer_cache_keeps_to_its_budget() -> None:
    """Least recently used answers go first, and the estimated bytes never pass the budget."""
    lru = _LRU(3 * (100 + 1 + _LRU.ENTRY_OVERHEAD))
    for key in "abc":
        lru.put((key, 10, "merged"), b"x" * 100)
    assert lru.get(("a", 10, "merged")) == b"x" * 100  # a is now the most recent
    lru.put(("d", 10, "merged"), b"y" * 100)
    assert [lru.get((key, 10, "merged")) is not None for key in "abcd"] == [True, False, True, True]
    assert lru.bytes == lru.budget
    lru.put(("e", 10, "merged"), b"z" * lru.budget)  # larger than the whole budget: not kept
    assert lru.get(("e", 10, "merged")) is None and lru.bytes == lru.budget


# (method, path, body: JSON value | raw bytes | None, status, message pattern)
BAD_REQUESTS: list[tuple[str, str, Any, int, str]] = [
    (
        "GET",
        "/v1/similar/no-such-item",
        None,
        404,
        r"unknown item id 'no-such-item' \(not in this bundle's 400",
    ),
    ("GET", "/v1/similar/{item}?k=0", None, 422, r"k='0' is out of range: expected an integer from 1 to 100"),
    ("GET", "/v1/similar/{item}?k=101", None, 422, r"k='101' is out of range"),
    ("GET", "/v1/similar/{item}?k=ten", None, 422, r"k='ten' is out of range"),
    (
        "GET",
        "/v1/similar/{item}?head=nope",
        None,
        422,
        r"unknown head 'nope': this bundle has \['coeng', 'semantic'\]",
    ),
    ("GET", "/v1/similar/{item}?kk=3", None, 422, r"unknown query parameter\(s\) \['kk'\]"),
    ("POST", "/v1/similar", b'{"item_ids": [', 400, r"malformed JSON body"),
    ("POST", "/v1/similar", b"\xff\xfe", 400, r"malformed JSON body"),
    ("POST", "/v1/similar", ["1"], 400, r"must be a JSON object like"),
    ("POST", "/v1/similar", {"k": 3}, 400, r"item_ids must be a list of item id strings"),
    ("POST", "/v1/similar", {"item_ids": "1"}, 400, r"item_ids must be a list"),
    ("POST", "/v1/similar", {"item_ids": ["{item}", 7]}, 400, r"item_ids\[1\] is 7: item ids are strings"),
    ("POST", "/v1/similar", {"item_ids": []}, 422, r"item_ids is empty"),
    (
        "POST",
        "/v1/similar",
        {"item_ids": ["{item}"] * 257},
        422,
        r"257 item ids in one request, over the limit of 256",
    ),
    ("POST", "/v1/similar", {"item_ids": ["{item}"], "k": 0}, 422, r"k=0 is out of range"),
    ("POST", "/v1/similar", {"item_ids": ["{item}"], "k": True}, 422, r"k=True is out of range"),
    ("POST", "/v1/similar", {"item_ids": ["{item}"], "k": 2.5}, 422, r"k=2.5 is out of range"),
    ("POST", "/v1/similar", {"item_ids": ["{item}"], "head": "x"}, 422, r"unknown head 'x'.*or 'merged'"),
    ("POST", "/v1/similar", {"item_ids": ["{item}"], "top": 5}, 422, r"unknown field\(s\) \['top'\]"),
    (
        "POST",
        "/v1/similar",
        {"item_ids": ["a" * 70_000]},
        413,
        r"body of \d+ bytes is over the limit of 65536",
    ),
    ("GET", "/v1/similar", None, 405, r"method not allowed: GET /v1/similar \(allowed: POST\)"),
    ("GET", "/v2/similar/1", None, 404, r"not found: GET /v2/similar/1"),
    ("POST", "/admin/reload", {}, 404, r"admin routes answer on the admin listener only"),
]


@pytest.mark.parametrize(("method", "path", "body", "status", "message"), BAD_REQUESTS)
def test_bad_requests_get_4xx_json_naming_the_problem(
    server: Served, retriever: BundleRetriever, method: str, path: str, body: Any, status: int, message: str
) -> None:
    item = retriever.item_ids[0]
    if isinstance(body, bytes):
        content = body
    else:
        content = None if body is None else json.dumps(body).replace("{item}", item).encode()
    r = httpx.request(method, server.url + path.replace("{item}", item), content=content)
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    assert re.search(message, r.json()["error"]), r.json()


def test_a_body_over_the_limit_without_a_length_is_refused(server: Served) -> None:
    """A chunked body (no Content-Length) is counted as it arrives and refused past the limit."""

    def chunks() -> Iterator[bytes]:
        yield b'{"item_ids": ["'
        for _ in range(100):
            yield b"x" * 1000

    r = httpx.post(server.url + "/v1/similar", content=chunks())
    assert r.status_code == 413 and r.json() == {"error": "request body is over the limit of 65536 bytes"}


@contextlib.contextmanager
def in_thread(service: Service) -> Iterator[str]:
    """The app under uvicorn in a thread of this process, on a free loopback port: a real server
    for the cases that need a configuration of their own but no process of their own."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    server = uvicorn.Server(uvicorn.Config(service.app(), log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]})
    thread.start()
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


def test_a_request_past_its_timeout_gets_503(bundle: Bundle, retriever: BundleRetriever) -> None:
    """1 ms is far less than 256 searches and the encoding of 25,600 hits take."""
    service = Service(ServiceConfig(str(bundle[1]), request_timeout_s=0.001))
    service.load()
    with in_thread(service) as url:
        r = httpx.post(url + "/v1/similar", json={"item_ids": retriever.item_ids[:256], "k": 100})
        assert r.status_code == 503
        assert r.json() == {"error": "request not answered within 0.001 s (service.request_timeout_s)"}
        assert httpx.get(url + "/healthz").status_code == 200  # and it keeps serving
        metrics = httpx.get(url + "/metrics").text
        assert 'tte_request_errors_total{route="/v1/similar",status="503"} 1.0' in metrics


def second_bundle(src: Path, dst: Path) -> None:
    """Another valid bundle from ``src``: the coeng head alone (share 1.0) and retitled items,
    written with a fresh manifest, so that its answers differ in order, heads and titles."""
    shutil.copytree(src, dst)
    items = pl.read_parquet(dst / "items.parquet")
    write_parquet(dst / "items.parquet", items.with_columns(pl.col("title") + " (v2)"))
    m = json.loads((dst / MANIFEST_NAME).read_text())
    extra = {k: v for k, v in m.items() if k not in ("schema_version", "kind", "files")}
    write_manifest(dst, KIND, {**extra, "share": 1.0})


def corrupted_bundle(src: Path, dst: Path) -> None:
    """A copy of ``src`` with one byte of an index flipped (its manifest no longer matches)."""
    shutil.copytree(src, dst)
    data = bytearray((dst / "coeng.faiss").read_bytes())
    data[-5] ^= 0xFF
    (dst / "coeng.faiss").write_bytes(bytes(data))


def repoint(link: Path, target: Path) -> None:
    """What a daily job does: a new symlink renamed over the old one (atomic)."""
    tmp = link.with_name(link.name + ".new")
    tmp.symlink_to(target)
    tmp.replace(link)


def test_hot_swap_under_load(bundle: Bundle, tmp_path: Path) -> None:
    """Clients query without pause while the watched symlink moves to a valid new bundle, then an
    admin reload and the symlink try a corrupted one: no request fails, every answer is the one
    its bundle gives, answers switch to the new bundle at one point (no answer from the old
    bundle to a request sent after a new-bundle answer arrived), the corrupted bundle is refused
    with the reason and the new one keeps serving. Bounded: at most 30 s on loopback."""
    v1, v2, bad, link = bundle[1], tmp_path / "v2", tmp_path / "bad", tmp_path / "current"
    second_bundle(v1, v2)
    corrupted_bundle(v1, bad)
    link.symlink_to(v1)
    old, new = BundleRetriever.load(v1), BundleRetriever.load(v2)
    pool = random.Random(0).sample(old.item_ids, 40)
    want = {
        r.fingerprint[:12]: {i: as_json(q) for i, q in zip(pool, r.search(pool, 10), strict=True)}
        for r in (old, new)
    }
    assert want[old.fingerprint[:12]] != want[new.fingerprint[:12]]
    args = ["service.watch_interval_s=0.05", "service.cache_mb=0.02", "admin.enabled=true", "admin.port=0"]
    s = serve(link, tmp_path / "stderr.txt", *args)
    assert s.admin is not None
    stop = threading.Event()
    records: list[list[tuple[float, float, int, Any]]] = [[] for _ in range(4)]
    failures: list[str] = []

    def client(n: int) -> None:
        rng = random.Random(n)
        with httpx.Client(base_url=s.url, timeout=10) as c:
            while not stop.is_set():
                item = rng.choice(pool)
                sent = time.monotonic()
                try:
                    r = c.get(f"/v1/similar/{item}", params={"k": 10})
                except httpx.HTTPError as e:
                    failures.append(repr(e))
                    continue
                body = r.json()
                records[n].append((sent, time.monotonic(), r.status_code, (item, body)))

    threads = [threading.Thread(target=client, args=(n,)) for n in range(4)]
    deadline = time.monotonic() + 30
    try:
        for t in threads:
            t.start()
        time.sleep(0.5)
        repoint(link, v2)  # swap 1: the daily job moves the symlink; the watcher loads v2
        with httpx.Client(base_url=s.url) as c:
            while c.get("/readyz").json()["bundle"] != new.fingerprint[:12] and time.monotonic() < deadline:
                time.sleep(0.02)
            time.sleep(0.5)
            # swap 2: a corrupted bundle, by the admin route and by the symlink; both refused
            r = httpx.post(s.admin + "/admin/reload", json={"bundle_dir": str(bad)}, timeout=30)
            assert r.status_code == 422
            assert re.search(
                r"bundle .*bad refused: .*coeng\.faiss.* sha256 .*; still serving", r.json()["error"]
            )
            repoint(link, bad)
            while (
                c.get("/v1/bundle").json()["last_refused"]["source"] != str(link)
                and time.monotonic() < deadline
            ):
                time.sleep(0.02)
            time.sleep(0.3)
            info = c.get("/v1/bundle").json()
            metrics = c.get("/metrics").text
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
        code = s.stop()
    assert code == 0, s.stderr()
    assert time.monotonic() < deadline, "the swap did not happen within 30 s"
    assert info["version"] == new.fingerprint[:12] and info["path"] == str(v2)  # the valid one kept
    assert "coeng.faiss" in info["last_refused"]["reason"]
    assert (
        'tte_reloads_total{result="ok"} 1.0' in metrics
        and 'tte_reloads_total{result="refused"} 2.0' in metrics
    )
    assert not failures
    flat = [r for per in records for r in per]
    assert all(status == 200 for _, _, status, _ in flat), [b for _, _, st, b in flat if st != 200][:3]
    by_version: dict[str, list[tuple[float, float]]] = {v: [] for v in want}
    for sent, recv, _, (item, body) in flat:
        assert body["results"] == want[body["bundle"]][item]  # never a mix of the two bundles
        by_version[body["bundle"]].append((sent, recv))
    before, after = by_version[old.fingerprint[:12]], by_version[new.fingerprint[:12]]
    assert len(before) > 20 and len(after) > 20, (len(before), len(after))
    assert max(sent for sent, _ in before) < min(recv for _, recv in after)  # one switch point
    for per in records:  # and each client saw old answers, then new ones, never back
        versions = [body["bundle"] for *_, (_, body) in per]
        assert versions == sorted(versions, key=lambda v: v == new.fingerprint[:12])


def test_sigterm_finishes_the_request_in_flight_and_exits_0(
    bundle: Bundle, retriever: BundleRetriever, tmp_path: Path
) -> None:
    """A request whose body is not sent yet when SIGTERM arrives: the server stops accepting new
    connections, answers that request in full when its body arrives, and exits 0. The request
    asks ``Expect: 100-continue``, so the server's "100 Continue" shows that the request is in
    the app (it is reading the body) before the signal is sent."""
    s = serve(bundle[1], tmp_path / "stderr.txt")
    try:
        host, port = s.url.removeprefix("http://").split(":")
        ids = retriever.item_ids[:3]
        body = json.dumps({"item_ids": ids, "k": 5}).encode()
        head = f"POST /v1/similar HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        head += f"Content-Length: {len(body)}\r\nExpect: 100-continue\r\n\r\n"
        with socket.create_connection((host, int(port)), timeout=30) as conn:
            conn.sendall(head.encode())
            interim = b""
            while not interim.endswith(b"\r\n\r\n"):
                interim += conn.recv(1)
            assert interim == b"HTTP/1.1 100 Continue\r\n\r\n", interim  # the request is in flight
            s.proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + 10
            refused = False
            while not refused and time.monotonic() < deadline:
                try:
                    socket.create_connection((host, int(port)), timeout=1).close()
                    time.sleep(0.05)
                except ConnectionRefusedError:
                    refused = True
            assert refused, "still accepting connections after SIGTERM"
            assert s.proc.poll() is None  # waiting for the request in flight
            conn.sendall(body)
            raw = b""
            while chunk := conn.recv(65536):
                raw += chunk
        status_line, _, rest = raw.partition(b"\r\n")
        assert status_line == b"HTTP/1.1 200 OK", raw[:300]
        answer = json.loads(rest.partition(b"\r\n\r\n")[2])
        assert [q["results"] for q in answer["queries"]] == [as_json(q) for q in retriever.search(ids, 5)]
    finally:
        code = s.stop()
    assert code == 0, s.stderr()
    assert "stopped by SIGTERM" in s.stderr()


def test_a_bundle_that_does_not_verify_is_one_line(tmp_path: Path) -> None:
    r = run_module("pipelines.serve", [f"bundle_dir={tmp_path}", "port=0"], timeout=120)
    assert r.returncode == 2, r.stderr[-2000:]
    assert re.search(
        r"^error: .*no manifest\.json; expected an output folder written by tte_recsys", r.stderr, re.M
    )
    assert "Traceback" not in r.stderr and not r.stdout


def _compose(overrides: list[str]) -> DictConfig:
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("serve", overrides=overrides)


def test_settings_refused_before_serving(bundle: Bundle) -> None:
    """``run(cfg)`` refuses what cannot work, naming it, before it listens (``cli`` makes each
    one ``error: ...`` line and exit status 2)."""
    b = f"bundle_dir={bundle[1]}"
    with pytest.raises(ValueError, match="POST /admin/reload would reach one worker of 2"):
        serve_pipeline.run(_compose([b, "workers=2", "admin.enabled=true", "debug=tiny"]))  # accepted
    with pytest.raises(ValueError, match=r"service\.max_k=0: expected > 0"):
        serve_pipeline.run(_compose([b, "service.max_k=0"]))
    with pytest.raises(ValueError, match=r"service: unknown key\(s\) \['max_kk'\]"):
        serve_pipeline.run(_compose([b, "+service.max_kk=3"]))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OSError, match=rf"cannot listen on 127\.0\.0\.1:{port}: Address already in use"):
            serve_pipeline.run(_compose([b, f"port={port}"]))


@pytest.mark.slow
def test_two_workers_answer_alike_and_each_swaps_when_the_symlink_moves(
    bundle: Bundle, retriever: BundleRetriever, tmp_path: Path
) -> None:
    """workers=2: each uvicorn worker process loads the bundle and watches the symlink; after
    the daily job moves it, every worker answers from the new bundle; SIGTERM stops both, exit 0."""
    v1, v2, link = bundle[1], tmp_path / "v2", tmp_path / "current"
    second_bundle(v1, v2)
    link.symlink_to(v1)
    new = BundleRetriever.load(v2)
    s = serve(link, tmp_path / "stderr.txt", "workers=2", "service.watch_interval_s=0.05")
    try:
        with httpx.Client(base_url=s.url, timeout=60) as c:
            for item in retriever.item_ids[:50]:  # new connections: both workers take some
                r = httpx.get(f"{s.url}/v1/similar/{quote(item, safe='')}", timeout=60)
                assert r.status_code == 200 and r.json()["results"] == as_json(
                    retriever.search([item], 10)[0]
                )
            repoint(link, v2)
            deadline = time.monotonic() + 30
            seen: list[str] = []
            while time.monotonic() < deadline and set(seen[-40:]) != {new.fingerprint[:12]}:
                seen.append(httpx.get(f"{s.url}/readyz", timeout=60).json()["bundle"])
            assert set(seen[-40:]) == {new.fingerprint[:12]}, seen[-40:]
            item = retriever.item_ids[0]
            assert c.get(f"/v1/similar/{item}").json()["results"] == as_json(new.search([item], 10)[0])
    finally:
        code = s.stop()
    assert code == 0, s.stderr()
