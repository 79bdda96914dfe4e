"""``report.md``: the leaderboard's shape (modalities and overall, meta-tasks, tasks), the skipped
tasks with what is missing, and the tie rule and versions scored."""

from __future__ import annotations

import json
from importlib.resources import files
from typing import Any

import polars as pl

__all__ = ["against_published", "published_scores", "render_report"]

_MODS = ("image", "video", "visdoc")


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}"


def render_report(r: dict[str, Any]) -> str:
    mods = r["modalities"]
    lines = [
        "# MMEB-V2 report",
        "",
        f"Embedder `{r['embedder']}`; think-then-embed: {r['think']}; ties: {r['ties']}; "
        f"frames per video: {r['read']['frames']}; versions: "
        + (", ".join(f"{k}@{v}" for k, v in r["versions"].items()) or "-")
        + ".",
        "",
        "| | image | video | visdoc | all |",
        "|---|---:|---:|---:|---:|",
        "| score | "
        + " | ".join(_fmt(mods.get(m, {}).get("score")) for m in _MODS)
        + f" | {_fmt(r['overall']['score'])} |",
        "| tasks | "
        + " | ".join(str(mods.get(m, {}).get("tasks", 0)) for m in _MODS)
        + f" | {r['overall']['tasks']} |",
        "",
        f"The overall score is the plain mean over the {r['overall']['tasks']} task(s) scored; "
        f"{r['overall']['skipped']} selected task(s) were skipped (below). Hit@1 for image and "
        "video tasks, linear-gain NDCG@5 for visual documents, in percent.",
        "",
        "## Meta-tasks",
        "",
        "| meta-task | tasks | score |",
        "|---|---:|---:|",
    ]
    lines += [f"| {k} | {v['tasks']} | {_fmt(v['score'])} |" for k, v in r["meta_tasks"].items()]
    lines += [
        "",
        "## Tasks",
        "",
        "| task | modality | meta-task | metric | queries | candidates | score |",
        "|---|---|---|---|---:|---:|---:|",
    ]
    for name, t in r["tasks"].items():
        ranked = f"{t['max_list']} per query" if t["candidates"] == "local" else f"all {t['candidate_count']}"
        lines.append(
            f"| {name} | {t['modality']} | {t['meta_task']} | {t['metric']} | {t['queries']} | "
            f"{ranked} | {_fmt(t['score'])} |"
        )
    if r["skipped"]:
        lines += ["", "## Skipped", "", "| task | why |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in r["skipped"].items()]
    notes = [(k, n) for k, t in r["tasks"].items() for n in t["notes"]]
    if notes:
        lines += ["", "## Notes", ""] + [f"- {k}: {n}" for k, n in notes]
    return "\n".join(lines) + "\n"


def published_scores() -> pl.DataFrame:
    """The published scores of docs/notes/mmeb_v2.md: model, image, video, visdoc, all (percent)."""
    raw = json.loads(
        files("tte_recsys.evaluation.mmeb").joinpath("published.json").read_text(encoding="utf-8")
    )
    return pl.DataFrame(
        raw["models"],
        schema={"model": pl.String, **dict.fromkeys(("image", "video", "visdoc", "all"), pl.Float64)},
    )


def against_published(report: dict[str, Any], name: str = "this run") -> pl.DataFrame:
    """A run's modality and overall scores as one more row of :func:`published_scores`, with the
    number of tasks behind each (the published rows are over all 78)."""
    mods = report["modalities"]
    ours = {
        "model": f"{name} ({report['overall']['tasks']} of 78 tasks)",
        **{m: mods.get(m, {}).get("score") for m in _MODS},
        "all": report["overall"]["score"],
    }
    published = published_scores()
    return pl.concat([published, pl.DataFrame([ours], schema=published.schema)])
