"""EG-RL and RESTRAIN on TRL's ``GRPOTrainer`` (LoRA through ``peft_config``, no vLLM on a CPU).

A generation batch is ``pairs_per_step`` pairs. EG-RL lays each pair out as two consecutive
prompts (query side, target side) and turns off TRL's shuffling, so a batch always holds whole
pairs (the order is shuffled here instead, :func:`~tte_recsys.reasoner_training.tasks.distinct_batches`).
RESTRAIN has one prompt per label-free query.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from datasets import Dataset
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from transformers.trainer_callback import PrinterCallback
from trl import GRPOConfig, GRPOTrainer

from tte_recsys.reasoner_training.policy import (
    CurveCallback,
    PolicySettings,
    curves,
    lora_config,
    trainer_args,
)
from tte_recsys.reasoner_training.restrain import RestrainAnswers, RestrainSettings, RestrainTrainer
from tte_recsys.reasoner_training.rewards import EmbedderReward, FormatReward
from tte_recsys.reasoner_training.tasks import TrainingPair, distinct_batches
from tte_recsys.tte.lora import LoraSettings
from tte_recsys.tte.reasoner.prompts import PromptTemplate

__all__ = ["eg_rl_rows", "grpo_args", "last_checkpoint", "restrain_rows", "train_grpo"]


def eg_rl_rows(
    pairs: Sequence[TrainingPair], template: PromptTemplate, s: PolicySettings
) -> list[dict[str, Any]]:
    """Rows for ``steps`` steps: per pair its query then its target, pairs of a step distinct."""
    if len(pairs) < 2:
        raise ValueError("EG-RL: at least 2 pairs are needed (a positive and an in-batch negative)")
    if s.pairs_per_step < 2:
        raise ValueError(f"train.pairs_per_step={s.pairs_per_step}: EG-RL needs >= 2 (in-batch negatives)")
    need = s.steps * s.pairs_per_step
    epochs = -(-need // max(1, len(pairs) - s.pairs_per_step)) + 1
    ordered = distinct_batches(pairs, s.pairs_per_step, epochs=epochs, seed=s.seed)[:need]
    if len(ordered) < need:
        raise ValueError(
            f"EG-RL: {len(pairs)} pairs cannot fill {s.steps} steps of {s.pairs_per_step} pairs with distinct items"
        )
    rows = []
    for i, p in enumerate(ordered):
        assert p.target is not None
        for side, x in ((0, p.query), (1, p.target)):
            rows.append(
                {
                    "prompt": template.messages(x.text),
                    "text": x.text,
                    "item_id": x.id,
                    "pair": i,
                    "side": side,
                }
            )
    return rows


def restrain_rows(
    queries: Sequence[TrainingPair], template: PromptTemplate, weights: Sequence[float], s: PolicySettings
) -> list[dict[str, Any]]:
    """Rows for ``steps`` steps of ``pairs_per_step`` label-free queries with their prompt weights."""
    if len(queries) != len(weights):
        raise ValueError(f"RESTRAIN: {len(weights)} prompt weights for {len(queries)} queries")
    rng = np.random.default_rng(s.seed)
    need = s.steps * s.pairs_per_step
    order = np.concatenate([rng.permutation(len(queries)) for _ in range(-(-need // len(queries)))])[:need]
    return [
        {
            "prompt": template.messages(queries[i].query.text),
            "text": queries[i].query.text,
            "item_id": queries[i].query.id,
            "prompt_weight": float(weights[i]),
        }
        for i in order
    ]


def grpo_args(
    s: PolicySettings, out: Path, prompts_per_step: int, reward_weights: list[float] | None
) -> GRPOConfig:
    """TRL's config for one generation (and one optimizer step) per step, checkpoints every
    ``ckpt_every`` steps under ``out``, no shuffling (the rows are ordered already)."""
    vllm: dict[str, Any] = {}
    if s.vllm_server:  # rollouts from a `trl vllm-serve` process on a GPU node (docs/design.md)
        if not torch.cuda.is_available():
            raise ValueError(
                f"train.vllm_server={s.vllm_server!r}: vLLM rollouts need a GPU node; leave it null on a CPU"
            )
        vllm = {"use_vllm": True, "vllm_mode": "server", "vllm_server_base_url": s.vllm_server}
    return GRPOConfig(
        **trainer_args(s, out),
        **vllm,
        warmup_steps=0,
        per_device_train_batch_size=prompts_per_step * s.num_generations,
        steps_per_generation=1,
        num_iterations=1,
        num_generations=s.num_generations,
        max_completion_length=s.max_completion_length,
        generation_kwargs={"min_new_tokens": s.min_completion_length} if s.min_completion_length else None,
        temperature=s.temperature,
        top_p=s.top_p,
        repetition_penalty=s.repetition_penalty,
        beta=s.beta,
        epsilon=s.epsilon,
        loss_type=s.loss_type,
        scale_rewards=s.scale_rewards,
        reward_weights=reward_weights,
        shuffle_dataset=False,
        remove_unused_columns=False,
        save_only_model=False,
    )


def last_checkpoint(out: Path) -> str | None:
    """The newest complete ``checkpoint-N`` folder under ``out`` (Trainer writes its state last)."""
    done = [p for p in out.glob("checkpoint-*") if (p / "trainer_state.json").is_file()]
    return str(max(done, key=lambda p: int(p.name.split("-")[1]))) if done else None


def train_grpo(
    method: str,
    policy: PreTrainedModel,
    tok: PreTrainedTokenizerBase,
    rows: list[dict[str, Any]],
    reward: EmbedderReward,
    s: PolicySettings,
    lora: LoraSettings,
    out: Path,
    resume: bool,
    restrain: RestrainSettings | None = None,
    catalog: tuple[np.ndarray, list[str]] | None = None,
) -> tuple[Any, list[dict[str, float]]]:
    """Train ``method`` (``eg_rl`` or ``restrain``) on ``rows``; returns (the trained model, the
    logged curves). Checkpoints go to ``out``; ``resume`` continues from the newest."""
    callback = CurveCallback(f"{method} (G={s.num_generations})")
    common: dict[str, Any] = {
        "model": policy,
        "processing_class": tok,
        "train_dataset": Dataset.from_list(rows),
        "peft_config": lora_config(lora) if s.lora else None,
        "callbacks": [callback],
    }
    if method == "eg_rl":
        w = reward.settings
        args = grpo_args(s, out, 2 * s.pairs_per_step, [w.outcome_weight, w.format_weight])
        funcs: list[Any] = [reward, FormatReward()]
        trainer: GRPOTrainer = GRPOTrainer(reward_funcs=funcs, args=args, **common)
    elif method == "restrain":
        if restrain is None or catalog is None:
            raise ValueError("restrain: needs its settings and the catalog vectors")
        answers = RestrainAnswers(reward, catalog[0], catalog[1], s.num_generations)
        args = grpo_args(s, out, s.pairs_per_step, None)
        trainer = RestrainTrainer(
            reward_funcs=[answers], args=args, answers=answers, restrain=restrain, **common
        )
    else:
        raise ValueError(f"method={method!r}: GRPO trains eg_rl or restrain")
    trainer.remove_callback(PrinterCallback)  # our bar shows reward, KL and loss; no dict per step on stdout
    trainer.train(resume_from_checkpoint=last_checkpoint(out) if resume else None)
    return trainer.model, curves(trainer.state.log_history)
