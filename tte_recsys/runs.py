"""What every pipeline does around its library calls: find the dataset, the output folder, and
finish with the resolved config and a manifest. Pipelines stay thin (docs/design.md,
"Pipelines and configuration")."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from hydra import compose, initialize_config_dir
from hydra.errors import HydraException, InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from tte_recsys import distributed
from tte_recsys.artifacts import write_manifest, write_text
from tte_recsys.config import LabelConfig, PairConfig, SplitConfig, from_mapping
from tte_recsys.data.dataset import Dataset

__all__ = [
    "CONFIG_DIR",
    "USER_ERRORS",
    "check_overrides",
    "cli",
    "data_configs",
    "finish_run",
    "load_dataset",
    "output_dir",
    "user_message",
]

log = logging.getLogger(__name__)
T = TypeVar("T")
CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
# What a user can fix (bad input, a missing or unwritable file, a full disk, a wrong setting):
# reported as one line, not a traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError, RuntimeError)


def output_dir(cfg: DictConfig) -> Path:
    """The run's output folder (``output_dir``, by default Hydra's run directory), created."""
    out = Path(str(cfg.output_dir))
    out.mkdir(parents=True, exist_ok=True)
    return out


def load_dataset(data_cfg: DictConfig) -> Dataset:
    """The dataset a ``data`` config names: a ``prepared_dir`` if set, else its adapter; optionally
    cut to ``sample_users`` users, then to the first ``max_items`` of what remains."""
    for key in ("sample_users", "max_items"):
        n = data_cfg.get(key)
        if n is not None and not (isinstance(n, int) and not isinstance(n, bool) and n > 0):
            raise ValueError(f"data.{key}={n!r}: expected a positive count, or null (all)")
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


def cli(run: Callable[[DictConfig], T], cfg: DictConfig, show: Callable[[T], object] | None = None) -> None:
    """A pipeline's ``main``: ``run(cfg)``, then ``show`` its result; the process group is shut
    down either way. A user-facing error prints one line, ``error: <what, where, what to do>``,
    and exits with status 2; ``HYDRA_FULL_ERROR=1`` raises it with the full trace instead."""
    try:
        result = run(cfg)
        if show is not None:
            show(result)
    except Exception as e:
        message = user_message(e)
        if os.environ.get("HYDRA_FULL_ERROR") == "1" or message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        print("(HYDRA_FULL_ERROR=1 shows the full trace)", file=sys.stderr)
        raise SystemExit(2) from None
    finally:
        distributed.shutdown()


def user_message(e: BaseException) -> str | None:
    """What to tell the user about ``e`` if they can fix it (:data:`USER_ERRORS`, or a required
    config value left unset), else None: a bug, which keeps its trace."""
    # a component that refused its config (built by hydra.utils.instantiate) carries the reason
    cause = e.__cause__ if isinstance(e, InstantiationException) and e.__cause__ is not None else e
    if isinstance(cause, MissingMandatoryValue):
        key = cause.full_key or "a config value"
        return f"{key} is required but not set (??? in the config): pass {key}=<value>"
    return str(cause) if isinstance(cause, USER_ERRORS) else None


def _unknown_key(cfg: DictConfig, key: str) -> str | None:
    """Why ``key`` (dotted) is not in ``cfg``, listing the valid keys where it stops; None if it is."""
    node: Any = cfg
    path: list[str] = []
    for part in key.split("."):
        if not isinstance(node, DictConfig) or node._is_none() or node._is_missing():
            return None  # a null, list or free-form value: what it holds is checked where it is read
        try:  # not ``in``: it is False for a ??? (missing) value, which is a key
            child = node._get_node(part)
        except OmegaConfBaseException:  # struct mode refuses an unknown key
            child = None
        if child is None:
            where = ".".join(path) or "the top level"
            return f"unknown config key {key!r}: {where} has {sorted(str(k) for k in node)}"
        node = child
        path.append(part)
    return None


def check_overrides(config_name: str, overrides: Sequence[str] | None = None) -> None:
    """Refuse a command-line override that names no key of ``config_name`` (a typo), listing the
    valid keys where the path stops, before Hydra (whose message does not list them) starts.
    Group choices (``embedder=openai``), additions (``+key=...``), deletions and ``hydra.*`` are
    left to Hydra, which lists a group's options itself."""
    args = list(sys.argv[1:] if overrides is None else overrides)
    plain = [a for a in args if "=" in a and not a.startswith(("+", "~", "hydra."))]
    groups = [a for a in plain if (CONFIG_DIR / a.split("=", 1)[0]).is_dir()]
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            cfg = compose(config_name, overrides=groups)
    except (HydraException, OmegaConfBaseException):
        return  # a bad group option: Hydra says so, with the options
    for a in plain:
        key = a.split("=", 1)[0]
        if a in groups:
            continue
        if (why := _unknown_key(cfg, key)) is not None:
            print(f"error: {why}", file=sys.stderr)
            raise SystemExit(2)
