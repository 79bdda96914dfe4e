"""``report.md``: the leaderboard's shape (modalities and overall, meta-tasks, tasks), the skipped
tasks with what is missing, and the tie rule and versions scored."""

from __future__ import annotations

from typing import Any

__all__ = ["render_report"]

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
