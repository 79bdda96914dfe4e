from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, AutoTokenizer

from tte_recsys.losses.infonce import info_nce
from tte_recsys.tte.pooling import LastTokenPooling
from tte_recsys.tte.unified import LayerHead, UnifiedTTE, train_head


def test_info_nce_by_hand() -> None:
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    p = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    # row 0 logits (1, 0.6)/t, target 0; row 1 logits (0, 0.8)/t, target 1
    t = 0.5
    expect = (
        -math.log(math.exp(2) / (math.exp(2) + math.exp(1.2))) - math.log(math.exp(1.6) / (1 + math.exp(1.6)))
    ) / 2
    assert float(info_nce(q, p, t)) == pytest.approx(expect, rel=1e-6)
    with pytest.raises(ValueError, match="temperature=0"):
        info_nce(q, p, 0)


def _unified(d: Path, k: int = 1) -> UnifiedTTE:
    lm = AutoModelForCausalLM.from_pretrained(d).eval()
    tok = AutoTokenizer.from_pretrained(d)
    tok.padding_side = "left"
    return UnifiedTTE(lm, tok, LayerHead(lm.base_model, k=k))


def test_layer_head_reproduces_backbone_at_init(tiny_qwen_dir: Path) -> None:
    m = _unified(tiny_qwen_dir)
    batch = m.tokenize(["a comedy film about friends", "pens"])
    pos = (batch["attention_mask"].cumsum(1) - 1).clamp(min=0)
    with torch.no_grad():
        full = m.lm.base_model(**batch, position_ids=pos).last_hidden_state
        ref = F.normalize(LastTokenPooling()(full, batch["attention_mask"]), dim=-1)
        got = m.embed(**batch)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


def test_training_the_head_lowers_infonce_and_leaves_the_reasoner_alone(tiny_qwen_dir: Path) -> None:
    m = _unified(tiny_qwen_dir)
    lm_before = {k: v.clone() for k, v in m.lm.state_dict().items()}
    prompt = m.tokenize(["think about office paper"])
    gen_before = m.generate(**prompt, max_new_tokens=5, do_sample=False)
    words = ["calculator", "comedy", "binders", "romance", "paper", "trip", "pens", "school"]
    pairs = [(f"{w} {i}", f"something about {w}") for i, w in enumerate(words * 4)]
    losses = train_head(m, pairs, steps=30, lr=3e-3, batch_size=8)
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 * 0.8
    for k, v in m.lm.state_dict().items():
        torch.testing.assert_close(v, lm_before[k])
    torch.testing.assert_close(m.generate(**prompt, max_new_tokens=5, do_sample=False), gen_before)
    with pytest.raises(ValueError, match=r"k=5, expected 1..2"):
        LayerHead(m.lm.base_model, k=5)
