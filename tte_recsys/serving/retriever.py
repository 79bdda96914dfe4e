"""The multi-head serving retriever over a bundle written by ``pipelines.export_faiss``.

``BundleRetriever.load(bundle)`` verifies the manifest (every file's sha256, the index dims, and each
head's probe: an index built for another model answers its probe queries differently), then
answers batched queries by item id or by vector: per-head top-K, merged by quota with the
trigger and duplicates removed, every result carrying its score and the head that found it.
It also implements the ``ItemRetriever`` contract (:mod:`tte_recsys.retrieval`) (``retrieve(codes, k)``), so the
evaluation harness scores exactly what is served, and the HTTP service
(:mod:`tte_recsys.serving.service`) answers with it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import polars as pl

from tte_recsys.artifacts import MANIFEST_NAME, ManifestError, read_manifest, sha256_file
from tte_recsys.serving.bundle import KIND, query_rows, read_head_chunks
from tte_recsys.serving.faiss_index import IndexConfig, set_search_params
from tte_recsys.serving.merge import merge_by_quota, quota_shares

__all__ = ["BundleRetriever", "Hit", "QueryResult", "UnknownHead"]


class UnknownHead(ValueError):
    """A search asked for a head the bundle does not have."""


@dataclass(frozen=True)
class Hit:
    item_id: str
    score: float
    head: str
    title: str


@dataclass
class QueryResult:
    """One query's answer: its hits, best first, or the error that prevented it."""

    query: str
    hits: list[Hit] = field(default_factory=list)
    error: str | None = None
    title: str = ""  # the query item's title (empty for a vector query or an unknown id)


class BundleRetriever:
    """Per-head FAISS search merged by quota.

    Args (of :meth:`load`):
        bundle_dir: an ``export_faiss`` output folder.
        share: the first (coeng) head's share K1/K of the merged list; default: the share chosen
            on valid at training time (recorded in the bundle).
    """

    name = "served"

    def __init__(
        self,
        indexes: dict[str, faiss.Index],
        vectors: dict[str, np.ndarray],
        item_ids: list[str],
        titles: list[str],
        shares: dict[str, float],
        item_bias: np.ndarray | None = None,
        manifest: dict[str, Any] | None = None,
        fingerprint: str = "",
    ) -> None:
        self.heads = list(indexes)
        self._indexes, self._vectors = indexes, vectors  # vectors: (N, D) unit rows per head
        self.item_bias = item_bias  # (N,) in every candidate's score (the index's last dim), or None
        self.item_ids, self.titles = item_ids, titles
        self._code = {item: i for i, item in enumerate(item_ids)}
        self.shares = shares
        self.manifest = manifest or {}  # the verified manifest the bundle was loaded with
        self.fingerprint = fingerprint  # sha256 of that manifest.json: names the bundle

    @classmethod
    def load(cls, bundle_dir: str | Path, share: float | None = None) -> BundleRetriever:
        d = Path(bundle_dir)
        m = read_manifest(d, kind=KIND)
        fingerprint = sha256_file(d / MANIFEST_NAME)
        names: list[str] = m["head_names"]
        cfg = IndexConfig(**m["index_config"])
        biased = bool(m.get("item_bias", False))
        indexes, vectors = {}, {}
        bias = None
        for h in names:
            meta = m["heads"][h]
            index = faiss.read_index(str(d / f"{h}.faiss"))
            if index.d != meta["dim"] or index.ntotal != meta["count"]:
                raise ManifestError(
                    f"{d}/{h}.faiss holds {index.ntotal} x {index.d} vectors, the manifest says "
                    f"{meta['count']} x {meta['dim']}"
                )
            set_search_params(index, cfg)
            probe = np.asarray(meta["probe"]["queries"], dtype=np.float32)
            _, got = index.search(probe, len(meta["probe"]["ids"][0]))
            if got.tolist() != meta["probe"]["ids"]:
                raise ManifestError(
                    f"{d}/{h}.faiss does not answer its probe queries as recorded: the index belongs to "
                    f"another model than {m['model_export'][:12]}..."
                )
            indexes[h] = index
            rows = np.concatenate([v for _, v in read_head_chunks(d, h, biased)])
            if rows.shape != (meta["count"], meta["dim"]):
                raise ManifestError(
                    f"{d}/vectors: head {h} has shape {rows.shape}, expected {(meta['count'], meta['dim'])}"
                )
            vectors[h], bias = (rows[:, :-1], rows[:, -1]) if biased else (rows, None)
        ids = pl.read_parquet(d / "ids.parquet")["item_id"].to_list()
        titles = pl.read_parquet(d / "items.parquet")["title"].to_list()
        chosen = float(m.get("share", 1.0)) if share is None else share
        return cls(indexes, vectors, ids, titles, quota_shares(names, chosen), bias, m, fingerprint)

    def codes(self, item_ids: Sequence[str]) -> tuple[np.ndarray, list[str | None]]:
        """Item ids -> codes (-1 where unknown) and a per-id error message (None when known)."""
        codes = np.array([self._code.get(i, -1) for i in item_ids], dtype=np.int64)
        errors = [
            None if c >= 0 else f"unknown item id {i!r} (not in this bundle's {len(self.item_ids)} items)"
            for i, c in zip(item_ids, codes, strict=True)
        ]
        return codes, errors

    def _heads(self, head: str | None) -> tuple[list[str], list[float]]:
        """The heads one search runs and their quota shares: every head merged (None), or one."""
        if head is None:
            return self.heads, [self.shares[h] for h in self.heads]
        if head not in self.heads:
            raise UnknownHead(f"unknown head {head!r}: this bundle has {self.heads}")
        return [head], [1.0]

    def _search(
        self,
        queries: Mapping[str, np.ndarray],
        k: int,
        exclude: np.ndarray | None,
        head: str | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
        """Per-head search of (Q, D) query vectors, merged: (Q, k) codes, scores, and per slot the
        index (-1: padding) into the returned list of heads searched (``head``: that one alone)."""
        heads, shares = self._heads(head)
        fetch = k + (1 if exclude is not None else 0)
        lists, scores = [], []
        for h in heads:
            q = query_rows(queries[h], self.item_bias is not None)
            s, i = self._indexes[h].search(q, fetch)
            if exclude is not None:
                i = np.where(i == exclude[:, None], -1, i)  # the trigger never comes back
            lists.append(i)
            scores.append(s)
        codes, source, pos = merge_by_quota(lists, shares, k)
        score = np.full(codes.shape, np.nan, dtype=np.float32)
        filled = source >= 0
        stacked = np.stack(scores)  # (H, Q, fetch)
        rows = np.nonzero(filled)[0]
        score[filled] = stacked[source[filled], rows, pos[filled]]
        return codes, score, source, heads

    def retrieve(self, triggers: np.ndarray, k: int) -> np.ndarray:
        """The evaluation protocol: (T,) item codes -> (T, k) codes, -1 padded."""
        t = np.asarray(triggers, dtype=np.int64)
        return self._search({h: self._vectors[h][t] for h in self.heads}, k, t)[0]

    def _hits(self, codes: np.ndarray, scores: np.ndarray, source: np.ndarray, heads: list[str]) -> list[Hit]:
        return [
            Hit(self.item_ids[c], float(s), heads[src], self.titles[c])
            for c, s, src in zip(codes.tolist(), scores.tolist(), source.tolist(), strict=True)
            if c >= 0
        ]

    def search(self, item_ids: Sequence[str], k: int, head: str | None = None) -> list[QueryResult]:
        """Top-k for each query item id, in one search per head; an unknown id gets an error in
        its own result. ``head``: that head's own top-k instead of the merged list (an unknown
        head raises :class:`UnknownHead`)."""
        self._heads(head)  # an unknown head is refused even when every id is unknown
        codes, errors = self.codes(item_ids)
        known = codes >= 0
        out = [
            QueryResult(q, error=e, title="" if c < 0 else self.titles[c])
            for q, e, c in zip(item_ids, errors, codes.tolist(), strict=True)
        ]
        if known.any():
            t = codes[known]
            vectors = {h: self._vectors[h][t] for h in self._heads(head)[0]}
            found, score, source, heads = self._search(vectors, k, t, head)
            for row, qi in enumerate(np.nonzero(known)[0]):
                out[qi].hits = self._hits(found[row], score[row], source[row], heads)
        return out

    def search_vectors(self, vectors: Mapping[str, np.ndarray], k: int) -> list[QueryResult]:
        """Top-k for query vectors given per head ((Q, D) each, unit rows)."""
        missing = [h for h in self.heads if h not in vectors]
        if missing:
            raise ValueError(f"query vectors missing for heads {missing}; the bundle has {self.heads}")
        found, score, source, heads = self._search(vectors, k, None)
        return [
            QueryResult(f"vector[{r}]", self._hits(found[r], score[r], source[r], heads))
            for r in range(len(found))
        ]

    def describe(self) -> str:
        return json.dumps({"heads": self.heads, "items": len(self.item_ids), "shares": self.shares})
