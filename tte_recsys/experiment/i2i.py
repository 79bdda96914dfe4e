"""The I2I experiment (``pipelines.train_i2i``) as separately callable steps.

1. :func:`prepare`: split the log by time, get the content vectors (after the reasoner's traces
   when one is configured), build the labels, the item features and the content tower.
2. :func:`train_grid`: the MTMH model for each lambda of ``select.lams``.
3. :func:`select`: lambda, id prior, popularity prior and serving quota, jointly on valid.
4. :func:`train_references`: the one-head model (lambda = 0) and the id-only model.
5. :func:`score`: every method and the classical baselines on test, and the quota curves.
6. :func:`export_chosen` and :func:`assemble_report`: the served model and ``report.json``.

Every rank calls 1-4 (training is collective); 5-6 run on rank 0.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache, partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from tte_recsys import distributed
from tte_recsys.config import LabelConfig, PairConfig
from tte_recsys.data.dataset import Dataset
from tte_recsys.data.labels import RelevanceLabeler
from tte_recsys.data.split import TemporalSplit, popularity_basis, popularity_counts, temporal_split
from tte_recsys.evaluation.baselines import ContentCosine
from tte_recsys.evaluation.protocol import evaluate_baselines, evaluate_retriever
from tte_recsys.evaluation.quota import choose_point
from tte_recsys.experiment.config import I2IConfig
from tte_recsys.experiment.stages import embed_items, generate_catalog_traces, stage_config, uses_reasoner
from tte_recsys.experiment.trainer import TrainContext, Trained, VariantTrainer
from tte_recsys.models.content import ContentSpec, ContentTower, FrozenContent, build_content_tower
from tte_recsys.models.export import save_export
from tte_recsys.models.mtmh import ItemFeatures
from tte_recsys.retrieval import ItemRetriever
from tte_recsys.runs import data_configs, load_dataset
from tte_recsys.serving.merge import HeadVectorsRetriever, popularity_bias, quota_shares
from tte_recsys.tte.items import embedding_text, item_inputs
from tte_recsys.tte.reasoner.generate import load_trace_texts
from tte_recsys.vectors import load_vectors

__all__ = [
    "Choice",
    "Grid",
    "I2IRun",
    "Scores",
    "assemble_report",
    "export_chosen",
    "prepare",
    "quota_sweep",
    "score",
    "select",
    "train_grid",
    "train_references",
]

log = logging.getLogger(__name__)


@dataclass
class I2IRun:
    """One experiment's shared state, made by :func:`prepare`."""

    cfg: I2IConfig
    ds: Dataset
    split: TemporalSplit
    pairs_cfg: PairConfig
    label_cfg: LabelConfig
    labeler: RelevanceLabeler
    features: ItemFeatures
    content: ContentTower | None
    content_spec: ContentSpec
    content_folder: str | None  # the frozen mode's vectors / the content-only baseline's
    biases: dict[float, np.ndarray | None]  # popularity prior per grid weight
    trainer: VariantTrainer
    out: Path
    rank: int = 0
    world: int = 1

    @property
    def heads(self) -> list[str]:
        return list(self.cfg.model.heads)


@dataclass
class Grid:
    """The MTMH trainings of ``select.lams`` and (rank 0) every valid point they give."""

    trained: dict[float, Trained]
    candidates: list[dict[str, Any]]


@dataclass(frozen=True)
class Choice:
    """The valid-chosen operating point."""

    lam: float
    shrink: float
    pop: float
    share: float


@dataclass
class Scores:
    """Test metrics of every method, the baselines' selection, and the quota curves."""

    methods: dict[str, Any]
    selection: dict[str, Any]
    test_curve: list[dict[str, Any]]
    valid_curve: list[dict[str, Any]]


def _traces(cfg: DictConfig, out: Path) -> str | None:
    """The traces to embed with: ``traces_dir``, or generated into ``out/traces`` when a
    reasoner is configured (the trace cache makes a second call free)."""
    if cfg.traces_dir:
        return str(cfg.traces_dir)
    if not uses_reasoner(cfg):
        return None
    sub = stage_config(
        cfg,
        prompt=cfg.prompt,
        cache_dir=cfg.cache_dir,
        flush_every=cfg.flush_every,
        output_dir=str(out / "traces"),
    )
    generate_catalog_traces(sub, out / "traces")
    return str(out / "traces")


def _content_folder(cfg: DictConfig, out: Path, traces: Callable[[], str | None]) -> str:
    """``content_dir``, or the configured embedder's item vectors embedded into ``out/content``."""
    if cfg.content_dir:
        return str(cfg.content_dir)
    folder = out / "content"
    sub = stage_config(cfg, traces_dir=traces(), shard_size=cfg.shard_size, output_dir=str(folder))
    embed_items(sub, folder)
    return str(folder)


def _content_tower(
    run_cfg: I2IConfig, cfg: DictConfig, ds: Dataset, folder: str | None, traces: Callable[[], str | None]
) -> tuple[ContentTower | None, ContentSpec]:
    """The content tower ``model.content`` asks for, from the one factory, and its spec."""
    mode = run_cfg.model.content
    spec = ContentSpec.from_embedder_config(
        mode, cfg.embedder, dataclasses.asdict(run_cfg.lora), run_cfg.content_checkpointing
    )
    if mode == "none":
        return None, spec
    if mode == "frozen":
        assert folder is not None, "frozen content needs its vectors folder"
        vectors = load_vectors(folder)
        table = vectors.aligned(ds.items["item_id"].to_list())
        want = run_cfg.model.content_dim
        if want is not None and table.shape[1] != want:
            raise ValueError(
                f"model.content_dim={want} but the content vectors in {folder} have dim {table.shape[1]}"
            )
        log.info(
            "frozen content: %s (%s, traces %s), dim %d",
            folder,
            vectors.model_id,
            vectors.trace_version,
            table.shape[1],
        )
        return build_content_tower(spec, table=torch.from_numpy(table)), spec
    items = item_inputs(ds, list(cfg.data.content_fields))
    traces_dir = traces()
    texts = load_trace_texts(traces_dir, items)[0] if traces_dir else {}
    texts_in = [embedding_text(it, texts.get(it.item_id)) for it in items]
    tower = build_content_tower(
        spec, texts=texts_in, seed=run_cfg.trainer.seed, device=str(cfg.embedder.get("device", "auto"))
    )
    return tower, spec


def prepare(cfg: DictConfig, out: Path, rank: int = 0, world: int = 1) -> I2IRun:
    """Everything the trainings share. Every config section is checked before any work; with
    ``data.labels.teacher=content`` the run's own content vectors teach the semantic head (and
    ``cfg`` is updated to name their folder, so the saved config does)."""
    run_cfg = I2IConfig.from_cfg(cfg)  # fails before any work
    pairs_cfg, split_cfg, label_cfg = data_configs(cfg.data)
    ds = load_dataset(cfg.data)
    split = temporal_split(ds, pairs_cfg, split_cfg)
    split.require_usable(ds.name)
    # the popularity prior per grid weight (train counts, or per time on the shelf: available_from)
    pop_counts = popularity_counts(ds, split)
    biases = {pop: popularity_bias(pop_counts, pop) for pop in run_cfg.select.pop_priors}
    own_teacher = label_cfg.teacher == "content"
    labeler = None if own_teacher else RelevanceLabeler.from_dataset(ds, label_cfg)  # fails early
    traces = cache(partial(_traces, cfg, out))  # the reasoner runs at most once, and only if needed
    # the frozen mode's vectors and the content-only baseline (for trainable content: the embedder
    # before training, where the tower starts)
    needs_folder = run_cfg.model.content != "none" or own_teacher
    folder = _content_folder(cfg, out, traces) if needs_folder else None
    if labeler is None:
        label_cfg = dataclasses.replace(label_cfg, teacher=folder)
        labeler = RelevanceLabeler.from_dataset(ds, label_cfg)
        OmegaConf.update(cfg, "data.labels.teacher", folder)  # the saved config names the folder
    model_cfg = run_cfg.model
    features = ItemFeatures.from_items(ds.items, model_cfg.features, model_cfg.no_id(split.item_counts))
    content, spec = _content_tower(run_cfg, cfg, ds, folder, traces)
    ctx = TrainContext(
        split,
        labeler,
        features,
        ds.num_items,
        run_cfg.eval,
        run_cfg.trainer,
        out / "checkpoints",
        run_cfg.resume,
        rank,
        world,
    )
    return I2IRun(
        run_cfg,
        ds,
        split,
        pairs_cfg,
        label_cfg,
        labeler,
        features,
        content,
        spec,
        folder,
        biases,
        VariantTrainer(ctx),
        out,
        rank,
        world,
    )


def quota_sweep(
    run: I2IRun, vecs: dict[str, np.ndarray], which: Any, bias: np.ndarray | None
) -> list[dict[str, Any]]:
    """Metrics at every quota share of ``select.shares``; each head is searched once (the shares only merge)."""
    heads = run.heads
    grid = list(run.cfg.select.shares) if len(heads) > 1 else [1.0]
    base = HeadVectorsRetriever(vecs, quota_shares(heads, grid[0]), "sweep", item_bias=bias)
    return [
        {
            "share": s,
            **evaluate_retriever(
                base.with_shares(quota_shares(heads, s), f"share={s}"),
                which,
                run.labeler,
                run.ds.num_items,
                run.cfg.eval,
            ),
        }
        for s in grid
    ]


def train_grid(run: I2IRun) -> Grid:
    """The MTMH model per lambda, and (rank 0) the valid point of every (lambda, id prior,
    popularity prior, share) combination."""
    priors = run.cfg.priors()
    trained: dict[float, Trained] = {}
    candidates: list[dict[str, Any]] = []
    for lam in run.cfg.select.lams:
        lc = dataclasses.replace(run.cfg.loss, lam=lam)
        trained[lam] = run.trainer.train(f"mtmh_lam{lam:g}", run.cfg.model, lc, run.content, priors)
        for shrink, var in trained[lam].variants.items():
            for pop, bias in run.biases.items():
                for p in quota_sweep(run, var.vecs, run.split.valid, bias):
                    candidates.append({"lam": lam, "id_prior_shrink": shrink, "pop_prior": pop, **p})
    return Grid(trained, candidates)


def select(run: I2IRun, grid: Grid) -> Choice:
    """The valid operating point (rank 0 chooses; every rank gets it)."""
    k = run.cfg.eval.select_k
    choice = choose_point(grid.candidates, k, run.cfg.select.recall_tolerance) if run.rank == 0 else {}
    keys = ("lam", "id_prior_shrink", "pop_prior", "share")
    values = distributed.all_gather_objects([choice.get(key, 0.0) for key in keys])[0]
    lam, shrink, pop, share = (float(x) for x in values)
    return Choice(lam, shrink, pop, share)


def train_references(run: I2IRun, choice: Choice) -> dict[str, Trained]:
    """The reference models of ``compare``, under the chosen id prior."""
    cfg = run.cfg
    prior = dataclasses.replace(cfg.priors()[0], shrink=choice.shrink)
    refs: dict[str, Trained] = {}
    if cfg.compare.single_head:
        sc = dataclasses.replace(cfg.model, heads=(cfg.model.heads[0],))
        lc = dataclasses.replace(cfg.loss, lam=0.0, alpha=0.0)
        refs["single_head_lam0"] = run.trainer.train("single_head_lam0", sc, lc, run.content, [prior])
    if cfg.compare.id_only and cfg.model.content != "none":
        ic = dataclasses.replace(cfg.model, content="none")
        lc = dataclasses.replace(cfg.loss, lam=choice.lam)
        refs["id_only"] = run.trainer.train("id_only", ic, lc, None, [prior])
    return refs


def score(run: I2IRun, grid: Grid, choice: Choice, refs: dict[str, Trained]) -> Scores:
    """(rank 0) Every method on test against the classical baselines; the chosen model's quota curves."""
    best = grid.trained[choice.lam].variants[choice.shrink]
    bias = run.biases[choice.pop]
    extra: dict[str, Callable[[], ItemRetriever]] = {}
    if isinstance(run.content, FrozenContent):
        extra["content"] = partial(ContentCosine, run.content.table.numpy())
    elif run.content_folder is not None:
        start = load_vectors(run.content_folder).aligned(run.ds.items["item_id"].to_list())
        extra["content"] = partial(ContentCosine, start)
    heads = run.heads
    extra[f"mtmh (K1/K={choice.share:g}, lambda={choice.lam:g})"] = partial(
        HeadVectorsRetriever, best.vecs, quota_shares(heads, choice.share), "mtmh", bias
    )
    for h in heads:
        extra[f"mtmh:{h} only"] = partial(HeadVectorsRetriever, best.vecs, {h: 1.0}, h, bias)
    for name, ref in refs.items():
        extra[name] = partial(
            HeadVectorsRetriever,
            ref.variants[choice.shrink].vecs,
            quota_shares(list(ref.model_cfg.heads), choice.share),
            name,
            bias,
        )
    methods, selection = evaluate_baselines(
        run.split, run.labeler, run.ds.num_users, run.cfg.eval, extra=extra
    )
    test_curve = quota_sweep(run, best.vecs, run.split.test, bias)
    chosen = (choice.lam, choice.shrink, choice.pop)
    valid_curve = [c for c in grid.candidates if (c["lam"], c["id_prior_shrink"], c["pop_prior"]) == chosen]
    return Scores(methods, selection, test_curve, valid_curve)


def export_chosen(run: I2IRun, grid: Grid, choice: Choice, out_dir: Path) -> None:
    """(rank 0) The chosen model's unsharded export, with its popularity prior as the serving bias."""
    tr = grid.trained[choice.lam]
    best = tr.variants[choice.shrink]
    save_export(
        out_dir,
        best.state,
        run.cfg.model,
        run.features,
        run.ds.items["item_id"].to_list(),
        run.content,
        run.content_spec,
        {
            "dataset": run.ds.name,
            "lam": choice.lam,
            "share": choice.share,
            "id_prior": best.prior,
            "pop_prior": choice.pop,
            "best_step": tr.result.best_step,
        },
        run.biases[choice.pop],
    )


def assemble_report(
    run: I2IRun, grid: Grid, choice: Choice, refs: dict[str, Trained], scores: Scores
) -> dict[str, Any]:
    """``report.json``'s content (schema: docs/design.md, "The I2I report")."""
    cfg, k = run.cfg, run.cfg.eval.select_k
    best = grid.trained[choice.lam].variants[choice.shrink]
    models = {**{f"mtmh_lam{lam:g}": t for lam, t in grid.trained.items()}, **refs}
    return {
        "dataset": run.ds.name,
        "dataset_stats": run.ds.stats(),
        "split": run.split.stats(),
        "train_pairs": {  # what one epoch of every model's training goes through
            "window": run.pairs_cfg.train_window or run.pairs_cfg.window,
            "weight": cfg.trainer.pair_weight,
            "per_epoch": len(run.trainer.src),
        },
        "eval": {"ks": sorted(cfg.eval.ks), "select_k": k},
        "labels": dataclasses.asdict(run.label_cfg),
        "selection": {
            **scores.selection,
            "mtmh": {
                "lam": choice.lam,
                "share": choice.share,
                "id_prior": best.prior,
                "pop_prior": choice.pop,
                "pop_counts": popularity_basis(run.ds),
                "rule": f"valid recall@{k} within {cfg.select.recall_tolerance} of best, then max valid semrel@{k}",
                "valid_points": grid.candidates,
            },
        },
        "training": {
            name: {
                "best_step": r.best_step,
                "best_valid": r.best_score,
                "steps_per_sec": r.steps_per_sec,
                "device": r.device,
                "plan": r.plan,
                "stopped_early": r.stopped_early,
                "valid": r.valid,
                "final_loss": r.losses[-1] if r.losses else None,
                "loss_curve": [x["loss"] for x in r.losses],
            }
            for name, r in ((n, t.result) for n, t in models.items())
        },
        "quota_test_curve": scores.test_curve,
        "methods": scores.methods,
        "world_size": run.world,
    }
