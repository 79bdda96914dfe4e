"""FAISS serving: ANN vs exact, the bundle round trip in a fresh process, served quality equal to
the in-memory model's, per-query errors, and manifest tampering refused."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import faiss
import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from pipelines import evaluate
from tests.helpers import CONFIG_DIR
from tte_recsys.artifacts import ManifestError, sha256_file
from tte_recsys.serving.faiss_index import IndexConfig, build_index, exact_topk, measure
from tte_recsys.serving.retriever import BundleRetriever

ROOT = Path(__file__).resolve().parents[2]


def _clustered(n: int, d: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(20, d))
    x = centers[rng.integers(0, 20, n)] + 0.3 * rng.normal(size=(n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _chunks(x: np.ndarray, size: int = 1000) -> Callable:  # type: ignore[type-arg]
    return lambda: ((np.arange(s, min(s + size, len(x))), x[s : s + size]) for s in range(0, len(x), size))


def test_exact_topk_streams_like_brute_force() -> None:
    x = _clustered(3000, 16)
    q = x[:50] + 0.01
    s, i = exact_topk(q, _chunks(x, 700), 10)
    brute = np.argsort(-(q @ x.T), axis=1, kind="stable")[:, :10]
    assert (i == brute).mean() > 0.99  # equal up to exact float ties
    np.testing.assert_allclose(s, np.take_along_axis(q @ x.T, brute, 1), rtol=1e-5)


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf_flat", "ivf_pq"])
def test_ann_against_exact(kind: str) -> None:
    x = _clustered(5000, 32)
    cfg = IndexConfig(kind=kind, nlist=32, nprobe=8, pq_m=8, train_sample=5000, add_chunk=1500)
    index, params = build_index(_chunks(x), len(x), 32, cfg)
    assert params["kind"] == kind and index.ntotal == 5000
    q = x[:200] + np.random.default_rng(1).normal(scale=0.05, size=(200, 32)).astype(np.float32)
    _, exact = exact_topk(q, _chunks(x), 10)
    got = measure(index, q, exact, 10)
    floor = {"flat": 1.0, "hnsw": 0.95, "ivf_flat": 0.9, "ivf_pq": 0.4}[
        kind
    ]  # PQ codes are lossy: 4 dims per byte here
    assert got["recall@10"] >= floor, got


def test_auto_kind_by_size_and_bad_config() -> None:
    cfg = IndexConfig(exact_below=1000)
    assert cfg.resolve(999) == "flat" and cfg.resolve(1000) == "ivf_flat"
    with pytest.raises(ValueError, match=r"index\.kind"):
        IndexConfig(kind="annoy")
    with pytest.raises(ValueError, match="must divide the head dim"):
        build_index(_chunks(_clustered(500, 30)), 500, 30, IndexConfig(kind="ivf_pq", pq_m=8))


def _compose(name: str, overrides: list[str]) -> DictConfig:
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(name, overrides=overrides)


def test_served_quality_equals_the_trained_model(bundle: tuple[Path, Path, dict]) -> None:  # type: ignore[type-arg]
    run, b, report = bundle
    served = evaluate.run(
        _compose("evaluate", ["debug=tiny", f"bundle_dir={b}", f"output_dir={run.parent / 'ev'}"])
    )
    sel = report["selection"]["mtmh"]
    # the bundle serves the refit model: its row among the refit rows, scored in that view
    trained = report["methods_refit"][f"mtmh (K1/K={sel['share']:g}, lambda={sel['lam']:g})"]
    assert served["methods_refit"]["served"] == pytest.approx(trained, abs=1e-12, nan_ok=True)


def test_round_trip_in_a_fresh_process(bundle: tuple[Path, Path, dict]) -> None:  # type: ignore[type-arg]
    _, b, _ = bundle
    r = BundleRetriever.load(b)
    ids = r.item_ids[:5]
    mine = [[(h.item_id, round(h.score, 5), h.head) for h in q.hits] for q in r.search(ids, 8)]
    code = (
        "import json, sys\nfrom tte_recsys.serving.retriever import BundleRetriever\n"
        f"r = BundleRetriever.load({str(b)!r})\n"
        f"print(json.dumps([[(h.item_id, round(h.score, 5), h.head) for h in q.hits] for q in r.search({ids!r}, 8)]))"
    )
    res = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert json.loads(res.stdout) == [[list(h) for h in q] for q in mine]


def test_results_carry_head_and_score_and_errors_are_per_query(bundle: tuple[Path, Path, dict]) -> None:  # type: ignore[type-arg]
    _, b, _ = bundle
    r = BundleRetriever.load(b)
    first = r.item_ids[0]
    ok, bad = r.search([first, "no-such-item"], 10)
    assert bad.error is not None and "no-such-item" in bad.error and not bad.hits
    assert ok.error is None and len(ok.hits) == 10
    got = [h.item_id for h in ok.hits]
    assert first not in got and len(set(got)) == 10
    assert {h.head for h in ok.hits} == {"coeng", "semantic"}  # share 0.5: both heads contribute
    assert r.item_bias is not None and r.item_bias.max() > 0
    for h in ok.hits:  # the score is that head's inner product plus the item's popularity prior
        i, j = r.item_ids.index(first), r.item_ids.index(h.item_id)
        v = r._vectors[h.head]
        assert h.score == pytest.approx(float(v[i] @ v[j] + r.item_bias[j]), abs=1e-5)
    by_vec = r.search_vectors({hd: r._vectors[hd][:1] for hd in r.heads}, 5)[0]
    best = r._vectors["coeng"] @ r._vectors["coeng"][0] + r.item_bias  # slot 1 is the coeng head's
    assert by_vec.hits[0].head == "coeng" and by_vec.hits[0].score == pytest.approx(
        float(best.max()), abs=1e-5
    )


def test_query_cli_prints_the_neighbours_and_writes_nothing(
    bundle: tuple[Path, Path, dict],  # type: ignore[type-arg]
    tmp_path: Path,
) -> None:
    """``python -m pipelines.query``: the served list on stdout, in the BundleRetriever's order; an unknown
    id is an error naming it with exit status 2; the working directory stays empty (no Hydra log)."""
    _, b, _ = bundle
    r = BundleRetriever.load(b)
    first = r.item_ids[0]
    cwd = tmp_path / "cwd"
    cwd.mkdir()

    def query(item: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "pipelines.query", f"bundle_dir={b}", f"item_id={item}", "k=5"]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=120, check=False)

    ok = query(first)
    assert ok.returncode == 0, ok.stderr[-2000:]
    rows = [line.split() for line in ok.stdout.splitlines()[2:]]
    want = r.search([first], 5)[0].hits
    assert [(row[0], row[2], row[3]) for row in rows] == [
        (str(n), h.head, h.item_id) for n, h in enumerate(want, 1)
    ]
    bad = query("no-such-item")
    assert bad.returncode == 2 and "no-such-item" in bad.stderr and not bad.stdout
    assert list(cwd.iterdir()) == []


def _fix_sha(b: Path, rel: str) -> None:
    m = json.loads((b / "manifest.json").read_text())
    m["files"][rel]["sha256"] = sha256_file(b / rel)
    (b / "manifest.json").write_text(json.dumps(m))


def test_tampering_is_refused(bundle: tuple[Path, Path, dict], tmp_path: Path) -> None:  # type: ignore[type-arg]
    _, src, _ = bundle

    def fresh(name: str) -> Path:
        d = tmp_path / name
        shutil.copytree(src, d)
        return d

    b = fresh("byte")
    data = bytearray((b / "coeng.faiss").read_bytes())
    data[-5] ^= 0xFF
    (b / "coeng.faiss").write_bytes(bytes(data))
    with pytest.raises(ManifestError, match=r"coeng\.faiss.*sha256"):
        BundleRetriever.load(b)

    b = fresh("missing")
    (b / "ids.parquet").unlink()
    with pytest.raises(ManifestError, match=r"ids\.parquet.*missing"):
        BundleRetriever.load(b)

    b = fresh("dims")
    n = BundleRetriever.load(src)._vectors["coeng"].shape[0]
    other = faiss.IndexIDMap(faiss.IndexFlatIP(8))
    other.add_with_ids(_clustered(n, 8), np.arange(n, dtype=np.int64))
    faiss.write_index(other, str(b / "coeng.faiss"))
    _fix_sha(b, "coeng.faiss")
    with pytest.raises(ManifestError, match="x 8 vectors, the manifest says"):
        BundleRetriever.load(b)

    b = fresh("model")  # same shape, another model's vectors (here: the items' vectors permuted)
    r = BundleRetriever.load(src)
    assert r.item_bias is not None
    v = np.concatenate([r._vectors["coeng"], r.item_bias[:, None]], axis=1)  # the index's [v, bias] rows
    foreign = faiss.IndexIDMap(faiss.IndexFlatIP(v.shape[1]))
    foreign.add_with_ids(np.ascontiguousarray(v[::-1]), np.arange(len(v), dtype=np.int64))
    faiss.write_index(foreign, str(b / "coeng.faiss"))
    _fix_sha(b, "coeng.faiss")
    with pytest.raises(ManifestError, match="belongs to another model"):
        BundleRetriever.load(b)
