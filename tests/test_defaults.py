"""One default per setting: each class a config group maps onto has, field by field, the
defaults its YAML holds, so a user of the library and a user of the command line get the same.

Table-driven: a (class, config, section) row per pair. A class is a dataclass (its field
defaults) or a callable Hydra builds (its keyword defaults). Every defaulted field must be in the
section with the same value, and every key of the section must be a field, unless the row says
why not (``skip``: field or key -> reason; ``rename``: field -> its key).
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from tests.helpers import CONFIG_DIR
from tte_recsys.config import EvalConfig, LabelConfig, PairConfig, SplitConfig
from tte_recsys.data.adapters import AmazonOfficeAdapter, MovieLensAdapter, TabularAdapter
from tte_recsys.evaluation.mmeb.readers import ReadSettings
from tte_recsys.experiment.config import CompareConfig, I2IConfig, SelectConfig, StageConfig
from tte_recsys.losses.mtmh import LossConfig
from tte_recsys.models.id_prior import IdPrior
from tte_recsys.models.mtmh import ModelConfig
from tte_recsys.reasoner_training.expert_iteration import ExpertIterationSettings
from tte_recsys.reasoner_training.grpo import EgRlSettings
from tte_recsys.reasoner_training.methods import ScoreSettings
from tte_recsys.reasoner_training.policy import PolicySettings
from tte_recsys.reasoner_training.restrain import RestrainSettings
from tte_recsys.reasoner_training.rewards import RewardSettings
from tte_recsys.reasoner_training.sft import SftSettings
from tte_recsys.reasoner_training.unified import UnifiedSettings
from tte_recsys.serving.faiss_index import IndexConfig
from tte_recsys.training.loop import TrainerConfig
from tte_recsys.tte.factory import build_embedder
from tte_recsys.tte.fusion import TraceFusion
from tte_recsys.tte.http import ClientSettings
from tte_recsys.tte.lora import LoraSettings
from tte_recsys.tte.openai_embedder import OpenAIEmbedder
from tte_recsys.tte.reasoner.backends import GenerationSettings, HFReasoner, LoadSettings
from tte_recsys.tte.reasoner.openai_backend import CompletionSettings, OpenAIReasoner

TRACE_KEYS = {k: "TraceFusion's (its own row)" for k in ("traces", "trace_weight", "trace_side")}
FUSION_KEYS = {"mode": "traces", "weight": "trace_weight", "side": "trace_side"}
SERVED = {"embedder.base_url=http://127.0.0.1:9/v1", "embedder.model=m"}


@dataclass(frozen=True)
class Pair:
    """A class (or callable) and the config section that configures it."""

    target: Callable[..., Any]
    config: str  # the pipeline config composed (configs/<config>.yaml)
    section: str  # where in it, dotted ("" = the top level)
    overrides: tuple[str, ...] = ()
    skip: Mapping[str, str] = field(default_factory=dict)  # field or key -> why it is not compared
    rename: Mapping[str, str] = field(default_factory=dict)  # field -> its key in the section
    shared: bool = False  # the section holds another class's keys too (that class's row checks them)

    @property
    def id(self) -> str:
        where = f"{self.config}:{self.section or '<top>'}"
        given = f"[{' '.join(o for o in self.overrides if o not in SERVED)}]" if self.overrides else ""
        return f"{getattr(self.target, '__name__', self.target)}@{where}{given}"


PAIRS = [
    Pair(TrainerConfig, "train_i2i", "trainer"),
    Pair(LossConfig, "train_i2i", "loss", skip={"lam": "train_i2i chooses it on valid from select.lams"}),
    Pair(ModelConfig, "train_i2i", "model", skip={"features": "the data's: ${data.item_features}"}),
    Pair(EvalConfig, "train_i2i", "eval"),
    Pair(SelectConfig, "train_i2i", "select"),
    Pair(CompareConfig, "train_i2i", "compare"),
    Pair(IdPrior, "train_i2i", "id_prior", skip={"shrink": "chosen on valid from select.id_prior_shrinks"}),
    Pair(LoraSettings, "train_i2i", "lora"),
    Pair(IndexConfig, "export_faiss", "serving", ("model_dir=unused",)),
    Pair(ReadSettings, "eval_mmeb", "read"),
    *(
        Pair(PairConfig, "evaluate", "data.pairs", (f"data={d}",))
        for d in ("movielens", "amazon_office", "tabular")
    ),
    *(
        Pair(SplitConfig, "evaluate", "data.split", (f"data={d}",))
        for d in ("movielens", "amazon_office", "tabular")
    ),
    Pair(LabelConfig, "evaluate", "data.labels"),
    *(
        Pair(
            LabelConfig,
            "evaluate",
            "data.labels",
            (f"data={d}",),
            skip={"fields": "each catalog's attributes"},
        )
        for d in ("amazon_office", "tabular")
    ),
    Pair(MovieLensAdapter, "evaluate", "data.adapter", skip={"name": "data.name"}),
    Pair(
        AmazonOfficeAdapter, "evaluate", "data.adapter", ("data=amazon_office",), skip={"name": "data.name"}
    ),
    Pair(TabularAdapter, "evaluate", "data.adapter", ("data=tabular",)),
    Pair(
        StageConfig,
        "train_i2i",
        "",
        skip={
            k: "another section or pipeline setting"
            for k in (
                "data",
                "eval",
                "embedder",
                "reasoner",
                "model",
                "trainer",
                "loss",
                "select",
                "compare",
                "lora",
                "id_prior",
                "content_checkpointing",
                "resume",
                "output_dir",
            )
        },
    ),
    Pair(
        I2IConfig,
        "train_i2i",
        "",
        skip={"stages": "StageConfig (its own row)"}
        | {
            k: "a section with its own row"
            for k in ("data", "embedder", "reasoner", "compare", "lora", "id_prior")
        }
        | {k: "StageConfig's" for k in ("content_dir", "traces_dir", "prompt", "cache_dir", "flush_every")}
        | {k: "StageConfig's" for k in ("shard_size", "output_dir")},
    ),
    Pair(
        TraceFusion,
        "embed_items",
        "embedder",
        rename=FUSION_KEYS,
        shared=True,
    ),
    Pair(
        build_embedder,
        "embed_items",
        "embedder",
        skip={
            "runtime": "the builder makes the PyTorch embedder that training, LoRA and export hold; "
            "the pipelines' section picks auto (ONNX Runtime on a CPU, measured faster)",
            "batch_size": "encode's, read by the pipelines",
            "meta_queries": "not in the group (pooling=meta only): +embedder.meta_queries=N, else the builder's",
            "meta_heads": "not in the group (pooling=meta only): +embedder.meta_heads=N, else the builder's",
            "compile": "a library option (inference only), not a pipeline setting",
            "onnx_cache_dir": "a library option, not a pipeline setting",
        }
        | TRACE_KEYS,
    ),
    Pair(
        OpenAIEmbedder,
        "embed_items",
        "embedder",
        ("embedder=openai", *sorted(SERVED)),
        skip={"client": "ClientSettings (its own row)"} | TRACE_KEYS,
    ),
    Pair(
        TraceFusion,
        "embed_items",
        "embedder",
        ("embedder=openai",),
        rename=FUSION_KEYS,
        shared=True,
    ),
    Pair(ClientSettings, "embed_items", "embedder.client", ("embedder=openai",)),
    Pair(
        HFReasoner,
        "generate_traces",
        "reasoner",
        ("reasoner=hf",),
        skip={
            "generation": "GenerationSettings (its row)",
            "load": "LoadSettings (its row)",
        },
    ),
    Pair(GenerationSettings, "generate_traces", "reasoner.generation", ("reasoner=hf",)),
    Pair(LoadSettings, "generate_traces", "reasoner.load", ("reasoner=hf",)),
    Pair(
        OpenAIReasoner,
        "generate_traces",
        "reasoner",
        ("reasoner=openai",),
        skip={
            "client": "ClientSettings (its row)",
            "completion": "CompletionSettings (its row)",
        },
    ),
    Pair(ClientSettings, "generate_traces", "reasoner.client", ("reasoner=openai",)),
    Pair(CompletionSettings, "generate_traces", "reasoner.completion", ("reasoner=openai",)),
    Pair(PolicySettings, "train_reasoner", "train"),
    Pair(RewardSettings, "train_reasoner", "reward"),
    Pair(EgRlSettings, "train_reasoner", "method", ("method=eg_rl",)),
    Pair(RestrainSettings, "train_reasoner", "method", ("method=restrain",)),
    Pair(SftSettings, "train_reasoner", "method", ("method=sft",)),
    Pair(ExpertIterationSettings, "train_reasoner", "method", ("method=expert_iteration",)),
    Pair(UnifiedSettings, "train_reasoner", "method", ("method=unified_head",)),
    Pair(ScoreSettings, "train_reasoner", "method", ("method=score",)),
]
# groups whose options only override other groups' values, or hold no class of their own
NO_CLASS = {
    "debug": "overrides for tiny runs",
    "experiment": "presets of other groups",
    "hydra": "Hydra's own",
}


def _defaults(target: Callable[..., Any]) -> dict[str, Any]:
    """Field (or keyword) -> default, for those that have one."""
    if dataclasses.is_dataclass(target):
        out = {}
        for f in dataclasses.fields(target):
            if f.default is not dataclasses.MISSING:
                out[f.name] = f.default
            elif f.default_factory is not dataclasses.MISSING:
                out[f.name] = f.default_factory()
        return out
    params = inspect.signature(target).parameters.values()
    return {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}


def _names(target: Callable[..., Any]) -> set[str]:
    if dataclasses.is_dataclass(target):
        return {f.name for f in dataclasses.fields(target)}
    return set(inspect.signature(target).parameters) - {"self"}


def _plain(value: Any) -> Any:
    """Lists as tuples, mappings as dicts, all the way down: how YAML and defaults compare."""
    if isinstance(value, (list, tuple)):
        return tuple(_plain(v) for v in value)
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _section(pair: Pair) -> dict[str, Any]:
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(pair.config, overrides=["output_dir=unused", *pair.overrides])
    node = OmegaConf.select(cfg, pair.section) if pair.section else cfg
    raw = OmegaConf.to_container(node, resolve=False)
    assert isinstance(raw, dict), f"{pair.section} is not a section"
    out = {}
    for k, v in raw.items():
        if isinstance(v, str) and v.startswith("${"):  # an interpolation: its resolved value
            got = OmegaConf.select(node, str(k))
            v = OmegaConf.to_container(got) if OmegaConf.is_config(got) else got
        out[str(k)] = v
    return out


@pytest.mark.parametrize("pair", PAIRS, ids=[p.id for p in PAIRS])
def test_defaults_equal_the_yaml(pair: Pair) -> None:
    section = _section(pair)
    keys = {f: pair.rename.get(f, f) for f in _names(pair.target)}
    defaults = _defaults(pair.target)
    wrong = {
        f: (defaults[f], section[k])
        for f, k in keys.items()
        if f in defaults and f not in pair.skip and k in section and _plain(defaults[f]) != _plain(section[k])
    }
    assert not wrong, f"{pair.id}: default != YAML for {wrong}"
    absent = sorted(f for f, k in keys.items() if f in defaults and f not in pair.skip and k not in section)
    assert not absent, f"{pair.id}: defaulted fields the YAML lacks: {absent}"
    unknown = sorted(set(section) - set(keys.values()) - set(pair.skip) - {"_target_"})
    assert pair.shared or not unknown, f"{pair.id}: YAML keys that are no field: {unknown}"
    stale = sorted(set(pair.skip) - set(keys) - set(section))
    assert not stale, f"{pair.id}: skip names neither a field nor a key: {stale}"


def test_every_config_group_has_a_row() -> None:
    """A new group fails here until the table above pairs it with its class."""
    groups = {p.name for p in Path(CONFIG_DIR).iterdir() if p.is_dir()}
    covered = {p.section.split(".")[0] for p in PAIRS if p.section}
    assert groups - covered - set(NO_CLASS) == set(), sorted(groups - covered - set(NO_CLASS))
