"""The unsharded model export: what serving, evaluation and any world size load.

A folder with ``model.safetensors`` (every weight, tables gathered whole; a frozen content
table as ``content.table``), ``features.safetensors`` (each item's categorical feature codes),
``items.parquet`` (item id per code, and the item text for a trainable content tower), the
popularity prior's per-item score bias when one was chosen (``item_bias`` in features.safetensors),
``model.json`` (shapes, heads, vocabularies, how to rebuild the content tower) and a manifest.
:func:`load_export` verifies the manifest and rebuilds a plain ``MTMHModel`` (an unsharded
EBC: no process group, no TorchRec sharding) in one process.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
from safetensors.torch import load_file, save_file

from tte_recsys.artifacts import (
    atomic_path,
    read_manifest,
    sha256_file,
    write_json,
    write_manifest,
    write_parquet,
)
from tte_recsys.config import from_mapping
from tte_recsys.models.content import (
    ContentSpec,
    ContentTower,
    FrozenContent,
    TrainableContent,
    build_content_tower,
)
from tte_recsys.models.mtmh import ItemFeatures, ModelConfig, MTMHModel
from tte_recsys.progress import progress

__all__ = ["ExportedModel", "encode_items", "load_export", "save_export"]

KIND = "mtmh_export"
_CONTENT_KEY = "content.table"


def save_export(
    out_dir: str | Path,
    state: dict[str, torch.Tensor],
    cfg: ModelConfig,
    features: ItemFeatures,
    item_ids: Sequence[str],
    content: ContentTower | None,
    content_spec: ContentSpec | None = None,
    extra: dict[str, Any] | None = None,
    item_bias: np.ndarray | None = None,
) -> None:
    """Write the export folder (manifest last).

    Args:
        state: the unsharded model state (from :func:`~tte_recsys.training.sharding.unsharded_state`).
        content_spec: how the tower was built (:func:`~tte_recsys.models.content.build_content_tower`
            rebuilds it from this at load time; a trainable tower's weights are in ``state``).
        extra: more manifest fields (training summary, metrics).
        item_bias: (N,) added to every candidate's score at serving (the popularity prior), or None.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    weights = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    if isinstance(content, FrozenContent):
        weights[_CONTENT_KEY] = content.table.detach().cpu().contiguous()
    with atomic_path(out / "model.safetensors") as tmp:
        save_file(weights, str(tmp))
    feats = {f"offsets/{f}": torch.from_numpy(features.offsets[f]) for f in features.vocab}
    feats |= {f"values/{f}": torch.from_numpy(features.values[f]) for f in features.vocab}
    if features.no_id is not None:
        feats["no_id"] = torch.from_numpy(features.no_id.astype(np.uint8))
    if item_bias is not None:
        if np.shape(item_bias) != (features.num_items,):
            raise ValueError(f"item_bias has shape {np.shape(item_bias)}; expected ({features.num_items},)")
        feats["item_bias"] = torch.from_numpy(np.asarray(item_bias, dtype=np.float32))
    with atomic_path(out / "features.safetensors") as tmp:
        save_file(feats, str(tmp))
    items = pl.DataFrame({"item_id": list(item_ids)}).with_row_index("item_idx")
    if isinstance(content, TrainableContent):
        items = items.with_columns(pl.Series("text", content.texts))
    write_parquet(out / "items.parquet", items)
    write_json(
        out / "model.json",
        {
            "model": dataclasses.asdict(cfg),
            "num_embeddings": [[f, n] for f, n in features.num_embeddings().items()],  # ordered
            "vocab": features.vocab,
            "content_dim": content.dim if content is not None else 0,
            "content_spec": (content_spec or ContentSpec(cfg.content)).as_dict(),
        },
    )
    write_manifest(out, KIND, {"heads": list(cfg.heads), **(extra or {})})


@dataclass
class ExportedModel:
    """A loaded export: the plain model (eval mode), its item features and ids, and the per-item
    score bias serving adds (None: plain inner products).

    ``fingerprint`` is the sha256 of the export's manifest (which lists every file's sha256):
    what a serving bundle records to name the model it was built from."""

    model: MTMHModel
    features: ItemFeatures
    item_ids: list[str]
    manifest: dict[str, Any]
    fingerprint: str
    item_bias: np.ndarray | None = None

    @property
    def heads(self) -> list[str]:
        return list(self.model.cfg.heads)

    def encode(self, codes: np.ndarray | None = None, batch_size: int = 4096) -> dict[str, np.ndarray]:
        return encode_items(self.model, self.features, codes, batch_size)


def load_export(export_dir: str | Path) -> ExportedModel:
    """Verify and load an export folder written by :func:`save_export`."""
    d = Path(export_dir)
    manifest = read_manifest(d, kind=KIND)
    meta = json.loads((d / "model.json").read_text())
    cfg = from_mapping(ModelConfig, meta["model"], f"{d}/model.json")
    state = load_file(str(d / "model.safetensors"))
    feats = load_file(str(d / "features.safetensors"))
    items = pl.read_parquet(d / "items.parquet")
    vocab: dict[str, list[str]] = {f: meta["vocab"][f] for f, _ in meta["num_embeddings"][1:]}
    features = ItemFeatures(
        num_items=items.height,
        vocab=vocab,
        offsets={f: feats[f"offsets/{f}"].numpy() for f in vocab},
        values={f: feats[f"values/{f}"].numpy() for f in vocab},
        no_id=feats["no_id"].numpy().astype(bool) if "no_id" in feats else None,
    )
    # one factory for training and loading; an export's tower never recomputes in a backward
    spec = ContentSpec.from_dict(
        {"mode": cfg.content, **(meta["content_spec"] or {}), "checkpointing": False}
    )
    content = build_content_tower(
        spec,
        table=state.pop(_CONTENT_KEY) if spec.mode == "frozen" else None,
        texts=items["text"].to_list() if spec.mode == "trainable" else None,
        device="cpu",  # the model is built on CPU
    )
    model = MTMHModel(cfg, {f: int(n) for f, n in meta["num_embeddings"]}, content, device="cpu")
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{d}/model.safetensors does not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    model.eval()
    bias = feats["item_bias"].numpy() if "item_bias" in feats else None
    return ExportedModel(
        model, features, items["item_id"].to_list(), manifest, sha256_file(d / "manifest.json"), bias
    )


@torch.no_grad()
def encode_items(
    model: MTMHModel, features: ItemFeatures, codes: np.ndarray | None = None, batch_size: int = 4096
) -> dict[str, np.ndarray]:
    """Per-head unit vectors of items (all items when ``codes`` is None): head -> (n, head_dim)."""
    codes = np.arange(features.num_items) if codes is None else np.asarray(codes, np.int64)
    was_training = model.training
    model.eval()
    out: dict[str, list[np.ndarray]] = {h: [] for h in model.cfg.heads}
    for start in progress(
        range(0, len(codes), batch_size), desc="encode items", leave=False, disable=len(codes) <= batch_size
    ):
        c = codes[start : start + batch_size]
        vecs = model(features.kjt(c), torch.from_numpy(c))
        for h, v in vecs.items():
            out[h].append(v.float().cpu().numpy())
    model.train(was_training)
    dim = model.head_dim
    return {h: np.concatenate(v) if v else np.zeros((0, dim), np.float32) for h, v in out.items()}
