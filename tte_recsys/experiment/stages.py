"""The catalog stages every workflow shares: reasoning traces and item vectors.

``pipelines.generate_traces`` and ``pipelines.embed_items`` are each one of these; the I2I
experiment calls them for its own traces and content vectors, with the run's ``data``,
``embedder`` and ``reasoner`` sections (:func:`stage_config`). Both run data-parallel under
``torchrun`` (every rank calls them) and resume; rank 0 writes the folder's manifest last.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, cast

import polars as pl
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from tte_recsys import distributed
from tte_recsys.artifacts import write_json, write_parquet
from tte_recsys.runs import finish_run, load_dataset
from tte_recsys.serving.embed_job import embed_catalog, embed_trace_catalog
from tte_recsys.tte.factory import encoder_from_config
from tte_recsys.tte.fusion import TraceFusion
from tte_recsys.tte.items import item_inputs
from tte_recsys.tte.reasoner.cache import TraceCache
from tte_recsys.tte.reasoner.generate import TraceSummary, generate_traces, load_trace_texts, trace_keys
from tte_recsys.tte.reasoner.prompts import get_template
from tte_recsys.vectors import SHARDS, JobSpec

__all__ = ["embed_items", "generate_catalog_traces", "stage_config", "trace_fusion", "uses_reasoner"]

log = logging.getLogger(__name__)


def generate_catalog_traces(cfg: DictConfig, out: Path) -> dict[str, Any]:
    """Traces for every catalog item (``cfg``: ``data``, ``reasoner``, ``prompt``, ``cache_dir``,
    ``flush_every``) into ``out``: ``traces.parquet``, ``summary.json`` and the manifest.

    Cached by (item, content hash, reasoner, prompt version) in ``cache_dir``: nothing changed,
    zero model calls; a killed run resumes. Each rank takes every world-th item."""
    rank, world = distributed.init_from_env()
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


def embed_items(cfg: DictConfig, out: Path, what: str = "items") -> dict[str, Any]:
    """Item vectors for the catalog (``cfg``: ``data``, ``embedder``, ``traces_dir``,
    ``shard_size``) into ``out``: an item-vector folder (:mod:`tte_recsys.vectors`) + manifest.
    ``what``: ``items`` (each item with its traces as ``embedder.traces`` says) or ``traces``
    (each item's trace vector alone: the input of fusion and of the MTMH tower's trace input)."""
    rank, world = distributed.init_from_env()
    ds = load_dataset(cfg.data)
    items = item_inputs(ds, list(cfg.data.content_fields))
    traces, trace_version = load_trace_texts(str(cfg.traces_dir), items) if cfg.traces_dir else ({}, "none")
    embedder, model_id, _ = encoder_from_config(cfg.embedder)  # local or served (embedder=openai)
    batch = int(cfg.embedder.batch_size)
    if what == "traces":
        if not traces:
            raise ValueError(f"trace vectors: no traces in {cfg.traces_dir!r} for this catalog")
        spec = JobSpec(ds.name, ds.num_items, cfg.shard_size, model_id, f"{trace_version}|trace-only")
        stats = embed_trace_catalog(items, embedder, out, spec, traces, rank, world, batch)
    else:
        fusion = trace_fusion(cfg.embedder)
        if traces:  # the same traces fused another way are other vectors: refused on resume
            trace_version += f"|{fusion.version}"
        spec = JobSpec(ds.name, ds.num_items, cfg.shard_size, model_id, trace_version)
        stats = embed_catalog(items, embedder, out, spec, traces, rank, world, batch, fusion)
    all_stats = distributed.all_gather_objects(stats)
    distributed.barrier()
    result: dict[str, Any] = {k: sum(s[k] for s in all_stats) for k in stats}
    dim = embedder.dim or _written_dim(out)  # a served embedder that encoded nothing here (resumed)
    result.update(items=ds.num_items, items_with_trace=len(traces), dim=dim, world_size=world)
    if rank == 0:
        meta = {"model_id": model_id, "trace_version": spec.trace_version, "vectors": what, **result}
        finish_run(out, "embed_items", cfg, meta)
        log.info("embed_items: %s", result)
    distributed.barrier()
    return result


def trace_fusion(e: Any) -> TraceFusion:
    """An ``embedder`` section's :class:`TraceFusion` (``traces``, ``trace_weight``, ``trace_side``)."""
    d = TraceFusion()
    weight = e.get("trace_weight", d.weight)
    try:
        weight = float(weight)
    except (TypeError, ValueError):
        raise ValueError(f"embedder.trace_weight={weight!r}: expected a number >= 0") from None
    return TraceFusion(str(e.get("traces", d.mode)), weight, str(e.get("trace_side", d.side)))


def _written_dim(out: Path) -> int:
    """The width of the vectors in ``out``'s first shard."""
    shard = min((out / SHARDS).glob("part-*.parquet"))
    return int(pl.read_parquet_schema(shard)["vector"].size)  # type: ignore[attr-defined]


def stage_config(cfg: DictConfig, **keys: Any) -> DictConfig:
    """A stage's config inside a bigger run: its shared sections (``data``, ``embedder``,
    ``reasoner``, resolved) plus ``keys``; what the stage's folder records as its config."""
    shared = {k: cfg[k] for k in ("data", "embedder", "reasoner") if k in cfg}
    resolved = cast(dict[str, Any], OmegaConf.to_container(OmegaConf.create(shared), resolve=True))
    return OmegaConf.create({**resolved, **keys})


def uses_reasoner(cfg: DictConfig) -> bool:
    """Whether the configured reasoner writes traces (``reasoner=none`` embeds items as they are)."""
    return not str(cfg.reasoner.get("_target_", "")).endswith("NoReasoner")
