"""pipelines.eval_mmeb end to end on a synthetic MMEB-format root with a tiny random
vision-language model: debug=tiny, skipped tasks, the embedding cache (re-score without encoding,
a changed model re-encodes), think-then-embed, 1 vs 2 processes, kill then resume, bad input."""

from __future__ import annotations

import json
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import polars as pl
import psutil
import pytest
from omegaconf import DictConfig

from pipelines import eval_mmeb
from tests.helpers import finish, launch, mmeb_args
from tte_recsys.evaluation.mmeb.data import MMEBDataError
from tte_recsys.evaluation.mmeb.synthetic import SYNTHETIC_TASKS, make_synthetic_root
from tte_recsys.tte.tiny import build_tiny_qwen2_vl


@pytest.fixture(scope="module")
def mmeb_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_synthetic_root(tmp_path_factory.mktemp("mmeb") / "root")


@pytest.fixture(scope="module")
def vl_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_qwen2_vl(tmp_path_factory.mktemp("vl"))


def _args(root: Path, model: Path, cache: Path, *extra: str) -> list[str]:
    return mmeb_args(root, model, cache, f"tasks=[{','.join(SYNTHETIC_TASKS)}]", *extra)


def _report(out: Path) -> dict[str, Any]:
    return dict(json.loads((out / "report.json").read_text()))


def _written(out: Path) -> int:
    return sum(v["shards_written"] for v in json.loads((out / "encoding.json").read_text()).values())


def test_debug_tiny_runs_end_to_end(compose_cfg: Callable[..., DictConfig], tmp_path: Path) -> None:
    res = eval_mmeb.run(compose_cfg("eval_mmeb", ["debug=tiny", f"cache_dir={tmp_path / 'cache'}"]))
    rep = _report(tmp_path / "out")
    assert sorted(rep["tasks"]) == sorted(SYNTHETIC_TASKS) and rep["skipped"] == {}
    assert res["overall"]["tasks"] == 9 and set(rep["modalities"]) == {"image", "video", "visdoc"}
    assert all(0.0 <= t["score"] <= 100.0 for t in rep["tasks"].values())
    assert (
        rep["tasks"]["ImageNet-1K"]["notes"]
        and "two or more contents" in rep["tasks"]["ImageNet-1K"]["notes"][0]
    )
    preds = pl.read_parquet(tmp_path / "out" / "predictions" / "ViDoSeek-doc.parquet")
    assert preds.height == 6 and set(preds.columns) >= {"query", "top", "first_relevant_rank", "score"}
    assert "| score |" in (tmp_path / "out" / "report.md").read_text()


def test_list_tasks_reads_no_data(
    compose_cfg: Callable[..., DictConfig], tmp_path: Path, capsys: Any
) -> None:
    eval_mmeb.run(compose_cfg("eval_mmeb", ["list_tasks=true", "root=/does/not/exist"]))
    tasks = json.loads((tmp_path / "out" / "tasks.json").read_text())
    assert len(tasks) == 78 and sum(t["modality"] == "visdoc" for t in tasks) == 24
    assert "ViDoSeek-page@fixed" in capsys.readouterr().out
    eval_mmeb.run(
        compose_cfg("eval_mmeb", ["list_tasks=true", "versions.MomentSeeker=1800", "modalities=[video]"])
    )
    tasks = json.loads((tmp_path / "out" / "tasks.json").read_text())
    assert len(tasks) == 18 and {t["version"] for t in tasks if t["name"] == "MomentSeeker"} == {"1800"}


def test_missing_task_is_skipped_with_its_path_and_cache_rescoring(
    compose_cfg: Callable[..., DictConfig], tmp_path: Path, mmeb_root: Path, vl_model: Path
) -> None:
    model = tmp_path / "model"
    shutil.copytree(vl_model, model)
    args = _args(mmeb_root, model, tmp_path / "cache")
    args[-1] = "tasks=[ImageNet-1K,N24News,ViDoRe_docvqa,MSR-VTT]"
    eval_mmeb.run(compose_cfg("eval_mmeb", [*args, "output_dir=" + str(tmp_path / "a")]))
    first = _report(tmp_path / "a")
    assert list(first["tasks"]) == ["ImageNet-1K", "MSR-VTT", "ViDoRe_docvqa"]
    assert "ziyjiang/MMEB_Test_Instruct/N24News" in first["skipped"]["N24News"]
    assert first["overall"]["tasks"] == 3 and first["overall"]["skipped"] == 1
    assert _written(tmp_path / "a") > 0
    # the same model again: re-scored from the cache, nothing encoded, the same report
    eval_mmeb.run(compose_cfg("eval_mmeb", [*args, "output_dir=" + str(tmp_path / "b")]))
    assert _written(tmp_path / "b") == 0 and _report(tmp_path / "b")["tasks"] == first["tasks"]
    # other weights in the same folder: a new fingerprint, everything encoded again
    build_tiny_qwen2_vl(model, seed=1)
    eval_mmeb.run(compose_cfg("eval_mmeb", [*args, "output_dir=" + str(tmp_path / "c")]))
    third = _report(tmp_path / "c")
    assert (
        _written(tmp_path / "c") == _written(tmp_path / "a") and third["fingerprint"] != first["fingerprint"]
    )


def test_think_then_embed_on_the_query_side(
    compose_cfg: Callable[..., DictConfig], tmp_path: Path, mmeb_root: Path, vl_model: Path
) -> None:
    args = _args(mmeb_root, vl_model, tmp_path / "cache", "tasks=[MSCOCO_t2i,ViDoRe_docvqa]")
    names = [f"MSCOCO_t2i:q{k}" for k in range(6)]  # traces for one task's queries only
    pl.DataFrame({"item_id": names, "trace": [f"a photo; look for {k}" for k in range(6)]}).write_parquet(
        tmp_path / "traces.parquet"
    )
    reasoner = [
        "reasoner=file",
        f"reasoner.path={tmp_path / 'traces.parquet'}",
        f"trace_cache_dir={tmp_path / 'tc'}",
    ]
    eval_mmeb.run(compose_cfg("eval_mmeb", [*args, *reasoner, "think=query", f"output_dir={tmp_path / 'a'}"]))
    enc = json.loads((tmp_path / "a" / "encoding.json").read_text())
    rep = _report(tmp_path / "a")
    assert rep["think"] == "query" and all(v["shards_written"] for v in enc.values())
    assert rep["tasks"]["MSCOCO_t2i"]["traces"] == {"query": 6, "target": 0}
    assert rep["tasks"]["ViDoRe_docvqa"]["traces"] == {"query": 0, "target": 0}
    # traces are cached: a second run makes no new trace and encodes nothing
    eval_mmeb.run(compose_cfg("eval_mmeb", [*args, *reasoner, "think=query", f"output_dir={tmp_path / 'b'}"]))
    assert _written(tmp_path / "b") == 0
    # without traces the query side is another input: encoded anew, the targets are reused
    eval_mmeb.run(compose_cfg("eval_mmeb", [*args, f"output_dir={tmp_path / 'c'}"]))
    enc = json.loads((tmp_path / "c" / "encoding.json").read_text())
    assert enc["MSCOCO_t2i/query"]["shards_written"] == 1 and enc["MSCOCO_t2i/target"]["shards_written"] == 0
    with_t, without = (pl.read_parquet(tmp_path / d / "predictions" / "MSCOCO_t2i.parquet") for d in "ac")
    assert (
        with_t["top_scores"].to_list() != without["top_scores"].to_list()
    )  # the traces reached the embedder


@pytest.mark.slow
def test_one_and_two_processes_give_identical_scores(tmp_path: Path, mmeb_root: Path, vl_model: Path) -> None:
    for n, name in ((1, "one"), (2, "two")):
        finish(
            launch(
                _args(mmeb_root, vl_model, tmp_path / f"cache_{name}"),
                tmp_path / name,
                n,
                module="pipelines.eval_mmeb",
            )
        )
    one, two = _report(tmp_path / "one"), _report(tmp_path / "two")
    assert one["tasks"] == two["tasks"] and one["overall"] == two["overall"]
    # both ranks wrote shards in the 2-process run
    shards = [p.name for p in (tmp_path / "cache_two").rglob("part-*.parquet")]
    assert len(shards) == len([p for p in (tmp_path / "cache_one").rglob("part-*.parquet")])


@pytest.mark.slow
def test_kill_then_resume_gives_the_same_report_without_reencoding(
    tmp_path: Path, mmeb_root: Path, vl_model: Path
) -> None:
    args = _args(mmeb_root, vl_model, tmp_path / "cache_full", "shard_size=1")
    finish(launch(args, tmp_path / "full", module="pipelines.eval_mmeb"))
    args = _args(mmeb_root, vl_model, tmp_path / "cache", "shard_size=1")
    p = launch(args, tmp_path / "killed", module="pipelines.eval_mmeb")
    deadline = time.time() + 300
    while p.poll() is None and time.time() < deadline:  # kill once the image tasks are scored
        if (tmp_path / "killed" / "predictions" / "MSCOCO_t2i.parquet").is_file():
            break
        time.sleep(0.01)
    assert p.poll() is None, "the run finished before it could be killed"
    launcher = psutil.Process(p.pid)
    for proc in [*launcher.children(recursive=True), launcher]:
        proc.send_signal(signal.SIGKILL)
    p.communicate(timeout=60)
    assert not (tmp_path / "killed" / "report.json").exists()
    finish(launch(args, tmp_path / "killed", module="pipelines.eval_mmeb"))
    assert _report(tmp_path / "killed")["tasks"] == _report(tmp_path / "full")["tasks"]
    enc = json.loads((tmp_path / "killed" / "encoding.json").read_text())
    for task in ("ImageNet-1K", "MSCOCO_t2i", "CIRR"):  # finished before the kill: nothing encoded again
        assert enc[f"{task}/query"]["shards_written"] == enc[f"{task}/target"]["shards_written"] == 0
    assert sum(v["shards_written"] for v in enc.values()) > 0


def _break(root: Path, rel: str, fn: Callable[[pl.DataFrame], pl.DataFrame]) -> None:
    path = next((root / rel).glob("test-*.parquet"))
    fn(pl.read_parquet(path)).write_parquet(path)


BAD_INPUTS: list[tuple[str, str, Callable[[Path], None], str]] = [
    (
        "list lengths differ",
        "ImageNet-1K",
        lambda r: _break(
            r,
            "ziyjiang/MMEB_Test_Instruct/ImageNet-1K",
            lambda df: df.with_columns(pl.Series("tgt_img_path", [[""]] * df.height)),
        ),
        r"task ImageNet-1K: test-00000-of-00001.parquet row 0: tgt_text has 4 entries, tgt_img_path 1",
    ),
    (
        "missing column",
        "MSR-VTT",
        lambda r: _break(r, "VLM2Vec/MSR-VTT/test_1k", lambda df: df.drop("caption")),
        r"lacks column\(s\) \['caption'\]; it has \['video_id'\]",
    ),
    (
        "image does not open",
        "MSCOCO_t2i",
        lambda r: (r / "image-tasks/MSCOCO_t2i/c0.png").write_bytes(b"not a png"),
        r"task MSCOCO_t2i: test-00000-of-00001.parquet row 0: image .*c0.png does not open",
    ),
    (
        "qrels names an unknown document",
        "ViDoRe_docvqa",
        lambda r: _break(
            r,
            "vidore/docvqa_test_subsampled_beir/qrels",
            lambda df: df.with_columns(pl.Series("corpus-id", ["doc99", *df["corpus-id"].to_list()[1:]])),
        ),
        r"task ViDoRe_docvqa: qrels test-00000-of-00001.parquet row 0: corpus-id 'doc99' is not in the corpus",
    ),
    (
        "answer is not an option",
        "ActivityNetQA",
        lambda r: _break(
            r, "VLM2Vec/ActivityNetQA", lambda df: df.with_columns(pl.lit("maybe").alias("answer"))
        ),
        r"answer 'maybe' is none of the options \['yes', 'no'\]",
    ),
    (
        "frame folder missing",
        "UCF101",
        lambda r: shutil.rmtree(r / "video-tasks/frames/video_cls/UCF101/v1"),
        r"task UCF101: test-00000-of-00001.parquet row 1: frame folder .*v1 is missing or holds no image",
    ),
    (
        "label outside the label list",
        "UCF101",
        lambda r: (r / "VLM2Vec/UCF101/labels.txt").write_text("zebra\n"),
        r"label 'cat' is not in the task's label list",
    ),
]


@pytest.mark.parametrize(("case", "task", "breaker", "message"), BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_names_task_file_and_row(
    compose_cfg: Callable[..., DictConfig],
    tmp_path: Path,
    vl_model: Path,
    case: str,
    task: str,
    breaker: Callable[[Path], None],
    message: str,
) -> None:
    root = make_synthetic_root(tmp_path / "root", queries=4)
    breaker(root)
    with pytest.raises(MMEBDataError, match=message):
        eval_mmeb.run(compose_cfg("eval_mmeb", _args(root, vl_model, tmp_path / "cache", f"tasks=[{task}]")))
    assert not (tmp_path / "out" / "report.json").exists()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("tasks=[ImageNet-2K]", r"tasks: unknown \['ImageNet-2K'\]; valid: \['ImageNet-1K'"),
        ("versions.ViDoSeek-page=v3", r"versions.ViDoSeek-page='v3': unknown; tasks with versions"),
        ("+columns.msrvtt2.text=x", r"columns: unknown famil\(y/ies\) \['msrvtt2'\]"),
        ("ties=random", r"ties='random': expected one of \['pessimistic', 'optimistic'\]"),
        ("read.frames=0", r"read.frames=0: expected >= 1"),
    ],
)
def test_bad_config_is_refused_before_any_work(
    compose_cfg: Callable[..., DictConfig],
    tmp_path: Path,
    mmeb_root: Path,
    vl_model: Path,
    override: str,
    message: str,
) -> None:
    args = [
        a
        for a in _args(mmeb_root, vl_model, tmp_path / "cache")
        if not a.startswith("tasks=") or "tasks=" in override
    ]
    with pytest.raises(ValueError, match=message):
        eval_mmeb.run(compose_cfg("eval_mmeb", [*[a for a in args if not a.startswith("tasks=")], override]))
    assert not (tmp_path / "cache").exists() or not list((tmp_path / "cache").rglob("part-*.parquet"))


def test_missing_root_is_a_clear_error(compose_cfg: Callable[..., DictConfig], tmp_path: Path) -> None:
    with pytest.raises(
        FileNotFoundError, match=r"root=/nowhere: not a folder; expected a local MMEB-V2 root"
    ):
        eval_mmeb.run(compose_cfg("eval_mmeb", ["root=/nowhere"]))
    with pytest.raises(ValueError, match=r"root: set root=<folder>"):
        eval_mmeb.run(compose_cfg("eval_mmeb", []))
