"""What the content tower sees of an item: its fields as text (+ image), and a content hash."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tte_recsys.data.dataset import Dataset
from tte_recsys.tte.reasoner.prompts import render_fields

__all__ = ["ItemInput", "embedding_text", "item_inputs", "with_trace"]


@dataclass(frozen=True)
class ItemInput:
    """One item's content: ordered ``fields`` (name -> text or list) and an optional image."""

    item_id: str
    fields: dict[str, object] = field(default_factory=dict)
    image_path: str | None = None

    @property
    def text(self) -> str:
        return render_fields(self.fields)

    @property
    def is_empty(self) -> bool:
        return not self.text.strip() and self.image_path is None

    def content_hash(self) -> str:
        """sha256 over the fields and the image *bytes*: an edited image or title changes it."""
        h = hashlib.sha256(json.dumps(self.fields, sort_keys=False, default=str).encode())
        if self.image_path is not None:
            p = Path(self.image_path)
            h.update(p.read_bytes() if p.is_file() else f"missing:{self.image_path}".encode())
        return h.hexdigest()[:32]


def item_inputs(ds: Dataset, content_fields: Sequence[str]) -> list[ItemInput]:
    """Every catalog item (in item-code order) with the configured fields, e.g. ``[title, genres]``."""
    missing = [f for f in content_fields if f not in ds.items.columns]
    if missing:
        raise ValueError(
            f"content_fields {missing} are not columns of dataset {ds.name!r}; columns: {ds.items.columns}"
        )
    cols = ds.items.select("item_id", "image_path", *content_fields).to_dict(as_series=False)
    return [
        ItemInput(
            item_id=cols["item_id"][i],
            fields={f: cols[f][i] for f in content_fields},
            image_path=cols["image_path"][i],
        )
        for i in range(ds.num_items)
    ]


def with_trace(text: str, trace: str | None = None) -> str:
    """The embedder's input for ``text``: the text, then the reasoning trace when there is one."""
    return text + (f"\nreasoning: {trace}" if trace else "")


def embedding_text(item: ItemInput, trace: str | None = None) -> str:
    """The embedder's input for an item: its fields, then the reasoning trace when there is one."""
    return with_trace(item.text, trace)
