"""The analysis notebooks run, cell by cell, on a tiny train_i2i run (DESIGN.md: notebooks are
executed by the tests). No Jupyter needed: the code cells are executed in order in one namespace."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib
import pytest
from omegaconf import DictConfig

from pipelines import train_i2i
from tests.helpers import ROOT, tiny_args


def run_notebook(path: Path) -> dict[str, Any]:
    nb = json.loads(path.read_text())
    for cell in nb["cells"]:
        assert not cell.get("outputs"), f"{path.name}: commit notebooks without outputs"
    ns: dict[str, Any] = {"__name__": "__main__"}
    for i, cell in enumerate(c for c in nb["cells"] if c["cell_type"] == "code"):
        exec(compile("".join(cell["source"]), f"{path.name}[code cell {i}]", "exec"), ns)
    return ns


def test_run_analysis_notebook(
    compose_cfg: Callable[..., DictConfig], tiny_qwen_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    matplotlib.use("Agg")
    cfg = compose_cfg("train_i2i", tiny_args(tiny_qwen_dir))
    report = train_i2i.run(cfg)
    monkeypatch.setenv("TTE_RUN_DIR", str(cfg.output_dir))
    ns = run_notebook(ROOT / "notebooks" / "i2i_run_analysis.ipynb")
    mtmh, k = ns["mtmh_row"], report["eval"]["select_k"]
    rows = report["methods_refit"]  # the headline: refit on train + valid
    assert mtmh in rows and ns["table"].height == len(rows)
    assert ns["recall_ratio"] == pytest.approx(
        rows[mtmh][f"recall@{k}"] / rows[ns["best_base"]][f"recall@{k}"]
    )
    assert ns["export_gap"] < 1e-4  # the export (the refit model) re-scores to the report's figure
    assert ns["shift"].height == 3
    assert set(ns["boost"]["boost"].to_list()) == {0.0, 0.02, 0.05, 0.1, 0.2}
    zero = ns["boost"].filter(ns["boost"]["boost"] == 0.0)
    assert zero["recall"][0] == pytest.approx(rows[mtmh][f"recall@{k}"], abs=1e-4)
    assert ns["heads"] == ["coeng", "semantic"] and set(ns["neighbours"]) == {"coeng", "semantic", "served"}
