"""Global temporal split and the held-out evaluation sets (DESIGN.md, "Evaluation protocol").

Cut-offs are the ``valid_quantile`` and ``test_quantile`` quantiles of all interaction
timestamps: period 0 (train) is ``t <= c_valid``, 1 (valid) ``c_valid < t <= c_test``, 2 (test)
after. A pair belongs to the period of its later interaction. The positives of an evaluation
period are the (trigger, target) pairs *first seen* in it whose trigger has train interactions;
a target with no train interactions is *cold*. Models and baselines train on period 0 only.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import polars as pl

from tte_recsys.config import PairConfig, SplitConfig
from tte_recsys.data.dataset import Dataset
from tte_recsys.data.pairs import directed_pairs, mine_pairs

__all__ = ["TRAIN", "EvalSet", "TemporalSplit", "popularity_basis", "popularity_counts", "temporal_split"]

TRAIN, VALID, TEST = 0, 1, 2


@dataclass(frozen=True)
class EvalSet:
    """Held-out positives grouped by trigger (CSR layout).

    Attributes:
        triggers: (T,) item codes, ascending.
        indptr: (T + 1,) offsets into ``targets``.
        targets: (P,) item codes of the positives.
        cold_items: (N,) True per item code where the item has no train interactions.
    """

    triggers: np.ndarray
    indptr: np.ndarray
    targets: np.ndarray
    cold_items: np.ndarray

    @classmethod
    def from_pairs(cls, pairs: pl.DataFrame, cold_items: np.ndarray) -> EvalSet:
        """Build from a (src, dst) frame; ``cold_items`` is a boolean mask over item codes."""
        p = pairs.select("src", "dst").unique().sort("src", "dst")
        src, dst = p["src"].to_numpy().astype(np.int64), p["dst"].to_numpy().astype(np.int64)
        triggers, starts = np.unique(src, return_index=True)
        indptr = np.append(starts, len(src)).astype(np.int64)
        return cls(triggers=triggers, indptr=indptr, targets=dst, cold_items=cold_items)

    @property
    def cold(self) -> np.ndarray:
        """(P,) True where the positive's target has no train interactions."""
        return self.cold_items[self.targets]

    @property
    def num_triggers(self) -> int:
        return len(self.triggers)

    def stats(self) -> dict[str, int]:
        return {
            "triggers": self.num_triggers,
            "positives": len(self.targets),
            "cold_positives": int(self.cold.sum()),
        }


@dataclass(frozen=True)
class TemporalSplit:
    """The split a model trains and is evaluated on.

    Attributes:
        cutoffs: (c_valid, c_test) timestamps.
        train: train-period interactions (codes included).
        train_pairs: train-period pairs, both directions for symmetric mining: ``src, dst, count``.
        item_counts: (N,) train interactions per item code.
        valid, test: held-out positives.
    """

    cutoffs: tuple[int, int]
    train: pl.DataFrame
    train_pairs: pl.DataFrame
    item_counts: np.ndarray
    valid: EvalSet
    test: EvalSet

    def require_usable(self, dataset: str) -> None:
        """Raise, naming what is missing, when a model could not be trained, chosen or scored."""
        empty = [
            what
            for what, n in (
                ("train pairs", self.train_pairs.height),
                ("valid triggers", self.valid.num_triggers),
                ("test triggers", self.test.num_triggers),
            )
            if n == 0
        ]
        if empty:
            raise ValueError(
                f"dataset {dataset!r}: no {', no '.join(empty)} (split {self.stats()}). A trigger needs "
                "train interactions and a co-engaged target first seen in its period: the log may be "
                "too short or too sparse; widen data.pairs.window (or max_seconds), or move "
                "data.split.valid_quantile / test_quantile"
            )

    def stats(self) -> dict[str, object]:
        return {
            "cutoffs": list(self.cutoffs),
            "train_interactions": self.train.height,
            "train_pairs": self.train_pairs.height,
            "valid": self.valid.stats(),
            "test": self.test.stats(),
        }


def temporal_split(ds: Dataset, pairs_cfg: PairConfig, split_cfg: SplitConfig) -> TemporalSplit:
    """Mine pairs over the whole log, then split them and the interactions by time."""
    ts = ds.interactions["timestamp"]
    c_valid = int(ts.quantile(split_cfg.valid_quantile, "nearest") or 0)
    c_test = int(ts.quantile(split_cfg.test_quantile, "nearest") or 0)
    if not c_valid < c_test:
        raise ValueError(
            f"dataset {ds.name!r}: the {split_cfg.valid_quantile} and {split_cfg.test_quantile} timestamp "
            f"quantiles are equal ({c_valid}); the log spans too little time for a temporal split"
        )
    pairs = mine_pairs(ds.interactions, pairs_cfg, cutoffs=[c_valid, c_test])
    train = ds.interactions.filter(pl.col("timestamp") <= c_valid)
    item_counts = np.bincount(train["item_idx"].to_numpy(), minlength=ds.num_items).astype(np.int64)
    known = item_counts > 0

    pairs = directed_pairs(pairs, pairs_cfg.symmetric)
    train_pairs = pairs.filter(pl.col("period") == TRAIN).select("src", "dst", "count")
    if pairs_cfg.train_window is not None and pairs_cfg.train_window != pairs_cfg.window:
        # Train pairs lie within the train period, so mining the train log alone finds them all.
        wide = dataclasses.replace(pairs_cfg, window=pairs_cfg.train_window)
        train_pairs = directed_pairs(mine_pairs(train, wide), wide.symmetric).select("src", "dst", "count")
    first_period = pairs.group_by("src", "dst").agg(pl.col("period").min())
    evalsets = []
    for period in (VALID, TEST):
        pos = first_period.filter(pl.col("period") == period)
        pos = pos.filter(pl.Series(known[pos["src"].to_numpy()], dtype=pl.Boolean))
        evalsets.append(EvalSet.from_pairs(pos, ~known))
    return TemporalSplit(
        cutoffs=(c_valid, c_test),
        train=train,
        train_pairs=train_pairs,
        item_counts=item_counts,
        valid=evalsets[0],
        test=evalsets[1],
    )


def _per_shelf_time(ds: Dataset) -> bool:
    """Whether the catalog dates its items, so that :func:`popularity_counts` counts per time listed."""
    return "available_from" in ds.items.columns


def popularity_basis(ds: Dataset) -> str:
    """What :func:`popularity_counts` counts for ``ds`` (for reports)."""
    return "per time on the shelf" if _per_shelf_time(ds) else "train interactions"


def popularity_counts(ds: Dataset, split: TemporalSplit, prior_span: float = 0.1) -> np.ndarray:
    """Train interactions per item as the popularity prior should see them, float (N,).

    Without an ``available_from`` column in the catalog: the train counts. With one, an item
    listed late had less time to be engaged, and one listed after the train cutoff had none, so
    a count says little about it. Each item's count becomes its rate (train interactions per
    second on the shelf, from its listing or the log's start to the cutoff) times the whole train
    span, shrunk towards the catalog's mean rate with a gamma-Poisson prior worth ``prior_span``
    of the train span. An item listed at the cutoff or later gets the mean: unknown popularity,
    not the lowest there is. An empty date counts as listed when the log starts.
    """
    counts = split.item_counts.astype(np.float64)
    if not _per_shelf_time(ds) or split.train.height == 0:
        return counts
    if not prior_span > 0:
        raise ValueError(f"prior_span={prior_span}: expected > 0 (a share of the train span)")
    start, end = int(split.train["timestamp"].min()), split.cutoffs[0]  # type: ignore[arg-type]
    span = float(max(end - start, 1))
    listed = ds.items["available_from"].fill_null(start).to_numpy().astype(np.float64)
    shelf = np.clip(end - np.maximum(listed, start), 0.0, span)
    mean_rate = counts.sum() / max(shelf.sum(), 1.0)
    b = prior_span * span
    return (counts + mean_rate * b) / (shelf + b) * span
