"""Rank / world size from the launcher's environment (torchrun sets RANK, WORLD_SIZE), and the few
collectives the batch jobs need. One process without torchrun is rank 0 of 1."""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist

__all__ = [
    "all_gather_objects",
    "backend",
    "barrier",
    "init_from_env",
    "local_device",
    "resolve_device",
    "shutdown",
]


def init_from_env() -> tuple[int, int]:
    """(rank, world_size); joins the process group (gloo on CPU, nccl on GPU) when world_size > 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend())
    return rank, world


def backend() -> str:
    """The process group backend for this process: nccl on its GPU (which it sets as the current
    device: nccl needs that before the group), gloo on CPU."""
    device = local_device()
    if device.type == "cuda":
        torch.cuda.set_device(device)
        return "nccl"
    return "gloo"


def local_device() -> torch.device:
    """This process's device: ``cuda:LOCAL_RANK`` where CUDA is available (torchrun sets
    LOCAL_RANK; 0 without it), else the CPU."""
    if not torch.cuda.is_available():
        return torch.device("cpu")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if local >= torch.cuda.device_count():
        raise RuntimeError(
            f"LOCAL_RANK={local} but this machine has {torch.cuda.device_count()} CUDA device(s); "
            "start at most one process per GPU (torchrun --nproc_per_node)"
        )
    return torch.device("cuda", local)


def resolve_device(name: str) -> torch.device:
    """A config's ``device``: ``auto`` (:func:`local_device`), ``cpu``, ``cuda`` (this process's GPU)
    or an explicit ``cuda:N``."""
    if name == "auto":
        return local_device()
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise RuntimeError(f"device={name!r} but CUDA is not available on this machine; use auto or cpu")
        return local_device() if name == "cuda" else torch.device(name)
    raise ValueError(f"device={name!r}: expected auto, cpu, cuda or cuda:N")


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (JSON-like values), in rank order."""
    if not dist.is_initialized():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
