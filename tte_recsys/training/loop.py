"""The training loop: sharded model, combined optimizer, a step function in a short loop, and
around it the callbacks of :mod:`tte_recsys.training.callbacks` (loss read-back, timing,
validation with early stopping, checkpoints); resume. Runs alone or under ``torchrun`` (gloo on
CPU, nccl on GPU).

Every rank computes its triggers' and targets' embeddings; the targets of all ranks are
gathered (with gradients) so each rank scores against the whole global batch, which makes a
2-process run follow the 1-process loss curve (up to floating-point summation order).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.distributed.nn.functional as dist_fn
from safetensors.torch import load_file

from tte_recsys.data.labels import DeviceLabels
from tte_recsys.distributed import local_device
from tte_recsys.losses.mtmh import LossConfig, mtmh_loss
from tte_recsys.models.mtmh import MTMHModel
from tte_recsys.training.batches import PAIR_WEIGHTS, BatchConfig, PackedBatch, PairBatches, batch_loader
from tte_recsys.training.callbacks import (
    READ_EVERY,
    Callback,
    Checkpointing,
    EarlyStopping,
    LoopState,
    LossReadback,
    ProgressBar,
    Timer,
    TrainResult,
)
from tte_recsys.training.checkpoint import latest_checkpoint, load_checkpoint, restore_rng, save_checkpoint
from tte_recsys.training.sharding import Sharded, init_tables, process_group, shard_model, unsharded_state

__all__ = ["READ_EVERY", "TrainResult", "TrainStep", "TrainerConfig", "fit", "loader_workers", "run_steps"]

log = logging.getLogger(__name__)
Validate = Callable[[dict[str, torch.Tensor]], tuple[float, dict[str, float]]]


@dataclass(frozen=True)
class TrainerConfig:
    """Optimisation and bookkeeping.

    Attributes:
        batch_size: global batch (pairs per step over all processes).
        max_steps: step budget; training may stop earlier on the valid metric.
        sparse_lr: RowWiseAdagrad learning rate of the embedding tables.
        dense_lr, weight_decay: Adam on the dense parameters.
        eval_every: validate (rank 0) every N steps and at the end; 0: never.
        patience: stop after this many validations without improvement.
        ckpt_every: checkpoint every N steps; 0: never. keep_ckpts: how many to keep.
        num_workers: DataLoader worker processes building batches; None: 1 on CPU (its cores
            train), on a GPU half of this process's share of the cores, at most 8 (the H100
            loop needed 4-8 to keep up: docs/benchmarks.md).
        id_dropout: share of batch items trained without their id feature (see ``PairBatches``).
        uniform_negatives: catalog items drawn uniformly per global batch as extra candidates
            (mixed negative sampling, see ``PairBatches``); 0: in-batch targets only.
        pair_weight: ``unique`` (each distinct train pair once per epoch) or ``count`` (once per
            co-engagement counted): see :func:`~tte_recsys.training.batches.epoch_pairs`.
        labels_on_device: build each batch's label matrix on the training device from the
            labeler's item tables (``DeviceLabels``) instead of in the loader; None: on a GPU.
            Labels whose item tables would not fit there (``RelevanceLabeler.on_device``) stay in
            the loader.
        seed: model init, table init and batch order.
    """

    batch_size: int = 1024
    max_steps: int = 3000
    sparse_lr: float = 0.05
    dense_lr: float = 1e-3
    weight_decay: float = 0.0
    eval_every: int = 50
    patience: int = 4
    ckpt_every: int = 250
    keep_ckpts: int = 2
    num_workers: int | None = None
    id_dropout: float = 0.0
    uniform_negatives: int = 0
    pair_weight: str = "unique"
    labels_on_device: bool | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("batch_size", "max_steps", "patience", "keep_ckpts"):
            if getattr(self, name) < 1:
                raise ValueError(f"trainer.{name}={getattr(self, name)}: expected >= 1")
        for name in ("eval_every", "ckpt_every", "num_workers", "uniform_negatives"):
            if (getattr(self, name) or 0) < 0:
                raise ValueError(f"trainer.{name}={getattr(self, name)}: expected >= 0")
        for name in ("sparse_lr", "dense_lr"):
            if not getattr(self, name) > 0:
                raise ValueError(f"trainer.{name}={getattr(self, name)}: expected > 0")
        self.batches()  # its own checks
        if self.pair_weight not in PAIR_WEIGHTS:
            raise ValueError(
                f"trainer.pair_weight={self.pair_weight!r}: expected one of {list(PAIR_WEIGHTS)}"
            )

    def batches(self) -> BatchConfig:
        """What each of this training's batches holds."""
        return BatchConfig(self.batch_size, self.seed, self.id_dropout, self.uniform_negatives)


def _candidates(t: torch.Tensor, world: int) -> torch.Tensor:
    """Every rank's (b, D) targets, concatenated in rank order, gradients flowing back to each."""
    return t if world == 1 else torch.cat(dist_fn.all_gather(t), dim=0)


class TrainStep:
    """One optimisation step on a packed batch: forward through the sharded model, the MTMH
    loss against the global batch's targets, backward, the optimisers' step. Returns the loss
    terms, detached and left on the device (reading them waits for the step: see READ_EVERY).

    Args:
        labels: builds each batch's label matrix on the device (``DeviceLabels``); None: the
            loader built it.
        pin: batches come page-locked, copied to the device without stalling the host.
    """

    def __init__(
        self,
        sharded: Sharded,
        heads: list[str],
        loss_cfg: LossConfig,
        device: torch.device,
        world: int,
        labels: DeviceLabels | None = None,
        pin: bool = False,
    ) -> None:
        self.sharded, self.heads, self.loss_cfg = sharded, heads, loss_cfg
        self.device, self.world, self.labels, self.pin = device, world, labels, pin

    def __call__(self, packed: PackedBatch) -> dict[str, torch.Tensor]:
        batch = packed.to(self.device, non_blocking=self.pin)
        emb = self.sharded.dmp(batch.features, batch.codes)
        b = len(batch.pos)
        labels = batch.labels if self.labels is None else self.labels(batch.codes[:b], batch.cand)
        query = {h: emb[h][:b] for h in self.heads}
        cand = {h: _candidates(emb[h][b:], self.world) for h in self.heads}
        terms = mtmh_loss(query, cand, batch.pos, labels, self.loss_cfg, batch.log_q, batch.mask)
        self.sharded.optimizer.zero_grad(
            set_to_none=True
        )  # torchrec's default zero-fills, then backward adds
        terms["loss"].backward()
        self.sharded.optimizer.step()
        return {k: v.detach() for k, v in terms.items()}


def _device_labels(batches: PairBatches, cfg: TrainerConfig, device: torch.device) -> DeviceLabels | None:
    """On a GPU (or with ``labels_on_device``) the batch's B x B label matrix is built there, not
    by the loader and copied over; None where there are no labels or they stay in the loader."""
    wanted = cfg.labels_on_device or (cfg.labels_on_device is None and device.type == "cuda")
    if batches.labeler is None or not wanted:
        return None
    on_device = batches.labeler.on_device(device)
    log.info("batch labels built %s", "on " + str(device) if on_device else "by the loader")
    return on_device


def _resume(ckpt_dir: Path, sharded: Sharded, rank: int, world: int, s: LoopState) -> dict[str, torch.Tensor]:
    """Continue ``s`` from the newest complete checkpoint in ``ckpt_dir`` (none: a fresh start);
    returns the generator state it saved (restored once the loader has started)."""
    ck = latest_checkpoint(ckpt_dir)
    if ck is None:
        return {}
    manifest, rng = load_checkpoint(ck, sharded, rank, world)
    s.restore(int(manifest["step"]), manifest["loop"])
    if rank == 0 and (best := ckpt_dir / "best.safetensors").is_file():
        s.result.best_state = load_file(str(best))
    log.info("resumed from %s (step %d)", ck, s.start)
    return rng


def loader_workers(cfg: TrainerConfig, device: torch.device) -> int:
    """``cfg.num_workers``, or where it is None the default for ``device`` (see TrainerConfig)."""
    if cfg.num_workers is not None:
        return cfg.num_workers
    if device.type == "cpu":
        return 1
    per_process = (os.cpu_count() or 2) // int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return max(1, min(8, per_process // 2))


def _save(
    ckpt_dir: Path, sharded: Sharded, rank: int, world: int, keep: int, step: int, loop: dict[str, Any]
) -> Path:
    return save_checkpoint(ckpt_dir, step, sharded, loop, rank, world, keep)


def _callbacks(
    cfg: TrainerConfig,
    bar: ProgressBar,
    validate: Validate | None,
    state: Callable[[], dict[str, torch.Tensor] | None],
    ckpt_dir: Path,
    save: Callable[[int, dict[str, Any]], object],
) -> list[Callback]:
    """The callbacks ``cfg`` asks for, in the order they run (losses are read before they are
    timed; a checkpoint follows the validation that may stop training)."""
    callbacks: list[Callback] = [LossReadback(), Timer(), bar]
    if validate is not None and cfg.eval_every:
        best = ckpt_dir / "best.safetensors"
        callbacks.append(EarlyStopping(validate, state, cfg.eval_every, cfg.patience, best))
    if cfg.ckpt_every:
        callbacks.append(Checkpointing(save, cfg.ckpt_every))
    return callbacks


def run_steps(
    loader: Iterator[PackedBatch],
    step: Callable[[PackedBatch], dict[str, torch.Tensor]],
    s: LoopState,
    callbacks: Sequence[Callback],
) -> None:
    """The loop: ``step`` on each batch until the budget or a callback's stop, the callbacks
    around it (:mod:`tte_recsys.training.callbacks` says when each hook runs)."""
    for cb in callbacks:
        cb.on_train_start(s)
    while s.step < s.max_steps and not s.stop:
        for cb in callbacks:
            cb.on_batch_start(s)
        s.end_step(step(next(loader)))
        for cb in callbacks:
            cb.on_step_end(s)
    for cb in callbacks:
        cb.on_train_end(s)


def fit(
    model: MTMHModel,
    batches: PairBatches,
    cfg: TrainerConfig,
    loss_cfg: LossConfig,
    ckpt_dir: Path,
    validate: Validate | None = None,
    resume: bool = False,
    device: torch.device | None = None,
    desc: str = "train",
) -> TrainResult:
    """Shard ``model`` (its EBC on ``meta``), train it, return the best unsharded state.

    Args:
        batches: this rank's batch builder (its ``rank``/``world_size`` match the process group).
        ckpt_dir: checkpoints go here; ``best.safetensors`` holds the best state so far.
        validate: unsharded state -> (selection score, metrics), higher is better; called on rank 0
            only, but pass it (or None) on every rank alike: it decides the collective schedule.
        resume: continue from the newest complete checkpoint in ``ckpt_dir`` (fresh start when none).
    """
    rank, world = process_group()
    device = device or local_device()
    loss_cfg.check_heads(model.cfg.heads)
    sharded: Sharded = shard_model(model, device, cfg.sparse_lr, cfg.dense_lr, cfg.weight_decay)
    init_tables(sharded.dmp, cfg.seed)
    log.info("sharding plan: %s", sharded.plan)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    result = TrainResult(None, best_step=-1, best_score=-math.inf, device=str(device), plan=sharded.plan)
    s = LoopState(result, cfg.max_steps, world)
    rng = _resume(ckpt_dir, sharded, rank, world, s) if resume else {}
    pin, labels = device.type == "cuda", _device_labels(batches, cfg, device)
    step = TrainStep(sharded, list(model.cfg.heads), loss_cfg, device, world, labels, pin)
    loader = batch_loader(  # started: it has drawn its workers' seed from the global generator...
        batches, s.start, cfg.max_steps, loader_workers(cfg, device), pin_memory=pin, labels=labels is None
    )
    restore_rng(rng)  # ...so a resumed run takes the checkpoint's generator state after that draw
    state = partial(unsharded_state, sharded.dmp)
    bar = ProgressBar(desc, batches.batch_size, enabled=rank == 0)
    save = partial(_save, ckpt_dir, sharded, rank, world, cfg.keep_ckpts)
    run_steps(loader, step, s, _callbacks(cfg, bar, validate, state, ckpt_dir, save))
    if validate is None or not cfg.eval_every or result.best_step < 0:  # unvalidated: the last state
        result.best_state, result.best_step = state(), s.step
    return result
