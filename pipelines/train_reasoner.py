"""Reasoner training: ``python -m pipelines.train_reasoner method=sft|eg_rl|restrain|expert_iteration|unified_head|score``.

Trains the reasoner so that its traces help the embedder retrieve (docs/design.md, "Reasoner
training"), writes ``report.json`` / ``report.md`` with the held-out reward (start, end, the
paired bootstrap interval of the change), the generated tokens and the curves (``curves.png``),
and exports the trained reasoner to ``<run>/export/`` (``reasoner=hf reasoner.model_path=<run>/export``).
A method's settings are ``method.<key>=...`` (``configs/method/<name>.yaml``).
``resume=true output_dir=<run>`` continues a killed run from its last checkpoint. ``score=true``
then generates the catalog's traces with the export and scores content-only retrieval on valid and test.
"""

from __future__ import annotations

from typing import Any

import hydra
from omegaconf import DictConfig

from tte_recsys.experiment.reasoner import train_reasoner
from tte_recsys.runs import check_overrides, cli, output_dir


def run(cfg: DictConfig) -> dict[str, Any]:
    return train_reasoner(cfg, output_dir(cfg))


@hydra.main(version_base="1.3", config_path="../configs", config_name="train_reasoner")
def main(cfg: DictConfig) -> None:
    keys = ("method", "pairs", "heldout_reward", "generated_tokens", "unified", "retrieval")
    cli(run, cfg, lambda r: print({k: r[k] for k in keys if k in r}))


if __name__ == "__main__":
    check_overrides("train_reasoner")
    main()
