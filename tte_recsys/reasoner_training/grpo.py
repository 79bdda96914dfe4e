"""GRPO on TRL's ``GRPOTrainer`` (LoRA through ``peft_config``, no vLLM on a CPU), and EG-RL.

:func:`train_grpo` runs any GRPO method: EG-RL here (:class:`EgRl`: the catalog reward of
:mod:`~tte_recsys.reasoner_training.rewards`), RESTRAIN in
:mod:`~tte_recsys.reasoner_training.restrain` with its own trainer. A step generates for
``prompts_per_step`` prompts, ``num_generations`` rollouts each. EG-RL's prompts are the items of
the training pairs, each with its partners as positives; the catalog reward scores each rollout
alone, so a step needs no particular mix of items.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from datasets import Dataset
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from transformers.trainer_callback import PrinterCallback
from trl import GRPOConfig, GRPOTrainer

from tte_recsys.reasoner_training.methods import PolicyMethod, RunContext, Trained
from tte_recsys.reasoner_training.policy import (
    CurveCallback,
    PolicySettings,
    TrainerSettings,
    curves,
    last_checkpoint,
    lora_config,
    trainer_args,
)
from tte_recsys.reasoner_training.rewards import FormatReward
from tte_recsys.reasoner_training.tasks import ItemPositives
from tte_recsys.tte.lora import LoraSettings
from tte_recsys.tte.reasoner.prompts import PromptTemplate

__all__ = [
    "EgRl",
    "EgRlSettings",
    "GrpoSettings",
    "eg_rl_rows",
    "grpo_args",
    "grpo_generated_tokens",
    "train_grpo",
]


@dataclass(frozen=True)
class GrpoSettings(TrainerSettings):
    """What every GRPO method sets (``method.*``).

    Attributes:
        steps: optimizer steps (one generation each).
        num_generations: G, rollouts per prompt (>= 2: group advantages need a group).
        prompts_per_step: prompts per step (a step has prompts_per_step x G completions).
        beta: KL coefficient to the starting policy (with LoRA, the base with adapters off).
        epsilon: PPO clip.
        loss_type: TRL's (``dapo``).
        vllm_server: rollouts from a ``trl vllm-serve`` server at this base URL (TRL's server
            mode, GPU nodes only; None: the policy generates them itself).
    """

    steps: int = 60
    num_generations: int = 4
    prompts_per_step: int = 4
    beta: float = 0.01
    epsilon: float = 0.2
    loss_type: str = "dapo"
    vllm_server: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_generations < 2:
            raise ValueError(
                f"method.num_generations={self.num_generations}: GRPO needs a group of >= 2 rollouts per prompt"
            )
        if self.steps < 1 or self.prompts_per_step < 1:
            raise ValueError(
                f"method: steps={self.steps} and prompts_per_step={self.prompts_per_step} must be >= 1"
            )


@dataclass(frozen=True)
class EgRlSettings(GrpoSettings):
    """EG-RL (``method=eg_rl``): GRPO with the catalog reward.

    Attributes:
        scale_rewards: TRL's advantage scaling (``group``: by the group's std).
    """

    scale_rewards: str = "group"


def eg_rl_rows(
    items: Sequence[ItemPositives], template: PromptTemplate, g: GrpoSettings, seed: int
) -> list[dict[str, Any]]:
    """Rows for ``g.steps`` steps of ``g.prompts_per_step`` items, shuffled passes over ``items``
    (an ``image_path`` column, not ``image``: TRL would take that for a vision model's input)."""
    if not items:
        raise ValueError("EG-RL: no training item has a positive in the catalog")
    rng = np.random.default_rng(seed)
    need = g.steps * g.prompts_per_step
    order = np.concatenate([rng.permutation(len(items)) for _ in range(-(-need // len(items)))])[:need]
    return [
        {
            "prompt": template.messages(items[i].side.text),
            "item_id": items[i].side.id,
            "text": items[i].side.text,
            "image_path": items[i].side.image,
            "positives": list(items[i].positives),
        }
        for i in order
    ]


def grpo_args(
    p: PolicySettings,
    g: GrpoSettings,
    out: Path,
    reward_weights: list[float] | None,
    scale_rewards: str = "group",
) -> GRPOConfig:
    """TRL's config for one generation (and one optimizer step) per step, checkpoints every
    ``ckpt_every`` steps under ``out``, no shuffling (the rows are ordered already)."""
    if p.repetition_penalty != 1.0 and p.penalty_scope == "generated":
        raise ValueError(
            f"train.repetition_penalty={p.repetition_penalty} with train.penalty_scope=generated: TRL's GRPO "
            "rollouts take transformers' penalty, which covers the prompt; set it to 1.0 or penalty_scope=all"
        )
    vllm: dict[str, Any] = {}
    if g.vllm_server:  # rollouts from a `trl vllm-serve` process on a GPU node (docs/design.md)
        if not torch.cuda.is_available():
            raise ValueError(
                f"method.vllm_server={g.vllm_server!r}: vLLM rollouts need a GPU node; leave it null on a CPU"
            )
        vllm = {"use_vllm": True, "vllm_mode": "server", "vllm_server_base_url": g.vllm_server}
    return GRPOConfig(
        **trainer_args(g, g.steps, p.seed, out),
        **vllm,
        warmup_steps=0,
        per_device_train_batch_size=g.prompts_per_step * g.num_generations,
        steps_per_generation=1,
        num_iterations=1,
        num_generations=g.num_generations,
        max_completion_length=p.max_completion_length,
        generation_kwargs={"min_new_tokens": p.min_completion_length} if p.min_completion_length else None,
        temperature=p.temperature,
        top_p=p.top_p,
        repetition_penalty=p.repetition_penalty,
        beta=g.beta,
        epsilon=g.epsilon,
        loss_type=g.loss_type,
        scale_rewards=scale_rewards,
        reward_weights=reward_weights,
        shuffle_dataset=False,
        remove_unused_columns=False,
        save_only_model=False,
    )


def grpo_generated_tokens(history: Sequence[dict[str, float]], completions_per_step: int) -> int:
    """Tokens a GRPO run generated: per logged step, its mean completion length (TRL's
    ``completions/mean_length``, end-of-sequence included) times its completions, summed."""
    world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
    return round(sum(h.get("completions/mean_length", 0.0) for h in history) * completions_per_step * world)


def train_grpo(
    name: str,
    policy: PreTrainedModel,
    tok: PreTrainedTokenizerBase,
    rows: list[dict[str, Any]],
    reward_funcs: list[Any],
    args: GRPOConfig,
    lora: LoraSettings | None,
    resume: bool,
    trainer_cls: type[GRPOTrainer] = GRPOTrainer,
    **trainer_kw: Any,
) -> tuple[Any, list[dict[str, float]]]:
    """Train ``policy`` on ``rows`` with ``trainer_cls`` (TRL's ``GRPOTrainer`` or a subclass);
    ``lora`` None: every weight. Returns (the trained model, the logged curves); checkpoints go to
    ``args.output_dir``, ``resume`` continues from the newest."""
    trainer = trainer_cls(
        model=policy,
        reward_funcs=reward_funcs,
        args=args,
        processing_class=tok,
        train_dataset=Dataset.from_list(rows),
        peft_config=lora_config(lora) if lora is not None else None,
        callbacks=[CurveCallback(f"{name} (G={args.num_generations})")],
        **trainer_kw,
    )
    trainer.remove_callback(PrinterCallback)  # our bar shows reward, KL and loss; no dict per step on stdout
    trainer.train(resume_from_checkpoint=last_checkpoint(Path(str(args.output_dir))) if resume else None)
    return trainer.model, curves(trainer.state.log_history)


class EgRl(PolicyMethod):
    """EG-RL: GRPO where the frozen embedder scores each rollout by the catalog reward (and,
    weighted by ``reward.format_weight``, the format reward)."""

    name = "eg_rl"
    settings_type = EgRlSettings
    settings: EgRlSettings

    def train(
        self, ctx: RunContext, policy: PreTrainedModel, tok: PreTrainedTokenizerBase, start: np.ndarray
    ) -> Trained:
        g = self.settings
        w = ctx.reward.settings
        args = grpo_args(ctx.policy, g, ctx.checkpoints, [w.outcome_weight, w.format_weight], g.scale_rewards)
        rows = eg_rl_rows(ctx.train_items(), ctx.template, g, ctx.policy.seed)
        model, history = train_grpo(
            self.name,
            policy,
            tok,
            rows,
            [ctx.reward, FormatReward()],
            args,
            ctx.lora if g.lora else None,
            ctx.resume,
        )
        tokens = grpo_generated_tokens(history, g.prompts_per_step * g.num_generations)
        return Trained(model, history, tokens)
