"""Every config group composes and instantiates; bad config fails with the key named."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from hydra.utils import instantiate
from omegaconf import DictConfig
from omegaconf.errors import MissingMandatoryValue

from tests.conftest import CONFIG_DIR
from tte_recsys.config import EvalConfig, LabelConfig, PairConfig, SplitConfig, from_mapping
from tte_recsys.data.dataset import Dataset
from tte_recsys.runs import data_configs

PIPELINES = ["prepare_data", "evaluate"]
DATA = sorted(p.stem for p in (Path(CONFIG_DIR) / "data").glob("*.yaml"))


@pytest.mark.parametrize("pipeline", PIPELINES)
@pytest.mark.parametrize("data", [d for d in DATA if d != "tabular"])
def test_builtin_data_configs_compose_and_load(
    compose_cfg: Callable[..., DictConfig], pipeline: str, data: str
) -> None:
    cfg = compose_cfg(pipeline, [f"data={data}", "debug=tiny"])
    pairs, split, labels = data_configs(cfg.data)
    assert (
        isinstance(pairs, PairConfig) and isinstance(split, SplitConfig) and isinstance(labels, LabelConfig)
    )
    ds = instantiate(cfg.data.adapter).load()
    assert isinstance(ds, Dataset) and ds.num_items > 0
    assert cfg.data.sample_users == 60


def test_tabular_config_requires_paths(compose_cfg: Callable[..., DictConfig]) -> None:
    cfg = compose_cfg("evaluate", ["data=tabular"])
    with pytest.raises(MissingMandatoryValue, match="items_path"):
        instantiate(cfg.data.adapter)


def test_readme_tabular_overrides_compose(compose_cfg: Callable[..., DictConfig]) -> None:
    """The README's own-data command: whole-mapping overrides, including the optional weight
    column and attributes, compose (they failed on the struct config before the optional keys
    were listed as null)."""
    cfg = compose_cfg(
        "evaluate",
        [
            "data=tabular",
            "data.adapter.items_path=items.csv",
            "data.adapter.interactions_path=log.parquet",
            "data.adapter.item_columns={item_id: sku, title: name}",
            'data.adapter.attributes={category: {column: cats, sep: "|"}}',
            "data.adapter.interaction_columns={user_id: uid, item_id: sku, timestamp: ts, weight: rating}",
            "data.labels.fields={category: 1.0}",
        ],
    )
    adapter = instantiate(cfg.data.adapter)
    assert adapter.item_columns == {
        "item_id": "sku",
        "title": "name",
        "text": None,
        "image_path": None,
        "available_from": None,
    }
    assert adapter.attributes == {"category": {"column": "cats", "sep": "|"}}
    assert adapter.interaction_columns["weight"] == "rating"


def test_experiment_and_eval_groups(compose_cfg: Callable[..., DictConfig]) -> None:
    cfg = compose_cfg("evaluate", ["experiment=amazon_office"])
    assert cfg.data.name == "amazon_office"
    ev = from_mapping(EvalConfig, cfg.eval, "eval")
    assert ev.select_k in ev.ks


def test_unknown_key_is_named() -> None:
    with pytest.raises(ValueError, match=r"data.pairs: unknown key\(s\) \['windw'\]; valid keys are"):
        from_mapping(PairConfig, {"windw": 3}, "data.pairs")


@pytest.mark.parametrize(
    ("cls", "raw", "msg"),
    [
        (PairConfig, {"window": 1}, r"pairs.window=1: expected an integer >= 2"),
        (PairConfig, {"window": None, "max_seconds": None}, "set window and/or max_seconds"),
        (
            SplitConfig,
            {"valid_quantile": 0.9, "test_quantile": 0.8},
            "expected 0 < valid_quantile < test_quantile < 1",
        ),
        (LabelConfig, {"fields": {"genres": 0.0}}, r"labels.fields.genres=0.0: weights must be > 0"),
        (EvalConfig, {"ks": [10], "select_k": 50}, r"eval.select_k=50 must be one of eval.ks=\[10\]"),
        (EvalConfig, {"ease_max_items": 0}, r"eval.ease_max_items=0: expected a positive count or null"),
    ],
)
def test_invalid_values(cls: type, raw: dict[str, object], msg: str) -> None:
    with pytest.raises(ValueError, match=msg):
        from_mapping(cls, raw, "x")
