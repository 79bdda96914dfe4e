"""The MMEB-V2 task registry: the 78 scored tasks (and the earlier versions of three of them) as
data, read from ``tasks.json``; selection by name, modality or meta-task.

Nothing here branches on a task's name: a task is a row (where its annotations and pixels live,
how its candidates are formed, what it scores), and a family is a reader mode plus the columns
and instructions it uses.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib.resources import files
from typing import Any

__all__ = ["Family", "TaskSpec", "families", "registry", "select_tasks", "task_table"]

DEFAULT_VERSIONS = {"ViDoSeek-page": "fixed", "MMLongBench-page": "fixed", "MomentSeeker": "1602"}


@dataclass(frozen=True)
class Family:
    """How a family's tables are read: ``mode`` picks the reader, ``columns`` maps our names to
    the table's, ``options`` is a fixed answer list, ``video_side`` says which side holds video."""

    name: str
    mode: str
    columns: Mapping[str, str] = field(default_factory=dict)
    names: str = "text"
    options: tuple[str, ...] = ()
    video_side: str = ""
    query_instruction: str = ""
    target_instruction: str = ""


@dataclass(frozen=True)
class TaskSpec:
    """One task: its place in the benchmark and where its data lives under the root.

    Attributes:
        dataset, config, split: the annotation table, read from
            ``<root>/<dataset>[/<config>]/<split>-*.parquet`` (the hub's parquet layout).
        pixel_root: images / frame folders, relative to the root (visual documents carry their
            pages inside the corpus table).
        candidates: ``local`` (each query's own list) or ``global`` (every candidate of the task).
        metric: ``hit@1`` or ``ndcg_linear@5``.
        version: the benchmark version of a task that changed (else None); ``scored``: part of the 78.
    """

    name: str
    modality: str
    meta_task: str
    family: str
    reader: str
    dataset: str
    config: str | None
    split: str
    candidates: str
    metric: str
    queries: int
    pixel_root: str | None
    version: str | None = None
    scored: bool = True

    @property
    def label(self) -> str:
        """``name`` with its version where the task has more than one."""
        return self.name if self.version is None else f"{self.name}@{self.version}"


@cache
def _raw() -> dict[str, Any]:
    text = files("tte_recsys.evaluation.mmeb").joinpath("tasks.json").read_text(encoding="utf-8")
    return dict(json.loads(text))


def registry() -> list[TaskSpec]:
    """Every task row, the earlier versions included."""
    return [TaskSpec(**row) for row in _raw()["tasks"]]


def families(columns: Mapping[str, Mapping[str, str]] | None = None) -> dict[str, Family]:
    """The reader families; ``columns`` overrides a family's column names (``{family: {ours: theirs}}``)."""
    out = {}
    over = dict(columns or {})
    unknown = sorted(set(over) - set(_raw()["families"]))
    if unknown:
        raise ValueError(f"columns: unknown famil(y/ies) {unknown}; valid: {sorted(_raw()['families'])}")
    for name, f in _raw()["families"].items():
        cols = {**f.get("columns", {}), **dict(over.get(name, {}))}
        out[name] = Family(
            name=name,
            mode=f["mode"],
            columns=cols,
            names=f.get("names", "text"),
            options=tuple(f.get("options", ())),
            video_side=f.get("video_side", ""),
            query_instruction=f.get("query_instruction", ""),
            target_instruction=f.get("target_instruction", ""),
        )
    return out


def select_tasks(
    names: Sequence[str] = (),
    modalities: Sequence[str] = (),
    meta_tasks: Sequence[str] = (),
    versions: Mapping[str, str] | None = None,
) -> list[TaskSpec]:
    """The scored tasks matching every non-empty filter, in benchmark order.

    ``versions`` picks the version of a task that has several (default: the current ones,
    ``ViDoSeek-page@fixed``, ``MMLongBench-page@fixed``, ``MomentSeeker@1602``). An unknown
    name, modality, meta-task or version raises, listing the valid ones.
    """
    rows = registry()
    chosen = {**DEFAULT_VERSIONS, **{k: str(v) for k, v in (versions or {}).items()}}
    by_name: dict[str, dict[str | None, TaskSpec]] = {}
    for t in rows:
        by_name.setdefault(t.name, {})[t.version] = t
    for name, version in chosen.items():
        if name not in by_name or version not in by_name[name]:
            known = {n: sorted(str(v) for v in vs) for n, vs in by_name.items() if len(vs) > 1}
            raise ValueError(f"versions.{name}={version!r}: unknown; tasks with versions: {known}")
    tasks = [t for t in rows if t.version == chosen.get(t.name, t.version)]
    for key, wanted, valid in (
        ("tasks", names, [t.name for t in tasks]),
        ("modalities", modalities, sorted({t.modality for t in tasks})),
        ("meta_tasks", meta_tasks, sorted({t.meta_task for t in tasks})),
    ):
        bad = [w for w in wanted if w not in valid]
        if bad:
            raise ValueError(f"{key}: unknown {bad}; valid: {valid}")
    return [
        t
        for t in tasks
        if (not names or t.name in names)
        and (not modalities or t.modality in modalities)
        and (not meta_tasks or t.meta_task in meta_tasks)
    ]


def task_table(tasks: Sequence[TaskSpec]) -> str:
    """A markdown table of ``tasks`` (what ``list_tasks=true`` prints)."""
    lines = [
        "| # | task | modality | meta-task | family | candidates | metric | queries |",
        "|---|---|---|---|---|---|---|---:|",
    ]
    for k, t in enumerate(tasks, 1):
        lines.append(
            f"| {k} | {t.label} | {t.modality} | {t.meta_task} | {t.family} | {t.candidates} | "
            f"{t.metric} | {t.queries} |"
        )
    return "\n".join(lines)
