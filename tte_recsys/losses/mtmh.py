"""The MTMH losses (docs/design.md, "MTMH model and losses"): pure functions of embeddings and labels.

Shapes: ``b`` query rows (this process's triggers), ``B`` in-batch candidates (every process's
targets, and any uniform negatives; ``B == b`` in one process without them). Row ``i``'s own
positive is candidate ``pos[i]``.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["LossConfig", "mtmh_loss", "relevance_kl", "sampled_softmax_logq", "softmax_from_scores"]


@dataclass(frozen=True)
class LossConfig:
    """``L = L_coeng(coeng) + lam * L_rel(semantic) + alpha * L_coeng(semantic)``.

    Attributes:
        temperature: tau of both heads' softmax over candidates.
        label_temperature: tau_t of the relevance-label softmax.
        lam: weight of the relevance distillation (>= 0).
        alpha: weight of the co-engagement loss on the semantic head (>= 0).
        logq: subtract log Q(target) from the co-engagement logits (sampling-bias correction).
    """

    temperature: float = 0.05
    label_temperature: float = 0.1
    lam: float = 1.0
    alpha: float = 0.1
    logq: bool = True

    def __post_init__(self) -> None:
        for name in ("temperature", "label_temperature"):
            if not getattr(self, name) > 0:
                raise ValueError(f"loss.{name}={getattr(self, name)}: expected > 0")
        for name in ("lam", "alpha"):
            if getattr(self, name) < 0:
                raise ValueError(f"loss.{name}={getattr(self, name)}: expected >= 0")

    def needs_labels(self, heads: Collection[str]) -> bool:
        """Whether training ``heads`` under this loss needs each batch's relevance labels: the
        one place that says so (the batch builder, the loop and :func:`mtmh_loss` ask here)."""
        return "semantic" in heads and self.lam > 0

    def check_heads(self, heads: Collection[str]) -> None:
        """Refuse a semantic head that no term of this loss would train."""
        if "semantic" in heads and self.lam == 0 and self.alpha == 0:
            raise ValueError(
                "model.heads has 'semantic' but lambda = loss.alpha = 0: that head would never train"
            )


def sampled_softmax_logq(
    queries: torch.Tensor,
    candidates: torch.Tensor,
    pos: torch.Tensor,
    temperature: float,
    log_q: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """In-batch sampled softmax: each query's positive against all in-batch candidates.

    ``logit[i, j] = q_i . c_j / temperature - log Q(c_j)``, where ``Q(c_j)`` is the probability that
    candidate j appears as a target in a batch (its frequency): frequent items are sampled as
    negatives more often than uniform, and the correction removes that bias (Yi et al., 2019).

    Args:
        queries: (b, D). candidates: (B, D). pos: (b,) index of each row's positive in ``candidates``.
        log_q: (B,) log sampling probability of each candidate (up to a constant), or None (no
            correction).
        mask: (b, B) True where a candidate must not count as a negative (e.g. the same item as the
            positive appearing twice); the positive itself is never masked.

    Returns:
        Scalar mean cross-entropy.
    """
    return softmax_from_scores(queries @ candidates.T, pos, temperature, log_q, mask)


def softmax_from_scores(
    scores: torch.Tensor,
    pos: torch.Tensor,
    temperature: float,
    log_q: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """:func:`sampled_softmax_logq` on precomputed (b, B) dot products (shared with the KL term)."""
    logits = scores / temperature  # (b, B)
    if log_q is not None:
        logits = logits - log_q[None, :]
    if mask is not None:
        keep_pos = F.one_hot(pos, logits.shape[1]).bool()  # (b, B)
        logits = logits.masked_fill(mask & ~keep_pos, float("-inf"))
    return F.cross_entropy(logits, pos)


def relevance_kl(
    scores: torch.Tensor, labels: torch.Tensor, temperature: float, label_temperature: float
) -> torch.Tensor:
    """Listwise distillation: mean over rows of KL(softmax(R / tau_t) || softmax(S / tau)).

    Args:
        scores: (b, B) model scores S (dot products of unit vectors).
        labels: (b, B) graded relevance R in [0, 1].

    Returns:
        Scalar mean KL divergence (0 when the model's distribution equals the labels').
    """
    target = F.log_softmax(labels / label_temperature, dim=1)  # (b, B)
    pred = F.log_softmax(scores / temperature, dim=1)  # (b, B)
    return F.kl_div(pred, target, log_target=True, reduction="batchmean")


def mtmh_loss(
    query: dict[str, torch.Tensor],
    cand: dict[str, torch.Tensor],
    pos: torch.Tensor,
    labels: torch.Tensor | None,
    cfg: LossConfig,
    log_q: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """The weighted multi-task sum over the heads present.

    Args:
        query: head -> (b, D) trigger embeddings. cand: head -> (B, D) candidate embeddings.
        pos, log_q, mask: as in :func:`sampled_softmax_logq`. labels: (b, B) relevance matrix
            (needed when a ``semantic`` head is present and ``lam > 0``).

    Returns:
        ``{"loss": total, "coeng": ..., "rel": ..., "sem_coeng": ...}`` (terms present only when used).
    """
    lq = log_q if cfg.logq else None
    out: dict[str, torch.Tensor] = {}
    total = torch.zeros((), device=pos.device)
    if "coeng" in query:
        out["coeng"] = sampled_softmax_logq(query["coeng"], cand["coeng"], pos, cfg.temperature, lq, mask)
        total = total + out["coeng"]
    if "semantic" in query:
        scores = query["semantic"] @ cand["semantic"].T  # (b, B), shared by both terms
        if cfg.needs_labels(query):
            if labels is None:
                raise ValueError("the semantic head with loss.lam > 0 needs the batch's relevance labels")
            out["rel"] = relevance_kl(scores, labels, cfg.temperature, cfg.label_temperature)
            total = total + cfg.lam * out["rel"]
        if cfg.alpha > 0:
            out["sem_coeng"] = softmax_from_scores(scores, pos, cfg.temperature, lq, mask)
            total = total + cfg.alpha * out["sem_coeng"]
    out["loss"] = total
    return out
