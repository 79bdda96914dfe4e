"""``tte_sdpa``: transformers' SDPA attention, with a plain-math path for short inputs on CPU.

PyTorch's CPU ``scaled_dot_product_attention`` kernel is a blocked (flash-style) loop whose set-up
dominates at the ~20-token inputs of item cards: one MiniLM layer at batch 64 x 17 tokens takes
2.1 ms there against 0.63 ms for ``softmax(q k^T) v`` in two batched matmuls, about 12% of the whole
forward. From about 64 tokens on the kernel wins (9 ms vs 19 ms at 64, 30 ms vs 166 ms at 512).
So below :data:`SHORT_KEYS` keys, on CPU, in inference, the plain math runs; everything else
(training, GPU, long inputs, causal attention left to the kernel's ``is_causal``, paged caches, position bias)
goes to transformers' own ``sdpa_attention_forward``. Registered as an attention implementation
with sdpa's masks, so any model that supports ``sdpa`` can load with
``attn_implementation="tte_sdpa"`` (``load_backbone`` does so).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

__all__ = ["NAME", "SHORT_KEYS", "tte_sdpa_attention_forward"]

NAME = "tte_sdpa"
SHORT_KEYS = 32  # measured crossover is between 17 and 64 keys (module docstring)


def tte_sdpa_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Same contract as transformers' ``sdpa_attention_forward``: q (B, H, Lq, d), k/v (B, Hkv, Lk, d),
    mask bool (True = attend) or additive float, broadcastable to (B, H, Lq, Lk) -> (B, Lq, H, d)."""
    causal = is_causal if is_causal is not None else bool(getattr(module, "is_causal", True))
    short = (
        query.device.type == "cpu"
        and key.shape[-2] <= SHORT_KEYS
        and (attention_mask is not None or not causal or query.shape[-2] == 1)
        and not module.training
        and not any(kwargs.get(k) is not None for k in ("position_bias", "cache", "softcap"))
    )
    if not short:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout, scaling, is_causal, **kwargs
        )
    groups = int(getattr(module, "num_key_value_groups", 1))
    key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    scores = (query @ key.transpose(-1, -2)) * (scaling if scaling is not None else query.shape[-1] ** -0.5)
    if attention_mask is None:  # no padding, and not causal (or one query): nothing to mask
        pass
    elif attention_mask.dtype == torch.bool:  # a finite fill: a fully masked (padding) row stays finite
        scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
    else:
        scores = scores + attention_mask
    out = scores.softmax(dim=-1) @ value  # (B, H, Lq, d)
    return out.transpose(1, 2).contiguous(), None


AttentionInterface.register(NAME, tte_sdpa_attention_forward)
ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)
