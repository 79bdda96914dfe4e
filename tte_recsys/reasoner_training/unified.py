"""TTE_u (``method=unified_head``): freeze a (trained) reasoner, train the embedding head of
``tte/unified.py`` on its states with the same pairs, each item embedded with the frozen
reasoner's greedy trace (the backbone reads item and trace as one input: that is TTE_u's)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from tte_recsys.artifacts import atomic_path, write_manifest
from tte_recsys.reasoner_training.methods import MethodResult, ReasonerMethod, RunContext
from tte_recsys.reasoner_training.policy import PolicySettings, sample
from tte_recsys.reasoner_training.tasks import TaskData, TrainingPair
from tte_recsys.tte.items import with_trace
from tte_recsys.tte.reasoner.prompts import PromptTemplate, parse_trace
from tte_recsys.tte.unified import LayerHead, UnifiedTTE, train_head

__all__ = ["UnifiedHead", "UnifiedSettings", "pair_recall_at_1", "train_unified"]


@dataclass(frozen=True)
class UnifiedSettings:
    """``method=unified_head``: the frozen reasoner (``reasoner_path``: a train_reasoner export;
    null: ``policy_path``) and the head (copied last ``layers``, InfoNCE ``steps``, ``lr``,
    ``batch_size``, ``temperature``)."""

    reasoner_path: str | None = None
    layers: int = 1
    steps: int = 50
    lr: float = 1e-3
    batch_size: int = 16
    temperature: float = 0.05

    def __post_init__(self) -> None:
        if (
            self.layers < 1
            or self.steps < 1
            or self.batch_size < 2
            or not self.lr > 0
            or not self.temperature > 0
        ):
            raise ValueError(
                f"method: layers={self.layers}, steps={self.steps} >= 1, batch_size={self.batch_size} >= 2, "
                f"lr={self.lr} and temperature={self.temperature} > 0 expected"
            )


@torch.no_grad()
def pair_recall_at_1(model: UnifiedTTE, pairs: list[tuple[str, str]]) -> float:
    """Share of held-out queries whose own target is the nearest of all held-out targets."""
    q = model.embed(**model.tokenize([a for a, _ in pairs]))
    t = model.embed(**model.tokenize([b for _, b in pairs]))
    return float(((q @ t.T).argmax(1) == torch.arange(len(pairs))).float().mean())


def _texts(
    model: Any, tok: Any, pairs: list[TrainingPair], template: PromptTemplate, s: PolicySettings
) -> list[tuple[str, str]]:
    sides = [x for p in pairs for x in (p.query, p.target) if x is not None]
    traces = sample(model, tok, [template.messages(x.text) for x in sides], 1, s, greedy=True)
    texts = [with_trace(x.text, parse_trace(t[0]).text or None) for x, t in zip(sides, traces, strict=True)]
    return [(texts[2 * i], texts[2 * i + 1]) for i in range(len(pairs))]


def train_unified(
    model: Any,
    tok: Any,
    data: TaskData,
    template: PromptTemplate,
    s: PolicySettings,
    u: UnifiedSettings,
    out: Path,
) -> dict[str, Any]:
    """Train the head; write ``head.safetensors`` + manifest into ``out``; return held-out recall@1
    of the head at initialisation (the backbone's own last-token states) and after training."""
    unified = UnifiedTTE(model, tok, LayerHead(model.base_model, u.layers))
    train = _texts(model, tok, [p for p in data.pairs if p.target is not None], template, s)
    held = _texts(model, tok, data.heldout, template, s)
    before = pair_recall_at_1(unified, held)
    losses = train_head(unified, train, u.steps, u.lr, u.batch_size, u.temperature, s.seed)
    after = pair_recall_at_1(unified, held)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "head.safetensors") as tmp:
        save_file({k: v.contiguous() for k, v in unified.head.state_dict().items()}, str(tmp))
    write_manifest(out, "unified_head", {"layers": u.layers, "steps": u.steps})
    return {
        "heldout_recall@1_init": before,
        "heldout_recall@1": after,
        "loss_first": losses[0],
        "loss_last": losses[-1],
    }


class UnifiedHead(ReasonerMethod):
    """Trains an embedding head on a frozen reasoner; it reports its own held-out recall@1 (no
    held-out reward, no reasoner export: ``export/head.safetensors``)."""

    name = "unified_head"
    settings_type = UnifiedSettings
    settings: UnifiedSettings

    def run(self, ctx: RunContext) -> MethodResult:
        path = self.settings.reasoner_path or ctx.policy_path
        model, tok = ctx.load(path)
        report = train_unified(
            model, tok, ctx.data, ctx.template, ctx.policy, self.settings, ctx.out / "export"
        )
        return MethodResult(path, {"unified": report})
