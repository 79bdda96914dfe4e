"""Every pipeline end to end on tiny data, in-process (run(cfg)) and through the real CLI."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from omegaconf import DictConfig

from pipelines import evaluate, prepare_data
from tests.helpers import ROOT, run_module
from tte_recsys.artifacts import read_manifest

METHODS = {"popularity", "cooccurrence", "item_knn", "ease"}


def test_prepare_then_evaluate_from_prepared_dir(
    compose_cfg: Callable[..., DictConfig], tmp_path: Path
) -> None:
    prep = prepare_data.run(compose_cfg("prepare_data", ["data=amazon_office", "debug=tiny"]))
    assert prep["users"] == 60
    prepared = Path(prep["output_dir"])
    assert read_manifest(prepared, kind="prepare_data")["stats"]["users"] == 60
    out = tmp_path / "eval"
    cfg = compose_cfg(
        "evaluate",
        ["experiment=amazon_office", "debug=tiny", f"data.prepared_dir={prepared}", f"output_dir={out}"],
    )
    report = evaluate.run(cfg)
    assert set(report["methods"]) == METHODS
    # both ways: fit on train, and refit on train + valid with the lambda EASE chose on valid
    assert set(report["methods_refit"]) == METHODS and report["methods_refit"] != report["methods"]
    assert "Refit on train + valid" in (out / "report.md").read_text()
    assert report["dataset_stats"]["users"] == 60
    m = read_manifest(out, kind="evaluate")
    assert {"report.json", "report.md", "config.yaml"} <= set(m["files"])
    assert json.loads((out / "report.json").read_text())["methods"] == report["methods"]
    assert "| ease |" in (out / "report.md").read_text()
    assert "Jaccard of `category` (weight 0.5), `brand` (weight 0.5)" in (out / "report.md").read_text()


def test_evaluate_rejects_tampered_prepared_dir(compose_cfg: Callable[..., DictConfig]) -> None:
    prep = prepare_data.run(compose_cfg("prepare_data", ["debug=tiny"]))
    items = Path(prep["output_dir"]) / "items.parquet"
    items.write_bytes(items.read_bytes() + b"x")
    with pytest.raises(ValueError, match=r"file 'items.parquet' has sha256"):
        evaluate.run(compose_cfg("evaluate", ["debug=tiny", f"data.prepared_dir={prep['output_dir']}"]))


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return run_module(args[0], args[1:], cwd=cwd, timeout=300)


def test_cli_evaluate_tiny_prints_table(tmp_path: Path) -> None:
    r = _cli(["pipelines.evaluate", "debug=tiny", f"hydra.run.dir={tmp_path}"], ROOT)
    assert r.returncode == 0, r.stderr
    assert "| popularity |" in r.stdout
    read_manifest(tmp_path, kind="evaluate")


def test_cli_bad_input_exits_nonzero_without_report(tmp_path: Path) -> None:
    items = tmp_path / "items.csv"
    items.write_text("item_id,title,cat\n1,A,x\n2,B,y\n")
    log = tmp_path / "log.csv"
    log.write_text("user_id,item_id,timestamp\nu,1,10\nu,3,11\n")
    out = tmp_path / "out"
    r = _cli(
        [
            "pipelines.evaluate",
            "data=tabular",
            f"data.adapter.items_path={items}",
            f"data.adapter.interactions_path={log}",
            "data.labels.fields={cat: 1.0}",
            f"hydra.run.dir={out}",
        ],
        ROOT,
    )
    assert r.returncode != 0
    assert "log.csv, column item_id: 1 interaction(s) name items not in the catalog" in r.stderr
    assert not (out / "report.json").exists() and not (out / "manifest.json").exists()


def test_a_log_too_sparse_to_split_is_a_clear_error(
    compose_cfg: Callable[..., DictConfig], tmp_path: Path
) -> None:
    # Well-formed files, but no user engages two items close in time after the train period:
    # nothing to choose hyperparameters on or to score.
    items = tmp_path / "items.csv"
    items.write_text("item_id,title,cat\n" + "".join(f"{i},item {i},c{i % 3}\n" for i in range(20)))
    log = tmp_path / "log.csv"
    log.write_text("user_id,item_id,timestamp\n" + "".join(f"u{t},{t % 20},{t}\n" for t in range(100)))
    cfg = compose_cfg(
        "evaluate",
        [
            "data=tabular",
            f"data.adapter.items_path={items}",
            f"data.adapter.interactions_path={log}",
            "data.labels.fields={cat: 1.0}",
            f"output_dir={tmp_path / 'out'}",
        ],
    )
    with pytest.raises(
        ValueError, match=r"dataset 'tabular': no train pairs, no valid triggers, no test triggers"
    ):
        evaluate.run(cfg)
    assert not (tmp_path / "out" / "report.json").exists()
