"""Rank / world size from the launcher's environment (torchrun sets RANK, WORLD_SIZE), and the few
collectives the batch jobs need. One process without torchrun is rank 0 of 1."""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["all_gather_objects", "barrier", "init_from_env", "shutdown"]


def init_from_env() -> tuple[int, int]:
    """(rank, world_size); joins the process group (gloo on CPU, nccl on GPU) when world_size > 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return rank, world


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
