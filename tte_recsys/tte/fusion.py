"""How a reasoning trace reaches an item vector: the one definition every caller uses.

``concat`` embeds ``item text + "\\nreasoning: " + trace`` as one input (the original TTE
input; with a frozen mean-pooled embedder a 32-token trace outweighs a product title and
retrieval got worse, docs/results.md). ``fuse`` embeds the item and each of its traces
separately and returns ``normalize(v_item + w * mean_j v_trace_j)`` (HyDE's averaging): with
``w = 0`` it is the item's own vector, so a grid that holds 0 and is chosen on valid can never
do worse on valid than no traces. An item without a trace keeps its own vector.

The embedding job (:mod:`tte_recsys.serving.embed_job`), the MTMH content tower and its trace
input (:mod:`tte_recsys.experiment.i2i`), the reasoner-training rewards and the scoring of a
reasoner all make their vectors with :func:`fuse` and :func:`trace_vectors`, so a reward sees
vectors made exactly as evaluation makes them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from tte_recsys.tte.embedder import Encoder
from tte_recsys.tte.items import ItemInput, embedding_text

__all__ = ["TRACE_MODES", "TRACE_SIDES", "TraceFusion", "fuse", "item_vectors", "trace_vectors"]

TRACE_MODES = ("concat", "fuse")
TRACE_SIDES = ("both", "trigger")


@dataclass(frozen=True)
class TraceFusion:
    """How traces enter item vectors (``embedder.traces``, ``embedder.trace_weight``,
    ``embedder.trace_side``).

    Attributes:
        mode: ``fuse`` (separate vectors, averaged) or ``concat`` (one input, item then trace).
        weight: ``w`` of ``normalize(v_item + w * mean v_trace)`` (``fuse`` only); 0: no trace.
        side: ``both`` (every item's vector is fused) or ``trigger`` (only the trigger's: the trace
            is a hypothesis of what comes next, as in HyDE, and candidates stay plain). Retrieval
            reads it; an item-vector folder holds the fused vectors (``both``).
    """

    mode: str = "fuse"
    weight: float = 0.1
    side: str = "both"

    def __post_init__(self) -> None:
        if self.mode not in TRACE_MODES:
            raise ValueError(f"embedder.traces={self.mode!r}: expected one of {list(TRACE_MODES)}")
        if self.side not in TRACE_SIDES:
            raise ValueError(f"embedder.trace_side={self.side!r}: expected one of {list(TRACE_SIDES)}")
        if not (np.isfinite(self.weight) and self.weight >= 0):
            raise ValueError(f"embedder.trace_weight={self.weight}: expected a finite value >= 0")

    @property
    def version(self) -> str:
        """What the vectors depend on beyond the traces themselves (in an item-vector job's id)."""
        return "concat" if self.mode == "concat" else f"fuse-w{self.weight:g}"


def fuse(item: np.ndarray, trace: np.ndarray, weight: float) -> np.ndarray:
    """``normalize(item + weight * trace)`` row by row: (..., D) unit item vectors and (..., D)
    mean trace vectors (all-zero rows: no trace, the item vector unchanged)."""
    v = np.asarray(item, dtype=np.float32) + np.float32(weight) * np.asarray(trace, dtype=np.float32)
    norm = np.linalg.norm(v, axis=-1, keepdims=True)
    return (v / np.maximum(norm, 1e-12)).astype(np.float32)


def trace_vectors(embedder: Encoder, traces: Sequence[Sequence[str]], batch_size: int = 64) -> np.ndarray:
    """(N, D): per item, the mean of the unit vectors of its traces (each embedded alone, in one
    ``encode`` call for all of them); a zero row for an item without a trace."""
    flat = [t for ts in traces for t in ts]
    if not flat:
        return np.zeros((len(traces), embedder.dim), dtype=np.float32)
    vecs = np.asarray(embedder.encode(flat, batch_size=batch_size), dtype=np.float32).reshape(len(flat), -1)
    out = np.zeros((len(traces), vecs.shape[1]), dtype=np.float32)  # a served embedder's dim: known now
    counts = np.array([len(ts) for ts in traces])
    owner = np.repeat(np.arange(len(traces)), counts)
    np.add.at(out, owner, vecs)
    has = counts > 0
    out[has] /= counts[has, None]
    return out


def item_vectors(
    embedder: Encoder,
    items: Sequence[ItemInput],
    traces: Mapping[str, Sequence[str]],
    fusion: TraceFusion,
    batch_size: int = 64,
) -> np.ndarray:
    """(N, D') vectors of ``items`` with their traces (item id -> its traces; none: the item alone),
    made the way ``fusion`` says; D' = heads x D for a multi-head (meta-query) embedder."""
    images = [it.image_path for it in items]
    if fusion.mode == "concat":
        texts = [embedding_text(it, " ".join(traces.get(it.item_id, ())) or None) for it in items]
        return np.asarray(embedder.encode(texts, batch_size=batch_size, images=images)).reshape(
            len(items), -1
        )
    plain = np.asarray(
        embedder.encode([it.text for it in items], batch_size=batch_size, images=images), dtype=np.float32
    )
    if fusion.weight == 0 or not any(traces.get(it.item_id) for it in items):
        return plain.reshape(len(items), -1)
    if plain.ndim == 3:
        raise ValueError(
            "embedder.traces=fuse: a multi-head (meta-query) embedder is fused per head; use concat"
        )
    tv = trace_vectors(embedder, [list(traces.get(it.item_id, ())) for it in items], batch_size)
    return fuse(plain, tv, fusion.weight)
