"""report.json + report.md: one row per method, one column per metric."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from tte_recsys.artifacts import write_json, write_text

__all__ = ["describe_labels", "markdown_table", "write_report"]


def _fmt(v: float) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}"


def markdown_table(results: dict[str, dict[str, float]], columns: list[str] | None = None) -> str:
    """A markdown table; ``columns`` defaults to every metric of the first method."""
    if not results:
        return "(no methods)\n"
    cols = columns or list(next(iter(results.values())))
    lines = ["| method | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    lines += [
        f"| {name} | " + " | ".join(_fmt(m.get(c, float("nan"))) for c in cols) + " |"
        for name, m in results.items()
    ]
    return "\n".join(lines) + "\n"


def describe_labels(cfg: dict[str, Any]) -> str:
    """One line naming the label source of a ``LabelConfig`` as a dict."""
    if cfg.get("teacher"):
        return f"cosine (clipped at 0) of the teacher vectors in `{cfg['teacher']}`"
    if cfg.get("relation"):
        return f"1 for pairs under relation `{cfg['relation']}`, else 0"
    return "Jaccard of " + ", ".join(f"`{f}` (weight {w:g})" for f, w in cfg["fields"].items())


def write_report(out_dir: str | Path, report: dict[str, Any], title: str) -> str:
    """Write ``report.json`` and ``report.md``; returns the markdown."""
    out = Path(out_dir)
    ks = report["eval"]["ks"]
    cols = [f"{m}@{k}" for k in ks for m in ("recall", "semrel", "coverage", "cold_recall", "cold_share")]
    md = [
        f"# {title}",
        "",
        f"dataset: `{report['dataset']}`  split: {report['split']}",
        "",
        "Test split. recall = mean over triggers of held-out co-engaged targets found in the top-K; "
        "semrel = mean graded relevance label of the top-K; coverage = share of the catalog retrieved; "
        "cold_recall = recall on targets the scored model never saw (no interactions in the data it was fit "
        "on); cold_share = share of the retrieved slots that hold such items.",
        "",
        *(
            [
                f"relevance labels (semrel; in train_i2i also the semantic loss): {describe_labels(report['labels'])}",
                "",
            ]
            if "labels" in report
            else []
        ),
        *(
            [
                "**Refit on train + valid** (the headline: every method refit with its valid-chosen "
                "settings on all data before test, then scored on test; cold = no interactions before test):",
                "",
                markdown_table(report["methods_refit"], cols),
                "**Fit on train only** (the same choices and test positives; cold = no train interactions):",
                "",
            ]
            if report.get("methods_refit")
            else []
        ),
        markdown_table(report["methods"], cols),
        *_traces_md(report.get("traces")),
        *_intervals_md(report.get("intervals")),
    ]
    text = "\n".join(md)
    write_json(out / "report.json", report)
    write_text(out / "report.md", text)
    return text


def _traces_md(t: dict[str, Any] | None) -> list[str]:
    """The traces' part of a train_i2i report: the fusion chosen on valid, and each row's paired
    bootstrap interval against the same method without traces."""
    if not t:
        return []
    lines = [
        "",
        f"**Traces**: fused on valid as normalize(v_item + w v_trace), w = {t['weight']:g} on the "
        f"{t['side']} side(s) for content-only retrieval, w = {t['tower_weight']:g} in the frozen tower; "
        f"{t['items_with_trace']} items have a trace.",
    ]
    return lines


def _intervals_md(intervals: dict[str, Any] | None) -> list[str]:
    """Each compared pair of rows: the paired bootstrap 95% interval of the test recall difference
    (the headline view's rows)."""
    if not intervals:
        return []
    lines = ["", "**Paired differences** (test, per trigger, 1,000 bootstrap resamples):"]
    for name, iv in intervals.items():
        lines.append(
            f"- {name}: recall@{iv['k']} {iv['diff']:+.4f}, 95% interval [{iv['lo']:+.4f}, {iv['hi']:+.4f}] "
            f"over {iv['n']} triggers"
        )
    return lines
