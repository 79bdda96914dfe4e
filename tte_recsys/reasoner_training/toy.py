"""A toy I2I task where a trace that names the item's category makes retrieval better.

Used by the learning tests and ``debug=tiny``: it builds, offline and in about a second, a
catalog whose items pair up within a category, a tiny random chat reasoner and a tiny random
embedder that share a word-level vocabulary of a few dozen tokens (so a random policy writes a
category word often enough for RL to find it). An item's text names its category once; a trace
that repeats it pulls the item's embedding towards its category's items, one that names another
category pushes it away.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from tte_recsys.reasoner_training.tasks import Side, TrainingPair
from tte_recsys.tte.tiny import CHAT_TEMPLATE

__all__ = ["CATEGORIES", "ToyTask", "build_toy_models", "toy_task"]

CATEGORIES = ["red", "blue", "green", "gold"]
_FILLER = [
    "lamp",
    "desk",
    "pen",
    "cup",
    "box",
    "tape",
    "clip",
    "pad",
    "ink",
    "tray",
    "fan",
    "mat",
    "bag",
    "bin",
    "card",
    "case",
    "chalk",
    "cord",
    "disk",
    "file",
    "folder",
    "glue",
    "hook",
    "jar",
    "key",
    "label",
    "lens",
    "map",
    "mug",
    "note",
    "pin",
    "plug",
]  # two per item, never shared: only category words pull items together
_WORDS = ["system", "user", "assistant", "item", "title:", "reasoning:", "<think>", "</think>"]
_SPECIALS = ["<|pad|>", "<|endoftext|>", "<|im_start|>", "<|im_end|>", "[UNK]"]


def _tokenizer() -> PreTrainedTokenizerFast:
    vocab = {w: i for i, w in enumerate(_SPECIALS + _WORDS + CATEGORIES + _FILLER)}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk, pad_token="<|pad|>", eos_token="<|im_end|>", unk_token="[UNK]"
    )
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|endoftext|>"]})
    tok.chat_template = CHAT_TEMPLATE
    return tok


def _llama(
    tok: PreTrainedTokenizerFast, out: Path, hidden: int, seed: int, bag_of_words: bool = False
) -> Path:
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        bos_token_id=None,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(cfg)
    if bag_of_words:
        # The embedder: its blocks add nothing (zero output projections), so mean pooling is the
        # mean of the token embeddings; category words weigh 3x, template words (chat roles,
        # title:, tags) are zero. Cosine ~ shared content words, by construction.
        with torch.no_grad():
            for layer in model.model.layers:
                layer.self_attn.o_proj.weight.zero_()
                layer.mlp.down_proj.weight.zero_()
            emb = model.model.embed_tokens.weight
            emb.normal_(0.0, 1.0)
            for w in CATEGORIES:
                emb[tok.convert_tokens_to_ids(w)] *= 3.0
            for w in _SPECIALS + _WORDS:  # template words carry no content: zero, so they change no cosine
                emb[tok.convert_tokens_to_ids(w)] = 0.0
    model.save_pretrained(out)
    tok.save_pretrained(out)
    # the model type would load a BPE Qwen2 tokenizer: keep the word-level one this folder holds
    conf = out / "tokenizer_config.json"
    conf.write_text(json.dumps({**json.loads(conf.read_text()), "tokenizer_class": "TokenizersBackend"}))
    return out


def build_toy_models(root: str | Path, seed: int = 0) -> tuple[Path, Path]:
    """(reasoner folder, embedder folder) under ``root``: tiny Llama models (SmolLM2's family) on
    the toy vocabulary; the reasoner is random, the embedder a bag of words by construction."""
    r = Path(root)
    tok = _tokenizer()
    return _llama(tok, r / "toy-reasoner", 32, seed), _llama(
        tok, r / "toy-embedder", 64, seed + 1, bag_of_words=True
    )


class ToyTask:
    """The toy catalog: ``items`` (id, title, category) and same-category ``pairs``."""

    def __init__(self, n_items: int, seed: int) -> None:
        if not 2 <= n_items <= len(_FILLER) // 2:
            raise ValueError(f"toy task: n_items={n_items}, expected 2..{len(_FILLER) // 2}")
        rng = np.random.default_rng(seed)
        words = rng.permutation(_FILLER)
        rows = []
        for i in range(n_items):
            cat = CATEGORIES[i % len(CATEGORIES)]
            a, b = words[2 * i], words[2 * i + 1]
            rows.append({"item_id": f"toy{i}", "title": f"{a} {b} {cat}", "category": cat})
        self.items = pl.DataFrame(rows)

    def side(self, i: int) -> Side:
        row = self.items.row(i, named=True)
        return Side(row["item_id"], f"title: {row['title']}")

    def pairs(self, n: int, seed: int) -> list[TrainingPair]:
        """``n`` (item, another item of its category) pairs, at random."""
        rng = np.random.default_rng(seed)
        cats = self.items["category"].to_list()
        by_cat: dict[str, list[int]] = {}
        for i, c in enumerate(cats):
            by_cat.setdefault(c, []).append(i)
        out = []
        for _ in range(n):
            q = int(rng.integers(len(cats)))
            t = int(rng.choice([j for j in by_cat[cats[q]] if j != q]))
            out.append(TrainingPair(self.side(q), self.side(t)))
        return out


def toy_task(n_items: int = 16, seed: int = 0) -> ToyTask:
    """A toy catalog of ``n_items`` items, 4 categories."""
    return ToyTask(n_items, seed)
