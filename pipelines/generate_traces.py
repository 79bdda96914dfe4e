"""Reasoning traces for a catalog: ``python -m pipelines.generate_traces data=<name> reasoner=<name>``.

Cached by (item, content hash, reasoner, prompt version) in ``cache_dir``: a re-run with nothing
changed makes zero model calls, and a killed run resumes. Under ``torchrun`` each rank takes
every world-th item and writes its own cache parts. Writes ``traces.parquet`` (every item that
has a trace) and ``summary.json`` (generated / cached / failed with reasons).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig

from tte_recsys import distributed
from tte_recsys.artifacts import write_json, write_parquet
from tte_recsys.runs import finish_run, load_dataset, output_dir
from tte_recsys.tte.items import item_inputs
from tte_recsys.tte.reasoner.cache import TraceCache
from tte_recsys.tte.reasoner.generate import TraceSummary, generate_traces, trace_keys
from tte_recsys.tte.reasoner.prompts import get_template

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> dict[str, Any]:
    rank, world = distributed.init_from_env()
    out = output_dir(cfg)
    ds = load_dataset(cfg.data)
    items = item_inputs(ds, list(cfg.data.content_fields))
    template = get_template(str(cfg.prompt))
    reasoner = instantiate(cfg.reasoner)
    cache = TraceCache(Path(str(cfg.cache_dir)), writer=f"rank{rank}")
    _, summary = generate_traces(
        items[rank::world], reasoner, template, cache, flush_every=int(cfg.flush_every)
    )
    summaries = distributed.all_gather_objects(summary.as_dict())
    distributed.barrier()
    merged: dict[str, Any] = {
        "reasoner_id": reasoner.reasoner_id,
        "prompt": template.key,
        "world_size": world,
        **TraceSummary.merge(summaries),
    }
    if rank == 0:
        traces = cache.lookup(trace_keys(items, reasoner.reasoner_id, template.key))
        write_parquet(out / "traces.parquet", traces)
        write_json(out / "summary.json", merged)
        finish_run(out, "generate_traces", cfg, {"summary": merged, "items": traces.height})
        log.info("traces: %s", {k: merged[k] for k in ("generated", "cached", "failed", "model_calls")})
    distributed.barrier()
    return merged


@hydra.main(version_base="1.3", config_path="../configs", config_name="generate_traces")
def main(cfg: DictConfig) -> None:
    try:
        s = run(cfg)
        print({k: s[k] for k in ("generated", "cached", "failed", "failure_reasons", "model_calls")})

    finally:
        distributed.shutdown()


if __name__ == "__main__":
    main()
