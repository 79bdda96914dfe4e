"""Encoding one side of a task (its queries or its candidates) into a cached, sharded,
data-parallel vector folder, and reading it back.

The cache folder is keyed by (embedder fingerprint, task, side, inputs digest), and the inputs
digest covers every input's name, text (trace included, so the trace version is in it) and image
paths with their sizes: a cache written by another model, another reasoner or other data is never
read. Inside, :func:`tte_recsys.vectors.write_shards` does the rest: fixed shards owned by rank
``shard % world``, written atomically, skipped when present (a killed run resumes there).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import polars as pl

from tte_recsys.evaluation.mmeb.data import Entry, safe_name
from tte_recsys.tte.embedder import Encoder
from tte_recsys.vectors import SHARDS, JobSpec, write_shards

__all__ = ["Encoder", "SideJob", "encode_side", "load_side"]


def _digest(entries: Sequence[Entry], texts: Sequence[str], trace_version: str) -> str:
    h = hashlib.sha256(trace_version.encode())
    for e, t in zip(entries, texts, strict=True):
        sizes = [Path(p).stat().st_size for p in e.images]
        h.update(json.dumps([e.name, t, list(e.images), sizes]).encode())
    return h.hexdigest()


class SideJob:
    """One side of one task: its inputs and where their vectors are cached.

    Args:
        label: the task (with its version); side: ``query`` or ``target``.
        entries: the inputs; texts: what the embedder reads for each (trace appended where asked).
        cache_root: the embedding cache; fingerprint: the embedder's; trace_version: the traces'.
    """

    def __init__(
        self,
        label: str,
        side: str,
        entries: Sequence[Entry],
        texts: Sequence[str],
        cache_root: Path,
        fingerprint: str,
        trace_version: str,
        shard_size: int,
    ) -> None:
        if len(entries) != len(texts):
            raise ValueError(f"{label}/{side}: {len(entries)} entries but {len(texts)} texts")
        self.label, self.side, self.entries, self.texts = label, side, list(entries), list(texts)
        digest = _digest(entries, texts, trace_version)
        self.dir = cache_root / fingerprint[:16] / safe_name(label) / side / digest[:16]
        self.spec = JobSpec(f"{label}/{side}", len(entries), shard_size, fingerprint, trace_version)

    @property
    def shards(self) -> int:
        return math.ceil(len(self.entries) / self.spec.shard_size)

    def done(self) -> bool:
        """Every shard is on disk (nothing left to encode)."""
        return all((self.dir / SHARDS / f"part-{c:05d}.parquet").is_file() for c in range(self.shards))


def encode_side(
    job: SideJob, encoder: Encoder, batch_size: int, rank: int = 0, world: int = 1
) -> dict[str, int]:
    """Encode this rank's missing shards of ``job``; returns the shard counts."""

    def compute(start: int, end: int) -> pl.DataFrame:
        chunk = job.entries[start:end]
        vecs = encoder.encode(
            job.texts[start:end], batch_size=batch_size, images=[e.images or None for e in chunk]
        )
        vecs = np.asarray(vecs, dtype=np.float32).reshape(len(chunk), -1)  # (n, D) (H heads: H x D)
        bad = np.flatnonzero(~np.isfinite(vecs).all(axis=1))
        if len(bad):
            raise ValueError(
                f"task {job.label}: the embedder returned a NaN or infinite vector for {job.side} "
                f"{chunk[int(bad[0])].name!r} ({len(bad)} in this shard)"
            )
        vecs /= np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)
        return pl.DataFrame(
            {
                "item_id": [e.name for e in chunk],
                "vector": pl.Series(vecs, dtype=pl.Array(pl.Float32, vecs.shape[1])),
            }
        )

    return write_shards(
        len(job.entries), job.dir, job.spec, compute, rank, world, desc=f"{job.label} {job.side}"
    )


def load_side(job: SideJob) -> np.ndarray:
    """(n, D) unit rows of a finished side, in input order."""
    parts = [job.dir / SHARDS / f"part-{c:05d}.parquet" for c in range(job.shards)]
    missing = [p for p in parts if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"task {job.label}: {job.side} shard {missing[0]} was not written")
    df = pl.concat([pl.read_parquet(p) for p in parts])
    names = df["item_id"].to_list()
    if names != [e.name for e in job.entries]:
        raise ValueError(
            f"task {job.label}: cached {job.side} vectors in {job.dir} are not this task's inputs"
        )
    return np.asarray(df["vector"].to_numpy(), dtype=np.float32)
