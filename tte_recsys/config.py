"""Domain configuration as frozen dataclasses, validated on construction.

Hydra composes YAML; pipelines turn each section into one of these with :func:`from_mapping`,
which rejects unknown keys by name and values of the wrong type (``trainer.max_steps=abc``) by
key, so a typo in a config fails before any work starts.
"""

from __future__ import annotations

import dataclasses
import numbers
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar, Union, cast

from omegaconf import DictConfig, OmegaConf

__all__ = ["EvalConfig", "LabelConfig", "PairConfig", "SplitConfig", "from_mapping", "settings"]

T = TypeVar("T")


@dataclass(frozen=True)
class PairConfig:
    """How co-engagement pairs are mined from each user's history.

    Attributes:
        window: two interactions pair when some order of timestamp ties puts them within
            ``window`` consecutive interactions (``window=2``: neighbours only). ``None``: no limit.
        max_seconds: two interactions pair when their timestamps differ by at most this. ``None``: no limit.
            With both set, both must hold.
        min_rating: keep only interactions with ``weight >= min_rating`` (``None``: keep all).
        symmetric: count both directions of every pair; otherwise only earlier -> later (and both
            directions for timestamp ties, whose order is unknown).
        train_window: the window of the pairs the model *trains* on (``None``: ``window``). The
            held-out positives always use ``window``, so this is a training choice, made on valid.
    """

    window: int | None = 5
    max_seconds: int | None = None
    min_rating: float | None = None
    symmetric: bool = True
    train_window: int | None = None

    def __post_init__(self) -> None:
        if self.window is None and self.max_seconds is None:
            raise ValueError(
                "pairs: set window and/or max_seconds; with neither, every pair of a user's items pairs"
            )
        if self.window is not None and self.window < 2:
            raise ValueError(
                f"pairs.window={self.window}: expected an integer >= 2 (2 = adjacent interactions)"
            )
        if self.max_seconds is not None and self.max_seconds < 0:
            raise ValueError(f"pairs.max_seconds={self.max_seconds}: expected >= 0")
        if self.train_window is not None and self.train_window < 2:
            raise ValueError(
                f"pairs.train_window={self.train_window}: expected an integer >= 2, or null (= window)"
            )


@dataclass(frozen=True)
class SplitConfig:
    """Global temporal split at quantiles of all interaction timestamps (docs/design.md, "Evaluation protocol")."""

    valid_quantile: float = 0.8
    test_quantile: float = 0.9

    def __post_init__(self) -> None:
        if not 0.0 < self.valid_quantile < self.test_quantile < 1.0:
            raise ValueError(
                f"split: expected 0 < valid_quantile < test_quantile < 1, got "
                f"valid_quantile={self.valid_quantile}, test_quantile={self.test_quantile}"
            )


@dataclass(frozen=True)
class LabelConfig:
    """Graded semantic relevance between items, in [0, 1], from one of three sources.

    Attributes:
        fields: attribute column -> weight (weights > 0; normalised to sum to 1): the label is the
            weighted mean of the per-attribute Jaccard similarities.
        relation: optional relation name from the dataset's relations table (e.g. ``also_viewed``):
            then the label is 1 for related pairs (either direction) and 0 otherwise, and
            ``fields`` is ignored.
        teacher: optional folder of item vectors written by ``pipelines.embed_items`` (a teacher
            content encoder): then the label is the cosine of the two items' vectors, clipped at 0,
            and ``fields`` is ignored. For catalogs without categorical attributes. In
            ``pipelines.train_i2i`` the value ``content`` means the run's own content vectors.
    """

    fields: dict[str, float] = field(default_factory=lambda: {"genres": 1.0})
    relation: str | None = None
    teacher: str | None = None

    def __post_init__(self) -> None:
        if self.relation is not None and self.teacher is not None:
            raise ValueError(
                f"labels.relation={self.relation!r} and labels.teacher={self.teacher!r}: set one label source"
            )
        if self.relation is not None or self.teacher is not None:
            object.__setattr__(self, "fields", {})  # ignored (may be the tabular config's ???)
            return
        if not isinstance(self.fields, dict) or not self.fields:
            raise ValueError(
                f"labels.fields={self.fields!r}: name at least one attribute column with a weight "
                "({column: 1.0}), or set labels.relation or labels.teacher (e.g. teacher=content)"
            )
        for name, w in self.fields.items():
            if not w > 0:
                raise ValueError(f"labels.fields.{name}={w}: weights must be > 0")


@dataclass(frozen=True)
class EvalConfig:
    """Evaluation protocol settings.

    Attributes:
        ks: cut-offs for every metric.
        select_k: the recall@K used to choose hyperparameters on the valid split.
        ease_lambdas: L2 regularisation grid for EASE, chosen on valid.
        ease_max_items: EASE on at most this many of the most engaged train items (its dense
            inverse needs 8 N^2 bytes); None: all.
        batch_size: triggers scored per batch (bounds memory: batch x catalog floats).
        refit: final scoring (docs/design.md, "Selection and final scoring"): after every choice is made on valid with models fit on
            train, refit every method on train + valid and score test with it (the headline rows);
            the train-only test rows are reported beside them. False: train-only rows alone.
    """

    ks: tuple[int, ...] = (10, 50, 100)
    select_k: int = 50
    ease_lambdas: tuple[float, ...] = (20.0, 100.0, 500.0, 2000.0, 10000.0)
    ease_max_items: int | None = 20_000
    batch_size: int = 1024
    refit: bool = True

    def __post_init__(self) -> None:
        if not self.ks or any(k <= 0 for k in self.ks):
            raise ValueError(f"eval.ks={list(self.ks)}: expected a non-empty list of positive integers")
        if self.select_k not in self.ks:
            raise ValueError(f"eval.select_k={self.select_k} must be one of eval.ks={list(self.ks)}")
        if not self.ease_lambdas or any(lam <= 0 for lam in self.ease_lambdas):
            raise ValueError(f"eval.ease_lambdas={list(self.ease_lambdas)}: expected positive values")
        if self.ease_max_items is not None and self.ease_max_items < 1:
            raise ValueError(f"eval.ease_max_items={self.ease_max_items}: expected a positive count or null")
        if self.batch_size < 1:
            raise ValueError(f"eval.batch_size={self.batch_size}: expected >= 1 (triggers scored per batch)")


def from_mapping(cls: type[T], cfg: Mapping[str, Any] | DictConfig | None, where: str) -> T:
    """Build the frozen dataclass ``cls`` from a config section, naming unknown keys.

    Args:
        cls: a dataclass type.
        cfg: the section (OmegaConf node or plain mapping); ``None`` gives the defaults.
        where: the section's config path, used in error messages (e.g. ``"data.pairs"``).
    """
    if cfg is None:
        return cls()
    raw = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: expected a mapping of keys to values, got {type(raw).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(raw) - names)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; valid keys are {sorted(names)}")
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.name in raw and isinstance(raw[f.name], list):
            raw[f.name] = tuple(raw[f.name])
    _check_types(cls, raw, where)
    kwargs: dict[str, Any] = {str(k): v for k, v in raw.items()}
    return cls(**kwargs)


def _check_types(cls: type, raw: Mapping[Any, Any], where: str) -> None:
    """Refuse a value that does not fit its field's annotation, naming the key and the type."""
    try:
        hints = typing.get_type_hints(cls)
    except Exception:  # an annotation that does not resolve here: the class checks its own values
        return
    for name, value in raw.items():
        hint = hints.get(str(name), Any)
        missing = isinstance(value, str) and value == "???"  # a required value the class may ignore
        if missing or conforms(value, hint):
            continue
        shown = list(value) if isinstance(value, tuple) else value  # as it was written: a list
        raise ValueError(f"{where}.{name}={shown!r}: expected {describe(hint)}")


def conforms(value: Any, hint: Any) -> bool:
    """Whether a config value fits a type annotation: an integer passes as a float, a list as a
    tuple; annotations other than plain values, optionals, tuples, lists, mappings and literals pass."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):
        return any(conforms(value, a) for a in args)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, numbers.Real) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin is Literal:
        return value in args
    if origin in (tuple, list, Sequence):
        if not isinstance(value, (tuple, list)):
            return False
        if origin is tuple and args and args[-1] is not Ellipsis:
            return len(value) == len(args) and all(conforms(v, a) for v, a in zip(value, args, strict=True))
        return not args or all(conforms(v, args[0]) for v in value)
    if origin in (dict, Mapping):
        if not isinstance(value, Mapping):
            return False
        k, v = args if args else (Any, Any)
        return all(conforms(a, k) and conforms(b, v) for a, b in value.items())
    return True


def describe(hint: Any) -> str:
    """A type annotation in words, for an error message."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):
        options = [describe(a) for a in args if a is not type(None)]
        return " or ".join(options) + (" or null" if type(None) in args else "")
    if origin is Literal:
        return "one of " + str(list(args))
    if origin in (tuple, list, Sequence):
        return "a list" + (f" of {_plural(args[0])}" if args and args[0] is not Any else "")
    if origin in (dict, Mapping):
        return "a mapping" + (f" of {_plural(args[0])} to {_plural(args[1])}" if args else "")
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    return names.get(hint, getattr(hint, "__name__", str(hint)))


def _plural(hint: Any) -> str:
    words = {bool: "booleans", int: "integers", float: "numbers", str: "strings", Any: "values"}
    return words.get(hint, describe(hint))


def settings(cls: type[T], value: T | Mapping[str, Any] | None, where: str) -> T:
    """A component's settings object from itself, a config mapping (Hydra passes the YAML's nested
    section; unknown keys are named, :func:`from_mapping`) or None (the defaults)."""
    return (
        value if isinstance(value, cls) else from_mapping(cls, cast(Mapping[str, Any] | None, value), where)
    )
