"""Training throughput of the MTMH model on MovieLens, three ways, in one run:

1. the full training loop (``tte_recsys.training.loop.fit``: DataLoader workers building batches,
   KJT construction, sharded forward/backward, combined optimizer step, logging);
2. the bare DMP forward/backward/step of the same model on batches built before timing;
3. the same model with plain ``nn.EmbeddingBag`` tables (sparse gradients + Adagrad, the usual
   plain-PyTorch recipe; and dense gradients + Adam) instead of TorchRec, on the same batches.

Prints steps/s and the ratios full/bare (target >= 0.8) and torchrec/plain (target >= 1).
    python bench/train.py [--steps 150] [--batch 1024]
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torchrec import KeyedJaggedTensor

from tte_recsys.config import LabelConfig, PairConfig, SplitConfig
from tte_recsys.data.adapters import MovieLensAdapter
from tte_recsys.data.labels import RelevanceLabeler
from tte_recsys.data.split import temporal_split
from tte_recsys.losses.mtmh import LossConfig, mtmh_loss
from tte_recsys.models.mtmh import FrozenContent, ItemFeatures, ModelConfig, MTMHModel
from tte_recsys.training.batches import Batch, PairBatches, collate
from tte_recsys.training.loop import TrainerConfig, fit
from tte_recsys.training.sharding import process_group, shard_model


@dataclass(frozen=True)
class SpreadFeatures(ItemFeatures):
    """The same items with their ids spread over a ``rows``-row id table (item code c -> row
    c * stride): what a catalog of ``rows`` items costs the id table, on the same batches."""

    rows: int = 0

    def num_embeddings(self) -> dict[str, int]:
        return {**super().num_embeddings(), "item_id": self.rows}

    def lookup(self, codes: np.ndarray, drop_id: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        values, lengths = super().lookup(codes, drop_id)
        values = values.copy()
        n_ids = int(lengths[: len(codes)].sum())  # the id feature comes first
        values[:n_ids] *= self.rows // self.num_items
        return values, lengths


class _Pooled:
    def __init__(self, d: dict[str, torch.Tensor]) -> None:
        self._d = d

    def to_dict(self) -> dict[str, torch.Tensor]:
        return self._d


class PlainEBC(nn.Module):
    """The peer: one ``nn.EmbeddingBag`` per table, same shapes and pooling as the TorchRec EBC."""

    def __init__(self, model: MTMHModel, sparse: bool) -> None:
        super().__init__()
        self.bags = nn.ModuleDict()
        for cfg in model.ebc.embedding_bag_configs():
            mode = "sum" if cfg.pooling.name == "SUM" else "mean"
            bag = nn.EmbeddingBag(cfg.num_embeddings, cfg.embedding_dim, mode=mode, sparse=sparse)
            self.bags[cfg.feature_names[0]] = bag

    def forward(self, kjt: KeyedJaggedTensor) -> _Pooled:
        return _Pooled({f: bag(kjt[f].values(), kjt[f].offsets()[:-1]) for f, bag in self.bags.items()})


def _step(model: nn.Module, batch: Batch, heads: list[str], loss_cfg: LossConfig) -> torch.Tensor:
    emb = model(batch.features, batch.codes)
    b = len(batch.pos)
    q = {h: emb[h][:b] for h in heads}
    c = {h: emb[h][b:] for h in heads}
    return mtmh_loss(q, c, batch.pos, batch.labels, loss_cfg, batch.log_q, batch.mask)["loss"]


def _time(n: int, step: object) -> float:
    for _ in range(5):  # warm-up
        step()  # type: ignore[operator]
    t0 = time.perf_counter()
    for _ in range(n):
        step()  # type: ignore[operator]
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument(
        "--content", default="outputs/emb/movielens_plain", help="embed_items folder (else random vectors)"
    )
    ap.add_argument(
        "--rows", type=int, nargs="+", default=[0, 1_000_000], help="id-table rows (0: catalog size)"
    )
    args = ap.parse_args()
    process_group()
    ds = MovieLensAdapter().load()
    split = temporal_split(ds, PairConfig(), SplitConfig())
    labeler = RelevanceLabeler.from_dataset(ds, LabelConfig(fields={"genres": 1.0}))
    base = ItemFeatures.from_items(ds.items, ["genres"])
    if Path(args.content, "manifest.json").is_file():
        from tte_recsys.serving.embed_job import load_vectors

        table = torch.from_numpy(load_vectors(args.content).aligned(ds.items["item_id"].to_list()))
        source = args.content
    else:
        table = torch.nn.functional.normalize(torch.randn(ds.num_items, 384), dim=1)
        source = "random unit vectors (speed does not depend on their values)"
    content = FrozenContent(table)
    print(f"MovieLens train pairs {split.train_pairs.height:,}, batch {args.batch}, content {source}")
    print(f"machine: {platform.processor() or platform.machine()}, torch threads {torch.get_num_threads()}")
    for rows in args.rows:
        spread = rows > base.num_items
        features = SpreadFeatures(**dataclasses.asdict(base), rows=rows) if spread else base
        measure(features, content, labeler, split.train_pairs, args)


def measure(features: ItemFeatures, content: FrozenContent, labeler: RelevanceLabeler, pairs, args) -> None:  # type: ignore[no-untyped-def]
    mcfg = ModelConfig(features=("genres",))
    loss_cfg = LossConfig()
    heads = list(mcfg.heads)
    src, dst = pairs["src"].to_numpy(), pairs["dst"].to_numpy()
    tcfg = TrainerConfig(
        batch_size=args.batch, max_steps=args.steps + 5, eval_every=0, ckpt_every=0, num_workers=1
    )
    batches = PairBatches(src, dst, features, labeler, args.batch, seed=0)
    ne = features.num_embeddings()
    print(f"\n### id table {ne['item_id']:,} rows x 64 (+ genres {ne['genres']} x 16)")

    # 1. the full loop, data loading included
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        res = fit(
            MTMHModel(mcfg, ne, content, device="meta"), batches, tcfg, loss_cfg, Path(tmp), desc="full loop"
        )
    full = res.steps_per_sec

    # Pre-built batches for the others (same global steps as the loop's).
    prebuilt = [collate(features, batches[s]) for s in range(args.steps + 5)]

    # 2. bare DMP forward/backward/step
    torch.manual_seed(0)
    sh = shard_model(
        MTMHModel(mcfg, ne, content, device="meta"), torch.device("cpu"), tcfg.sparse_lr, tcfg.dense_lr
    )
    it = iter(prebuilt * 2)

    def dmp_step() -> None:
        loss = _step(sh.dmp, next(it), heads, loss_cfg)
        sh.optimizer.zero_grad()
        loss.backward()
        sh.optimizer.step()

    bare = _time(args.steps, dmp_step)

    # 3. plain nn.EmbeddingBag peers on the same batches
    plain = {}
    for name, sparse in (("nn.EmbeddingBag sparse + Adagrad", True), ("nn.EmbeddingBag dense + Adam", False)):
        torch.manual_seed(0)
        m = MTMHModel(mcfg, ne, content, device="meta")
        m.ebc = PlainEBC(m, sparse)  # type: ignore[assignment]
        table_params = list(m.ebc.parameters())
        ids = {id(p) for p in table_params}
        dense_params = [p for p in m.parameters() if id(p) not in ids]
        opts: list[torch.optim.Optimizer] = [torch.optim.Adam(dense_params, lr=tcfg.dense_lr)]
        opts.append(
            torch.optim.Adagrad(table_params, lr=tcfg.sparse_lr)
            if sparse
            else torch.optim.Adam(table_params, lr=tcfg.dense_lr)
        )
        it2 = iter(prebuilt * 2)

        def plain_step(m: nn.Module = m, opts: list[torch.optim.Optimizer] = opts, it2=it2) -> None:  # type: ignore[no-untyped-def]
            loss = _step(m, next(it2), heads, loss_cfg)
            for o in opts:
                o.zero_grad()
            loss.backward()
            for o in opts:
                o.step()

        plain[name] = _time(args.steps, plain_step)

    print("\n| variant | steps/s | pairs/s |\n|---|---:|---:|")
    rows = {
        "full training loop (tte_recsys fit)": full,
        "bare DMP fwd/bwd/step, pre-built batches": bare,
        **plain,
    }
    for name, sps in rows.items():
        print(f"| {name} | {sps:.2f} | {sps * args.batch:,.0f} |")
    best_plain = max(plain.values())
    print(f"\nfull loop / bare DMP = {full / bare:.2f}  (target >= 0.8)")
    print(f"TorchRec DMP / best plain nn.EmbeddingBag = {bare / best_plain:.2f}  (target >= 1)")
    for name, sps in plain.items():
        print(f"TorchRec DMP / {name} = {bare / sps:.2f}")


if __name__ == "__main__":
    main()
