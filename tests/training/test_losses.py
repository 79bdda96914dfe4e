"""Each MTMH loss against values computed by hand (numbers worked out in the comments)."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from tte_recsys.losses.mtmh import LossConfig, mtmh_loss, relevance_kl, sampled_softmax_logq

EYE = torch.eye(2)
POS = torch.tensor([0, 1])


def test_sampled_softmax_without_correction() -> None:
    # logits [[1, 0], [0, 1]]: each row's CE = ln(1 + e^-1) = 0.313262
    got = sampled_softmax_logq(EYE, EYE, POS, temperature=1.0)
    assert got.item() == pytest.approx(math.log(1 + math.exp(-1)), abs=1e-6)


def test_sampled_softmax_logq_hand_computed() -> None:
    # Q = (0.5, 0.25): logits - log Q
    #   row 0: [1 + 0.693147, 0 + 1.386294] -> CE(pos 0) = ln(1 + e^(1.386294 - 1.693147)) = 0.551445
    #   row 1: [0 + 0.693147, 1 + 1.386294] -> CE(pos 1) = ln(1 + e^(0.693147 - 2.386294)) = 0.168862
    log_q = torch.log(torch.tensor([0.5, 0.25]))
    got = sampled_softmax_logq(EYE, EYE, POS, temperature=1.0, log_q=log_q)
    assert got.item() == pytest.approx((0.551445 + 0.168862) / 2, abs=1e-5)


def test_temperature_scales_logits() -> None:
    # tau = 0.5 doubles the logits: CE = ln(1 + e^-2) = 0.126928
    got = sampled_softmax_logq(EYE, EYE, POS, temperature=0.5)
    assert got.item() == pytest.approx(math.log(1 + math.exp(-2)), abs=1e-6)


def test_duplicate_of_the_positive_is_not_a_negative() -> None:
    # Candidates 0 and 2 are the same item; row 0's positive is 0. Masking 2 leaves [c0, c1]:
    # logits [1, 0] -> ln(1 + e^-1); unmasked, logits [1, 0, 1] -> ln(2 + e^-1) (larger).
    q = torch.tensor([[1.0, 0.0]])
    c = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    mask = torch.tensor([[True, False, True]])  # same item as the positive (the positive itself included)
    got = sampled_softmax_logq(q, c, torch.tensor([0]), 1.0, mask=mask)
    assert got.item() == pytest.approx(math.log(1 + math.exp(-1)), abs=1e-6)
    unmasked = sampled_softmax_logq(q, c, torch.tensor([0]), 1.0)
    assert unmasked.item() == pytest.approx(math.log(2 + math.exp(-1)), abs=1e-6)


def test_logq_correction_pushes_popular_negatives_less() -> None:
    """Without correction a frequent negative is over-penalised (it is sampled more often than
    under the full softmax); the correction lowers its logit, so its gradient shrinks."""
    q = torch.nn.functional.normalize(torch.tensor([[1.0, 0.2], [0.3, 1.0]]), dim=1)
    c = torch.nn.functional.normalize(torch.tensor([[1.0, 0.1], [0.5, 0.9]]), dim=1)
    # Row 0 treats the popular candidate 1 as a negative: with correction it is pushed less...
    q0 = q[:1]
    pushes = []
    for log_q in (None, torch.log(torch.tensor([0.05, 0.9]))):
        cc = c.clone().requires_grad_(True)
        sampled_softmax_logq(q0, cc, torch.tensor([0]), 0.1, log_q=log_q).backward()
        assert cc.grad is not None
        pushes.append(cc.grad[1].norm().item())
    assert pushes[1] < pushes[0]
    # ... and the rare candidate 0 as row 1's negative is pushed more (its logit is raised).
    q1 = q[1:]
    rare = []
    for log_q in (None, torch.log(torch.tensor([0.05, 0.9]))):
        cc = c.clone().requires_grad_(True)
        sampled_softmax_logq(q1, cc, torch.tensor([1]), 0.1, log_q=log_q).backward()
        assert cc.grad is not None
        rare.append(cc.grad[0].norm().item())
    assert rare[1] > rare[0]


def test_relevance_kl_hand_computed() -> None:
    # R = [1, 0] at tau_t = 1 -> p = [0.731059, 0.268941]; S = [0, 0] -> q = [0.5, 0.5]
    # KL = 0.731059 ln(1.462117) + 0.268941 ln(0.537883) = 0.277700 - 0.166751 = 0.110949
    got = relevance_kl(torch.zeros(1, 2), torch.tensor([[1.0, 0.0]]), 1.0, 1.0)
    assert got.item() == pytest.approx(0.110949, abs=1e-5)
    same = relevance_kl(torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 0.0]]), 1.0, 1.0)
    assert same.item() == pytest.approx(0.0, abs=1e-7)


def test_multitask_sum_weights_each_term() -> None:
    cfg = LossConfig(temperature=1.0, label_temperature=1.0, lam=2.0, alpha=0.5, logq=False)
    emb = {"coeng": EYE, "semantic": EYE}
    # labels that disagree with the scores S = I, so the relevance term is not 0 and a wrong lambda shows:
    # per row p = softmax(R) = [0.268941, 0.731059], q = softmax(S) = [0.731059, 0.268941], and
    # KL(p || q) = (0.731059 - 0.268941) ln(0.731059 / 0.268941) = 0.462117 (ln(e) = 1)
    labels = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    out = mtmh_loss(emb, emb, POS, labels, cfg)
    ce = math.log(1 + math.exp(-1))  # both softmax terms, as above
    kl = 0.462117
    assert out["coeng"].item() == pytest.approx(ce, abs=1e-6)
    assert out["sem_coeng"].item() == pytest.approx(ce, abs=1e-6)
    assert out["rel"].item() == pytest.approx(kl, abs=1e-6)
    assert out["loss"].item() == pytest.approx(ce + 2.0 * kl + 0.5 * ce, abs=1e-6)
    halved = mtmh_loss(emb, emb, POS, labels, dataclasses.replace(cfg, lam=1.0))["loss"].item()
    assert out["loss"].item() - halved == pytest.approx(kl, abs=1e-6)  # lambda weights exactly that term


def test_semantic_head_without_labels_is_an_error() -> None:
    with pytest.raises(ValueError, match="relevance labels"):
        mtmh_loss({"semantic": EYE}, {"semantic": EYE}, POS, None, LossConfig(lam=1.0))


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"lam": -1.0}, "loss.lam"),
        ({"alpha": -0.1}, "loss.alpha"),
        ({"temperature": 0.0}, "loss.temperature"),
    ],
)
def test_bad_loss_config(kw: dict[str, float], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        LossConfig(**kw)
