"""The policy (the reasoner being trained): settings, loading, sampling, progress, export.

One sampler (:func:`sample`) serves every place that needs rollouts outside TRL's loop: the
best-of-N self-distillation of SFT, expert iteration's rounds, RESTRAIN's prompt weights from
the frozen starting policy, and the held-out reward the reports track. The export (:func:`export_reasoner`) is a plain model
folder (merged weights in safetensors, tokenizer, chat template, manifest) that
``reasoner=hf reasoner.model_path=<folder>`` loads.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from peft import LoraConfig, PeftModel
from torch import nn
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LogitsProcessorList,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    TrainerCallback,
    TrainerControl,
    TrainerState,
    TrainingArguments,
)

from tte_recsys.artifacts import atomic_dir, write_manifest
from tte_recsys.progress import progress
from tte_recsys.tte.lora import LoraSettings
from tte_recsys.tte.models import resolve_model_dir
from tte_recsys.tte.reasoner.penalty import PENALTY_SCOPES, GeneratedRepetitionPenalty

__all__ = [
    "CurveCallback",
    "PolicySettings",
    "TrainerSettings",
    "curves",
    "export_reasoner",
    "last_checkpoint",
    "load_policy",
    "lora_config",
    "sample",
    "sample_counted",
    "trainer_args",
]


@dataclass(frozen=True)
class PolicySettings:
    """How the policy writes traces (``train.*``): what every method uses, for its rollouts, its
    samples and the held-out reward (one decoding everywhere, that of ``score_reasoner`` too).

    Attributes:
        max_completion_length: tokens per trace.
        min_completion_length: tokens a trace must write before it may stop (0: none). The
            label-free objective is satisfied by an empty trace (perfectly consistent); this rules it out.
        temperature, top_p: of sampling.
        repetition_penalty: CTRL's penalty on tokens already written (1: none).
        penalty_scope: ``generated`` (the penalty covers the trace written so far, never the
            prompt, whose ``<|im_end|>`` it would penalise) or ``all`` (transformers' own, prompt included).
        seed: of sampling, data order and initialisation.
    """

    max_completion_length: int = 48
    min_completion_length: int = 0
    temperature: float = 0.8
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    penalty_scope: str = "generated"
    seed: int = 0

    def __post_init__(self) -> None:
        if (
            self.max_completion_length < 1
            or not 0 <= self.min_completion_length <= self.max_completion_length
        ):
            raise ValueError(
                f"train: max_completion_length={self.max_completion_length} must be >= 1 and "
                f"min_completion_length={self.min_completion_length} within 0..max_completion_length"
            )
        if not self.temperature > 0 or not 0 < self.top_p <= 1 or not self.repetition_penalty > 0:
            raise ValueError(
                f"train: temperature={self.temperature} > 0, 0 < top_p={self.top_p} <= 1 and "
                f"repetition_penalty={self.repetition_penalty} > 0 expected"
            )
        if self.penalty_scope not in PENALTY_SCOPES:
            raise ValueError(
                f"train.penalty_scope={self.penalty_scope!r}: expected one of {list(PENALTY_SCOPES)}"
            )


@dataclass(frozen=True)
class TrainerSettings:
    """What every method that trains the policy with a TRL trainer sets (part of its ``method.*``).

    Attributes:
        learning_rate: AdamW's (LoRA adapters, or every weight with ``lora=false``), constant.
        lora: train LoRA adapters (the ``lora`` group) instead of every weight.
        ckpt_every: optimizer steps between checkpoints (``resume=true`` continues from the last).
    """

    learning_rate: float = 1e-4
    lora: bool = True
    ckpt_every: int = 20

    def __post_init__(self) -> None:
        if not self.learning_rate > 0 or self.ckpt_every < 1:
            raise ValueError(
                f"method: learning_rate={self.learning_rate} must be > 0 and ckpt_every={self.ckpt_every} >= 1"
            )


def trainer_args(t: TrainerSettings, steps: int, seed: int, out: Path) -> dict[str, Any]:
    """The Trainer arguments GRPO and SFT share: ``steps`` optimizer steps, lr (constant),
    checkpoints every ``ckpt_every`` under ``out``, a log per step, fp32 on the CPU (bf16 on a GPU
    that has it), our progress bar."""
    import torch

    return {
        "output_dir": str(out),
        "max_steps": steps,
        "learning_rate": t.learning_rate,
        "lr_scheduler_type": "constant",
        "gradient_accumulation_steps": 1,
        "use_cpu": not torch.cuda.is_available(),
        "bf16": torch.cuda.is_available() and torch.cuda.is_bf16_supported(),
        "gradient_checkpointing": False,
        "save_strategy": "steps",
        "save_steps": t.ckpt_every,
        "logging_steps": 1,
        "report_to": [],
        "disable_tqdm": True,
        "seed": seed,
        "data_seed": seed,
        "dataloader_num_workers": 0,
    }


def last_checkpoint(out: Path) -> str | None:
    """The newest complete ``checkpoint-N`` folder under ``out`` (Trainer writes its state last)."""
    done = [p for p in out.glob("checkpoint-*") if (p / "trainer_state.json").is_file()]
    return str(max(done, key=lambda p: int(p.name.split("-")[1]))) if done else None


def load_policy(
    model_path: str, trust_remote_code: bool = False
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A local causal LM (fp32: training on the CPU) and its tokenizer (left padding, a pad token).

    Raises:
        FileNotFoundError: the folder is missing or holds no model (from ``resolve_model_dir``).
    """
    d = resolve_model_dir(model_path)
    if not (d / "config.json").is_file():
        raise FileNotFoundError(f"reasoner folder {d} has no config.json: not a model folder (incomplete?)")
    tok = AutoTokenizer.from_pretrained(d, local_files_only=True, trust_remote_code=trust_remote_code)
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if tok.chat_template is None:
        raise ValueError(f"reasoner folder {d}: the tokenizer has no chat template (the prompts are chats)")
    model = AutoModelForCausalLM.from_pretrained(
        d, local_files_only=True, dtype=torch.float32, trust_remote_code=trust_remote_code
    )
    return cast(PreTrainedModel, model), tok


def lora_config(s: LoraSettings) -> LoraConfig:
    """PEFT LoRA on every linear layer of the reasoner (TRL's ``peft_config``)."""
    return LoraConfig(
        r=s.r, lora_alpha=s.alpha, lora_dropout=s.dropout, target_modules="all-linear", task_type="CAUSAL_LM"
    )


def sample(
    model: nn.Module,
    tok: PreTrainedTokenizerBase,
    prompts: Sequence[list[dict[str, str]]],
    n: int,
    s: PolicySettings,
    seed: int = 0,
    batch_size: int = 16,
    show_progress: bool = False,
    greedy: bool = False,
) -> list[list[str]]:
    """``n`` sampled completions (decoded text) per chat prompt, with the decoding of ``s``;
    reproducible for a seed (each batch reseeds). ``greedy``: one greedy completion each (n = 1)."""
    return sample_counted(model, tok, prompts, n, s, seed, batch_size, show_progress, greedy)[0]


@torch.inference_mode()
def sample_counted(
    model: nn.Module,
    tok: PreTrainedTokenizerBase,
    prompts: Sequence[list[dict[str, str]]],
    n: int,
    s: PolicySettings,
    seed: int = 0,
    batch_size: int = 16,
    show_progress: bool = False,
    greedy: bool = False,
) -> tuple[list[list[str]], int]:
    """:func:`sample`, and the number of tokens it generated (each completion up to and with its
    end-of-sequence token, as TRL counts a rollout's length)."""
    if greedy:
        n = 1
    was_training = model.training
    model.eval()
    ids = [
        list(tok.apply_chat_template(p, add_generation_prompt=True, tokenize=True, return_dict=False))
        for p in prompts
    ]
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    out: list[list[str]] = [[] for _ in prompts]
    per = max(1, batch_size // n)
    device = next(model.parameters()).device
    scoped = s.penalty_scope == "generated" and s.repetition_penalty != 1.0
    tokens = 0
    for start in progress(range(0, len(order), per), desc="sample", disable=not show_progress):
        rows = order[start : start + per]
        enc = tok.pad({"input_ids": [ids[i] for i in rows]}, padding=True, return_tensors="pt")
        width = int(enc["input_ids"].shape[1])
        torch.manual_seed(seed + start)
        gen = cast(Any, model).generate(
            input_ids=enc["input_ids"].to(device),
            attention_mask=enc["attention_mask"].to(device),
            do_sample=not greedy,
            temperature=None if greedy else s.temperature,
            top_p=None if greedy else s.top_p,
            top_k=None,
            repetition_penalty=None if scoped else s.repetition_penalty,
            logits_processor=LogitsProcessorList(
                [GeneratedRepetitionPenalty(s.repetition_penalty, width)] if scoped else []
            ),
            max_new_tokens=s.max_completion_length,
            min_new_tokens=s.min_completion_length or None,
            num_return_sequences=n,
            pad_token_id=tok.pad_token_id,
        )
        new = gen[:, width:]  # (b * n, T) left padding: every prompt ends at column `width`
        tokens += _generated_tokens(new, tok.eos_token_id)
        texts = tok.batch_decode(new, skip_special_tokens=True)
        for j, i in enumerate(rows):
            out[i] = texts[j * n : (j + 1) * n]
    model.train(was_training)
    return out, tokens


def _generated_tokens(new: torch.Tensor, eos: int | None) -> int:
    """Tokens of (B, T) completions up to and with the first end-of-sequence token of each."""
    if eos is None:
        return int(new.numel())
    is_eos = new == eos  # (B, T)
    length = torch.where(is_eos.any(1), is_eos.int().argmax(1) + 1, new.shape[1])  # (B,)
    return int(length.sum())


def curves(log_history: Sequence[dict[str, Any]]) -> list[dict[str, float]]:
    """The logged curves (one dict per logged step: reward, KL, loss, ...) from a Trainer's
    ``state.log_history``, which a resumed run restores from its checkpoint: the whole run."""
    out = []
    for logs in log_history:
        if "train_runtime" in logs or "step" not in logs:
            continue
        row = {"step": float(logs["step"])}
        row.update(
            {k: float(logs[k]) for k in CurveCallback.KEYS if k in logs and math.isfinite(float(logs[k]))}
        )
        if len(row) > 1:
            out.append(row)
    return out


class CurveCallback(TrainerCallback):
    """A progress bar with the latest reward, KL and loss (the curves: :func:`curves`)."""

    KEYS = (
        "reward",
        "kl",
        "loss",
        "rewards/outcome/mean",
        "rewards/format/mean",
        "entropy",
        "completions/mean_length",
    )

    def __init__(self, desc: str) -> None:
        self.desc = desc
        self.bar: Any = None

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **_: Any
    ) -> None:
        self.bar = progress(total=state.max_steps, initial=state.global_step, desc=self.desc)

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, float] | None = None,
        **_: Any,
    ) -> None:
        if logs and self.bar is not None and "train_runtime" not in logs:
            self.bar.set_postfix({k: f"{float(logs[k]):.4f}" for k in ("reward", "kl", "loss") if k in logs})

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **_: Any
    ) -> None:
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **_: Any
    ) -> None:
        if self.bar is not None:
            self.bar.close()


def export_reasoner(
    model: nn.Module, tok: PreTrainedTokenizerBase, out_dir: Path, extra: dict[str, Any]
) -> Path:
    """Write the trained reasoner to ``out_dir`` (merged weights in safetensors, tokenizer with its
    chat template, manifest last), built in a temporary folder and renamed into place.
    Returns ``out_dir``."""
    merged = model.merge_and_unload() if isinstance(model, PeftModel) else model
    with atomic_dir(out_dir) as tmp:
        cast(PreTrainedModel, merged).save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        write_manifest(tmp, "train_reasoner", extra)
    return out_dir
