"""Every reasoner-training formula against numbers computed by hand (docs/notes/reasoner_training.md;
the catalog reward with its no-trace floor: tte_recsys/reasoner_training/rewards.py)."""

from __future__ import annotations

import math
from typing import ClassVar

import numpy as np
import pytest
import torch

from tte_recsys.reasoner_training.expert_iteration import above_floor
from tte_recsys.reasoner_training.restrain import (
    RestrainSettings,
    answer_weights,
    drop_hubs,
    gaussian,
    majority_count,
    prompt_weight,
    restrain_advantages,
)
from tte_recsys.reasoner_training.rewards import (
    CatalogReward,
    RewardSettings,
    catalog_ranks,
    floor_rewards,
    format_reward,
    group_advantages,
)
from tte_recsys.reasoner_training.tasks import ItemPositives, Side, TrainingPair, item_positives
from tte_recsys.tte.fusion import TraceFusion


def t(*rows: list[float]) -> torch.Tensor:
    return torch.tensor(rows)


G1, G2, G3 = 1.0, 1 / math.log2(3), 0.5  # DCG gains of ranks 1, 2, 3


def a(*rows: list[float]) -> np.ndarray:
    return np.array(rows, dtype=np.float64)


def test_catalog_ranks_by_hand_ties_against_the_positive() -> None:
    # query item 0 (excluded); candidates 1..3; the positive is 1
    sims = a([1.0, 0.5, 0.9, 0.3], [1.0, 0.9, 0.9, 0.3])
    pos = np.array([[0, 1, 0, 0], [0, 1, 0, 0]], dtype=bool)
    own = np.array([[1, 0, 0, 0], [1, 0, 0, 0]], dtype=bool)
    r = catalog_ranks(sims, pos, own)
    assert r[0, 1] == 2  # 0.9 ahead; the query's own 1.0 does not count
    assert r[1, 1] == 2  # a tie goes against the positive
    assert np.isnan(r[0, 0]) and np.isnan(r[0, 2])  # ranks only at the positives


def test_floor_reward_by_hand() -> None:
    without = a([1.0, 0.5, 0.9, 0.3])  # the item's own vector ranks the positive 2nd
    own = np.array([[1, 0, 0, 0]], dtype=bool)
    pos = np.array([[0, 1, 0, 0]], dtype=bool)
    helps = a([1.0, 0.95, 0.9, 0.3])  # the trace lifts it to 1st
    hurts = a([1.0, 0.5, 0.9, 0.6])  # pushes it to 3rd
    assert floor_rewards(helps, without, pos, own)[0] == pytest.approx(G1 - G2)  # 0.36907
    assert floor_rewards(hurts, without, pos, own)[0] == pytest.approx(G3 - G2)  # -0.13093
    assert floor_rewards(hurts, without, pos, own, floor="clipped")[0] == 0.0
    # a trace that changes nothing earns exactly 0, and so does one that moves scores but no rank
    assert floor_rewards(without, without, pos, own)[0] == 0.0
    assert floor_rewards(a([1.0, 0.6, 0.95, 0.2]), without, pos, own)[0] == 0.0


def test_floor_reward_means_over_the_positives_and_needs_one() -> None:
    without = a([1.0, 0.5, 0.9, 0.3])
    with_trace = a([1.0, 0.95, 0.9, 0.92])  # positive 1: 2 -> 1; positive 3: 3 -> 2
    own = np.array([[1, 0, 0, 0]], dtype=bool)
    pos = np.array([[0, 1, 0, 1]], dtype=bool)
    expected = ((G1 - G2) + (G2 - G3)) / 2  # other positives count among the items ahead, as in recall@K
    assert floor_rewards(with_trace, without, pos, own)[0] == pytest.approx(expected)
    with pytest.raises(ValueError, match="rollout 0 has no positive"):
        floor_rewards(with_trace, without, np.zeros((1, 4), dtype=bool), own)


class _TableEmbedder:
    """Unit vectors by hand: each text's vector is looked up."""

    VECS: ClassVar[dict[str, list[float]]] = {
        "q": [1.0, 0.0],
        "a": [0.8, 0.6],
        "p": [0.0, 1.0],
        "c": [-1.0, 0.0],
        "up": [0.0, 1.0],
        "down": [0.0, -1.0],
    }
    dim = 2

    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        return np.array([self.VECS[t] for t in texts], dtype=np.float32)


def test_catalog_reward_fuses_as_evaluation_and_ranks_the_whole_catalog() -> None:
    # catalog q (1, 0), a (.8, .6), p (0, 1), c (-1, 0); q's positive is p. Without a trace p is
    # 2nd (a: .8 > p: 0). With "up" at w = 3: u = normalize((1, 0) + 3 (0, 1)) = (.3162, .9487),
    # so a: .8222 < p: .9487 and p is 1st; "down": u = (.3162, -.9487), a: -.3162, c: -.3162,
    # p: -.9487, p is 3rd. At w = 1 "up" gives u = (.7071, .7071): a .9899 > p .7071, still 2nd.
    catalog = [Side(i, i) for i in ("q", "a", "p", "c")]
    emb = _TableEmbedder()
    reward = CatalogReward(emb, catalog, TraceFusion(weight=3.0), RewardSettings())  # type: ignore[arg-type]
    q, pos = [catalog[0]] * 4, [("p",)] * 4
    r = reward.score(q, ["up", "down", "", "<think> </think>"], pos)
    assert r.tolist() == pytest.approx([G1 - G2, G3 - G2, 0.0, 0.0])  # no trace, or an empty one: exactly 0
    weak = CatalogReward(emb, catalog, TraceFusion(weight=1.0), RewardSettings())  # type: ignore[arg-type]
    assert weak.score(q[:1], ["up"], pos[:1]).tolist() == [0.0]  # moved, but no rank changed
    # reward.trace_weight overrides the embedder's weight; clipped: a harmful trace earns 0
    clipped = CatalogReward(
        emb, catalog, TraceFusion(weight=1.0), RewardSettings(trace_weight=3.0, floor="clipped")
    )  # type: ignore[arg-type]
    assert clipped.score(q[:2], ["up", "down"], pos[:2]).tolist() == pytest.approx([G1 - G2, 0.0])
    assert reward.top1(q[:2], ["up", "down"]) == ["p", "a"]  # its own item never answers (a, c tie: first)


def test_expert_iteration_keeps_what_beats_the_floor() -> None:
    x, y = ItemPositives(Side("x", "x"), ("y",)), ItemPositives(Side("y", "y"), ("x",))
    traces = [["a", "b", "a", "c"], ["d", "e", "f", "g"]]
    rewards = np.array([[0.2, 0.0, 0.2, 0.5], [0.0, -0.1, 0.0, -0.3]])  # y: nothing beats its floor
    assert above_floor([x, y], traces, rewards, "best") == [(x.side, "c")]
    assert above_floor([x, y], traces, rewards, "all") == [(x.side, "a"), (x.side, "c")]  # distinct, > 0


def test_catalog_reward_refuses_what_it_cannot_score() -> None:
    catalog = [Side(i, i) for i in ("q", "a", "p")]
    emb = _TableEmbedder()
    with pytest.raises(ValueError, match=r"embedder\.traces='concat'"):
        CatalogReward(emb, catalog, TraceFusion(mode="concat"), RewardSettings())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="1 repeated ids"):
        CatalogReward(emb, [*catalog, catalog[0]], TraceFusion(), RewardSettings())  # type: ignore[arg-type]
    reward = CatalogReward(emb, catalog, TraceFusion(), RewardSettings())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"positive\(s\) \['zz'\] of item 'q' are not in the catalog"):
        reward.score([catalog[0]], ["up"], [("zz",)])


def test_item_positives_gather_every_partner_both_ways() -> None:
    x, y, z, t = (Side(i, i) for i in ("x", "y", "z", "t"))
    pairs = [TrainingPair(x, y), TrainingPair(z, x), TrainingPair(x, y), TrainingPair(t, None)]
    got = {p.side.id: p.positives for p in item_positives(pairs, {"x", "y", "z"})}
    assert got == {"x": ("y", "z"), "y": ("x",), "z": ("x",)}
    # a query outside the catalog (a pair table's) gets its target; its target gets no partner
    assert [(p.side.id, p.positives) for p in item_positives([TrainingPair(t, x)], {"x"})] == [("t", ("x",))]


def test_format_reward() -> None:
    assert format_reward("<think> a stapler </think> office supplies") == 1.0
    assert format_reward("a stapler") == 0.0
    assert format_reward("<think> a stapler") == 0.0  # truncated
    assert format_reward("<think> a stapler </think>") == 0.0  # no summary


def test_group_advantages_by_hand_and_as_trl_computes_them() -> None:
    from trl.trainer.utils import nanstd

    # mean 0.5, unbiased std sqrt(1/3) = 0.57735: 0.5 / (0.57735 + 1e-4) = 0.865875
    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.3, 0.3, 0.3, 0.3])
    a = group_advantages(r, 4)
    assert a[:4].tolist() == pytest.approx([0.865875, -0.865875, -0.865875, 0.865875], abs=1e-5)
    assert a[4:].tolist() == [0.0] * 4  # a group without spread teaches nothing
    g = r.view(-1, 4)
    trl = (g - g.mean(1, keepdim=True)) / (nanstd(g, dim=1).unsqueeze(1) + 1e-4)
    assert torch.allclose(a, trl.reshape(-1), atol=1e-6)
    assert group_advantages(r, 4, scale=False)[:4].tolist() == [0.5, -0.5, -0.5, 0.5]


def test_restrain_gaussian_and_answer_weights() -> None:
    assert gaussian(0.75, 1.0, 0.5) == pytest.approx(math.exp(-0.125))
    w = answer_weights(["a", "a", "a", "b"], center=1.0, sigma=0.5)
    assert w["a"] == pytest.approx(0.731059, abs=1e-6)
    assert w["b"] == pytest.approx(0.268941, abs=1e-6)
    assert majority_count(["a", "b", "a", "c"]) == 2


def test_restrain_prompt_weight() -> None:
    # c_ref = 2 of n = 4: g(0.5) = exp(-0.5)
    assert prompt_weight(["a", "a", "b", "c"], 1.0, 0.5) == pytest.approx(0.606531, abs=1e-6)


def test_restrain_effective_advantage() -> None:
    # per-answer group advantages: a -> [.4999 x3, -1.4997], b -> the negation; weights .731059 / .268941
    s = RestrainSettings(center=1.0, sigma=0.5, kappa=2, delta=0.2)
    a = restrain_advantages(["a", "a", "a", "b"], u=0.5, s=s)
    assert a.tolist() == pytest.approx([0.115507, 0.115507, 0.115507, -0.346519], abs=1e-5)


def test_restrain_negative_self_penalty() -> None:
    # no answer reaches kappa = 2 votes: rewards 0, every advantage -delta, times u
    s = RestrainSettings(kappa=2, delta=0.2)
    assert restrain_advantages(["a", "b", "c", "d"], u=0.5, s=s).tolist() == pytest.approx([-0.1] * 4)
    # unanimous: every pseudo-label's advantages are 0
    assert restrain_advantages(["a"] * 4, u=1.0, s=s).tolist() == [0.0] * 4


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match=r"reward.floor='median': expected one of \['signed', 'clipped'\]"):
        RewardSettings(floor="median")
    with pytest.raises(ValueError, match=r"reward\.trace_weight=0\.0"):
        RewardSettings(trace_weight=0.0)
    with pytest.raises(ValueError, match="sigma"):
        RestrainSettings(sigma=0.0)


def test_restrain_hub_guard() -> None:
    # 'a' is the answer of 3 of 4 prompts (> 0.5): no answer, each occurrence unique; 'd' stays
    answers = ["a", "a", "a", "b", "a", "c", "d", "d"]
    assert drop_hubs(answers, 2, 0.5) == ["<hub 0>", "<hub 1>", "<hub 2>", "b", "<hub 4>", "c", "d", "d"]
    assert drop_hubs(answers, 2, 1.0) == answers
