"""The training loop: sharded model, combined optimizer, validation with early stopping,
checkpoints and resume. Runs alone or under ``torchrun`` (gloo on CPU, nccl on GPU).

Every rank computes its triggers' and targets' embeddings; the targets of all ranks are
gathered (with gradients) so each rank scores against the whole global batch, which makes a
2-process run follow the 1-process loss curve (up to floating-point summation order).
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
from safetensors.torch import load_file, save_file

from tte_recsys.artifacts import atomic_path
from tte_recsys.distributed import local_device
from tte_recsys.losses.mtmh import LossConfig, mtmh_loss
from tte_recsys.models.mtmh import MTMHModel
from tte_recsys.progress import progress
from tte_recsys.training.batches import PAIR_WEIGHTS, BatchConfig, PairBatches, batch_loader
from tte_recsys.training.checkpoint import latest_checkpoint, load_checkpoint, restore_rng, save_checkpoint
from tte_recsys.training.sharding import Sharded, init_tables, process_group, shard_model, unsharded_state

__all__ = ["TrainResult", "TrainerConfig", "fit"]

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
    max_steps: int = 2000
    sparse_lr: float = 0.05
    dense_lr: float = 1e-3
    weight_decay: float = 0.0
    eval_every: int = 250
    patience: int = 3
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


@dataclass
class TrainResult:
    """What :func:`fit` returns (``best_state`` on rank 0 only).

    Attributes:
        best_state: unsharded weights at the best validation (the last step without validation).
        best_step, best_score: where and what the selection metric peaked.
        losses: per step, the global-batch mean of each loss term.
        valid: per validation, ``{"step": ..., **metrics}``.
        steps_per_sec: training throughput of this run (data loading included; validation and the first
            ``WARMUP_STEPS`` steps excluded).
        stopped_early: whether patience ran out before ``max_steps``.
        device: where the model trained (``cpu``, ``cuda:0``).
        plan: table -> sharding type and ranks, as the planner chose them.
    """

    best_state: dict[str, torch.Tensor] | None
    best_step: int
    best_score: float
    losses: list[dict[str, float]] = field(default_factory=list)
    valid: list[dict[str, float]] = field(default_factory=list)
    steps_per_sec: float = float("nan")
    stopped_early: bool = False
    device: str = "cpu"
    plan: dict[str, str] = field(default_factory=dict)


def _candidates(t: torch.Tensor, world: int) -> torch.Tensor:
    """Every rank's (b, D) targets, concatenated in rank order, gradients flowing back to each."""
    return t if world == 1 else torch.cat(dist_fn.all_gather(t), dim=0)


# Loss terms are read back to the host every this many steps (and before each validation and
# checkpoint), not every step: reading a GPU value waits for the step to finish, which would keep
# the host from queueing the next step while the GPU runs this one.
READ_EVERY = 16
# Steps left out of steps_per_sec: loader start-up, lazy CUDA kernel loading, allocator growth.
WARMUP_STEPS = 5


def _mean_over_ranks(pending: list[dict[str, torch.Tensor]], world: int) -> list[dict[str, float]]:
    """Per step, the mean over ranks of each loss term; one collective and one read for all steps."""
    if not pending:
        return []
    keys = sorted(pending[0])
    t = torch.stack([torch.stack([v[k].float() for k in keys]) for v in pending])  # (steps, terms)
    if world > 1:  # on the training device (nccl: CUDA)
        dist.all_reduce(t)
        t /= world
    return [dict(zip(keys, row, strict=True)) for row in t.tolist()]


def _broadcast(value: float, world: int) -> float:
    if world == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=local_device())
    dist.broadcast(t, src=0)
    return float(t.item())


def loader_workers(cfg: TrainerConfig, device: torch.device) -> int:
    """``cfg.num_workers``, or where it is None the default for ``device`` (see TrainerConfig)."""
    if cfg.num_workers is not None:
        return cfg.num_workers
    if device.type == "cpu":
        return 1
    per_process = (os.cpu_count() or 2) // int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return max(1, min(8, per_process // 2))


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
    best_path = ckpt_dir / "best.safetensors"
    result = TrainResult(
        best_state=None, best_step=-1, best_score=-math.inf, device=str(device), plan=sharded.plan
    )
    bad, start = 0, 0
    rng: dict[str, torch.Tensor] = {}
    if resume and (ck := latest_checkpoint(ckpt_dir)) is not None:
        manifest, rng = load_checkpoint(ck, sharded, rank, world)
        loop = manifest["loop"]
        start, bad = int(manifest["step"]), int(loop["bad"])
        result.best_step, result.best_score = int(loop["best_step"]), float(loop["best_score"])
        result.losses, result.valid = loop["losses"], loop["valid"]
        if rank == 0 and best_path.is_file():
            result.best_state = load_file(str(best_path))
        log.info("resumed from %s (step %d)", ck, start)
    heads = list(model.cfg.heads)
    bar = progress(total=cfg.max_steps, initial=start, desc=desc, disable=rank != 0, dynamic_ncols=True)
    train_time, timed_steps = 0.0, 0
    step = start
    pending: list[dict[str, torch.Tensor]] = []  # loss terms of the steps not yet read back

    def read_losses() -> None:
        first = step - len(pending) + 1
        for i, logged in enumerate(_mean_over_ranks(pending, world)):
            if not math.isfinite(logged["loss"]):
                raise FloatingPointError(
                    f"loss is {logged['loss']} at step {first + i}: lower trainer.*_lr or loss temperatures"
                )
            result.losses.append({"step": first + i, **logged})
        pending.clear()
        if result.losses:
            rate = float(bar.format_dict.get("rate") or 0.0)
            loss = result.losses[-1]["loss"]
            bar.set_postfix(loss=f"{loss:.4f}", pairs_s=f"{rate * batches.batch_size:,.0f}", refresh=False)

    pin = device.type == "cuda"  # page-locked batches copy to the GPU without stalling the host
    # On a GPU the batch's B x B label matrix is built there, not by the loader and copied over.
    on_device = None
    if batches.labeler is not None and (cfg.labels_on_device or (cfg.labels_on_device is None and pin)):
        on_device = batches.labeler.on_device(device)
        log.info("batch labels built %s", "on " + str(device) if on_device else "by the loader")
    loader = batch_loader(  # started: it has drawn its workers' seed from the global generator...
        batches, start, cfg.max_steps, loader_workers(cfg, device), pin_memory=pin, labels=on_device is None
    )
    restore_rng(rng)  # ...so a resumed run takes the checkpoint's generator state after that draw
    t0 = time.perf_counter()
    for packed in loader:
        batch = packed.to(device, non_blocking=pin)
        emb = sharded.dmp(batch.features, batch.codes)
        b = len(batch.pos)
        labels = batch.labels if on_device is None else on_device(batch.codes[:b], batch.cand)
        query = {h: emb[h][:b] for h in heads}
        cand = {h: _candidates(emb[h][b:], world) for h in heads}
        terms = mtmh_loss(query, cand, batch.pos, labels, loss_cfg, batch.log_q, batch.mask)
        sharded.optimizer.zero_grad(set_to_none=True)  # torchrec's default zero-fills, then backward adds
        terms["loss"].backward()
        sharded.optimizer.step()
        step += 1
        pending.append({k: v.detach() for k, v in terms.items()})
        bar.update(1)
        validating = (
            validate is not None and cfg.eval_every and (step % cfg.eval_every == 0 or step == cfg.max_steps)
        )
        checkpointing = cfg.ckpt_every and step % cfg.ckpt_every == 0
        if validating or checkpointing or step % READ_EVERY == 0 or step == cfg.max_steps:
            read_losses()
        now = time.perf_counter()
        if step - start > WARMUP_STEPS or cfg.max_steps - start <= WARMUP_STEPS:
            train_time += now - t0
            timed_steps += 1
        stop = False
        if validating and validate is not None:
            state = unsharded_state(sharded.dmp)
            score, metrics = validate(state) if state is not None else (0.0, {})
            score = _broadcast(score, world)
            result.valid.append({"step": step, **metrics})
            if score > result.best_score:
                result.best_score, result.best_step, bad = score, step, 0
                if state is not None:
                    result.best_state = state
                    with atomic_path(best_path) as tmp:
                        save_file(state, str(tmp))
            else:
                bad += 1
            log.info("step %d valid %.4f (best %.4f at %d)", step, score, result.best_score, result.best_step)
            stop = bad >= cfg.patience
        if checkpointing or (cfg.ckpt_every and stop):  # losses were read with the validation
            loop = {
                "bad": bad,
                "best_step": result.best_step,
                "best_score": result.best_score,
                "losses": result.losses,
                "valid": result.valid,
            }
            save_checkpoint(ckpt_dir, step, sharded, loop, rank, world, cfg.keep_ckpts)
        if stop:
            result.stopped_early = True
            break
        t0 = time.perf_counter()
    read_losses()
    bar.close()
    result.steps_per_sec = timed_steps / train_time if train_time > 0 else float("nan")
    if validate is None or not cfg.eval_every or result.best_step < 0:  # unvalidated: the last state
        result.best_state, result.best_step = unsharded_state(sharded.dmp), step
    return result
