"""Shared fixtures: tiny tables built in code, and Hydra composition of the real configs."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import polars as pl
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from tte_recsys.data.dataset import Dataset

os.environ.setdefault("HF_HUB_OFFLINE", "1")
CONFIG_DIR = str(Path(__file__).resolve().parents[1] / "configs")


def make_dataset(rows: list[tuple[str, str, int]], items: dict[str, list[str]] | None = None) -> Dataset:
    """A dataset from (user, item, timestamp) rows; ``items`` maps item id -> genres."""
    ids = sorted({r[1] for r in rows} | set(items or {}))
    genres = items or {}
    it = pl.DataFrame(
        {
            "item_id": ids,
            "title": [f"item {i}" for i in ids],
            "text": [""] * len(ids),
            "image_path": pl.Series([None] * len(ids), dtype=pl.String),
            "genres": [genres.get(i, []) for i in ids],
        },
        schema_overrides={"genres": pl.List(pl.String)},
    )
    inter = pl.DataFrame(
        {
            "user_id": [r[0] for r in rows],
            "item_id": [r[1] for r in rows],
            "timestamp": [r[2] for r in rows],
            "weight": pl.Series([None] * len(rows), dtype=pl.Float64),
        },
        schema_overrides={"timestamp": pl.Int64},
    )
    return Dataset.build("tiny", it, inter)


@pytest.fixture
def compose_cfg(tmp_path: Path) -> Callable[..., DictConfig]:
    """Compose a pipeline's real config with overrides, writing into ``tmp_path``."""

    def _compose(config_name: str, overrides: list[str] | None = None) -> DictConfig:
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            return compose(config_name, overrides=[f"output_dir={tmp_path / 'out'}", *(overrides or [])])

    return _compose


_CORPUS = [
    "the item is a calculator for school and office work",
    "a comedy film about friends, romance and a road trip",
    "think about what users want next: binders, pens, paper",
    "<think> reasoning </think> summary line",
] * 20
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture(scope="session")
def tiny_qwen_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Qwen2 causal LM + a BPE tokenizer trained here, saved like a real model folder."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    d = tmp_path_factory.mktemp("tiny_qwen")
    specials = ["<|pad|>", "<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tk = Tokenizer(models.BPE(unk_token=None))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.train_from_iterator(
        _CORPUS,
        trainers.BpeTrainer(
            vocab_size=300, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
        ),
    )
    from tokenizers import decoders

    tk.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk, pad_token="<|pad|>", eos_token="<|im_end|>", bos_token=None, unk_token=None
    )
    tok.chat_template = CHAT_TEMPLATE
    tok.save_pretrained(d)
    torch.manual_seed(0)
    cfg = Qwen2Config(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        tie_word_embeddings=True,
    )
    Qwen2ForCausalLM(cfg).save_pretrained(d)
    return d
