"""TorchRec sharding of the MTMH model: the plan, the optimizers, and moving state in and out.

The EBC always runs under ``DistributedModelParallel`` with the fused kernel, also in one process
(``docs/notes/torchrec_cpu.md``: ~40x faster than an unsharded EBC step on CPU). CPU plans are
``table_wise`` + ``fused`` (the only sharding with a fused kernel that CPU TBE supports besides
column-wise); on GPU the planner chooses. Tables learn with RowWiseAdagrad applied in backward
(CPU TBE supports SGD/Adagrad/RowWiseAdagrad only); dense parameters with Adam, both stepped
through one ``CombinedOptimizer``.
"""

from __future__ import annotations

import hashlib
import logging
import math
import warnings

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed._shard.sharded_tensor import ShardedTensor
from torch.distributed.optim import _apply_optimizer_in_backward
from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
from torchrec.distributed.model_parallel import DataParallelWrapper, DistributedModelParallel
from torchrec.distributed.planner import EmbeddingShardingPlanner, Topology
from torchrec.distributed.planner.types import ParameterConstraints
from torchrec.distributed.types import ShardingEnv
from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizerWrapper
from torchrec.optim.optimizers import in_backward_optimizer_filter
from torchrec.optim.rowwise_adagrad import RowWiseAdagrad

from tte_recsys.distributed import backend, init_from_env, local_device
from tte_recsys.models.mtmh import MTMHModel

__all__ = [
    "Sharded",
    "init_tables",
    "load_local_state",
    "local_state",
    "process_group",
    "shard_model",
    "unsharded_state",
]

log = logging.getLogger(__name__)


class _NoKernelDumps(logging.Filter):
    """fbgemm-gpu logs every embedding kernel's whole argument list at INFO on the root logger
    ("[TBE=<uuid>] ...", about 10 lines per table per model): 60% of a train_i2i log, none of it
    ours to act on. Records from anywhere else pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.name == "root" and str(record.msg).startswith("[TBE="))


logging.getLogger().addFilter(_NoKernelDumps())


def process_group() -> tuple[int, int]:
    """(rank, world_size), with a process group in every case: torchrun's, or a 1-process group
    (DistributedModelParallel needs one even alone): gloo on CPU, nccl on this process's GPU
    (TorchRec's input and output dists move CUDA tensors, which gloo cannot)."""
    rank, world = init_from_env()
    if not dist.is_initialized():
        dist.init_process_group(backend(), store=dist.HashStore(), rank=0, world_size=1)
    return rank, world


class Sharded:
    """A sharded model and its combined optimizer.

    Attributes:
        dmp: the ``DistributedModelParallel`` wrapper (call it like the model).
        dense: Adam over the dense parameters (a torchrec ``KeyedOptimizerWrapper``).
        optimizer: ``CombinedOptimizer([dmp.fused_optimizer, dense])``.
        plan: table -> sharding type and ranks (for logs and the report).
    """

    def __init__(
        self, dmp: DistributedModelParallel, dense: KeyedOptimizerWrapper, plan: dict[str, str]
    ) -> None:
        self.dmp, self.dense, self.plan = dmp, dense, plan
        self.optimizer = CombinedOptimizer([dmp.fused_optimizer, dense])


class _NoDataParallel(DataParallelWrapper):
    """One process: nothing to all-reduce, so the dense part is not wrapped in DDP."""

    def wrap(self, dmp: DistributedModelParallel, env: ShardingEnv, device: torch.device) -> None:
        dmp._dmp_wrapped_module.to(device)  # the dense part, as torchrec's DDP wrapper does


def shard_model(
    model: MTMHModel,
    device: torch.device,
    sparse_lr: float,
    dense_lr: float,
    weight_decay: float = 0.0,
) -> Sharded:
    """Plan and shard ``model`` (its EBC built on the ``meta`` device) over the current process group."""
    _apply_optimizer_in_backward(RowWiseAdagrad, model.ebc.parameters(), {"lr": sparse_lr})
    constraints = None
    if device.type == "cpu":
        constraints = {
            cfg.name: ParameterConstraints(sharding_types=["table_wise"], compute_kernels=["fused"])
            for cfg in model.ebc.embedding_bag_configs()
        }
    with warnings.catch_warnings():  # the planner warns about dry-run memory estimates it does not need here
        warnings.simplefilter("ignore")
        logging.getLogger("torchrec.distributed.planner").setLevel(logging.ERROR)
        planner = EmbeddingShardingPlanner(
            topology=Topology(world_size=dist.get_world_size(), compute_device=device.type),
            constraints=constraints,
        )
        sharders = [EmbeddingBagCollectionSharder()]
        plan = planner.collective_plan(model, sharders, dist.GroupMember.WORLD)
        single = dist.get_world_size() == 1
        dmp = DistributedModelParallel(
            model,
            device=device,
            plan=plan,
            sharders=sharders,
            data_parallel_wrapper=_NoDataParallel() if single else None,
        )
    dense_params = dict(in_backward_optimizer_filter(dmp.named_parameters()))
    dense = KeyedOptimizerWrapper(
        dense_params, lambda ps: torch.optim.Adam(ps, lr=dense_lr, weight_decay=weight_decay)
    )
    summary = {
        table: f"{p.sharding_type} ranks {p.ranks}"
        for module_plan in plan.plan.values()
        for table, p in module_plan.items()
    }
    return Sharded(dmp, dense, summary)


def _table_init(name: str, shape: torch.Size, seed: int) -> torch.Tensor:
    """A table's full initial weights, the same on every rank and world size: U(+-sqrt(1/rows))."""
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    g = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))
    bound = math.sqrt(1.0 / shape[0])
    return torch.empty(shape).uniform_(-bound, bound, generator=g)


@torch.no_grad()
def init_tables(dmp: nn.Module, seed: int) -> None:
    """Overwrite every sharded table with seeded weights (rank- and world-size-independent), so a
    2-process run starts from exactly the 1-process run's tables."""
    for name, t in dmp.state_dict().items():
        if isinstance(t, ShardedTensor):
            full = _table_init(name, t.size(), seed)
            for shard in t.local_shards():
                (r0, c0), (nr, nc) = shard.metadata.shard_offsets, shard.metadata.shard_sizes
                shard.tensor.copy_(full[r0 : r0 + nr, c0 : c0 + nc].to(shard.tensor.device))
        elif name.startswith("ebc.embedding_bags."):  # a table the GPU planner made data-parallel
            t.copy_(_table_init(name, t.size(), seed).to(t.device))


def unsharded_state(dmp: nn.Module) -> dict[str, torch.Tensor] | None:
    """The full, plain state dict on rank 0 (``None`` elsewhere). Collective: call on every rank."""
    rank = dist.get_rank() if dist.is_initialized() else 0
    out: dict[str, torch.Tensor] = {}
    for name, t in dmp.state_dict().items():
        if isinstance(t, ShardedTensor):
            # gathered on the shards' device (nccl moves CUDA tensors only), then to the CPU
            device = t.local_shards()[0].tensor.device if t.local_shards() else local_device()
            full = torch.empty(t.size(), dtype=t.dtype, device=device) if rank == 0 else None
            t.gather(dst=0, out=full)
            if full is not None:
                out[name] = full.cpu()
        elif rank == 0:
            out[name] = t.detach().cpu().clone()
    return out if rank == 0 else None


def _walk(prefix: str, obj: object, out: dict[str, torch.Tensor | ShardedTensor]) -> None:
    if isinstance(obj, dict):
        for k, v in obj.items():
            _walk(f"{prefix}/{k}" if prefix else str(k), v, out)
    elif isinstance(obj, torch.Tensor | ShardedTensor):
        out[prefix] = obj


def local_state(sharded: Sharded) -> dict[str, torch.Tensor]:
    """This rank's part of the training state, flat: model tensors (local shards of tables),
    fused-optimizer state (local shards) and the dense optimizer's state (for a checkpoint)."""
    flat: dict[str, torch.Tensor | ShardedTensor] = {}
    _walk("model", sharded.dmp.state_dict(), flat)
    _walk("fused", sharded.dmp.fused_optimizer.state_dict()["state"], flat)
    _walk("dense", sharded.dense._optimizer.state_dict()["state"], flat)
    out = {}
    for k, v in flat.items():
        if isinstance(v, ShardedTensor):
            for i, shard in enumerate(v.local_shards()):
                out[f"{k}#{i}"] = shard.tensor.detach().cpu().contiguous()
        else:
            out[k] = v.detach().cpu().contiguous()
    return out


@torch.no_grad()
def load_local_state(sharded: Sharded, tensors: dict[str, torch.Tensor], where: str) -> None:
    """Copy a :func:`local_state` back in place; ``where`` names the checkpoint in errors."""
    dense = sharded.dense._optimizer
    dense_sd = dense.state_dict()
    # Adam creates its state lazily: rebuild it from the saved tensors, then load it the torch way.
    dense_sd["state"] = {}
    for k, v in tensors.items():
        if k.startswith("dense/"):
            _, pid, name = k.split("/", 2)
            dense_sd["state"].setdefault(int(pid), {})[name] = v
    dense.load_state_dict(dense_sd)
    flat: dict[str, torch.Tensor | ShardedTensor] = {}
    _walk("model", sharded.dmp.state_dict(), flat)
    _walk("fused", sharded.dmp.fused_optimizer.state_dict()["state"], flat)
    for k, v in flat.items():
        targets = (
            [(f"{k}#{i}", s.tensor) for i, s in enumerate(v.local_shards())]
            if isinstance(v, ShardedTensor)
            else [(k, v)]
        )
        for key, t in targets:
            if key not in tensors:
                raise ValueError(f"checkpoint {where} has no tensor {key!r}: written by another model?")
            if tensors[key].shape != t.shape:
                raise ValueError(
                    f"checkpoint {where}: {key!r} has shape {tuple(tensors[key].shape)}, the model {tuple(t.shape)}"
                )
            t.copy_(tensors[key].to(t.device))
