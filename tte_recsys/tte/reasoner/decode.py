"""``reasoner.load.engine=loop``: :class:`HFReasoner`'s own decoding loop over a transformers causal LM.

Same model, same forward, same decoding rules as ``generate``; less work:

- **Shared prefix, computed once.** Every prompt of a catalog pass starts with the same chat
  header and system prompt. Its keys and values are computed once per reasoner and copied into
  each batch; only the suffix of each prompt is prefilled. The cache is laid out
  ``[prefix | padding | suffix | generated]`` with padding masked, so positions and attention are
  those of the full prompt.
- **Prefill by length groups.** The suffixes of a batch are prefilled in groups of similar length
  (:func:`length_groups`), then decoded as one batch: ``generate`` pads every prompt of a catalog
  chunk to its longest.
- **A preallocated KV cache.** Keys and values are written into one buffer per layer (transformers'
  dynamic cache concatenates the whole cache at every step, a quarter of a SmolLM2 step on CPU).
- **Finished rows leave the batch.** Once a quarter of the rows have written an end token, the
  batch is compacted (``generate`` runs every row until the last one ends).
- **Prepacked bf16 weights** on a CPU (:func:`pack_linears`): oneDNN's layout once, not per call.
- **n completions per prompt** from one prefill (best-of-k sampling).
- **Top-p from the best 64 tokens** (:func:`top_p_nucleus`), exact where they hold ``top_p``
  (else the full sort): transformers sorts the whole vocabulary of every row at every step.

A decoding step on a CPU is dominated by reading the weights (about 45 ms a step for SmolLM2 on one
shared core whatever the rows, then about 1.5 ms a row), so larger batches pay too.

Greedy output equals ``generate``'s up to floating-point rounding: the prefix and the groups go
through matrix products of other shapes, so a near-tie can break the other way in bf16 (as
``generate``'s own traces do between batch sizes). The engine is therefore in the reasoner id
(``:loop-<dtype>``), and its traces never share a cache key with ``generate``'s. Sampling draws
from its own seeded generator. Text-only causal LMs; vision-language models use
``engine=generate``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import nn
from transformers import PreTrainedModel, TopPLogitsWarper
from transformers.cache_utils import Cache, DynamicLayer

from tte_recsys.tte.reasoner.penalty import GeneratedRepetitionPenalty

__all__ = ["Decoding", "LoopDecoder", "common_prefix_len", "length_groups", "pack_linears", "top_p_nucleus"]


class _BufferLayer(DynamicLayer):
    """One layer's keys and values in a preallocated ``[rows, kv_heads, capacity, head_dim]`` buffer;
    ``update`` writes the new columns and returns views of the filled part (no concatenation)."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, filled: int) -> None:
        super().__init__()
        self.buf_k, self.buf_v, self.filled = keys, values, filled
        self.dtype, self.device = keys.dtype, keys.device
        self.is_initialized = True
        self._views()

    def _views(self) -> tuple[torch.Tensor, torch.Tensor]:
        k, v = self.buf_k[:, :, : self.filled], self.buf_v[:, :, : self.filled]
        self.keys, self.values = k, v
        return k, v

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        return None  # the buffers exist from the start

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: object, **kwargs: object
    ) -> tuple[torch.Tensor, torch.Tensor]:
        n = key_states.shape[-2]
        if self.filled + n > self.buf_k.shape[-2]:
            raise RuntimeError(f"KV buffer full: {self.filled} + {n} > {self.buf_k.shape[-2]} columns")
        self.buf_k[:, :, self.filled : self.filled + n] = key_states
        self.buf_v[:, :, self.filled : self.filled + n] = value_states
        self.filled += n
        return self._views()

    def get_seq_length(self) -> int:
        return self.filled

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self.buf_k, self.buf_v = self.buf_k[indices], self.buf_v[indices]
        self._views()


class _PackedLinear(nn.Module):
    """An ``nn.Linear`` whose bf16 weight is reordered once for oneDNN (``generate`` lets oneDNN
    reorder it at every call). Same kernel, same results bit for bit, 1.5-2x faster on CPU."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.out_features = linear.out_features
        self.packed = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), 32)
        self.bias = None if linear.bias is None else linear.bias.detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return cast(
            torch.Tensor, torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")
        )


def pack_linears(model: nn.Module) -> int:
    """Swap every bf16 ``nn.Linear`` of a CPU model for :class:`_PackedLinear`; the number swapped
    (0 where oneDNN has no bf16 on this CPU, or the model is not bf16 on the CPU)."""
    params = next(model.parameters())
    if params.device.type != "cpu" or params.dtype != torch.bfloat16:
        return 0
    if not (torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()):
        return 0
    targets = [(n, m) for n, m in model.named_modules() if type(m) is nn.Linear]
    for name, m in targets:
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, attr, _PackedLinear(m))
    return len(targets)


def common_prefix_len(seqs: list[list[int]]) -> int:
    """Length of the longest token prefix all ``seqs`` share."""
    if not seqs:
        return 0
    first, n = seqs[0], min(len(s) for s in seqs)
    for s in seqs[1:]:
        k = 0
        while k < n and s[k] == first[k]:
            k += 1
        n = k
    return n


def top_p_nucleus(
    scores: torch.Tensor, top_p: float, scan: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """transformers' top-p filter from each row's ``scan`` best tokens instead of a sort of the whole
    vocabulary (131 ms a step for 32 rows of SmolLM2's 49,152 on one core, more than the forward).

    A token is kept when the probability of the tokens ranked above it is below ``top_p`` (the
    first always). Where a row's ``scan`` best tokens hold at least ``top_p``, every kept token is
    among them. Returns ``(token ids, unnormalised probabilities)``, both ``[rows, scan]`` with zero
    weight where dropped, and ``exact`` per row (False: its best tokens hold less than ``top_p``;
    sample that row from the full sort instead)."""
    k = min(scan, scores.shape[-1])
    vals, idx = scores.topk(k, -1)
    probs = (vals - torch.logsumexp(scores, -1, keepdim=True)).exp()
    keep = (probs.cumsum(-1) - probs) < top_p
    keep[:, 0] = True
    return idx, probs * keep, probs.sum(-1) >= top_p


def length_groups(lengths: list[int], overhead: int) -> list[tuple[int, int]]:
    """Split ascending ``lengths`` into contiguous ``[a, b)`` groups, each prefilled padded to its
    longest, minimising the padded tokens plus ``overhead`` tokens per group (what one more
    forward costs: the weights are read once per call)."""
    best, cut = [0] + [1 << 62] * len(lengths), [0] * (len(lengths) + 1)
    for b in range(1, len(lengths) + 1):
        for a in range(b):
            cost = best[a] + overhead + (b - a) * lengths[b - 1]
            if cost < best[b]:
                best[b], cut[b] = cost, a
    groups, b = [], len(lengths)
    while b > 0:
        groups.append((cut[b], b))
        b = cut[b]
    return groups[::-1]


@dataclass(frozen=True)
class Decoding:
    """The decoding rules (those of :class:`~tte_recsys.tte.reasoner.backends.GenerationSettings`)."""

    max_new_tokens: int
    pad_id: int
    eos_ids: tuple[int, ...]
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    penalty_scope: str = "generated"


class LoopDecoder:
    """Batched decoding of token-id prompts with a shared-prefix, preallocated KV cache.

    Args:
        model: a transformers causal LM (eval mode).
        decoding: the decoding rules.
        min_prefix: a shared prefix shorter than this is not worth a separate forward: prefill whole.
        compact_at: compact the batch once this fraction of its rows has finished.
        group_overhead: the prompts of a batch are prefilled in groups of similar length
            (:func:`length_groups`), a group costing this many tokens more than its padded size.
        nucleus_scan: top-p sampling looks at each row's this many best tokens
            (:func:`top_p_nucleus`), sorting the whole vocabulary only where they hold too little.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        decoding: Decoding,
        min_prefix: int = 8,
        compact_at: float = 0.25,
        group_overhead: int = 64,
        nucleus_scan: int = 64,
    ) -> None:
        if not decoding.eos_ids:
            raise ValueError(
                "engine=loop needs an end token: the model's generation_config has no eos_token_id"
            )
        self.model, self.decoding = model, decoding
        self.min_prefix, self.compact_at, self.group_overhead = min_prefix, compact_at, group_overhead
        self.nucleus_scan = nucleus_scan
        self._prefix: tuple[tuple[int, ...], list[tuple[torch.Tensor, torch.Tensor]]] | None = None
        self._eos = torch.tensor(decoding.eos_ids, device=model.device)

    def _prefix_kv(self, ids: tuple[int, ...]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per-layer keys and values ``[1, kv_heads, len(ids), head_dim]`` of ``ids``, kept for the next batch."""
        if self._prefix is None or self._prefix[0] != ids:
            x = torch.tensor([ids], device=self.model.device)
            out = self.model(input_ids=x, use_cache=True, logits_to_keep=1)
            cache = out.past_key_values
            self._prefix = (ids, [(layer.keys, layer.values) for layer in cache.layers])
        return self._prefix[1]

    def _scores(
        self, logits: torch.Tensor, history: torch.Tensor, gen: torch.Generator | None
    ) -> torch.Tensor:
        """The next token of every row: repetition penalty, then greedy or temperature / top-p sampling."""
        d = self.decoding
        scores = logits.float()
        if d.repetition_penalty != 1.0 and history.shape[1] > 0:
            scores = GeneratedRepetitionPenalty(d.repetition_penalty, 0)(history, scores)  # type: ignore[arg-type]
        if not d.do_sample:
            return scores.max(-1).indices  # the first maximum, as argmax (and 3x faster on a CPU)
        scores = scores / d.temperature
        if d.top_p >= 1.0:
            return torch.multinomial(torch.softmax(scores, -1), 1, generator=gen).squeeze(1)
        idx, weights, exact = top_p_nucleus(scores, d.top_p, self.nucleus_scan)
        tok = idx.gather(1, torch.multinomial(weights, 1, generator=gen)).squeeze(1)
        if not bool(exact.all()):  # rows whose best tokens hold less than top_p: the full sort
            rows = (~exact).nonzero().squeeze(1)
            full = TopPLogitsWarper(d.top_p)(history[rows], scores[rows])
            tok[rows] = torch.multinomial(torch.softmax(full, -1), 1, generator=gen).squeeze(1)
        return tok

    @torch.inference_mode()
    def generate(self, prompts: list[list[int]], seed: int | None = None, n: int = 1) -> list[list[int]]:
        """The new token ids of each prompt (up to its end token, included), in the order given.
        ``seed`` seeds sampling (this batch only; the global RNG is untouched). ``n`` > 1: ``n``
        completions per prompt (prompt-major, as ``num_return_sequences``), the prompt prefilled
        once and its cache copied ``n`` times (``generate`` prefills each copy)."""
        d, dev = self.decoding, self.model.device
        if n < 1:
            raise ValueError(f"n={n}: expected >= 1 completions per prompt")
        if not prompts:
            return []
        if min(len(p) for p in prompts) == 0:
            raise ValueError("engine=loop: an empty prompt")
        perm = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        prompts = [prompts[i] for i in perm]  # shortest first; the output is put back in order
        rows = len(prompts)
        lcp = min(common_prefix_len(prompts), len(prompts[0]) - 1)  # >= 1 token left to prefill
        plen = lcp if lcp >= self.min_prefix and rows > 1 else 0  # one prompt: nothing to share
        lens = [len(p) - plen for p in prompts]
        width = plen + lens[-1]
        cap = width + d.max_new_tokens
        mask = torch.ones((rows, cap), dtype=torch.long)
        for i, n_i in enumerate(lens):
            mask[i, plen : width - n_i] = 0  # [prefix | padding | suffix | generated]
        mask = mask.to(dev)

        cfg = self.model.config.get_text_config()
        heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        layers: list[_BufferLayer] = []
        prefix = self._prefix_kv(tuple(prompts[0][:plen])) if plen else None
        for li in range(cfg.num_hidden_layers):
            k = torch.empty((rows, heads, cap, head_dim), dtype=self.model.dtype, device=dev)
            v = torch.empty_like(k)
            if prefix is not None:
                k[:, :, :plen] = prefix[li][0]
                v[:, :, :plen] = prefix[li][1]
            layers.append(_BufferLayer(k, v, width))

        history = torch.empty((rows, 0), dtype=torch.long, device=dev)
        if d.penalty_scope == "all":
            # transformers' penalty covers the prompt, not its padding: pad with a token of the prompt (a no-op)
            full = max(len(p) for p in prompts)
            history = torch.tensor([[p[0]] * (full - len(p)) + p for p in prompts], device=dev)
        gen = torch.Generator(device=dev).manual_seed(seed) if d.do_sample and seed is not None else None

        logits = torch.empty((rows, 0))
        for a, b in length_groups(lens, self.group_overhead):  # prefill each group at its own width
            ws = lens[b - 1]
            ids = torch.full((b - a, ws), d.pad_id, dtype=torch.long)
            smask = torch.zeros((b - a, ws), dtype=torch.long)
            for j, p in enumerate(prompts[a:b]):
                ids[j, ws - lens[a + j] :] = torch.tensor(p[plen:])
                smask[j, ws - lens[a + j] :] = 1
            group = []
            for layer in layers:
                layer.buf_k[a:b, :, plen : width - ws] = 0  # masked, but must be finite
                layer.buf_v[a:b, :, plen : width - ws] = 0
                group.append(_BufferLayer(layer.buf_k[a:b], layer.buf_v[a:b], width - ws))
            out = self.model(
                input_ids=ids.to(dev),
                attention_mask=mask[a:b, :width],
                position_ids=(plen + smask.cumsum(-1) - 1).masked_fill(smask == 0, 0).to(dev),
                past_key_values=Cache(layers=cast(list[Any], group)),
                use_cache=True,
                logits_to_keep=1,
            )
            part = out.logits[:, -1]
            if logits.shape[1] == 0:
                logits = torch.empty((rows, part.shape[1]), dtype=part.dtype, device=dev)
            logits[a:b] = part
        for layer in layers:
            layer._views()
        cache = Cache(layers=cast(list[Any], layers))
        pos = torch.tensor([[plen + n_i - 1] for n_i in lens], device=dev)
        if n > 1:  # n completions per prompt share its prefill
            copies = torch.arange(rows, device=dev).repeat_interleave(n)
            for layer in layers:
                layer.batch_select_indices(copies)
            logits, history, mask, pos = logits[copies], history[copies], mask[copies], pos[copies]
            rows *= n
        live = torch.arange(rows, device=dev)  # original row of each batch row
        done = torch.zeros(rows, dtype=torch.bool, device=dev)
        next_pos = pos + 1
        written: list[list[int]] = [[] for _ in range(rows)]
        for t in range(d.max_new_tokens):
            tok = self._scores(logits, history, gen)
            tok = torch.where(done, torch.full_like(tok, d.pad_id), tok)
            for r, w, finished in zip(live.tolist(), tok.tolist(), done.tolist(), strict=True):
                if not finished:  # the end token too, as generate returns it (decoding drops it if special)
                    written[r].append(w)
            done = done | torch.isin(tok, self._eos)
            if bool(done.all()) or t == d.max_new_tokens - 1:
                break
            history = torch.cat([history, tok[:, None]], 1)
            if float(done.float().mean()) >= self.compact_at:  # drop the finished rows
                keep = (~done).nonzero().squeeze(1)
                for layer in layers:
                    layer.batch_select_indices(keep)
                live, done, tok = live[keep], done[keep], tok[keep]
                history, next_pos, mask = history[keep], next_pos[keep], mask[keep]
            col = width + t
            out = self.model(
                input_ids=tok[:, None],
                attention_mask=mask[:, : col + 1],
                position_ids=next_pos,
                past_key_values=cache,
                use_cache=True,
                logits_to_keep=1,
            )
            logits = out.logits[:, -1]
            next_pos = next_pos + 1
        ordered: list[list[int]] = [[] for _ in written]
        for j, i in enumerate(perm):
            ordered[i * n : (i + 1) * n] = written[j * n : (j + 1) * n]
        return ordered
