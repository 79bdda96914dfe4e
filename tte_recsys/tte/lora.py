"""LoRA adapters (PEFT) on the embedder's backbone: train few parameters, save and load them alone."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import cast

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file, save_file
from transformers import PreTrainedModel

from tte_recsys.artifacts import atomic_path, read_manifest, write_manifest
from tte_recsys.tte.embedder import Embedder

__all__ = ["LoraSettings", "add_lora", "load_lora", "save_lora"]


@dataclass(frozen=True)
class LoraSettings:
    """The ``lora`` config group: LoRA adapters on an embedder that trains (``add_lora``'s arguments)."""

    r: int = 8
    alpha: int = 16
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.r < 1:
            raise ValueError(f"lora.r={self.r}: expected >= 1")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"lora.dropout={self.dropout}: expected 0 <= p < 1")


_POOLING = "pooling.safetensors"


def add_lora(
    embedder: Embedder,
    r: int = 8,
    alpha: int = 16,
    dropout: float = 0.0,
    target_modules: str | list[str] = "all-linear",
    seed: int = 0,
) -> Embedder:
    """Wrap the backbone with LoRA adapters; only the adapters (and any pooling parameters) train.

    The adapters' random initialisation (PEFT draws A from the global generator; B starts at
    zero) comes from ``seed``, in a forked generator: the same config gives the same adapters
    whatever ran before, and the caller's random state is left as it was."""
    cfg = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        # A PeftModel forwards the wrapped model's interface (config, forward, embeddings).
        embedder.backbone = cast(PreTrainedModel, get_peft_model(embedder.backbone, cfg))
    return embedder


def save_lora(embedder: Embedder, out_dir: str | Path) -> None:
    """Adapter weights (safetensors, PEFT layout) + trainable pooling weights + a manifest."""
    out = Path(out_dir)
    if not isinstance(embedder.backbone, PeftModel):
        raise ValueError("save_lora: the embedder has no LoRA adapters (call add_lora first)")
    embedder.backbone.save_pretrained(out / "adapter", safe_serialization=True)
    pooling = {k: v.detach().contiguous() for k, v in embedder.pooling.state_dict().items()}
    if pooling:
        with atomic_path(out / _POOLING) as tmp:
            save_file(pooling, str(tmp))
    write_manifest(out, "lora")


def load_lora(embedder: Embedder, adapter_dir: str | Path, trainable: bool = False) -> Embedder:
    """Load adapters saved by :func:`save_lora` onto an embedder built from the same base model."""
    d = Path(adapter_dir)
    read_manifest(d, kind="lora")
    peft = PeftModel.from_pretrained(embedder.backbone, d / "adapter", is_trainable=trainable)
    embedder.backbone = cast(PreTrainedModel, peft)
    if (d / _POOLING).is_file():
        embedder.pooling.load_state_dict(load_file(str(d / _POOLING)))
    return embedder
