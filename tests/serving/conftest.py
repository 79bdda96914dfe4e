"""The serving tests' tiny bundle: a debug=tiny training run exported by export_faiss, built once
for the package (tests/serving/test_faiss.py and test_service.py read it, never change it)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from pipelines import export_faiss, train_i2i
from tests.helpers import CONFIG_DIR


def _compose(name: str, overrides: list[str]) -> DictConfig:
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(name, overrides=overrides)


@pytest.fixture(scope="package")
def bundle(tiny_qwen_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:  # type: ignore[type-arg]
    """(the train_i2i run, its export_faiss bundle, the run's report)."""
    root = tmp_path_factory.mktemp("serving")
    args = ["debug=tiny", f"embedder.model_path={tiny_qwen_dir}", "embedder.pooling=last"]
    args += ["compare.single_head=false", "compare.id_only=false", "select.shares=[0.5]"]
    # No id prior here: the tiny random model's item vectors lie in a narrow cone (cosines above
    # 0.999), and the prior narrows it further, to where float32 rounding in faiss's sgemm and
    # numpy's matmul orders near-tied neighbours (one ulp apart) differently, while the tests
    # want exact equality. Real data shows the same effect in 0.1% of slots (docs/results.md).
    args += ["select.id_prior_shrinks=[0.0]"]
    # A popularity prior, so that every test goes through the biased index ([v, bias] rows).
    args += ["select.pop_priors=[0.05]"]
    report = train_i2i.run(_compose("train_i2i", [*args, f"output_dir={root / 'run'}"]))
    export_faiss.run(
        _compose("export_faiss", ["debug=tiny", f"model_dir={root / 'run'}", f"output_dir={root / 'bundle'}"])
    )
    return root / "run", root / "bundle", report
