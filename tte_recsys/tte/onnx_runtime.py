"""ONNX Runtime execution of a text embedder (fp32): the same tokenisation, batching and results
order as :class:`Embedder`, with backbone + pooling + normalisation exported once to ONNX.

Measured here on all-MiniLM-L6-v2 and the 9,742 MovieLens item texts (2 threads, bench/embed.py):
1.48x sentence-transformers at cosine 0.999999, against 1.24x for the PyTorch path; the configured
runtime of the packaged MiniLM (``configs/embedder/minilm.yaml``). Text-only; mean / cls /
last-token pooling; inference only (a model trained in the loop runs in PyTorch).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
from torch import nn

from tte_recsys.artifacts import atomic_path
from tte_recsys.tte.embedder import Embedder
from tte_recsys.tte.pooling import MetaQueries

__all__ = ["EXPORT_FORMAT", "OnnxEmbedder", "export_onnx", "onnx_unsupported"]

EXPORT_FORMAT = 2  # bumped when the exported graph changes: 2 = eager attention


class _Graph(nn.Module):
    """What is exported: backbone -> pooling -> L2 normalisation."""

    def __init__(self, emb: Embedder) -> None:
        super().__init__()
        self.backbone, self.pooling = emb.backbone, emb.pooling

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        h = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return nn.functional.normalize(self.pooling(h, attention_mask).float(), dim=-1)


def onnx_unsupported(emb: Embedder) -> str | None:
    """Why ``emb`` cannot run in ONNX Runtime, or None when it can (fp32, text-only, no meta-queries)."""
    if emb.vision is not None or isinstance(emb.pooling, MetaQueries):
        return "runtime=onnx supports text-only embedders with mean/cls/last pooling"
    if next(emb.backbone.parameters()).dtype != torch.float32:
        return "runtime=onnx exports fp32 weights; use dtype=float32"
    return None


def export_onnx(emb: Embedder, path: Path) -> Path:
    """Export ``emb`` (fp32, text-only, not meta-query pooling) to ``path`` atomically."""
    if (reason := onnx_unsupported(emb)) is not None:
        raise ValueError(reason)
    graph = _Graph(emb).eval()
    ids = torch.full((2, 8), int(emb.tokenizer.pad_token_id or 0) + 1, dtype=torch.long)
    mask = torch.ones_like(ids)
    axes = {
        "input_ids": {0: "batch", 1: "tokens"},
        "attention_mask": {0: "batch", 1: "tokens"},
        "embedding": {0: "batch"},
    }
    # Exported with transformers' eager attention (softmax(q k^T) v as plain ops), the same graph
    # whatever tte_sdpa's length-based dispatch would pick for the dummy input.
    impl = emb.backbone.config._attn_implementation
    emb.backbone.set_attn_implementation("eager")
    try:
        with atomic_path(path) as tmp, torch.inference_mode():
            torch.onnx.export(
                graph,
                (ids, mask),
                str(tmp),
                input_names=["input_ids", "attention_mask"],
                output_names=["embedding"],
                dynamic_axes=axes,
                opset_version=17,
                dynamo=False,
            )
    finally:
        emb.backbone.set_attn_implementation(impl)
    return path


class OnnxEmbedder(Embedder):
    """An :class:`Embedder` whose batches run in ONNX Runtime (exported on first use, cached in ``cache_dir``)."""

    def __init__(
        self, emb: Embedder, cache_dir: str | Path, model_key: str, threads: int | None = None
    ) -> None:
        super().__init__(
            emb.backbone, emb.tokenizer, emb.pooling, emb.max_length, emb.instruction, emb.vision
        )
        import onnxruntime as ort

        digest = hashlib.sha256(
            f"{model_key}|{type(emb.pooling).__name__}|{torch.__version__}|{EXPORT_FORMAT}".encode()
        ).hexdigest()[:16]
        path = Path(cache_dir) / f"embedder-{digest}.onnx"
        if not path.is_file():
            export_onnx(emb, path)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or torch.get_num_threads()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.onnx_path = path

    def _run(self, batch: dict[str, torch.Tensor]) -> np.ndarray:
        feeds = {k: batch[k].cpu().numpy().astype(np.int64) for k in ("input_ids", "attention_mask")}
        return np.asarray(self.session.run(None, feeds)[0], dtype=np.float32)
