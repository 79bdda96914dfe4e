"""Graded semantic-relevance labels between items, in [0, 1].

Attribute mode: the weighted mean over attribute columns of the Jaccard similarity of the two
items' value sets (two empty sets score 0). Relation mode: 1 when the dataset's relations table
links the two items (either direction) under the configured relation, else 0. Teacher mode: the
cosine of the two items' vectors from a teacher content encoder (an ``embed_items`` folder),
clipped at 0, for catalogs that carry no categorical attributes.
One object serves the evaluation (labels of a top-K list) and the loss (a dense batch matrix).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import scipy.sparse as sp
import torch

from tte_recsys.config import LabelConfig
from tte_recsys.data.dataset import Dataset

__all__ = ["RelevanceLabeler"]

_CHUNK = 16384  # teacher-label pairs per gather (two chunks of 16384 x 384 float32: 50 MB)
_DENSE_VOCAB = 64  # fields with at most this many values take the dense path in cross()
# largest item table DeviceLabels puts on a device (a field's dense 0/1 rows, teacher vectors)
_DEVICE_TABLE_BYTES = 1 << 30


def _incidence(values: pl.Series, num_items: int) -> sp.csr_matrix:
    """(N, V) binary matrix of each item's attribute values."""
    exploded = pl.DataFrame({"v": values}).with_row_index("i").explode("v").drop_nulls("v")
    codes = exploded["v"].cast(pl.Categorical).to_physical().to_numpy().astype(np.int64)
    rows = exploded["i"].to_numpy().astype(np.int64)
    data = np.ones(len(rows), dtype=np.float32)
    m = sp.csr_matrix((data, (rows, codes)), shape=(num_items, int(codes.max(initial=-1)) + 1))
    m.data[:] = 1.0  # an item listing a value twice still counts it once
    return m


def _unit_rows(x: np.ndarray) -> np.ndarray:
    """float32 rows scaled to unit length (an all-zero row stays zero: label 0 with everything)."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)


def _teacher_vectors(ds: Dataset, folder: str) -> np.ndarray:
    """(N, D) teacher vectors in item-code order, from an ``embed_items`` folder (manifest verified)."""
    from tte_recsys.vectors import load_vectors

    if folder == "content":
        raise ValueError(
            "labels.teacher=content names the content vectors of a pipelines.train_i2i run; "
            "elsewhere give the folder (an embed_items output, e.g. <run dir>/content)"
        )
    if not Path(folder).is_dir():
        raise FileNotFoundError(
            f"labels.teacher={folder!r}: no such folder (expected an embed_items output folder)"
        )
    try:
        return load_vectors(folder).aligned(ds.items["item_id"].to_list())
    except ValueError as e:
        raise ValueError(f"labels.teacher={folder!r}: {e}") from e


class RelevanceLabeler:
    """Relevance labels over item codes.

    Example::

        lab = RelevanceLabeler.from_dataset(ds, LabelConfig(fields={"genres": 1.0}))
        lab.pairs(np.array([0]), np.array([1]))  # (1,) label of item 0 vs item 1
        lab.matrix(np.arange(8))                 # (8, 8)
    """

    def __init__(
        self,
        fields: list[tuple[sp.csr_matrix, float]],
        relation: sp.csr_matrix | None = None,
        teacher: np.ndarray | None = None,
    ) -> None:
        self._fields = fields
        self._relation = relation
        self._teacher = None if teacher is None else _unit_rows(teacher)
        total = sum(w for _, w in fields)
        self._weights = [w / total for _, w in fields] if fields else []
        self._sizes = [np.asarray(m.sum(axis=1)).ravel() for m, _ in fields]
        # Fields with few values (genres: 19) as dense 0/1 rows: a batch's (A, V) @ (V, B) product is
        # 4x faster than the sparse one plus its densification, and gives the same integers.
        self._dense = [m.toarray() if m.shape[1] <= _DENSE_VOCAB else None for m, _ in fields]

    @classmethod
    def from_dataset(cls, ds: Dataset, cfg: LabelConfig) -> RelevanceLabeler:
        if cfg.teacher is not None:
            return cls([], teacher=_teacher_vectors(ds, cfg.teacher))
        if cfg.relation is not None:
            rel = ds.relations
            names = [] if rel is None else sorted(rel["relation"].unique().to_list())
            if rel is None or cfg.relation not in names:
                raise ValueError(
                    f"labels.relation={cfg.relation!r}: dataset {ds.name!r} has relations {names}"
                )
            r = rel.filter(pl.col("relation") == cfg.relation)
            a = ds.item_codes(r["src_item_id"].to_list())
            b = ds.item_codes(r["dst_item_id"].to_list())
            m = sp.csr_matrix((np.ones(len(a), np.float32), (a, b)), shape=(ds.num_items, ds.num_items))
            m = (m + m.T).tocsr()
            m.data[:] = 1.0  # either direction, listed once or twice: related
            return cls([], relation=m)
        attrs = [c for c, dt in ds.items.schema.items() if dt == pl.List(pl.String)]
        missing = [f for f in cfg.fields if f not in attrs]
        if missing:
            raise ValueError(
                f"labels.fields: {missing} not attribute columns of dataset {ds.name!r}; valid: {attrs}"
            )
        return cls([(_incidence(ds.items[f], ds.num_items), w) for f, w in cfg.fields.items()])

    def pairs(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Labels of item pairs ``(a[i], b[i])``; codes < 0 (padding) get 0. Shapes (P,) -> (P,)."""
        a, b = np.asarray(a, np.int64), np.asarray(b, np.int64)
        valid = (a >= 0) & (b >= 0)
        av, bv = a[valid], b[valid]
        out = np.zeros(len(a), dtype=np.float32)
        if self._relation is not None:
            out[valid] = np.asarray(self._relation[av, bv]).ravel()
            return out
        if self._teacher is not None:
            v, dots = self._teacher, np.empty(len(av), dtype=np.float32)
            for s in range(0, len(av), _CHUNK):  # chunks: two (P, D) gathers at once were 5x slower
                dots[s : s + _CHUNK] = np.einsum("pd,pd->p", v[av[s : s + _CHUNK]], v[bv[s : s + _CHUNK]])
            out[valid] = np.clip(dots, 0.0, 1.0)
            return out
        acc = np.zeros(len(av), dtype=np.float32)
        for (m, _), w, size in zip(self._fields, self._weights, self._sizes, strict=True):
            inter = np.asarray(m[av].multiply(m[bv]).sum(axis=1)).ravel()  # (P,)
            union = size[av] + size[bv] - inter  # (P,)
            acc += w * np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
        out[valid] = acc
        return out

    def topk(self, triggers: np.ndarray, topk: np.ndarray) -> np.ndarray:
        """(T,) triggers and (T, K) retrieved codes (-1 = empty) -> (T, K) labels."""
        k = topk.shape[1]
        return self.pairs(np.repeat(triggers, k), topk.ravel()).reshape(topk.shape)

    def matrix(self, items: np.ndarray) -> np.ndarray:
        """(B,) item codes -> (B, B) label matrix (diagonal included)."""
        return self.cross(items, items)

    def cross(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """(A,) and (B,) item codes -> (A, B) labels of every (row, col) pair (a training batch's
        triggers against its candidates)."""
        rows, cols = np.asarray(rows, np.int64), np.asarray(cols, np.int64)
        if self._relation is not None:
            return np.asarray(self._relation[rows][:, cols].todense(), dtype=np.float32)
        if self._teacher is not None:
            return np.clip(self._teacher[rows] @ self._teacher[cols].T, 0.0, 1.0)
        acc: np.ndarray | None = None
        for (m, _), dense, w, size in zip(self._fields, self._dense, self._weights, self._sizes, strict=True):
            if dense is not None:
                inter = np.asarray(dense[rows] @ dense[cols].T, dtype=np.float32)  # (A, B)
            else:
                inter = np.asarray((m[rows] @ m[cols].T).todense(), dtype=np.float32)
            union = np.add.outer(size[rows], size[cols])  # (A, B); in place below: a batch's
            union -= inter  # matrices are megabytes, and fresh ones cost page faults
            np.divide(inter, union, out=inter, where=union > 0)  # inter is 0 where union is
            inter *= w
            if acc is None:
                acc = inter
            else:
                acc += inter
        return acc if acc is not None else np.zeros((len(rows), len(cols)), dtype=np.float32)

    def on_device(self, device: torch.device | str) -> DeviceLabels | None:
        """:meth:`cross` as torch ops on ``device``, or None where an item table would exceed
        ``_DEVICE_TABLE_BYTES`` there: a field's dense 0/1 rows (items x values, float32) or the
        teacher vectors (those labels are then built by the loader, as on CPU)."""
        shapes = [m.shape for m, _ in self._fields]
        if self._teacher is not None:
            shapes.append(self._teacher.shape)
        if any(n * v * 4 > _DEVICE_TABLE_BYTES for n, v in shapes):
            return None
        return DeviceLabels(self, device)


class DeviceLabels:
    """:meth:`RelevanceLabeler.cross` on one device, for a training batch's label matrix on the GPU.

    A batch's matrix is B x B float32 (64 MB at a batch of 4096): built by the loader on the CPU,
    it costs the workers a product per batch and the host a copy per step, which bound a GPU run
    at large batches. Here the labeler's item tables live on the device (teacher vectors; each
    field as dense 0/1 rows; a relation as its sorted pair keys) and a batch's labels are one
    product per field, or one lookup. Field and relation labels are the same numbers as ``cross``
    (products of 0/1 rows are small integers, exact in float32); teacher labels are equal to float
    rounding.
    """

    def __init__(self, labeler: RelevanceLabeler, device: torch.device | str) -> None:
        t, rel = labeler._teacher, labeler._relation
        self._teacher = None if t is None else torch.from_numpy(t).to(device)
        self._relation: tuple[torch.Tensor, int] | None = None
        if rel is not None:
            coo = rel.tocoo()
            keys = np.sort(coo.row.astype(np.int64) * rel.shape[1] + coo.col)
            self._relation = (torch.from_numpy(keys).to(device), rel.shape[1])
        self._fields = [
            (
                torch.from_numpy(np.asarray(m.toarray() if d is None else d, np.float32)).to(device),
                torch.from_numpy(np.asarray(size, np.float32)).to(device),
                w,
            )
            for (m, _), d, size, w in zip(
                labeler._fields, labeler._dense, labeler._sizes, labeler._weights, strict=True
            )
        ]

    def __call__(self, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """(A,) and (B,) item codes on the device -> (A, B) labels."""
        if self._teacher is not None:
            return (self._teacher[rows] @ self._teacher[cols].T).clamp_(0.0, 1.0)
        if self._relation is not None:
            keys, n = self._relation
            return torch.isin(rows[:, None] * n + cols[None, :], keys).float()
        acc = torch.zeros(len(rows), len(cols), device=rows.device)
        for dense, size, w in self._fields:
            inter = dense[rows] @ dense[cols].T
            union = size[rows][:, None] + size[cols][None, :] - inter
            acc += torch.where(union > 0, inter / union, 0.0) * w
        return acc
