"""The embedder: real MiniLM against sentence-transformers; pooling and meta-queries on a tiny Qwen2."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from tte_recsys.tte.embedder import Embedder
from tte_recsys.tte.factory import build_embedder
from tte_recsys.tte.models import resolve_model_dir
from tte_recsys.tte.pooling import LastTokenPooling, MeanPooling, MetaQueries

TEXTS = ["Toy Story (1995)", "a comedy film about friends and a long road trip", "calculator", "Heat"]


@pytest.fixture(scope="session")
def _minilm() -> Embedder:
    return build_embedder("minilm")


@pytest.fixture
def minilm(_minilm: Embedder) -> Embedder:
    return copy.deepcopy(_minilm)


def test_minilm_matches_sentence_transformers(minilm: Embedder) -> None:
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(resolve_model_dir("minilm")), device="cpu")
    ref = st.encode(TEXTS, normalize_embeddings=True)
    ours = minilm.encode(TEXTS, batch_size=3)
    assert ours.shape == (4, 384)
    np.testing.assert_allclose((ours * ref).sum(1), 1.0, atol=1e-5)


def test_encode_keeps_order_single_string_and_unit_norm(minilm: Embedder) -> None:
    many = minilm.encode(TEXTS, batch_size=2)
    np.testing.assert_allclose(np.linalg.norm(many, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(minilm.encode(TEXTS[1]), many[1], atol=1e-5)
    np.testing.assert_allclose(minilm.encode(TEXTS[::-1], batch_size=4)[::-1], many, atol=1e-5)
    with pytest.raises(ValueError, match="batch_size=0"):
        minilm.encode(TEXTS, batch_size=0)


def test_unknown_pooling_lists_valid(tmp_path: Path) -> None:
    with pytest.raises(
        ValueError, match=r"embedder.pooling='max': expected one of \['mean', 'cls', 'last', 'meta'\]"
    ):
        build_embedder("minilm", pooling="max")
    with pytest.raises(FileNotFoundError, match=r"has no config\.json"):
        build_embedder(str(tmp_path))


def _qwen(d: Path, pooling: str, side: str, **kw: int) -> Embedder:
    e = build_embedder(str(d), pooling=pooling, **kw)
    e.tokenizer.padding_side = side
    return e


@pytest.mark.parametrize("pooling", ["last", "mean", "meta"])
def test_pooling_identical_for_left_and_right_padding(tiny_qwen_dir: Path, pooling: str) -> None:
    torch.manual_seed(0)
    left = _qwen(tiny_qwen_dir, pooling, "left")
    right = copy.deepcopy(left)
    right.tokenizer.padding_side = "right"
    a, b = left.encode(TEXTS, batch_size=4), right.encode(TEXTS, batch_size=4)
    np.testing.assert_allclose(a, b, atol=1e-5)
    np.testing.assert_allclose(
        a, np.stack([left.encode(t) for t in TEXTS]), atol=1e-5
    )  # batch = one at a time


def test_last_token_pooler_by_hand() -> None:
    h = torch.arange(2 * 3 * 1, dtype=torch.float32).reshape(2, 3, 1)
    right = torch.tensor([[1, 1, 0], [1, 1, 1]])
    left = torch.tensor([[0, 1, 1], [1, 1, 1]])
    assert LastTokenPooling()(h, right).flatten().tolist() == [1.0, 5.0]
    assert LastTokenPooling()(h, left).flatten().tolist() == [2.0, 5.0]
    assert MeanPooling()(h, right).flatten().tolist() == [0.5, 4.0]


def test_meta_queries_train_alone_on_a_frozen_backbone(tiny_qwen_dir: Path) -> None:
    e = _qwen(tiny_qwen_dir, "meta", "left", meta_queries=3, meta_heads=2)
    assert isinstance(e.pooling, MetaQueries)
    e.backbone.requires_grad_(False)
    batch = e.pad_batch(e.token_ids(TEXTS))
    out = e(**batch)  # (B, H, D)
    assert out.shape == (4, 2, 32)
    out[:, 0].sum().backward()
    assert e.pooling.queries.grad is not None and e.pooling.queries.grad.abs().sum() > 0
    assert all(p.grad is None for p in e.backbone.parameters())
    assert e.encode(TEXTS).shape == (4, 2, 32)


@pytest.fixture(scope="session")
def tiny_vl_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tte_recsys.tte.tiny import build_tiny_qwen2_vl

    return build_tiny_qwen2_vl(tmp_path_factory.mktemp("tiny_vl"))


def test_image_item_embeds_with_a_vision_language_backbone(tiny_vl_dir: Path, tmp_path: Path) -> None:
    from tte_recsys.tte.cards import render_card
    from tte_recsys.tte.items import ItemInput

    card = tmp_path / "card.png"
    render_card(ItemInput("1", {"title": "Heat (1995)"}), card, chart={"4": 3, "5": 9})
    other = tmp_path / "blank.png"
    render_card(ItemInput("2", {"title": ""}), other)
    e = build_embedder(str(tiny_vl_dir), pooling="last")
    assert e.vision is not None
    v = e.encode(["a movie", "a movie", "text only"], images=[str(card), str(other), None], batch_size=2)
    assert v.shape == (3, 32)
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(v[0], v[1], atol=1e-4)  # the image changes the vector
    np.testing.assert_allclose(
        e.encode(["a movie"], images=[str(card)])[0], v[0], atol=1e-4
    )  # batching-invariant
    with pytest.raises(FileNotFoundError, match=r"image .*missing.png not found"):
        e.encode(["x"], images=[str(tmp_path / "missing.png")])


def test_bf16_weights_agree_with_fp32(minilm: Embedder) -> None:
    fast = build_embedder("minilm", dtype="bfloat16")
    assert next(fast.backbone.parameters()).dtype == torch.bfloat16
    v = fast.encode(TEXTS)
    assert v.dtype == np.float32
    assert ((v * minilm.encode(TEXTS)).sum(1) > 0.999).all()


def test_onnx_runtime_matches_torch_and_exports_once(minilm: Embedder, tmp_path: Path) -> None:
    fast = build_embedder("minilm", runtime="onnx", onnx_cache_dir=str(tmp_path))
    (exported,) = tmp_path.glob("embedder-*.onnx")
    stamp = exported.stat().st_mtime_ns
    np.testing.assert_allclose(
        fast.encode(TEXTS, batch_size=3), minilm.encode(TEXTS, batch_size=3), atol=1e-5
    )
    build_embedder("minilm", runtime="onnx", onnx_cache_dir=str(tmp_path))
    assert exported.stat().st_mtime_ns == stamp  # reused, not exported again
    with pytest.raises(
        ValueError, match=r"embedder.runtime='tvm': expected one of \['auto', 'torch', 'onnx'\]"
    ):
        build_embedder("minilm", runtime="tvm")
    with pytest.raises(
        ValueError, match="runtime=onnx supports text-only embedders with mean/cls/last pooling"
    ):
        build_embedder("minilm", pooling="meta", runtime="onnx", onnx_cache_dir=str(tmp_path))


def test_auto_runtime_takes_onnx_only_where_it_can_run(tmp_path: Path) -> None:
    from tte_recsys.tte.onnx_runtime import OnnxEmbedder

    cache = str(tmp_path)
    on_cpu = not torch.cuda.is_available()
    assert isinstance(build_embedder("minilm", runtime="auto", onnx_cache_dir=cache), OnnxEmbedder) is on_cpu
    for kwargs in ({"pooling": "meta"}, {"dtype": "bfloat16"}):  # what ONNX export refuses
        emb = build_embedder("minilm", runtime="auto", onnx_cache_dir=cache, **kwargs)
        assert not isinstance(emb, OnnxEmbedder)


def test_an_input_without_tokens_is_a_clear_error(tiny_qwen_dir: Path) -> None:
    e = build_embedder(str(tiny_qwen_dir), pooling="last")  # Qwen's tokenizer adds no BOS: "" is 0 tokens
    with pytest.raises(ValueError, match=r"inputs \[1\] have no tokens \(empty text and no image\)"):
        e.encode(["a stapler", ""])


@pytest.mark.parametrize("side", ["right", "left"])
def test_batches_pad_like_the_tokenizer(tiny_qwen_dir: Path, side: str) -> None:
    e = build_embedder(str(tiny_qwen_dir), pooling="last")
    e.tokenizer.padding_side = side
    ids = e.token_ids(["a stapler", "Desk organiser with three drawers, black mesh", "Heat"])
    ref = e.tokenizer.pad({"input_ids": ids}, padding=True, return_tensors="pt")
    got = e.pad_batch(ids)
    assert torch.equal(got["input_ids"], ref["input_ids"])
    assert torch.equal(got["attention_mask"], ref["attention_mask"])
