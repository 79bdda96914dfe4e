"""tte_sdpa: the short-input math path equals transformers' sdpa, and everything else is delegated."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from tte_recsys.tte import attention
from tte_recsys.tte.factory import build_embedder


class _Module(nn.Module):
    def __init__(self, groups: int = 1, causal: bool = False) -> None:
        super().__init__()
        self.num_key_value_groups, self.is_causal = groups, causal


def _qkv(b: int, h: int, hkv: int, length: int) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    q = torch.randn(b, h, length, 8, generator=g)
    k = torch.randn(b, hkv, length, 8, generator=g)
    v = torch.randn(b, hkv, length, 8, generator=g)
    return q, k, v


def _padding_mask(lengths: list[int], length: int) -> torch.Tensor:
    keys = torch.arange(length)[None, :] < torch.tensor(lengths)[:, None]  # (B, L)
    return keys[:, None, None, :].expand(-1, 1, length, -1)  # (B, 1, Lq, Lk), True = attend


@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("kind", ["bool", "float", "none"])
def test_short_path_equals_sdpa(groups: int, kind: str) -> None:
    q, k, v = _qkv(3, 4, 4 // groups, 10)
    mask: torch.Tensor | None = _padding_mask([10, 6, 3], 10)
    if kind == "float":
        mask = torch.zeros(mask.shape).masked_fill(~mask, torch.finfo(torch.float32).min)
    elif kind == "none":
        mask = None
    module = _Module(groups).eval()
    ours, _ = attention.tte_sdpa_attention_forward(module, q, k, v, mask, scaling=0.3)
    ref, _ = sdpa_attention_forward(module, q, k, v, mask, scaling=0.3)
    assert ours.shape == ref.shape == (3, 10, 4, 8)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)


def test_fully_masked_rows_stay_finite() -> None:
    q, k, v = _qkv(1, 2, 2, 4)
    mask = torch.tril(torch.ones(4, 4, dtype=torch.bool))[None, None].clone()
    mask[..., 0, :] = False  # a left-padding query that may attend to nothing
    out, _ = attention.tte_sdpa_attention_forward(_Module(causal=True).eval(), q, k, v, mask)
    assert torch.isfinite(out).all()


def test_dispatch(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []

    def spy(*args: Any, **kwargs: Any) -> tuple[torch.Tensor, None]:
        calls.append(1)
        return sdpa_attention_forward(*args, **kwargs)

    monkeypatch.setattr(attention, "sdpa_attention_forward", spy)
    short, long = _qkv(2, 2, 2, attention.SHORT_KEYS), _qkv(2, 2, 2, attention.SHORT_KEYS + 1)
    mask = _padding_mask([attention.SHORT_KEYS, 5], attention.SHORT_KEYS)
    cases = [  # (module, qkv, mask, delegated?)
        (_Module().eval(), short, mask, False),
        (_Module().eval(), short, None, False),  # bidirectional without padding
        (_Module(causal=True).eval(), short, None, True),  # left to the kernel's is_causal
        (_Module().train(), short, mask, True),  # training: the kernel's memory-light backward
        (_Module().eval(), long, None, True),  # long inputs: the kernel is faster
    ]
    for module, (q, k, v), m, delegated in cases:
        calls.clear()
        attention.tte_sdpa_attention_forward(module, q, k, v, m)
        assert bool(calls) is delegated


def test_models_load_with_tte_sdpa_and_agree_with_sdpa(tiny_qwen_dir: Path) -> None:
    """A causal decoder with left padding and a bidirectional encoder with right padding, mixed
    lengths in one batch: the same vectors as transformers' sdpa."""
    texts = ["a", "a b c d e f g h", "the quick brown fox jumps over", "x " * 40]  # the last > SHORT_KEYS
    for path, pooling in ((str(tiny_qwen_dir), "last"), ("minilm", "mean")):
        emb = build_embedder(path, pooling=pooling)
        assert emb.backbone.config._attn_implementation == attention.NAME
        ours = emb.encode(texts, batch_size=4)
        emb.backbone.set_attn_implementation("sdpa")
        ref = emb.encode(texts, batch_size=4)
        np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-5)
