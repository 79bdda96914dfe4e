"""TrainableContent encodes each distinct item of a batch once, in length-sorted chunks; the result
and the gradients are those of encoding every occurrence in one padded batch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tte_recsys.models.content import TrainableContent
from tte_recsys.tte.factory import build_embedder
from tte_recsys.tte.lora import add_lora

TEXTS = [
    "a comedy film",
    "office paper and pens, two hundred sheets, recycled, with a box of blue ballpoint pens",
    "calculator",
    "desk lamp with a flexible arm",
]


def test_repeated_items_are_encoded_once_with_the_same_values_and_gradients(
    tiny_qwen_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    emb = add_lora(build_embedder(str(tiny_qwen_dir), pooling="mean"), r=4)
    emb.eval()  # no dropout: both paths see the same function
    tower = TrainableContent(emb, TEXTS, chunk=2)  # items 0, 2, 3: two chunks of different widths
    codes = torch.tensor([2, 0, 2, 3, 0, 2])
    calls = []
    real = emb.token_ids

    def counting(texts, *a, **k):  # type: ignore[no-untyped-def]
        calls.append(len(texts))
        return real(texts, *a, **k)

    widths = []
    real_batch = emb.pad_batch

    def batching(ids, *a, **k):  # type: ignore[no-untyped-def]
        widths.append((len(ids), max(len(x) for x in ids)))
        return real_batch(ids, *a, **k)

    monkeypatch.setattr(emb, "token_ids", counting)
    monkeypatch.setattr(emb, "pad_batch", batching)
    out = tower(codes)
    assert calls == [3]  # items 0, 2, 3: each once
    lengths = sorted((len(x) for x in real([TEXTS[0], TEXTS[2], TEXTS[3]])), reverse=True)
    assert widths == [(2, lengths[0]), (1, lengths[2])]  # longest first, each chunk padded to its own
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(0))
    (out * weights).sum().backward()
    grads = {n: p.grad.clone() for n, p in emb.named_parameters() if p.requires_grad}
    emb.zero_grad(set_to_none=True)

    # the reference: every occurrence encoded on its own row
    batch = real_batch(real([TEXTS[c] for c in codes.tolist()]))
    ref = emb(**batch).float()
    (ref * weights).sum().backward()
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    for n, p in emb.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(grads[n], p.grad, atol=1e-5, rtol=1e-4, msg=n)

    # token ids are kept per item: a later batch tokenises only the items not seen before
    with torch.no_grad():
        again = tower(torch.tensor([3, 1, 2]))
    assert calls == [3, 1]
    torch.testing.assert_close(again[[0, 2]], out[[3, 0]].detach(), atol=1e-5, rtol=1e-5)
    assert len(grads) > 0 and any(g.abs().sum() > 0 for g in grads.values())


def test_activation_checkpointing_gives_the_same_values_and_gradients(tiny_qwen_dir: Path) -> None:
    """In training mode (the tiny Qwen2 has no dropout, so both runs compute the same function)."""
    results = []
    for checkpointing in (False, True):
        torch.manual_seed(0)  # the same LoRA initialisation
        emb = add_lora(build_embedder(str(tiny_qwen_dir), pooling="mean"), r=4)
        tower = TrainableContent(emb, TEXTS, chunk=2, checkpointing=checkpointing)
        emb.train()
        out = tower(torch.tensor([1, 0, 1, 3]))
        (out * torch.arange(out.numel()).reshape(out.shape).sin()).sum().backward()
        grads = {n: p.grad for n, p in emb.named_parameters() if p.requires_grad}
        layer = emb.backbone.base_model.model.layers[0]
        results.append((out.detach(), grads, layer.gradient_checkpointing))
    (ref, ref_grads, off), (out, grads, on) = results
    assert not off and on  # the option reached the layers
    torch.testing.assert_close(out, ref)
    assert ref_grads.keys() == grads.keys() and any(g.abs().sum() > 0 for g in grads.values())
    for n in ref_grads:
        torch.testing.assert_close(grads[n], ref_grads[n], msg=n)


def test_gradients_of_repeated_items_add_up_in_the_same_order_every_time(tiny_qwen_dir: Path) -> None:
    """A batch's popular items recur hundreds of times. Advanced indexing's backward on the CPU adds
    their gradients with atomic float adds from several threads, in whichever order the threads
    reach them: two runs of one config drifted apart in rounding from the second step on."""
    emb = add_lora(build_embedder(str(tiny_qwen_dir), pooling="mean"), r=4)
    emb.eval()
    tower = TrainableContent(emb, TEXTS, chunk=2)
    codes = torch.arange(4096) % len(TEXTS)  # every item repeated across the whole batch
    weights = torch.randn(len(codes), emb.dim, generator=torch.Generator().manual_seed(0))
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # the race needs two threads (the CPU machines here have 2 cores)
    try:
        runs = []
        for _ in range(5):
            emb.zero_grad(set_to_none=True)
            (tower(codes) * weights).sum().backward()
            runs.append({n: p.grad.clone() for n, p in emb.named_parameters() if p.requires_grad})
    finally:
        torch.set_num_threads(threads)
    assert any(g.abs().sum() > 0 for g in runs[0].values())
    for other in runs[1:]:
        for n, g in runs[0].items():
            assert torch.equal(g, other[n]), n  # bit for bit, not within a tolerance
