"""Choosing the serving quota (and lambda) on valid, and drawing the recall-vs-relevance trade-off."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tte_recsys.artifacts import atomic_path

__all__ = ["choose_point", "plot_tradeoff"]


def choose_point(points: Sequence[dict[str, Any]], k: int, recall_tolerance: float) -> dict[str, Any]:
    """The valid-split operating point: among points whose ``recall@k`` is within
    ``recall_tolerance`` (relative) of the best, the one with the highest ``semrel@k``
    (ties: higher recall, then the earlier point).

    Args:
        points: dicts with ``recall@k`` and ``semrel@k`` (and whatever identifies them: lam, share).
    """
    if not points:
        raise ValueError("no operating points to choose from (empty select.lams or select.shares?)")
    if not 0.0 <= recall_tolerance < 1.0:
        raise ValueError(f"select.recall_tolerance={recall_tolerance}: expected 0 <= tol < 1")
    rk, sk = f"recall@{k}", f"semrel@{k}"
    finite = [p for p in points if not math.isnan(p[rk])]
    if not finite:
        raise ValueError(f"every operating point has recall@{k} = nan (no valid triggers?)")
    best = max(p[rk] for p in finite)
    ok = [p for p in finite if p[rk] >= (1.0 - recall_tolerance) * best]
    return max(ok, key=lambda p: (p[sk], p[rk], -points.index(p)))


def plot_tradeoff(
    path: str | Path,
    valid: Sequence[dict[str, Any]],
    test: Sequence[dict[str, Any]],
    k: int,
    chosen_share: float,
    title: str,
) -> None:
    """recall@k (x) vs SemRel@k (y) over the quota shares, valid and test, the chosen point marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rk, sk = f"recall@{k}", f"semrel@{k}"
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for pts, style, label in ((valid, "o--", "valid"), (test, "s-", "test")):
        if not pts:
            continue
        ax.plot([p[rk] for p in pts], [p[sk] for p in pts], style, label=label)
        for p in pts:
            ax.annotate(
                f"{p['share']:g}", (p[rk], p[sk]), fontsize=7, xytext=(3, 3), textcoords="offset points"
            )
            if p["share"] == chosen_share:
                ax.plot([p[rk]], [p[sk]], "r*", markersize=12)
    ax.set_xlabel(f"recall@{k}")
    ax.set_ylabel(f"SemRel@{k}")
    ax.set_title(f"{title}\n(labels: K1/K, coeng share; star: chosen on valid)", fontsize=9)
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
