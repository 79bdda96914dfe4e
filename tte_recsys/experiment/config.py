"""The typed config of the I2I experiment: each section of ``configs/train_i2i.yaml`` and its
groups as one frozen dataclass, built (and checked, unknown keys named) before any work starts."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
from omegaconf import DictConfig

from tte_recsys.config import EvalConfig, from_mapping
from tte_recsys.losses.mtmh import LossConfig
from tte_recsys.models.id_prior import IdPrior
from tte_recsys.models.mtmh import ModelConfig
from tte_recsys.training.loop import TrainerConfig
from tte_recsys.tte.factory import is_served
from tte_recsys.tte.fusion import TRACE_SIDES
from tte_recsys.tte.lora import LoraSettings

__all__ = ["TRACE_RULES", "CompareConfig", "I2IConfig", "SelectConfig", "StageConfig"]

TRACE_RULES = ("interval", "best")  # select.trace_rule: how valid picks a trace weight


@dataclass(frozen=True)
class SelectConfig:
    """The ``select`` group: the grid chosen on the valid split (never on test).

    Attributes:
        lams: lambda, the relevance distillation weight: one MTMH training each.
        id_prior_shrinks: id prior pseudo-counts tried after training (0: off).
        pop_priors: popularity prior weights w (``w log(1 + n)`` added to scores; 0: off).
        age_priors: item-age prior weights w (``-w log(1 + age in days)`` added to scores: newer
            items first; 0: off). Chosen after the others, at their chosen point (all shares).
        shares: K1/K, the co-engagement head's share of the merged top-K.
        recall_tolerance: admissible points have valid recall >= (1 - tol) x the best; among
            them the highest valid SemRel wins.
        trace_weights: the fusion weights w tried for traces (``embedder.traces=fuse``): content-only
            valid recall picks one (0, no trace, is always tried, so valid never gets worse).
        trace_sides: where the fused vector is used in content-only retrieval: ``both`` or
            ``trigger`` (candidates stay plain); chosen with the weight.
        trace_rule: ``interval`` (a weight > 0 is kept only when its valid recall gain over no
            trace has a paired bootstrap 95% interval above 0; else w = 0) or ``best`` (the best
            valid point, however small its lead).
    """

    lams: tuple[float, ...] = (0.5, 1.0, 2.0)
    id_prior_shrinks: tuple[float, ...] = (0.0, 0.1, 1.0)
    pop_priors: tuple[float, ...] = (0.0, 0.01, 0.03, 0.1, 0.3)
    age_priors: tuple[float, ...] = (0.0, 0.003, 0.01, 0.03)
    shares: tuple[float, ...] = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.0)
    recall_tolerance: float = 0.05
    trace_weights: tuple[float, ...] = (0.0, 0.05, 0.1, 0.25, 0.5)
    trace_sides: tuple[str, ...] = ("both", "trigger")
    trace_rule: str = "interval"

    def __post_init__(self) -> None:
        if self.trace_rule not in TRACE_RULES:
            raise ValueError(f"select.trace_rule={self.trace_rule!r}: expected one of {list(TRACE_RULES)}")
        ws = tuple(float(x) for x in self.trace_weights)
        if not ws or any(not (np.isfinite(w) and w >= 0) for w in ws):
            raise ValueError(f"select.trace_weights={list(ws)}: expected a non-empty list of weights >= 0")
        object.__setattr__(self, "trace_weights", ws if 0.0 in ws else (0.0, *ws))  # no trace is a point
        object.__setattr__(self, "trace_sides", tuple(str(x) for x in self.trace_sides))
        bad = [x for x in self.trace_sides if x not in TRACE_SIDES]
        if not self.trace_sides or bad:
            raise ValueError(
                f"select.trace_sides={list(self.trace_sides)}: expected values from {list(TRACE_SIDES)}"
            )
        for name in (
            "lams",
            "id_prior_shrinks",
            "pop_priors",
            "age_priors",
            "shares",
        ):  # 1 and 1.0 name one point
            object.__setattr__(self, name, tuple(float(x) for x in getattr(self, name)))
        if not self.lams or any(lam < 0 for lam in self.lams):
            raise ValueError(f"select.lams={list(self.lams)}: expected a non-empty list of lambdas >= 0")
        if not self.id_prior_shrinks:
            raise ValueError("select.id_prior_shrinks is empty: give at least [0] (no id prior)")
        if not self.pop_priors or any(x < 0 for x in self.pop_priors):
            raise ValueError(
                f"select.pop_priors={list(self.pop_priors)}: expected a non-empty list of weights >= 0 (0: off)"
            )
        if not self.age_priors or any(x < 0 for x in self.age_priors):
            raise ValueError(
                f"select.age_priors={list(self.age_priors)}: expected a non-empty list of weights >= 0 (0: off)"
            )
        if not self.shares or any(not 0.0 <= s <= 1.0 for s in self.shares):
            raise ValueError(
                f"select.shares={list(self.shares)}: expected a non-empty list of shares in [0, 1]"
            )
        if not 0.0 <= self.recall_tolerance < 1.0:
            raise ValueError(f"select.recall_tolerance={self.recall_tolerance}: expected 0 <= tol < 1")


@dataclass(frozen=True)
class CompareConfig:
    """The ``compare`` group: reference models trained in the same run (docs/design.md, "Evaluation protocol").

    Attributes:
        single_head: the same model with one head (``coeng``) and lambda = 0.
        id_only: the model without content (``model.content=none``): the cold-start reference.
        no_traces: with traces, the same model without them (content vectors of the item alone,
            no trace input): the row that says whether thinking paid.
    """

    single_head: bool = True
    id_only: bool = True
    no_traces: bool = True


@dataclass(frozen=True)
class StageConfig:
    """Where the content vectors (and traces) of a run come from.

    Attributes:
        content_dir: an ``embed_items`` folder used as the frozen content; None: embedded into
            ``<run>/content``.
        traces_dir: a ``generate_traces`` folder; None with a reasoner other than ``none``:
            generated into ``<run>/traces``.
        prompt: the reasoner prompt template (traces generated here).
        cache_dir: the trace cache. flush_every: traces per cache part written.
        shard_size: items per vector shard (the unit of resume).
    """

    content_dir: str | None = None
    traces_dir: str | None = None
    prompt: str = "item_card"
    cache_dir: str = "outputs/trace_cache"
    flush_every: int = 64
    shard_size: int = 2048


@dataclass(frozen=True)
class I2IConfig:
    """Everything ``pipelines.train_i2i`` decides with, typed (the data section stays with
    :func:`tte_recsys.runs.data_configs`, which every pipeline shares)."""

    eval: EvalConfig
    model: ModelConfig
    loss: LossConfig
    trainer: TrainerConfig
    select: SelectConfig
    compare: CompareConfig
    id_prior: IdPrior  # the prior's fit; its shrink is the grid's (select.id_prior_shrinks)
    lora: LoraSettings
    stages: StageConfig
    content_checkpointing: bool = False
    resume: bool = False

    @classmethod
    def from_cfg(cls, cfg: DictConfig) -> I2IConfig:
        """The typed sections of a composed ``train_i2i`` config; every error names its key."""
        if "lam" in cfg.loss:
            raise ValueError(
                "loss.lam is not a setting of train_i2i: lambda is chosen on valid from select.lams"
            )
        if "shrink" in cfg.id_prior:
            raise ValueError(
                "id_prior.shrink is not a setting of train_i2i: it is chosen on valid from select.id_prior_shrinks"
            )
        stage_keys = ("content_dir", "traces_dir", "prompt", "cache_dir", "flush_every", "shard_size")
        made = cls(
            eval=from_mapping(EvalConfig, cfg.eval, "eval"),
            model=from_mapping(ModelConfig, cfg.model, "model"),
            loss=from_mapping(LossConfig, cfg.loss, "loss"),
            trainer=from_mapping(TrainerConfig, cfg.trainer, "trainer"),
            select=from_mapping(SelectConfig, cfg.select, "select"),
            compare=from_mapping(CompareConfig, cfg.compare, "compare"),
            id_prior=from_mapping(IdPrior, cfg.id_prior, "id_prior"),
            lora=from_mapping(LoraSettings, cfg.lora, "lora"),
            stages=from_mapping(StageConfig, {k: cfg[k] for k in stage_keys}, "train_i2i"),
            content_checkpointing=bool(cfg.content_checkpointing),
            resume=bool(cfg.resume),
        )
        if made.model.content == "trainable" and is_served(cfg.embedder):
            raise ValueError(
                "model.content=trainable trains the embedder inside the model, which needs its weights here, "
                f"but embedder._target_={cfg.embedder._target_} is served over HTTP: use a local embedder "
                "(embedder=minilm, or embedder.model_path=<folder>), or model.content=frozen"
            )
        made.priors()  # each grid shrink is a valid prior
        for lam in made.select.lams:  # each grid lambda trains every head
            dataclasses.replace(made.loss, lam=lam).check_heads(made.model.heads)
        return made

    def priors(self) -> list[IdPrior]:
        """The id prior at each shrink of the grid."""
        return [
            IdPrior(shrink=float(x), min_count=self.id_prior.min_count, ridge=self.id_prior.ridge)
            for x in self.select.id_prior_shrinks
        ]
