"""Every reasoner-training formula against numbers computed by hand (docs/notes/reasoner_training.md)."""

from __future__ import annotations

import math

import pytest
import torch

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
    RewardSettings,
    format_reward,
    group_advantages,
    outcome_rewards,
    symmetric_candidates,
)


def t(*rows: list[float]) -> torch.Tensor:
    return torch.tensor(rows)


def test_outcome_reward_hard_accuracy_times_softmax_weighted_margin() -> None:
    # positive 0.9; negatives 0.5, 0.1 with tau 0.5: weights e^1, e^0.2 -> 0.68997, 0.31003
    # E = 0.375988, margin 0.524012, positive first -> Acc = 1
    r = outcome_rewards(t([0.9, 0.5, 0.1]), t([1, 0, 0]), k=1, tau=0.5)
    assert r.item() == pytest.approx(0.524012, abs=1e-5)


def test_outcome_reward_accuracy_zero_outside_top_k_and_negative_margin_inside() -> None:
    sims, pos = t([0.4, 0.6, 0.2]), t([1, 0, 0])
    assert outcome_rewards(sims, pos, k=1).item() == 0.0  # one negative ahead
    # k = 2: Acc 1; negatives 0.6, 0.2: weights e^1.2, e^0.4 -> E = 0.475992, margin -0.075992
    assert outcome_rewards(sims, pos, k=2).item() == pytest.approx(-0.075992, abs=1e-5)


def test_outcome_reward_ties_go_against_the_positive() -> None:
    assert outcome_rewards(t([0.5, 0.5]), t([1, 0]), k=1).item() == 0.0


def test_outcome_reward_soft_accuracy() -> None:
    # two positives 0.9, 0.7 fill the top 2: 2/2 x 0.5; mean positive 0.8 - E 0.375988
    r = outcome_rewards(t([0.9, 0.5, 0.7, 0.1]), t([1, 0, 1, 0]), accuracy="soft", soft_scale=0.5)
    assert r.item() == pytest.approx(0.5 * 0.424012, abs=1e-5)
    # top 2 = 0.9 (pos), 0.8 (neg): 1/2 x 0.5; mean positive 0.6; negatives 0.8, 0.1: E = 0.661533
    r = outcome_rewards(t([0.9, 0.8, 0.3, 0.1]), t([1, 0, 1, 0]), accuracy="soft", soft_scale=0.5)
    assert r.item() == pytest.approx(0.25 * (0.6 - 0.661533), abs=1e-5)


def test_outcome_reward_candidates_mask_leaves_non_candidates_out() -> None:
    # the 0.95 column is not a candidate (e.g. the rollout's own side): the row is the first test's
    r = outcome_rewards(t([0.9, 0.5, 0.95, 0.1]), t([1, 0, 0, 0]), t([1, 1, 0, 1]), k=1, tau=0.5)
    assert r.item() == pytest.approx(0.524012, abs=1e-5)


def test_outcome_reward_needs_a_positive_and_a_negative() -> None:
    with pytest.raises(ValueError, match="positive"):
        outcome_rewards(t([0.9, 0.5]), t([0, 0]))
    with pytest.raises(ValueError, match="negative"):
        outcome_rewards(t([0.9, 0.5]), t([1, 1]))


def test_symmetric_candidates() -> None:
    # rollouts: pair 0 query, pair 0 target, pair 1 query, pair 1 target
    cand, pos = symmetric_candidates([0, 0, 1, 1], [0, 1, 0, 1])
    assert cand.int().tolist() == [[0, 1, 0, 1], [1, 0, 1, 0], [0, 1, 0, 1], [1, 0, 1, 0]]
    assert pos.int().tolist() == [[0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1], [0, 0, 1, 0]]


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
    with pytest.raises(ValueError, match="accuracy"):
        RewardSettings(accuracy="median")
    with pytest.raises(ValueError, match="sigma"):
        RestrainSettings(sigma=0.0)


def test_restrain_hub_guard() -> None:
    # 'a' is the answer of 3 of 4 prompts (> 0.5): no answer, each occurrence unique; 'd' stays
    answers = ["a", "a", "a", "b", "a", "c", "d", "d"]
    assert drop_hubs(answers, 2, 0.5) == ["<hub 0>", "<hub 1>", "<hub 2>", "b", "<hub 4>", "c", "d", "d"]
    assert drop_hubs(answers, 2, 1.0) == answers
