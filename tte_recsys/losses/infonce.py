"""InfoNCE over in-batch negatives (the embedder's contrastive loss)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["info_nce"]


def info_nce(queries: torch.Tensor, positives: torch.Tensor, temperature: float = 0.05) -> torch.Tensor:
    """Cross-entropy of each query against all in-batch positives, its own being the target.

    Args:
        queries: (B, D) unit vectors.
        positives: (B, D) unit vectors; row i is the positive of query i, the others its negatives.
        temperature: softmax temperature (> 0).

    Returns:
        Scalar mean loss.
    """
    if temperature <= 0:
        raise ValueError(f"temperature={temperature}: expected > 0")
    logits = queries @ positives.T / temperature  # (B, B)
    target = torch.arange(queries.shape[0], device=queries.device)  # (B,)
    return F.cross_entropy(logits, target)
