"""MMEB-V2 evaluation speed, each figure beside a peer in the same run.

1. Encoding: our side encoder (length-sorted batches, cached shards: ``encode_side``) against the
   reference's shape, one input at a time through the same model, on the synthetic MMEB root
   (every family; images and video frames where the model reads them). Inputs/s and the ratio.
2. Scoring: every one of the 78 tasks at its published query count with realistic candidate
   counts (image lists of 1,000, label lists, video and page corpora), random unit vectors of
   dimension 1,536 (a 2B VLM's), scored by ``score_task`` against a peer that fully sorts every
   query's scores (what a plain ``argsort`` evaluator does). Seconds and the ratio.

    python bench/mmeb.py [--model minilm|tiny-vl|DIR] [--queries 48] [--skip-encode] [--skip-score]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from machine import cpu_name

from tte_recsys.evaluation.mmeb.encode import SideJob, encode_side
from tte_recsys.evaluation.mmeb.readers import ReadSettings, read_task
from tte_recsys.evaluation.mmeb.registry import families, select_tasks
from tte_recsys.evaluation.mmeb.scoring import score_task
from tte_recsys.evaluation.mmeb.synthetic import SYNTHETIC_TASKS, make_synthetic_root
from tte_recsys.tte.factory import build_embedder
from tte_recsys.tte.tiny import build_tiny_qwen2_vl

# candidates per query (local) or per task (global) where the notes give no count: ours, realistic
_CANDIDATES = {"image": 1000, "visdoc": 1000, "video_ret": 1000, "video_qa": 5, "video_mret": 10}
_LABELS = {"K700": 700, "HMDB51": 51, "UCF101": 101, "Breakfast": 10, "SmthSmthV2": 174}


def encoding(model: str, queries: int, batch: int) -> None:
    with tempfile.TemporaryDirectory() as d:
        root = make_synthetic_root(Path(d) / "root", queries=queries)
        path = str(build_tiny_qwen2_vl(Path(d) / "vl")) if model == "tiny-vl" else model
        emb = build_embedder(path, pooling="last" if model == "tiny-vl" else "mean", runtime="torch")
        fams, inputs = families(), []
        for t in select_tasks(list(SYNTHETIC_TASKS)):
            data = read_task(t, fams[t.family], root, ReadSettings(), Path(d) / "pix")
            inputs += [(t.label, "query", data.queries), (t.label, "target", data.candidates)]
        n = sum(len(e) for *_, e in inputs)
        emb.encode(["warm up"] * 8)
        t0 = time.perf_counter()
        for label, side, entries in inputs:
            job = SideJob(
                label, side, entries, [e.text for e in entries], Path(d) / "cache", "f" * 64, "none", 256
            )
            encode_side(job, emb, batch)
        ours = n / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        for *_, entries in inputs:
            for e in entries:  # the reference's shape: one input per forward pass
                emb.encode([e.text], batch_size=1, images=[e.images or None])
        peer = n / (time.perf_counter() - t0)
    print(f"encoding, {model}, {n} inputs of the synthetic root ({queries} queries per task), batch {batch}:")
    print(f"  ours {ours:8.1f} inputs/s   one-at-a-time {peer:8.1f} inputs/s   ratio {ours / peer:.2f}x")


def _shape(t) -> tuple[int, int | None]:  # type: ignore[no-untyped-def]
    """(candidates per query if local else None, candidates of the task if global else 0)."""
    if t.modality == "image":
        return _CANDIDATES["image"], 0
    if t.modality == "visdoc":
        return None, _CANDIDATES["visdoc"]
    kind = t.pixel_root.split("/")[2]
    if kind == "video_cls":
        return (_LABELS[t.name], 0) if t.candidates == "local" else (None, _LABELS[t.name])
    if kind == "video_ret":
        return None, min(_CANDIDATES["video_ret"], t.queries)
    return _CANDIDATES[kind], 0


def _full_sort_peer(q: np.ndarray, c: np.ndarray, lists: list[np.ndarray] | None, pos: list[int]) -> float:
    hits = 0
    for i in range(len(q)):
        idx = np.arange(len(c)) if lists is None else lists[i]
        s = c[idx] @ q[i]
        hits += int(idx[np.argsort(-s, kind="stable")[0]] == pos[i])
    return hits / len(q)


def scoring(dim: int) -> None:
    rng = np.random.default_rng(0)
    ours = peer = 0.0
    total_q = 0
    for t in select_tasks():
        per_query, n_global = _shape(t)
        n_c = n_global or 4 * per_query  # local lists draw from a pool of candidates
        q = rng.normal(size=(t.queries, dim)).astype(np.float32)
        c = rng.normal(size=(max(n_c, 1), dim)).astype(np.float32)
        q /= np.linalg.norm(q, axis=1, keepdims=True)
        c /= np.linalg.norm(c, axis=1, keepdims=True)
        lists = (
            None
            if per_query is None
            else [rng.choice(n_c, per_query, replace=False) for _ in range(t.queries)]
        )
        pos = [int(x[0]) for x in lists] if lists is not None else list(rng.integers(0, n_c, t.queries))
        rel = [{p: 1.0} for p in pos]
        t0 = time.perf_counter()
        score_task(q, c, lists, rel, t.metric)
        ours += time.perf_counter() - t0
        t0 = time.perf_counter()
        _full_sort_peer(q, c, lists, pos)
        peer += time.perf_counter() - t0
        total_q += t.queries
    print(f"scoring, 78 tasks, {total_q} queries, dim {dim}, random unit vectors:")
    print(f"  ours {ours:7.1f} s   full-sort peer (hit@1 only) {peer:7.1f} s   ratio {peer / ours:.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="minilm")
    ap.add_argument("--queries", type=int, default=48)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--dim", type=int, default=1536)
    ap.add_argument("--skip-encode", action="store_true")
    ap.add_argument("--skip-score", action="store_true")
    a = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    print(f"# bench/mmeb.py on {cpu_name()}, torch {torch.__version__}")
    if not a.skip_encode:
        encoding(a.model, a.queries, a.batch)
    if not a.skip_score:
        scoring(a.dim)


if __name__ == "__main__":
    main()
