"""The one definition of a trace-aware item vector (tte_recsys.tte.fusion)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tte_recsys.tte.embedder import Embedder
from tte_recsys.tte.factory import build_embedder
from tte_recsys.tte.fusion import TraceFusion, fuse, item_vectors, trace_vectors
from tte_recsys.tte.items import ItemInput, embedding_text
from tte_recsys.tte.reasoner.penalty import GeneratedRepetitionPenalty


@pytest.fixture(scope="module")
def minilm() -> Embedder:
    return build_embedder("minilm", runtime="torch", device="cpu")


def test_fuse_by_hand() -> None:
    item = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    trace = np.array([[0.0, 1.0], [0.0, 0.0]], dtype=np.float32)  # the second item has no trace
    got = fuse(item, trace, 0.5)
    # (1, 0.5) / sqrt(1.25); an item without a trace keeps its own vector
    np.testing.assert_allclose(got[0], [1 / np.sqrt(1.25), 0.5 / np.sqrt(1.25)], rtol=1e-6)
    np.testing.assert_allclose(got[1], [0.0, 1.0])
    np.testing.assert_allclose(fuse(item, trace, 0.0), item)


def test_fused_item_vectors_against_a_hand_computation(minilm: Embedder) -> None:
    items = [ItemInput("a", {"title": "red stapler"}), ItemInput("b", {"title": "blue pens"})]
    traces = {"a": ["office desk supplies", "paper clips and staples"]}
    got = item_vectors(minilm, items, traces, TraceFusion("fuse", 0.25))
    v_a, v_b, t1, t2 = minilm.encode(["title: red stapler", "title: blue pens", *traces["a"]])
    assert items[0].text == "title: red stapler"
    want_a = v_a + 0.25 * (t1 + t2) / 2
    np.testing.assert_allclose(got[0], want_a / np.linalg.norm(want_a), atol=1e-5)
    np.testing.assert_allclose(got[1], v_b, atol=1e-5)  # no trace: the plain vector
    tv = trace_vectors(minilm, [traces["a"], []])
    np.testing.assert_allclose(tv[0], (t1 + t2) / 2, atol=1e-5)
    assert not tv[1].any()


def test_concat_is_one_input_and_weight_zero_is_no_trace(minilm: Embedder) -> None:
    items = [ItemInput("a", {"title": "red stapler"})]
    traces = {"a": ["office supplies"]}
    got = item_vectors(minilm, items, traces, TraceFusion("concat"))
    np.testing.assert_allclose(
        got[0], minilm.encode([embedding_text(items[0], "office supplies")])[0], atol=1e-5
    )
    plain = item_vectors(minilm, items, {}, TraceFusion("fuse", 0.3))
    np.testing.assert_allclose(item_vectors(minilm, items, traces, TraceFusion("fuse", 0.0)), plain)


@pytest.mark.parametrize(
    ("kw", "msg"),
    [
        ({"mode": "mean"}, "embedder.traces"),
        ({"side": "target"}, "trace_side"),
        ({"weight": -1.0}, "trace_weight"),
    ],
)
def test_bad_fusion_settings_name_the_key(kw: dict[str, object], msg: str) -> None:
    with pytest.raises(ValueError, match=msg):
        TraceFusion(**kw)  # type: ignore[arg-type]


def test_repetition_penalty_skips_the_prompt() -> None:
    scores = torch.tensor([[2.0, -2.0, 1.0, 4.0]])
    ids = torch.tensor([[3, 0, 1]])  # prompt = [3]; generated so far: 0, 1
    got = GeneratedRepetitionPenalty(2.0, prompt_len=1)(ids, scores.clone())  # type: ignore[arg-type]
    torch.testing.assert_close(got, torch.tensor([[1.0, -4.0, 1.0, 4.0]]))  # token 3 (prompt) untouched
