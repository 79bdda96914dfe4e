"""TTE_s: supervised fine-tuning of the reasoner on traces (loss on the trace tokens only).

Traces come from a teacher (any reasoner backend: ``file`` for traces written elsewhere,
``openai`` for a large model served elsewhere, ``hf``), or from the policy itself: the best of N
sampled traces per training item by the EG-RL reward (rejection sampling; no teacher needed).
Training is TRL's ``SFTTrainer`` on prompt-completion rows, which puts the loss on the completion.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from datasets import Dataset
from hydra.utils import instantiate
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from transformers.trainer_callback import PrinterCallback
from trl import SFTConfig, SFTTrainer

from tte_recsys.reasoner_training.grpo import last_checkpoint
from tte_recsys.reasoner_training.policy import (
    CurveCallback,
    PolicySettings,
    curves,
    lora_config,
    sample,
    trainer_args,
)
from tte_recsys.reasoner_training.rewards import EmbedderReward
from tte_recsys.reasoner_training.tasks import Side, TrainingPair
from tte_recsys.tte.items import ItemInput
from tte_recsys.tte.lora import LoraSettings
from tte_recsys.tte.reasoner.cache import TraceCache
from tte_recsys.tte.reasoner.generate import generate_traces
from tte_recsys.tte.reasoner.prompts import PromptTemplate

__all__ = ["SftExample", "SftSettings", "best_of_n_traces", "sft_rows", "teacher_traces", "train_sft"]

SftExample = tuple[Side, str]  # an item and the trace (raw model text) to learn for it


@dataclass(frozen=True)
class SftSettings:
    """``sft.*``: where the traces come from and how many.

    Attributes:
        source: ``best_of_n`` (self-distillation by the EG-RL reward) or ``teacher`` (``sft.teacher``,
            a reasoner config: file / openai / hf).
        n: traces sampled per item for best-of-N.
        max_pairs: training pairs whose two items get a trace.
    """

    source: str = "best_of_n"
    n: int = 4
    max_pairs: int = 128

    def __post_init__(self) -> None:
        if self.source not in ("best_of_n", "teacher"):
            raise ValueError(f"sft.source={self.source!r}: expected 'best_of_n' or 'teacher'")
        if self.n < 2 and self.source == "best_of_n":
            raise ValueError(f"sft.n={self.n}: best-of-N needs >= 2 samples per item")


def best_of_n_traces(
    model: PreTrainedModel,
    tok: PreTrainedTokenizerBase,
    pairs: Sequence[TrainingPair],
    template: PromptTemplate,
    reward: EmbedderReward,
    s: PolicySettings,
    sft: SftSettings,
) -> tuple[list[SftExample], dict[str, float]]:
    """For each item of the first ``max_pairs`` pairs, the best of ``n`` sampled traces by the
    symmetric EG-RL reward in batches of ``pairs_per_step`` pairs; and the mean reward of all
    samples against that of the picked ones."""
    use = [p for p in pairs if p.target is not None][: sft.max_pairs]
    per = max(2, s.pairs_per_step)
    use = use[: len(use) - len(use) % per]
    if not use:
        raise ValueError(f"sft: best-of-N needs >= {per} pairs (train.pairs_per_step)")
    sides = [x for p in use for x in (p.query, p.target) if x is not None]
    traces = sample(
        model, tok, [template.messages(x.text) for x in sides], sft.n, s, seed=s.seed, show_progress=True
    )
    r = reward.score_samples(sides, traces, per)  # (2 x pairs, n)
    out: list[SftExample] = [(x, traces[i][int(r[i].argmax())]) for i, x in enumerate(sides)]
    all_r, best_r = [r.mean()], [r.max(1).mean()]
    return out, {"mean_reward_all": float(np.mean(all_r)), "mean_reward_picked": float(np.mean(best_r))}


def teacher_traces(
    teacher: Mapping[str, Any] | None,
    pairs: Sequence[TrainingPair],
    template: PromptTemplate,
    out: Path,
    cache_dir: str,
) -> list[SftExample]:
    """The teacher reasoner's trace for every item of ``pairs`` (through the trace cache)."""
    if not teacher:
        raise ValueError(
            "sft.source=teacher: set sft.teacher to a reasoner config (e.g. _target_ of the file backend)"
        )
    reasoner = instantiate(teacher)
    sides = {x.id: x for p in pairs for x in (p.query, p.target) if x is not None}
    items = [ItemInput(i, {"text": x.text}, x.image) for i, x in sides.items()]
    rows, summary = generate_traces(items, reasoner, template, TraceCache(cache_dir, writer="sft"))
    if rows.height == 0:
        raise ValueError(f"sft: the teacher {reasoner.reasoner_id} wrote no trace ({summary.as_dict()})")
    return [(sides[i], raw) for i, raw in rows.select("item_id", "raw").iter_rows()]


def sft_rows(examples: Sequence[SftExample], template: PromptTemplate) -> list[dict[str, Any]]:
    """Prompt-completion rows (conversational): the loss falls on the completion only."""
    return [
        {"prompt": template.messages(x.text), "completion": [{"role": "assistant", "content": trace}]}
        for x, trace in examples
    ]


def train_sft(
    model: PreTrainedModel,
    tok: PreTrainedTokenizerBase,
    examples: Sequence[SftExample],
    template: PromptTemplate,
    s: PolicySettings,
    lora: LoraSettings,
    sft: SftSettings,
    out: Path,
    resume: bool,
) -> tuple[Any, list[dict[str, float]]]:
    """``s.steps`` optimizer steps of next-token loss on the traces; returns (model, curves)."""

    args = SFTConfig(**trainer_args(s, out), per_device_train_batch_size=s.sft_batch_size, max_length=512)
    callback = CurveCallback(f"sft ({len(examples)} traces)")
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(sft_rows(examples, template)),
        processing_class=tok,
        peft_config=lora_config(lora) if s.lora else None,
        callbacks=[callback],
    )
    trainer.remove_callback(PrinterCallback)
    trainer.train(resume_from_checkpoint=last_checkpoint(out) if resume else None)
    return trainer.model, curves(trainer.state.log_history)
