"""MMEB-V2 evaluation: ``python -m pipelines.eval_mmeb root=<local MMEB-V2 root> [tasks=[...]]``.

``list_tasks=true`` writes ``tasks.json`` and prints the table without reading data;
``debug=tiny`` builds a synthetic root and a tiny random model itself (a served embedder,
``embedder=openai``, is kept). Data-parallel under
``torchrun --nproc_per_node=N`` (each rank encodes its shards); a killed run resumes from its
embedding cache. Writes ``report.json``, ``report.md``, ``predictions/`` and a manifest.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, open_dict

from tte_recsys import distributed
from tte_recsys.evaluation.mmeb.run import evaluate_mmeb, list_tasks
from tte_recsys.evaluation.mmeb.synthetic import SYNTHETIC_TASKS, make_synthetic_root
from tte_recsys.runs import check_overrides, cli, output_dir
from tte_recsys.tte.factory import is_served
from tte_recsys.tte.tiny import build_tiny_qwen2_vl


def run(cfg: DictConfig) -> dict[str, Any]:
    out = output_dir(cfg)
    if cfg.list_tasks:
        return list_tasks(cfg, out)
    if cfg.get("mmeb_synthetic"):  # debug=tiny: the synthetic root and (unless served) a tiny model
        rank, _ = distributed.init_from_env()
        root, model = out / "synthetic_root", out / "tiny_model"
        local = not is_served(cfg.embedder)
        if rank == 0:
            make_synthetic_root(root)
            if local:
                build_tiny_qwen2_vl(model)
        distributed.barrier()
        with open_dict(cfg):
            cfg.root = str(root)
            cfg.tasks = cfg.tasks or list(SYNTHETIC_TASKS)
            if local:
                cfg.embedder.update(model_path=str(model), pooling="last", runtime="torch", dtype="float32")
    if not cfg.root:
        raise ValueError(
            "root: set root=<folder> (a local MMEB-V2 root; docs/mmeb.md), or run with debug=tiny"
        )
    return evaluate_mmeb(cfg, out, Path(str(cfg.root)))


@hydra.main(version_base="1.3", config_path="../configs", config_name="eval_mmeb")
def main(cfg: DictConfig) -> None:
    cli(run, cfg, lambda r: print({k: v for k, v in r.items() if k != "encoding"}))


if __name__ == "__main__":
    check_overrides("eval_mmeb")
    main()
