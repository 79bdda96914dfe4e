"""One content-tower factory from one serialisable spec, for training and the export loader."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tte_recsys.models.content import (
    ContentSpec,
    FrozenContent,
    TrainableContent,
    build_content_tower,
)


def test_spec_from_an_embedder_config_keeps_what_defines_the_tower() -> None:
    embedder = {
        "model_path": "m",
        "pooling": "last",
        "max_length": 32,
        "instruction": "",
        "dtype": "float32",
        "runtime": "onnx",  # where it runs, not what it is
        "device": "cuda",
        "batch_size": 8,
    }
    spec = ContentSpec.from_embedder_config("trainable", embedder, {"r": 4, "alpha": 8, "dropout": 0.0}, True)
    assert dict(spec.embedder) == {
        k: embedder[k] for k in ("model_path", "pooling", "max_length", "instruction", "dtype")
    }
    assert spec.chunk == 8 and spec.checkpointing and spec.lora == {"r": 4, "alpha": 8, "dropout": 0.0}
    again = ContentSpec.from_dict(json.loads(json.dumps(spec.as_dict())))  # through model.json
    assert again == spec
    assert ContentSpec.from_embedder_config("frozen", embedder) == ContentSpec("frozen")


def test_each_mode_builds_its_tower(tiny_qwen_dir: Path) -> None:
    assert build_content_tower(ContentSpec("none")) is None
    table = np.eye(3, dtype=np.float32)
    frozen = build_content_tower(ContentSpec("frozen"), table=table)
    assert isinstance(frozen, FrozenContent) and torch.equal(
        frozen(torch.tensor([2, 0])), torch.eye(3)[[2, 0]]
    )
    spec = ContentSpec("trainable", {"model_path": str(tiny_qwen_dir), "pooling": "mean"}, {"r": 2}, chunk=2)
    tower = build_content_tower(spec, texts=["a", "b c", "d e f"], seed=1, device="cpu")
    assert isinstance(tower, TrainableContent) and tower.chunk == 2
    out = tower(torch.tensor([2, 0, 2]))
    assert out.shape == (3, tower.dim) and torch.allclose(out[0], out[2])
    assert any("lora" in n for n, p in tower.named_parameters() if p.requires_grad)


@pytest.mark.parametrize(
    ("spec", "kwargs", "match"),
    [
        (
            dict(mode="cached"),
            {},
            r"model.content='cached': expected one of \['none', 'frozen', 'trainable'\]",
        ),
        (dict(mode="trainable"), {}, "a trainable content tower needs embedder.model_path"),
    ],
)
def test_bad_specs_are_named(spec: dict, kwargs: dict, match: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(ValueError, match=match):
        ContentSpec(**spec)


def test_a_tower_without_its_inputs_is_refused() -> None:
    with pytest.raises(ValueError, match="content=frozen needs its vectors table"):
        build_content_tower(ContentSpec("frozen"))
    with pytest.raises(ValueError, match="content=trainable needs each item's embedding text"):
        build_content_tower(ContentSpec("trainable", {"model_path": "x"}))
