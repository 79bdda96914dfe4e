"""The analysis notebooks run in a real Jupyter kernel (nbclient) on tiny runs: the i2i run
analysis, which items traces help or hurt, and the MMEB-V2 report against the published scores.

Committed notebooks carry no outputs (``make notebooks`` renders them, with their figures, into
docs/notebooks/). Each test appends one probe cell that prints, as JSON, the values it checks.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import nbformat
import polars as pl
import pytest
from nbclient import NotebookClient
from omegaconf import DictConfig, OmegaConf, open_dict

from pipelines import eval_mmeb, train_i2i, train_reasoner
from tests.helpers import ROOT, tiny_args
from tte_recsys.runs import load_dataset

_PROBE = "__PROBE__"


def run_notebook(
    path: Path, env: Mapping[str, str], probe: Mapping[str, str], cwd: Path = ROOT
) -> dict[str, Any]:
    """Execute ``path`` in a fresh kernel with ``env`` set; return the ``probe`` expressions' values."""
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        assert not cell.get("outputs"), f"{path.name}: commit notebooks without outputs"
    body = ", ".join(f"{k!r}: {v}" for k, v in probe.items())
    nb.cells.append(
        nbformat.v4.new_code_cell(
            f"import json as _json\nprint({_PROBE!r} + _json.dumps({{{body}}}, default=float))"
        )
    )
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        NotebookClient(
            nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}
        ).execute()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    text = "".join(o.get("text", "") for o in nb.cells[-1].outputs if o.get("output_type") == "stream")
    line = next(x for x in text.splitlines() if x.startswith(_PROBE))
    return dict(json.loads(line[len(_PROBE) :]))


def test_run_analysis_notebook(compose_cfg: Callable[..., DictConfig], tiny_qwen_dir: Path) -> None:
    cfg = compose_cfg("train_i2i", tiny_args(tiny_qwen_dir))
    report = train_i2i.run(cfg)
    ns = run_notebook(
        ROOT / "notebooks" / "i2i_run_analysis.ipynb",
        {"TTE_RUN_DIR": str(cfg.output_dir), "HF_HUB_OFFLINE": "1"},
        {
            "mtmh_row": "mtmh_row",
            "best_base": "best_base",
            "table_height": "table.height",
            "recall_ratio": "recall_ratio",
            "export_gap": "export_gap",
            "shift_height": "shift.height",
            "boosts": "boost['boost'].to_list()",
            "zero_recall": "boost.filter(boost['boost'] == 0.0)['recall'][0]",
            "heads": "heads",
            "neighbours": "sorted(neighbours)",
        },
    )
    mtmh, k = ns["mtmh_row"], report["eval"]["select_k"]
    rows = report["methods_refit"]  # the headline: refit on train + valid
    assert mtmh in rows and ns["table_height"] == len(rows)
    assert ns["recall_ratio"] == pytest.approx(
        rows[mtmh][f"recall@{k}"] / rows[ns["best_base"]][f"recall@{k}"]
    )
    assert ns["export_gap"] < 1e-4  # the export (the refit model) re-scores to the report's figure
    assert ns["shift_height"] == 3
    assert set(ns["boosts"]) == {0.0, 0.02, 0.05, 0.1, 0.2}
    assert ns["zero_recall"] == pytest.approx(rows[mtmh][f"recall@{k}"], abs=1e-4)
    assert ns["heads"] == ["coeng", "semantic"] and ns["neighbours"] == ["coeng", "semantic", "served"]


def test_tte_traces_notebook(compose_cfg: Callable[..., DictConfig], tmp_path: Path) -> None:
    base = [
        "data=amazon_office",
        "debug=tiny",
        "toy=false",
        "method=score",
        f"cache_dir={tmp_path / 'cache'}",
    ]
    none = compose_cfg(
        "train_reasoner", [*base, "score_reasoner.model_path=none", f"output_dir={tmp_path / 'none'}"]
    )
    train_reasoner.run(none)
    ids = load_dataset(none.data).items["item_id"].to_list()
    traces = tmp_path / "traces.parquet"
    # traces for every other item: the help/hurt split has both kinds of trigger to show
    pl.DataFrame(
        {
            "item_id": ids[::2],
            "trace": [f"<think>who buys {i}</think> desk supplies, paper" for i in ids[::2]],
        }
    ).write_parquet(traces)
    reports = {}
    for label, how in (("file", "concat"), ("fused", "fuse")):  # fused: (w, side) chosen on valid
        cfg = compose_cfg(
            "train_reasoner", [*base, f"embedder.traces={how}", f"output_dir={tmp_path / label}"]
        )
        with open_dict(cfg):
            cfg.score_reasoner = OmegaConf.create(
                {"_target_": "tte_recsys.tte.reasoner.backends.FileReasoner", "path": str(traces)}
            )
        reports[label] = train_reasoner.run(cfg)
    chosen = reports["fused"]["retrieval"]["traces"]
    assert len(chosen["valid_points"]) == 1 + 4 * 2  # w = 0 once, 4 weights x 2 sides
    point = next(
        p for p in chosen["valid_points"] if (p["weight"], p["side"]) == (chosen["weight"], chosen["side"])
    )  # the valid point chosen (trace_rule=interval: the best one only with a gain beyond noise)
    assert reports["fused"]["retrieval"]["valid"]["recall@10"] == pytest.approx(
        point["recall@10"]
    )  # select_k 10
    c = reports["fused"]["retrieval"]["test_vs_no_traces"]  # against the run's own plain vectors
    assert c["n"] > 0 and c["lo"] <= c["diff"] <= c["hi"]
    if chosen["weight"] == 0:  # valid chose no trace: the same vectors, a zero difference
        assert c["diff"] == c["lo"] == c["hi"] == 0
    runs = ";".join(f"{r}={tmp_path / r}" for r in ("none", "file", "fused"))
    ns = run_notebook(
        ROOT / "notebooks" / "tte_traces.ipynb",
        {"TTE_TRACE_RUNS": runs, "TTE_TRACE_K": "10", "HF_HUB_OFFLINE": "1"},
        {
            "summary": "summary.to_dicts()",
            "n": "frame.height",
            "helped": "examples['file'][0].height",
            "hurt": "examples['file'][1].height",
        },
    )
    by_run = {r["run"]: r for r in ns["summary"]}
    assert (
        set(by_run) == {"none", "file", "fused"}
        and by_run["none"]["with a trace"] == 0
        and by_run["file"]["with a trace"] > 0
    )
    for label in ("file", "fused"):  # the notebook retrieves as the run scored (fused as chosen)
        want = reports[label]["retrieval"]["test"]["recall@10"]
        assert by_run[label]["recall@10"] == pytest.approx(want)
    f = by_run["file"]
    assert f["helped"] + f["hurt"] + f["unchanged"] <= ns["n"] and f["helped"] + f["hurt"] > 0
    assert ns["helped"] == min(5, f["helped"]) and ns["hurt"] == min(5, f["hurt"])


def test_mmeb_report_notebook(compose_cfg: Callable[..., DictConfig], tmp_path: Path) -> None:
    cfg = compose_cfg("eval_mmeb", ["debug=tiny", f"cache_dir={tmp_path / 'cache'}"])
    eval_mmeb.run(cfg)
    report = json.loads((Path(cfg.output_dir) / "report.json").read_text())
    ns = run_notebook(
        ROOT / "notebooks" / "mmeb_report.ipynb",
        {"TTE_MMEB_RUN": str(cfg.output_dir)},
        {
            "rows": "table.height",
            "ours": "table.row(-1, named=True)",
            "tasks": "tasks.height",
            "queries": "ranks.height",
            "top1": "share_top1",
        },
    )
    assert ns["rows"] == 10 and ns["ours"]["model"] == "this run (9 of 78 tasks)"
    assert ns["ours"]["all"] == pytest.approx(report["overall"]["score"])
    assert ns["tasks"] == 9 and ns["queries"] == sum(t["queries"] for t in report["tasks"].values())
    assert 0.0 <= ns["top1"] <= 1.0
