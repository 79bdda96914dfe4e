"""tte_recsys: item-to-item retrieval with a TorchRec multi-task model and a Think-Then-Embed tower."""

from __future__ import annotations

__all__ = ["__version__"]
__version__ = "0.1.0"
