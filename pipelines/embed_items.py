"""Item vectors for a catalog: ``python -m pipelines.embed_items data=<name> [traces_dir=<generate_traces output>]``.

Parquet shards (item_id, vector, model id, trace version); resumable (finished shards are
skipped); data-parallel under ``torchrun`` (each rank its own shards); rank 0 writes the manifest.
"""

from __future__ import annotations

from typing import Any

import hydra
from omegaconf import DictConfig

from tte_recsys.experiment.stages import embed_items
from tte_recsys.runs import check_overrides, cli, output_dir


def run(cfg: DictConfig) -> dict[str, Any]:
    return embed_items(cfg, output_dir(cfg))


@hydra.main(version_base="1.3", config_path="../configs", config_name="embed_items")
def main(cfg: DictConfig) -> None:
    cli(run, cfg, print)


if __name__ == "__main__":
    check_overrides("embed_items")
    main()
