"""Baselines under the I2I protocol: ``python -m pipelines.evaluate data=<name> [+content_dirs.<name>=<embed_items output>]
[bundle_dir=<export_faiss output>]`` (the served bundle as a row: what serving returns, scored).

Writes report.json and report.md (one row per method) into the run folder and prints the table.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from functools import partial
from typing import Any

import hydra
from omegaconf import DictConfig

from tte_recsys.config import EvalConfig, from_mapping
from tte_recsys.data.labels import RelevanceLabeler
from tte_recsys.data.split import temporal_split
from tte_recsys.evaluation.baselines import ContentCosine
from tte_recsys.evaluation.protocol import evaluate_baselines_both_ways, paired_intervals
from tte_recsys.evaluation.report import write_report
from tte_recsys.retrieval import ItemRetriever
from tte_recsys.runs import check_overrides, cli, data_configs, finish_run, load_dataset, output_dir
from tte_recsys.serving.retriever import BundleRetriever
from tte_recsys.vectors import load_vectors

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> dict[str, Any]:
    """Split by time, fit the baselines on train (EASE lambda on valid), report test metrics."""
    out = output_dir(cfg)
    pairs_cfg, split_cfg, label_cfg = data_configs(cfg.data)
    eval_cfg = from_mapping(EvalConfig, cfg.eval, "eval")
    ds = load_dataset(cfg.data)
    split = temporal_split(ds, pairs_cfg, split_cfg)
    split.require_usable(ds.name)
    log.info("split: %s", split.stats())
    labeler = RelevanceLabeler.from_dataset(ds, label_cfg)
    extra: dict[str, Callable[[], ItemRetriever]] = {}
    for name, folder in (cfg.get("content_dirs") or {}).items():
        vectors = load_vectors(str(folder))
        aligned = vectors.aligned(ds.items["item_id"].to_list())
        extra[f"content:{name}"] = partial(ContentCosine, aligned)
        log.info("content:%s = %s (%s, traces: %s)", name, folder, vectors.model_id, vectors.trace_version)
    if cfg.get("bundle_dir"):
        served = BundleRetriever.load(str(cfg.bundle_dir))
        if served.item_ids != ds.items["item_id"].to_list():
            raise ValueError(
                f"bundle {cfg.bundle_dir} was built for another catalog ({len(served.item_ids)} items) than "
                f"dataset {ds.name!r} ({ds.num_items} items): pass the data config the model was trained on"
            )
        extra["served"] = lambda: served
        log.info("served bundle %s: %s", cfg.bundle_dir, served.describe())
    # content-only rows and the served bundle need no fit: the same retrievers in both views
    methods, refit, selection = evaluate_baselines_both_ways(
        split, labeler, ds.num_users, eval_cfg, extra=extra, refit_extra=extra
    )
    intervals = None
    if against := cfg.get("intervals_against"):  # each added row against one of them, on test
        if against not in extra:
            raise ValueError(
                f"intervals_against={against!r}: expected one of the added rows {sorted(extra)} "
                "(add rows with +content_dirs.<name>=<embed_items folder> or bundle_dir=<bundle>)"
            )
        pairs = [(name, str(against)) for name in extra if name != against]
        intervals = paired_intervals(extra, pairs, split.test, eval_cfg.select_k, eval_cfg.batch_size)
    report = {
        "dataset": ds.name,
        "dataset_stats": ds.stats(),
        "split": split.stats(),
        "eval": {"ks": sorted(eval_cfg.ks), "select_k": eval_cfg.select_k},
        "labels": dataclasses.asdict(label_cfg),
        "selection": selection,
        "methods": methods,
        **({"methods_refit": refit} if refit is not None else {}),
        **({"intervals": intervals} if intervals is not None else {}),
    }
    table = write_report(out, report, title=f"I2I baselines: {ds.name}")
    finish_run(out, "evaluate", cfg)
    print(table)
    return report


@hydra.main(version_base="1.3", config_path="../configs", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    cli(run, cfg)


if __name__ == "__main__":
    check_overrides("evaluate")
    main()
