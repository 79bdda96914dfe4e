"""Training checkpoints: one folder per step, one safetensors file per rank, a manifest written last.

``<ckpt_dir>/step_00000400/rank0.safetensors`` holds rank 0's model shards, optimizer state and
random generator state (dropout in a trainable content tower draws from it every step);
``manifest.json`` (rank 0, after every rank has written) marks the folder complete and carries the
loop state (step, early stopping) and sha256 of every file, verified on load. A run killed while
writing leaves a folder without a manifest, which resume ignores. Checkpoints resume at the same
world size only; the unsharded export (:mod:`tte_recsys.models.export`) is what other world
sizes and serving load.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from tte_recsys.artifacts import atomic_path, read_manifest, write_manifest
from tte_recsys.distributed import barrier
from tte_recsys.training.sharding import Sharded, load_local_state, local_state

__all__ = ["latest_checkpoint", "load_checkpoint", "restore_rng", "save_checkpoint"]

KIND = "train_checkpoint"
_RNG = "rng/"  # key prefix of the generator states in a rank's file


def _rng_state() -> dict[str, torch.Tensor]:
    """The global CPU generator's state, and the current GPU's where CUDA is in use (uint8 tensors)."""
    out = {f"{_RNG}cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out[f"{_RNG}cuda"] = torch.cuda.get_rng_state()
    return out


def restore_rng(state: dict[str, torch.Tensor]) -> None:
    """Set the generators to a state from :func:`load_checkpoint` (empty for a checkpoint without one)."""
    if f"{_RNG}cpu" in state:
        torch.set_rng_state(state[f"{_RNG}cpu"])
    if f"{_RNG}cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state[f"{_RNG}cuda"])


def _step_dir(ckpt_dir: Path, step: int) -> Path:
    return ckpt_dir / f"step_{step:08d}"


def save_checkpoint(
    ckpt_dir: Path,
    step: int,
    sharded: Sharded,
    loop_state: dict[str, Any],
    rank: int,
    world: int,
    keep: int = 2,
) -> Path:
    """Write this step's checkpoint (collective); rank 0 then prunes all but the newest ``keep``."""
    d = _step_dir(ckpt_dir, step)
    d.mkdir(parents=True, exist_ok=True)
    with atomic_path(d / f"rank{rank}.safetensors") as tmp:
        save_file({**local_state(sharded), **_rng_state()}, str(tmp))
    barrier()
    if rank == 0:
        write_manifest(d, KIND, {"step": step, "world_size": world, "loop": loop_state})
        done = sorted(p for p in ckpt_dir.glob("step_*") if (p / "manifest.json").is_file())
        for old in done[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    barrier()
    return d


def latest_checkpoint(ckpt_dir: Path) -> Path | None:
    """The newest complete checkpoint folder (one with a manifest), or None."""
    done = sorted(p for p in ckpt_dir.glob("step_*") if (p / "manifest.json").is_file())
    return done[-1] if done else None


def load_checkpoint(
    path: Path, sharded: Sharded, rank: int, world: int
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Restore this rank's model and optimizer state from ``path`` (verified); returns the manifest
    (step, loop state) and the generator state, for :func:`restore_rng` once everything that draws
    before the first step (the data loader's seed) has drawn."""
    manifest = read_manifest(path, kind=KIND)
    if manifest["world_size"] != world:
        raise ValueError(
            f"checkpoint {path} was written by {manifest['world_size']} process(es), this run has {world}: "
            "resume with the same world size, or start from the unsharded export"
        )
    tensors = load_file(str(path / f"rank{rank}.safetensors"))
    load_local_state(sharded, tensors, str(path))
    return manifest, {k: v for k, v in tensors.items() if k.startswith(_RNG)}
