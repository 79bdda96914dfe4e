"""What happens around each training step, as callbacks (in the Lightning sense): the loss
read-back, throughput timing, the progress bar, validation with early stopping, checkpoints.

:func:`tte_recsys.training.loop.fit` runs a step function in a short loop and calls, in list
order, each callback's :meth:`~Callback.on_train_start` once, :meth:`~Callback.on_batch_start`
before each batch is fetched, :meth:`~Callback.on_step_end` after each optimiser step, and
:meth:`~Callback.on_train_end` once. They share one :class:`LoopState`: the step count, the
result being filled in, the early-stopping count and the loss terms not yet read back. A
callback that needs the losses on the host (a checkpoint saves them) calls
:meth:`LoopState.read_losses` itself. Under several processes every rank runs every callback at
the same steps: the read-back, the validation's state gather and the checkpoint are collectives.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from safetensors.torch import save_file

from tte_recsys.artifacts import atomic_path
from tte_recsys.distributed import local_device
from tte_recsys.progress import progress

__all__ = [
    "READ_EVERY",
    "WARMUP_STEPS",
    "Callback",
    "Checkpointing",
    "EarlyStopping",
    "LoopState",
    "LossReadback",
    "ProgressBar",
    "Timer",
    "TrainResult",
    "mean_over_ranks",
]

log = logging.getLogger(__name__)
State = dict[str, torch.Tensor]

# Loss terms are read back to the host every this many steps (and before each validation and
# checkpoint), not every step: reading a GPU value waits for the step to finish, which would keep
# the host from queueing the next step while the GPU runs this one.
READ_EVERY = 16
# Steps left out of steps_per_sec: loader start-up, lazy CUDA kernel loading, allocator growth.
WARMUP_STEPS = 5


def mean_over_ranks(pending: list[State], world: int) -> list[dict[str, float]]:
    """Per step, the mean over ranks of each loss term; one collective and one read for all steps."""
    if not pending:
        return []
    keys = sorted(pending[0])
    t = torch.stack([torch.stack([v[k].float() for k in keys]) for v in pending])  # (steps, terms)
    if world > 1:  # on the training device (nccl: CUDA)
        dist.all_reduce(t)
        t /= world
    return [dict(zip(keys, row, strict=True)) for row in t.tolist()]


def broadcast(value: float, world: int) -> float:
    """Rank 0's ``value`` on every rank."""
    if world == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=local_device())
    dist.broadcast(t, src=0)
    return float(t.item())


@dataclass
class TrainResult:
    """What :func:`fit` returns (``best_state`` on rank 0 only).

    Attributes:
        best_state: unsharded weights at the best validation (the last step without validation).
        best_step, best_score: where and what the selection metric peaked.
        losses: per step, the global-batch mean of each loss term.
        valid: per validation, ``{"step": ..., **metrics}``.
        steps_per_sec: training throughput of this run (data loading included; validation and the first
            ``WARMUP_STEPS`` steps excluded: :class:`~tte_recsys.training.callbacks.Timer`).
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


@dataclass
class LoopState:
    """What the loop and its callbacks share.

    Attributes:
        result: what ``fit`` returns, filled in as training goes.
        max_steps: the step budget. world: the number of processes.
        start: the step this run started (or resumed) at. step: the steps done so far.
        bad: validations since the best one (early stopping's count).
        stop: set by a callback to end training after this step.
        pending: the loss terms (detached, on the device) of the steps not yet read back.
    """

    result: TrainResult
    max_steps: int
    world: int = 1
    start: int = 0
    step: int = 0
    bad: int = 0
    stop: bool = False
    pending: list[State] = field(default_factory=list)

    def end_step(self, terms: State) -> None:
        """Count a finished step and keep its loss terms for the next read-back."""
        self.step += 1
        self.pending.append(terms)

    def read_losses(self) -> None:
        """Move the pending steps' loss terms, averaged over ranks, to ``result.losses``; a
        non-finite loss is named with its step. A collective: every rank calls it at the same steps."""
        first = self.step - len(self.pending) + 1
        for i, logged in enumerate(mean_over_ranks(self.pending, self.world)):
            if not math.isfinite(logged["loss"]):
                raise FloatingPointError(
                    f"loss is {logged['loss']} at step {first + i}: lower trainer.*_lr or loss temperatures"
                )
            self.result.losses.append({"step": first + i, **logged})
        self.pending.clear()

    def record(self) -> dict[str, Any]:
        """What a checkpoint keeps of the loop (besides its step), for :meth:`restore`."""
        r = self.result
        return {
            "bad": self.bad,
            "best_step": r.best_step,
            "best_score": r.best_score,
            "losses": r.losses,
            "valid": r.valid,
        }

    def restore(self, step: int, loop: dict[str, Any]) -> None:
        """Continue from a checkpoint at ``step`` holding ``loop`` (:meth:`record`)."""
        self.start = self.step = step
        self.bad = int(loop["bad"])
        self.result.best_step, self.result.best_score = int(loop["best_step"]), float(loop["best_score"])
        self.result.losses, self.result.valid = loop["losses"], loop["valid"]


class Callback:
    """A piece of the loop: each hook gets the shared state; by default it does nothing."""

    def on_train_start(self, s: LoopState) -> None:
        """Once, after the batch loader has started."""

    def on_batch_start(self, s: LoopState) -> None:
        """Before each batch is fetched."""

    def on_step_end(self, s: LoopState) -> None:
        """After each optimiser step (``s.step`` counts it; its loss terms are pending)."""

    def on_train_end(self, s: LoopState) -> None:
        """Once, after the last step (the budget, or an early stop)."""


class LossReadback(Callback):
    """Reads the loss terms back every :data:`READ_EVERY` steps, at the budget's last step and
    at the end (other callbacks read them sooner when they need them)."""

    def __init__(self, every: int = READ_EVERY) -> None:
        self.every = every

    def on_step_end(self, s: LoopState) -> None:
        if s.step % self.every == 0 or s.step == s.max_steps:
            s.read_losses()

    def on_train_end(self, s: LoopState) -> None:
        s.read_losses()


class Timer(Callback):
    """Training throughput: seconds from fetching each batch to the end of its step (the loss
    read-back included, when the timer follows :class:`LossReadback`; the callbacks after it, such
    as validation and checkpoints, excluded), without the first :data:`WARMUP_STEPS` steps unless
    the run has no more than those. ``steps_per_sec`` is set at the end."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self.clock = clock
        self.t0, self.seconds, self.steps = 0.0, 0.0, 0

    def on_batch_start(self, s: LoopState) -> None:
        self.t0 = self.clock()

    def on_step_end(self, s: LoopState) -> None:
        now = self.clock()
        if s.step - s.start > WARMUP_STEPS or s.max_steps - s.start <= WARMUP_STEPS:
            self.seconds += now - self.t0
            self.steps += 1

    def on_train_end(self, s: LoopState) -> None:
        s.result.steps_per_sec = self.steps / self.seconds if self.seconds > 0 else float("nan")


class ProgressBar(Callback):
    """A bar of the step budget (rank 0 only) with the last read loss and pairs per second."""

    def __init__(self, desc: str, batch_size: int, enabled: bool) -> None:
        self.desc, self.batch_size, self.enabled = desc, batch_size, enabled
        self.shown = 0  # losses shown so far

    def on_train_start(self, s: LoopState) -> None:
        self.bar = progress(
            total=s.max_steps, initial=s.start, desc=self.desc, disable=not self.enabled, dynamic_ncols=True
        )
        self.shown = len(s.result.losses)

    def _show_loss(self, s: LoopState) -> None:
        if len(s.result.losses) > self.shown:
            self.shown = len(s.result.losses)
            rate = float(self.bar.format_dict.get("rate") or 0.0)
            loss = s.result.losses[-1]["loss"]
            self.bar.set_postfix(loss=f"{loss:.4f}", pairs_s=f"{rate * self.batch_size:,.0f}", refresh=False)

    def on_step_end(self, s: LoopState) -> None:
        self.bar.update(1)
        self._show_loss(s)

    def on_train_end(self, s: LoopState) -> None:
        self._show_loss(s)
        self.bar.close()


class EarlyStopping(Callback):
    """Validation every ``every`` steps and at the budget's last step: the best state so far is
    kept (and written to ``best_path``); ``patience`` validations without improvement stop training.

    Args:
        validate: unsharded state -> (selection score, metrics), higher is better; called where
            ``state`` gives a state (rank 0), its score broadcast to the other ranks.
        state: the model's unsharded state on rank 0, None elsewhere (a collective).
    """

    def __init__(
        self,
        validate: Callable[[State], tuple[float, dict[str, float]]],
        state: Callable[[], State | None],
        every: int,
        patience: int,
        best_path: Path,
    ) -> None:
        self.validate, self.state, self.every, self.patience = validate, state, every, patience
        self.best_path = best_path

    def on_step_end(self, s: LoopState) -> None:
        if not (s.step % self.every == 0 or s.step == s.max_steps):
            return
        s.read_losses()  # a non-finite loss is reported before its model is validated
        state = self.state()
        score, metrics = self.validate(state) if state is not None else (0.0, {})
        score = broadcast(score, s.world)
        r = s.result
        r.valid.append({"step": s.step, **metrics})
        if score > r.best_score:
            r.best_score, r.best_step, s.bad = score, s.step, 0
            if state is not None:
                r.best_state = state
                with atomic_path(self.best_path) as tmp:
                    save_file(state, str(tmp))
        else:
            s.bad += 1
        log.info("step %d valid %.4f (best %.4f at %d)", s.step, score, r.best_score, r.best_step)
        if s.bad >= self.patience:
            s.stop = r.stopped_early = True


class Checkpointing(Callback):
    """A checkpoint every ``every`` steps and at an early stop (placed after :class:`EarlyStopping`),
    with the losses read back first: ``save(step, loop record)`` writes it (a collective)."""

    def __init__(self, save: Callable[[int, dict[str, Any]], object], every: int) -> None:
        self.save, self.every = save, every

    def on_step_end(self, s: LoopState) -> None:
        if s.step % self.every == 0 or s.stop:
            s.read_losses()
            self.save(s.step, s.record())
