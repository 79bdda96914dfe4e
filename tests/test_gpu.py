"""GPU paths, against the CPU in fp32: the embedder and the HF reasoner on this process's GPU (fp32
and bf16), embed_items with the default ``device=auto``, and train_i2i (TorchRec with fbgemm-gpu
and nccl). Skipped without CUDA (CI has none); docs/results.md, "What was verified where", says where they ran."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import DictConfig

from tests.helpers import (
    embed_overrides,
    finish,
    fresh_export_metrics,
    kill_then_resume,
    launch,
    read_report,
    require_cuda,
    tiny_args,
    trainable_content_run,
)
from tte_recsys.tte.factory import build_embedder

# The skip is asked inside each test body (require_cuda), not at collection: asking CUDA at
# import time initialises it in the pytest process, before other tests fork DataLoader workers.
pytestmark = [pytest.mark.gpu]

TEXTS = [
    "Heat (1995) | Action|Crime|Thriller",
    "Toy Story (1995) | Adventure|Animation|Children|Comedy|Fantasy",
    "a stapler",
    "Desk organiser with three drawers, black mesh, fits A4 paper and envelopes " * 4,
    "Heat",
]


def _device_dtype(emb: torch.nn.Module) -> tuple[str, torch.dtype]:
    p = next(emb.parameters())
    return p.device.type, p.dtype


@pytest.mark.parametrize("pooling", ["mean", "last", "meta"])
def test_embedder_on_the_gpu_matches_the_cpu(tiny_qwen_dir: Path, pooling: str) -> None:
    require_cuda()
    kw = {"pooling": pooling, "meta_queries": 2}
    cpu = build_embedder(str(tiny_qwen_dir), dtype="float32", device="cpu", **kw)
    gpu = build_embedder(str(tiny_qwen_dir), dtype="float32", **kw)  # device=auto
    bf16 = build_embedder(str(tiny_qwen_dir), dtype="auto", **kw)
    assert _device_dtype(gpu) == ("cuda", torch.float32)
    assert _device_dtype(bf16) == ("cuda", torch.bfloat16)  # auto picks bf16 on a GPU
    if pooling == "meta":  # the learnable queries are drawn at random: give all three the same
        q = cpu.pooling.queries.detach()  # type: ignore[union-attr]
        gpu.pooling.queries.data.copy_(q)  # type: ignore[union-attr]
        bf16.pooling.queries.data.copy_(q)  # type: ignore[union-attr]
    ref = cpu.encode(TEXTS, batch_size=2)
    np.testing.assert_allclose(gpu.encode(TEXTS, batch_size=2), ref, atol=1e-4)
    low = bf16.encode(TEXTS, batch_size=2)
    assert low.dtype == np.float32
    cos = (low * ref).reshape(len(TEXTS), -1, ref.shape[-1]).sum(-1)
    assert cos.min() > 0.98, cos


def test_vision_language_embedder_on_the_gpu(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    require_cuda()
    from tte_recsys.tte.cards import render_card
    from tte_recsys.tte.items import ItemInput
    from tte_recsys.tte.tiny import build_tiny_qwen2_vl

    vl = build_tiny_qwen2_vl(tmp_path_factory.mktemp("tiny_vl"))
    card = tmp_path / "card.png"
    render_card(ItemInput("1", {"title": "Heat (1995)"}), card, chart={"4": 3, "5": 9})
    texts, images = ["a movie", "text only"], [str(card), None]
    cpu = build_embedder(str(vl), pooling="last", dtype="float32", device="cpu")
    gpu = build_embedder(str(vl), pooling="last", dtype="float32")
    assert _device_dtype(gpu)[0] == "cuda"
    np.testing.assert_allclose(gpu.encode(texts, images=images), cpu.encode(texts, images=images), atol=1e-4)


def test_hf_reasoner_generates_on_the_gpu(tiny_qwen_dir: Path) -> None:
    require_cuda()
    from tte_recsys.tte.reasoner.backends import GenerationSettings, HFReasoner, LoadSettings, TraceRequest

    reqs = [TraceRequest(str(i), [{"role": "user", "content": t}]) for i, t in enumerate(TEXTS[:4])]
    cpu = HFReasoner(
        str(tiny_qwen_dir),
        GenerationSettings(max_new_tokens=6, batch_size=3),
        LoadSettings(dtype="float32", device="cpu"),
    )
    gpu = HFReasoner(
        str(tiny_qwen_dir), GenerationSettings(max_new_tokens=6, batch_size=3), LoadSettings(dtype="float32")
    )
    bf16 = HFReasoner(
        str(tiny_qwen_dir), GenerationSettings(max_new_tokens=6, batch_size=3), LoadSettings(dtype="auto")
    )
    assert gpu.model.device.type == "cuda" and bf16.model.dtype == torch.bfloat16
    # Greedy decoding, fp32 both sides: the same tokens unless two logits tie within rounding.
    assert gpu.generate(reqs) == cpu.generate(reqs)
    out = bf16.generate(reqs)
    assert all(isinstance(t, str) and t for t in out), out


def test_embed_items_runs_on_the_gpu(
    compose_cfg: Callable[..., DictConfig], tiny_qwen_dir: Path, tmp_path: Path
) -> None:
    require_cuda()
    from pipelines import embed_items
    from tte_recsys.vectors import load_vectors

    def run(out: Path, *extra: str) -> np.ndarray:
        embed_items.run(
            compose_cfg("embed_items", embed_overrides(tiny_qwen_dir, out, "embedder.dtype=float32", *extra))
        )
        return load_vectors(out).vectors

    np.testing.assert_allclose(run(tmp_path / "gpu"), run(tmp_path / "cpu", "embedder.device=cpu"), atol=1e-4)


def test_train_i2i_on_the_gpu_follows_the_cpu(
    compose_cfg: Callable[..., DictConfig], tiny_qwen_dir: Path, tmp_path: Path
) -> None:
    """TorchRec on the GPU: the planner's own plan (no CPU constraints), fbgemm-gpu's fused CUDA
    kernels and a 1-process nccl group. The loss curve follows the same run on the CPU (gloo,
    fused CPU kernels), and the export, loaded in a fresh CPU process, gives the run's test metrics."""
    require_cuda()
    from pipelines import train_i2i

    args = tiny_args(tiny_qwen_dir, "compare.single_head=false", "compare.id_only=false")
    report = train_i2i.run(compose_cfg("train_i2i", args))
    gpu = report["training"]["mtmh_lam1"]
    assert gpu["device"] == "cuda:0", gpu["device"]
    assert gpu["plan"], "no sharding plan recorded"
    print("GPU plan:", gpu["plan"])
    finish(launch(args, tmp_path / "cpu", env={"CUDA_VISIBLE_DEVICES": ""}))
    cpu = read_report(tmp_path / "cpu")["training"]["mtmh_lam1"]
    assert cpu["device"] == "cpu"
    print(
        "loss GPU",
        np.round(gpu["loss_curve"], 5).tolist(),
        "\nloss CPU",
        np.round(cpu["loss_curve"], 5).tolist(),
    )
    np.testing.assert_allclose(gpu["loss_curve"], cpu["loss_curve"], rtol=1e-2, atol=1e-3)
    assert gpu["loss_curve"][-1] < gpu["loss_curve"][0]

    sel = report["selection"]["mtmh"]
    fresh = fresh_export_metrics(tmp_path / "out", sel, env={"CUDA_VISIBLE_DEVICES": ""})
    row = report["methods_refit"][
        f"mtmh (K1/K={sel['share']:g}, lambda={sel['lam']:g})"
    ]  # the export is the refit model
    for key, value in row.items():
        assert fresh[key] == pytest.approx(value, abs=1e-9, nan_ok=True), key


def test_trainable_content_trains_on_the_gpu(
    compose_cfg: Callable[..., DictConfig], tiny_qwen_dir: Path, tmp_path: Path
) -> None:
    """The embedder with LoRA inside the sharded model, on the GPU; the export encodes on the CPU."""
    require_cuda()

    report = trainable_content_run(compose_cfg, tiny_qwen_dir, tmp_path)
    assert report["training"]["mtmh_lam1"]["device"] == "cuda:0"


def test_kill_then_resume_on_the_gpu(tiny_qwen_dir: Path, tmp_path: Path) -> None:
    """``resume=true`` on the GPU: the fused CUDA tables, their optimizer state and the dense Adam
    state come back from a checkpoint written by a run killed mid-training."""
    require_cuda()

    full, resumed = kill_then_resume(tiny_qwen_dir, tmp_path)
    assert full["training"]["mtmh_lam1"]["device"] == resumed["training"]["mtmh_lam1"]["device"] == "cuda:0"
    np.testing.assert_allclose(
        resumed["training"]["mtmh_lam1"]["loss_curve"], full["training"]["mtmh_lam1"]["loss_curve"], rtol=1e-5
    )
    assert resumed["methods"] == full["methods"]
