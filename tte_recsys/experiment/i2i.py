"""The I2I experiment (``pipelines.train_i2i``) as separately callable steps.

1. :func:`prepare`: split the log by time, get the content vectors (after the reasoner's traces
   when one is configured), build the labels, the item features and the content tower.
2. :func:`train_grid`: the MTMH model for each lambda of ``select.lams``.
3. :func:`select`: lambda, id prior, popularity prior and serving quota, jointly on valid; then
   the item-age prior at that point (all shares again).
4. :func:`train_references`: the one-head model (lambda = 0) and the id-only model.
5. :func:`refit`: the chosen model and the references refit on train + valid with the valid
   choices, each for as many epochs as it trained to its best valid step (docs/design.md,
   "Selection and final scoring").
6. :func:`score`: every method and the classical baselines on test, train-only and refit, and the
   quota curves.
7. :func:`export_chosen` and :func:`assemble_report`: the served (refit) model and ``report.json``.

Every rank calls 1-5 (training is collective); 6-7 run on rank 0.
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
from tte_recsys.data.split import (
    EvalSet,
    TemporalSplit,
    item_age_days,
    popularity_basis,
    popularity_counts,
    temporal_split,
)
from tte_recsys.evaluation.baselines import ContentCosine
from tte_recsys.evaluation.protocol import Metrics, evaluate_baselines, evaluate_retriever, paired_intervals
from tte_recsys.evaluation.quota import choose_point
from tte_recsys.experiment.config import I2IConfig
from tte_recsys.experiment.stages import (
    embed_items,
    generate_catalog_traces,
    stage_config,
    trace_fusion,
    uses_reasoner,
)
from tte_recsys.experiment.trace_choice import TraceChoice, choose_with_traces
from tte_recsys.experiment.trainer import TrainContext, Trained, VariantTrainer
from tte_recsys.losses.mtmh import LossConfig
from tte_recsys.models.content import ContentSpec, ContentTower, FrozenContent, build_content_tower
from tte_recsys.models.export import save_export
from tte_recsys.models.mtmh import ItemFeatures, ModelConfig
from tte_recsys.retrieval import ItemRetriever
from tte_recsys.runs import data_configs, load_dataset
from tte_recsys.serving.merge import HeadVectorsRetriever, age_bias, popularity_bias, quota_shares, sum_biases
from tte_recsys.tte.items import embedding_text, item_inputs
from tte_recsys.tte.reasoner.generate import load_trace_texts
from tte_recsys.vectors import load_vectors

__all__ = [
    "Choice",
    "Grid",
    "I2IRun",
    "Refit",
    "Scores",
    "assemble_report",
    "export_chosen",
    "prepare",
    "prior_bias",
    "quota_sweep",
    "refit",
    "refit_steps",
    "score",
    "select",
    "train_grid",
    "train_references",
]

log = logging.getLogger(__name__)
NO_TRACES = "mtmh:no traces"  # the reference row: the same model, trained the same way, without traces


def mtmh_row(choice: Choice) -> str:
    """The report row of the served operating point."""
    return f"mtmh (K1/K={choice.share:g}, lambda={choice.lam:g})"


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
    biases: dict[float, np.ndarray | None]  # popularity prior per grid weight (train view)
    trainer: VariantTrainer
    out: Path
    rank: int = 0
    world: int = 1
    traces: TraceChoice | None = None  # with fused traces: the plain and trace vectors, the valid choice
    plain_content: ContentTower | None = None  # with traces: the tower without them (the reference)

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
    age: float = 0.0


@dataclass
class Refit:
    """The chosen model and the references refit on train + valid (:func:`refit`)."""

    split: TemporalSplit  # the refit view
    features: ItemFeatures
    models: dict[str, Trained]  # "mtmh" and the references' names
    steps: dict[str, int]  # each model's refit training length
    bias: np.ndarray | None  # the chosen priors, from the refit view's counts and ages


def prior_bias(ds: Dataset, split: TemporalSplit, pop: float, age: float) -> np.ndarray | None:
    """The per-item score bias of the popularity and item-age priors, from ``split``'s fit data
    (its counts per :func:`popularity_counts`, its ages at :attr:`TemporalSplit.fit_end`)."""
    return sum_biases(
        popularity_bias(popularity_counts(ds, split), pop) if pop else None,
        age_bias(item_age_days(ds, split), age) if age else None,
    )


@dataclass
class Scores:
    """Test metrics of every method, the baselines' selection, and the quota curves."""

    methods: dict[str, Any]
    selection: dict[str, Any]
    test_curve: list[dict[str, Any]]
    valid_curve: list[dict[str, Any]]
    methods_refit: dict[str, Metrics] | None = None  # the headline rows, when refit
    test_curve_refit: list[dict[str, Any]] | None = None
    trace_intervals: dict[str, Any] | None = None  # with traces: paired intervals against no traces


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
    # fused traces: the items' plain vectors here, the traces' own vectors beside them (_trace_choice)
    with_traces = None if trace_fusion(cfg.embedder).mode == "fuse" else traces()
    sub = stage_config(cfg, traces_dir=with_traces, shard_size=cfg.shard_size, output_dir=str(folder))
    embed_items(sub, folder)
    return str(folder)


def _trace_choice(
    run_cfg: I2IConfig,
    cfg: DictConfig,
    out: Path,
    ds: Dataset,
    valid: EvalSet,
    labeler: RelevanceLabeler,
    folder: str | None,
    traces: Callable[[], str | None],
) -> TraceChoice | None:
    """With ``embedder.traces=fuse`` and traces: the trace vectors (into ``out/trace_vectors``)
    beside the plain ones in ``folder``, and the fusion chosen on valid (:mod:`.trace_choice`)."""
    if folder is None or trace_fusion(cfg.embedder).mode != "fuse" or (traces_dir := traces()) is None:
        return None
    sel = run_cfg.select
    stage = stage_config(cfg, shard_size=cfg.shard_size)
    ids = ds.items["item_id"].to_list()
    choice = choose_with_traces(
        stage,
        folder,
        traces_dir,
        out / "trace_vectors",
        ids,
        valid,
        labeler,
        run_cfg.eval,
        sel.trace_weights,
        sel.trace_sides,
        sel.trace_rule,
    )
    log.info(
        "traces fused on valid: w=%g (%s); tower w=%g",
        choice.fusion.weight,
        choice.fusion.side,
        choice.tower_weight,
    )
    return choice


def _content_tower(
    run_cfg: I2IConfig,
    cfg: DictConfig,
    ds: Dataset,
    folder: str | None,
    traces: Callable[[], str | None],
    choice: TraceChoice | None = None,
) -> tuple[ContentTower | None, ContentSpec]:
    """The content tower ``model.content`` asks for, from the one factory, and its spec. With a
    trace ``choice`` its frozen table is the fused vectors, or (``model.trace_input``) the plain
    and trace vectors side by side."""
    mode = run_cfg.model.content
    if run_cfg.model.trace_input and choice is None:
        raise ValueError(
            "model.trace_input=true needs traces (a reasoner, e.g. reasoner=smollm2, or traces_dir=<generate_traces "
            "run>) fused as their own vectors (embedder.traces=fuse)"
        )
    spec = ContentSpec.from_embedder_config(
        mode, cfg.embedder, dataclasses.asdict(run_cfg.lora), run_cfg.content_checkpointing
    )
    if mode == "none":
        return None, spec
    if mode == "frozen":
        assert folder is not None, "frozen content needs its vectors folder"
        if choice is not None:  # the folder's vectors as _trace_choice read them, with the traces'
            plain, table = choice.plain, choice.tower_table(run_cfg.model.trace_input)
            source = f"{folder} + trace vectors ({'input' if run_cfg.model.trace_input else 'fused'})"
        else:
            vectors = load_vectors(folder)
            plain = table = vectors.aligned(ds.items["item_id"].to_list())
            source = f"{folder} ({vectors.model_id}, traces {vectors.trace_version})"
        want = run_cfg.model.content_dim
        if want is not None and plain.shape[1] != want:
            raise ValueError(
                f"model.content_dim={want} but the content vectors in {folder} have dim {plain.shape[1]}"
            )
        log.info("frozen content: %s, dim %d", source, table.shape[1])
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
    choice = _trace_choice(run_cfg, cfg, out, ds, split.valid, labeler, folder, traces)
    content, spec = _content_tower(run_cfg, cfg, ds, folder, traces, choice)
    plain = None
    if choice is not None and cfg.compare.no_traces and model_cfg.content == "frozen":
        plain = build_content_tower(spec, table=torch.from_numpy(choice.plain))
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
        choice,
        plain,
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
    popularity prior, share) combination (age prior 0: :func:`select` adds the aged points)."""
    priors = run.cfg.priors()
    trained: dict[float, Trained] = {}
    candidates: list[dict[str, Any]] = []
    for lam in run.cfg.select.lams:
        lc = dataclasses.replace(run.cfg.loss, lam=lam)
        trained[lam] = run.trainer.train(f"mtmh_lam{lam:g}", run.cfg.model, lc, run.content, priors)
        for shrink, var in trained[lam].variants.items():
            for pop, bias in run.biases.items():
                for p in quota_sweep(run, var.vecs, run.split.valid, bias):
                    candidates.append(
                        {"lam": lam, "id_prior_shrink": shrink, "pop_prior": pop, **p, "age_prior": 0.0}
                    )
    return Grid(trained, candidates)


def select(run: I2IRun, grid: Grid) -> Choice:
    """The valid operating point (rank 0 chooses; every rank gets it). Lambda, id prior, popularity
    prior and share jointly; then, where ``select.age_priors`` holds weights > 0, the item-age
    prior at the chosen (lambda, id prior, popularity prior), every share swept again, chosen by
    the same rule among these points and all the first stage's (which carry age 0)."""
    k, tol = run.cfg.eval.select_k, run.cfg.select.recall_tolerance
    keys = ("lam", "id_prior_shrink", "pop_prior", "share", "age_prior")
    choice: dict[str, Any] = {}
    if run.rank == 0:
        choice = choose_point(grid.candidates, k, tol)
        ages = [a for a in run.cfg.select.age_priors if a > 0]
        if ages:
            var = grid.trained[choice["lam"]].variants[choice["id_prior_shrink"]]
            train_ages = item_age_days(run.ds, run.split)
            for a in ages:
                bias = sum_biases(run.biases[choice["pop_prior"]], age_bias(train_ages, a))
                for p in quota_sweep(run, var.vecs, run.split.valid, bias):
                    grid.candidates.append(
                        {
                            "lam": choice["lam"],
                            "id_prior_shrink": choice["id_prior_shrink"],
                            "pop_prior": choice["pop_prior"],
                            **p,
                            "age_prior": a,
                        }
                    )
            choice = choose_point(grid.candidates, k, tol)
    values = distributed.all_gather_objects([choice.get(key, 0.0) for key in keys])[0]
    lam, shrink, pop, share, age = (float(x) for x in values)
    return Choice(lam, shrink, pop, share, age)


def train_references(run: I2IRun, choice: Choice) -> dict[str, Trained]:
    """The reference models of ``compare``, under the chosen id prior."""
    prior = dataclasses.replace(run.cfg.priors()[0], shrink=choice.shrink)
    return {
        name: run.trainer.train(name, model_cfg, loss_cfg, content, [prior])
        for name, model_cfg, loss_cfg, content in _reference_specs(run, choice)
    }


def _reference_specs(
    run: I2IRun, choice: Choice
) -> list[tuple[str, ModelConfig, LossConfig, ContentTower | None]]:
    """(name, model, loss, content tower) of each reference model ``compare`` asks for."""
    cfg = run.cfg
    specs: list[tuple[str, ModelConfig, LossConfig, ContentTower | None]] = []
    if cfg.compare.single_head:
        sc = dataclasses.replace(cfg.model, heads=(cfg.model.heads[0],))
        specs.append(("single_head_lam0", sc, dataclasses.replace(cfg.loss, lam=0.0, alpha=0.0), run.content))
    if cfg.compare.id_only and cfg.model.content != "none":
        ic = dataclasses.replace(cfg.model, content="none")
        specs.append(("id_only", ic, dataclasses.replace(cfg.loss, lam=choice.lam), None))
    if run.plain_content is not None:  # the same model, trained the same way, without traces
        nc = dataclasses.replace(cfg.model, trace_input=False)
        specs.append((NO_TRACES, nc, dataclasses.replace(cfg.loss, lam=choice.lam), run.plain_content))
    return specs


def refit_steps(best_step: int, train_pairs: int, refit_pairs: int) -> int:
    """The refit's training length: as many epochs as the train-only model trained to its best
    valid step (early stopping's answer), over the larger train + valid pairs."""
    return max(1, round(best_step * refit_pairs / max(train_pairs, 1)))


def refit(run: I2IRun, grid: Grid, choice: Choice, refs: dict[str, Trained]) -> Refit | None:
    """The chosen MTMH model and the references refit on train + valid with every valid choice
    (``eval.refit``; None when off). No validation (valid is in the fit); each model trains
    :func:`refit_steps` steps, checkpointing into ``checkpoints/refit`` (``resume`` continues)."""
    cfg = run.cfg
    if not cfg.eval.refit:
        return None
    view = run.split.refit_view()
    features = ItemFeatures.from_items(run.ds.items, cfg.model.features, cfg.model.no_id(view.item_counts))
    prior = dataclasses.replace(cfg.priors()[0], shrink=choice.shrink)
    ctx = dataclasses.replace(
        run.trainer.ctx, split=view, features=features, ckpt_root=run.out / "checkpoints" / "refit"
    )
    trainer = VariantTrainer(ctx)
    models: dict[str, Trained] = {}
    steps: dict[str, int] = {}
    specs = [("mtmh", cfg.model, dataclasses.replace(cfg.loss, lam=choice.lam), run.content)]
    specs += _reference_specs(run, choice)
    for name, model_cfg, loss_cfg, content in specs:
        done = grid.trained[choice.lam] if name == "mtmh" else refs[name]
        steps[name] = refit_steps(done.result.best_step, len(run.trainer.src), len(trainer.src))
        tc = dataclasses.replace(cfg.trainer, max_steps=steps[name], eval_every=0)
        trainer.ctx = dataclasses.replace(ctx, trainer=tc)
        models[name] = trainer.train(name, model_cfg, loss_cfg, content, [prior])
    return Refit(view, features, models, steps, prior_bias(run.ds, view, choice.pop, choice.age))


def _rows(
    run: I2IRun,
    vecs: dict[str, dict[str, np.ndarray]],
    refs: dict[str, ModelConfig],
    choice: Choice,
    bias: np.ndarray | None,
) -> dict[str, Callable[[], ItemRetriever]]:
    """The retrievers of one view's rows: content-only, MTMH at the chosen point and each head
    alone, each reference (``vecs``: name -> head -> vectors, "mtmh" included)."""
    extra: dict[str, Callable[[], ItemRetriever]] = {}
    if run.traces is not None:
        extra["content"] = partial(ContentCosine, *run.traces.content_only())
        extra["content:no traces"] = partial(ContentCosine, run.traces.plain)
    elif isinstance(run.content, FrozenContent):
        extra["content"] = partial(ContentCosine, run.content.table.numpy())
    elif run.content_folder is not None:
        start = load_vectors(run.content_folder).aligned(run.ds.items["item_id"].to_list())
        extra["content"] = partial(ContentCosine, start)
    heads = run.heads
    extra[mtmh_row(choice)] = partial(
        HeadVectorsRetriever, vecs["mtmh"], quota_shares(heads, choice.share), "mtmh", bias
    )
    for h in heads:
        extra[f"mtmh:{h} only"] = partial(HeadVectorsRetriever, vecs["mtmh"], {h: 1.0}, h, bias)
    for name, model_cfg in refs.items():
        extra[name] = partial(
            HeadVectorsRetriever, vecs[name], quota_shares(list(model_cfg.heads), choice.share), name, bias
        )
    return extra


def score(
    run: I2IRun, grid: Grid, choice: Choice, refs: dict[str, Trained], refit_run: Refit | None = None
) -> Scores:
    """(rank 0) Every method on test against the classical baselines, fit on train and (with a
    refit) refit on train + valid; the chosen model's quota curves."""
    best = grid.trained[choice.lam].variants[choice.shrink]
    bias = prior_bias(run.ds, run.split, choice.pop, choice.age)
    ref_cfgs = {name: ref.model_cfg for name, ref in refs.items()}
    vecs = {"mtmh": best.vecs, **{name: ref.variants[choice.shrink].vecs for name, ref in refs.items()}}
    rows, test = _rows(run, vecs, ref_cfgs, choice, bias), run.split.test
    methods, selection = evaluate_baselines(
        run.split, run.labeler, run.ds.num_users, run.cfg.eval, extra=rows
    )
    test_curve = quota_sweep(run, best.vecs, run.split.test, bias)
    chosen = (choice.lam, choice.shrink, choice.pop, choice.age)
    valid_curve = [
        c
        for c in grid.candidates
        if (c["lam"], c["id_prior_shrink"], c["pop_prior"], c["age_prior"]) == chosen
    ]
    scores = Scores(methods, selection, test_curve, valid_curve)
    if refit_run is not None:  # the headline view: its rows are the ones the intervals compare
        rvecs = {name: t.variants[choice.shrink].vecs for name, t in refit_run.models.items()}
        lam = float(selection["ease"]["lambda"])  # type: ignore[index]
        rows, test = _rows(run, rvecs, ref_cfgs, choice, refit_run.bias), refit_run.split.test
        scores.methods_refit, _ = evaluate_baselines(
            refit_run.split,
            run.labeler,
            run.ds.num_users,
            run.cfg.eval,
            extra=rows,
            ease_lambda=lam,
        )
        scores.test_curve_refit = quota_sweep(run, rvecs["mtmh"], refit_run.split.test, refit_run.bias)
    if run.traces is not None:  # the headline view's rows
        pairs = [("content", "content:no traces"), (mtmh_row(choice), NO_TRACES)]
        scores.trace_intervals = paired_intervals(
            rows, pairs, test, run.cfg.eval.select_k, run.cfg.eval.batch_size
        )
    return scores


def export_chosen(
    run: I2IRun, grid: Grid, choice: Choice, out_dir: Path, refit_run: Refit | None = None
) -> None:
    """(rank 0) The served model's unsharded export (the refit one when there is a refit), with
    its priors as the serving bias."""
    tr = refit_run.models["mtmh"] if refit_run is not None else grid.trained[choice.lam]
    best = tr.variants[choice.shrink]
    save_export(
        out_dir,
        best.state,
        run.cfg.model,
        refit_run.features if refit_run is not None else run.features,
        run.ds.items["item_id"].to_list(),
        run.content,
        run.content_spec,
        {
            "dataset": run.ds.name,
            "lam": choice.lam,
            "share": choice.share,
            "id_prior": best.prior,
            "pop_prior": choice.pop,
            "age_prior": choice.age,
            "fit": "train+valid" if refit_run is not None else "train",
            "best_step": grid.trained[choice.lam].result.best_step,
            "trained_steps": tr.result.best_step,
        },
        refit_run.bias if refit_run is not None else prior_bias(run.ds, run.split, choice.pop, choice.age),
    )


def _training(t: Trained) -> dict[str, Any]:
    r = t.result
    return {
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


def assemble_report(
    run: I2IRun,
    grid: Grid,
    choice: Choice,
    refs: dict[str, Trained],
    scores: Scores,
    refit_run: Refit | None = None,
) -> dict[str, Any]:
    """``report.json``'s content (schema: docs/design.md, "The I2I report"). ``methods`` are the
    train-only test rows; ``methods_refit`` (with a refit) the headline rows."""
    cfg, k = run.cfg, run.cfg.eval.select_k
    best = grid.trained[choice.lam].variants[choice.shrink]
    models = {**{f"mtmh_lam{lam:g}": t for lam, t in grid.trained.items()}, **refs}
    refit_part: dict[str, Any] = {}
    if refit_run is not None and scores.methods_refit is not None:
        refit_part = {
            "refit": {
                "fit": "train + valid",
                "split": {
                    "train_interactions": refit_run.split.train.height,
                    "train_pairs": refit_run.split.train_pairs.height,
                    "test": refit_run.split.test.stats(),
                },
                "steps": refit_run.steps,
                "rule": "refit steps = best valid step x refit pairs per epoch / train pairs per epoch (same epochs)",
                "training": {name: _training(t) for name, t in refit_run.models.items()},
                "id_prior": refit_run.models["mtmh"].variants[choice.shrink].prior,
            },
            "quota_test_curve_refit": scores.test_curve_refit,
            "methods_refit": scores.methods_refit,
        }
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
                "age_prior": choice.age,
                "pop_counts": popularity_basis(run.ds),
                "rule": f"valid recall@{k} within {cfg.select.recall_tolerance} of best, then max valid semrel@{k}",
                "valid_points": grid.candidates,
            },
        },
        "training": {name: _training(t) for name, t in models.items()},
        "quota_test_curve": scores.test_curve,
        "methods": scores.methods,
        **(
            {"traces": run.traces.summary(), "intervals": scores.trace_intervals}
            if run.traces is not None
            else {}
        ),
        **refit_part,
        "world_size": run.world,
    }
