"""Reasoning traces for a catalog: ``python -m pipelines.generate_traces data=<name> reasoner=<name>``.

Cached by (item, content hash, reasoner, prompt version) in ``cache_dir``: a re-run with nothing
changed makes zero model calls, and a killed run resumes. Under ``torchrun`` each rank takes
every world-th item and writes its own cache parts. Writes ``traces.parquet`` (every item that
has a trace) and ``summary.json`` (generated / cached / failed with reasons).
"""

from __future__ import annotations

from typing import Any

import hydra
from omegaconf import DictConfig

from tte_recsys.experiment.stages import generate_catalog_traces
from tte_recsys.runs import check_overrides, cli, output_dir


def run(cfg: DictConfig) -> dict[str, Any]:
    return generate_catalog_traces(cfg, output_dir(cfg))


@hydra.main(version_base="1.3", config_path="../configs", config_name="generate_traces")
def main(cfg: DictConfig) -> None:
    keys = ("generated", "cached", "failed", "failure_reasons", "model_calls")
    cli(run, cfg, lambda s: print({k: s[k] for k in keys}))


if __name__ == "__main__":
    check_overrides("generate_traces")
    main()
