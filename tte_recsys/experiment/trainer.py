"""Training one model variant of an I2I experiment: the MTMH model, or a reference model, on
one split, validated on rank 0, then its item vectors under each id prior."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tte_recsys.config import EvalConfig
from tte_recsys.data.labels import RelevanceLabeler
from tte_recsys.data.split import TemporalSplit
from tte_recsys.evaluation.protocol import evaluate_retriever
from tte_recsys.losses.mtmh import LossConfig
from tte_recsys.models.content import ContentTower
from tte_recsys.models.export import encode_items
from tte_recsys.models.id_prior import IdPrior, apply_id_priors
from tte_recsys.models.mtmh import ItemFeatures, ModelConfig, MTMHModel
from tte_recsys.serving.merge import HeadVectorsRetriever
from tte_recsys.training.batches import PairBatches, epoch_pairs
from tte_recsys.training.loop import TrainerConfig, TrainResult, fit

__all__ = ["TrainContext", "Trained", "Variant", "VariantTrainer"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainContext:
    """What every training of one experiment shares.

    Attributes:
        split: the temporal split (train pairs to fit, valid to early-stop on).
        labeler: relevance labels (the semantic loss and valid SemRel).
        features: the items' categorical features (and which items go without an id).
        num_items: catalog size.
        eval: the protocol settings (valid recall@select_k is the early-stopping score).
        trainer: optimisation and bookkeeping.
        ckpt_root: each variant checkpoints into ``ckpt_root/<name>``.
        resume: continue each variant from its newest complete checkpoint.
        rank, world: this process and the process group's size.
    """

    split: TemporalSplit
    labeler: RelevanceLabeler
    features: ItemFeatures
    num_items: int
    eval: EvalConfig
    trainer: TrainerConfig
    ckpt_root: Path
    resume: bool = False
    rank: int = 0
    world: int = 1


@dataclass
class Variant:
    """A trained model after its id prior: the state to export, its item vectors, fit stats."""

    state: dict[str, torch.Tensor]
    vecs: dict[str, np.ndarray]
    prior: dict[str, Any]


@dataclass
class Trained:
    """One trained model: its training result and (rank 0) a :class:`Variant` per id prior shrink."""

    result: TrainResult
    variants: dict[float, Variant]
    model_cfg: ModelConfig


class VariantTrainer:
    """Trains model variants of one experiment (:class:`TrainContext`) on its train pairs."""

    def __init__(self, ctx: TrainContext) -> None:
        self.ctx = ctx
        self.src, self.dst = epoch_pairs(ctx.split.train_pairs, ctx.trainer.pair_weight)

    def vectors(self, model: MTMHModel, state: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
        model.load_state_dict(state, strict=False)
        return encode_items(model, self.ctx.features)

    def with_priors(
        self, model: MTMHModel, state: dict[str, torch.Tensor], priors: list[IdPrior]
    ) -> dict[float, Variant]:
        """The trained state under each id prior (see :mod:`tte_recsys.models.id_prior`)."""
        adjusted = apply_id_priors(model, state, self.ctx.features, self.ctx.split.item_counts, priors)
        return {
            p.shrink: Variant(st, self.vectors(model, st), stats)
            for p, (st, stats) in zip(priors, adjusted, strict=True)
        }

    def valid_score(
        self, eval_model: MTMHModel | None, state: dict[str, torch.Tensor]
    ) -> tuple[float, dict[str, float]]:
        """Valid recall@select_k of the first head (the early-stopping score) and its metrics."""
        assert eval_model is not None, "validation runs on rank 0"
        ctx = self.ctx
        vecs = self.vectors(eval_model, state)
        first = eval_model.cfg.heads[0]
        m = evaluate_retriever(
            HeadVectorsRetriever(vecs, {first: 1.0}, first),
            ctx.split.valid,
            ctx.labeler,
            ctx.num_items,
            ctx.eval,
        )
        k = ctx.eval.select_k
        return m[f"recall@{k}"], {
            f"{name}@{k}": m[f"{name}@{k}"] for name in ("recall", "semrel", "cold_recall")
        }

    def train(
        self,
        name: str,
        model_cfg: ModelConfig,
        loss_cfg: LossConfig,
        content: ContentTower | None,
        priors: list[IdPrior],
    ) -> Trained:
        """Train one model; on rank 0 also its item vectors under each id prior (by shrink)."""
        ctx, tc = self.ctx, self.ctx.trainer
        torch.manual_seed(tc.seed)
        if content is not None:  # every model of the run starts from the same content tower
            content.reset()
        ne = ctx.features.num_embeddings()
        model = MTMHModel(model_cfg, ne, content, device="meta")
        eval_model = MTMHModel(model_cfg, ne, content, device="cpu") if ctx.rank == 0 else None
        labeler = ctx.labeler if loss_cfg.needs_labels(model_cfg.heads) else None
        batches = PairBatches(self.src, self.dst, ctx.features, labeler, tc.batches(), ctx.rank, ctx.world)
        # Every rank passes a validator (the schedule of collectives must match); only rank 0 calls it.
        validate = partial(self.valid_score, eval_model)
        res = fit(model, batches, tc, loss_cfg, ctx.ckpt_root / name, validate, resume=ctx.resume, desc=name)
        variants = (
            self.with_priors(eval_model, res.best_state, priors)
            if eval_model is not None and res.best_state is not None
            else {}
        )
        if res.valid:
            log.info(
                "%s: best valid %.4f at step %d, %.1f steps/s",
                name,
                res.best_score,
                res.best_step,
                res.steps_per_sec,
            )
        else:  # no validation (a refit): trained to its step budget
            log.info("%s: trained %d steps, %.1f steps/s", name, res.best_step, res.steps_per_sec)
        return Trained(res, variants, model_cfg)
