"""Which items reasoning traces help or hurt: per trigger, content-only recall@K of each scored
reasoner (a ``train_reasoner`` run with ``score/``: its catalog traces and item vectors, fused
with its trace vectors as the run chose on valid) beside
the run without traces, with the titles and traces to read. What ``notebooks/tte_traces.ipynb``
shows; the runs must share one dataset and split (checked)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import polars as pl
from omegaconf import OmegaConf

from tte_recsys.data.split import TemporalSplit, temporal_split
from tte_recsys.evaluation.baselines import ContentCosine
from tte_recsys.evaluation.metrics import per_trigger_recall
from tte_recsys.experiment.trace_choice import content_retriever_vectors
from tte_recsys.runs import data_configs, load_dataset
from tte_recsys.tte.fusion import TraceFusion
from tte_recsys.tte.items import item_inputs
from tte_recsys.tte.reasoner.generate import load_trace_texts
from tte_recsys.vectors import load_vectors

__all__ = ["trace_effects"]


def _split_of(run: Path) -> tuple[object, TemporalSplit, list[str], dict[str, str]]:
    cfg = OmegaConf.load(run / "config.yaml")
    ds = load_dataset(cfg.data)
    pairs_cfg, split_cfg, _ = data_configs(cfg.data)
    items = item_inputs(ds, list(cfg.data.content_fields))
    traces_dir = run / "score" / "traces"
    traces = load_trace_texts(traces_dir, items)[0] if (traces_dir / "manifest.json").is_file() else {}
    return ds, temporal_split(ds, pairs_cfg, split_cfg), [it.item_id for it in items], traces


def _scored_retriever(run: Path, ids: list[str]) -> ContentCosine:
    """Content cosine as the run scored it: its item vectors, fused with its trace vectors at the
    weight and side it chose on valid (``report.json``: ``retrieval.traces``) when it fused."""
    plain = load_vectors(run / "score" / "vectors").aligned(ids)
    report = run / "report.json"
    chosen = json.loads(report.read_text()).get("retrieval", {}).get("traces") if report.is_file() else None
    if not chosen:
        return ContentCosine(plain)
    trace = load_vectors(run / "score" / "trace_vectors").aligned(ids)
    fusion = TraceFusion("fuse", float(chosen["weight"]), str(chosen["side"]))
    return ContentCosine(*content_retriever_vectors(plain, trace, fusion))


def trace_effects(runs: Mapping[str, str | Path], k: int = 50, which: str = "test") -> pl.DataFrame:
    """One row per held-out trigger of ``which`` (valid or test): its id and title, and for each
    run label ``recall_<label>`` (recall@``k`` of content cosine with that run's item vectors)
    and ``trace_<label>`` (the trigger's trace, empty without one).

    Args:
        runs: label -> a ``train_reasoner`` run folder scored with ``score=true`` or ``method=score``.
        k: the cut-off.
        which: the held-out set.
    """
    if which not in ("valid", "test"):
        raise ValueError(f"which={which!r}: expected 'valid' or 'test'")
    out: pl.DataFrame | None = None
    ref_ids: list[str] | None = None
    for label, run in runs.items():
        d = Path(run)
        if not (d / "score" / "vectors").is_dir():
            raise FileNotFoundError(
                f"{label}: {d}/score/vectors not found; score the run (score=true or method=score)"
            )
        ds, split, ids, traces = _split_of(d)
        if ref_ids is not None and ids != ref_ids:
            raise ValueError(
                f"{label}: {d} is on another catalog than the first run; compare runs of one dataset"
            )
        ref_ids = ids
        ev = split.valid if which == "valid" else split.test
        topk = _scored_retriever(d, ids).retrieve(ev.triggers, k)
        rec = per_trigger_recall(ev, topk)
        trig = [ids[int(t)] for t in ev.triggers]
        frame = pl.DataFrame(
            {"item_id": trig, f"recall_{label}": rec, f"trace_{label}": [traces.get(i, "") for i in trig]}
        )
        if out is None:
            titles = dict(zip(ds.items["item_id"].to_list(), ds.items["title"].to_list(), strict=True))  # type: ignore[attr-defined]
            frame = frame.with_columns(pl.Series("title", [titles.get(i, "") for i in trig]))
            out = frame
        else:
            if out["item_id"].to_list() != trig:
                raise ValueError(
                    f"{label}: {d} has other {which} triggers than the first run (another split)"
                )
            out = out.hstack(frame.drop("item_id"))
    if out is None:
        raise ValueError("runs: give at least one run")
    return out.select(
        "item_id", "title", *[c for c in out.columns if c not in ("item_id", "title")]
    ).with_columns(pl.col(c).fill_nan(None) for c in out.columns if c.startswith("recall_"))
