"""Training throughput of the MTMH model on MovieLens, three ways, in one run:

1. the full training loop (``tte_recsys.training.loop.fit``: DataLoader workers building batches,
   KJT construction, sharded forward/backward, combined optimizer step, logging);
2. the bare DMP forward/backward/step of the same model on batches built before timing;
3. the same model with plain ``nn.EmbeddingBag`` tables (sparse gradients + Adagrad, the usual
   plain-PyTorch recipe; and dense gradients + Adam) instead of TorchRec, on the same batches.

Prints steps/s and the ratios full/bare (target >= 0.8) and torchrec/plain (target >= 1), each the
median over interleaved rounds. Runs on this process's GPU where there is one (the planner's own
plan, fbgemm-gpu's kernels, a 1-process nccl group), else on the CPU. The loader's workers are
``fit``'s default for the device (1 on CPU, up to 8 on a GPU) unless ``--workers`` says otherwise.
    python bench/train.py [--steps 150] [--batch 1024] [--rounds 3] [--workers N] [--profile 20]

``--profile N`` then profiles N steps of the bare DMP step and of the plain sparse step
(``torch.profiler``, CPU time by operator): where a step's time goes, and what the embedding part
costs on each path.
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torchrec import KeyedJaggedTensor

from tte_recsys.config import LabelConfig, PairConfig, SplitConfig
from tte_recsys.data.adapters import MovieLensAdapter
from tte_recsys.data.labels import RelevanceLabeler
from tte_recsys.data.split import temporal_split
from tte_recsys.distributed import local_device
from tte_recsys.losses.mtmh import LossConfig, mtmh_loss
from tte_recsys.models.content import FrozenContent
from tte_recsys.models.mtmh import ItemFeatures, ModelConfig, MTMHModel
from tte_recsys.training.batches import Batch, BatchConfig, PairBatches, collate, epoch_pairs
from tte_recsys.training.loop import TrainerConfig, fit, loader_workers
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

    def values(self) -> torch.Tensor:
        return torch.cat(list(self._d.values()), dim=1)  # separate tables: one cat per batch


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


EBC_DMP = "EBC alone (fwd/bwd/update): DMP"
EBC_PLAIN = "EBC alone (fwd/bwd/update): nn.EmbeddingBag sparse + Adagrad"


def _step(model: nn.Module, batch: Batch, heads: list[str], loss_cfg: LossConfig) -> torch.Tensor:
    emb = model(batch.features, batch.codes)
    b = len(batch.pos)
    q = {h: emb[h][:b] for h in heads}
    c = {h: emb[h][b:] for h in heads}
    return mtmh_loss(q, c, batch.pos, batch.labels, loss_cfg, batch.log_q, batch.mask)["loss"]


def _sync() -> None:
    if torch.cuda.is_available():  # GPU work is asynchronous: time what ran, not what was queued
        torch.cuda.synchronize()


def _time(batches: list[Batch], step: Callable[[Batch], None]) -> float:
    """steps/s over ``batches`` after 5 warm-up steps."""
    for b in batches[:5]:
        step(b)
    _sync()
    t0 = time.perf_counter()
    for b in batches[5:]:
        step(b)
    _sync()
    return (len(batches) - 5) / (time.perf_counter() - t0)


def _fbgemm() -> str:
    for name in ("fbgemm-gpu", "fbgemm-gpu-cpu"):
        try:
            return f"{name} {version(name)}"
        except PackageNotFoundError:
            continue
    return "fbgemm-gpu not installed"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians are reported")
    ap.add_argument(
        "--workers", type=int, default=None, help="DataLoader processes of the full loop (default: fit's)"
    )
    ap.add_argument(
        "--content", default="outputs/emb/movielens_plain", help="embed_items folder (else random vectors)"
    )
    ap.add_argument(
        "--rows", type=int, nargs="+", default=[0, 1_000_000], help="id-table rows (0: catalog size)"
    )
    ap.add_argument(
        "--profile", type=int, default=0, help="then profile this many bare DMP and plain sparse steps"
    )
    args = ap.parse_args()
    process_group()
    ds = MovieLensAdapter().load()
    split = temporal_split(ds, PairConfig(), SplitConfig())
    labeler = RelevanceLabeler.from_dataset(ds, LabelConfig(fields={"genres": 1.0}))
    base = ItemFeatures.from_items(ds.items, ["genres"])
    if Path(args.content, "manifest.json").is_file():
        from tte_recsys.vectors import load_vectors

        table = torch.from_numpy(load_vectors(args.content).aligned(ds.items["item_id"].to_list()))
        source = args.content
    else:
        table = torch.nn.functional.normalize(torch.randn(ds.num_items, 384), dim=1)
        source = "random unit vectors (speed does not depend on their values)"
    content = FrozenContent(table)
    print(f"MovieLens train pairs {split.train_pairs.height:,}, batch {args.batch}, content {source}")
    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    print(
        f"machine: {platform.processor() or platform.machine()}, torch threads {torch.get_num_threads()}{gpu}"
    )
    print(f"torch {torch.__version__}, torchrec {version('torchrec')}, {_fbgemm()}")
    for rows in args.rows:
        spread = rows > base.num_items
        features = SpreadFeatures(**dataclasses.asdict(base), rows=rows) if spread else base
        measure(features, content, labeler, split.train_pairs, args)


def measure(features: ItemFeatures, content: FrozenContent, labeler: RelevanceLabeler, pairs, args) -> None:  # type: ignore[no-untyped-def]
    mcfg = ModelConfig(features=("genres",))
    loss_cfg = LossConfig()
    heads = list(mcfg.heads)
    tcfg = TrainerConfig(
        batch_size=args.batch, max_steps=args.steps + 5, eval_every=0, ckpt_every=0, num_workers=args.workers
    )
    src, dst = epoch_pairs(pairs, tcfg.pair_weight)
    batches = PairBatches(src, dst, features, labeler, BatchConfig(batch_size=args.batch, seed=0))
    ne = features.num_embeddings()
    workers = loader_workers(tcfg, local_device())
    print(
        f"\n### id table {ne['item_id']:,} rows x 64 (+ genres {ne['genres']} x 16), {workers} loader worker(s)"
    )

    def full_loop() -> float:
        """1. the full loop, data loading included (a fresh model each round)."""
        torch.manual_seed(0)
        with tempfile.TemporaryDirectory() as tmp:
            model = MTMHModel(mcfg, ne, content, device="meta")
            return fit(model, batches, tcfg, loss_cfg, Path(tmp), desc="full loop").steps_per_sec

    # Pre-built batches for the others (same global steps as the loop's), on the training device.
    device = local_device()
    prebuilt = [collate(features, batches[s]).to(device) for s in range(args.steps + 5)]

    # 2. bare DMP forward/backward/step
    torch.manual_seed(0)
    sh = shard_model(MTMHModel(mcfg, ne, content, device="meta"), device, tcfg.sparse_lr, tcfg.dense_lr)
    print(f"device {device}, sharding plan {sh.plan}")

    def dmp_step(batch: Batch) -> None:
        loss = _step(sh.dmp, batch, heads, loss_cfg)
        sh.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        sh.optimizer.step()

    # 3. plain nn.EmbeddingBag peers on the same batches; the dense part (trunk, heads, Adam)
    # is the same as the DMP model's, only the tables differ.
    variants: dict[str, Callable[[], float]] = {
        "full training loop (tte_recsys fit)": full_loop,
        "bare DMP fwd/bwd/step, pre-built batches": partial(_time, prebuilt, dmp_step),
    }
    for name, sparse in (("nn.EmbeddingBag sparse + Adagrad", True), ("nn.EmbeddingBag dense + Adam", False)):
        torch.manual_seed(0)
        m = MTMHModel(mcfg, ne, content, device="meta")
        m.ebc = PlainEBC(m, sparse)  # type: ignore[assignment]
        m.to(device)
        table_params = list(m.ebc.parameters())
        ids = {id(p) for p in table_params}
        dense_params = [p for p in m.parameters() if id(p) not in ids]
        opts: list[torch.optim.Optimizer] = [torch.optim.Adam(dense_params, lr=tcfg.dense_lr)]
        opts.append(
            torch.optim.Adagrad(table_params, lr=tcfg.sparse_lr)
            if sparse
            else torch.optim.Adam(table_params, lr=tcfg.dense_lr)
        )

        def plain_step(batch: Batch, m: nn.Module = m, opts: list[torch.optim.Optimizer] = opts) -> None:
            loss = _step(m, batch, heads, loss_cfg)
            for o in opts:
                o.zero_grad()
            loss.backward()
            for o in opts:
                o.step()

        variants[name] = partial(_time, prebuilt, plain_step)
        if sparse:  # its tables with their own Adagrad, for the embedding-only timing
            plain_sparse_step = plain_step
            table_opt = torch.optim.Adagrad(table_params, lr=tcfg.sparse_lr)
            plain_tables = (m.ebc, table_opt.zero_grad, table_opt.step)

    # 4. the embedding part alone (EBC forward, backward, table update), DMP vs plain sparse.
    def ebc_step(
        ebc: nn.Module, zero: Callable[[], object], step: Callable[[], object], batch: Batch
    ) -> None:
        loss = ebc(batch.features).values().sum()
        zero()
        loss.backward()
        step()

    dmp_tables = (sh.dmp.module.ebc, partial(sh.optimizer.zero_grad, set_to_none=True), sh.optimizer.step)
    variants[EBC_DMP] = partial(_time, prebuilt, partial(ebc_step, *dmp_tables))
    variants[EBC_PLAIN] = partial(_time, prebuilt, partial(ebc_step, *plain_tables))

    # Interleaved rounds (the order rotates): this shared machine drifts by 10% or more within a
    # run, so each ratio is taken within a round and the median over rounds is reported.
    names = list(variants)
    sps: dict[str, list[float]] = {n: [] for n in names}
    for r in range(args.rounds):
        for n in names[r % len(names) :] + names[: r % len(names)]:
            sps[n].append(variants[n]())
    full, bare = names[0], names[1]
    plain = [n for n in names[2:] if n not in (EBC_DMP, EBC_PLAIN)]
    print("\n| variant | steps/s (median) | pairs/s | rounds |\n|---|---:|---:|---|")
    for n in names:
        med = statistics.median(sps[n])
        print(f"| {n} | {med:.2f} | {med * args.batch:,.0f} | {' / '.join(f'{x:.2f}' for x in sps[n])} |")

    def ratio(a: str, b: str) -> str:
        per = [x / y for x, y in zip(sps[a], sps[b], strict=True)]
        return f"{statistics.median(per):.2f}  (rounds {' / '.join(f'{x:.2f}' for x in per)})"

    best = [max(plain, key=lambda n: sps[n][r]) for r in range(args.rounds)]
    best_ratio = [sps[bare][r] / sps[b][r] for r, b in enumerate(best)]
    print(f"\nfull loop / bare DMP = {ratio(full, bare)}  (target >= 0.8)")
    print(
        f"TorchRec DMP / best plain nn.EmbeddingBag = {statistics.median(best_ratio):.2f}"
        f"  (rounds {' / '.join(f'{x:.2f}' for x in best_ratio)}; target >= 1)"
    )
    for n in plain:
        print(f"TorchRec DMP / {n} = {ratio(bare, n)}")
    print(f"embedding part alone, DMP / nn.EmbeddingBag sparse + Adagrad = {ratio(EBC_DMP, EBC_PLAIN)}")
    if args.profile:
        for name, step in (("bare DMP", dmp_step), ("nn.EmbeddingBag sparse + Adagrad", plain_sparse_step)):
            profile_steps(name, step, prebuilt[5 : 5 + args.profile])


# Operators of the embedding part (both paths), by substring of the profiler's key.
_EMBEDDING_OPS = ("embedding", "[lookup]", "_dist]", "adagrad", "coalesce", "sparse_mask")


def profile_steps(name: str, step: Callable[[Batch], None], batches: list[Batch]) -> None:
    """CPU time per step by operator over ``batches``: the top operators, the matrix products'
    share, and the embedding part's operators (fbgemm / torchrec on one path, aten on the other)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for b in batches:
            step(b)
    events = prof.key_averages()
    n = len(batches)
    total = sum(e.self_cpu_time_total for e in events)  # microseconds
    mm = sum(e.self_cpu_time_total for e in events if e.key in ("aten::mm", "aten::addmm"))
    print(
        f"\n### profile: {name}, {n} steps, {total / n / 1e3:.1f} ms CPU per step, matrix products {mm / total:.0%}"
    )
    print(events.table(sort_by="self_cpu_time_total", row_limit=12))
    print("embedding part (ms per step; total includes children, so nested rows overlap):")
    for e in events:
        if any(w in e.key.lower() for w in _EMBEDDING_OPS):
            print(
                f"  {e.key[:72]:72s} self {e.self_cpu_time_total / n / 1e3:6.2f}  total {e.cpu_time_total / n / 1e3:6.2f}"
            )


if __name__ == "__main__":
    main()
