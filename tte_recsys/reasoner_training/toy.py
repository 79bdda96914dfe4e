"""A toy I2I task where a trace that names the item's category makes retrieval better.

Used by the learning tests and ``debug=tiny``: it builds, offline and in about a second, a
catalog whose items pair up within a category, a tiny random chat reasoner and a tiny random
embedder that share a word-level vocabulary of a few dozen tokens (so a random policy writes a
category word often enough for RL to find it). An item's title is two product words of its own
and its category word, which the embedder weighs little: on the title alone an item's partners
rank about 7th of 15. A trace that repeats the category word lifts them (catalog reward about
+0.15 at ``w = 1``, the toy's fusion weight), one that names another category pushes them down
(about -0.1), another item's product words do little.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from tte_recsys.reasoner_training.tasks import Side, TrainingPair, item_side
from tte_recsys.tte.items import ItemInput
from tte_recsys.tte.reasoner.prompts import PromptTemplate
from tte_recsys.tte.tiny import CHAT_TEMPLATE

__all__ = ["CATEGORIES", "TOY_PROMPT", "TOY_WEIGHT", "ToyTask", "build_toy_models", "toy_task"]

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
]  # two per item, never shared
_CATEGORY_DIMS = 8  # the embedder's dimensions that hold the category words
_CATEGORY_SCALE = 0.35  # the embedder's final norm weight there: a category word counts 0.35 of a word
_WORDS = ["system", "user", "assistant", "item", "title:", "reasoning:", "<think>", "</think>"]
_SPECIALS = ["<|pad|>", "<|endoftext|>", "<|im_start|>", "<|im_end|>", "[UNK]"]
TOY_WEIGHT = 1.0  # the fusion weight w of the toy's embedder (train_reasoner's toy and the learning tests)
# The learning tests' prompt: the item alone. In item_card's 40-token prompt the tiny reasoner
# learns to read the title's words several times slower (a CPU test's budget); debug=tiny uses cfg.prompt.
TOY_PROMPT = PromptTemplate("toy", "v1", "", "{content}")


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
    tok: PreTrainedTokenizerFast,
    out: Path,
    hidden: int,
    seed: int,
    bag_of_words: bool = False,
    category_scale: float = 1.0,
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
        # The embedder: its blocks add nothing (zero output projections) and the final RMSNorm
        # scales every token to one norm, so mean pooling is the mean of the content words'
        # directions; template words (chat roles, title:, tags) are zero. Category words live in
        # their own dimensions, which the final norm scales down: a title says little about its
        # category, a trace of the category word alone says it fully (a trace is embedded alone
        # and normalised). Cosine ~ shared content words, by construction.
        with torch.no_grad():
            for layer in model.model.layers:
                layer.self_attn.o_proj.weight.zero_()
                layer.mlp.down_proj.weight.zero_()
            emb = model.model.embed_tokens.weight
            emb.normal_(0.0, 1.0)
            k = _CATEGORY_DIMS
            cat_ids = [tok.convert_tokens_to_ids(w) for w in CATEGORIES]
            for i in range(emb.shape[0]):
                if i in cat_ids:
                    emb[i, k:] = 0.0
                else:
                    emb[i, :k] = 0.0
            model.model.norm.weight[:k] = category_scale
            for w in _SPECIALS + _WORDS:  # template words carry no content: zero, so they change no cosine
                emb[tok.convert_tokens_to_ids(w)] = 0.0
    model.save_pretrained(out)
    tok.save_pretrained(out)
    # the model type would load a BPE Qwen2 tokenizer: keep the word-level one this folder holds
    conf = out / "tokenizer_config.json"
    conf.write_text(json.dumps({**json.loads(conf.read_text()), "tokenizer_class": "TokenizersBackend"}))
    return out


def build_toy_models(
    root: str | Path, seed: int = 0, category_scale: float = _CATEGORY_SCALE
) -> tuple[Path, Path]:
    """(reasoner folder, embedder folder) under ``root``: tiny Llama models (SmolLM2's family) on
    the toy vocabulary; the reasoner is random (64 wide: at 32 it learned to copy a word of its
    prompt several times slower), the embedder a bag of words by construction, counting a
    category word ``category_scale`` of a product word (1: a title says its category as loudly
    as its product words)."""
    r = Path(root)
    tok = _tokenizer()
    return _llama(tok, r / "toy-reasoner", 64, seed), _llama(
        tok, r / "toy-embedder", 64, seed + 1, bag_of_words=True, category_scale=category_scale
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
            a, b = 2 * i, 2 * i + 1
            rows.append({"item_id": f"toy{i}", "title": f"{words[a]} {words[b]} {cat}", "category": cat})
        self.items = pl.DataFrame(rows)

    def item(self, i: int) -> ItemInput:
        """Item ``i`` as the catalog holds it (its title field)."""
        row = self.items.row(i, named=True)
        return ItemInput(row["item_id"], {"title": row["title"]})

    def side(self, i: int) -> Side:
        return item_side(self.item(i))

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
