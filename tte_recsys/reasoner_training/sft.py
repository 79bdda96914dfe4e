"""TTE_s: supervised fine-tuning of the reasoner on traces (``method=sft``; loss on the trace tokens only).

Traces come from a teacher (any reasoner backend: ``file`` for traces written elsewhere,
``openai`` for a large model served elsewhere, ``hf``), or from the policy itself: the best of N
sampled traces per training item by the catalog reward (rejection sampling; no teacher needed).
Training is TRL's ``SFTTrainer`` on prompt-completion rows, which puts the loss on the completion;
expert iteration (:mod:`~tte_recsys.reasoner_training.expert_iteration`) trains with it too.
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

from tte_recsys.reasoner_training.methods import PolicyMethod, RunContext, Trained
from tte_recsys.reasoner_training.policy import (
    CurveCallback,
    PolicySettings,
    TrainerSettings,
    curves,
    last_checkpoint,
    lora_config,
    sample_counted,
    trainer_args,
)
from tte_recsys.reasoner_training.rewards import CatalogReward
from tte_recsys.reasoner_training.tasks import ItemPositives, Side, item_positives
from tte_recsys.tte.items import ItemInput
from tte_recsys.tte.lora import LoraSettings
from tte_recsys.tte.reasoner.cache import TraceCache
from tte_recsys.tte.reasoner.generate import generate_traces
from tte_recsys.tte.reasoner.prompts import PromptTemplate

__all__ = ["Sft", "SftExample", "SftSettings", "best_of_n_traces", "sft_rows", "teacher_traces", "train_sft"]

SftExample = tuple[Side, str]  # an item and the trace (raw model text) to learn for it


@dataclass(frozen=True)
class SftSettings(TrainerSettings):
    """``method=sft``: where the traces come from, how many, and SFT's steps.

    Attributes:
        steps: optimizer steps.
        batch_size: traces per step.
        source: ``best_of_n`` (self-distillation by the catalog reward) or ``teacher`` (``teacher``,
            a reasoner config: file / openai / hf).
        n: traces sampled per item for best-of-N.
        max_pairs: training pairs whose items get a best-of-N trace.
        teacher: the teacher reasoner's config for ``source=teacher`` (e.g. ``{_target_:
            tte_recsys.tte.reasoner.backends.FileReasoner, path: traces.parquet}``).
    """

    steps: int = 60
    batch_size: int = 8
    source: str = "best_of_n"
    n: int = 4
    max_pairs: int = 128
    teacher: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.source not in ("best_of_n", "teacher"):
            raise ValueError(f"method.source={self.source!r}: expected 'best_of_n' or 'teacher'")
        if self.n < 2 and self.source == "best_of_n":
            raise ValueError(f"method.n={self.n}: best-of-N needs >= 2 samples per item")
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError(f"method: steps={self.steps} and batch_size={self.batch_size} must be >= 1")


def best_of_n_traces(
    model: PreTrainedModel,
    tok: PreTrainedTokenizerBase,
    items: Sequence[ItemPositives],
    template: PromptTemplate,
    reward: CatalogReward,
    p: PolicySettings,
    n: int,
) -> tuple[list[SftExample], dict[str, float], int]:
    """For each item, the best of ``n`` sampled traces by the catalog reward; the mean reward of
    all samples against that of the picked ones; the tokens sampled."""
    if not items:
        raise ValueError("sft: best-of-N found no training item with a positive in the catalog")
    prompts = [template.messages(x.side.text) for x in items]
    traces, tokens = sample_counted(model, tok, prompts, n, p, seed=p.seed, show_progress=True)
    r = reward.score_samples([x.side for x in items], traces, [x.positives for x in items])  # (I, n)
    out: list[SftExample] = [(x.side, traces[i][int(r[i].argmax())]) for i, x in enumerate(items)]
    picked = {"mean_reward_all": float(r.mean()), "mean_reward_picked": float(r.max(1).mean())}
    return out, picked, tokens


def teacher_traces(
    teacher: Mapping[str, Any] | None,
    sides: Sequence[Side],
    items: Mapping[str, ItemInput],
    template: PromptTemplate,
    cache_dir: str,
) -> list[SftExample]:
    """The teacher reasoner's trace for every side (through the trace cache), each generated from
    its catalog item (``items``, by id) exactly as the catalog's traces are: same prompt content,
    same cache key.

    Raises:
        ValueError: no teacher, a side that is no catalog item (a pair table's raw text), or no trace.
    """
    if not teacher:
        raise ValueError(
            "method.source=teacher: set method.teacher to a reasoner config (e.g. _target_ of the file backend)"
        )
    reasoner = instantiate(teacher)
    unique = {x.id: x for x in sides}
    missing = [i for i in unique if i not in items]
    if missing:
        raise ValueError(
            f"method.source=teacher: item {missing[0]!r} is no catalog item (a pair table's sides are raw "
            "text): a teacher writes traces for the catalog's items"
        )
    rows, summary = generate_traces(
        [items[i] for i in unique], reasoner, template, TraceCache(cache_dir, writer="sft")
    )
    if rows.height == 0:
        raise ValueError(f"sft: the teacher {reasoner.reasoner_id} wrote no trace ({summary.as_dict()})")
    return [(unique[i], raw) for i, raw in rows.select("item_id", "raw").iter_rows()]


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
    t: TrainerSettings,
    steps: int,
    batch_size: int,
    seed: int,
    lora: LoraSettings | None,
    out: Path,
    resume: bool,
) -> tuple[Any, list[dict[str, float]]]:
    """``steps`` optimizer steps of next-token loss on the traces (``lora`` None: every weight);
    returns (model, curves). Checkpoints go to ``out``; ``resume`` continues from the newest."""
    args = SFTConfig(
        **trainer_args(t, steps, seed, out), per_device_train_batch_size=batch_size, max_length=512
    )
    callback = CurveCallback(f"sft ({len(examples)} traces)")
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(sft_rows(examples, template)),
        processing_class=tok,
        peft_config=lora_config(lora) if lora is not None else None,
        callbacks=[callback],
    )
    trainer.remove_callback(PrinterCallback)
    trainer.train(resume_from_checkpoint=last_checkpoint(out) if resume else None)
    return trainer.model, curves(trainer.state.log_history)


class Sft(PolicyMethod):
    """TTE_s: SFT on a teacher's traces or on the policy's own best-of-N."""

    name = "sft"
    settings_type = SftSettings
    settings: SftSettings

    def train(
        self, ctx: RunContext, policy: PreTrainedModel, tok: PreTrainedTokenizerBase, start: np.ndarray
    ) -> Trained:
        s = self.settings
        report: dict[str, Any] = {}
        tokens = 0
        if s.source == "best_of_n":
            items = item_positives(ctx.data.pairs[: s.max_pairs], ctx.reward.code)
            examples, report["best_of_n"], tokens = best_of_n_traces(
                policy, tok, items, ctx.template, ctx.reward, ctx.policy, s.n
            )
        else:
            sides = [x for p in ctx.data.pairs for x in (p.query, p.target) if x is not None]
            examples = teacher_traces(s.teacher, sides, ctx.data.items, ctx.template, ctx.cache_dir)
        lora = ctx.lora if s.lora else None
        model, history = train_sft(
            policy,
            tok,
            examples,
            ctx.template,
            s,
            s.steps,
            s.batch_size,
            ctx.policy.seed,
            lora,
            ctx.checkpoints,
            ctx.resume,
        )
        return Trained(model, history, tokens, report)
