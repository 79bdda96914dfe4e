"""The content towers of the MTMH model and the one factory that builds them.

``none`` (no tower: the id-only model), ``frozen`` (vectors of the batch embedding job, looked
up by item code, never trained) or ``trainable`` (the TTE embedder, typically with LoRA, inside
the model; any pooling the embedder offers, meta-queries included). :class:`ContentSpec` says
which, serialisably: training builds its tower from it with :func:`build_content_tower`, and the
export writes it into ``model.json`` so that the loader rebuilds the same tower the same way.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tte_recsys.tte.embedder import Embedder

__all__ = [
    "CONTENT_MODES",
    "ContentSpec",
    "ContentTower",
    "FrozenContent",
    "TrainableContent",
    "build_content_tower",
]

CONTENT_MODES = ("none", "frozen", "trainable")
# The embedder-config keys that define a trainable tower's embedder (what build_embedder takes
# and the export must reproduce); runtime, device and batch size are where it runs, not what it is.
EMBEDDER_KEYS = ("model_path", "pooling", "max_length", "instruction", "dtype", "meta_queries", "meta_heads")


@dataclass(frozen=True)
class ContentSpec:
    """How a content tower is built: serialisable (plain values only), stored with the export.

    Attributes:
        mode: ``none``, ``frozen`` or ``trainable``.
        embedder: (trainable) the embedder's defining settings (:data:`EMBEDDER_KEYS`).
        lora: (trainable) ``add_lora`` arguments (r, alpha, dropout), or None for no adapters.
        chunk: (trainable) items per forward batch, of similar token length.
        checkpointing: (trainable) recompute the embedder's activations in the backward.
    """

    mode: str = "frozen"
    embedder: Mapping[str, Any] = field(default_factory=dict)
    lora: Mapping[str, Any] | None = None
    chunk: int = 64
    checkpointing: bool = False

    def __post_init__(self) -> None:
        if self.mode not in CONTENT_MODES:
            raise ValueError(f"model.content={self.mode!r}: expected one of {list(CONTENT_MODES)}")
        if self.mode == "trainable" and "model_path" not in self.embedder:
            raise ValueError("a trainable content tower needs embedder.model_path")

    @classmethod
    def from_embedder_config(
        cls,
        mode: str,
        embedder: Mapping[str, Any],
        lora: Mapping[str, Any] | None = None,
        checkpointing: bool = False,
    ) -> ContentSpec:
        """The spec of ``model.content=mode`` from an ``embedder`` config section."""
        if mode != "trainable":
            return cls(mode)
        keys = {k: embedder[k] for k in EMBEDDER_KEYS if k in embedder}
        return cls(
            mode,
            keys,
            dict(lora) if lora is not None else None,
            int(embedder.get("batch_size", 64)),
            checkpointing,
        )

    def as_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "embedder": dict(self.embedder)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ContentSpec:
        return cls(**d)


def build_content_tower(
    spec: ContentSpec,
    *,
    table: torch.Tensor | np.ndarray | None = None,
    texts: Sequence[str] | None = None,
    seed: int = 0,
    device: str = "auto",
) -> ContentTower | None:
    """The tower ``spec`` describes: None (``none``); a :class:`FrozenContent` over ``table``
    (N, D); or a :class:`TrainableContent` over the item ``texts`` (embedding inputs, one per item
    code) whose embedder (PyTorch runtime: it trains) is built on ``device`` with LoRA adapters
    drawn from ``seed``."""
    if spec.mode == "none":
        return None
    if spec.mode == "frozen":
        if table is None:
            raise ValueError("content=frozen needs its vectors table (an embed_items folder)")
        return FrozenContent(torch.as_tensor(table))
    if texts is None:
        raise ValueError("content=trainable needs each item's embedding text")
    from tte_recsys.tte.factory import build_embedder
    from tte_recsys.tte.lora import add_lora

    emb = build_embedder(**{**spec.embedder, "runtime": "torch", "device": device})
    if spec.lora is not None:
        emb = add_lora(emb, **spec.lora, seed=seed)
    return TrainableContent(emb, texts, chunk=spec.chunk, checkpointing=spec.checkpointing)


class ContentTower(nn.Module):
    """Item codes (B,) -> content vectors (B, dim)."""

    dim: int

    def reset(self) -> None:
        """Back to the weights it was built with (a tower that trains; others have nothing to do)."""


class FrozenContent(ContentTower):
    """Precomputed vectors (N, D) looked up by item code; a plain tensor attribute (not a parameter
    or buffer), so optimisers, DDP and the sharded state dict never see it."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.table = table.float()
        self.dim = int(table.shape[1])
        self._copies = {self.table.device: self.table}

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        # one copy per device, made on its first batch: a GPU run's validation encodes on the CPU
        # with the same tower, and neither side moves the table back and forth
        table = self._copies.get(codes.device)
        if table is None:
            table = self._copies[codes.device] = self.table.to(codes.device)
        return table[codes]


class TrainableContent(ContentTower):
    """The TTE embedder (typically with LoRA) inside the model: tokenises the batch's item texts.

    Each distinct item of a batch is encoded once (a batch holds its triggers and targets, and
    popular items recur: 2,048 codes hold about 1,460 items on MovieLens train pairs and 1,070 on
    Amazon Office), in chunks of ``chunk`` items of similar token length, so padding stays small.
    Both matter for memory as well as time: the backward keeps every layer's activations of every
    padded token. Gradients of repeated rows add up in the lookup's backward, as they would per
    copy, in the same order on every run.
    ``checkpointing``: recompute the embedder's layer activations in the backward instead of
    keeping them (MiniLM + LoRA, Amazon Office, 128 pairs: 0.49x the memory, 1.72x the time of a
    forward + backward; ``bench/content_step.py``).
    """

    def __init__(
        self, embedder: Embedder, texts: Sequence[str], chunk: int = 64, checkpointing: bool = False
    ) -> None:
        super().__init__()
        if chunk < 1:
            raise ValueError(f"chunk={chunk}: expected >= 1")
        if checkpointing:
            backbone = embedder.backbone
            if not getattr(backbone, "supports_gradient_checkpointing", False):
                raise ValueError(
                    f"content_checkpointing=true: {type(backbone).__name__} does not support activation checkpointing"
                )
            # non-reentrant: gradients reach the LoRA weights although the inputs need none
            backbone.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        self.embedder = embedder
        self.texts = list(texts)
        self.dim = embedder.dim
        self.chunk = chunk
        # What reset() restores: the trainable weights as built (LoRA adapters: small). A run
        # trains several models (the lambda grid, the one-head reference) on this one tower.
        self._initial = {n: p.detach().clone() for n, p in self.named_parameters() if p.requires_grad}
        # Token ids per item code, filled as items first appear: item texts never change, and
        # tokenising a batch's ~1,000 distinct items costs the host ~36 ms a step (Amazon, MiniLM).
        self._tokens: dict[int, np.ndarray] = {}

    def reset(self) -> None:
        with torch.no_grad():
            for n, p in self.named_parameters():
                if n in self._initial:
                    p.copy_(self._initial[n])

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        unique, inverse = torch.unique(codes, return_inverse=True)
        items = unique.tolist()
        if missing := [c for c in items if c not in self._tokens]:
            tokenised = self.embedder.token_ids([self.texts[c] for c in missing])
            self._tokens.update(
                (c, np.asarray(t, dtype=np.int32)) for c, t in zip(missing, tokenised, strict=True)
            )
        ids = [self._tokens[c] for c in items]
        out = self.embedder.embed_token_ids(ids, self.chunk)  # (U, D): unique item -> its vector
        rows = inverse.to(codes.device)  # code -> its unique item (inverse is on codes' device)
        # (B, D). Not out[rows]: on the CPU its backward adds the gradients of repeated items with
        # atomic adds from several threads, in a different order each time (two runs of one config
        # drifted apart in rounding). Embedding's backward sums them in a fixed order, and PyTorch
        # does not list it among the nondeterministic CUDA ops either.
        return F.embedding(rows, out.float().to(codes.device))
