"""Global temporal split and the held-out evaluation sets (docs/design.md, "Evaluation protocol").

Cut-offs are the ``valid_quantile`` and ``test_quantile`` quantiles of all interaction
timestamps: period 0 (train) is ``t <= c_valid``, 1 (valid) ``c_valid < t <= c_test``, 2 (test)
after. A pair belongs to the period of its later interaction. The positives of an evaluation
period are the (trigger, target) pairs *first seen* in it whose trigger has train interactions;
a target with no train interactions is *cold*. Models and baselines are chosen fitting period 0
and scoring valid; :meth:`TemporalSplit.refit_view` is the second training view, periods 0 and 1,
that the final models are refit on before scoring test (docs/design.md, "Selection and final scoring").
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import polars as pl

from tte_recsys.config import PairConfig, SplitConfig
from tte_recsys.data.dataset import Dataset
from tte_recsys.data.pairs import directed_pairs, mine_pairs

__all__ = [
    "TRAIN",
    "EvalSet",
    "TemporalSplit",
    "item_age_days",
    "popularity_basis",
    "popularity_counts",
    "temporal_split",
]

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

    def with_cold(self, cold_items: np.ndarray) -> EvalSet:
        """The same positives, cold flags from another fit's data (``cold_items`` over item codes)."""
        return dataclasses.replace(self, cold_items=cold_items)

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
        train: the fit's interactions (codes included): the train period here, train + valid in
            the refit view.
        train_pairs: the fit's pairs, both directions for symmetric mining: ``src, dst, count``.
        item_counts: (N,) the fit's interactions per item code.
        valid, test: held-out positives (the refit view's valid is empty: it is fit on).
        refit_data: (interactions, pairs) of train + valid, for :meth:`refit_view`; None in the
            refit view itself.
    """

    cutoffs: tuple[int, int]
    train: pl.DataFrame
    train_pairs: pl.DataFrame
    item_counts: np.ndarray
    valid: EvalSet
    test: EvalSet
    refit_data: tuple[pl.DataFrame, pl.DataFrame] | None = None

    @property
    def fit_end(self) -> int:
        """The last timestamp of the data this view fits on (the scoring time of its models)."""
        return self.cutoffs[0] if self.refit_data is not None else self.cutoffs[1]

    def refit_view(self) -> TemporalSplit:
        """The split as the final models see it: fit on train + valid (no test interaction), score
        the same test positives, cold = no interactions before test. Its valid set is empty."""
        if self.refit_data is None:
            raise ValueError("this is already the refit view (train + valid)")
        interactions, pairs = self.refit_data
        counts = np.bincount(interactions["item_idx"].to_numpy(), minlength=len(self.item_counts)).astype(
            np.int64
        )
        cold = counts == 0
        empty = EvalSet.from_pairs(
            pl.DataFrame({"src": [], "dst": []}, schema={"src": pl.Int64, "dst": pl.Int64}), cold
        )
        return TemporalSplit(
            cutoffs=self.cutoffs,
            train=interactions,
            train_pairs=pairs,
            item_counts=counts,
            valid=empty,
            test=self.test.with_cold(cold),
        )

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
    # The refit view's pairs: every pair whose later interaction is before test, each counted over
    # both periods (a pair mined in train and again in valid counts both times).
    refit_log = ds.interactions.filter(pl.col("timestamp") <= c_test)
    refit_pairs = (
        pairs.filter(pl.col("period") <= VALID)
        .group_by("src", "dst")
        .agg(pl.col("count").sum())
        .sort("src", "dst")
    )
    if pairs_cfg.train_window is not None and pairs_cfg.train_window != pairs_cfg.window:
        # Train pairs lie within the train period, so mining the train log alone finds them all.
        wide = dataclasses.replace(pairs_cfg, window=pairs_cfg.train_window)
        train_pairs = directed_pairs(mine_pairs(train, wide), wide.symmetric).select("src", "dst", "count")
        refit_pairs = directed_pairs(mine_pairs(refit_log, wide), wide.symmetric).select(
            "src", "dst", "count"
        )
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
        refit_data=(refit_log, refit_pairs.select("src", "dst", "count")),
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
    start, end = int(split.train["timestamp"].min()), split.fit_end  # type: ignore[arg-type]
    span = float(max(end - start, 1))
    listed = ds.items["available_from"].fill_null(start).to_numpy().astype(np.float64)
    shelf = np.clip(end - np.maximum(listed, start), 0.0, span)
    mean_rate = counts.sum() / max(shelf.sum(), 1.0)
    b = prior_span * span
    return (counts + mean_rate * b) / (shelf + b) * span


def item_age_days(ds: Dataset, split: TemporalSplit) -> np.ndarray:
    """(N,) each item's age in days at the view's scoring time (:attr:`TemporalSplit.fit_end`):
    since its listing (the catalog's ``available_from`` where given) or else its first
    interaction in the data the view fits on. An item with neither is new: age 0."""
    end = split.fit_end
    first = np.full(len(split.item_counts), end, dtype=np.float64)
    if split.train.height:
        seen = split.train.group_by("item_idx").agg(pl.col("timestamp").min())
        first[seen["item_idx"].to_numpy()] = seen["timestamp"].to_numpy()
    if "available_from" in ds.items.columns:
        listed = ds.items["available_from"].to_numpy()
        given = ~np.isnan(listed.astype(np.float64))
        first[given] = listed[given]
    return np.clip(end - first, 0.0, None) / 86_400.0
