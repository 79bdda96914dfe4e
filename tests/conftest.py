"""Shared fixtures: tiny tables built in code, and Hydra composition of the real configs."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from tests.helpers import CONFIG_DIR

os.environ.setdefault("HF_HUB_OFFLINE", "1")


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
