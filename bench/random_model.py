"""A model folder with the architecture and tokenizer of another one and random weights: for
throughput runs where the real weights cannot travel (the lent GPU machine takes at most 64 MiB,
MiniLM's weights are 87 MiB). Same shapes, so the same work per item; the vectors mean nothing.

    python bench/random_model.py SRC_DIR DST_DIR    # SRC_DIR: config.json + tokenizer files
"""

from __future__ import annotations

import shutil
import sys

import torch
from transformers import AutoConfig, AutoModel


def main() -> None:
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    src, dst = sys.argv[1:3]
    shutil.copytree(src, dst, dirs_exist_ok=True, ignore=shutil.ignore_patterns("*.safetensors", "*.bin"))
    torch.manual_seed(0)
    AutoModel.from_config(AutoConfig.from_pretrained(src)).save_pretrained(dst)
    print("random-weight model in", dst)


if __name__ == "__main__":
    main()
