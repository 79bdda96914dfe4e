"""Which fusion of the traces a run uses, chosen on valid (never on test).

With ``embedder.traces=fuse`` a run holds each item's plain vector and its trace vector
(:func:`~tte_recsys.tte.fusion.trace_vectors`) and tries every ``(w, side)`` of
``select.trace_weights x select.trace_sides`` with content-only retrieval on the valid split.
``w = 0`` is always in the grid, so the choice is never worse on valid than no traces; with
``select.trace_rule=interval`` (the default) a weight > 0 must also beat no trace on valid beyond
its paired bootstrap interval, since a lead within noise on valid did not carry to test (Amazon,
expert-iteration traces: valid +0.0004, test -0.0025 [-0.0052, -0.0002]). The MTMH
tower's frozen content (one vector per item, the same on both sides) takes the best weight among
the ``both`` points; its trace input (``model.trace_input``) takes the plain and trace vectors
side by side and learns the rest.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from tte_recsys.config import EvalConfig
from tte_recsys.data.labels import RelevanceLabeler
from tte_recsys.data.split import EvalSet
from tte_recsys.evaluation.baselines import ContentCosine
from tte_recsys.evaluation.protocol import evaluate_retriever, paired_intervals
from tte_recsys.experiment.config import TRACE_RULES
from tte_recsys.experiment.stages import embed_items
from tte_recsys.tte.fusion import TraceFusion, fuse
from tte_recsys.vectors import load_vectors

__all__ = ["TraceChoice", "choose_fusion", "choose_with_traces", "content_retriever_vectors"]


def content_retriever_vectors(
    plain: np.ndarray, trace: np.ndarray, fusion: TraceFusion
) -> tuple[np.ndarray, np.ndarray | None]:
    """(candidate vectors, trigger vectors or None when the same) of content-only retrieval."""
    fused = fuse(plain, trace, fusion.weight)
    return (fused, None) if fusion.side == "both" else (plain, fused)


@dataclass
class TraceChoice:
    """A run's plain and trace vectors (N, D) and the fusion chosen on valid.

    Attributes:
        fusion: the content-only choice (weight and side).
        tower_weight: the weight of the frozen content tower's vectors (the best ``both`` point).
        grid: every valid point tried, ``{"weight", "side", "recall@K", "semrel@K"}``.
    """

    plain: np.ndarray
    trace: np.ndarray
    fusion: TraceFusion
    tower_weight: float
    grid: list[dict[str, Any]] = field(default_factory=list)

    def content_only(self) -> tuple[np.ndarray, np.ndarray | None]:
        return content_retriever_vectors(self.plain, self.trace, self.fusion)

    def tower_table(self, trace_input: bool) -> np.ndarray:
        """The frozen content tower's table: plain and trace vectors side by side with the trace
        input, else the vectors fused at ``tower_weight``."""
        if trace_input:
            return np.concatenate([self.plain, self.trace], axis=1).astype(np.float32)
        return fuse(self.plain, self.trace, self.tower_weight)

    def summary(self) -> dict[str, Any]:
        return {
            "weight": self.fusion.weight,
            "side": self.fusion.side,
            "tower_weight": self.tower_weight,
            "items_with_trace": int(np.count_nonzero(np.abs(self.trace).sum(axis=1))),
            "valid_points": self.grid,
        }


def choose_fusion(
    plain: np.ndarray,
    trace: np.ndarray,
    valid: EvalSet,
    labeler: RelevanceLabeler,
    cfg: EvalConfig,
    weights: Sequence[float],
    sides: Sequence[str],
    rule: str = "interval",
) -> TraceChoice:
    """Content-only valid recall@``cfg.select_k`` of every (weight, side); the best wins, ties to
    the smaller weight (then ``both``). ``weights`` must hold 0. ``rule="interval"``: a winner
    with w > 0 stands only when its per-trigger valid recall gain over w = 0 has a paired
    bootstrap 95% interval above 0 (recorded as ``valid_gain``), else w = 0 is chosen; the tower's
    weight (the best ``both`` point) follows the same rule. ``rule="best"``: the best point."""
    if 0.0 not in weights:
        raise ValueError(f"trace weights {list(weights)}: 0 (no trace) must be among them")
    if rule not in TRACE_RULES:
        raise ValueError(f"select.trace_rule={rule!r}: expected one of {list(TRACE_RULES)}")
    k = cfg.select_k
    grid: list[dict[str, Any]] = []
    for w in sorted(set(weights)):
        for side in sides if w > 0 else ("both",):  # w = 0 is the plain vector on either side
            f = TraceFusion("fuse", w, side)
            m = evaluate_retriever(
                ContentCosine(*content_retriever_vectors(plain, trace, f)), valid, labeler, len(plain), cfg
            )
            grid.append(
                {"weight": w, "side": side, f"recall@{k}": m[f"recall@{k}"], f"semrel@{k}": m[f"semrel@{k}"]}
            )
    best = max(grid, key=lambda p: (p[f"recall@{k}"], -p["weight"], p["side"] == "both"))
    both = max((p for p in grid if p["side"] == "both"), key=lambda p: (p[f"recall@{k}"], -p["weight"]))
    if rule == "interval":
        none = grid[0]  # w = 0
        best, both = (
            p if p["weight"] == 0 or _beyond_noise(p, plain, trace, valid, cfg) else none
            for p in (best, both)
        )  # best and both are often one point: its interval is computed once (valid_gain)
    return TraceChoice(plain, trace, TraceFusion("fuse", best["weight"], best["side"]), both["weight"], grid)


def _beyond_noise(
    point: dict[str, Any], plain: np.ndarray, trace: np.ndarray, valid: EvalSet, cfg: EvalConfig
) -> bool:
    """Whether ``point``'s valid recall gain over no trace has a paired 95% interval above 0
    (written into ``point["valid_gain"]``, and read from there when already computed)."""
    if "valid_gain" in point:
        return bool(point["valid_gain"]["lo"] > 0)
    f = TraceFusion("fuse", point["weight"], point["side"])
    rows = {
        "trace": lambda: ContentCosine(*content_retriever_vectors(plain, trace, f)),
        "none": lambda: ContentCosine(plain),
    }
    gain = paired_intervals(rows, [("trace", "none")], valid, cfg.select_k, cfg.batch_size)["trace vs none"]
    point["valid_gain"] = gain
    return bool(gain["lo"] > 0)


def choose_with_traces(
    stage: DictConfig,
    plain_folder: str | Path,
    traces_dir: str | Path,
    out: Path,
    ids: Sequence[str],
    valid: EvalSet,
    labeler: RelevanceLabeler,
    cfg: EvalConfig,
    weights: Sequence[float],
    sides: Sequence[str],
    rule: str = "interval",
) -> TraceChoice:
    """The traces in ``traces_dir`` embedded alone into ``out`` (``embed_items(what="traces")``
    with the stage config ``stage``: ``data``, ``embedder``, ``shard_size``), beside the plain
    vectors in ``plain_folder``, both aligned to ``ids``, and the fusion chosen on valid
    (:func:`choose_fusion`). ``train_i2i`` and the scoring of a reasoner both choose this way."""
    sub = OmegaConf.merge(stage, {"traces_dir": str(traces_dir), "output_dir": str(out)})
    embed_items(sub, out, what="traces")  # type: ignore[arg-type]
    plain, trace = load_vectors(str(plain_folder)).aligned(ids), load_vectors(str(out)).aligned(ids)
    if plain.shape != trace.shape:
        raise ValueError(
            f"trace vectors {trace.shape} ({out}) and content vectors {plain.shape} ({plain_folder}) differ in size"
        )
    return choose_fusion(plain, trace, valid, labeler, cfg, weights, sides, rule)
