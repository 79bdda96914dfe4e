"""Trainable content tower (``model.content=trainable``): forward + backward of one batch's content.

The peer is the plain way, every code of the batch (triggers and targets) tokenised and encoded
in one padded batch, as the tower did before it encoded each distinct item once in length-sorted
chunks. Same embedder (MiniLM + LoRA r 8, training mode), same batches of train pairs (seeded), 2
threads, each variant in its own process so that peak RSS is its own. Prints seconds per step
(the first ``--warmup`` steps left out), peak RSS, and the ratio peer / ours.

    python bench/content_step.py [--data amazon_office] [--pairs 128] [--steps 4] [--warmup 2]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

VARIANTS = ("peer", "ours", "ours+checkpointing")


def one(variant: str, data: str, pairs: int, steps: int) -> dict[str, object]:
    import numpy as np
    import torch
    from omegaconf import OmegaConf

    from tte_recsys.data.split import temporal_split
    from tte_recsys.models.content import TrainableContent
    from tte_recsys.runs import data_configs, load_dataset
    from tte_recsys.tte.factory import build_embedder
    from tte_recsys.tte.items import embedding_text, item_inputs
    from tte_recsys.tte.lora import add_lora

    torch.set_num_threads(2)
    cfg = OmegaConf.load(f"configs/data/{data}.yaml")
    ds = load_dataset(cfg)
    pair_cfg, split_cfg, _ = data_configs(cfg)
    train = temporal_split(ds, pair_cfg, split_cfg).train_pairs
    src, dst = train["src"].to_numpy(), train["dst"].to_numpy()
    texts = [embedding_text(it, None) for it in item_inputs(ds, list(cfg.content_fields))]
    torch.manual_seed(0)
    emb = add_lora(build_embedder("minilm", runtime="torch", device="cpu"), r=8, alpha=16)
    tower = TrainableContent(emb, texts, chunk=64, checkpointing=variant == "ours+checkpointing")
    emb.train()

    def peer(codes: torch.Tensor) -> torch.Tensor:
        ids = emb.token_ids([texts[int(c)] for c in codes.tolist()])
        return emb(**emb.pad_batch(ids)).float()

    rng = np.random.default_rng(0)
    seconds, distinct = [], []
    for _ in range(steps):
        rows = rng.choice(len(src), pairs, replace=False)
        codes = torch.from_numpy(np.concatenate([src[rows], dst[rows]]))
        distinct.append(len(np.unique(codes.numpy())))
        start = time.perf_counter()
        out = peer(codes) if variant == "peer" else tower(codes)
        out.sum().backward()
        seconds.append(time.perf_counter() - start)
        emb.zero_grad(set_to_none=True)
    return {
        "seconds": seconds,
        "distinct_items": float(np.mean(distinct)),
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="amazon_office", help="a configs/data name: amazon_office, movielens")
    ap.add_argument("--pairs", type=int, default=128, help="train pairs per batch (2x codes)")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--warmup", type=int, default=2, help="first steps left out (allocator warm-up)")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    ap.add_argument("--one", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.steps <= a.warmup:
        ap.error(f"--steps {a.steps} must exceed --warmup {a.warmup}")
    if a.one:
        print(json.dumps(one(a.one, a.data, a.pairs, a.steps)))
        return
    res = {}
    for v in a.variants:
        cmd = [sys.executable, __file__, "--one", v, "--data", a.data, "--pairs", str(a.pairs)]
        cmd += ["--steps", str(a.steps)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode:
            print(f"{v}: exit {done.returncode} (-9 / 137: killed, e.g. for memory)\n{done.stderr[-2000:]}")
            continue
        res[v] = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"{a.data}, {a.pairs} pairs per batch, steps {a.warmup + 1}-{a.steps} of {a.steps}:")
    print("| variant | distinct items | s/step (median) | each | peak RSS GB | peer / this |")
    print("|---|---:|---:|---|---:|---:|")
    med = {v: statistics.median(r["seconds"][a.warmup :]) for v, r in res.items()}
    for v, r in res.items():
        each = " ".join(f"{s:.2f}" for s in r["seconds"][a.warmup :])
        ratio = f"{med['peer'] / med[v]:.2f}x" if "peer" in med else "-"
        print(
            f"| {v} | {r['distinct_items']:.0f} | {med[v]:.2f} | {each} | {r['peak_rss_gb']:.2f} | {ratio} |"
        )


if __name__ == "__main__":
    main()
