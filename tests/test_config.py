"""Every config group composes and instantiates; bad config fails with the key named."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from hydra.utils import instantiate
from omegaconf import DictConfig
from omegaconf.errors import MissingMandatoryValue

from tests.helpers import CONFIG_DIR
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


# --- every option of every config group composes and builds what it configures --------------

GROUPS = sorted(p.name for p in Path(CONFIG_DIR).iterdir() if p.is_dir() and p.name != "hydra")
PIPELINE_CONFIGS = sorted(p.stem for p in Path(CONFIG_DIR).glob("*.yaml"))


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (Path(CONFIG_DIR) / group).glob("*.yaml"))


def test_every_group_is_covered_below() -> None:
    """A new group or option fails here until the test below builds it."""
    assert set(GROUPS) == set(BUILDERS), sorted(set(GROUPS) ^ set(BUILDERS))


def _build_section(cls: type) -> Callable[[DictConfig, str], object]:
    return lambda cfg, group: from_mapping(cls, cfg[group], group)


def _build_data(cfg: DictConfig, group: str) -> object:
    return instantiate(cfg.data.adapter)


def _build_embedder(cfg: DictConfig, group: str) -> object:
    """Through the one factory every pipeline uses; a served embedder is built, nothing connects."""
    from tte_recsys.tte.embedder import Embedder
    from tte_recsys.tte.factory import encoder_from_config
    from tte_recsys.tte.openai_embedder import OpenAIEmbedder

    local = {"runtime": "torch", "device": "cpu"} if "model_path" in cfg.embedder else {}
    emb, model_id, fingerprint = encoder_from_config({**cfg.embedder, **local})
    assert isinstance(emb, OpenAIEmbedder if local == {} else Embedder) and model_id and fingerprint
    return emb


def _build_reasoner(cfg: DictConfig, group: str) -> object:
    from tte_recsys.tte.reasoner.backends import Reasoner

    r = instantiate(cfg.reasoner)
    assert isinstance(r, Reasoner) and r.reasoner_id
    return r


def _build_experiment(cfg: DictConfig, group: str) -> object:
    from tte_recsys.experiment.config import I2IConfig

    return I2IConfig.from_cfg(cfg)


def _build_method(cfg: DictConfig, group: str) -> object:
    from tte_recsys.experiment.reasoner import build_method

    return build_method(cfg.method)


def _build_debug(cfg: DictConfig, group: str) -> object:
    return cfg.data.sample_users


def _builders() -> dict[str, Callable[[DictConfig, str], object]]:
    from tte_recsys.experiment.config import CompareConfig, SelectConfig
    from tte_recsys.losses.mtmh import LossConfig
    from tte_recsys.models.id_prior import IdPrior
    from tte_recsys.models.mtmh import ModelConfig
    from tte_recsys.serving.faiss_index import IndexConfig
    from tte_recsys.training.loop import TrainerConfig
    from tte_recsys.tte.lora import LoraSettings

    return {
        "data": _build_data,
        "eval": _build_section(EvalConfig),
        "embedder": _build_embedder,
        "reasoner": _build_reasoner,
        "model": _build_section(ModelConfig),
        "trainer": _build_section(TrainerConfig),
        "loss": _build_section(LossConfig),
        "select": _build_section(SelectConfig),
        "compare": _build_section(CompareConfig),
        "lora": _build_section(LoraSettings),
        "id_prior": _build_section(IdPrior),
        "serving": _build_section(IndexConfig),
        "experiment": _build_experiment,
        "debug": _build_debug,
        "method": _build_method,
    }


BUILDERS = _builders()


@pytest.mark.parametrize(("group", "option"), [(g, o) for g in GROUPS for o in _options(g)])
def test_every_config_group_option_composes_and_builds(
    compose_cfg: Callable[..., DictConfig], tiny_qwen_dir: Path, tmp_path: Path, group: str, option: str
) -> None:
    # train_i2i holds every group but serving and method; export_faiss holds serving,
    # train_reasoner method
    root = {"serving": "export_faiss", "method": "train_reasoner"}.get(group, "train_i2i")
    overrides = [f"{group}={option}"]
    if group == "embedder" and option == "openai":
        overrides += ["embedder.base_url=http://127.0.0.1:9/v1", "embedder.model=m"]
    if root == "export_faiss":
        overrides.append("model_dir=unused")
    if group == "data" and option == "tabular":
        overrides += ["data.adapter.items_path=items.csv", "data.adapter.interactions_path=log.csv"]
    if group == "embedder" and option != "openai":
        overrides.append(f"embedder.model_path={tiny_qwen_dir}")
    if group == "reasoner" or (group == "experiment" and option.startswith("tte_")):
        overrides += _reasoner_overrides(option, tiny_qwen_dir, tmp_path)
    cfg = compose_cfg(root, overrides)
    assert BUILDERS[group](cfg, group) is not None


def _reasoner_overrides(option: str, model: Path, tmp_path: Path) -> list[str]:
    """What a reasoner option needs from its user: a model folder (the tiny model stands in for
    any local one, SmolLM2's included), a traces file, or a server address (nothing connects)."""
    if option in ("hf", "smollm2", "tte_hf", "tte_smollm2"):
        return [f"reasoner.model_path={model}", "reasoner.load.device=cpu"]
    if option == "file":
        import polars as pl

        pl.DataFrame({"item_id": ["1"], "trace": ["t"]}).write_parquet(tmp_path / "traces.parquet")
        return [f"reasoner.path={tmp_path / 'traces.parquet'}"]
    if option == "openai":
        return ["reasoner.base_url=http://127.0.0.1:9/v1", "reasoner.model=m"]
    return []


@pytest.mark.parametrize("pipeline", PIPELINE_CONFIGS)
def test_every_pipeline_accepts_debug_tiny(pipeline: str) -> None:
    from hydra import compose, initialize_config_dir

    required = {"export_faiss": ["model_dir=m"], "query": ["bundle_dir=b", "item_id=1"]}
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(pipeline, overrides=["debug=tiny", *required.get(pipeline, [])])
    assert cfg.data.sample_users == 60  # the tiny run's settings arrived


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ("reasoner.generation.max_new_tokens=0", r"reasoner.generation: max_new_tokens=0"),
        (
            "+reasoner.generation.max_new_tokns=3",
            r"reasoner.generation: unknown key\(s\) \['max_new_tokns'\]",
        ),
    ],
)
def test_reasoner_settings_are_checked(
    compose_cfg: Callable[..., DictConfig], tiny_qwen_dir: Path, override: str, match: str
) -> None:
    cfg = compose_cfg("generate_traces", ["reasoner=hf", f"reasoner.model_path={tiny_qwen_dir}", override])
    with pytest.raises(Exception, match=match):
        instantiate(cfg.reasoner)
