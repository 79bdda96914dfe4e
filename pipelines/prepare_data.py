"""Write a dataset's validated canonical tables: ``python -m pipelines.prepare_data data=<name>``."""

from __future__ import annotations

import logging
from typing import Any

import hydra
from omegaconf import DictConfig

from tte_recsys.runs import check_overrides, cli, finish_run, load_dataset, output_dir

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> dict[str, Any]:
    """Load + validate through the configured adapter, write items/interactions(/relations).parquet."""
    out = output_dir(cfg)
    ds = load_dataset(cfg.data)
    ds.save(out)
    finish_run(out, "prepare_data", cfg, {"dataset": ds.name, "stats": ds.stats()})
    log.info("wrote %s to %s", ds.stats(), out)
    return {"dataset": ds.name, **ds.stats(), "output_dir": str(out)}


@hydra.main(version_base="1.3", config_path="../configs", config_name="prepare_data")
def main(cfg: DictConfig) -> None:
    cli(run, cfg, print)


if __name__ == "__main__":
    check_overrides("prepare_data")
    main()
