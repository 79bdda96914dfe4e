"""Where embedders are built: from a local model folder (:func:`build_embedder`), in PyTorch or
ONNX Runtime, or from an ``embedder`` config section, local or served
(:func:`encoder_from_config`, what every pipeline that encodes calls).

The one place that knows both runtimes, so :mod:`tte_recsys.tte.embedder` (the module) and
:mod:`tte_recsys.tte.onnx_runtime` (its ONNX subclass) import nothing of each other's but the class.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

import torch
from hydra.utils import instantiate
from torch import nn
from transformers import PreTrainedModel

from tte_recsys.artifacts import sha256_file
from tte_recsys.distributed import resolve_device
from tte_recsys.tte.embedder import Embedder, Encoder
from tte_recsys.tte.models import auto_dtype, load_backbone, resolve_model_dir
from tte_recsys.tte.onnx_runtime import OnnxEmbedder, onnx_unsupported
from tte_recsys.tte.pooling import MetaQueries, make_pooling
from tte_recsys.tte.vision import VisionAdapter

__all__ = [
    "build_embedder",
    "embedder_fingerprint",
    "embedder_from_config",
    "encoder_from_config",
    "is_served",
    "weights_digest",
]

# Keys of an ``embedder`` section that say how traces reach the vectors (tte_recsys.tte.fusion,
# read by tte_recsys.experiment.stages.trace_fusion), not how an input is encoded.
TRACE_KEYS = ("traces", "trace_weight", "trace_side")


def weights_digest(model_dir: Path) -> str:
    """sha256 over the sha256 of every safetensors file of a model folder: what the weights are,
    whatever the folder is called."""
    shas = "|".join(sha256_file(f) for f in sorted(Path(model_dir).glob("*.safetensors")))
    return hashlib.sha256(shas.encode()).hexdigest()


def build_embedder(
    model_path: str,
    pooling: str = "mean",
    max_length: int = 256,
    instruction: str = "",
    meta_queries: int = 4,
    meta_heads: int = 1,
    dtype: str = "float32",
    compile: bool = False,
    runtime: str = "torch",
    onnx_cache_dir: str = "outputs/onnx_cache",
    device: str = "auto",
) -> Embedder:
    """An :class:`Embedder` from a local model folder (``minilm`` = the packaged MiniLM).

    ``pooling`` is ``mean``, ``cls``, ``last`` or ``meta`` (``meta_queries`` learnable tokens per
    head, ``meta_heads`` heads). ``dtype``: ``float32``, ``bfloat16`` (weights held in bf16: measured 2.2x the fp32 peer,
    where autocast reached 1.9x) or ``auto`` (bf16
    on a GPU or a CPU with native bf16 (AMX or AVX512-BF16), else fp32). ``compile``: ``torch.compile`` the backbone with weight
    freezing (inference only; about 15-30 s once, then ~1.1x faster fp32 on CPU, measured here).
    ``runtime``: ``torch``, ``onnx`` (fp32 in ONNX Runtime, exported once into ``onnx_cache_dir``;
    text-only; 1.48x sentence-transformers on MiniLM here, against 1.24x for ``torch``: bench/embed.py)
    or ``auto`` (``onnx`` for an fp32 text-only embedder without meta-queries on a machine without
    a GPU, else ``torch``). Training always uses the PyTorch modules (``OnnxEmbedder`` keeps them).
    ``device``: ``auto`` (this process's GPU where CUDA is available, else the CPU), ``cpu``,
    ``cuda`` or ``cuda:N``; the ``onnx`` runtime runs on the CPU.
    """
    dev = resolve_device(device)
    if runtime == "onnx" and dev.type != "cpu":
        if device != "auto":
            raise ValueError(f"embedder.runtime=onnx runs on the CPU; device={device!r} asks for {dev}")
        dev = torch.device("cpu")
    backbone, tok = load_backbone(model_path, dtype=auto_dtype(dtype, dev))
    limit = getattr(backbone.config, "max_position_embeddings", None)
    if limit is not None and max_length > int(limit):
        raise ValueError(
            f"embedder.max_length={max_length} exceeds what {model_path} can read "
            f"(max_position_embeddings {limit}); set embedder.max_length <= {limit}"
        )
    backbone = cast(PreTrainedModel, nn.Module.to(backbone, dev))
    vision = None
    if getattr(backbone.config, "vision_config", None) is not None:
        vision = VisionAdapter(resolve_model_dir(model_path), tok, backbone.config)
    if pooling == "meta":
        weight = cast(torch.Tensor, backbone.get_input_embeddings().weight)
        std = float(weight.detach().std())
        pool: nn.Module = MetaQueries(int(backbone.config.hidden_size), meta_queries, meta_heads, std)
    else:
        pool = make_pooling(pooling)
    if compile:
        backbone = cast(PreTrainedModel, torch.compile(backbone, dynamic=True, options={"freezing": True}))
    emb = Embedder(backbone, tok, pool, max_length=max_length, instruction=instruction, vision=vision)
    if runtime == "auto":  # ONNX Runtime where it was measured faster: on the CPU
        runtime = "onnx" if dev.type == "cpu" and onnx_unsupported(emb) is None else "torch"
    if runtime == "onnx":
        d = resolve_model_dir(model_path)
        key = f"{d.resolve()}|{weights_digest(d)}|{max_length}|{dtype}"  # a retrained model re-exports
        return OnnxEmbedder(emb, onnx_cache_dir, key)
    if runtime != "torch":
        raise ValueError(f"embedder.runtime={runtime!r}: expected one of ['auto', 'torch', 'onnx']")
    return emb.to(dev)


def is_served(e: Mapping[str, Any]) -> bool:
    """Whether an ``embedder`` section is a served embedder (a ``_target_`` class such as
    :class:`~tte_recsys.tte.openai_embedder.OpenAIEmbedder`, ``embedder=openai``) rather than a
    local model folder (``model_path``)."""
    return "_target_" in e


def encoder_from_config(e: Mapping[str, Any]) -> tuple[Encoder, str, str]:
    """The encoder of any ``embedder`` section, its model id (what produced the vectors: an
    item-vector folder records it) and its fingerprint (an embedding cache's key).

    A local model folder: :func:`embedder_from_config`; the fingerprint covers its weights. A
    served embedder: built from its ``_target_``; its model id names the server, the model and
    your ``revision`` tag (``openai:<base_url>:<model>:<revision>``), and the fingerprint is that
    id's digest, since a server cannot say what its weights are.
    """
    if is_served(e):
        enc = instantiate({k: v for k, v in e.items() if k not in TRACE_KEYS})
        model_id = str(enc.model_id)
        return enc, model_id, hashlib.sha256(model_id.encode()).hexdigest()
    emb, model_id = embedder_from_config(e)
    return emb, model_id, embedder_fingerprint(e, model_id)


def embedder_from_config(e: Mapping[str, Any]) -> tuple[Embedder, str]:
    """A local embedder from an ``embedder`` section, and its model id (what produced the vectors).
    A served section is refused: what calls this needs the model's weights here."""
    if is_served(e):
        raise ValueError(
            f"embedder: {e['_target_']} (a served embedder, e.g. embedder=openai) cannot be used here, "
            "which needs the model's weights: use a local one (embedder=minilm, or embedder.model_path=<folder>)"
        )
    embedder = build_embedder(
        str(e["model_path"]),
        pooling=str(e["pooling"]),
        max_length=int(e["max_length"]),
        instruction=str(e["instruction"]),
        dtype=str(e["dtype"]),
        runtime=str(e.get("runtime", "torch")),
        device=str(e.get("device", "auto")),
    )
    model_id = (
        f"{Path(str(e['model_path'])).name}|{e['pooling']}|{e['max_length']}|{e['dtype']}|{e['instruction']}"
    )
    return embedder, model_id


def embedder_fingerprint(e: Mapping[str, Any], model_id: str) -> str:
    """What an ``embedder`` section's vectors depend on: its model id (path, pooling, length,
    dtype, instruction) and the digest of its weights, so a model retrained in place is a new one."""
    weights = weights_digest(resolve_model_dir(str(e["model_path"])))
    return hashlib.sha256(f"{model_id}|{weights}".encode()).hexdigest()
