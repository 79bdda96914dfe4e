"""pipelines.train_i2i end to end on tiny data (tiny random Qwen2 as the content encoder): the
report, the export in a fresh process, 2 processes under torchrun against 1, kill + resume,
trainable content with LoRA, think-then-embed with a reasoner, and bad configs."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from omegaconf import DictConfig, OmegaConf

from pipelines import train_i2i
from tests.helpers import (
    finish,
    fresh_export_metrics,
    kill_then_resume,
    launch,
    one_then_two_processes,
    read_report,
    tiny_args,
    trainable_content_run,
)
from tte_recsys.evaluation.quota import choose_point
from tte_recsys.models.export import load_export

MTMH_ROW = "mtmh (K1/K={share:g}, lambda={lam:g})"


def test_tiny_run_reports_and_exports(
    compose_cfg: Callable[..., DictConfig], tiny_qwen_dir: Path, tmp_path: Path
) -> None:
    # With the id prior on, the fresh-process check below also shows that the export carries the
    # adjusted id table (cold items' rows are the prediction, not their initial values).
    report = train_i2i.run(
        compose_cfg("train_i2i", tiny_args(tiny_qwen_dir, "select.id_prior_shrinks=[1.0]"))
    )
    out = tmp_path / "out"
    sel = report["selection"]["mtmh"]
    row = MTMH_ROW.format(**sel)
    methods = report["methods"]
    for name in (
        "popularity",
        "cooccurrence",
        "item_knn",
        "ease",
        "content",
        row,
        "single_head_lam0",
        "id_only",
    ):
        assert name in methods, name
    assert sel["share"] in (1.0, 0.5, 0.0) and sel["lam"] == 1.0
    first = [p for p in sel["valid_points"] if p["age_prior"] == 0.0]
    assert sorted((p["id_prior_shrink"], p["pop_prior"], p["share"]) for p in first) == sorted(
        (1.0, w, q) for w in (0.0, 0.05) for q in (1.0, 0.5, 0.0)
    )
    # the item-age prior: swept at the point the first stage chose, every share
    best_first = choose_point(first, 10, 0.05)
    aged = [p for p in sel["valid_points"] if p["age_prior"] > 0]
    assert {(p["pop_prior"], p["share"], p["age_prior"]) for p in aged} == {
        (best_first["pop_prior"], q, 0.01) for q in (1.0, 0.5, 0.0)
    }
    assert sel["pop_prior"] in (0.0, 0.05) and sel["age_prior"] in (0.0, 0.01)
    assert sel["id_prior"]["shrink"] == 1.0 and sel["id_prior"]["cold_items"] > 0
    assert all(np.isfinite(report["training"]["mtmh_lam1"]["loss_curve"]))
    assert (out / "quota_tradeoff.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "report.md").is_file() and (out / "manifest.json").is_file()

    # Final scoring: every method refit on train + valid, the same rows, the headline of report.md
    refit = report["methods_refit"]
    assert set(refit) == set(methods)
    same = [k for k in methods["content"] if not k.startswith("cold")]  # cold flags follow the fit
    assert {k: refit["content"][k] for k in same} == {
        k: methods["content"][k] for k in same
    }  # nothing to fit
    assert report["refit"]["steps"].keys() == {"mtmh", "single_head_lam0", "id_only"}
    assert report["split"]["test"]["positives"] == report["refit"]["split"]["test"]["positives"]
    assert report["refit"]["split"]["test"]["cold_positives"] <= report["split"]["test"]["cold_positives"]
    assert "Refit on train + valid" in (out / "report.md").read_text()

    # The export is the refit model: loaded in a fresh process without TorchRec sharding, it
    # reproduces its report row exactly (computed from the in-memory vectors).
    fresh = fresh_export_metrics(out, sel)
    for key, value in refit[row].items():
        assert fresh[key] == pytest.approx(value, abs=1e-9, nan_ok=True), key


def test_without_refit_the_export_is_the_train_only_model(
    compose_cfg: Callable[..., DictConfig], tiny_qwen_dir: Path, tmp_path: Path
) -> None:
    args = tiny_args(tiny_qwen_dir, "eval.refit=false", "compare.single_head=false", "compare.id_only=false")
    report = train_i2i.run(compose_cfg("train_i2i", args))
    assert "methods_refit" not in report and "refit" not in report
    sel = report["selection"]["mtmh"]
    fresh = fresh_export_metrics(tmp_path / "out", sel, refit=False)
    for key, value in report["methods"][MTMH_ROW.format(**sel)].items():
        assert fresh[key] == pytest.approx(value, abs=1e-9, nan_ok=True), key


@pytest.mark.slow
def test_two_processes_follow_the_one_process_loss_curve(tiny_qwen_dir: Path, tmp_path: Path) -> None:
    args = tiny_args(tiny_qwen_dir, "compare.single_head=false", "compare.id_only=false")
    b = one_then_two_processes(args, tmp_path, 30)
    # each rank's labels built on its device (a GPU run's path) against every global candidate
    finish(launch([*args, "trainer.labels_on_device=true"], tmp_path / "two_dev", 2))
    assert read_report(tmp_path / "two_dev")["training"]["mtmh_lam1"]["loss_curve"] == b
    # uniform negatives: each rank draws its share, and the gathered candidates line up
    with_uniform = one_then_two_processes([*args, "trainer.uniform_negatives=16"], tmp_path / "mns", 30)
    assert with_uniform != b


@pytest.mark.slow
def test_two_processes_follow_one_with_trainable_content(tiny_qwen_dir: Path, tmp_path: Path) -> None:
    """The LoRA adapters inside the sharded model: their gradients are averaged over the ranks, and
    both ranks start from the same seeded adapters."""
    args = tiny_args(
        tiny_qwen_dir,
        "model.content=trainable",
        "trainer.max_steps=12",
        "trainer.eval_every=6",
        "compare.single_head=false",
        "compare.id_only=false",
    )
    one_then_two_processes(args, tmp_path, 12)


@pytest.mark.slow
def test_kill_then_resume_matches_uninterrupted(tiny_qwen_dir: Path, tmp_path: Path) -> None:
    full, resumed = kill_then_resume(tiny_qwen_dir, tmp_path)
    assert resumed["methods"] == full["methods"] and resumed["methods_refit"] == full["methods_refit"]
    np.testing.assert_allclose(
        resumed["training"]["mtmh_lam1"]["loss_curve"], full["training"]["mtmh_lam1"]["loss_curve"], rtol=1e-6
    )


@pytest.mark.slow
def test_kill_during_the_refit_then_resume(tiny_qwen_dir: Path, tmp_path: Path) -> None:
    """Killed in the refit training (train + valid), resumed: the refit picks up its checkpoint
    and every row, train-only and refit, equals the uninterrupted run's."""
    full, resumed = kill_then_resume(
        tiny_qwen_dir, tmp_path, "trainer.max_steps=60", every=4, during="refit/mtmh"
    )
    assert full["refit"]["steps"]["mtmh"] > 12  # killed after step 12 of the refit
    assert resumed["methods"] == full["methods"] and resumed["methods_refit"] == full["methods_refit"]
    np.testing.assert_allclose(
        resumed["refit"]["training"]["mtmh"]["loss_curve"],
        full["refit"]["training"]["mtmh"]["loss_curve"],
        rtol=1e-6,
    )


@pytest.mark.slow
def test_kill_then_resume_with_trainable_content(tiny_qwen_dir: Path, tmp_path: Path) -> None:
    """The LoRA adapters, their Adam state and the generator their dropout draws from come back
    from the checkpoint."""
    full, resumed = kill_then_resume(
        tiny_qwen_dir, tmp_path, "model.content=trainable", "lora.dropout=0.1", max_steps=60, every=10
    )
    assert resumed["methods"] == full["methods"]
    np.testing.assert_allclose(
        resumed["training"]["mtmh_lam1"]["loss_curve"], full["training"]["mtmh_lam1"]["loss_curve"], rtol=1e-6
    )


def test_trainable_content_with_lora(
    compose_cfg: Callable[..., DictConfig], tiny_qwen_dir: Path, tmp_path: Path
) -> None:
    # with activation checkpointing (its equality to the plain backward: tests/models); the GPU
    # test runs the default
    report = trainable_content_run(compose_cfg, tiny_qwen_dir, tmp_path, "content_checkpointing=true")
    assert report["training"]["mtmh_lam1"]["device"] == "cpu"
    # the content-only baseline: the embedder's vectors before training, where the tower starts
    assert "content" in report["methods"] and (tmp_path / "out" / "content" / "manifest.json").is_file()


def test_every_model_of_a_trainable_run_starts_from_the_same_tower(
    compose_cfg: Callable[..., DictConfig], tiny_qwen_dir: Path, tmp_path: Path
) -> None:
    """A run trains several models on one content tower: each starts from the tower as built (the
    LoRA adapters seeded by trainer.seed), not from what the previous training left in it. The
    lambda = 1 model trained after a lambda = 0.5 one must train exactly as when trained alone."""
    curves = []
    for i, lams in enumerate(("[0.5,1.0]", "[1.0]")):
        args = tiny_args(
            tiny_qwen_dir,
            "model.content=trainable",
            "trainer.max_steps=6",
            "trainer.eval_every=3",
            "compare.single_head=false",
            "compare.id_only=false",
            f"select.lams={lams}",
            f"output_dir={tmp_path / str(i)}",
        )
        curves.append(train_i2i.run(compose_cfg("train_i2i", args))["training"]["mtmh_lam1"]["loss_curve"])
    assert len(curves[0]) == 6 and curves[0] == curves[1]


def test_think_then_embed_with_a_reasoner(
    compose_cfg: Callable[..., DictConfig], tiny_qwen_dir: Path, tmp_path: Path
) -> None:
    args = tiny_args(
        tiny_qwen_dir,
        "experiment=tte_hf",
        f"reasoner.model_path={tiny_qwen_dir}",
        "reasoner.generation.max_new_tokens=6",
        "reasoner.generation.do_sample=true",
        f"cache_dir={tmp_path / 'cache'}",
        "data.max_items=120",
        "compare.single_head=false",
        "compare.id_only=false",
        "model.trace_input=true",
    )
    report = train_i2i.run(compose_cfg("train_i2i", args))
    out = tmp_path / "out"
    assert (out / "traces" / "traces.parquet").is_file()
    # fused traces: the items' plain vectors, and the traces' own vectors beside them
    content = json.loads((out / "content" / "manifest.json").read_text())
    assert content["items_with_trace"] == 0 and content["trace_version"] == "none"
    tv = json.loads((out / "trace_vectors" / "manifest.json").read_text())
    assert (
        tv["items_with_trace"] > 0
        and tv["vectors"] == "traces"
        and tv["trace_version"].endswith("|trace-only")
    )
    t = report["traces"]
    k = report["eval"]["select_k"]
    best = max(p[f"recall@{k}"] for p in t["valid_points"])
    plain = next(p for p in t["valid_points"] if p["weight"] == 0.0)
    chosen = next(p for p in t["valid_points"] if (p["weight"], p["side"]) == (t["weight"], t["side"]))
    assert best >= plain[f"recall@{k}"]  # w = 0 is a point: the best is never below no traces
    if t["weight"] > 0:  # the best valid point, kept with a valid gain beyond noise (trace_rule=interval)
        assert chosen[f"recall@{k}"] == best and chosen["valid_gain"]["lo"] > 0
    else:  # no trace: the best point was w = 0, or its lead was within its interval
        lead = [p for p in t["valid_points"] if p[f"recall@{k}"] == best and "valid_gain" in p]
        assert best == plain[f"recall@{k}"] or (lead and lead[0]["valid_gain"]["lo"] <= 0)
    # the rows with and without traces, and the paired intervals between them
    assert {"content", "content:no traces", "mtmh:no traces"} <= set(report["methods"])
    for iv in report["intervals"].values():
        assert iv["lo"] <= iv["diff"] <= iv["hi"] and iv["n"] > 0
    assert "mtmh:no traces" in (out / "report.md").read_text()
    # the exported tower holds item and trace vectors side by side (its trace input)
    model = json.loads((out / "export" / "model.json").read_text())
    assert model["model"]["trace_input"] is True and model["content_dim"] == 2 * content["dim"]


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ("model.heads=[coeng,ctr]", "unknown: \\['ctr'\\]"),
        ("+loss.lam=1", "loss.lam is not a setting of train_i2i: lambda is chosen on valid from select.lams"),
        ("loss.alpha=-1", "loss.alpha=-1"),
        ("select.lams=[1.0,-0.5]", r"select.lams=\[1.0, -0.5\]: expected a non-empty list of lambdas >= 0"),
        ("+select.lamz=[1]", "select: unknown key\\(s\\) \\['lamz'\\]"),
        ("lora.r=0", "lora.r=0: expected >= 1"),
        ("select.id_prior_shrinks=[0,-1]", "id_prior.shrink=-1.0: expected >= 0"),
        ("id_prior.ridge=0", "id_prior.ridge=0: expected > 0"),
        ("select.pop_priors=[0,-0.1]", r"select.pop_priors=\[0.0, -0.1\]: expected a non-empty list"),
        ("eval.ease_max_items=0", "eval.ease_max_items=0: expected a positive count"),
        ("model.content_dim=7", "model.content_dim=7 but the content vectors"),
        ("+trainer.batch_sise=8", "unknown key\\(s\\) \\['batch_sise'\\]"),
        ("model.heads=[semantic]", "'semantic' but lambda = loss.alpha = 0"),
    ],
)
def test_bad_config_fails_before_training(
    compose_cfg: Callable[..., DictConfig], tiny_qwen_dir: Path, tmp_path: Path, override: str, match: str
) -> None:
    extra = [override, "loss.alpha=0", "select.lams=[0.0]"] if "[semantic]" in override else [override]
    with pytest.raises(ValueError, match=match):
        train_i2i.run(compose_cfg("train_i2i", tiny_args(tiny_qwen_dir, *extra)))
    assert not (tmp_path / "out" / "checkpoints").exists()


def _shop_files(tmp_path: Path) -> tuple[Path, Path]:
    """A small shop's catalog (renamed columns, a category, listing dates with gaps) and order log."""
    rng = np.random.default_rng(0)
    cats = ["pens", "paper", "tape", "ink"]
    items = tmp_path / "catalog.csv"
    items.write_text(
        "sku,name,blurb,cat,listed\n"
        + "".join(
            f"S{i},{cats[i % 4]} item {i},a {cats[i % 4]} thing,{cats[i % 4]},{'' if i % 7 else 1_600_000_000 + 50 * i}\n"
            for i in range(80)
        )
    )
    rows, t = [], 1_600_000_000
    for u in range(150):  # each customer mostly buys one category
        c = int(rng.integers(4))
        for _ in range(int(rng.integers(3, 9))):
            t += int(rng.integers(1, 300))
            i = int(rng.integers(80)) if rng.random() < 0.3 else int(rng.choice(np.arange(c, 80, 4)))
            rows.append(f"c{u},S{i},{t}\n")
    log = tmp_path / "orders.csv"
    log.write_text("customer,sku,ts\n" + "".join(rows))
    return items, log


def _shop_run(
    compose_cfg: Callable[..., DictConfig], tiny_qwen_dir: Path, tmp_path: Path, *extra: str
) -> dict:  # type: ignore[type-arg]
    """train_i2i on the small shop through the tabular adapter: the required column mapping from
    the command line, plus ``extra`` overrides."""
    items, log = _shop_files(tmp_path)
    return train_i2i.run(
        compose_cfg(
            "train_i2i",
            tiny_args(
                tiny_qwen_dir,
                "data=tabular",
                f"data.adapter.items_path={items}",
                f"data.adapter.interactions_path={log}",
                "data.adapter.item_columns.item_id=sku",
                "data.adapter.item_columns.title=name",
                "data.adapter.interaction_columns.user_id=customer",
                "data.adapter.interaction_columns.item_id=sku",
                "data.adapter.interaction_columns.timestamp=ts",
                *extra,
            ),
        )
    )


def test_a_users_csv_through_the_tabular_adapter(
    compose_cfg: Callable[..., DictConfig], tiny_qwen_dir: Path, tmp_path: Path
) -> None:
    """The generic adapter end to end: renamed columns, an optional text column, an attribute as
    both model feature and relevance label, listing dates (some unknown) for the popularity prior,
    all set from the command line as the README shows."""
    report = _shop_run(
        compose_cfg,
        tiny_qwen_dir,
        tmp_path,
        "data.adapter.item_columns.text=blurb",
        "data.adapter.item_columns.available_from=listed",
        "data.adapter.attributes={category: {column: cat}}",
        "data.labels.fields={category: 1.0}",
        "data.item_features=[category]",
        "data.content_fields=[title,text]",
        "data.pairs.train_window=3",
        "trainer.pair_weight=count",
        "trainer.uniform_negatives=16",
        "model.min_id_count=2",
    )
    # each distinct train pair (window 3) once per co-engagement counted
    pairs = report["train_pairs"]
    assert (pairs["window"], pairs["weight"]) == (3, "count")
    assert pairs["per_epoch"] > report["split"]["train_pairs"] > 0
    assert "uniform_negatives: 16" in (tmp_path / "out" / "config.yaml").read_text()
    sel = report["selection"]["mtmh"]
    row = report["methods"][MTMH_ROW.format(**sel)]
    assert (
        0 < report["dataset_stats"]["items"] <= 80 and 0.0 <= row["recall@10"] <= 1.0
    )  # debug=tiny samples users
    assert sel["pop_counts"] == "per time on the shelf"
    # items with fewer than 2 train interactions are exported, and so served, without an id
    no_id = load_export(tmp_path / "out" / "export").features.no_id
    assert no_id is not None and 0 < no_id.sum() < len(no_id)


def test_a_text_only_catalog_learns_from_teacher_labels(
    compose_cfg: Callable[..., DictConfig], tiny_qwen_dir: Path, tmp_path: Path
) -> None:
    """No categorical attribute at all: ``labels.teacher=content`` makes the run's content vectors
    the relevance labels of the semantic loss and of SemRel, and the saved config names the folder."""
    report = _shop_run(compose_cfg, tiny_qwen_dir, tmp_path, "data.labels.teacher=content")
    out = tmp_path / "out"
    assert report["labels"] == {"fields": {}, "relation": None, "teacher": str(out / "content")}
    saved = OmegaConf.load(out / "config.yaml")
    assert saved.data.labels.teacher == str(out / "content")
    assert "cosine (clipped at 0) of the teacher vectors" in (out / "report.md").read_text()
    # The teacher is the content encoder, so content-only cosine retrieves, per trigger, the K
    # items with the highest labels: no method can have a higher SemRel.
    semrel = {name: m["semrel@10"] for name, m in report["methods"].items()}
    assert semrel["content"] > 0
    assert max(semrel.values()) <= semrel["content"] + 1e-6, semrel
    assert report["training"]["mtmh_lam1"]["loss_curve"]  # the semantic loss trained (lambda 1)
