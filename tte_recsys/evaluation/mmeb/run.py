"""The MMEB-V2 evaluation: select tasks -> read each -> (traces) -> encode both sides, cached and
data-parallel -> score on rank 0 -> ``report.json``, ``report.md``, per-query predictions.

Every rank reads every task (cheap) and encodes its own shards of each side; rank 0 scores once
all shards are written. A task whose files are missing is reported as skipped with the path.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from tte_recsys import distributed
from tte_recsys.artifacts import write_json, write_parquet, write_text
from tte_recsys.config import from_mapping
from tte_recsys.evaluation.mmeb.data import Entry, MissingTaskData, TaskData, safe_name
from tte_recsys.evaluation.mmeb.encode import SideJob, encode_side, load_side
from tte_recsys.evaluation.mmeb.readers import ReadSettings, read_task
from tte_recsys.evaluation.mmeb.registry import families, select_tasks, task_table
from tte_recsys.evaluation.mmeb.report import render_report
from tte_recsys.evaluation.mmeb.scoring import TIES, aggregate, score_task
from tte_recsys.runs import finish_run
from tte_recsys.tte.factory import encoder_from_config
from tte_recsys.tte.items import with_trace
from tte_recsys.tte.reasoner.cache import TraceCache
from tte_recsys.tte.reasoner.generate import generate_traces, trace_keys, trace_texts
from tte_recsys.tte.reasoner.prompts import get_template

__all__ = ["evaluate_mmeb", "list_tasks"]

log = logging.getLogger(__name__)
THINK = ("none", "query", "target", "both")


def list_tasks(cfg: DictConfig, out: Path) -> dict[str, Any]:
    """Write ``tasks.json`` (the selected tasks, every field) and print the table; reads no data."""
    tasks = _selected(cfg)
    write_json(out / "tasks.json", [t.__dict__ for t in tasks])
    print(task_table(tasks))
    return {"tasks": len(tasks)}


def _selected(cfg: DictConfig) -> list[Any]:
    return select_tasks(
        list(cfg.tasks or []),
        list(cfg.modalities or []),
        list(cfg.meta_tasks or []),
        dict(cfg.versions or {}),
    )


def _traces(
    entries: list[Entry], prompt: str, reasoner: Any, cache: TraceCache, rank: int, world: int
) -> dict[str, str]:
    """name -> trace for ``entries`` (each rank generates every world-th, all read the cache)."""
    template = get_template(prompt)
    items = [e.to_item() for e in entries]
    generate_traces(items[rank::world], reasoner, template, cache, show_progress=rank == 0)
    distributed.barrier()
    return trace_texts(cache.lookup(trace_keys(items, reasoner.reasoner_id, template.key)))


def evaluate_mmeb(cfg: DictConfig, out: Path, root: Path) -> dict[str, Any]:
    """Evaluate the configured embedder on the selected tasks under ``root``; rank 0 writes the report."""
    rank, world = distributed.init_from_env()
    if cfg.ties not in TIES:
        raise ValueError(f"ties={cfg.ties!r}: expected one of {list(TIES)}")
    if cfg.think not in THINK:
        raise ValueError(f"think={cfg.think!r}: expected one of {list(THINK)}")
    if not (isinstance(cfg.top_k, int) and cfg.top_k >= 1):
        raise ValueError(f"top_k={cfg.top_k!r}: expected an integer >= 1 (candidates kept per query)")
    if not root.is_dir():
        raise FileNotFoundError(
            f"root={root}: not a folder; expected a local MMEB-V2 root (docs/mmeb.md, 'Data layout')"
        )
    tasks = _selected(cfg)
    fams = families(OmegaConf.to_container(cfg.columns, resolve=True) if cfg.columns else None)  # type: ignore[arg-type]
    read = from_mapping(ReadSettings, cfg.read, "read")
    encoder, model_id, fingerprint = encoder_from_config(cfg.embedder)
    reasoner = instantiate(cfg.reasoner) if cfg.think != "none" else None
    trace_cache = TraceCache(Path(str(cfg.trace_cache_dir)), writer=f"rank{rank}") if reasoner else None
    batch_size = int(cfg.embedder.get("batch_size", 32))
    scored: dict[str, dict[str, Any]] = {}
    skipped: dict[str, str] = {}
    encoding: dict[str, dict[str, int]] = {}
    for task in tasks:
        try:
            data = read_task(task, fams[task.family], root, read, Path(str(cfg.cache_dir)) / "pixels")
        except MissingTaskData as e:
            skipped[task.label] = f"missing {e}"
            log.warning("task %s skipped: missing %s", task.label, e)
            continue
        jobs, n_traces = [], {}
        for side, entries in (("query", data.queries), ("target", data.candidates)):
            traces: dict[str, str] = {}
            version = "none"
            if reasoner is not None and trace_cache is not None and cfg.think in (side, "both"):
                prompt = str(cfg.prompts[side])
                traces = _traces(entries, prompt, reasoner, trace_cache, rank, world)
                version = f"{reasoner.reasoner_id}|{get_template(prompt).key}"
            texts = [with_trace(e.text, traces.get(e.name)) for e in entries]
            n_traces[side] = sum(e.name in traces for e in entries)
            job = SideJob(
                task.label,
                side,
                entries,
                texts,
                Path(str(cfg.cache_dir)),
                fingerprint,
                version,
                int(cfg.shard_size),
            )
            stats = encode_side(job, encoder, batch_size, rank, world)
            merged = distributed.all_gather_objects(stats)
            encoding[f"{task.label}/{side}"] = {k: sum(s[k] for s in merged) for k in stats}
            jobs.append(job)
        distributed.barrier()
        if rank == 0:
            scored[task.label] = {**_score(cfg, out, data, jobs), "traces": n_traces}
            log.info("%s: %s %.2f", task.label, task.metric, scored[task.label]["score"])
    result: dict[str, Any] = {"scored": len(scored), "skipped": len(skipped), "encoding": encoding}
    if rank == 0:
        meta = {t.label: (t.modality, t.meta_task) for t in tasks if t.label in scored}
        report = {
            "embedder": model_id,
            "fingerprint": fingerprint,
            "think": cfg.think,
            "ties": cfg.ties,
            "read": read.__dict__,
            "versions": {t.name: t.version for t in tasks if t.version is not None},
            "tasks": scored,
            "skipped": skipped,
            **aggregate({k: v["score"] for k, v in scored.items()}, meta),
        }
        report["overall"]["skipped"] = len(skipped)
        write_json(out / "report.json", report)
        write_text(out / "report.md", render_report(report))
        write_json(out / "encoding.json", encoding)
        finish_run(out, "eval_mmeb", cfg, {"overall": report["overall"]})
        result["overall"] = report["overall"]
    distributed.barrier()
    return result


def _score(cfg: DictConfig, out: Path, data: TaskData, jobs: list[SideJob]) -> dict[str, Any]:
    q, c = load_side(jobs[0]), load_side(jobs[1])
    t = data.spec
    res = score_task(
        q,
        c,
        data.lists,
        data.relevance,
        t.metric,
        names=[e.name for e in data.candidates],
        query_names=[e.name for e in data.queries],
        ties=str(cfg.ties),
        top_k=int(cfg.top_k),
    )
    write_parquet(out / "predictions" / f"{safe_name(t.label)}.parquet", res.predictions)
    return {
        "score": res.score,
        "metric": t.metric,
        "modality": t.modality,
        "meta_task": t.meta_task,
        "family": t.family,
        "version": t.version,
        "candidates": t.candidates,
        "dataset": t.dataset,
        **data.stats(),
        "notes": data.notes,
    }
