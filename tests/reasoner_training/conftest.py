from __future__ import annotations

from pathlib import Path

import pytest

from tte_recsys.reasoner_training.toy import build_toy_models


@pytest.fixture(scope="session")
def toy_models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(toy reasoner, toy embedder) folders, built once."""
    return build_toy_models(tmp_path_factory.mktemp("toy"))


@pytest.fixture(scope="session")
def loud_toy_models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The toy whose titles say their category as loudly as their product words (the item's own
    vector already ranks its partners first), built once."""
    return build_toy_models(tmp_path_factory.mktemp("loud_toy"), category_scale=1.0)
