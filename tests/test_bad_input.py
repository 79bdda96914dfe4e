"""Bad input, table-driven, through the real command line: every case exits non-zero with one
clear message (what, where, what would be right), no Python traceback, and leaves nothing in
its output folder that looks finished (no manifest). ``HYDRA_FULL_ERROR=1`` still gives the trace.

docs/faults.md lists every case with what the user sees.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from hydra import compose, initialize_config_dir

from pipelines import embed_items, export_faiss, train_i2i
from tests.helpers import CONFIG_DIR, embed_overrides, mmeb_args, run_module, tiny_args
from tte_recsys.artifacts import write_manifest
from tte_recsys.evaluation.mmeb.synthetic import make_synthetic_root
from tte_recsys.tte.tiny import build_tiny_qwen2_vl

pytestmark = pytest.mark.slow


@dataclass
class Ctx:
    tmp: Path
    out: Path
    model: Path  # the tiny Qwen2 (a causal LM folder: embedder or reasoner)
    vectors: Path  # an embed_items folder (copy before changing it)
    bundle: Path  # an export_faiss bundle (copy before changing it)
    run: Path  # the train_i2i run behind it
    mmeb: Path  # a synthetic MMEB root (copy before changing it)
    vl: Path  # a tiny Qwen2-VL folder


def _compose(name: str, overrides: list[str]):  # type: ignore[no-untyped-def]
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(name, overrides=overrides)


@pytest.fixture(scope="module")
def shared(tiny_qwen_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("bad_input")
    embed_items.run(_compose("embed_items", embed_overrides(tiny_qwen_dir, d / "vectors")))
    train_i2i.run(_compose("train_i2i", [*tiny_args(tiny_qwen_dir), f"output_dir={d / 'run'}"]))
    export_faiss.run(
        _compose("export_faiss", ["debug=tiny", f"model_dir={d / 'run'}", f"output_dir={d / 'bundle'}"])
    )
    return {
        "vectors": d / "vectors",
        "run": d / "run",
        "bundle": d / "bundle",
        "mmeb": make_synthetic_root(d / "mmeb", queries=4),
        "vl": build_tiny_qwen2_vl(d / "vl"),
    }


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _tabular(c: Ctx, items: str, log: str, *extra: str, suffix: str = "csv") -> list[str]:
    (c.tmp / f"items.{suffix}").write_text(items)
    (c.tmp / f"log.{suffix}").write_text(log)
    return [
        "data=tabular",
        f"data.adapter.items_path={c.tmp / f'items.{suffix}'}",
        f"data.adapter.interactions_path={c.tmp / f'log.{suffix}'}",
        "data.labels.fields={cat: 1.0}",
        "data.adapter.attributes={cat: {column: cat}}",
        *extra,
    ]


_ITEMS = "item_id,title,cat\n1,A,x\n2,B,y\n3,C,x\n"
_LOG = "user_id,item_id,timestamp\nu,1,10\nu,2,11\nv,2,12\nv,3,13\n"


def _mmeb(c: Ctx, root: Path, task: str, *extra: str) -> list[str]:
    return mmeb_args(root, c.vl, c.tmp / "cache", f"tasks=[{task}]", *extra)


def _broken_mmeb(c: Ctx, rel: str, fn: Callable[[pl.DataFrame], pl.DataFrame]) -> Path:
    root = _copy(c.mmeb, c.tmp / "root")
    path = next((root / rel).glob("test-*.parquet"))
    fn(pl.read_parquet(path)).write_parquet(path)
    return root


def _nan_vectors(c: Ctx) -> Path:
    d = _copy(c.vectors, c.tmp / "vectors")
    shard = next((d / "shards").glob("part-*.parquet"))
    df = pl.read_parquet(shard)
    v = df["vector"].to_numpy().copy()
    v[3, 0] = np.nan
    df.with_columns(pl.Series("vector", v, dtype=df.schema["vector"])).write_parquet(shard)
    write_manifest(
        d, "embed_items", {"model_id": "m", "trace_version": "none"}
    )  # an upstream job's bug, not tampering
    return d


def _tampered(c: Ctx, truncate: bool) -> Path:
    b = _copy(c.bundle, c.tmp / "bundle")
    f = next(b.glob("*.faiss"))
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2] if truncate else data[:-1] + bytes([data[-1] ^ 1]))
    return b


def _bundle_query(c: Ctx, item: str, *extra: str) -> list[str]:
    return [f"bundle_dir={c.bundle}", f"item_id={item}", *extra]


# (id, module, args(ctx), expected message (regex))
CASES: list[tuple[str, str, Callable[[Ctx], list[str]], str]] = [
    # --- catalog and log files (prepare_data / evaluate through the tabular adapter)
    (
        "csv with a ragged row",
        "pipelines.prepare_data",
        lambda c: _tabular(c, "item_id,title,cat\n1,A,x,extra,more\n2,B\n", _LOG),
        r"items\.csv",
    ),
    (
        "log names an unknown item",
        "pipelines.evaluate",
        lambda c: _tabular(c, _ITEMS, _LOG + "v,9,14\n"),
        r"log\.csv, column item_id: 1 interaction\(s\) name items not in the catalog",
    ),
    (
        "duplicate item ids",
        "pipelines.prepare_data",
        lambda c: _tabular(c, _ITEMS + "1,again,x\n", _LOG),
        r"items\.csv, column 'item_id' \(item_id\): duplicate item id\(s\)",
    ),
    (
        "empty catalog",
        "pipelines.prepare_data",
        lambda c: _tabular(c, "item_id,title,cat\n", _LOG),
        r"items\.csv",
    ),
    (
        "missing column",
        "pipelines.prepare_data",
        lambda c: _tabular(c, _ITEMS, _LOG, "data.adapter.item_columns.title=name"),
        r"items\.csv.*name",
    ),
    (
        "timestamp not a time",
        "pipelines.prepare_data",
        lambda c: _tabular(c, _ITEMS, "user_id,item_id,timestamp\nu,1,yesterday\nu,2,11\n"),
        r"log\.csv, column 'timestamp'",
    ),
    (
        "empty user id",
        "pipelines.prepare_data",
        lambda c: _tabular(c, _ITEMS, "user_id,item_id,timestamp\n,1,10\nu,2,11\n"),
        r"log\.csv, column 'user_id' \(user_id\): 1 empty/null value",
    ),
    (
        "parquet that is not parquet",
        "pipelines.prepare_data",
        lambda c: _tabular(c, "not parquet", "neither", suffix="parquet"),
        r"items\.parquet",
    ),
    (
        "missing catalog file",
        "pipelines.prepare_data",
        lambda c: [*_tabular(c, _ITEMS, _LOG), f"data.adapter.items_path={c.tmp / 'nope.csv'}"],
        r"nope\.csv",
    ),
    # --- config
    (
        "unknown config key lists the valid ones",
        "pipelines.embed_items",
        lambda c: ["embedder.poolng=mean"],
        r"unknown config key 'embedder\.poolng': embedder has \[.*'pooling'",
    ),
    (
        "unknown top-level key",
        "pipelines.train_i2i",
        lambda c: ["max_step=3"],
        r"unknown config key 'max_step': the top level has \[",
    ),
    (
        "unknown group option lists the options",
        "pipelines.embed_items",
        lambda c: ["embedder=minilmx"],
        r"Could not find 'embedder/minilmx'\s+Available options in 'embedder':\s+minilm\s+openai",
    ),
    (
        "unknown section key in a frozen config",
        "pipelines.train_i2i",
        lambda c: [*tiny_args(c.model), "+trainer.lr_decay=0.5"],
        r"trainer: unknown key\(s\) \['lr_decay'\]; valid keys are",
    ),
    # --- models and vector folders
    (
        "missing embedder folder",
        "pipelines.embed_items",
        lambda c: [
            *embed_overrides(c.model, c.out)[:-1],
            "embedder.model_path=/nowhere/model",
            f"output_dir={c.out}",
        ],
        r"/nowhere/model",
    ),
    (
        "incomplete embedder folder",
        "pipelines.embed_items",
        lambda c: [*embed_overrides(_copy_config_only(c), c.out)],
        r"partial_model",
    ),
    (
        "oversized input length",
        "pipelines.embed_items",
        lambda c: [*embed_overrides(c.model, c.out), "embedder.max_length=100000"],
        r"embedder\.max_length=100000 exceeds what .* can read \(max_position_embeddings 512\)",
    ),
    (
        "missing reasoner folder",
        "pipelines.generate_traces",
        lambda c: [
            "data=amazon_office",
            "debug=tiny",
            "reasoner=hf",
            "reasoner.model_path=/nowhere/reasoner",
            f"output_dir={c.out}",
        ],
        r"/nowhere/reasoner",
    ),
    (
        "traces file without its trace column",
        "pipelines.generate_traces",
        lambda c: [
            "data=amazon_office",
            "debug=tiny",
            "reasoner=file",
            f"reasoner.path={_no_trace_col(c)}",
            f"output_dir={c.out}",
        ],
        r"missing column\(s\) \['trace'\]",
    ),
    (
        "NaN vectors in a content folder",
        "pipelines.evaluate",
        lambda c: [
            "data=amazon_office",
            "debug=tiny",
            "data.max_items=150",
            f"+content_dirs.mine={_nan_vectors(c)}",
            f"output_dir={c.out}",
        ],
        r"1 vector\(s\) hold NaN or infinite values",
    ),
    (
        "tampered traces folder",
        "pipelines.embed_items",
        lambda c: [*embed_overrides(c.model, c.out), f"traces_dir={_tampered_traces(c)}"],
        r"file 'traces\.parquet' has sha256 .*manifest says",
    ),
    # --- bundles and queries
    (
        "tampered bundle",
        "pipelines.query",
        lambda c: _bundle_query(c, "1", f"bundle_dir={_tampered(c, truncate=False)}"),
        r"error: .*bundle: file '.*\.faiss' has sha256 .* \(file changed after it was written\)",
    ),
    (
        "truncated bundle",
        "pipelines.evaluate",
        lambda c: [
            "data=amazon_office",
            "debug=tiny",
            f"bundle_dir={_tampered(c, truncate=True)}",
            f"output_dir={c.out}",
        ],
        r"\.faiss' has sha256",
    ),
    (
        "unknown trigger id at query time",
        "pipelines.query",
        lambda c: _bundle_query(c, "no-such-item"),
        r"error: .*no-such-item",
    ),
    (
        "missing model folder to export",
        "pipelines.export_faiss",
        lambda c: ["model_dir=/nowhere/run", f"output_dir={c.out}"],
        r"/nowhere/run",
    ),
    (
        "mismatched dimensions",
        "pipelines.evaluate",
        lambda c: [
            "data=amazon_office",
            "debug=tiny",
            "data.max_items=150",
            f"+content_dirs.mine={_mixed_dims(c)}",
            f"output_dir={c.out}",
        ],
        r"shards hold vectors of different dimensions",
    ),
    # --- MMEB-V2
    (
        "mmeb root missing",
        "pipelines.eval_mmeb",
        lambda c: ["root=/nowhere/mmeb", f"hydra.run.dir={c.out}"],
        r"root=/nowhere/mmeb: not a folder",
    ),
    (
        "mmeb unknown task",
        "pipelines.eval_mmeb",
        lambda c: _mmeb(c, c.mmeb, "ImageNet-2K", f"hydra.run.dir={c.out}"),
        r"tasks: unknown \['ImageNet-2K'\]; valid: \['ImageNet-1K'",
    ),
    (
        "mmeb malformed row",
        "pipelines.eval_mmeb",
        lambda c: _mmeb(
            c,
            _broken_mmeb(
                c,
                "ziyjiang/MMEB_Test_Instruct/ImageNet-1K",
                lambda df: df.with_columns(pl.Series("tgt_img_path", [[""]] * df.height)),
            ),
            "ImageNet-1K",
            f"hydra.run.dir={c.out}",
        ),
        r"task ImageNet-1K: test-00000-of-00001\.parquet row 0: tgt_text has 4 entries, tgt_img_path 1",
    ),
    (
        "mmeb qrels name an unknown document",
        "pipelines.eval_mmeb",
        lambda c: _mmeb(
            c,
            _broken_mmeb(
                c,
                "vidore/docvqa_test_subsampled_beir/qrels",
                lambda df: df.with_columns(pl.lit("doc99").alias("corpus-id")),
            ),
            "ViDoRe_docvqa",
            f"hydra.run.dir={c.out}",
        ),
        r"corpus-id 'doc99' is not in the corpus",
    ),
    (
        "mmeb image that does not open",
        "pipelines.eval_mmeb",
        lambda c: _mmeb(c, _bad_image(c), "MSCOCO_t2i", f"hydra.run.dir={c.out}"),
        r"task MSCOCO_t2i: .* row 0: image .*c0\.png does not open",
    ),
    (
        "mmeb unknown version",
        "pipelines.eval_mmeb",
        lambda c: ["list_tasks=true", "versions.MomentSeeker=1700", f"hydra.run.dir={c.out}"],
        r"versions\.MomentSeeker='1700': unknown",
    ),
    # --- config values: required, of the wrong type, out of range; served embedders
    (
        "required value not set",
        "pipelines.export_faiss",
        lambda c: [],
        r"error: model_dir is required but not set \(\?\?\? in the config\): pass model_dir=<value>",
    ),
    (
        "tabular data without its files",
        "pipelines.prepare_data",
        lambda c: ["data=tabular"],
        r"error: data\.adapter\.items_path is required but not set",
    ),
    (
        "hf reasoner without its folder",
        "pipelines.generate_traces",
        lambda c: ["debug=tiny", "reasoner=hf"],
        r"error: reasoner\.model_path is required but not set",
    ),
    (
        "word for a number",
        "pipelines.train_i2i",
        lambda c: [*tiny_args(c.model), "trainer.max_steps=abc"],
        r"error: trainer\.max_steps='abc': expected an integer",
    ),
    (
        "number for a list",
        "pipelines.train_i2i",
        lambda c: [*tiny_args(c.model), "model.hidden=256"],
        r"error: model\.hidden=256: expected a list of integers",
    ),
    (
        "word for a user count",
        "pipelines.prepare_data",
        lambda c: ["debug=tiny", "data.sample_users=abc"],
        r"error: data\.sample_users='abc': expected a positive count, or null",
    ),
    (
        "zero shard size",
        "pipelines.embed_items",
        lambda c: [*embed_overrides(c.model, c.out), "shard_size=0"],
        r"error: shard_size=0: expected an integer >= 1",
    ),
    (
        "zero evaluation batch",
        "pipelines.evaluate",
        lambda c: ["debug=tiny", "eval.batch_size=0"],
        r"error: eval\.batch_size=0: expected >= 1",
    ),
    (
        "zero neighbours asked",
        "pipelines.query",
        lambda c: _bundle_query(c, "1", "k=0"),
        r"error: k=0: expected an integer >= 1",
    ),
    (
        "zero traces per cache write",
        "pipelines.generate_traces",
        lambda c: ["debug=tiny", "reasoner=none", "flush_every=0"],
        r"error: flush_every=0: expected an integer >= 1",
    ),
    (
        "mmeb zero candidates kept",
        "pipelines.eval_mmeb",
        lambda c: [*_mmeb(c, c.mmeb, "ImageNet-1K"), "top_k=0"],
        r"error: top_k=0: expected an integer >= 1",
    ),
    (
        "nothing left after filtering",
        "pipelines.evaluate",
        lambda c: ["debug=tiny", "data.max_items=1"],
        r"error: dataset 'movielens': no train pairs",
    ),
    (
        "ANN recall at zero",
        "pipelines.export_faiss",
        lambda c: [f"model_dir={c.run}", "recall_k=0", f"output_dir={c.out}"],
        r"error: recall_k=0: expected an integer >= 1",
    ),
    (
        "content vectors of another dataset",
        "pipelines.evaluate",
        lambda c: ["debug=tiny", f"+content_dirs.mine={c.vectors}", f"output_dir={c.out}"],
        r"error: \d+ item\(s\) have no vector .* in .*vectors, of the catalog's \d+: vectors of another dataset\?",
    ),
    (
        "served embedder without its address",
        "pipelines.embed_items",
        lambda c: ["debug=tiny", "embedder=openai"],
        r"error: embedder\.base_url is required but not set",
    ),
    (
        "served embedder not reachable",
        "pipelines.embed_items",
        lambda c: ["debug=tiny", "data.max_items=20", *_unreachable_embedder()],
        r"error: http://127\.0\.0\.1:9/v1/embeddings: URLError: .*gave up after 1 attempts",
    ),
    (
        "served embedder trained inside the model",
        "pipelines.train_i2i",
        lambda c: ["debug=tiny", "model.content=trainable", *_unreachable_embedder()],
        r"error: model\.content=trainable trains the embedder inside the model, .* is served over HTTP",
    ),
    # --- traces in the vectors
    (
        "trace input without traces",
        "pipelines.train_i2i",
        lambda c: ["debug=tiny", "model.trace_input=true"],
        r"error: model\.trace_input=true needs traces \(a reasoner, .* or traces_dir=",
    ),
    (
        "trace weight not a number",
        "pipelines.embed_items",
        lambda c: ["debug=tiny", "embedder.trace_weight=abc"],
        r"error: embedder\.trace_weight='abc': expected a number >= 0",
    ),
    (
        "intervals against a row that is not there",
        "pipelines.evaluate",
        lambda c: ["debug=tiny", "intervals_against=content:nope"],
        r"error: intervals_against='content:nope': expected one of the added rows \[\] \(add rows with \+content_dirs",
    ),
    (
        "unknown trace rule, even when scoring without traces",
        "pipelines.train_reasoner",
        lambda c: [
            "debug=tiny",
            "toy=false",
            "data=amazon_office",
            "method=score",
            "score_reasoner.model_path=none",
            "select.trace_rule=always",
            f"hydra.run.dir={c.out}",
        ],
        r"error: select\.trace_rule='always': expected one of \['interval', 'best'\]",
    ),
    # --- reasoner training
    (
        "fewer than two generations",
        "pipelines.train_reasoner",
        lambda c: ["debug=tiny", "method=eg_rl", "method.num_generations=1", f"hydra.run.dir={c.out}"],
        r"method\.num_generations=1: GRPO needs a group of >= 2 rollouts per prompt",
    ),
    (
        "unknown reasoner-training method",
        "pipelines.train_reasoner",
        lambda c: ["debug=tiny", "method=dpo", f"hydra.run.dir={c.out}"],
        r"Could not find 'method/dpo'\s+Available options in 'method':\s+eg_rl\s+expert_iteration",
    ),
]


def _unreachable_embedder() -> list[str]:
    """A served embedder at an address where nothing listens (port 9), tried once."""
    return [
        "embedder=openai",
        "embedder.base_url=http://127.0.0.1:9/v1",
        "embedder.model=m",
        "embedder.client.max_retries=0",
    ]


def _copy_config_only(c: Ctx) -> Path:
    d = c.tmp / "partial_model"
    d.mkdir()
    shutil.copy(c.model / "config.json", d / "config.json")
    return d


def _no_trace_col(c: Ctx) -> Path:
    p = c.tmp / "traces.parquet"
    pl.DataFrame({"item_id": ["1"], "text": ["t"]}).write_parquet(p)
    return p


def _tampered_traces(c: Ctx) -> Path:
    d = c.tmp / "traces"
    d.mkdir()
    pl.DataFrame({"item_id": ["1"], "content_hash": ["h"], "thinking": [""], "summary": ["s"]}).write_parquet(
        d / "traces.parquet"
    )
    write_manifest(d, "generate_traces", {"summary": {"reasoner_id": "r", "prompt": "p"}})
    (d / "traces.parquet").write_bytes((d / "traces.parquet").read_bytes() + b"\0")
    return d


def _mixed_dims(c: Ctx) -> Path:
    d = _copy(c.vectors, c.tmp / "vectors")
    shard = sorted((d / "shards").glob("part-*.parquet"))[-1]
    df = pl.read_parquet(shard)
    v = df["vector"].to_numpy()[:, :16].copy()
    df.with_columns(pl.Series("vector", v, dtype=pl.Array(pl.Float32, 16))).write_parquet(shard)
    write_manifest(d, "embed_items", {"model_id": "m", "trace_version": "none"})
    return d


def _bad_image(c: Ctx) -> Path:
    root = _copy(c.mmeb, c.tmp / "root")
    (root / "image-tasks/MSCOCO_t2i/c0.png").write_bytes(b"not a png")
    return root


def test_at_least_thirty_cases() -> None:
    assert len(CASES) >= 30 and len({c[0] for c in CASES}) == len(CASES)


@pytest.fixture(scope="module")
def outcomes(
    shared: dict[str, Path], tiny_qwen_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, tuple[subprocess.CompletedProcess[str], Path]]:
    """Every case's command run, three at a time (each is mostly interpreter start-up)."""
    jobs = []
    for case, module, args, _ in CASES:
        tmp = tmp_path_factory.mktemp("case")
        out = tmp / "out"
        c = Ctx(
            tmp,
            out,
            tiny_qwen_dir,
            shared["vectors"],
            shared["bundle"],
            shared["run"],
            shared["mmeb"],
            shared["vl"],
        )
        argv = args(c)
        if (
            not any(a.startswith(("output_dir=", "hydra.run.dir=")) for a in argv)
            and module != "pipelines.query"
        ):
            argv.append(f"hydra.run.dir={out}")
        jobs.append((case, module, argv, tmp, out))

    def run(
        job: tuple[str, str, list[str], Path, Path],
    ) -> tuple[str, subprocess.CompletedProcess[str], Path]:
        case, module, argv, tmp, out = job
        return case, run_module(module, argv, cwd=tmp, timeout=900), out

    with ThreadPoolExecutor(max_workers=3) as pool:
        return {case: (r, out) for case, r, out in pool.map(run, jobs)}


@pytest.mark.parametrize(("case", "message"), [(c[0], c[3]) for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_clear_message_and_leaves_nothing_finished(
    outcomes: dict[str, tuple[subprocess.CompletedProcess[str], Path]], case: str, message: str
) -> None:
    r, out = outcomes[case]
    assert r.returncode != 0, f"{case}: exited 0\n{r.stdout[-2000:]}"
    assert re.search(message, r.stderr, re.S), f"{case}: message not found\n{r.stderr[-3000:]}"
    assert "Traceback" not in r.stderr, f"{case}: a traceback reached the user\n{r.stderr[-3000:]}"
    assert not (out / "manifest.json").exists() and not (out / "report.json").exists()


def test_hydra_full_error_keeps_the_trace(tmp_path: Path) -> None:
    r = run_module(
        "pipelines.eval_mmeb",
        ["root=/nowhere/mmeb", f"hydra.run.dir={tmp_path}"],
        env={"HYDRA_FULL_ERROR": "1"},
        timeout=300,
    )
    assert (
        r.returncode != 0 and "Traceback" in r.stderr and "FileNotFoundError: root=/nowhere/mmeb" in r.stderr
    )
