"""The MTMH tower's trace input: it starts as the model without traces and learns to use them."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tte_recsys.models.content import FrozenContent
from tte_recsys.models.mtmh import ItemFeatures, ModelConfig, MTMHModel


def _model(table: torch.Tensor, **kw: object) -> MTMHModel:
    torch.manual_seed(0)
    cfg = ModelConfig(id_dim=4, hidden=(8,), content="frozen", **kw)  # type: ignore[arg-type]
    return MTMHModel(cfg, {"item_id": table.shape[0]}, FrozenContent(table))


@pytest.mark.parametrize(
    ("to_trunk", "gate"), [(True, "projection"), (False, "projection"), (False, "scalar")]
)
def test_starts_as_the_model_without_traces_then_learns_the_trace(to_trunk: bool, gate: str) -> None:
    n, d = 6, 4
    item = F.normalize(torch.randn(n, d), dim=-1)
    trace = torch.randn(n, d)
    model = _model(
        torch.cat([item, trace], dim=1), trace_input=True, trace_to_trunk=to_trunk, trace_gate=gate
    )
    assert model.head_dim == d  # the item half's size, not the table's
    codes = torch.arange(n)
    feats = ItemFeatures(n, {}, {}, {}).kjt(codes.numpy())
    out = model(feats, codes)
    for h in model.cfg.heads:  # at step 0: the item's own vector, whatever the trace
        torch.testing.assert_close(out[h], item, atol=1e-6, rtol=0)
    # the trunk reads the trace half only when asked
    first = next(m for m in model.trunk if isinstance(m, torch.nn.Linear))
    assert first.in_features == 4 + (2 * d if to_trunk else d)
    # the trace projection (or gate) starts at zero and gets a gradient from the loss
    loss = -(out["coeng"][0] * out["coeng"][1]).sum()
    loss.backward()
    if gate == "scalar":
        assert model.trace_gates is not None
        g = model.trace_gates["coeng"]
        assert model.skips["coeng"].weight.shape == (d, d) and g.item() == 0.0
        assert g.grad is not None and g.grad.abs().item() > 0
    else:
        skip = model.skips["coeng"].weight
        assert not skip[:, d:].any()
        assert skip.grad is not None and skip.grad[:, d:].abs().sum() > 0


def test_trace_input_needs_frozen_content_and_an_even_table() -> None:
    with pytest.raises(ValueError, match=r"model\.trace_input=true needs model\.content=frozen"):
        ModelConfig(content="trainable", trace_input=True)
    with pytest.raises(ValueError, match="even width"):
        _model(torch.randn(3, 5), trace_input=True)
