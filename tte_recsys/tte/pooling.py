"""Pooling of token states into one vector per input, and learnable meta-queries.

Every pooler maps ``hidden (B, L, D)`` and ``mask (B, L)`` to ``(B, D)`` and does not depend on
which side the padding is on.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["POOLERS", "ClsPooling", "LastTokenPooling", "MeanPooling", "MetaQueries", "make_pooling"]


class MeanPooling(nn.Module):
    """Mean of the non-padding token states."""

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        m = mask.unsqueeze(-1).to(hidden.dtype)  # (B, L, 1)
        return (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)  # (B, D)


class ClsPooling(nn.Module):
    """State of the first non-padding token (BERT's [CLS] under right padding)."""

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        first = mask.to(torch.int64).argmax(dim=1)  # (B,)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), first]  # (B, D)


class LastTokenPooling(nn.Module):
    """State of the last non-padding token (EOS for decoder embedders), left or right padding."""

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        length = mask.shape[1]
        last = length - 1 - mask.flip(dims=[1]).to(torch.int64).argmax(dim=1)  # (B,)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]  # (B, D)


POOLERS: dict[str, type[nn.Module]] = {"mean": MeanPooling, "cls": ClsPooling, "last": LastTokenPooling}


def make_pooling(name: str) -> nn.Module:
    """A pooler by name; the error lists the valid names."""
    if name not in POOLERS:
        raise ValueError(f"embedder.pooling={name!r}: expected one of {[*POOLERS, 'meta']}")
    return POOLERS[name]()


class MetaQueries(nn.Module):
    """Learnable query tokens appended to the input; their final states are the embedding.

    ``num_heads`` sets of ``num_queries`` tokens give one vector per head, so a frozen backbone
    can serve several heads with only these parameters trained.

    Args:
        dim: the backbone's hidden size.
        num_queries: tokens per head.
        num_heads: query sets (one content vector each).
        init_std: initial scale (the backbone's embedding scale is a good choice).

    Example::

        mq = MetaQueries(dim=384, num_queries=4, num_heads=2)
        embeds, mask = mq.append(token_embeds, attention_mask)   # (B, L + 8, D), (B, L + 8)
        vectors = mq.pool(last_hidden)                            # (B, 2, D)
    """

    def __init__(self, dim: int, num_queries: int = 4, num_heads: int = 1, init_std: float = 0.02) -> None:
        super().__init__()
        if num_queries < 1 or num_heads < 1:
            raise ValueError(
                f"meta-queries: num_queries={num_queries}, num_heads={num_heads}; both must be >= 1"
            )
        self.num_queries, self.num_heads = num_queries, num_heads
        self.queries = nn.Parameter(torch.randn(num_heads * num_queries, dim) * init_std)  # (H*Q, D)

    def append(self, embeds: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L, D), (B, L) -> (B, L + H*Q, D), (B, L + H*Q): queries after the input."""
        b = embeds.shape[0]
        q = self.queries.to(embeds.dtype).unsqueeze(0).expand(b, -1, -1)  # (B, H*Q, D)
        ones = torch.ones(b, q.shape[1], dtype=mask.dtype, device=mask.device)
        return torch.cat([embeds, q], dim=1), torch.cat([mask, ones], dim=1)

    def pool(self, hidden: torch.Tensor) -> torch.Tensor:
        """(B, L + H*Q, D) final states -> (B, H, D): mean over each head's queries."""
        hq = self.num_heads * self.num_queries
        q = hidden[:, -hq:]  # (B, H*Q, D)
        return q.reshape(hidden.shape[0], self.num_heads, self.num_queries, -1).mean(2)  # (B, H, D)
