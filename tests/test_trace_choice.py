"""How valid picks a trace weight (``experiment.trace_choice.choose_fusion``): the best valid point,
and with ``rule="interval"`` a weight > 0 only when its valid gain over no trace is beyond noise."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from tte_recsys.config import EvalConfig
from tte_recsys.data.labels import RelevanceLabeler
from tte_recsys.data.split import EvalSet
from tte_recsys.experiment.config import SelectConfig
from tte_recsys.experiment.trace_choice import choose_fusion

N, T = 400, 200  # item 2i's one positive is item 2i + 1
CFG = EvalConfig(ks=(5,), select_k=5, ease_lambdas=(1.0,), batch_size=64)


def _case(helped: int) -> tuple[np.ndarray, np.ndarray, EvalSet, RelevanceLabeler]:
    """Random plain vectors (a partner is rarely in a trigger's top 5); the first ``helped``
    triggers have a trace that is their partner's vector, the others none (a zero row)."""
    rng = np.random.default_rng(0)
    plain = rng.standard_normal((N, 32)).astype(np.float32)
    plain /= np.linalg.norm(plain, axis=1, keepdims=True)
    trace = np.zeros_like(plain)
    trace[0 : 2 * helped : 2] = plain[1 : 2 * helped : 2]
    valid = EvalSet(
        triggers=np.arange(0, N, 2),
        indptr=np.arange(T + 1),
        targets=np.arange(1, N, 2),
        cold_items=np.zeros(N, dtype=bool),
    )
    return plain, trace, valid, RelevanceLabeler([(sp.identity(N, format="csr"), 1.0)])


@pytest.mark.parametrize("rule", ["best", "interval"])
def test_a_trace_that_helps_every_trigger_is_chosen_by_both_rules(rule: str) -> None:
    plain, trace, valid, lab = _case(helped=T)
    c = choose_fusion(plain, trace, valid, lab, CFG, (0.0, 0.5, 1.0), ("both", "trigger"), rule)
    assert c.fusion.weight > 0 and c.tower_weight > 0
    if rule == "interval":
        gain = next(
            p["valid_gain"] for p in c.grid if p["weight"] == c.fusion.weight and p["side"] == c.fusion.side
        )
        assert gain["lo"] > 0 and gain["n"] == T


def test_a_lead_within_noise_is_kept_by_best_and_refused_by_interval() -> None:
    plain, trace, valid, lab = _case(helped=1)  # one trigger of 200 gains: +0.005, an interval from 0
    best = choose_fusion(plain, trace, valid, lab, CFG, (0.0, 1.0), ("both", "trigger"), "best")
    assert best.fusion.weight == 1.0  # the best valid point, by one trigger
    chosen = choose_fusion(plain, trace, valid, lab, CFG, (0.0, 1.0), ("both", "trigger"), "interval")
    assert (chosen.fusion.weight, chosen.tower_weight) == (0.0, 0.0)
    refused = [p for p in chosen.grid if "valid_gain" in p]
    assert refused and all(p["valid_gain"]["lo"] <= 0 < p["valid_gain"]["hi"] for p in refused)


def test_an_unknown_rule_is_named() -> None:
    with pytest.raises(ValueError, match=r"select.trace_rule='always'"):
        SelectConfig(trace_rule="always")
    plain, trace, valid, lab = _case(helped=1)
    with pytest.raises(ValueError, match=r"select.trace_rule='always'"):
        choose_fusion(plain, trace, valid, lab, CFG, (0.0, 0.5), ("both",), "always")
