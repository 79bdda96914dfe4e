"""Shared fixtures: tiny tables built in code, and Hydra composition of the real configs."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import polars as pl
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from tte_recsys.data.dataset import Dataset

os.environ.setdefault("HF_HUB_OFFLINE", "1")
CONFIG_DIR = str(Path(__file__).resolve().parents[1] / "configs")


def make_dataset(rows: list[tuple[str, str, int]], items: dict[str, list[str]] | None = None) -> Dataset:
    """A dataset from (user, item, timestamp) rows; ``items`` maps item id -> genres."""
    ids = sorted({r[1] for r in rows} | set(items or {}))
    genres = items or {}
    it = pl.DataFrame(
        {
            "item_id": ids,
            "title": [f"item {i}" for i in ids],
            "text": [""] * len(ids),
            "image_path": pl.Series([None] * len(ids), dtype=pl.String),
            "genres": [genres.get(i, []) for i in ids],
        },
        schema_overrides={"genres": pl.List(pl.String)},
    )
    inter = pl.DataFrame(
        {
            "user_id": [r[0] for r in rows],
            "item_id": [r[1] for r in rows],
            "timestamp": [r[2] for r in rows],
            "weight": pl.Series([None] * len(rows), dtype=pl.Float64),
        },
        schema_overrides={"timestamp": pl.Int64},
    )
    return Dataset.build("tiny", it, inter)


@pytest.fixture
def compose_cfg(tmp_path: Path) -> Callable[..., DictConfig]:
    """Compose a pipeline's real config with overrides, writing into ``tmp_path``."""

    def _compose(config_name: str, overrides: list[str] | None = None) -> DictConfig:
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            return compose(config_name, overrides=[f"output_dir={tmp_path / 'out'}", *(overrides or [])])

    return _compose


@pytest.fixture(scope="session")
def tiny_qwen_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Qwen2 causal LM + tokenizer, saved like a real model folder (built once per run)."""
    from tte_recsys.tte.tiny import build_tiny_qwen

    return build_tiny_qwen(tmp_path_factory.mktemp("tiny_qwen"))
