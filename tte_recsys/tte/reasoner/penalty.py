"""The repetition penalty over the generated tokens only: one definition for both decoding
engines (transformers' ``generate`` and :mod:`.decode`) and for reasoner-training rollouts."""

from __future__ import annotations

from typing import cast

import torch
from transformers import LogitsProcessor

__all__ = ["PENALTY_SCOPES", "GeneratedRepetitionPenalty"]

PENALTY_SCOPES = ("generated", "all")


class GeneratedRepetitionPenalty(LogitsProcessor):
    """The CTRL repetition penalty over the tokens generated so far only (columns from
    ``prompt_len`` on), never over the prompt: dividing positive logits (multiplying negative
    ones) by ``penalty`` for every token already written."""

    def __init__(self, penalty: float, prompt_len: int) -> None:
        if not penalty > 0:
            raise ValueError(f"repetition_penalty={penalty}: expected > 0")
        self.penalty, self.prompt_len = penalty, prompt_len

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        written = input_ids[:, self.prompt_len :]
        if written.shape[1] == 0 or self.penalty == 1.0:
            return scores
        picked = torch.gather(scores, 1, written)
        picked = torch.where(picked < 0, picked * self.penalty, picked / self.penalty)
        return cast(torch.FloatTensor, scores.scatter(1, written, picked))
