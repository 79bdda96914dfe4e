from __future__ import annotations

from pathlib import Path

import pytest

from tte_recsys.reasoner_training.toy import build_toy_models


@pytest.fixture(scope="session")
def toy_models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(toy reasoner, toy embedder) folders, built once."""
    return build_toy_models(tmp_path_factory.mktemp("toy"))
