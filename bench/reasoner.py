"""Reasoner training speed: the EG-RL training loop (TRL GRPOTrainer with the catalog reward,
backward and optimizer step) against plain batched ``generate`` of the same model, prompts and
lengths, in the same run. Prints GRPO steps/s, rollout traces/s of each, the ratio, and the peak
RSS of the process.

    python bench/reasoner.py [--model toy|smollm2|DIR] [--steps 6] [--prompts 8] [--g 4] [--tokens 32]

``toy`` is the toy task's tiny Llama policy and its toy embedder (seconds); ``smollm2`` is
SmolLM2-135M-Instruct (``make smollm2``) with MiniLM as the reward's embedder, on toy prompts
(about a minute a step on 2 cores).
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from pathlib import Path

import torch
from machine import cpu_name

from tte_recsys.reasoner_training.grpo import EgRlSettings, eg_rl_rows, grpo_args, train_grpo
from tte_recsys.reasoner_training.policy import PolicySettings, load_policy
from tte_recsys.reasoner_training.rewards import CatalogReward, RewardSettings
from tte_recsys.reasoner_training.tasks import item_positives
from tte_recsys.reasoner_training.toy import build_toy_models, toy_task
from tte_recsys.tte.factory import build_embedder
from tte_recsys.tte.fusion import TraceFusion
from tte_recsys.tte.lora import LoraSettings
from tte_recsys.tte.reasoner.prompts import get_template


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="toy")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--g", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=32)
    a = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    template = get_template("item_card")
    with tempfile.TemporaryDirectory() as d:
        policy_dir, embedder_dir = build_toy_models(Path(d) / "toy")
        if a.model == "smollm2":
            policy_dir, embedder_dir = Path("models/smollm2-135m-instruct"), Path("minilm")
        elif a.model != "toy":
            policy_dir = Path(a.model)
        # every rollout the full length: the peer below writes the same tokens
        s = PolicySettings(max_completion_length=a.tokens, min_completion_length=a.tokens)
        g = EgRlSettings(steps=a.steps, prompts_per_step=a.prompts, num_generations=a.g, ckpt_every=10_000)
        task = toy_task(16, 0)
        catalog = [task.side(i) for i in range(task.items.height)]
        embedder = build_embedder(str(embedder_dir), pooling="mean", max_length=128)
        reward = CatalogReward(embedder, catalog, TraceFusion(), RewardSettings())
        items = item_positives(task.pairs(64, 0), reward.code)
        rows = eg_rl_rows(items, template, g, s.seed)
        policy, tok = load_policy(str(policy_dir))
        per_step = a.prompts * a.g
        t0 = time.perf_counter()
        args = grpo_args(s, g, Path(d) / "ckpt", [1.0])
        train_grpo("eg_rl", policy, tok, rows, [reward], args, LoraSettings(), False)
        train_s = time.perf_counter() - t0

        # the peer: the same model generating the same number of traces of the same length, batched
        policy, tok = load_policy(str(policy_dir))
        tok.padding_side = "left"
        prompts = [
            tok.apply_chat_template(r["prompt"], add_generation_prompt=True, tokenize=False)
            for r in rows[: a.prompts]
        ]
        batch = tok(prompts, return_tensors="pt", padding=True)
        t0 = time.perf_counter()
        with torch.inference_mode():
            for _ in range(a.steps):
                policy.generate(
                    **batch,
                    do_sample=True,
                    num_return_sequences=a.g,
                    max_new_tokens=a.tokens,
                    min_new_tokens=a.tokens,
                    pad_token_id=tok.pad_token_id,
                )
        gen_s = time.perf_counter() - t0
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    ours, peer = a.steps * per_step / train_s, a.steps * per_step / gen_s
    print(f"# bench/reasoner.py on {cpu_name()}, torch {torch.__version__}, model {a.model}")
    print(f"{a.steps} steps x {per_step} rollouts of {a.tokens} tokens (prompts {a.prompts} x G {a.g})")
    print(f"  GRPO training loop: {a.steps / train_s:.3f} steps/s, {ours:.1f} traces/s")
    print(f"  plain batched generate: {peer:.1f} traces/s")
    print(f"  ratio (training loop / generate): {ours / peer:.2f}x   peak RSS {rss_mb:.0f} MB")


if __name__ == "__main__":
    main()
