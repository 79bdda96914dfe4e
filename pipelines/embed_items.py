"""Item vectors for a catalog: ``python -m pipelines.embed_items data=<name> [traces_dir=<generate_traces output>]``.

Parquet shards (item_id, vector, model id, trace version); resumable (finished shards are
skipped); data-parallel under ``torchrun`` (each rank its own shards); rank 0 writes the manifest.
"""

from __future__ import annotations

import logging
from typing import Any

import hydra
from omegaconf import DictConfig

from tte_recsys import distributed
from tte_recsys.runs import finish_run, load_dataset, output_dir
from tte_recsys.serving.embed_job import JobSpec, embed_catalog
from tte_recsys.tte.embedder import embedder_from_config
from tte_recsys.tte.items import item_inputs
from tte_recsys.tte.reasoner.generate import load_trace_texts

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> dict[str, Any]:
    rank, world = distributed.init_from_env()
    out = output_dir(cfg)
    ds = load_dataset(cfg.data)
    items = item_inputs(ds, list(cfg.data.content_fields))
    traces, trace_version = load_trace_texts(str(cfg.traces_dir), items) if cfg.traces_dir else ({}, "none")
    embedder, model_id = embedder_from_config(cfg.embedder)
    spec = JobSpec(ds.name, ds.num_items, int(cfg.shard_size), model_id, trace_version)
    stats = embed_catalog(items, embedder, out, spec, traces, rank, world, int(cfg.embedder.batch_size))
    all_stats = distributed.all_gather_objects(stats)
    distributed.barrier()
    result = {k: sum(s[k] for s in all_stats) for k in stats}
    result.update(items=ds.num_items, items_with_trace=len(traces), dim=embedder.dim, world_size=world)
    if rank == 0:
        finish_run(out, "embed_items", cfg, {"model_id": model_id, "trace_version": trace_version, **result})
        log.info("embed_items: %s", result)
    distributed.barrier()
    return result


@hydra.main(version_base="1.3", config_path="../configs", config_name="embed_items")
def main(cfg: DictConfig) -> None:
    try:
        print(run(cfg))

    finally:
        distributed.shutdown()


if __name__ == "__main__":
    main()
