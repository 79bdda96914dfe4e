"""Serving bundle from a trained model: ``python -m pipelines.export_faiss model_dir=<train_i2i run>``.

Loads the run's unsharded export, writes every item's per-head vectors as parquet shards
(resumable; data-parallel under ``torchrun``), then (rank 0) one FAISS index per head, the id
table, item titles and a manifest; prints each head's ANN recall@K against exact search and QPS.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
import polars as pl
from omegaconf import DictConfig, OmegaConf

from tte_recsys import distributed
from tte_recsys.artifacts import read_manifest
from tte_recsys.config import from_mapping
from tte_recsys.models.export import load_export
from tte_recsys.runs import check_overrides, cli, load_dataset, output_dir
from tte_recsys.serving.bundle import build_bundle, write_vectors
from tte_recsys.serving.faiss_index import IndexConfig

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> dict[str, Any]:
    rank, world = distributed.init_from_env()
    index_cfg = from_mapping(IndexConfig, cfg.serving, "serving")
    for key in ("recall_k", "eval_queries"):  # the bundle's ANN recall check, measured before it ships
        if not (isinstance(cfg[key], int) and not isinstance(cfg[key], bool) and cfg[key] >= 1):
            raise ValueError(f"{key}={cfg[key]!r}: expected an integer >= 1")
    model_dir = Path(str(cfg.model_dir))
    read_manifest(model_dir, kind="train_i2i")  # a complete, untampered training run
    model = load_export(model_dir / "export")
    out = output_dir(cfg)
    stats = write_vectors(model, out, int(cfg.shard_size), rank, world)
    distributed.barrier()
    summary: dict[str, Any] = {}
    if rank == 0:
        train_cfg = OmegaConf.load(model_dir / "config.yaml")
        ds = load_dataset(train_cfg.data)
        titles = ds.items.select("item_id", "title")
        aligned = pl.DataFrame({"item_id": model.item_ids}).join(
            titles, on="item_id", how="left", maintain_order="left"
        )
        heads = build_bundle(
            model,
            out,
            index_cfg,
            int(cfg.recall_k),
            int(cfg.eval_queries),
            titles=aligned["title"].fill_null("").to_list(),
            extra={
                "model_dir": str(model_dir),
                "config": OmegaConf.to_container(cfg, resolve=True),
                "vectors": stats,
            },
        )
        summary = {
            h: {"index": v["index"]["kind"], "dim": v["dim"], "count": v["count"], **v["ann"]}
            for h, v in heads.items()
        }
        for h, v in summary.items():
            print(f"{h}: {v}")
    distributed.barrier()
    return summary


@hydra.main(version_base="1.3", config_path="../configs", config_name="export_faiss")
def main(cfg: DictConfig) -> None:
    cli(run, cfg)


if __name__ == "__main__":
    check_overrides("export_faiss")
    main()
