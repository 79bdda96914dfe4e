"""The multi-task, multi-head (MTMH) item tower, shared by trigger and candidate
(docs/design.md, "MTMH model and losses").

``item id + categorical features (TorchRec EBC) ++ content vector -> trunk MLP -> heads``, each head
an L2-normalised vector. The content vector comes from a content tower: ``none`` (id-only model),
``frozen`` (vectors of the batch embedding job, looked up by item code, never trained) or
``trainable`` (the TTE embedder with LoRA inside the model, tokenising the batch's item texts).
The model returns per-head embeddings; the losses live in :mod:`tte_recsys.losses`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import numpy as np
import polars as pl
import torch
import torch.nn.functional as F
from torch import nn
from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, KeyedJaggedTensor, PoolingType

from tte_recsys.models.content import CONTENT_MODES, ContentTower

__all__ = ["ItemFeatures", "MTMHModel", "ModelConfig", "table_name"]

ID_FEATURE = "item_id"


@dataclass(frozen=True)
class ModelConfig:
    """Shape of the item tower.

    Attributes:
        heads: output heads, in order; the first is the co-engagement head. Known: ``coeng``, ``semantic``.
        id_dim: item-id embedding size.
        features: categorical item attributes (list-of-string catalog columns), one table each, mean-pooled.
        feature_dim: embedding size of each categorical feature.
        hidden: trunk MLP layer sizes (ReLU).
        head_dim: size of every head's output vector (None: the content size, or 64 without content).
        content: ``none``, ``frozen`` or ``trainable``.
        content_dim: the content vectors' size, checked against the content tower (None: take its size).
        cold_without_id: feed items that have no train interactions without their id feature (an
            empty bag: a zero vector), instead of their never-trained random id embedding; pairs
            with ``trainer.id_dropout`` so the model has seen such inputs. The same as ``min_id_count=1``.
        min_id_count: items with fewer train interactions than this are fed without their id
            feature, in training and at serving: the frequency threshold of an id vocabulary. Such
            items are then placed by their categoricals and content alone, the way cold items are,
            and they train that path as targets. 0: every item has its id.
        content_skip: every head also gets a linear map of the content vector, initialised to keep
            its cosines (identity when ``head_dim`` equals the content size, else orthonormal rows),
            while the trunk's contribution starts at zero: training starts from content-only
            retrieval and learns co-engagement on top of it instead of re-learning content.
        trace_input: the content vector is the item's vector followed by its trace vector (the
            mean embedding of its reasoning traces, zero without one; equal sizes). The trunk
            reads both; the skip maps the item half as above and the trace half through its own
            projection, initialised to zero: the model starts as the one without traces and learns
            from co-engagement how far to trust the trace (KAR's adaptor; docs/design.md, "How a
            trace reaches a vector").
        trace_to_trunk: with ``trace_input``, the trunk MLP reads the trace half too; False: only
            the heads' zero-initialised trace projection sees it (a linear, per-head use of the
            trace that cannot fit train pairs through the trunk's nonlinear capacity).
        trace_gate: with ``trace_input``, how each head's skip uses the trace half: ``projection``
            (its own linear map, zero at the start) or ``scalar`` (one learned weight per head,
            zero at the start: the skip maps ``v_item + g_h * v_trace``, a fusion weight learned
            from co-engagement, with nothing else to fit).
    """

    heads: tuple[str, ...] = ("coeng", "semantic")
    id_dim: int = 64
    features: tuple[str, ...] = ()
    feature_dim: int = 16
    hidden: tuple[int, ...] = (256,)
    head_dim: int | None = None
    content: str = "frozen"
    content_dim: int | None = None
    content_skip: bool = True
    cold_without_id: bool = False
    min_id_count: int = 0
    trace_input: bool = False
    trace_to_trunk: bool = True
    trace_gate: str = "projection"

    def no_id(self, item_counts: np.ndarray) -> np.ndarray | None:
        """``ItemFeatures.no_id`` for items with these train interaction counts: True below
        ``min_id_count`` (at least 1 with ``cold_without_id``); None when every item keeps its id."""
        threshold = max(self.min_id_count, int(self.cold_without_id))
        return np.asarray(item_counts) < threshold if threshold else None

    def __post_init__(self) -> None:
        known = ("coeng", "semantic")
        bad = [h for h in self.heads if h not in known]
        if not self.heads or bad or len(set(self.heads)) != len(self.heads):
            raise ValueError(
                f"model.heads={list(self.heads)}: expected distinct names from {list(known)}"
                + (f"; unknown: {bad}" if bad else "")
            )
        if self.content not in CONTENT_MODES:
            raise ValueError(f"model.content={self.content!r}: expected one of {list(CONTENT_MODES)}")
        if self.trace_input and self.content != "frozen":
            raise ValueError(
                f"model.trace_input=true needs model.content=frozen (the trace vectors are looked up "
                f"beside the content vectors), not {self.content!r}"
            )
        if self.trace_gate not in ("projection", "scalar"):
            raise ValueError(
                f"model.trace_gate={self.trace_gate!r}: expected one of ['projection', 'scalar']"
            )
        if self.min_id_count < 0:
            raise ValueError(f"model.min_id_count={self.min_id_count}: expected >= 0")
        for name in ("id_dim", "feature_dim", "head_dim"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"model.{name}={getattr(self, name)}: expected >= 1")
        if not self.hidden or min(self.hidden) < 1:
            raise ValueError(f"model.hidden={list(self.hidden)}: expected a non-empty list of sizes >= 1")


def table_name(feature: str) -> str:
    return f"t_{feature}"


@dataclass(frozen=True)
class ItemFeatures:
    """Every item's sparse features as numpy CSR arrays (picklable, no polars: safe in workers).

    Attributes:
        num_items: catalog size; feature ``item_id`` is the item code itself.
        vocab: feature -> its values in code order (the code is the index).
        offsets, values: feature -> CSR offsets (N + 1,) and value codes of each item's values.
        no_id: (N,) True for items fed without their id feature (items with too few
            train interactions, ``ModelConfig.no_id``); None: none.
    """

    num_items: int
    vocab: dict[str, list[str]]
    offsets: dict[str, np.ndarray]
    values: dict[str, np.ndarray]
    no_id: np.ndarray | None = None

    @classmethod
    def from_items(
        cls, items: pl.DataFrame, features: Sequence[str], no_id: np.ndarray | None = None
    ) -> ItemFeatures:
        """From the canonical items table; ``features`` are list-of-string columns."""
        vocab: dict[str, list[str]] = {}
        offsets: dict[str, np.ndarray] = {}
        values: dict[str, np.ndarray] = {}
        for f in features:
            if f not in items.columns or items.schema[f] != pl.List(pl.String):
                lists = [c for c, dt in items.schema.items() if dt == pl.List(pl.String)]
                raise ValueError(
                    f"model.features: {f!r} is not a list-of-strings column of the items table; available: {lists}"
                )
            col = items[f].fill_null(pl.lit([], dtype=pl.List(pl.String)))
            lengths = col.list.len().to_numpy().astype(np.int64)
            flat = col.explode().drop_nulls()
            names = sorted(flat.unique().to_list())
            index = {v: i for i, v in enumerate(names)}
            vocab[f] = names
            offsets[f] = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
            values[f] = np.array([index[v] for v in flat.to_list()], dtype=np.int64)
        return cls(num_items=items.height, vocab=vocab, offsets=offsets, values=values, no_id=no_id)

    @property
    def names(self) -> list[str]:
        return [ID_FEATURE, *self.vocab]

    def num_embeddings(self) -> dict[str, int]:
        return {ID_FEATURE: self.num_items, **{f: max(len(v), 1) for f, v in self.vocab.items()}}

    def lookup(self, codes: np.ndarray, drop_id: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """KJT ``values`` and ``lengths`` (feature-major) for a batch of item codes.

        An item gets an empty id bag when ``no_id`` marks it, or where ``drop_id`` (B,) is True
        (training-time id dropout)."""
        codes = np.asarray(codes, dtype=np.int64)
        has = np.ones(len(codes), dtype=bool) if self.no_id is None else ~self.no_id[codes]
        if drop_id is not None:
            has &= ~drop_id
        vals, lens = [codes[has]], [has.astype(np.int64)]
        for f in self.vocab:
            off, v = self.offsets[f], self.values[f]
            start, end = off[codes], off[codes + 1]
            lens.append(end - start)
            total = int((end - start).sum())
            # Concatenated ranges without a Python loop: position within each item's range.
            idx = np.repeat(start - np.concatenate([[0], np.cumsum(end - start)[:-1]]), end - start)
            vals.append(v[idx + np.arange(total)])
        return np.concatenate(vals), np.concatenate(lens)

    def kjt(self, codes: np.ndarray) -> KeyedJaggedTensor:
        return self.kjt_from_arrays(*self.lookup(codes))

    def kjt_from_arrays(self, values: np.ndarray, lengths: np.ndarray) -> KeyedJaggedTensor:
        """The KJT of :meth:`lookup`'s arrays, on the CPU (encoding items; training batches get the
        same KJT from ``training.batches.PackedBatch`` without a device sync)."""
        return KeyedJaggedTensor.from_lengths_sync(
            keys=self.names,
            values=torch.from_numpy(np.asarray(values)),
            lengths=torch.from_numpy(np.asarray(lengths)).to(torch.int32),
        )


class MTMHModel(nn.Module):
    """The shared item tower. ``forward(features, codes)`` -> ``{head: (B, head_dim) unit vectors}``.

    Args:
        cfg: shapes and heads.
        num_embeddings: feature -> table rows (``item_id`` first), e.g. from :meth:`ItemFeatures.num_embeddings`.
        content: the content tower (None when ``cfg.content == "none"``).
        device: ``meta`` for a model that ``DistributedModelParallel`` will shard, ``cpu`` otherwise.
    """

    def __init__(
        self,
        cfg: ModelConfig,
        num_embeddings: dict[str, int],
        content: ContentTower | None = None,
        device: torch.device | str = "cpu",
    ) -> None:
        super().__init__()
        if (content is None) != (cfg.content == "none"):
            raise ValueError(
                f"model.content={cfg.content!r} but a content tower was{' not' * (content is None)} given"
            )
        if content is not None and cfg.content_dim is not None and content.dim != cfg.content_dim:
            raise ValueError(
                f"model.content_dim={cfg.content_dim} but the content tower gives {content.dim}-dim vectors"
            )
        self.cfg = cfg
        self.features = list(num_embeddings)
        if not self.features or self.features[0] != ID_FEATURE:
            raise ValueError(f"num_embeddings must start with {ID_FEATURE!r}, got {self.features}")
        tables = [
            EmbeddingBagConfig(
                name=table_name(f),
                embedding_dim=cfg.id_dim if f == ID_FEATURE else cfg.feature_dim,
                num_embeddings=n,
                feature_names=[f],
                pooling=PoolingType.SUM if f == ID_FEATURE else PoolingType.MEAN,
            )
            for f, n in num_embeddings.items()
        ]
        self.ebc = EmbeddingBagCollection(tables=tables, device=torch.device(device))
        self.content = content
        if cfg.trace_input and (content is None or content.dim % 2):
            raise ValueError(
                "model.trace_input=true: the content table must hold item and trace vectors of one "
                f"size side by side (an even width), got {content.dim if content else 0}"
            )
        item_dim = content.dim // (2 if cfg.trace_input else 1) if content is not None else 0
        # what the trunk reads of the content vector: all of it, or the item half alone
        self._trunk_content = item_dim if cfg.trace_input and not cfg.trace_to_trunk else None
        trunk_content = self._trunk_content or (content.dim if content is not None else 0)
        in_dim = cfg.id_dim + cfg.feature_dim * (len(self.features) - 1) + trunk_content
        layers: list[nn.Module] = []
        for width in cfg.hidden:
            layers += [nn.Linear(in_dim, width), nn.ReLU()]
            in_dim = width
        self.trunk = nn.Sequential(*layers)
        self.head_dim = cfg.head_dim or (item_dim if content is not None else 64)
        self.heads = nn.ModuleDict({h: nn.Linear(in_dim, self.head_dim) for h in cfg.heads})
        self.skips = nn.ModuleDict()
        # scalar trace gates: the skip reads v_item + g_h * v_trace (item-sized); None: it reads all
        self.trace_gates = (
            nn.ParameterDict({h: nn.Parameter(torch.zeros(1)) for h in cfg.heads})
            if cfg.trace_input and cfg.trace_gate == "scalar"
            else None
        )
        self._item_dim = item_dim
        if content is not None and cfg.content_skip:
            for h in cfg.heads:
                skip_in = item_dim if self.trace_gates is not None else content.dim
                skip = nn.Linear(skip_in, self.head_dim, bias=False)
                with torch.no_grad():
                    if self.head_dim == item_dim:
                        skip.weight[:, :item_dim].copy_(torch.eye(item_dim))
                    else:
                        skip.weight[:, :item_dim].copy_(
                            nn.init.orthogonal_(torch.empty(self.head_dim, item_dim))
                        )
                    skip.weight[:, item_dim:].zero_()  # the trace half (trace_input) starts unused
                    head = cast(nn.Linear, self.heads[h])
                    head.weight.zero_()
                    head.bias.zero_()
                self.skips[h] = skip

    @property
    def content_dim(self) -> int:
        return self.content.dim if self.content is not None else 0

    def forward(self, features: KeyedJaggedTensor, codes: torch.Tensor) -> dict[str, torch.Tensor]:
        # (B, sum of table dims): the EBC's KeyedTensor already holds the tables side by side, in
        # config order (= self.features); to_dict() + cat would split and copy it back together.
        parts = [self.ebc(features).values()]
        content = self.content(codes) if self.content is not None else None  # (B, content_dim)
        if content is not None:
            parts.append(content if self._trunk_content is None else content[:, : self._trunk_content])
        x = self.trunk(torch.cat(parts, dim=1))  # (B, hidden[-1])
        out = {}
        for h, head in self.heads.items():
            y = head(x)  # (B, head_dim)
            if h in self.skips:
                assert content is not None
                if self.trace_gates is not None:
                    d = self._item_dim
                    y = y + self.skips[h](content[:, :d] + self.trace_gates[h] * content[:, d:])
                else:
                    y = y + self.skips[h](content)
            out[h] = F.normalize(y, dim=-1)
        return out
