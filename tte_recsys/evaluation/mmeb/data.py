"""What a reader hands the encoder and the scorer: a task's queries, its de-duplicated candidates,
each query's candidate list (local tasks) and its graded positives."""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tte_recsys.evaluation.mmeb.registry import TaskSpec
from tte_recsys.tte.items import ItemInput

__all__ = ["CandidatePool", "Entry", "MMEBDataError", "MissingTaskData", "TaskData", "safe_name"]


class MMEBDataError(ValueError):
    """A task's data is malformed; the message names the task, the file and the row."""


def safe_name(name: str) -> str:
    """``name`` as one path component: letters, digits and ``-_.@`` kept, anything else ``_``."""
    return "".join(ch if ch.isalnum() or ch in "-_.@" else "_" for ch in name)


class MissingTaskData(FileNotFoundError):
    """A task's annotation table or pixels are not under the root: the task is skipped, not scored."""


@dataclass(frozen=True)
class Entry:
    """One query or candidate: its name, the embedder's text (instruction included) and its
    image paths (one image, a video's sampled frames, or none)."""

    name: str
    text: str
    images: tuple[str, ...] = ()

    def content_hash(self) -> str:
        """sha256 of the text and the image *bytes* (a re-rendered frame changes it)."""
        h = hashlib.sha256(self.text.encode())
        for p in self.images:
            h.update(b"\0" + Path(p).read_bytes())
        return h.hexdigest()[:32]

    def to_item(self) -> ItemInput:
        """The reasoner's view (trace cache key: name + content hash): the text and the first image."""
        return ItemInput(self.name, {"text": self.text}, self.images[0] if self.images else None)


@dataclass
class CandidatePool:
    """Candidates interned by (name, content hash): one embedding per distinct content; a name
    seen with two contents keeps both (the reference embeds the first only) and is counted."""

    entries: list[Entry] = field(default_factory=list)
    _index: dict[tuple[str, str], int] = field(default_factory=dict)
    _hashes: dict[str, set[str]] = field(default_factory=dict)
    _memo: dict[Entry, str] = field(default_factory=dict)

    def add(self, e: Entry) -> int:
        h = self._memo.get(e) or self._memo.setdefault(e, e.content_hash())
        key = (e.name, h)
        if key not in self._index:
            self._index[key] = len(self.entries)
            self.entries.append(e)
            self._hashes.setdefault(e.name, set()).add(h)
        return self._index[key]

    def conflicting_names(self) -> int:
        """How many names appear with more than one content."""
        return sum(len(v) > 1 for v in self._hashes.values())


@dataclass
class TaskData:
    """A task ready to encode and score.

    Attributes:
        queries: (Q) entries; ``candidates``: (C) distinct candidate entries.
        lists: per query, the candidate indices it ranks (local tasks); None: every candidate.
        relevance: per query, candidate index -> grade (> 0).
        notes: what the reader wants the report to say (duplicates, dropped queries).
    """

    spec: TaskSpec
    queries: list[Entry]
    candidates: list[Entry]
    lists: list[np.ndarray] | None
    relevance: list[dict[int, float]]
    notes: list[str] = field(default_factory=list)

    def stats(self) -> dict[str, int]:
        sizes = Counter(len(x) for x in self.lists) if self.lists is not None else Counter()
        return {
            "queries": len(self.queries),
            "candidate_count": len(self.candidates),
            "max_list": max(sizes) if sizes else len(self.candidates),
        }
