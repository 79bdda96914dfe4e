"""One reasoner-training run (``pipelines.train_reasoner``): the data, the method, the report
and, optionally, the traces' retrieval score.

``method`` is a config group (``configs/method/<name>.yaml``): its ``_target_`` names the method's
class (:mod:`tte_recsys.reasoner_training.methods`), its other keys the class's settings. ``sft``
(TTE_s), ``eg_rl`` (embedder-guided GRPO), ``restrain`` (label-free GRPO), ``expert_iteration``
(sample, keep above the no-trace floor, SFT, repeat), ``unified_head`` (TTE_u: a trained
reasoner frozen, an embedding head trained on its states); ``score`` trains nothing and scores
``score_reasoner`` (``score_reasoner.model_path=none``: no traces), the rows the trained reasoners
are compared with.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from tte_recsys.artifacts import write_json, write_text
from tte_recsys.config import EvalConfig, from_mapping
from tte_recsys.data.dataset import Dataset
from tte_recsys.data.labels import RelevanceLabeler
from tte_recsys.data.split import TemporalSplit, temporal_split
from tte_recsys.evaluation.baselines import ContentCosine
from tte_recsys.evaluation.protocol import evaluate_retriever, paired_intervals
from tte_recsys.experiment.config import SelectConfig
from tte_recsys.experiment.stages import (
    embed_items,
    generate_catalog_traces,
    stage_config,
    trace_fusion,
    uses_reasoner,
)
from tte_recsys.experiment.trace_choice import choose_with_traces
from tte_recsys.reasoner_training.methods import ReasonerMethod, RunContext
from tte_recsys.reasoner_training.policy import PolicySettings
from tte_recsys.reasoner_training.rewards import CatalogReward, RewardSettings
from tte_recsys.reasoner_training.tasks import (
    TaskData,
    TrainingPair,
    i2i_pairs,
    item_side,
    table_pairs,
)
from tte_recsys.reasoner_training.toy import build_toy_models, toy_task
from tte_recsys.runs import data_configs, finish_run, load_dataset
from tte_recsys.tte.factory import embedder_from_config
from tte_recsys.tte.items import ItemInput, item_inputs
from tte_recsys.tte.lora import LoraSettings
from tte_recsys.tte.reasoner.prompts import get_template
from tte_recsys.vectors import load_vectors

__all__ = ["ReasonerData", "build_method", "prepare_reasoner_data", "train_reasoner"]

log = logging.getLogger(__name__)


@dataclass
class ReasonerData(TaskData):
    """:class:`TaskData` and, with a dataset (not the toy task), the dataset and its split."""

    dataset: Dataset | None = None
    split: TemporalSplit | None = None


def _valid_pairs(split: TemporalSplit, items: Sequence[ItemInput], n: int, seed: int) -> list[TrainingPair]:
    """Up to ``n`` (valid trigger, one of its valid positives) pairs with distinct items: held out from training."""
    v = split.valid
    rng = np.random.default_rng(seed)
    out: list[TrainingPair] = []
    seen: set[int] = set()
    for t in rng.permutation(v.num_triggers):
        q = int(v.triggers[t])
        targets = [int(x) for x in v.targets[v.indptr[t] : v.indptr[t + 1]] if int(x) not in seen]
        if q in seen or not targets:
            continue
        d = int(rng.choice(targets))
        seen |= {q, d}
        out.append(TrainingPair(item_side(items[q]), item_side(items[d])))
        if len(out) == n:
            break
    return out


def prepare_reasoner_data(cfg: DictConfig, out: Path) -> tuple[ReasonerData, dict[str, str]]:
    """The data of a run, and the model folders it uses (``policy``, ``embedder``): the toy task
    and its tiny models with ``toy=true`` (built under ``out/toy``), else the configured dataset.
    ``task=table``: the table's targets are the catalog and its last ``heldout_pairs`` rows are
    held out (the dataset is still loaded: ``score=true`` scores on its split)."""
    seed = int(cfg.train.seed)
    n_held = int(cfg.heldout_pairs)
    if cfg.toy:
        reasoner_dir, embedder_dir = build_toy_models(out / "toy", seed=seed)
        task = toy_task(int(cfg.toy_items), seed)
        toy_items = [task.item(i) for i in range(task.items.height)]
        data = ReasonerData(
            [item_side(it) for it in toy_items],
            task.pairs(int(cfg.max_pairs), seed),
            task.pairs(n_held, seed + 1),
            {it.item_id: it for it in toy_items},
        )
        return data, {"policy": str(reasoner_dir), "embedder": str(embedder_dir)}
    ds = load_dataset(cfg.data)
    pairs_cfg, split_cfg, _ = data_configs(cfg.data)
    split = temporal_split(ds, pairs_cfg, split_cfg)
    split.require_usable(ds.name)
    items = item_inputs(ds, list(cfg.data.content_fields))
    dirs = {"policy": str(cfg.policy_path), "embedder": str(cfg.embedder.model_path)}
    if cfg.task == "table":
        if not cfg.pairs_table:
            raise ValueError("task=table: set pairs_table=<parquet with query_text, target_text>")
        rows = table_pairs(str(cfg.pairs_table))
        if len(rows) <= n_held:
            raise ValueError(
                f"task=table: {len(rows)} rows in {cfg.pairs_table}, need more than heldout_pairs={n_held}"
            )
        targets = list({p.target.id: p.target for p in rows if p.target is not None}.values())
        return ReasonerData(targets, rows[:-n_held], rows[-n_held:], {}, ds, split), dirs
    if cfg.task != "i2i":
        raise ValueError(f"task={cfg.task!r}: expected 'i2i' or 'table'")
    pairs = i2i_pairs(split.train_pairs, items, int(cfg.max_pairs), seed)
    catalog = [item_side(it) for it in items]
    by_id = {it.item_id: it for it in items}
    return ReasonerData(catalog, pairs, _valid_pairs(split, items, n_held, seed), by_id, ds, split), dirs


def build_method(node: Any) -> ReasonerMethod:
    """The method of ``cfg.method`` (its ``_target_`` class built with its settings).

    Raises:
        ValueError: the ``_target_`` is no :class:`ReasonerMethod`.
    """
    method = instantiate(node, _convert_="all", _recursive_=False)  # a teacher config stays a mapping
    if not isinstance(method, ReasonerMethod):
        raise ValueError(
            f"method._target_={node.get('_target_')!r} is not a reasoner-training method "
            "(a tte_recsys.reasoner_training.methods.ReasonerMethod)"
        )
    return method


def _embedder_cfg(cfg: DictConfig, embedder_dir: str) -> DictConfig:
    e = OmegaConf.to_container(cfg.embedder, resolve=True)
    assert isinstance(e, dict)
    if cfg.toy:  # the toy embedder: mean pooling, PyTorch (no ONNX export of a 64-wide toy); its
        # traces are a few words, and at w = 0.1 the right category word earns only ~0.03 (toy.py)
        e.update(model_path=embedder_dir, runtime="torch", pooling="mean", trace_weight=0.5)
    return OmegaConf.create(e)


def _plot_curves(history: list[dict[str, float]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in ("reward", "kl", "loss") if any(k in h for h in history)]
    fig, axes = plt.subplots(1, max(1, len(keys)), figsize=(4 * max(1, len(keys)), 3))
    for ax, k in zip(np.atleast_1d(axes), keys, strict=False):
        pts = [(h["step"], h[k]) for h in history if k in h]
        ax.plot([p[0] for p in pts], [p[1] for p in pts])
        ax.set_title(k)
        ax.set_xlabel("step")
    fig.suptitle(title)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=80)
    plt.close(fig)
    tmp.replace(path)


def score_traces(cfg: DictConfig, out: Path, data: ReasonerData, reasoner: dict[str, Any]) -> dict[str, Any]:
    """Content-only retrieval of the catalog embedded with ``reasoner``'s traces (``reasoner=none``:
    without traces), on valid and test, with the I2I protocol (the experiment's own stages). With
    ``embedder.traces=fuse`` the fusion ``(w, side)`` is chosen on valid from ``select.trace_weights
    x select.trace_sides`` exactly as ``train_i2i`` chooses it (0 is in the grid); ``traces``
    in the result says what was chosen and every valid point tried, ``test_vs_no_traces`` the
    paired bootstrap interval of test recall@``eval.select_k`` against the plain vectors."""
    assert data.split is not None and data.dataset is not None
    sel = from_mapping(SelectConfig, cfg.select, "select")  # checked before any work, traces or not
    stage = stage_config(cfg, reasoner=reasoner, shard_size=4096)
    uses = uses_reasoner(stage)
    fused = trace_fusion(stage.embedder).mode == "fuse"
    traces_dir = out / "traces"
    if uses:
        keys = {"prompt": cfg.prompt, "cache_dir": cfg.cache_dir, "flush_every": 64}
        generate_catalog_traces(cast(DictConfig, OmegaConf.merge(stage, keys)), traces_dir)
    vec_dir = out / "vectors"  # concat: the items with their traces; fuse or no reasoner: plain
    more = {"traces_dir": str(traces_dir) if uses and not fused else None}
    embed_items(cast(DictConfig, OmegaConf.merge(stage, more)), vec_dir)

    ds_items = data.dataset.items["item_id"].to_list()
    eval_cfg = from_mapping(EvalConfig, cfg.eval, "eval")
    _, _, label_cfg = data_configs(cfg.data)
    labeler = RelevanceLabeler.from_dataset(data.dataset, label_cfg)
    result: dict[str, Any] = {}
    if uses and fused:
        choice = choose_with_traces(
            stage,
            vec_dir,
            traces_dir,
            out / "trace_vectors",
            ds_items,
            data.split.valid,
            labeler,
            eval_cfg,
            sel.trace_weights,
            sel.trace_sides,
            sel.trace_rule,
        )
        retriever = ContentCosine(*choice.content_only())
        result["traces"] = choice.summary()
        rows = {"traces": lambda: retriever, "no traces": lambda: ContentCosine(choice.plain)}
        result["test_vs_no_traces"] = paired_intervals(
            rows, [("traces", "no traces")], data.split.test, eval_cfg.select_k, eval_cfg.batch_size
        )["traces vs no traces"]
    else:
        retriever = ContentCosine(load_vectors(str(vec_dir)).aligned(ds_items))
    for which, ev in (("valid", data.split.valid), ("test", data.split.test)):
        result[which] = evaluate_retriever(retriever, ev, labeler, len(ds_items), eval_cfg)
    return result


def train_reasoner(cfg: DictConfig, out: Path) -> dict[str, Any]:
    """Run ``cfg.method`` end to end into ``out`` (see the module docstring); returns the report."""
    method = build_method(cfg.method)
    policy = from_mapping(PolicySettings, cfg.train, "train")
    rs = from_mapping(RewardSettings, cfg.reward, "reward")
    lora = from_mapping(LoraSettings, cfg.lora, "lora")
    template = get_template(str(cfg.prompt))
    data, dirs = prepare_reasoner_data(cfg, out)
    embedder_cfg = _embedder_cfg(cfg, dirs["embedder"])
    model_id: list[str] = []

    def reward() -> CatalogReward:
        embedder, mid = embedder_from_config(embedder_cfg)
        model_id.append(mid)
        return CatalogReward(
            embedder, data.catalog, trace_fusion(embedder_cfg), rs, int(embedder_cfg.batch_size)
        )

    def score(model_path: str | None) -> dict[str, Any]:
        if data.split is None:
            raise ValueError(f"method={method.name} with scoring needs a dataset split (not the toy task)")
        return score_traces(cfg, out / "score", data, _score_reasoner(cfg, model_path))

    scored = OmegaConf.select(cfg, "score_reasoner.model_path", throw_on_missing=False)  # None: unset
    ctx = RunContext(
        data=data,
        template=template,
        policy=policy,
        lora=lora,
        out=out,
        resume=bool(cfg.resume),
        policy_path=dirs["policy"],
        heldout_samples=int(cfg.heldout_samples),
        cache_dir=str(cfg.cache_dir),
        reward=reward,
        score_traces=score,
        score_reasoner=str(scored if scored is not None else cfg.score_reasoner.get("_target_")),
    )
    result = method.run(ctx)
    report: dict[str, Any] = {
        "method": method.name,
        "policy": result.policy,
        "embedder": model_id[0] if model_id else str(embedder_cfg.model_path),
        "pairs": len(data.pairs),
        "heldout_pairs": len(data.heldout),
        "settings": {"train": dataclasses.asdict(policy), "method": method.settings_dict()},
        **result.report,
        "curves": result.history,
    }
    if result.history:
        _plot_curves(result.history, out / "curves.png", f"{method.name}: {Path(result.policy).name}")
    if cfg.score and "retrieval" not in report:  # method=score has scored already
        if result.export is None:
            raise ValueError(f"score=true: method={method.name} exports no reasoner to score")
        report["retrieval"] = score(str(result.export))
    write_json(out / "report.json", report)
    write_text(out / "report.md", _report_md(report))
    finish_run(out, "train_reasoner_run", cfg, {"method": method.name})
    return report


def _score_reasoner(cfg: DictConfig, model_path: str | None) -> dict[str, Any]:
    """The reasoner config that writes the traces to score: ``score_reasoner`` (with ``model_path``
    where given); a ``model_path`` of ``none``: no traces."""
    r = cast(dict[str, Any], OmegaConf.to_container(cfg.score_reasoner, resolve=True))
    if model_path is not None:
        r["model_path"] = model_path
    if str(r.get("model_path")) == "none":
        return {"_target_": "tte_recsys.tte.reasoner.backends.NoReasoner"}
    return r


def _report_md(r: dict[str, Any]) -> str:
    lines = [
        f"# Reasoner training: {r['method']}",
        "",
        f"policy `{r['policy']}`, embedder `{r['embedder']}`",
        "",
    ]
    lines += [f"- training pairs: {r['pairs']}, held-out pairs: {r['heldout_pairs']}"]
    if "heldout_reward" in r:
        h, c = r["heldout_reward"], r["heldout_reward"]["change"]
        lines += [
            f"- held-out reward (catalog rank, no-trace floor): start {h['start']:.4f}, end {h['end']:.4f}, "
            f"change {c['diff']:+.4f} [{c['lo']:+.4f}, {c['hi']:+.4f}] (paired bootstrap 95%, {c['n']} items)",
            f"- generated tokens (training): {r['generated_tokens']:,}",
        ]
    for x in r.get("expert_iteration", {}).get("rounds", []):
        c = x["change"]
        lines.append(
            f"- round {x['round']}: kept {x['kept']} of {x['sampled']} traces, {x['generated_tokens']:,} tokens "
            f"so far, held-out reward {x['heldout_reward']:.4f} (change {c['diff']:+.4f} [{c['lo']:+.4f}, {c['hi']:+.4f}])"
        )
    if "unified" in r:
        lines += [f"- unified head: {r['unified']}"]
    if "retrieval" in r:
        lines += [
            "",
            "| split | recall@10 | recall@50 | recall@100 | SemRel@50 | cold recall@50 |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for which in ("valid", "test"):
            m = r["retrieval"][which]
            cells = [
                m.get(k, math.nan)
                for k in ("recall@10", "recall@50", "recall@100", "semrel@50", "cold_recall@50")
            ]
            lines.append(f"| {which} | " + " | ".join(f"{c:.4f}" for c in cells) + " |")
        if t := r["retrieval"].get("traces"):
            c = r["retrieval"]["test_vs_no_traces"]
            lines.append(
                f"\nTraces fused at w={t['weight']:g} ({t['side']}), chosen on valid. Test recall@{c['k']} "
                f"against the same items without traces: {c['diff']:+.4f} [{c['lo']:+.4f}, {c['hi']:+.4f}] "
                f"(paired bootstrap 95%, {c['n']} triggers)."
            )
    if r.get("curves"):
        lines += ["", "![curves](curves.png)"]
    return "\n".join(lines) + "\n"
