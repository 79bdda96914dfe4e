"""The embedder: a local HF backbone + pooling (or meta-queries), L2-normalised output.

``encode()`` is the public inference API: eval + inference mode, one tokenisation pass over all
texts, batches of similar token length (sorted), results back in input order.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from tte_recsys.progress import progress
from tte_recsys.tte.pooling import MetaQueries
from tte_recsys.tte.vision import ImageInputs, VisionAdapter

__all__ = ["Embedder", "Encoder"]


class Encoder(Protocol):
    """What encodes inputs, wherever the model runs: the local :class:`Embedder` (and its ONNX
    subclass) or a served one such as :class:`~tte_recsys.tte.openai_embedder.OpenAIEmbedder`.
    ``dim`` is the vector width (a served embedder knows it once it has encoded)."""

    @property
    def dim(self) -> int: ...

    def encode(
        self,
        texts: Sequence[str],
        batch_size: int = ...,
        show_progress: bool = ...,
        images: Sequence[str | Sequence[str] | None] | None = ...,
    ) -> np.ndarray: ...


class Embedder(nn.Module):
    """Text -> L2-normalised vector(s).

    Args:
        backbone: a Hugging Face base model (encoder or decoder) returning ``last_hidden_state``.
        tokenizer: its tokenizer.
        pooling: a pooler (``hidden (B, L, D), mask (B, L) -> (B, D)``) or :class:`MetaQueries`.
        max_length: tokens kept per input (truncation).
        instruction: text put before every input (e.g. a task instruction for instruct embedders).
        vision: image inputs for a Qwen2-VL-style backbone (None: text only; images are ignored).

    ``forward`` returns (B, D), or (B, H, D) with H meta-query heads.

    Example::

        emb = build_embedder("minilm")  # tte_recsys.tte.factory
        vecs = emb.encode(["Toy Story (1995)", "Heat (1995)"])  # (2, 384) numpy, unit rows
    """

    def __init__(
        self,
        backbone: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        pooling: nn.Module,
        max_length: int = 256,
        instruction: str = "",
        vision: VisionAdapter | None = None,
    ) -> None:
        super().__init__()
        if vision is not None and isinstance(pooling, MetaQueries):
            raise ValueError(
                "meta-query pooling with image inputs is not supported; use last or mean pooling"
            )
        self.vision = vision
        self.backbone, self.tokenizer, self.pooling = backbone, tokenizer, pooling
        self.max_length, self.instruction = max_length, instruction
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token

    @property
    def dim(self) -> int:
        """The backbone's hidden size (a vision-language model's is its text model's)."""
        return int(self.backbone.config.get_text_config().hidden_size)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **images: torch.Tensor
    ) -> torch.Tensor:
        """(B, L) token ids and mask (+ image inputs) -> (B, D) or (B, H, D) unit vectors."""
        if isinstance(self.pooling, MetaQueries):
            embeds = self.backbone.get_input_embeddings()(input_ids)  # (B, L, D)
            embeds, mask = self.pooling.append(embeds, attention_mask)  # (B, L + HQ, D), (B, L + HQ)
            # Positions from the mask: the result does not depend on padding side or amount.
            pos = (mask.cumsum(1) - 1).clamp(min=0)  # (B, L + HQ)
            out = self.backbone(inputs_embeds=embeds, attention_mask=mask, position_ids=pos)
            return F.normalize(self.pooling.pool(out.last_hidden_state).float(), dim=-1)  # (B, H, D)
        out = self.backbone(input_ids=input_ids, attention_mask=attention_mask, **images)
        return F.normalize(self.pooling(out.last_hidden_state, attention_mask).float(), dim=-1)  # (B, D)

    def token_ids(
        self, texts: Sequence[str], images: Sequence[ImageInputs | None] | None = None
    ) -> list[list[int]]:
        """Token ids per input (instruction first, truncated to ``max_length``); an image's vision
        tokens come first and are never truncated. With :meth:`embed_token_ids` the training door:
        tokenise once, keep the ids, embed them batch after batch."""
        imgs = list(images) if images is not None else [None] * len(texts)
        enc = self.tokenizer(  # one batched call: the fast tokenizer parallelises it
            [self.instruction + t for t in texts],
            truncation=True,
            max_length=self.max_length,
            return_attention_mask=False,  # rebuilt when padding; half the tokenisation time
            return_token_type_ids=False,
        )
        out = [list(x) for x in enc["input_ids"]]
        for k, img in enumerate(imgs):
            if img is not None:  # the image's tokens come first; the text gets what is left
                budget = max(self.max_length - len(img.token_ids), 1)
                ids = self.tokenizer(self.instruction + texts[k], truncation=True, max_length=budget)[
                    "input_ids"
                ]
                out[k] = [*img.token_ids, *ids]
        if empty := [k for k, x in enumerate(out) if not x]:
            raise ValueError(
                f"inputs {empty[:5]} have no tokens (empty text and no image); the embedder needs at "
                "least one token per input"
            )
        return out

    def pad_batch(
        self, ids: Sequence[Sequence[int] | np.ndarray], images: Sequence[ImageInputs | None] = ()
    ) -> dict[str, torch.Tensor]:
        """Token id lists -> the padded ``input_ids`` / ``attention_mask`` batch (the tokenizer's
        padding side; + image inputs) on the embedder's device."""
        dev = next(self.parameters()).device
        width = max(len(x) for x in ids)
        input_ids = np.full((len(ids), width), self.tokenizer.pad_token_id, dtype=np.int64)
        mask = np.zeros((len(ids), width), dtype=np.int64)
        left = self.tokenizer.padding_side == "left"
        for r, x in enumerate(ids):  # the tokenizer's pad() does the same, 3x slower
            cols = slice(width - len(x), width) if left else slice(0, len(x))
            input_ids[r, cols], mask[r, cols] = x, 1
        batch = {"input_ids": torch.from_numpy(input_ids), "attention_mask": torch.from_numpy(mask)}
        if self.vision is not None:
            batch.update(
                self.vision.batch_extras(batch["input_ids"], [im for im in images if im is not None])
            )
        return {k: v.to(dev) for k, v in batch.items()}

    @staticmethod
    def length_chunks(ids: Sequence[Sequence[int] | np.ndarray], batch_size: int) -> list[np.ndarray]:
        """Row indices of ``ids`` in batches of similar token length, longest first (memory peaks
        early, padding stays small); their concatenation is a permutation of the rows."""
        order = np.argsort([-len(x) for x in ids], kind="stable")
        return [order[start : start + batch_size] for start in range(0, len(ids), batch_size)]

    def embed_token_ids(self, ids: Sequence[Sequence[int] | np.ndarray], batch_size: int) -> torch.Tensor:
        """(n, D) unit vectors of pre-tokenised inputs (:meth:`token_ids`), rows in input order,
        with autograd (the training door; :meth:`encode` is inference). Inputs run in batches of
        ``batch_size`` of similar token length, so padding, and the activations the backward
        keeps, stay small."""
        chunks = self.length_chunks(ids, batch_size)
        out = torch.cat([self(**self.pad_batch([ids[i] for i in rows])) for rows in chunks])
        at = torch.empty(len(ids), dtype=torch.long)  # input row -> its row of out
        at[torch.from_numpy(np.concatenate(chunks))] = torch.arange(len(ids))
        return out[at.to(out.device)]

    def _run(self, batch: dict[str, torch.Tensor]) -> np.ndarray:
        """One padded batch -> (b, D) float32 numpy (the step another runtime replaces)."""
        return self(**batch).float().cpu().numpy()

    @torch.inference_mode()
    def encode(
        self,
        texts: str | Sequence[str],
        batch_size: int = 64,
        show_progress: bool = False,
        images: Sequence[str | Sequence[str] | None] | None = None,
    ) -> np.ndarray:
        """Embed one text or many: (D,) or (N, D) float32 numpy ((N, H, D) with meta-query heads).

        ``images``: per text, an image path, several (a video's frames, in order) or None, used
        by a vision-language backbone; a text-only embedder ignores them. A missing or unreadable image raises, naming the file.
        """
        single = isinstance(texts, str)
        items = [texts] if isinstance(texts, str) else list(texts)
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size}: expected >= 1")
        was_training = self.training
        self.eval()
        prepared: list[ImageInputs | None] = [None] * len(items)
        if images is not None and self.vision is not None:
            vision = self.vision
            prepared = [vision.prepare(p) if p else None for p in images]
        ids = self.token_ids(items, prepared)
        chunks = self.length_chunks(ids, batch_size)
        out: list[np.ndarray] = []
        for rows in progress(chunks, desc="encode", disable=not show_progress):
            batch = self.pad_batch([ids[i] for i in rows], [prepared[i] for i in rows])
            out.append(self._run(batch))
        self.train(was_training)
        if not out:
            return np.zeros((0, self.dim), dtype=np.float32)
        result = np.empty_like(np.concatenate(out))
        result[np.concatenate(chunks)] = np.concatenate(out)
        return result[0] if single else result
