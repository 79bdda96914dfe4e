"""One reasoner-training run (``pipelines.train_reasoner``): the data, the start, the training,
the held-out reward, the export, the report and, optionally, the traces' retrieval score.

``method``: ``sft`` (TTE_s), ``eg_rl`` (embedder-guided GRPO), ``restrain`` (label-free GRPO),
``unified_head`` (TTE_u: a trained reasoner frozen, an embedding head trained on its states);
``score`` trains nothing and scores ``score_reasoner`` (``score_reasoner.model_path=none``: no
traces), the rows the trained reasoners are compared with.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from tte_recsys.artifacts import write_json, write_text
from tte_recsys.config import EvalConfig, from_mapping
from tte_recsys.data.dataset import Dataset
from tte_recsys.data.labels import RelevanceLabeler
from tte_recsys.data.split import TemporalSplit, temporal_split
from tte_recsys.evaluation.baselines import ContentCosine
from tte_recsys.evaluation.protocol import evaluate_retriever
from tte_recsys.experiment.stages import embed_items, generate_catalog_traces, stage_config, uses_reasoner
from tte_recsys.reasoner_training.grpo import eg_rl_rows, restrain_rows, train_grpo
from tte_recsys.reasoner_training.policy import PolicySettings, export_reasoner, load_policy, sample
from tte_recsys.reasoner_training.restrain import RestrainAnswers, RestrainSettings, starting_prompt_weights
from tte_recsys.reasoner_training.rewards import EmbedderReward, RewardSettings
from tte_recsys.reasoner_training.sft import SftSettings, best_of_n_traces, teacher_traces, train_sft
from tte_recsys.reasoner_training.tasks import Side, TrainingPair, i2i_pairs, table_pairs, unlabeled_queries
from tte_recsys.reasoner_training.toy import build_toy_models, toy_task
from tte_recsys.reasoner_training.unified import UnifiedSettings, train_unified
from tte_recsys.runs import data_configs, finish_run, load_dataset
from tte_recsys.tte.factory import embedder_from_config
from tte_recsys.tte.items import ItemInput, item_inputs
from tte_recsys.tte.lora import LoraSettings
from tte_recsys.tte.reasoner.prompts import PromptTemplate, get_template
from tte_recsys.vectors import load_vectors

__all__ = ["METHODS", "ReasonerData", "heldout_reward", "prepare_reasoner_data", "train_reasoner"]

log = logging.getLogger(__name__)

METHODS = ("sft", "eg_rl", "restrain", "unified_head", "score")


@dataclass
class ReasonerData:
    """The run's catalog (as sides), its training pairs, held-out pairs and, with a dataset (not
    the toy task), the dataset and its split."""

    catalog: list[Side]
    pairs: list[TrainingPair]
    heldout: list[TrainingPair]
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
        out.append(TrainingPair(Side(items[q].item_id, items[q].text), Side(items[d].item_id, items[d].text)))
        if len(out) == n:
            break
    return out


def prepare_reasoner_data(cfg: DictConfig, out: Path) -> tuple[ReasonerData, dict[str, str]]:
    """The data of a run, and the model folders it uses (``policy``, ``embedder``): the toy task
    and its tiny models with ``toy=true`` (built under ``out/toy``), else the configured dataset."""
    seed = int(cfg.train.seed)
    n_held = int(cfg.heldout_pairs)
    if cfg.toy:
        reasoner_dir, embedder_dir = build_toy_models(out / "toy", seed=seed)
        task = toy_task(int(cfg.toy_items), seed)
        catalog = [task.side(i) for i in range(task.items.height)]
        data = ReasonerData(catalog, task.pairs(int(cfg.max_pairs), seed), task.pairs(n_held, seed + 1))
        return data, {"policy": str(reasoner_dir), "embedder": str(embedder_dir)}
    ds = load_dataset(cfg.data)
    pairs_cfg, split_cfg, _ = data_configs(cfg.data)
    split = temporal_split(ds, pairs_cfg, split_cfg)
    split.require_usable(ds.name)
    items = item_inputs(ds, list(cfg.data.content_fields))
    catalog = [Side(it.item_id, it.text, it.image_path) for it in items]
    if cfg.task == "table":
        if not cfg.pairs_table:
            raise ValueError("task=table: set pairs_table=<parquet with query_text, target_text>")
        pairs = table_pairs(str(cfg.pairs_table))
    elif cfg.task == "i2i":
        pairs = i2i_pairs(split.train_pairs, items, int(cfg.max_pairs), seed)
    else:
        raise ValueError(f"task={cfg.task!r}: expected 'i2i' or 'table'")
    data = ReasonerData(catalog, pairs, _valid_pairs(split, items, n_held, seed), ds, split)
    return data, {"policy": str(cfg.policy_path), "embedder": str(cfg.embedder.model_path)}


def heldout_reward(
    model: torch.nn.Module,
    tok: Any,
    pairs: Sequence[TrainingPair],
    template: PromptTemplate,
    reward: EmbedderReward,
    s: PolicySettings,
    n: int,
    seed: int,
) -> float:
    """Mean EG-RL outcome reward of ``n`` sampled traces per side of held-out pairs, scored in
    batches of ``pairs_per_step`` pairs as in training (labels are used here, never in RESTRAIN's training)."""
    sides = [x for p in pairs for x in (p.query, p.target) if x is not None]
    traces = sample(model, tok, [template.messages(x.text) for x in sides], n, s, seed=seed)
    values = reward.score_samples(sides, traces, max(2, s.pairs_per_step))
    if np.isnan(values).all():
        raise ValueError(f"heldout_pairs: {len(pairs)} held-out pairs, need >= 2")
    return float(np.nanmean(values))


def _embedder_cfg(cfg: DictConfig, embedder_dir: str) -> DictConfig:
    e = OmegaConf.to_container(cfg.embedder, resolve=True)
    assert isinstance(e, dict)
    if cfg.toy:  # the toy embedder: mean pooling, PyTorch (no ONNX export of a 64-wide toy)
        e.update(model_path=embedder_dir, runtime="torch", pooling="mean")
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
    without traces), on valid and test, with the I2I protocol (the experiment's own stages)."""
    assert data.split is not None and data.dataset is not None
    stage = stage_config(cfg, reasoner=reasoner)
    uses = uses_reasoner(stage)
    traces_dir = out / "traces"
    if uses:
        keys = {"prompt": cfg.prompt, "cache_dir": cfg.cache_dir, "flush_every": 64}
        generate_catalog_traces(cast(DictConfig, OmegaConf.merge(stage, keys)), traces_dir)
    vec_dir = out / "vectors"
    more = {"traces_dir": str(traces_dir) if uses else None, "shard_size": 4096}
    embed_items(cast(DictConfig, OmegaConf.merge(stage, more)), vec_dir)

    ds_items = [x.id for x in data.catalog]
    vectors = load_vectors(str(vec_dir)).aligned(ds_items)
    eval_cfg = from_mapping(EvalConfig, cfg.eval, "eval")
    _, _, label_cfg = data_configs(cfg.data)
    labeler = RelevanceLabeler.from_dataset(data.dataset, label_cfg)
    retriever = ContentCosine(vectors)
    return {
        which: evaluate_retriever(retriever, ev, labeler, len(ds_items), eval_cfg)
        for which, ev in (("valid", data.split.valid), ("test", data.split.test))
    }


def train_reasoner(cfg: DictConfig, out: Path) -> dict[str, Any]:
    """Run ``cfg.method`` end to end into ``out`` (see the module docstring); returns the report."""
    method = str(cfg.method)
    if method not in METHODS:
        raise ValueError(f"method={method!r}: expected one of {list(METHODS)}")
    if method == "score":
        return _score_only(cfg, out)
    s = from_mapping(PolicySettings, cfg.train, "train")
    rs = from_mapping(RewardSettings, cfg.reward, "reward")
    lora = from_mapping(LoraSettings, cfg.lora, "lora")
    template = get_template(str(cfg.prompt))
    data, dirs = prepare_reasoner_data(cfg, out)
    embedder, model_id = embedder_from_config(_embedder_cfg(cfg, dirs["embedder"]))
    reward = EmbedderReward(embedder, rs, batch_size=int(cfg.embedder.batch_size))
    policy_dir = (
        str(cfg.unified.reasoner_path or dirs["policy"]) if method == "unified_head" else dirs["policy"]
    )
    policy, tok = load_policy(policy_dir)
    n_eval, seed = int(cfg.heldout_samples), s.seed
    report: dict[str, Any] = {
        "method": method,
        "policy": policy_dir,
        "embedder": model_id,
        "pairs": len(data.pairs),
        "heldout_pairs": len(data.heldout),
        "settings": OmegaConf.to_container(cfg.train, resolve=True),
    }
    if method != "unified_head":  # the unified head reports its own held-out retrieval
        start = heldout_reward(policy, tok, data.heldout, template, reward, s, n_eval, seed + 7)
        log.info("%s: held-out reward of the starting policy %.4f", method, start)
    ckpt = out / "checkpoints"
    history: list[dict[str, float]] = []
    model: Any = policy
    if method == "eg_rl":
        model, history = train_grpo(
            "eg_rl", policy, tok, eg_rl_rows(data.pairs, template, s), reward, s, lora, ckpt, bool(cfg.resume)
        )
    elif method == "restrain":
        rst = from_mapping(RestrainSettings, cfg.restrain, "restrain")
        queries = unlabeled_queries(data.catalog, int(cfg.max_queries), seed)
        cat_vecs = embedder.encode([x.text for x in data.catalog], batch_size=int(cfg.embedder.batch_size))
        answers = RestrainAnswers(reward, cat_vecs, [x.id for x in data.catalog], s.num_generations)
        weights = starting_prompt_weights(policy, tok, queries, template, answers, s, rst)
        report["prompt_weights"] = {"mean": float(np.mean(weights)), "min": float(np.min(weights))}
        model, history = train_grpo(
            "restrain",
            policy,
            tok,
            restrain_rows(queries, template, weights, s),
            reward,
            s,
            lora,
            ckpt,
            bool(cfg.resume),
            restrain=rst,
            catalog=(cat_vecs, [x.id for x in data.catalog]),
        )
    elif method == "sft":
        sft = from_mapping(SftSettings, {k: v for k, v in cfg.sft.items() if k != "teacher"}, "sft")
        if sft.source == "best_of_n":
            examples, picked = best_of_n_traces(policy, tok, data.pairs, template, reward, s, sft)
            report["best_of_n"] = picked
        else:
            examples = teacher_traces(cfg.sft.teacher, data.pairs, template, out / "teacher", cfg.cache_dir)
        model, history = train_sft(policy, tok, examples, template, s, lora, sft, ckpt, bool(cfg.resume))
    else:
        uni = from_mapping(UnifiedSettings, cfg.unified, "unified")
        head_report = train_unified(policy, tok, data, template, s, uni, out / "export")
        report["unified"] = head_report
    if method != "unified_head":
        end = heldout_reward(model, tok, data.heldout, template, reward, s, n_eval, seed + 7)
        report["heldout_reward"] = {"start": start, "end": end}
        log.info("%s: held-out reward %.4f -> %.4f", method, start, end)
        export_reasoner(model, tok, out / "export", {"method": method, "base": policy_dir, "steps": s.steps})
    report["curves"] = history
    if history:
        _plot_curves(history, out / "curves.png", f"{method}: {Path(policy_dir).name}")
    if cfg.score and method != "unified_head":
        if data.split is None:
            raise ValueError("score=true needs a dataset split (not the toy task)")
        hf = cast(dict[str, Any], OmegaConf.to_container(cfg.score_reasoner, resolve=True))
        hf["model_path"] = str(out / "export")
        report["retrieval"] = score_traces(cfg, out / "score", data, hf)
    write_json(out / "report.json", report)
    write_text(out / "report.md", _report_md(report))
    finish_run(out, "train_reasoner_run", cfg, {"method": method})
    return report


def _score_only(cfg: DictConfig, out: Path) -> dict[str, Any]:
    data, _ = prepare_reasoner_data(cfg, out)
    if data.split is None:
        raise ValueError("method=score needs a dataset split (not the toy task)")
    hf = cast(dict[str, Any], OmegaConf.to_container(cfg.score_reasoner, resolve=True))
    path = str(hf.get("model_path"))
    reasoner: dict[str, Any] = (
        {"_target_": "tte_recsys.tte.reasoner.backends.NoReasoner"} if path == "none" else hf
    )
    report = {
        "method": "score",
        "policy": path,
        "embedder": str(cfg.embedder.model_path),
        "pairs": 0,
        "heldout_pairs": 0,
    }
    report["retrieval"] = score_traces(cfg, out / "score", data, reasoner)
    write_json(out / "report.json", report)
    write_text(out / "report.md", _report_md(report))
    finish_run(out, "train_reasoner_run", cfg, {"method": "score"})
    return report


def _report_md(r: dict[str, Any]) -> str:
    lines = [
        f"# Reasoner training: {r['method']}",
        "",
        f"policy `{r['policy']}`, embedder `{r['embedder']}`",
        "",
    ]
    lines += [f"- training pairs: {r['pairs']}, held-out pairs: {r['heldout_pairs']}"]
    if "heldout_reward" in r:
        h = r["heldout_reward"]
        lines += [f"- held-out EG-RL reward: start {h['start']:.4f}, end {h['end']:.4f}"]
    if "unified" in r:
        lines += [f"- unified head: {r['unified']}"]
    if "retrieval" in r:
        lines += [
            "",
            "| split | recall@10 | recall@50 | recall@100 | SemRel@50 | cold recall@50 |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for which, m in r["retrieval"].items():
            cells = [
                m.get(k, math.nan)
                for k in ("recall@10", "recall@50", "recall@100", "semrel@50", "cold_recall@50")
            ]
            lines.append(f"| {which} | " + " | ".join(f"{c:.4f}" for c in cells) + " |")
    if r.get("curves"):
        lines += ["", "![curves](curves.png)"]
    return "\n".join(lines) + "\n"
