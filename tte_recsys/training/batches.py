"""Training batches of (trigger, co-engaged target) pairs, built in DataLoader workers.

Batches are indexed by *global step*: step ``s`` is batch ``s % steps_per_epoch`` of epoch
``s // steps_per_epoch``, whose pair order is a permutation seeded by (seed, epoch). Every rank
builds the same global batch and keeps its slice of triggers, so a run resumes at any step, and
2 processes see exactly the batches 1 process sees. Each rank's candidates are every rank's
targets (gathered in the loop), so the label matrix and the logQ terms cover the global batch.
Everything here is numpy (no polars in workers: pitfalls.md).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch
from threadpoolctl import threadpool_limits
from torch.utils.data import DataLoader, Dataset
from torchrec import KeyedJaggedTensor

from tte_recsys.data.labels import RelevanceLabeler
from tte_recsys.models.mtmh import ItemFeatures

__all__ = ["Batch", "PairBatches", "batch_loader"]


@dataclass
class Batch:
    """One rank's share of a global batch.

    Attributes:
        features: KJT over ``codes`` (this rank's b triggers, then its b targets).
        codes: (2b,) item codes.
        pos: (b,) index of each trigger's own target among the global candidates.
        labels: (b, B) relevance of each trigger to every global candidate (None: not needed).
        log_q: (B,) log frequency of each global candidate as a training target.
        mask: (b, B) True where a candidate is the same item as the row's positive.
    """

    features: KeyedJaggedTensor
    codes: torch.Tensor
    pos: torch.Tensor
    labels: torch.Tensor | None
    log_q: torch.Tensor
    mask: torch.Tensor

    def _map(self, fn: Callable[[Any], Any]) -> Batch:
        """``fn`` applied to every tensor (and the KJT, which has the same ``to``/``pin_memory``)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            out[f.name] = None if v is None else fn(v)
        return Batch(**out)

    def to(self, device: torch.device, non_blocking: bool = False) -> Batch:
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> Batch:
        """A copy in page-locked memory, so ``to(cuda, non_blocking=True)`` does not stall the host."""
        return self._map(lambda t: t.pin_memory())


class PairBatches(Dataset[dict[str, np.ndarray]]):
    """Map-style dataset: global step -> this rank's batch arrays (see :func:`collate`).

    Args:
        src, dst: (P,) train pair item codes (each unique directed pair once per epoch).
        features: item features for the KJT.
        labeler: relevance labels for the semantic loss (None: no labels built).
        batch_size: global batch size (divisible by ``world_size``).
        id_dropout: share of batch items whose id feature is left out (seeded by step), so the
            model learns to place items from their other features and content: how it sees a cold
            item, whose id embedding never trained.
    """

    def __init__(
        self,
        src: np.ndarray,
        dst: np.ndarray,
        features: ItemFeatures,
        labeler: RelevanceLabeler | None,
        batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        id_dropout: float = 0.0,
    ) -> None:
        if not 0.0 <= id_dropout < 1.0:
            raise ValueError(f"trainer.id_dropout={id_dropout}: expected 0 <= p < 1")
        if batch_size % world_size:
            raise ValueError(
                f"trainer.batch_size={batch_size} must be divisible by the world size {world_size}"
            )
        if len(src) < batch_size:
            raise ValueError(
                f"only {len(src)} training pairs for trainer.batch_size={batch_size}: lower the batch size"
            )
        self.src, self.dst = np.asarray(src, np.int64), np.asarray(dst, np.int64)
        self.features, self.labeler = features, labeler
        self.batch_size, self.seed, self.rank, self.world = batch_size, seed, rank, world_size
        self.id_dropout = id_dropout
        counts = np.bincount(self.dst, minlength=features.num_items).astype(np.float64)
        with np.errstate(divide="ignore"):
            self.log_q = np.log(counts / counts.sum()).astype(np.float32)  # (N,)
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
        idx = self.pairs_of_step(step)
        src, dst = self.src[idx], self.dst[idx]  # (B,)
        b = self.batch_size // self.world
        lo = self.rank * b
        q, t = src[lo : lo + b], dst[lo : lo + b]  # (b,)
        codes = np.concatenate([q, t])
        drop = None
        if self.id_dropout > 0:
            drop = np.random.default_rng([self.seed, step, self.rank, 1]).random(len(codes)) < self.id_dropout
        values, lengths = self.features.lookup(codes, drop)
        out = {
            "codes": codes,
            "values": values,
            "lengths": lengths,
            "pos": np.arange(lo, lo + b),
            "log_q": self.log_q[dst],
            "mask": t[:, None] == dst[None, :],
        }
        if self.labeler is not None:
            out["labels"] = self.labeler.cross(q, dst)
        return out


def collate(features: ItemFeatures, arrays: dict[str, np.ndarray]) -> Batch:
    """Batch arrays -> a :class:`Batch` (in the loader's worker; see :func:`batch_loader`)."""
    labels = arrays.get("labels")
    return Batch(
        features=features.kjt_from_arrays(arrays["values"], arrays["lengths"]),
        codes=torch.from_numpy(arrays["codes"]),
        pos=torch.from_numpy(arrays["pos"]),
        labels=None if labels is None else torch.from_numpy(labels),
        log_q=torch.from_numpy(arrays["log_q"]),
        mask=torch.from_numpy(arrays["mask"]),
    )


class _Collated(Dataset[Batch]):
    """Step -> the finished :class:`Batch`, KJT included, built in the loader's worker."""

    def __init__(self, batches: PairBatches) -> None:
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, step: int) -> Batch:
        return collate(self.batches.features, self.batches[step])


def _worker_init(worker_id: int) -> None:
    """One BLAS thread per loader worker. The batch's label matrix is a BLAS product (genre
    incidence, teacher vectors); at numpy's default thread count a worker competes with the
    training threads: on 2 cores the full loop ran at 0.6x the bare step, against 0.95x with this."""
    threadpool_limits(1)


def batch_loader(
    batches: PairBatches, start: int, stop: int, num_workers: int, pin_memory: bool = False
) -> Iterator[Batch]:
    """Batches for global steps ``start .. stop - 1``, prepared by ``num_workers`` worker processes.

    ``pin_memory``: the loader's thread copies each batch to page-locked memory, so that
    ``Batch.to(cuda, non_blocking=True)`` neither stalls the host nor waits for the GPU.
    """
    loader = DataLoader(
        _Collated(batches),
        batch_size=None,  # items are whole batches already
        sampler=range(start, stop),
        num_workers=num_workers,
        prefetch_factor=4 if num_workers else None,
        persistent_workers=False,
        pin_memory=pin_memory,
        worker_init_fn=_worker_init,
    )
    yield from loader
