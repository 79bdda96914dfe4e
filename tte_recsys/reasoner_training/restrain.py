"""RESTRAIN without labels (``method=restrain``): answer weights, negative self-penalisation,
prompt weights.

For a prompt x with n rollouts, each rollout's answer is the catalog item its trace-conditioned
query (fused as the catalog reward fuses it) retrieves at top 1 (the trigger excluded). With the answers' vote counts c_j and
shares f_j = c_j / n (``docs/notes/reasoner_training.md``):

* ``g(p) = exp(-(p - center)^2 / (2 sigma^2))``; answer weights ``w_j = g(f_j) / sum_l g(f_l)``;
* every answer is a pseudo-label: rewards ``r_ij = 1[ans_i = a_j]``, group advantages ``A_ij``;
* if the majority count ``M(x) = max_j c_j`` is below ``kappa``, the rewards become 0 and every
  advantage ``A_ij - delta`` (the prompt gives only negative updates);
* the prompt weight ``u_x = g(c_ref / n)`` comes from n rollouts of the frozen starting policy,
  once, before training;
* on-policy the loss ``u_x * sum_j w_j L_GRPO(x, a_j)`` equals GRPO's with the effective
  advantage ``A_i = u_x * sum_j w_j A~_ij``, which :class:`RestrainTrainer` puts in place of
  TRL's. The KL term is not scaled by ``u_x`` (the notes leave it open; this keeps TRL's loss).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from trl import GRPOTrainer

from tte_recsys.reasoner_training.grpo import GrpoSettings, grpo_args, grpo_generated_tokens, train_grpo
from tte_recsys.reasoner_training.methods import PolicyMethod, RunContext, Trained
from tte_recsys.reasoner_training.policy import PolicySettings, sample_counted
from tte_recsys.reasoner_training.rewards import (
    CatalogReward,
    completion_text,
    gather_batch,
    group_advantages,
)
from tte_recsys.reasoner_training.tasks import Side, unlabeled_queries
from tte_recsys.tte.reasoner.prompts import PromptTemplate

__all__ = [
    "Restrain",
    "RestrainAnswers",
    "RestrainSettings",
    "RestrainTrainer",
    "answer_weights",
    "drop_hubs",
    "gaussian",
    "majority_count",
    "prompt_weight",
    "restrain_advantages",
    "starting_prompt_weights",
]


@dataclass(frozen=True)
class RestrainSettings(GrpoSettings):
    """RESTRAIN (``method=restrain``): GRPO's settings and RESTRAIN's hyperparameters; no source
    gives defaults for these (chosen on valid, docs/results.md has the sensitivity).

    Attributes:
        center, sigma: the Gaussian over vote shares (the notes' k and sigma).
        kappa: the majority count below which a prompt is penalised.
        delta: the offset subtracted from a penalised prompt's advantages.
        scale_rewards: divide group advantages by the group std (TRL's ``scale_rewards=group``).
        max_prompt_share: the hub guard (ours, not the paper's): an item that is the answer of
            more than this share of a batch's prompts is no answer (1: off). Without it a trace
            that sends every query to one hub item is perfectly consistent, and the label-free
            objective collapses onto it (seen on the toy task: every trace became one filler word).
        max_queries: label-free catalog items drawn as prompts.
    """

    center: float = 1.0
    sigma: float = 0.5
    kappa: int = 2
    delta: float = 0.2
    scale_rewards: bool = True
    max_prompt_share: float = 0.5
    max_queries: int = 512

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max_queries < 1:
            raise ValueError(f"method.max_queries={self.max_queries}: expected >= 1")
        if not self.sigma > 0 or self.kappa < 1 or self.delta < 0:
            raise ValueError(
                f"method: sigma={self.sigma} must be > 0, kappa={self.kappa} >= 1, delta={self.delta} >= 0"
            )
        if not 0 < self.max_prompt_share <= 1:
            raise ValueError(f"method.max_prompt_share={self.max_prompt_share}: expected 0 < share <= 1")


def gaussian(p: float | np.ndarray, center: float, sigma: float) -> float | np.ndarray:
    """``exp(-(p - center)^2 / (2 sigma^2))``."""
    return np.exp(-((np.asarray(p) - center) ** 2) / (2 * sigma**2))


def answer_weights(answers: Sequence[str], center: float, sigma: float) -> dict[str, float]:
    """Each distinct answer's weight ``g(f_j) / sum_l g(f_l)`` (f_j: its share of the rollouts)."""
    n = len(answers)
    counts = Counter(answers)
    g = {a: float(gaussian(c / n, center, sigma)) for a, c in counts.items()}
    total = sum(g.values())
    return {a: v / total for a, v in g.items()}


def majority_count(answers: Sequence[str]) -> int:
    """``M(x)``: the vote count of the most frequent answer."""
    return max(Counter(answers).values())


def prompt_weight(ref_answers: Sequence[str], center: float, sigma: float) -> float:
    """``u_x = g(c_ref / n)`` from the starting policy's n rollouts' answers."""
    return float(gaussian(majority_count(ref_answers) / len(ref_answers), center, sigma))


def drop_hubs(answers: Sequence[str], group: int, max_prompt_share: float) -> list[str]:
    """``answers`` (consecutive groups of ``group`` rollouts, one group per prompt) with every
    answer given by more than ``max_prompt_share`` of the prompts replaced by a unique
    placeholder (so it agrees with nothing); unchanged with ``max_prompt_share=1``."""
    groups = [answers[s : s + group] for s in range(0, len(answers), group)]
    prompts_of: Counter[str] = Counter(a for g in groups for a in set(g))
    limit = max_prompt_share * len(groups)
    hubs = {a for a, c in prompts_of.items() if c > limit and c > 1}
    return [f"<hub {i}>" if a in hubs else a for i, a in enumerate(answers)]


def restrain_advantages(answers: Sequence[str], u: float, s: RestrainSettings) -> torch.Tensor:
    """(n,) effective advantages ``u * sum_j w_j A~_ij`` of one prompt's n rollouts."""
    n = len(answers)
    if majority_count(answers) < s.kappa:  # rewards become 0: every A~_ij = 0 - delta, and sum_j w_j = 1
        return torch.full((n,), -s.delta * u)
    out = torch.zeros(n)
    for a, w in answer_weights(answers, s.center, s.sigma).items():
        r = torch.tensor([1.0 if x == a else 0.0 for x in answers])
        out += w * group_advantages(r, n, s.scale_rewards)
    return u * out


class RestrainAnswers:
    """TRL reward function of RESTRAIN: each rollout's answer (:meth:`CatalogReward.top1`), kept
    for :class:`RestrainTrainer`. It returns each rollout's agreement with its group's majority
    (1 or 0), which is logged as the reward; the advantages are RESTRAIN's, not GRPO's of this number."""

    __name__ = "consistency"

    def __init__(self, reward: CatalogReward, group: int) -> None:
        self.reward, self.group = reward, group
        self.last_answers: list[str] = []

    def answers(self, sides: Sequence[Side], raws: Sequence[str]) -> list[str]:
        return self.reward.top1(sides, raws)

    def __call__(
        self,
        prompts: list[Any],
        completions: list[Any],
        text: list[str],
        item_id: list[str],
        image_path: list[str | None] | None = None,
        **_: Any,
    ) -> list[float]:
        images = image_path if image_path is not None else [None] * len(text)
        raws = [completion_text(c) for c in completions]
        local = [(Side(i, t, im), r) for i, t, im, r in zip(item_id, text, images, raws, strict=True)]
        rows, begin = gather_batch(local)
        self.last_answers = self.answers([x for x, _ in rows], [r for _, r in rows])
        agree = []
        for start in range(0, len(rows), self.group):
            g = self.last_answers[start : start + self.group]
            top = Counter(g).most_common(1)[0][0]
            agree += [1.0 if a == top else 0.0 for a in g]
        return agree[begin : begin + len(local)]


def starting_prompt_weights(
    policy: PreTrainedModel,
    tok: PreTrainedTokenizerBase,
    queries: Sequence[Side],
    template: PromptTemplate,
    answers: RestrainAnswers,
    p: PolicySettings,
    r: RestrainSettings,
) -> tuple[list[float], int]:
    """``u_x`` of every query from ``r.num_generations`` rollouts of the frozen starting policy
    (once, before training), sampled with the decoding of ``p``; and the tokens they took."""
    prompts = [template.messages(q.text) for q in queries]
    ref, tokens = sample_counted(policy, tok, prompts, r.num_generations, p, seed=p.seed)
    weights = [
        prompt_weight(answers.answers([q] * len(t), t), r.center, r.sigma)
        for q, t in zip(queries, ref, strict=True)
    ]
    return weights, tokens


def restrain_rows(
    queries: Sequence[Side],
    template: PromptTemplate,
    weights: Sequence[float],
    r: RestrainSettings,
    seed: int,
) -> list[dict[str, Any]]:
    """Rows for ``steps`` steps of ``prompts_per_step`` label-free queries with their prompt weights."""
    if len(queries) != len(weights):
        raise ValueError(f"RESTRAIN: {len(weights)} prompt weights for {len(queries)} queries")
    rng = np.random.default_rng(seed)
    need = r.steps * r.prompts_per_step
    order = np.concatenate([rng.permutation(len(queries)) for _ in range(-(-need // len(queries)))])[:need]
    return [
        {
            "prompt": template.messages(queries[i].text),
            "text": queries[i].text,
            "item_id": queries[i].id,
            "image_path": queries[i].image,
            "prompt_weight": float(weights[i]),
        }
        for i in order
    ]


class RestrainTrainer(GRPOTrainer):
    """``GRPOTrainer`` whose advantages are RESTRAIN's (:func:`restrain_advantages`), from the
    answers :class:`RestrainAnswers` found and the dataset's ``prompt_weight`` column."""

    def __init__(self, *args: Any, answers: RestrainAnswers, restrain: RestrainSettings, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.answer_fn, self.restrain = answers, restrain

    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        out = super()._generate_and_score_completions(inputs)
        u, begin = gather_batch([float(x["prompt_weight"]) for x in inputs])
        g = self.answer_fn.group
        answers = drop_hubs(self.answer_fn.last_answers, g, self.restrain.max_prompt_share)
        self._metrics["train"]["restrain/hub_share"].append(
            sum(a.startswith("<hub ") for a in answers) / max(1, len(answers))
        )
        if len(answers) != len(u):
            raise RuntimeError(f"RESTRAIN: {len(answers)} answers for {len(u)} rollouts")
        adv = torch.cat(
            [restrain_advantages(answers[s : s + g], u[s], self.restrain) for s in range(0, len(answers), g)]
        )
        local = adv[begin : begin + len(inputs)]
        self._metrics["train"]["restrain/advantage_mean"].append(float(local.mean()))
        out["advantages"] = local.to(out["advantages"].device, out["advantages"].dtype)
        return out


class Restrain(PolicyMethod):
    """RESTRAIN: label-free GRPO on catalog items; the labelled held-out reward only measures."""

    name = "restrain"
    settings_type = RestrainSettings
    settings: RestrainSettings

    def train(
        self, ctx: RunContext, policy: PreTrainedModel, tok: PreTrainedTokenizerBase, start: np.ndarray
    ) -> Trained:
        r = self.settings
        queries = [q.query for q in unlabeled_queries(ctx.data.catalog, r.max_queries, ctx.policy.seed)]
        answers = RestrainAnswers(ctx.reward, r.num_generations)
        weights, ref_tokens = starting_prompt_weights(
            policy, tok, queries, ctx.template, answers, ctx.policy, r
        )
        rows = restrain_rows(queries, ctx.template, weights, r, ctx.policy.seed)
        model, history = train_grpo(
            self.name,
            policy,
            tok,
            rows,
            [answers],
            grpo_args(ctx.policy, r, ctx.checkpoints, None),
            ctx.lora if r.lora else None,
            ctx.resume,
            RestrainTrainer,
            answers=answers,
            restrain=r,
        )
        tokens = ref_tokens + grpo_generated_tokens(history, r.prompts_per_step * r.num_generations)
        weights_summary = {"mean": float(np.mean(weights)), "min": float(np.min(weights))}
        return Trained(model, history, tokens, {"prompt_weights": weights_summary})
