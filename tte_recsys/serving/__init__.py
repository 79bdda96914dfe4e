"""Batch item embedding, FAISS export and the multi-head Retriever.

``from tte_recsys.serving import Retriever`` is resolved lazily, so importing the embedding job
does not import faiss and TorchRec.
"""

from typing import Any

__all__ = ["Retriever"]


def __getattr__(name: str) -> Any:
    if name == "Retriever":
        from tte_recsys.serving.retriever import Retriever

        return Retriever
    raise AttributeError(f"module 'tte_recsys.serving' has no attribute {name!r}")
