"""Training batches of (trigger, co-engaged target) pairs, built in DataLoader workers.

Batches are indexed by *global step*: step ``s`` is batch ``s % steps_per_epoch`` of epoch
``s // steps_per_epoch``, whose pair order is a permutation seeded by (seed, epoch). Every rank
builds the same global batch and keeps its slice of triggers, so a run resumes at any step, and
2 processes see exactly the batches 1 process sees. Each rank's candidates are every rank's
targets (gathered in the loop), so the label matrix and the logQ terms cover the global batch.
Everything here is numpy (no polars in workers: docs/notes/pitfalls.md).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass, fields
from typing import Any, Protocol

import numpy as np
import torch
from threadpoolctl import threadpool_limits
from torch.utils.data import DataLoader, Dataset
from torchrec import KeyedJaggedTensor

from tte_recsys.data.labels import RelevanceLabeler
from tte_recsys.models.mtmh import ItemFeatures

__all__ = [
    "PAIR_WEIGHTS",
    "Batch",
    "BatchConfig",
    "PackedBatch",
    "PairBatches",
    "batch_loader",
    "collate",
    "epoch_pairs",
    "mixed_log_q",
]

PAIR_WEIGHTS = ("unique", "count")


@dataclass
class Batch:
    """One rank's share of a global batch.

    Attributes:
        features: KJT over ``codes`` (this rank's b triggers, its b targets, its u uniform negatives).
        codes: (2b + u,) item codes.
        pos: (b,) index of each trigger's own target among the global candidates.
        labels: (b, B) relevance of each trigger to every global candidate (None: not needed, or
            built on the training device: ``DeviceLabels``).
        log_q: (B,) log expected count of each global candidate in a batch (:func:`mixed_log_q`).
        mask: (b, B) True where a candidate is the same item as the row's positive.
        cand: (B,) item codes of the global candidates (every rank's targets and uniform negatives).
    """

    features: KeyedJaggedTensor
    codes: torch.Tensor
    pos: torch.Tensor
    labels: torch.Tensor | None
    log_q: torch.Tensor
    mask: torch.Tensor
    cand: torch.Tensor

    def to(self, device: torch.device, non_blocking: bool = False) -> Batch:
        """Every tensor (and the KJT) on ``device``."""
        out: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            out[f.name] = None if v is None else v.to(device, non_blocking=non_blocking)
        return Batch(**out)


class _Columns(Protocol):
    """A table by column name: a polars frame, or a dict of arrays."""

    def __getitem__(self, name: str, /) -> Any: ...


def epoch_pairs(pairs: _Columns, weight: str) -> tuple[np.ndarray, np.ndarray]:
    """The (trigger, target) pairs one epoch goes through (``TrainerConfig.pair_weight``).

    ``unique``: each distinct pair once. ``count``: each pair once per time the train windows saw
    it, so pairs many users repeat weigh more, in the loss and in the logQ frequencies alike.

    Args:
        pairs: columns ``src``, ``dst``, ``count`` of the distinct train pairs
            (``TemporalSplit.train_pairs``, or a dict of (P,) arrays).
        weight: one of :data:`PAIR_WEIGHTS` (validated by ``TrainerConfig``).
    """
    src, dst = np.asarray(pairs["src"]), np.asarray(pairs["dst"])
    if weight == "unique":
        return src, dst
    count = np.asarray(pairs["count"], np.int64)
    if len(count) and count.min() < 1:
        raise ValueError(f"pair counts must be >= 1, got {count.min()}")
    return np.repeat(src, count), np.repeat(dst, count)


def mixed_log_q(counts: np.ndarray, batch_size: int, uniform: int) -> np.ndarray:
    """log Q of each item as a candidate: its expected count among a batch's candidates, up to a
    constant (which a softmax row ignores).

    A batch holds ``batch_size`` targets, each item j with probability ``p_j = counts_j / sum``,
    plus ``uniform`` items drawn uniformly from the N catalog items, so item j is expected
    ``batch_size * p_j + uniform / N`` times; this returns ``log(p_j + uniform / (batch_size * N))``.
    Without uniform negatives that is ``log p_j`` (-inf for an item that is never a target, and
    so never a candidate).
    """
    p = counts / counts.sum()
    with np.errstate(divide="ignore"):
        return np.log(p + uniform / (batch_size * len(counts))).astype(np.float32)


@dataclass(frozen=True)
class BatchConfig:
    """What a batch holds (the batch fields of ``TrainerConfig``; :meth:`TrainerConfig.batches`).

    Attributes:
        batch_size: global batch size (divisible by the world size).
        seed: the batch order's and the id dropout's seed.
        id_dropout: share of batch items whose id feature is left out (seeded by step), so the
            model learns to place items from their other features and content: how it sees a cold
            item, whose id embedding never trained.
        uniform_negatives: items drawn uniformly from the whole catalog per global batch and added
            to the candidates (mixed negative sampling, Yang et al., 2020): in-batch candidates are
            only items that are someone's train target, so items that never are (cold, long tail)
            are never scored in training. Each rank draws its share; divisible by the world size.
    """

    batch_size: int
    seed: int = 0
    id_dropout: float = 0.0
    uniform_negatives: int = 0

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"trainer.batch_size={self.batch_size}: expected >= 1")
        if not 0.0 <= self.id_dropout < 1.0:
            raise ValueError(f"trainer.id_dropout={self.id_dropout}: expected 0 <= p < 1")
        if self.uniform_negatives < 0:
            raise ValueError(f"trainer.uniform_negatives={self.uniform_negatives}: expected >= 0")


class PairBatches(Dataset[dict[str, np.ndarray]]):
    """Map-style dataset: global step -> this rank's batch arrays (see :func:`collate`).

    Args:
        src, dst: (P,) train pair item codes (each unique directed pair once per epoch).
        features: item features for the KJT.
        labeler: relevance labels for the semantic loss (None: no labels built).
        cfg: what a batch holds (size, seed, id dropout, uniform negatives).
        rank, world_size: this process's share of every global batch.
    """

    def __init__(
        self,
        src: np.ndarray,
        dst: np.ndarray,
        features: ItemFeatures,
        labeler: RelevanceLabeler | None,
        cfg: BatchConfig,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        batch_size, seed, uniform_negatives = cfg.batch_size, cfg.seed, cfg.uniform_negatives
        if batch_size % world_size:
            raise ValueError(
                f"trainer.batch_size={batch_size} must be divisible by the world size {world_size}"
            )
        if uniform_negatives < 0 or uniform_negatives % world_size:
            raise ValueError(
                f"trainer.uniform_negatives={uniform_negatives}: expected >= 0 and divisible by the "
                f"world size {world_size}"
            )
        if len(src) < batch_size:
            raise ValueError(
                f"only {len(src)} training pairs for trainer.batch_size={batch_size}: lower the batch size"
            )
        self.src, self.dst = np.asarray(src, np.int64), np.asarray(dst, np.int64)
        self.features, self.labeler = features, labeler
        self.batch_size, self.seed, self.rank, self.world = batch_size, seed, rank, world_size
        self.id_dropout, self.uniform = cfg.id_dropout, uniform_negatives
        counts = np.bincount(self.dst, minlength=features.num_items).astype(np.float64)
        self.log_q = mixed_log_q(counts, batch_size, uniform_negatives)  # (N,)
        self._perm: tuple[int, np.ndarray] | None = None

    @property
    def steps_per_epoch(self) -> int:
        return len(self.src) // self.batch_size

    def __len__(self) -> int:
        return self.steps_per_epoch

    def pairs_of_step(self, step: int) -> np.ndarray:
        """Indices of the global batch's pairs."""
        epoch, g = divmod(step, self.steps_per_epoch)
        if self._perm is None or self._perm[0] != epoch:
            self._perm = (epoch, np.random.default_rng([self.seed, epoch]).permutation(len(self.src)))
        return self._perm[1][g * self.batch_size : (g + 1) * self.batch_size]

    def __getitem__(self, step: int) -> dict[str, np.ndarray]:
        return self.arrays(step)

    def arrays(self, step: int, labels: bool = True) -> dict[str, np.ndarray]:
        """The batch of global step ``step`` (``labels=False``: without the label matrix).

        ``codes`` are this rank's b triggers, its b targets, then its u uniform negatives; ``cand``
        lists the global candidates in the order the loop gathers them (each rank's targets then
        its negatives), and ``pos`` each trigger's own target among them.
        """
        idx = self.pairs_of_step(step)
        src, dst = self.src[idx], self.dst[idx]  # (B,)
        b, u = self.batch_size // self.world, self.uniform // self.world
        lo = self.rank * b
        q, t = src[lo : lo + b], dst[lo : lo + b]  # (b,)
        cand, codes = dst, np.concatenate([q, t])
        if u:
            neg = np.random.default_rng([self.seed, step, 2]).integers(
                0, self.features.num_items, self.uniform
            )
            parts = [(dst[r * b : (r + 1) * b], neg[r * u : (r + 1) * u]) for r in range(self.world)]
            cand = np.concatenate([a for pair in parts for a in pair])
            codes = np.concatenate([q, t, parts[self.rank][1]])
        drop = None
        if self.id_dropout > 0:
            drop = np.random.default_rng([self.seed, step, self.rank, 1]).random(len(codes)) < self.id_dropout
        values, lengths = self.features.lookup(codes, drop)
        out = {
            "codes": codes,
            "values": values,
            "lengths": lengths,
            "pos": np.arange(b) + self.rank * (b + u),
            "log_q": self.log_q[cand],
            "cand": cand,
        }
        if labels and self.labeler is not None:
            out["labels"] = self.labeler.cross(q, cand)
        return out


_ALIGN = 64  # each array starts at a multiple of this many bytes: any dtype can view it in place


@dataclass(frozen=True)
class PackedBatch:
    """A finished batch as one byte buffer and its layout: what a loader worker sends.

    One shared-memory tensor crosses from the worker instead of one per array. Each tensor costs
    the main process a file-descriptor round trip and an unpickle; on a GPU machine that capped the
    loader at about 190 batches/s with 4 workers or 8. It is pinned and copied to the GPU in one
    piece, and :meth:`to` gives the :class:`Batch` as views of the copy, with the (b, B) duplicate
    mask made there from the codes. The KJT's offsets and per-key lengths are computed in the
    worker, so building it on the GPU never waits for the device.
    """

    buffer: torch.Tensor  # uint8
    layout: tuple[
        tuple[str, torch.dtype, tuple[int, ...], int, int], ...
    ]  # name, dtype, shape, offset, bytes
    keys: tuple[str, ...]
    length_per_key: tuple[int, ...]

    @classmethod
    def pack(cls, keys: list[str], arrays: dict[str, np.ndarray]) -> PackedBatch:
        lengths = np.asarray(arrays["lengths"], np.int32)
        parts = {
            **{k: v for k, v in arrays.items() if k != "lengths"},
            "lengths": lengths,
            "offsets": np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)]).astype(np.int32),
        }
        layout, size = [], 0
        for name, a in parts.items():
            parts[name] = a = np.ascontiguousarray(a)
            layout.append((name, torch.from_numpy(a[:0]).dtype, a.shape, size, a.nbytes))
            size += -(-a.nbytes // _ALIGN) * _ALIGN
        buffer = torch.empty(size, dtype=torch.uint8)
        flat = buffer.numpy()
        for (_, _, _, off, n), a in zip(layout, parts.values(), strict=True):
            flat[off : off + n] = a.reshape(-1).view(np.uint8)
        per_key = lengths.reshape(len(keys), -1).sum(axis=1)
        return cls(buffer, tuple(layout), tuple(keys), tuple(int(n) for n in per_key))

    def pin_memory(self) -> PackedBatch:
        """The buffer in page-locked memory, so ``to(cuda, non_blocking=True)`` does not stall the host."""
        return dataclasses.replace(self, buffer=self.buffer.pin_memory())

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        """The :class:`Batch` on ``device``: one copy of the buffer (none on the CPU), then views."""
        buf = self.buffer.to(device, non_blocking=non_blocking)
        t: dict[str, torch.Tensor] = {}
        for name, dtype, shape, off, n in self.layout:
            t[name] = buf[off : off + n].view(dtype).view(shape)
        features = KeyedJaggedTensor(
            keys=list(self.keys),
            values=t["values"],
            lengths=t["lengths"],
            offsets=t["offsets"],
            stride=len(t["codes"]),
            length_per_key=list(self.length_per_key),
        )
        cand, pos = t["cand"], t["pos"]
        mask = cand[pos][:, None] == cand[None, :]  # the rows' positives among the candidates
        return Batch(features, t["codes"], pos, t.get("labels"), t["log_q"], mask, cand)


def collate(features: ItemFeatures, arrays: dict[str, np.ndarray]) -> Batch:
    """Batch arrays (from :class:`PairBatches`) -> a :class:`Batch` on the CPU."""
    return PackedBatch.pack(features.names, arrays).to("cpu")


class _Collated(Dataset[PackedBatch]):
    """Step -> the finished batch, packed in the loader's worker."""

    def __init__(self, batches: PairBatches, labels: bool) -> None:
        self.batches, self.labels = batches, labels

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, step: int) -> PackedBatch:
        return PackedBatch.pack(self.batches.features.names, self.batches.arrays(step, self.labels))


def _worker_init(worker_id: int) -> None:
    """One BLAS thread per loader worker. The batch's label matrix is a BLAS product (genre
    incidence, teacher vectors); at numpy's default thread count a worker competes with the
    training threads: on 2 cores the full loop ran at 0.6x the bare step, against 0.95x with this."""
    threadpool_limits(1)


def batch_loader(
    batches: PairBatches,
    start: int,
    stop: int,
    num_workers: int,
    pin_memory: bool = False,
    labels: bool = True,
) -> Iterator[PackedBatch]:
    """Packed batches for global steps ``start .. stop - 1``, prepared by ``num_workers`` worker
    processes; ``.to(device)`` gives each :class:`Batch`. Started on return: the workers are
    running, and their base seed has been drawn from the global generator.

    ``pin_memory``: the loader's thread copies each buffer to page-locked memory, so that
    ``PackedBatch.to(cuda, non_blocking=True)`` neither stalls the host nor waits for the GPU.
    ``labels=False``: the workers leave the label matrix out (the loop builds it on the device).
    """
    loader = DataLoader(
        _Collated(batches, labels),
        batch_size=None,  # items are whole batches already
        sampler=range(start, stop),
        num_workers=num_workers,
        prefetch_factor=4 if num_workers else None,
        persistent_workers=False,
        pin_memory=pin_memory,
        worker_init_fn=_worker_init,
    )
    return iter(loader)
