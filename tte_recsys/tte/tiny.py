"""Tiny random chat models for tests and benchmarks, built offline in well under a second.

A byte-level BPE tokenizer is trained on a few sentences with the ``tokenizers`` library and
given a ChatML template; a Qwen2 causal LM (hidden 32, 2 layers) is built from a config. Both
are saved like any Hugging Face model folder, so the code under test loads them the real way.
"""

from __future__ import annotations

from pathlib import Path
from typing import cast

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

__all__ = ["CHAT_TEMPLATE", "VISION_TOKENS", "build_tiny_qwen", "build_tiny_qwen2_vl", "tiny_tokenizer"]

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_CORPUS = [
    "the item is a calculator for school and office work",
    "a comedy film about friends, romance and a road trip",
    "think about what users want next: binders, pens, paper",
    "<think> reasoning </think> summary line",
] * 20


def tiny_tokenizer(vocab_size: int = 300) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer with pad / eos / ChatML special tokens and a chat template."""
    specials = ["<|pad|>", "<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tk = Tokenizer(models.BPE(unk_token=None))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.train_from_iterator(
        _CORPUS,
        trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=specials,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<|pad|>", eos_token="<|im_end|>")
    tok.chat_template = CHAT_TEMPLATE
    return tok


def build_tiny_qwen(out_dir: str | Path, hidden: int = 32, layers: int = 2, seed: int = 0) -> Path:
    """Save a tiny random Qwen2 causal LM + tokenizer to ``out_dir``; returns the folder."""
    d = Path(out_dir)
    tok = tiny_tokenizer()
    tok.save_pretrained(d)
    torch.manual_seed(seed)
    cfg = Qwen2Config(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        tie_word_embeddings=True,
    )
    Qwen2ForCausalLM(cfg).save_pretrained(d)
    return d


VISION_TOKENS = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]


def build_tiny_qwen2_vl(out_dir: str | Path, seed: int = 0) -> Path:
    """Save a tiny random Qwen2-VL (vision depth 1, text hidden 32) + tokenizer + image processor."""
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLImageProcessorPil

    d = Path(out_dir)
    tok = tiny_tokenizer()
    tok.add_special_tokens({"additional_special_tokens": VISION_TOKENS})
    tok.save_pretrained(d)
    Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=112 * 112).save_pretrained(d)
    vs, ve, img, vid = cast(list[int], tok.convert_tokens_to_ids(VISION_TOKENS))
    torch.manual_seed(seed)
    cfg = Qwen2VLConfig(
        text_config={
            "vocab_size": len(tok),
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 512,
            "rope_scaling": {"type": "mrope", "mrope_section": [1, 1, 2]},
            "pad_token_id": tok.pad_token_id,
            "eos_token_id": tok.eos_token_id,
            "bos_token_id": None,
        },
        vision_config={
            "depth": 1,
            "embed_dim": 32,
            "hidden_size": 32,
            "num_heads": 2,
            "mlp_ratio": 2,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "in_channels": 3,
        },
        image_token_id=img,
        video_token_id=vid,
        vision_start_token_id=vs,
        vision_end_token_id=ve,
    )
    Qwen2VLForConditionalGeneration(cfg).save_pretrained(d)
    return d
