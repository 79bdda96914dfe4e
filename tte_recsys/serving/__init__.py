"""Batch item embedding, FAISS export and the multi-head BundleRetriever.

``from tte_recsys.serving import BundleRetriever`` is resolved lazily, so importing the embedding job
does not import faiss and TorchRec.
"""

from typing import Any

__all__ = ["BundleRetriever"]


def __getattr__(name: str) -> Any:
    if name == "BundleRetriever":
        from tte_recsys.serving.retriever import BundleRetriever

        return BundleRetriever
    raise AttributeError(f"module 'tte_recsys.serving' has no attribute {name!r}")
