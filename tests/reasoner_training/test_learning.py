"""Real learning on the toy task (tiny random reasoner, bag-of-words embedder, CPU): a trace that
names the item's category ranks its partner higher. EG-RL and RESTRAIN (labels withheld from
training; the labelled reward only measures) must raise the held-out mean reward clearly above
the start on two seeds; SFT must raise the likelihood of its traces."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tte_recsys.reasoner_training.grpo import eg_rl_rows, restrain_rows, train_grpo
from tte_recsys.reasoner_training.policy import PolicySettings, load_policy
from tte_recsys.reasoner_training.restrain import RestrainAnswers, RestrainSettings, starting_prompt_weights
from tte_recsys.reasoner_training.rewards import EmbedderReward, RewardSettings
from tte_recsys.reasoner_training.sft import SftSettings, best_of_n_traces, sft_rows, train_sft
from tte_recsys.reasoner_training.tasks import TrainingPair
from tte_recsys.reasoner_training.toy import toy_task
from tte_recsys.tte.factory import build_embedder
from tte_recsys.tte.lora import LoraSettings
from tte_recsys.tte.reasoner.prompts import get_template

pytestmark = pytest.mark.slow
TEMPLATE = get_template("item_card")


def _reward(embedder_dir: Path) -> EmbedderReward:
    return EmbedderReward(build_embedder(str(embedder_dir), pooling="mean", max_length=64), RewardSettings())


def _mean_reward(
    model: torch.nn.Module, tok: object, pairs: list[TrainingPair], reward: EmbedderReward, s: PolicySettings
) -> float:
    from tte_recsys.experiment.reasoner import heldout_reward

    return heldout_reward(model, tok, pairs, TEMPLATE, reward, s, n=8, seed=123)


SETTINGS = dict(
    learning_rate=1e-2,
    lora=False,
    num_generations=8,
    pairs_per_step=4,
    max_completion_length=4,
    beta=0.0,
    ckpt_every=1000,
)


@pytest.mark.parametrize("seed", [0, 1])
def test_eg_rl_raises_the_reward(toy_models: tuple[Path, Path], tmp_path: Path, seed: int) -> None:
    reasoner, embedder = toy_models
    task = toy_task(16, seed)
    s = PolicySettings(steps=60, seed=seed, **SETTINGS)  # type: ignore[arg-type]
    reward = _reward(embedder)
    policy, tok = load_policy(str(reasoner))
    held = task.pairs(16, seed + 100)
    start = _mean_reward(policy, tok, held, reward, s)
    model, history = train_grpo(
        "eg_rl",
        policy,
        tok,
        eg_rl_rows(task.pairs(64, seed), TEMPLATE, s),
        reward,
        s,
        LoraSettings(),
        tmp_path,
        False,
    )
    end = _mean_reward(model, tok, held, reward, s)
    assert end > start + 0.03, (start, end)
    assert len(history) == s.steps and all("reward" in h for h in history)


@pytest.mark.parametrize("seed", [0, 1])
def test_restrain_without_labels_raises_the_labelled_reward(
    toy_models: tuple[Path, Path], tmp_path: Path, seed: int
) -> None:
    reasoner, embedder = toy_models
    task = toy_task(16, seed)
    # a trace must be written (an empty one is perfectly consistent); the hub guard is on (default)
    s = PolicySettings(steps=60, seed=seed, **{**SETTINGS, "pairs_per_step": 8, "min_completion_length": 4})  # type: ignore[arg-type]
    rst = RestrainSettings()
    reward = _reward(embedder)
    policy, tok = load_policy(str(reasoner))
    catalog = [task.side(i) for i in range(task.items.height)]
    vecs = reward.embedder.encode([x.text for x in catalog])
    answers = RestrainAnswers(reward, vecs, [x.id for x in catalog], s.num_generations)
    queries = [TrainingPair(x, None) for x in catalog]  # every item, no partner: no labels
    weights = starting_prompt_weights(policy, tok, queries, TEMPLATE, answers, s, rst)
    held = task.pairs(16, seed + 100)
    start = _mean_reward(policy, tok, held, reward, s)
    model, _ = train_grpo(
        "restrain",
        policy,
        tok,
        restrain_rows(queries, TEMPLATE, weights, s),
        reward,
        s,
        LoraSettings(),
        tmp_path,
        False,
        restrain=rst,
        catalog=(vecs, [x.id for x in catalog]),
    )
    end = _mean_reward(model, tok, held, reward, s)
    assert end > start + 0.03, (start, end)


def _trace_nll(model: torch.nn.Module, tok: object, rows: list[dict]) -> float:  # type: ignore[type-arg]
    losses = []
    for r in rows:
        prompt = tok.apply_chat_template(
            r["prompt"], add_generation_prompt=True, tokenize=True, return_dict=False
        )  # type: ignore[attr-defined]
        full = tok.apply_chat_template(r["prompt"] + r["completion"], tokenize=True, return_dict=False)  # type: ignore[attr-defined]
        ids = torch.tensor([full])
        labels = ids.clone()
        labels[0, : len(prompt)] = -100  # the trace only, as SFT's loss
        with torch.no_grad():
            losses.append(float(model(input_ids=ids, labels=labels).loss))
    return float(np.mean(losses))


def test_sft_best_of_n_raises_the_trace_likelihood(toy_models: tuple[Path, Path], tmp_path: Path) -> None:
    reasoner, embedder = toy_models
    task = toy_task(16, 0)
    s = PolicySettings(
        steps=30,
        learning_rate=1e-2,
        lora=False,
        num_generations=4,
        pairs_per_step=4,
        max_completion_length=4,
        sft_batch_size=8,
        ckpt_every=1000,
    )
    policy, tok = load_policy(str(reasoner))
    reward = _reward(embedder)
    sft = SftSettings(n=8, max_pairs=32)
    examples, picked = best_of_n_traces(policy, tok, task.pairs(32, 0), TEMPLATE, reward, s, sft)
    assert picked["mean_reward_picked"] > picked["mean_reward_all"]  # rejection sampling picks better traces
    rows = sft_rows(examples, TEMPLATE)
    before = _trace_nll(policy, tok, rows)
    model, history = train_sft(
        policy, tok, examples, TEMPLATE, s, LoraSettings(r=8, alpha=16), sft, tmp_path, False
    )
    after = _trace_nll(model, tok, rows)
    assert after < before - 0.5, (before, after)
    assert history and "loss" in history[0]
