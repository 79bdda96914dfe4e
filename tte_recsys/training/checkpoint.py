"""Training checkpoints: one folder per step, one safetensors file per rank, a manifest written last.

``<ckpt_dir>/step_00000400/rank0.safetensors`` holds rank 0's model shards and optimizer state;
``manifest.json`` (rank 0, after every rank has written) marks the folder complete and carries the
loop state (step, early stopping) and sha256 of every file, verified on load. A run killed while
writing leaves a folder without a manifest, which resume ignores. Checkpoints resume at the same
world size only; the unsharded export (:mod:`tte_recsys.training.export`) is what other world
sizes and serving load.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file

from tte_recsys.artifacts import atomic_path, read_manifest, write_manifest
from tte_recsys.distributed import barrier
from tte_recsys.training.sharding import Sharded, load_local_state, local_state

__all__ = ["latest_checkpoint", "load_checkpoint", "save_checkpoint"]

KIND = "train_checkpoint"


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
        save_file(local_state(sharded), str(tmp))
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


def load_checkpoint(path: Path, sharded: Sharded, rank: int, world: int) -> dict[str, Any]:
    """Restore this rank's state from ``path`` (verified); returns the manifest (step, loop state)."""
    manifest = read_manifest(path, kind=KIND)
    if manifest["world_size"] != world:
        raise ValueError(
            f"checkpoint {path} was written by {manifest['world_size']} process(es), this run has {world}: "
            "resume with the same world size, or start from the unsharded export"
        )
    load_local_state(sharded, load_file(str(path / f"rank{rank}.safetensors")), str(path))
    return manifest
