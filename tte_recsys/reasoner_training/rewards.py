"""The reward of a trace: how much it lifts the item's positives in a ranking of the whole catalog,
made the way retrieval makes it; a format reward; GRPO group advantages.

Everything but :class:`CatalogReward` is a pure function, tested against hand-computed values.

**The catalog reward with its no-trace floor** (decided 2026-12-02, docs/design.md "Reasoner
training"). For a rollout of item ``q`` with trace ``t``, its positives ``P_q`` (its partners in
the train pairs; at held-out time, in the valid pairs) and the catalog ``C``::

    u_t = fuse(v_q, m(t), w)          m(t): the unit vector of the trace's text (tte.fusion.trace_vectors)
    u_0 = fuse(v_q, 0, w) = v_q       the item's own vector: the no-trace floor
    rank_u(p) = 1 + |{c in C \\ {q, p} : u . v_c >= u . v_p}|        ties go against the positive
    g(r) = 1 / log2(1 + r)                                          DCG's discount: 1 at rank 1
    r(t) = 1/|P_q| sum_{p in P_q} [ g(rank_{u_t}(p)) - g(rank_{u_0}(p)) ]      reward.floor=signed
    r(t) = max(0, r(t))                                                        reward.floor=clipped

So a trace earns reward only by ranking the positives better than the item's own vector does; a
trace that changes nothing (an empty or unparseable one: ``m = 0``) earns exactly 0, and a trace
that pushes the positives down is penalised (``signed``, the default: GRPO learns to avoid harm;
expert iteration keeps ``r > 0`` either way). ``g`` has no cutoff: an untrained content tower
ranks most positives beyond 50 (content-only recall@50 is about 0.05), where a cutoff would give
no signal. Other positives of ``q`` count among the items ahead, as they do in recall@K.

``fuse`` and ``trace_vectors`` are :mod:`tte_recsys.tte.fusion`'s, the functions every embedding
job uses; ``w`` is ``reward.trace_weight`` (default: ``embedder.trace_weight``).

**The catalog: plain vectors, computed once.** Candidates are the catalog items' own vectors
(``w = 0``), embedded once at the start. Chosen over the start policy's traces fused (stale from
the first update, and a catalog pass of generation before step 1: minutes to hours on a CPU) and
over refreshing every N steps (a catalog pass every N steps): plain candidates are exactly what
content-only retrieval scores with ``embedder.trace_side=trigger`` (the trace as a hypothesis of
what comes next, as in HyDE), never go stale, and cost nothing during training; with
``trace_side=both`` every candidate would turn by at most ``arcsin(w)`` (6 degrees at ``w = 0.1``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from tte_recsys import distributed
from tte_recsys.reasoner_training.tasks import Side
from tte_recsys.tte.embedder import Embedder
from tte_recsys.tte.fusion import TraceFusion, fuse, trace_vectors
from tte_recsys.tte.reasoner.prompts import parse_trace

__all__ = [
    "FLOORS",
    "CatalogReward",
    "FormatReward",
    "RewardSettings",
    "catalog_ranks",
    "completion_text",
    "dcg_gain",
    "floor_rewards",
    "format_reward",
    "gather_batch",
    "group_advantages",
]

FLOORS = ("signed", "clipped")


@dataclass(frozen=True)
class RewardSettings:
    """The reward (``reward.*``).

    Attributes:
        trace_weight: ``w`` of the query's fusion; None: ``embedder.trace_weight``, the weight the
            traces are scored with.
        floor: ``signed`` (a trace that ranks the positives worse than no trace is penalised) or
            ``clipped`` (``max(0, .)``: it earns 0, as one that changes nothing).
        outcome_weight, format_weight: weights of the catalog reward and of the 0/1 format reward
            (``<think> ... </think> summary``) in GRPO's total. The format reward is off by
            default: the catalog reward's differences are a few hundredths, a 0.05 format bonus
            would outweigh them, and the ``item_keywords`` prompt asks for no tags.
    """

    trace_weight: float | None = None
    floor: str = "signed"
    outcome_weight: float = 1.0
    format_weight: float = 0.0

    def __post_init__(self) -> None:
        if self.floor not in FLOORS:
            raise ValueError(f"reward.floor={self.floor!r}: expected one of {list(FLOORS)}")
        if self.trace_weight is not None and not (np.isfinite(self.trace_weight) and self.trace_weight > 0):
            raise ValueError(
                f"reward.trace_weight={self.trace_weight}: expected a finite value > 0 (or null: embedder.trace_weight)"
            )


def dcg_gain(ranks: np.ndarray) -> np.ndarray:
    """``1 / log2(1 + rank)`` (rank 1 -> 1)."""
    return 1.0 / np.log2(1.0 + np.asarray(ranks, dtype=np.float64))


def catalog_ranks(sims: np.ndarray, positive: np.ndarray, exclude: np.ndarray) -> np.ndarray:
    """Rank of every positive among the candidates, ties against it.

    Args:
        sims: (R, N) a rollout's query against every catalog item.
        positive: (R, N) bool, its positives.
        exclude: (R, N) bool, items that are no candidates (the query item itself).

    Returns:
        (R, N) float: ``1 + #{candidates c != p with sims[c] >= sims[p]}`` at the positives, NaN elsewhere.
    """
    cand = ~np.asarray(exclude, dtype=bool)  # (R, N)
    rows, cols = np.nonzero(np.asarray(positive, dtype=bool) & cand)  # (K,), (K,)
    s = np.asarray(sims, dtype=np.float64)
    at = s[rows, cols]  # (K,) each positive's score
    ahead = ((s[rows] >= at[:, None]) & cand[rows]).sum(1) - 1  # (K,) minus the positive itself
    out = np.full(s.shape, np.nan)
    out[rows, cols] = 1 + ahead
    return out


def floor_rewards(
    with_trace: np.ndarray,
    without: np.ndarray,
    positive: np.ndarray,
    exclude: np.ndarray,
    floor: str = "signed",
) -> np.ndarray:
    """(R,) the reward of the module docstring: mean over a rollout's positives of the DCG gain
    of its rank with the trace minus that without (``floor=clipped``: at least 0).

    Args:
        with_trace, without: (R, N) similarities of the query with its trace and without any.
        positive, exclude: (R, N) bool (:func:`catalog_ranks`).

    Raises:
        ValueError: a rollout without a positive among the candidates.
    """
    pos = np.asarray(positive, dtype=bool) & ~np.asarray(exclude, dtype=bool)  # (R, N)
    n_pos = pos.sum(1)  # (R,)
    if (n_pos == 0).any():
        raise ValueError(
            f"reward: rollout {int(np.flatnonzero(n_pos == 0)[0])} has no positive among the catalog"
        )
    gain_t = np.where(pos, dcg_gain(np.nan_to_num(catalog_ranks(with_trace, pos, exclude), nan=1.0)), 0.0)
    gain_0 = np.where(pos, dcg_gain(np.nan_to_num(catalog_ranks(without, pos, exclude), nan=1.0)), 0.0)
    r = (gain_t - gain_0).sum(1) / n_pos  # (R,)
    return np.maximum(r, 0.0) if floor == "clipped" else r


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


class CatalogReward:
    """The catalog reward of the module docstring, as a TRL reward function and for sampled traces.

    Args:
        embedder: the frozen embedder evaluation uses.
        catalog: the candidates (ids unique); their plain vectors are embedded once, here.
        fusion: the embedder's :class:`~tte_recsys.tte.fusion.TraceFusion`; ``fuse`` only (a
            concatenated trace is another input of the embedder, not a fused vector).
        settings: ``reward.*``; its ``trace_weight`` overrides ``fusion.weight``.
        batch_size: of the embedder.

    Raises:
        ValueError: ``concat`` fusion, an empty catalog, a repeated id, or a multi-head embedder.
    """

    __name__ = "outcome"

    def __init__(
        self,
        embedder: Embedder,
        catalog: Sequence[Side],
        fusion: TraceFusion,
        settings: RewardSettings,
        batch_size: int = 64,
    ) -> None:
        if fusion.mode != "fuse":
            raise ValueError(
                f"embedder.traces={fusion.mode!r}: the reward scores fused vectors (tte.fusion.fuse); "
                "set embedder.traces=fuse"
            )
        ids = [x.id for x in catalog]
        if not ids or len(set(ids)) != len(ids):
            raise ValueError(
                f"reward: the catalog has {len(ids)} items, {len(ids) - len(set(ids))} repeated ids"
            )
        self.embedder, self.settings, self.batch_size = embedder, settings, batch_size
        self.weight = fusion.weight if settings.trace_weight is None else settings.trace_weight
        self.ids = ids
        self.code = {i: c for c, i in enumerate(ids)}
        self.vectors = self._plain(catalog)  # (N, D) the candidates, unit vectors

    def _plain(self, sides: Sequence[Side]) -> np.ndarray:
        """(n, D) the items' own vectors, as the embedding job makes them (text and image)."""
        images = [x.image for x in sides]
        kw: dict[str, Any] = {"images": images} if any(im is not None for im in images) else {}
        v = np.asarray(self.embedder.encode([x.text for x in sides], batch_size=self.batch_size, **kw))
        if v.ndim != 2:
            raise ValueError("reward: a multi-head (meta-query) embedder is not fused per head; use one head")
        return v.astype(np.float32)

    def query_vectors(self, sides: Sequence[Side], raws: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(R, D) each rollout's query with its trace, and (R, D) the same item's without one."""
        known = [x.id in self.code for x in sides]
        plain = np.zeros((len(sides), self.vectors.shape[1]), dtype=np.float32)  # (R, D)
        plain[known] = self.vectors[[self.code[x.id] for x, k in zip(sides, known, strict=True) if k]]
        if not all(known):  # queries outside the catalog (task=table): their own vectors
            plain[~np.asarray(known)] = self._plain([x for x, k in zip(sides, known, strict=True) if not k])
        texts = [parse_trace(r).text for r in raws]
        m = trace_vectors(self.embedder, [[t] if t else [] for t in texts], self.batch_size)  # (R, D)
        return fuse(plain, m, self.weight), fuse(plain, np.zeros_like(m), self.weight)

    def _exclude(self, sides: Sequence[Side]) -> np.ndarray:
        out = np.zeros((len(sides), len(self.ids)), dtype=bool)  # (R, N)
        for r, x in enumerate(sides):
            if x.id in self.code:
                out[r, self.code[x.id]] = True
        return out

    def score(
        self, sides: Sequence[Side], raws: Sequence[str], positives: Sequence[Sequence[str]], chunk: int = 256
    ) -> np.ndarray:
        """(R,) rewards of rollouts: ``sides[i]`` wrote ``raws[i]``, its positives are ``positives[i]``
        (catalog ids). A NaN or infinite one names its item."""
        out = np.empty(len(sides))
        for s in range(0, len(sides), chunk):
            part = list(sides[s : s + chunk])
            u_t, u_0 = self.query_vectors(part, raws[s : s + chunk])
            pos = np.zeros((len(part), len(self.ids)), dtype=bool)  # (r, N)
            for r, ps in enumerate(positives[s : s + chunk]):
                missing = [p for p in ps if p not in self.code]
                if missing:
                    raise ValueError(
                        f"reward: positive(s) {missing} of item {part[r].id!r} are not in the catalog"
                    )
                pos[r, [self.code[p] for p in ps]] = True
            bad = ~np.isfinite(u_t).all(1)
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                raise FloatingPointError(
                    f"reward of item {part[i].id!r} is not finite: its trace-conditioned vector holds NaN or inf"
                )
            out[s : s + len(part)] = floor_rewards(
                u_t @ self.vectors.T, u_0 @ self.vectors.T, pos, self._exclude(part), self.settings.floor
            )
        return out

    def score_samples(
        self, sides: Sequence[Side], traces: Sequence[Sequence[str]], positives: Sequence[Sequence[str]]
    ) -> np.ndarray:
        """(S, n): the reward of each of the n sampled traces of each side."""
        n = len(traces[0]) if traces else 0
        if any(len(t) != n for t in traces):
            raise ValueError("reward: every side needs the same number of sampled traces")
        flat = [x for x, ts in zip(sides, traces, strict=True) for _ in ts]
        pos = [p for p, ts in zip(positives, traces, strict=True) for _ in ts]
        return self.score(flat, [t for ts in traces for t in ts], pos).reshape(len(sides), n)

    def top1(self, sides: Sequence[Side], raws: Sequence[str]) -> list[str]:
        """The catalog id each rollout's trace-conditioned query retrieves first (its own item excluded)."""
        u_t, _ = self.query_vectors(sides, raws)
        s = u_t @ self.vectors.T  # (R, N)
        s[self._exclude(sides)] = -np.inf
        return [self.ids[int(j)] for j in s.argmax(1)]

    def __call__(
        self,
        prompts: list[Any],
        completions: list[Any],
        item_id: list[str],
        text: list[str],
        positives: list[list[str]],
        image_path: list[str | None] | None = None,
        **_: Any,
    ) -> list[float]:
        images = image_path if image_path is not None else [None] * len(item_id)
        sides = [Side(i, t, im) for i, t, im in zip(item_id, text, images, strict=True)]
        return self.score(sides, [completion_text(c) for c in completions], positives).tolist()
