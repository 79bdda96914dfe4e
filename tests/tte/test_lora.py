from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from tte_recsys.tte.factory import build_embedder
from tte_recsys.tte.lora import add_lora, load_lora, save_lora

TEXTS = ["a comedy film", "office paper and pens", "calculator"]


def test_lora_trains_only_adapters_and_round_trips(tiny_qwen_dir: Path, tmp_path: Path) -> None:
    base = build_embedder(str(tiny_qwen_dir), pooling="meta", meta_queries=2)
    before = base.encode(TEXTS)
    emb = add_lora(base, r=4)
    trainable = {n for n, p in emb.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or n.startswith("pooling.") for n in trainable)
    opt = torch.optim.SGD([p for p in emb.parameters() if p.requires_grad], lr=0.5)
    batch = emb.pad_batch(emb.token_ids(TEXTS))
    for _ in range(3):
        opt.zero_grad()
        v = emb(**batch).reshape(3, -1)
        (v @ v.T).sum().backward()  # any loss that moves the trainable weights
        opt.step()
    trained = emb.encode(TEXTS)
    assert not np.allclose(trained, before, atol=1e-4)
    save_lora(emb, tmp_path / "lora")
    assert (tmp_path / "lora" / "adapter" / "adapter_model.safetensors").is_file()
    fresh = load_lora(build_embedder(str(tiny_qwen_dir), pooling="meta", meta_queries=2), tmp_path / "lora")
    np.testing.assert_allclose(fresh.encode(TEXTS), trained, atol=1e-5)


def test_lora_initialisation_is_seeded_and_leaves_the_global_generator(tiny_qwen_dir: Path) -> None:
    def adapters(seed: int) -> dict[str, torch.Tensor]:
        emb = add_lora(build_embedder(str(tiny_qwen_dir), pooling="mean"), r=4, seed=seed)
        return {n: p.detach().clone() for n, p in emb.named_parameters() if "lora_A" in n}

    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    a = adapters(0)
    torch.testing.assert_close(torch.rand(3), expected_next)  # the caller's stream is untouched
    torch.rand(5)  # whatever ran before does not matter
    b, c = adapters(0), adapters(1)
    assert a and a.keys() == b.keys()
    for n in a:
        torch.testing.assert_close(a[n], b[n], rtol=0, atol=0)
    assert any(not torch.equal(a[n], c[n]) for n in a)
