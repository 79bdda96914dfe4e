"""TTE_u: one backbone both reasons (generates) and embeds, through a head on its frozen states.

The head is either ``LayerHead`` (a copy of the backbone's last ``k`` decoder layers and final
norm, run on the backbone's hidden states before those layers, then last-token pooled) or
:class:`~tte_recsys.tte.pooling.MetaQueries`. Only the head trains; generation is untouched.
At initialisation a ``LayerHead`` reproduces the backbone's own last-token states exactly.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel, PreTrainedModel, PreTrainedTokenizerBase

from tte_recsys.losses.infonce import info_nce
from tte_recsys.tte.pooling import LastTokenPooling

__all__ = ["LayerHead", "UnifiedTTE", "train_head"]


class LayerHead(nn.Module):
    """The last ``k`` decoder layers (+ final norm) of ``base``, copied, as a trainable model.

    Built as a ``k``-layer model of the same family, so rotary positions and masks work as in
    the backbone. Input: the backbone's hidden states after its first ``L - k`` layers.
    """

    def __init__(self, base: PreTrainedModel, k: int = 1) -> None:
        super().__init__()
        n = int(base.config.num_hidden_layers)
        if not 1 <= k <= n:
            raise ValueError(f"LayerHead: k={k}, expected 1..{n} (the backbone's layers)")
        cfg = copy.deepcopy(base.config)
        cfg.num_hidden_layers = k
        if getattr(cfg, "layer_types", None):
            cfg.layer_types = cfg.layer_types[n - k :]
        self.k = k
        self.model = AutoModel.from_config(cfg)
        src = base.state_dict()
        mine = {}
        for key in self.model.state_dict():
            if key.startswith("layers."):
                i, rest = key.split(".", 2)[1:]
                mine[key] = src[f"layers.{n - k + int(i)}.{rest}"]
            else:
                mine[key] = src[key]
        self.model.load_state_dict(mine)

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """(B, L, D) states before the copied layers -> (B, L, D) final states."""
        return self.model(inputs_embeds=hidden, attention_mask=mask, position_ids=positions).last_hidden_state


class UnifiedTTE(nn.Module):
    """A causal LM (reasoner) whose frozen states feed an embedding head.

    Args:
        lm: a causal LM (``generate`` is its own); its base model is frozen here.
        tokenizer: its tokenizer.
        head: a :class:`LayerHead` built from ``lm.base_model``.
    """

    def __init__(self, lm: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, head: LayerHead) -> None:
        super().__init__()
        self.lm, self.tokenizer, self.head = lm, tokenizer, head
        self.lm.requires_grad_(False)
        self.pool = LastTokenPooling()

    def generate(self, **kw: object) -> torch.Tensor:
        return self.lm.generate(**kw)  # type: ignore[operator]

    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, L) -> (B, D) unit vectors; gradients reach only the head."""
        pos = (attention_mask.cumsum(1) - 1).clamp(min=0)  # (B, L)
        with torch.no_grad():
            out = self.lm.base_model(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=pos,
                output_hidden_states=True,
            )
        n = len(out.hidden_states) - 1
        h = out.hidden_states[n - self.head.k]  # (B, L, D) input of the first copied layer
        return F.normalize(self.pool(self.head(h, attention_mask, pos), attention_mask), dim=-1)

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        enc = self.tokenizer(list(texts), padding=True, truncation=True, max_length=256, return_tensors="pt")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


def train_head(
    model: UnifiedTTE,
    pairs: Sequence[tuple[str, str]],
    steps: int = 20,
    lr: float = 1e-3,
    batch_size: int = 16,
    temperature: float = 0.05,
    seed: int = 0,
) -> list[float]:
    """Train the head with InfoNCE on (query, positive) text pairs; returns the loss per step."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.head.parameters(), lr=lr)
    losses = []
    model.train()
    for _ in range(steps):
        idx = torch.randperm(len(pairs), generator=g)[:batch_size].tolist()
        q = model.embed(**model.tokenize([pairs[i][0] for i in idx]))  # (B, D)
        p = model.embed(**model.tokenize([pairs[i][1] for i in idx]))  # (B, D)
        loss = info_nce(q, p, temperature)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    model.eval()
    return losses
