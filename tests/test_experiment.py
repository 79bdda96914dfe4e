"""The I2I experiment's steps (tte_recsys.experiment.i2i), called one by one on a tiny run: each
is a plain function of the run's state, testable without the pipeline around it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from omegaconf import DictConfig

from tests.helpers import tiny_args
from tte_recsys.evaluation.quota import choose_point
from tte_recsys.experiment import i2i
from tte_recsys.experiment.config import I2IConfig
from tte_recsys.models.content import FrozenContent
from tte_recsys.models.export import load_export


def test_the_experiment_steps_one_by_one(
    compose_cfg: Callable[..., DictConfig], tiny_qwen_dir: Path, tmp_path: Path
) -> None:
    cfg = compose_cfg(
        "train_i2i",
        tiny_args(
            tiny_qwen_dir, "compare.single_head=false", "select.shares=[1.0,0.0]", "select.pop_priors=[0.0]"
        ),
    )
    out = tmp_path / "out"
    run = i2i.prepare(cfg, out)
    assert run.content_spec.mode == "frozen" and isinstance(run.content, FrozenContent)
    assert (out / "content" / "manifest.json").is_file() and run.content_folder == str(out / "content")
    assert run.heads == ["coeng", "semantic"] and run.features.num_items == run.ds.num_items

    grid = i2i.train_grid(run)
    shrinks = [float(x) for x in cfg.select.id_prior_shrinks]
    assert set(grid.trained) == {1.0} and set(grid.trained[1.0].variants) == set(shrinks)
    points = {(c["id_prior_shrink"], c["pop_prior"], c["share"]) for c in grid.candidates}
    assert points == {(s, 0.0, q) for s in shrinks for q in (1.0, 0.0)}

    choice = i2i.select(run, grid)
    want = choose_point(grid.candidates, 10, float(cfg.select.recall_tolerance))
    assert (choice.lam, choice.shrink, choice.pop, choice.share) == (
        want["lam"],
        want["id_prior_shrink"],
        want["pop_prior"],
        want["share"],
    )

    refs = i2i.train_references(run, choice)
    assert set(refs) == {"id_only"} and refs["id_only"].model_cfg.content == "none"
    assert set(refs["id_only"].variants) == {choice.shrink}  # the chosen prior only

    scores = i2i.score(run, grid, choice, refs)
    assert {"content", "id_only", "popularity", "ease"} <= set(scores.methods)
    assert [p["share"] for p in scores.test_curve] == [1.0, 0.0]
    assert all(c["lam"] == choice.lam for c in scores.valid_curve) and len(scores.valid_curve) == 2

    report = i2i.assemble_report(run, grid, choice, refs, scores)
    assert set(report["training"]) == {"mtmh_lam1", "id_only"}
    assert report["selection"]["mtmh"]["valid_points"] == grid.candidates

    i2i.export_chosen(run, grid, choice, out / "export")
    exported = load_export(out / "export").encode()
    chosen = grid.trained[choice.lam].variants[choice.shrink].vecs
    for head, v in chosen.items():
        np.testing.assert_allclose(exported[head], v, atol=1e-6)


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ("select.shares=[1.5]", r"select.shares=\[1.5\]: expected a non-empty list of shares in \[0, 1\]"),
        ("select.recall_tolerance=1.0", "select.recall_tolerance=1.0: expected 0 <= tol < 1"),
        ("+id_prior.shrink=1", "id_prior.shrink is not a setting of train_i2i"),
        ("+compare.one_head=true", r"compare: unknown key\(s\) \['one_head'\]"),
    ],
)
def test_the_typed_config_names_what_is_wrong(
    compose_cfg: Callable[..., DictConfig], override: str, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        I2IConfig.from_cfg(compose_cfg("train_i2i", [override]))


def test_grid_values_are_floats(compose_cfg: Callable[..., DictConfig]) -> None:
    """``select.lams=[1]`` and ``[1.0]`` name the same training (and the same report keys)."""
    c = I2IConfig.from_cfg(compose_cfg("train_i2i", ["select.lams=[1,2]", "select.shares=[1,0]"]))
    assert c.select.lams == (1.0, 2.0) and all(isinstance(x, float) for x in c.select.shares)
    assert [p.shrink for p in c.priors()] == [0.0, 0.1, 1.0]
