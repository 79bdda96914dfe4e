"""What every pipeline does around its library calls: find the dataset, the output folder, and
finish with the resolved config and a manifest. Pipelines stay thin (STYLE.md)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from tte_recsys.artifacts import write_manifest, write_text
from tte_recsys.config import LabelConfig, PairConfig, SplitConfig, from_mapping
from tte_recsys.data.dataset import Dataset

__all__ = ["data_configs", "finish_run", "load_dataset", "output_dir"]

log = logging.getLogger(__name__)


def output_dir(cfg: DictConfig) -> Path:
    """The run's output folder (``output_dir``, by default Hydra's run directory), created."""
    out = Path(str(cfg.output_dir))
    out.mkdir(parents=True, exist_ok=True)
    return out


def load_dataset(data_cfg: DictConfig) -> Dataset:
    """The dataset a ``data`` config names: a ``prepared_dir`` if set, else its adapter; optionally
    cut to ``sample_users`` users, then to the first ``max_items`` of what remains."""
    if data_cfg.get("prepared_dir"):
        ds = Dataset.load(str(data_cfg.prepared_dir))
    else:
        if "adapter" not in data_cfg:
            raise ValueError("data: set data.adapter (with _target_) or data.prepared_dir")
        ds = instantiate(data_cfg.adapter).load()
    if data_cfg.get("sample_users"):
        ds = ds.sample_users(int(data_cfg.sample_users))
    if data_cfg.get("max_items"):
        ds = ds.head_items(int(data_cfg.max_items))
    log.info("dataset %s: %s", ds.name, ds.stats())
    return ds


def data_configs(data_cfg: DictConfig) -> tuple[PairConfig, SplitConfig, LabelConfig]:
    """The validated pair-mining, split and label sections of a ``data`` config."""
    return (
        from_mapping(PairConfig, data_cfg.get("pairs"), "data.pairs"),
        from_mapping(SplitConfig, data_cfg.get("split"), "data.split"),
        from_mapping(LabelConfig, data_cfg.get("labels"), "data.labels"),
    )


def finish_run(out: Path, kind: str, cfg: DictConfig, extra: dict[str, Any] | None = None) -> None:
    """Write the resolved ``config.yaml`` and, last, ``manifest.json`` (its presence marks a complete run)."""
    write_text(out / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    resolved = OmegaConf.to_container(cfg, resolve=True)
    write_manifest(out, kind, {"config": resolved, **(extra or {})})
