"""Embedder-guided rewards (Embed-RL's outcome reward, a format reward) and GRPO group advantages.

Everything but :class:`EmbedderReward` is a pure function of tensors, tested against
hand-computed values. Notation: ``sims`` (N, M) are a rollout's similarities to M candidates,
``positive`` (N, M) marks its positives; ties go against the positive.

The outcome reward (``docs/notes/reasoner_training.md``)::

    r = Acc_k * (mean sim to the positives - E_tau[sim to the negatives])

where ``E_tau`` weights each negative by softmax(sim / tau) over the negatives. ``Acc_k`` is the
paper's all-or-nothing top-k (``accuracy=hard``: 1 if the best positive has fewer than k
negatives at or above it) or the released code's soft fraction (``accuracy=soft``: the share of
the positives inside the top ``n_pos`` candidates, times ``soft_scale``).

**Symmetric rollouts.** Targets are embedded the way evaluation embeds them: with their own
traces. Each training pair contributes two prompts to a generation batch, the query item and the
target item, each with G rollouts; a rollout's candidates are all rollouts of the other side's
items in the batch, its positives the G rollouts of its partner (Embed-RL's symmetric reward, in
UME-R1's shape: G positives per query). Nothing goes stale, and the targets' traces come from the
policy being trained, as at evaluation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from tte_recsys import distributed
from tte_recsys.tte.embedder import Embedder
from tte_recsys.tte.items import with_trace
from tte_recsys.tte.reasoner.prompts import parse_trace

__all__ = [
    "EmbedderReward",
    "FormatReward",
    "RewardSettings",
    "completion_text",
    "format_reward",
    "gather_batch",
    "group_advantages",
    "outcome_rewards",
    "symmetric_candidates",
]


@dataclass(frozen=True)
class RewardSettings:
    """The EG-RL reward (``reward.*``).

    Attributes:
        k: top-k of the accuracy factor.
        tau: temperature of the softmax over negatives (Embed-RL: 0.5).
        accuracy: ``hard`` (the paper) or ``soft`` (the released code).
        soft_scale: the released code's extra factor on the soft accuracy (0.5).
        outcome_weight, format_weight: weights of the two rewards in the total (Embed-RL without a
            judge: 0.8 / 0.05 in the released code; a missing process reward is not re-weighted).
    """

    k: int = 1
    tau: float = 0.5
    accuracy: str = "hard"
    soft_scale: float = 0.5
    outcome_weight: float = 0.8
    format_weight: float = 0.05

    def __post_init__(self) -> None:
        if self.accuracy not in ("hard", "soft"):
            raise ValueError(f"reward.accuracy={self.accuracy!r}: expected 'hard' or 'soft'")
        if self.k < 1 or not self.tau > 0:
            raise ValueError(f"reward: k={self.k} must be >= 1 and tau={self.tau} > 0")


def outcome_rewards(
    sims: torch.Tensor,
    positive: torch.Tensor,
    candidates: torch.Tensor | None = None,
    k: int = 1,
    tau: float = 0.5,
    accuracy: str = "hard",
    soft_scale: float = 0.5,
) -> torch.Tensor:
    """(N, M) similarities and (N, M) positive mask -> (N,) ``Acc_k * margin``. ``candidates``
    (N, M) limits what a row ranks against (default: every column); the negatives are the
    candidates that are not positives.

    Raises:
        ValueError: a row without a positive or without a negative.
    """
    cand = torch.ones_like(positive, dtype=torch.bool) if candidates is None else candidates.bool()
    pos = positive.bool() & cand
    neg = cand & ~pos
    n_pos = pos.sum(1)  # (N,)
    if bool((n_pos == 0).any()) or bool((neg.sum(1) == 0).any()):
        raise ValueError("outcome reward: every rollout needs >= 1 positive and >= 1 negative candidate")
    s = sims.float()
    mean_pos = (s * pos).sum(1) / n_pos  # (N,)
    w = torch.softmax((s / tau).masked_fill(~neg, -math.inf), dim=1)  # (N, M), 0 off the negatives
    margin = mean_pos - (w * s.masked_fill(~neg, 0.0)).sum(1)  # (N,)
    if accuracy == "hard":
        best = s.masked_fill(~pos, -math.inf).max(1).values  # (N,)
        ahead = ((s >= best[:, None]) & neg).sum(1)  # negatives at or above the best positive
        acc = (ahead < k).float()
    else:
        # positive j is inside the top n_pos if fewer than n_pos candidates rank ahead of it
        sj = s[:, None, :]  # (N, 1, M): the positive's sim along the last axis
        sm = s[:, :, None]  # (N, M, 1): every candidate's sim
        ahead_neg = ((sm >= sj) & neg[:, :, None]).sum(1)  # (N, M)
        ahead_pos = ((sm > sj) & pos[:, :, None]).sum(1)  # (N, M)
        inside = ((ahead_neg + ahead_pos) < n_pos[:, None]) & pos  # (N, M)
        acc = soft_scale * inside.sum(1).float() / n_pos
    return acc * margin


def format_reward(raw: str) -> float:
    """1 for ``<think> ... </think> summary`` with both parts present, else 0."""
    p = parse_trace(raw)
    return 1.0 if p.issue is None and p.thinking and p.summary else 0.0


def group_advantages(rewards: torch.Tensor, group: int, scale: bool = True) -> torch.Tensor:
    """GRPO's advantages, as TRL computes them: (R,) rewards in consecutive groups of ``group``
    -> ``(r - group mean) / (group std + 1e-4)`` (unbiased std; ``scale=False``: no division)."""
    if group < 2 or rewards.numel() % group:
        raise ValueError(f"group advantages: {rewards.numel()} rewards do not form groups of {group} (>= 2)")
    g = rewards.float().view(-1, group)
    adv = g - g.mean(1, keepdim=True)
    if scale:
        adv = adv / (g.std(1, keepdim=True) + 1e-4)
    return adv.reshape(-1)


def symmetric_candidates(pair: Sequence[int], side: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """For rollouts labelled by pair and side (0 query, 1 target): (R, R) candidate mask (the
    other side's rollouts) and positive mask (the other side's rollouts of the same pair)."""
    p = torch.as_tensor(list(pair))
    s = torch.as_tensor(list(side))
    cand = s[:, None] != s[None, :]
    return cand, cand & (p[:, None] == p[None, :])


def gather_batch(local: list[Any]) -> tuple[list[Any], int]:
    """The whole generation batch from every rank's local rows (in rank order, as TRL slices
    it), and where this rank's rows start in it; one process: ``(local, 0)``."""
    parts = distributed.all_gather_objects(local)
    rank = torch.distributed.get_rank() if len(parts) > 1 else 0
    return [row for p in parts for row in p], sum(len(p) for p in parts[:rank])


def completion_text(completion: Any) -> str:
    """A TRL completion (a string, or a conversational list of messages) as text."""
    if isinstance(completion, str):
        return completion
    return "".join(str(m.get("content", "")) for m in completion)


class FormatReward:
    """TRL reward function: :func:`format_reward` of each completion."""

    __name__ = "format"

    def __call__(self, prompts: list[Any], completions: list[Any], **_: Any) -> list[float]:
        return [format_reward(completion_text(c)) for c in completions]


class EmbedderReward:
    """TRL reward function of EG-RL: the frozen embedder scores each rollout's trace.

    Each rollout's text is ``with_trace(item text, parsed trace)``, what ``embed_items`` embeds;
    the dataset columns ``text`` (the item's content), ``pair`` and ``side`` say what it is. Under
    several processes the generation batch is gathered first (a pair's two sides can sit on two
    ranks) and each rank returns its own slice.
    """

    __name__ = "outcome"

    def __init__(self, embedder: Embedder, settings: RewardSettings, batch_size: int = 64) -> None:
        self.embedder, self.settings, self.batch_size = embedder, settings, batch_size

    def embed(self, texts: Sequence[str], raws: Sequence[str]) -> np.ndarray:
        """(R, D) unit vectors of each item text with its rollout's trace."""
        inputs = [with_trace(t, parse_trace(r).text or None) for t, r in zip(texts, raws, strict=True)]
        return self.embedder.encode(inputs, batch_size=self.batch_size).reshape(len(inputs), -1)

    def rewards(
        self,
        texts: Sequence[str],
        raws: Sequence[str],
        pair: Sequence[int],
        side: Sequence[int],
        ids: Sequence[str],
    ) -> list[float]:
        """Outcome rewards of a whole generation batch; a NaN or infinite one names its item."""
        emb = torch.from_numpy(self.embed(texts, raws))  # (R, D)
        broken = ~torch.isfinite(emb).all(1)
        if bool(broken.any()):
            i = int(torch.nonzero(broken)[0])
            raise FloatingPointError(
                f"EG-RL reward of item {ids[i]!r} is not finite: its trace-conditioned embedding holds NaN or inf"
            )
        cand, pos = symmetric_candidates(pair, side)
        s = self.settings
        r = outcome_rewards(emb @ emb.T, pos, cand, s.k, s.tau, s.accuracy, s.soft_scale)
        bad = ~torch.isfinite(r)
        if bool(bad.any()):
            i = int(torch.nonzero(bad)[0])
            raise FloatingPointError(f"EG-RL reward of item {ids[i]!r} is {float(r[i])} (not finite)")
        return r.tolist()

    def score_samples(self, sides: Sequence[Any], traces: Sequence[Sequence[str]], per: int) -> np.ndarray:
        """Rewards of sampled traces outside training: ``sides`` is ``[query 0, target 0, query 1,
        ...]`` (objects with ``id`` and ``text``), ``traces`` n traces for each; scored in batches of
        ``per`` pairs as in training. Returns (len(sides), n); a tail of fewer than 2 pairs is NaN."""
        n = len(traces[0]) if traces else 0
        out = np.full((len(sides), n), np.nan)
        pairs = len(sides) // 2
        for start in range(0, pairs, per):
            end = min(pairs, start + per)
            if end - start < 2:
                break
            texts: list[str] = []
            raws: list[str] = []
            pair: list[int] = []
            side: list[int] = []
            ids: list[str] = []
            for row in range(2 * start, 2 * end):
                for t in traces[row]:
                    texts.append(sides[row].text)
                    raws.append(t)
                    pair.append(row // 2)
                    side.append(row % 2)
                    ids.append(sides[row].id)
            r = self.rewards(texts, raws, pair, side, ids)
            out[2 * start : 2 * end] = np.asarray(r).reshape(-1, n)
        return out

    def __call__(
        self,
        prompts: list[Any],
        completions: list[Any],
        text: list[str],
        pair: list[int],
        side: list[int],
        item_id: list[str],
        **_: Any,
    ) -> list[float]:
        raws = [completion_text(c) for c in completions]
        local = list(zip(text, raws, pair, side, item_id, strict=True))
        rows, start = gather_batch(local)
        r = self.rewards(*(list(c) for c in zip(*rows, strict=True)))
        return r[start : start + len(local)]
