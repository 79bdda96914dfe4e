"""Generate traces for items through any reasoner, with the cache in front of it."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from tte_recsys.artifacts import read_manifest
from tte_recsys.progress import progress
from tte_recsys.tte.items import ItemInput
from tte_recsys.tte.reasoner.backends import Reasoner, TraceRequest
from tte_recsys.tte.reasoner.cache import TraceCache
from tte_recsys.tte.reasoner.prompts import ParsedTrace, PromptTemplate, parse_trace

__all__ = ["TraceSummary", "generate_traces", "load_trace_texts", "trace_keys", "trace_texts"]

log = logging.getLogger(__name__)


@dataclass
class TraceSummary:
    """What a run did: generated, served from cache, failed (with reasons), model calls."""

    generated: int = 0
    cached: int = 0
    failed: dict[str, str] = field(default_factory=dict)
    model_calls: int = 0

    @staticmethod
    def merge(parts: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """Sum per-rank :meth:`as_dict` results into one."""
        out: dict[str, Any] = {
            k: sum(int(p[k]) for p in parts) for k in ("generated", "cached", "failed", "model_calls")
        }
        reasons: Counter[str] = Counter()
        for p in parts:
            reasons.update(p["failure_reasons"])
        out["failure_reasons"] = dict(reasons)
        out["failed_examples"] = {k: v for p in parts for k, v in p["failed_examples"].items()}
        return out

    def as_dict(self) -> dict[str, object]:
        reasons = Counter(r.split(":")[0] for r in self.failed.values())
        return {
            "generated": self.generated,
            "cached": self.cached,
            "failed": len(self.failed),
            "failure_reasons": dict(reasons),
            "failed_examples": dict(list(self.failed.items())[:20]),
            "model_calls": self.model_calls,
        }


def trace_keys(items: Sequence[ItemInput], reasoner_id: str, prompt: str) -> pl.DataFrame:
    """The cache key of each item (item id, content hash, reasoner id, prompt), in item order."""
    return pl.DataFrame(
        {
            "item_id": [it.item_id for it in items],
            "content_hash": [it.content_hash() for it in items],
            "reasoner_id": reasoner_id,
            "prompt": prompt,
        }
    )


def generate_traces(
    items: Sequence[ItemInput],
    reasoner: Reasoner,
    template: PromptTemplate,
    cache: TraceCache,
    flush_every: int = 64,
    show_progress: bool = True,
) -> tuple[pl.DataFrame, TraceSummary]:
    """Traces for ``items``: cached ones are reused, the rest generated and cached every ``flush_every``.

    Returns:
        (frame of the cache rows for these items, in input order where present; summary). Failed
        items are absent from the frame and listed in the summary with their reason.
    """
    if not (isinstance(flush_every, int) and flush_every >= 1):
        raise ValueError(f"flush_every={flush_every!r}: expected an integer >= 1 (traces per cache write)")
    summary = TraceSummary()
    calls_before = reasoner.calls
    keys = trace_keys(items, reasoner.reasoner_id, template.key)
    hashes = keys["content_hash"].to_list()
    cached_ids = set(cache.lookup(keys)["item_id"].to_list())
    todo: list[tuple[ItemInput, str]] = []
    for it, h in zip(items, hashes, strict=True):
        if it.item_id in cached_ids:
            summary.cached += 1
        elif it.is_empty:
            summary.failed[it.item_id] = "empty_item: no text and no image"
        elif it.image_path is not None and not Path(it.image_path).is_file():
            summary.failed[it.item_id] = f"missing_image: {it.image_path}"
        else:
            todo.append((it, h))
    bar = progress(
        total=len(todo), desc=f"traces ({reasoner.reasoner_id})", disable=not show_progress or not todo
    )
    for start in range(0, len(todo), flush_every):
        chunk = todo[start : start + flush_every]
        reqs = [TraceRequest(it.item_id, template.messages(it.text), it.image_path) for it, _ in chunk]
        results = reasoner.generate(reqs)
        rows = []
        for (it, h), res in zip(chunk, results, strict=True):
            if isinstance(res, Exception):
                summary.failed[it.item_id] = f"{type(res).__name__}: {res}"
                continue
            p = parse_trace(res)
            if not p.text:
                # Not cached: a sampling reasoner may do better next run; greedy ones are retried cheaply.
                summary.failed[it.item_id] = "empty_output: the reasoner wrote nothing usable"
                continue
            rows.append(
                {
                    "item_id": it.item_id,
                    "content_hash": h,
                    "reasoner_id": reasoner.reasoner_id,
                    "prompt": template.key,
                    "raw": res,
                    "thinking": p.thinking,
                    "summary": p.summary,
                    "issue": p.issue,
                }
            )
        if rows:
            cache.append(pl.DataFrame(rows, schema_overrides={"issue": pl.String}))
        summary.generated += len(rows)
        bar.update(len(chunk))
    bar.close()
    summary.model_calls = reasoner.calls - calls_before
    return cache.lookup(keys), summary


def load_trace_texts(traces_dir: str | Path, items: Sequence[ItemInput]) -> tuple[dict[str, str], str]:
    """Read a ``generate_traces`` folder (manifest verified): item_id -> trace text for items whose
    content hash still matches (stale and empty traces are left out), and the trace version."""
    m = read_manifest(traces_dir, kind="generate_traces")
    df = pl.read_parquet(Path(traces_dir) / "traces.parquet")
    current = pl.DataFrame(
        {"item_id": [it.item_id for it in items], "content_hash": [it.content_hash() for it in items]}
    )
    df = df.join(current, on=["item_id", "content_hash"], how="semi")
    return trace_texts(df), f"{m['summary']['reasoner_id']}|{m['summary']['prompt']}"


def trace_texts(rows: pl.DataFrame) -> dict[str, str]:
    """item_id -> what the embedder reads of each cached trace (thinking and summary, tags
    removed); rows whose trace is empty are left out."""
    texts = (
        (i, ParsedTrace(t, s).text) for i, t, s in rows.select("item_id", "thinking", "summary").iter_rows()
    )
    return {i: text for i, text in texts if text}
