"""One class per reasoner-training method, each with its own settings dataclass, the way TRL has
one trainer and one config per algorithm.

``configs/method/<name>.yaml`` names the class in ``_target_``; its other keys are the fields of
the class's settings dataclass (``method=expert_iteration method.rounds=5`` on the command line),
checked on construction with the unknown key named. A method gets a :class:`RunContext` (the
data, the decoding every method shares (:class:`~tte_recsys.reasoner_training.policy.PolicySettings`),
LoRA, the catalog reward, the run folder) and returns a :class:`MethodResult`:

* :class:`PolicyMethod` is every method that trains the policy (``sft``, ``eg_rl``, ``restrain``,
  ``expert_iteration``): the held-out reward of the start, :meth:`PolicyMethod.train`, the
  held-out reward of the end with a paired bootstrap interval of the change, the export;
* ``unified_head`` (:mod:`~tte_recsys.reasoner_training.unified`) trains a head on a frozen reasoner;
* :class:`Score` trains nothing and scores ``score_reasoner``'s traces.
"""

from __future__ import annotations

import dataclasses
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from tte_recsys.config import from_mapping
from tte_recsys.evaluation.metrics import paired_bootstrap
from tte_recsys.reasoner_training.policy import PolicySettings, export_reasoner, load_policy, sample
from tte_recsys.reasoner_training.rewards import CatalogReward
from tte_recsys.reasoner_training.tasks import ItemPositives, TaskData, item_positives
from tte_recsys.tte.lora import LoraSettings
from tte_recsys.tte.reasoner.prompts import PromptTemplate

__all__ = [
    "MethodResult",
    "PolicyMethod",
    "ReasonerMethod",
    "RunContext",
    "Score",
    "ScoreSettings",
    "Trained",
    "heldout_summary",
    "heldout_values",
]

log = logging.getLogger(__name__)


def heldout_values(
    model: nn.Module,
    tok: PreTrainedTokenizerBase,
    items: Sequence[ItemPositives],
    template: PromptTemplate,
    reward: CatalogReward,
    s: PolicySettings,
    n: int,
    seed: int,
) -> np.ndarray:
    """(I,) per held-out item: the mean catalog reward of ``n`` traces sampled with the decoding of
    ``s`` (labels are used here, never in RESTRAIN's training)."""
    if not items:
        raise ValueError("heldout_pairs: no held-out pair has a positive in the catalog")
    traces = sample(model, tok, [template.messages(x.side.text) for x in items], n, s, seed=seed)
    values = reward.score_samples([x.side for x in items], traces, [x.positives for x in items])
    return values.mean(1)


def heldout_summary(start: np.ndarray, end: np.ndarray, seed: int = 0) -> dict[str, Any]:
    """The held-out reward at the start and the end, and the paired bootstrap interval of the
    change over held-out items (1,000 resamples, seeded: ``diff``, ``lo``, ``hi``, ``n``)."""
    return {
        "start": float(np.mean(start)),
        "end": float(np.mean(end)),
        "change": paired_bootstrap(end, start, seed=seed),
    }


@dataclass
class Trained:
    """What :meth:`PolicyMethod.train` returns.

    Attributes:
        model: the trained policy (a PEFT model is merged at export).
        history: the logged curves, one dict per step (``step``, ``loss``, ``reward``, ...).
        generated_tokens: tokens the method generated to train (rollouts, samples), to compare
            methods at equal generation; the held-out reward's samples are not counted.
        report: what else the method reports.
        heldout: (I,) the held-out reward of ``model``'s items where the method measured it
            already (:meth:`RunContext.heldout`, the same draws); None: measured after training.
    """

    model: Any
    history: list[dict[str, float]]
    generated_tokens: int
    report: dict[str, Any] = field(default_factory=dict)
    heldout: np.ndarray | None = None


@dataclass
class MethodResult:
    """What a method's run adds to ``report.json``; ``export``: a reasoner folder ``score=true`` may score."""

    policy: str
    report: dict[str, Any]
    history: list[dict[str, float]] = field(default_factory=list)
    export: Path | None = None


class RunContext:
    """What a method runs with.

    Args:
        data: the catalog, the training pairs, the held-out pairs.
        template: the prompt the traces are written with.
        policy: the decoding every method shares (``train.*``).
        lora: the LoRA adapters' settings.
        out: the run folder (checkpoints under ``out/checkpoints``, the export in ``out/export``).
        resume: continue from the newest checkpoint.
        policy_path: the starting reasoner.
        heldout_samples: traces sampled per held-out item.
        cache_dir: the trace cache (a teacher's traces).
        reward: builds the catalog reward on first use (the embedder and a catalog pass).
        score_traces: content-only retrieval with a reasoner's traces on valid and test
            (``score_reasoner`` with this model folder; None: as configured; ``"none"``: no traces).
        score_reasoner: what ``method=score`` scores, in words (``score_reasoner.model_path``).
    """

    def __init__(
        self,
        data: TaskData,
        template: PromptTemplate,
        policy: PolicySettings,
        lora: LoraSettings,
        out: Path,
        resume: bool,
        policy_path: str,
        heldout_samples: int,
        cache_dir: str,
        reward: Callable[[], CatalogReward],
        score_traces: Callable[[str | None], dict[str, Any]],
        score_reasoner: str = "none",
    ) -> None:
        self.data, self.template, self.policy, self.lora = data, template, policy, lora
        self.out, self.resume, self.policy_path = out, resume, policy_path
        self.heldout_samples, self.cache_dir = heldout_samples, cache_dir
        self._reward, self.score_traces, self.score_reasoner = reward, score_traces, score_reasoner

    @cached_property
    def reward(self) -> CatalogReward:
        return self._reward()

    @property
    def checkpoints(self) -> Path:
        return self.out / "checkpoints"

    def load(self, path: str | None = None) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
        """The policy at ``path`` (default: the starting reasoner) and its tokenizer."""
        return load_policy(path or self.policy_path)

    def train_items(self) -> list[ItemPositives]:
        """The items of the training pairs, each with its partners there."""
        return item_positives(self.data.pairs, self.reward.code)

    def heldout(self, model: nn.Module, tok: PreTrainedTokenizerBase) -> np.ndarray:
        """(I,) :func:`heldout_values` of the held-out pairs' items (seeded: start and end see the same draws)."""
        items = item_positives(self.data.heldout, self.reward.code)
        return heldout_values(
            model,
            tok,
            items,
            self.template,
            self.reward,
            self.policy,
            self.heldout_samples,
            self.policy.seed + 7,
        )


class ReasonerMethod(ABC):
    """A reasoner-training method: ``settings_type`` is its settings dataclass, built from the
    keyword arguments (``configs/method/<name>.yaml`` less ``_target_``)."""

    name: ClassVar[str]
    settings_type: ClassVar[type[Any]]

    def __init__(self, **settings: Any) -> None:
        self.settings = from_mapping(self.settings_type, settings, f"method ({self.name})")

    @abstractmethod
    def run(self, ctx: RunContext) -> MethodResult:
        """Run the method in ``ctx``."""

    def settings_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self.settings)


class PolicyMethod(ReasonerMethod):
    """A method that trains the policy: start reward, :meth:`train`, end reward, export."""

    def run(self, ctx: RunContext) -> MethodResult:
        policy, tok = ctx.load()
        start = ctx.heldout(policy, tok)
        log.info("%s: held-out reward of the starting policy %.4f", self.name, float(start.mean()))
        trained = self.train(ctx, policy, tok, start)
        end = trained.heldout if trained.heldout is not None else ctx.heldout(trained.model, tok)
        summary = heldout_summary(end=end, start=start, seed=ctx.policy.seed)
        log.info("%s: held-out reward %.4f -> %.4f", self.name, summary["start"], summary["end"])
        meta = {"method": self.name, "base": ctx.policy_path, "settings": self.settings_dict()}
        export = export_reasoner(trained.model, tok, ctx.out / "export", meta)
        report = {"heldout_reward": summary, "generated_tokens": trained.generated_tokens, **trained.report}
        return MethodResult(ctx.policy_path, report, trained.history, export)

    @abstractmethod
    def train(
        self, ctx: RunContext, policy: PreTrainedModel, tok: PreTrainedTokenizerBase, start: np.ndarray
    ) -> Trained:
        """Train ``policy``; ``start`` is the held-out reward of each held-out item before training."""


@dataclass(frozen=True)
class ScoreSettings:
    """``method=score`` has no settings of its own: what it scores is ``score_reasoner``
    (``score_reasoner.model_path=none``: no traces)."""


class Score(ReasonerMethod):
    """Trains nothing: content-only retrieval with ``score_reasoner``'s traces on valid and test,
    the rows the trained reasoners are compared with."""

    name = "score"
    settings_type = ScoreSettings

    def run(self, ctx: RunContext) -> MethodResult:
        return MethodResult(ctx.score_reasoner, {"retrieval": ctx.score_traces(None)})
