"""The main job: ``python -m pipelines.train_i2i [data=...] [experiment=...] [debug=tiny]``.

Splits the log by time; gets the content vectors (the embedding job, after the reasoner's traces
when one is configured); trains the MTMH model for each lambda of ``select.lams`` and the
reference models (one head with lambda = 0; id-only); chooses lambda, the id prior
(:mod:`tte_recsys.models.id_prior`) and the serving quota on the valid split; reports test
metrics of everything against the classical baselines; draws the quota trade-off
(``quota_tradeoff.png``); writes the chosen model's unsharded export (``export/``),
``report.json`` and ``report.md``. Runs under ``torchrun`` (pass ``hydra.run.dir``).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from functools import cache, partial
from pathlib import Path
from typing import Any, cast

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from tte_recsys import distributed
from tte_recsys.config import EvalConfig, from_mapping
from tte_recsys.data.dataset import Dataset
from tte_recsys.data.labels import RelevanceLabeler
from tte_recsys.data.split import TemporalSplit, popularity_basis, popularity_counts, temporal_split
from tte_recsys.evaluation.baselines import ContentCosine
from tte_recsys.evaluation.protocol import evaluate_baselines, evaluate_retriever
from tte_recsys.evaluation.quota import choose_point, plot_tradeoff
from tte_recsys.evaluation.report import write_report
from tte_recsys.evaluation.retrieval import Retriever
from tte_recsys.losses.mtmh import LossConfig
from tte_recsys.models.id_prior import IdPrior, apply_id_priors
from tte_recsys.models.mtmh import (
    ContentTower,
    FrozenContent,
    ItemFeatures,
    ModelConfig,
    MTMHModel,
    TrainableContent,
)
from tte_recsys.runs import data_configs, finish_run, load_dataset, output_dir
from tte_recsys.serving.embed_job import load_vectors
from tte_recsys.serving.merge import HeadVectorsRetriever, popularity_bias, quota_shares
from tte_recsys.training.batches import PairBatches, epoch_pairs
from tte_recsys.training.export import encode_items, save_export
from tte_recsys.training.loop import TrainerConfig, TrainResult, fit
from tte_recsys.training.sharding import process_group
from tte_recsys.tte.embedder import embedder_from_config
from tte_recsys.tte.items import embedding_text, item_inputs
from tte_recsys.tte.lora import add_lora
from tte_recsys.tte.reasoner.generate import load_trace_texts

log = logging.getLogger(__name__)


def _sub(cfg: DictConfig, **keys: Any) -> DictConfig:
    """A child pipeline's config: the shared sections of ``cfg`` plus ``keys``."""
    shared = {k: cfg[k] for k in ("data", "embedder", "reasoner") if k in cfg}
    resolved = cast(dict[str, Any], OmegaConf.to_container(OmegaConf.create(shared), resolve=True))
    return OmegaConf.create({**resolved, **keys})


def _traces_dir(cfg: DictConfig, out: Path) -> str | None:
    """The traces to embed with: ``traces_dir``, or generated here when a reasoner is configured."""
    if cfg.traces_dir:
        return str(cfg.traces_dir)
    if str(cfg.reasoner.get("_target_", "")).endswith("NoReasoner"):
        return None
    from pipelines import generate_traces

    sub = _sub(
        cfg,
        prompt=cfg.prompt,
        cache_dir=cfg.cache_dir,
        flush_every=cfg.flush_every,
        output_dir=str(out / "traces"),
    )
    generate_traces.run(sub)
    return str(out / "traces")


def content_folder(cfg: DictConfig, out: Path, traces: Callable[[], str | None]) -> str:
    """The item vectors of the configured embedder (after the reasoner's traces, ``traces()``,
    when one is configured): ``content_dir``, or embedded here into ``out/content`` (the job
    resumes)."""
    if cfg.content_dir:
        return str(cfg.content_dir)
    from pipelines import embed_items

    folder = str(out / "content")
    embed_items.run(_sub(cfg, traces_dir=traces(), shard_size=cfg.shard_size, output_dir=folder))
    return folder


def build_content(
    cfg: DictConfig,
    model_cfg: ModelConfig,
    ds: Dataset,
    folder: str | None,
    traces: Callable[[], str | None],
) -> tuple[ContentTower | None, dict[str, Any] | None]:
    """The content tower the config asks for (``folder``: the frozen mode's vectors, see
    :func:`content_folder`), and (trainable) the spec that rebuilds it."""
    if model_cfg.content == "none":
        return None, None
    if model_cfg.content == "frozen":
        assert folder is not None, "frozen content needs its vectors folder"
        vectors = load_vectors(folder)
        table = torch.from_numpy(vectors.aligned(ds.items["item_id"].to_list()))
        if model_cfg.content_dim is not None and table.shape[1] != model_cfg.content_dim:
            raise ValueError(
                f"model.content_dim={model_cfg.content_dim} but the content vectors in {folder} have dim {table.shape[1]}"
            )
        log.info(
            "frozen content: %s (%s, traces %s), dim %d",
            folder,
            vectors.model_id,
            vectors.trace_version,
            table.shape[1],
        )
        return FrozenContent(table), None
    items = item_inputs(ds, list(cfg.data.content_fields))
    traces_dir = traces()
    texts = load_trace_texts(traces_dir, items)[0] if traces_dir else {}
    embedder, _ = embedder_from_config({**cfg.embedder, "runtime": "torch"})  # trained: PyTorch
    lora = OmegaConf.to_container(cfg.lora, resolve=True)
    embedder = add_lora(embedder, **lora, seed=int(cfg.trainer.seed))  # type: ignore[arg-type]
    spec: dict[str, Any] = {
        "embedder": {
            k: cfg.embedder[k] for k in ("model_path", "pooling", "max_length", "instruction", "dtype")
        },
        "lora": lora,
    }
    texts_in = [embedding_text(it, texts.get(it.item_id)) for it in items]
    tower = TrainableContent(
        embedder,
        texts_in,
        chunk=int(cfg.embedder.batch_size),
        checkpointing=bool(cfg.content_checkpointing),
    )
    return tower, spec


class Trainer:
    """Trains one model variant on this split, with validation on rank 0."""

    def __init__(
        self,
        cfg: DictConfig,
        ds: Dataset,
        split: TemporalSplit,
        labeler: RelevanceLabeler,
        features: ItemFeatures,
        eval_cfg: EvalConfig,
        trainer_cfg: TrainerConfig,
        out: Path,
        rank: int,
        world: int,
    ) -> None:
        self.cfg, self.ds, self.split, self.labeler, self.features = cfg, ds, split, labeler, features
        self.eval_cfg, self.out, self.rank, self.world = eval_cfg, out, rank, world
        self.trainer_cfg = trainer_cfg
        self.src, self.dst = epoch_pairs(split.train_pairs, trainer_cfg.pair_weight)

    def vectors(self, model: MTMHModel, state: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
        model.load_state_dict(state, strict=False)
        return encode_items(model, self.features)

    def with_priors(
        self, model: MTMHModel, state: dict[str, torch.Tensor], priors: list[IdPrior]
    ) -> dict[float, Variant]:
        """The trained state under each id prior (see :mod:`tte_recsys.models.id_prior`)."""
        adjusted = apply_id_priors(model, state, self.features, self.split.item_counts, priors)
        return {
            p.shrink: Variant(st, self.vectors(model, st), stats)
            for p, (st, stats) in zip(priors, adjusted, strict=True)
        }

    def valid_score(
        self, eval_model: MTMHModel | None, state: dict[str, torch.Tensor]
    ) -> tuple[float, dict[str, float]]:
        assert eval_model is not None, "validation runs on rank 0"
        vecs = self.vectors(eval_model, state)
        first = eval_model.cfg.heads[0]
        m = evaluate_retriever(
            HeadVectorsRetriever(vecs, {first: 1.0}, first),
            self.split.valid,
            self.labeler,
            self.ds.num_items,
            self.eval_cfg,
        )
        k = self.eval_cfg.select_k
        return m[f"recall@{k}"], {
            f"{name}@{k}": m[f"{name}@{k}"] for name in ("recall", "semrel", "cold_recall")
        }

    def train(
        self,
        name: str,
        model_cfg: ModelConfig,
        loss_cfg: LossConfig,
        content: ContentTower | None,
        priors: list[IdPrior],
    ) -> tuple[TrainResult, dict[float, Variant]]:
        """Train one model; on rank 0 also its item vectors under each id prior (by shrink)."""
        tc = self.trainer_cfg
        torch.manual_seed(tc.seed)
        if content is not None:  # every model of the run starts from the same content tower
            content.reset()
        ne = self.features.num_embeddings()
        model = MTMHModel(model_cfg, ne, content, device="meta")
        eval_model = MTMHModel(model_cfg, ne, content, device="cpu") if self.rank == 0 else None
        needs_labels = "semantic" in model_cfg.heads and loss_cfg.lam > 0
        batches = PairBatches(
            self.src,
            self.dst,
            self.features,
            self.labeler if needs_labels else None,
            tc.batch_size,
            tc.seed,
            self.rank,
            self.world,
            tc.id_dropout,
            tc.uniform_negatives,
        )
        # Every rank passes a validator (the schedule of collectives must match); only rank 0 calls it.
        validate = partial(self.valid_score, eval_model)
        res = fit(
            model,
            batches,
            tc,
            loss_cfg,
            self.out / "checkpoints" / name,
            validate,
            resume=bool(self.cfg.resume),
            desc=name,
        )
        variants = (
            self.with_priors(eval_model, res.best_state, priors)
            if eval_model is not None and res.best_state is not None
            else {}
        )
        log.info(
            "%s: best valid %.4f at step %d, %.1f steps/s",
            name,
            res.best_score,
            res.best_step,
            res.steps_per_sec,
        )
        return res, variants


@dataclasses.dataclass
class Variant:
    """A trained model after its id prior: the state to export, its item vectors, fit stats."""

    state: dict[str, torch.Tensor]
    vecs: dict[str, np.ndarray]
    prior: dict[str, Any]


def _sweep(
    vecs: dict[str, np.ndarray],
    heads: list[str],
    shares: list[float],
    which: Any,
    labeler: RelevanceLabeler,
    n: int,
    eval_cfg: EvalConfig,
    bias: np.ndarray | None,
) -> list[dict[str, Any]]:
    """Metrics at every quota share; each head is searched once (the shares only merge)."""
    grid = shares if len(heads) > 1 else [1.0]
    base = HeadVectorsRetriever(vecs, quota_shares(heads, grid[0]), "sweep", item_bias=bias)
    return [
        {
            "share": s,
            **evaluate_retriever(
                base.with_shares(quota_shares(heads, s), f"share={s}"), which, labeler, n, eval_cfg
            ),
        }
        for s in grid
    ]


def run(cfg: DictConfig) -> dict[str, Any]:
    rank, world = process_group()
    out = output_dir(cfg)
    pairs_cfg, split_cfg, label_cfg = data_configs(cfg.data)
    eval_cfg = from_mapping(EvalConfig, cfg.eval, "eval")
    model_cfg = from_mapping(ModelConfig, cfg.model, "model")
    loss_cfg = from_mapping(LossConfig, cfg.loss, "loss")
    trainer_cfg = from_mapping(TrainerConfig, cfg.trainer, "trainer")  # fails before any work
    lams = [float(x) for x in cfg.select.lams]
    if any(lam < 0 for lam in lams):
        raise ValueError(f"select.lams={lams}: lambda must be >= 0")
    priors = [
        from_mapping(IdPrior, {**cfg.id_prior, "shrink": float(x)}, "id_prior")
        for x in cfg.select.id_prior_shrinks
    ]
    if not priors:
        raise ValueError("select.id_prior_shrinks is empty: give at least [0] (no id prior)")
    pops = [float(x) for x in cfg.select.pop_priors]
    if not pops or any(x < 0 for x in pops):
        raise ValueError(f"select.pop_priors={pops}: expected a non-empty list of weights >= 0 (0: off)")
    ds = load_dataset(cfg.data)
    split = temporal_split(ds, pairs_cfg, split_cfg)
    split.require_usable(ds.name)
    # the popularity prior per grid weight (train counts, or per time on the shelf: available_from)
    pop_counts = popularity_counts(ds, split)
    biases = {pop: popularity_bias(pop_counts, pop) for pop in pops}
    own_teacher = label_cfg.teacher == "content"  # the run's content vectors teach the semantic head
    labeler = None if own_teacher else RelevanceLabeler.from_dataset(ds, label_cfg)  # fails early
    traces = cache(partial(_traces_dir, cfg, out))  # the reasoner runs at most once, and only if needed
    # the frozen mode's vectors and the content-only baseline (for trainable content: the embedder
    # before training, where the tower starts)
    folder = content_folder(cfg, out, traces) if model_cfg.content != "none" or own_teacher else None
    if labeler is None:
        label_cfg = dataclasses.replace(label_cfg, teacher=folder)
        labeler = RelevanceLabeler.from_dataset(ds, label_cfg)
        OmegaConf.update(cfg, "data.labels.teacher", folder)  # the saved config names the folder
    features = ItemFeatures.from_items(ds.items, model_cfg.features, model_cfg.no_id(split.item_counts))
    content, content_spec = build_content(cfg, model_cfg, ds, folder, traces)
    t = Trainer(cfg, ds, split, labeler, features, eval_cfg, trainer_cfg, out, rank, world)
    k = eval_cfg.select_k
    heads = list(model_cfg.heads)
    shares = [float(s) for s in cfg.select.shares]

    # MTMH for each lambda; lambda, id prior, popularity prior and quota chosen jointly on valid.
    candidates: list[dict[str, Any]] = []
    trained: dict[float, tuple[TrainResult, dict[float, Variant]]] = {}
    for lam in lams:
        lc = dataclasses.replace(loss_cfg, lam=lam)
        trained[lam] = t.train(f"mtmh_lam{lam:g}", model_cfg, lc, content, priors)
        for shrink, var in trained[lam][1].items():
            for pop, bias in biases.items():
                for p in _sweep(var.vecs, heads, shares, split.valid, labeler, ds.num_items, eval_cfg, bias):
                    candidates.append({"lam": lam, "id_prior_shrink": shrink, "pop_prior": pop, **p})
    choice = choose_point(candidates, k, float(cfg.select.recall_tolerance)) if rank == 0 else {}
    lam, shrink, pop, share = (
        float(x)
        for x in distributed.all_gather_objects(
            [choice.get(key, 0.0) for key in ("lam", "id_prior_shrink", "pop_prior", "share")]
        )[0]
    )
    chosen_prior = dataclasses.replace(priors[0], shrink=shrink)
    item_bias = biases[pop]

    refs: dict[str, tuple[TrainResult, dict[float, Variant], ModelConfig]] = {}
    if cfg.compare.single_head:
        sc = dataclasses.replace(model_cfg, heads=(heads[0],))
        refs["single_head_lam0"] = (
            *t.train(
                "single_head_lam0",
                sc,
                dataclasses.replace(loss_cfg, lam=0.0, alpha=0.0),
                content,
                [chosen_prior],
            ),
            sc,
        )
    if cfg.compare.id_only and model_cfg.content != "none":
        ic = dataclasses.replace(model_cfg, content="none")
        refs["id_only"] = (
            *t.train("id_only", ic, dataclasses.replace(loss_cfg, lam=lam), None, [chosen_prior]),
            ic,
        )

    report: dict[str, Any] = {}
    if rank == 0:
        best_res, best_variants = trained[lam]
        best = best_variants[shrink]
        best_vecs = best.vecs
        extra: dict[str, Callable[[], Retriever]] = {}
        if isinstance(content, FrozenContent):
            extra["content"] = partial(ContentCosine, content.table.numpy())
        elif folder is not None:
            start = load_vectors(folder).aligned(ds.items["item_id"].to_list())
            extra["content"] = partial(ContentCosine, start)
        mshares = quota_shares(heads, share)
        extra[f"mtmh (K1/K={share:g}, lambda={lam:g})"] = partial(
            HeadVectorsRetriever, best_vecs, mshares, "mtmh", item_bias
        )
        for h in heads:
            extra[f"mtmh:{h} only"] = partial(HeadVectorsRetriever, best_vecs, {h: 1.0}, h, item_bias)
        for name, (_, v, rc) in refs.items():
            extra[name] = partial(
                HeadVectorsRetriever, v[shrink].vecs, quota_shares(list(rc.heads), share), name, item_bias
            )
        methods, selection = evaluate_baselines(split, labeler, ds.num_users, eval_cfg, extra=extra)
        test_curve = _sweep(best_vecs, heads, shares, split.test, labeler, ds.num_items, eval_cfg, item_bias)
        valid_curve = [
            c for c in candidates if (c["lam"], c["id_prior_shrink"], c["pop_prior"]) == (lam, shrink, pop)
        ]
        plot_tradeoff(
            out / "quota_tradeoff.png",
            valid_curve,
            test_curve,
            k,
            share,
            title=f"{ds.name}: MTMH quota sweep (lambda={lam:g}, id prior {shrink:g}, pop prior {pop:g})",
        )
        save_export(
            out / "export",
            best.state,
            model_cfg,
            features,
            ds.items["item_id"].to_list(),
            content,
            content_spec,
            {
                "dataset": ds.name,
                "lam": lam,
                "share": share,
                "id_prior": best.prior,
                "pop_prior": pop,
                "best_step": best_res.best_step,
            },
            item_bias,
        )
        report = {
            "dataset": ds.name,
            "dataset_stats": ds.stats(),
            "split": split.stats(),
            "train_pairs": {  # what one epoch of every model's training goes through
                "window": pairs_cfg.train_window or pairs_cfg.window,
                "weight": trainer_cfg.pair_weight,
                "per_epoch": len(t.src),
            },
            "eval": {"ks": sorted(eval_cfg.ks), "select_k": k},
            "labels": dataclasses.asdict(label_cfg),
            "selection": {
                **selection,
                "mtmh": {
                    "lam": lam,
                    "share": share,
                    "id_prior": best.prior,
                    "pop_prior": pop,
                    "pop_counts": popularity_basis(ds),
                    "rule": f"valid recall@{k} within {cfg.select.recall_tolerance} of best, then max valid semrel@{k}",
                    "valid_points": candidates,
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
                for name, (r, _) in [
                    *((f"mtmh_lam{x:g}", v) for x, v in trained.items()),
                    *((n, (r, v)) for n, (r, v, _) in refs.items()),
                ]
            },
            "quota_test_curve": test_curve,
            "methods": methods,
            "world_size": world,
        }
        table = write_report(out, report, title=f"MTMH I2I: {ds.name}")
        finish_run(out, "train_i2i", cfg)
        print(table)
    distributed.barrier()
    return report


@hydra.main(version_base="1.3", config_path="../configs", config_name="train_i2i")
def main(cfg: DictConfig) -> None:
    try:
        run(cfg)
    finally:
        distributed.shutdown()


if __name__ == "__main__":
    main()
