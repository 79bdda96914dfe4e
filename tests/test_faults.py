"""Faults: every batch pipeline SIGKILLed at a write, between shards and at the manifest, then run
again, gives an uninterrupted run's outputs byte for byte; nothing half-written is ever read as
complete; a full disk and an output folder that cannot be created give one clear error and
leave the previous outputs intact.

The kill comes from the fault hook of :mod:`tte_recsys.artifacts` (``TTE_RECSYS_KILL_AT``), so
it lands at the same write on every run instead of wherever a timer happens to fall.
"""

from __future__ import annotations

import hashlib
import os
import resource
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import polars as pl
import pytest

from tests.helpers import embed_overrides, mmeb_args, run_module, tiny_args
from tte_recsys.artifacts import ManifestError, read_manifest
from tte_recsys.evaluation.mmeb.synthetic import SYNTHETIC_TASKS, make_synthetic_root
from tte_recsys.tte.tiny import build_tiny_qwen2_vl

pytestmark = pytest.mark.slow


def _run(
    module: str, args: list[str], kill_at: str | None = None, preexec: Callable[[], None] | None = None
) -> subprocess.CompletedProcess[str]:
    return run_module(module, args, env={"TTE_RECSYS_KILL_AT": kill_at or ""}, preexec=preexec)


def _digests(out: Path, keep: Callable[[str], bool]) -> dict[str, str]:
    """sha256 of the files under ``out`` that ``keep`` names (hidden files and temp files excluded)."""
    found = {}
    for p in sorted(out.rglob("*")):
        rel = p.relative_to(out).as_posix()
        if p.is_file() and not any(part.startswith(".") for part in Path(rel).parts) and keep(rel):
            found[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return found


def _kill_then_rerun(
    module: str, args: Callable[[Path], list[str]], tmp_path: Path, kill_at: str, kind: str
) -> Path:
    out = tmp_path / "killed"
    r = _run(module, args(out), kill_at)
    assert r.returncode == -signal.SIGKILL, f"not killed at {kill_at}: rc {r.returncode}\n{r.stderr[-3000:]}"
    with pytest.raises(ManifestError):  # nothing looks finished: no manifest, so nothing loads it
        read_manifest(out, kind)
    r = _run(module, args(out))
    assert r.returncode == 0, r.stderr[-3000:]
    read_manifest(out, kind)
    return out


@pytest.fixture(scope="module")
def embed_full(tiny_qwen_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("embed") / "full"
    r = _run("pipelines.embed_items", embed_overrides(tiny_qwen_dir, out))
    assert r.returncode == 0, r.stderr[-3000:]
    return out


@pytest.mark.parametrize(
    "kill_at",
    ["write:*shards/part-00001.parquet", "renamed:*shards/part-00000.parquet", "write:*killed/manifest.json"],
)
def test_embed_items_killed_then_resumed_equals_uninterrupted(
    embed_full: Path, tiny_qwen_dir: Path, tmp_path: Path, kill_at: str
) -> None:
    out = _kill_then_rerun(
        "pipelines.embed_items", lambda o: embed_overrides(tiny_qwen_dir, o), tmp_path, kill_at, "embed_items"
    )
    data = lambda rel: rel.startswith("shards/") or rel == "job.json"  # noqa: E731
    assert _digests(out, data) == _digests(embed_full, data) and len(_digests(out, data)) == 4


@pytest.fixture(scope="module")
def trace_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Traces for the tiny Amazon catalog, served by the file reasoner (a random tiny model writes
    nothing parseable, and nothing unparseable is cached)."""
    from hydra import compose, initialize_config_dir

    from tests.helpers import CONFIG_DIR
    from tte_recsys.runs import load_dataset

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(
            "generate_traces", ["data=amazon_office", "debug=tiny", "data.max_items=24", "reasoner=none"]
        )
    ids = load_dataset(cfg.data).items["item_id"].to_list()
    path = tmp_path_factory.mktemp("traces") / "traces.parquet"
    pl.DataFrame(
        {"item_id": ids, "trace": [f"<think>about {i}</think> buyers of {i}" for i in ids]}
    ).write_parquet(path)
    return path


@pytest.fixture(scope="module")
def traces_full(trace_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("traces_full")
    assert _run("pipelines.generate_traces", _trace_args(trace_file, d / "cache")(d / "full")).returncode == 0
    return d / "full"


def _trace_args(traces: Path, cache: Path) -> Callable[[Path], list[str]]:
    return lambda out: [
        "data=amazon_office",
        "debug=tiny",
        "data.max_items=24",
        "reasoner=file",
        f"reasoner.path={traces}",
        "flush_every=4",
        f"cache_dir={cache}",
        f"output_dir={out}",
    ]


@pytest.mark.parametrize(
    "kill_at",
    ["renamed:*cache/part-rank0-*:2", "write:*killed/traces.parquet", "write:*killed/manifest.json"],
)
def test_generate_traces_killed_then_resumed_equals_uninterrupted(
    trace_file: Path, traces_full: Path, tmp_path: Path, kill_at: str
) -> None:
    full = traces_full
    out = _kill_then_rerun(
        "pipelines.generate_traces",
        _trace_args(trace_file, tmp_path / "cache"),
        tmp_path,
        kill_at,
        "generate_traces",
    )
    data = lambda rel: rel == "traces.parquet"  # noqa: E731
    assert _digests(out, data) == _digests(full, data) and _digests(out, data)
    assert pl.read_parquet(out / "traces.parquet").height == 24


@pytest.fixture(scope="module")
def mmeb_inputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("mmeb")
    return make_synthetic_root(d / "root"), build_tiny_qwen2_vl(d / "vl")


@pytest.fixture(scope="module")
def mmeb_full(mmeb_inputs: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("mmeb_full")
    root, model = mmeb_inputs
    assert _run("pipelines.eval_mmeb", _mmeb_args(root, model, d / "cache")(d / "full")).returncode == 0
    return d / "full"


def _mmeb_args(root: Path, model: Path, cache: Path, *extra: str) -> Callable[[Path], list[str]]:
    tasks = f"tasks=[{','.join(SYNTHETIC_TASKS)}]"
    return lambda out: mmeb_args(
        root, model, cache, tasks, f"hydra.run.dir={out}", *(extra or ("shard_size=2",))
    )


@pytest.mark.parametrize(
    "kill_at",
    [
        "write:*/part-00001.parquet:3",
        "renamed:*/part-00000.parquet:7",
        "write:*killed/report.json",
        "write:*killed/manifest.json",
    ],
)
def test_eval_mmeb_killed_then_resumed_equals_uninterrupted(
    mmeb_inputs: tuple[Path, Path], mmeb_full: Path, tmp_path: Path, kill_at: str
) -> None:
    root, model = mmeb_inputs
    full = mmeb_full
    out = _kill_then_rerun(
        "pipelines.eval_mmeb", _mmeb_args(root, model, tmp_path / "cache"), tmp_path, kill_at, "eval_mmeb"
    )
    data = lambda rel: rel in ("report.json", "report.md") or rel.startswith("predictions/")  # noqa: E731
    assert _digests(out, data) == _digests(full, data) and len(_digests(out, data)) == 11


@pytest.fixture(scope="module")
def reasoner_full(tmp_path_factory: pytest.TempPathFactory) -> Path:
    full = tmp_path_factory.mktemp("reasoner") / "full"
    assert _run("pipelines.train_reasoner", _train_reasoner_args(full)).returncode == 0
    return full


def _train_reasoner_args(out: Path) -> list[str]:
    return ["debug=tiny", "method=eg_rl", f"hydra.run.dir={out}"]


@pytest.mark.parametrize("kill_at", ["write:*killed/export", "write:*killed/manifest.json"])
def test_train_reasoner_killed_at_its_export_then_resumed_equals_uninterrupted(
    reasoner_full: Path, tmp_path: Path, kill_at: str
) -> None:
    full = reasoner_full
    out = tmp_path / "killed"
    r = _run("pipelines.train_reasoner", _train_reasoner_args(out), kill_at)
    assert r.returncode == -signal.SIGKILL, r.stderr[-3000:]
    assert not (out / "export" / "manifest.json").exists() or kill_at.endswith("manifest.json")
    r = _run("pipelines.train_reasoner", [*_train_reasoner_args(out), "resume=true"])
    assert r.returncode == 0, r.stderr[-3000:]
    weights = lambda rel: rel.startswith("export/") and rel.endswith(".safetensors")  # noqa: E731
    assert _digests(out, weights) == _digests(full, weights) and _digests(out, weights)


@pytest.fixture(scope="module")
def bundle_full(tiny_qwen_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny train_i2i run and its bundle, exported without interruption."""
    d = tmp_path_factory.mktemp("bundle")
    r = _run("pipelines.train_i2i", [*tiny_args(tiny_qwen_dir), f"hydra.run.dir={d / 'run'}"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert _run("pipelines.export_faiss", _export_args(d / "run")(d / "full")).returncode == 0
    return d / "run", d / "full"


def _export_args(run: Path) -> Callable[[Path], list[str]]:
    return lambda out: ["debug=tiny", f"model_dir={run}", "shard_size=64", f"output_dir={out}"]


@pytest.mark.parametrize(
    "kill_at",
    [
        "write:*killed/coeng.faiss",
        "renamed:*killed/vectors/shards/part-00000.parquet",
        "write:*killed/manifest.json",
    ],
)
def test_export_faiss_killed_then_resumed_equals_uninterrupted(
    bundle_full: tuple[Path, Path], tmp_path: Path, kill_at: str
) -> None:
    run, full = bundle_full
    out = _kill_then_rerun("pipelines.export_faiss", _export_args(run), tmp_path, kill_at, "faiss_bundle")
    data = lambda rel: rel.endswith((".faiss", ".parquet"))  # noqa: E731
    assert _digests(out, data) == _digests(full, data) and any(
        r.endswith(".faiss") for r in _digests(out, data)
    )


_NO_HYDRA_FILES = [
    "hydra.output_subdir=null",
    "hydra/job_logging=stderr",
]  # Hydra's own files exceed the limit


def _limit_file_size(limit: int) -> Callable[[], None]:
    def apply() -> None:  # in the child: a write past ``limit`` bytes fails (EFBIG) instead of killing it
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_a_full_disk_is_one_clear_error_and_leaves_the_previous_run_intact(
    mmeb_inputs: tuple[Path, Path], tmp_path: Path
) -> None:
    root = make_synthetic_root(tmp_path / "big_root", queries=64)
    _, model = mmeb_inputs
    out = tmp_path / "run"
    assert (
        _run(
            "pipelines.eval_mmeb", _mmeb_args(root, model, tmp_path / "cache_a", "shard_size=256")(out)
        ).returncode
        == 0
    )
    before = _digests(out, lambda rel: True)
    # the same run again into the same folder, nothing cached, 4 KB the most a file may hold: the
    # first larger write (a page image, a shard or the report) fails, as on a full disk
    r = _run(
        "pipelines.eval_mmeb",
        [*_mmeb_args(root, model, tmp_path / "cache_b", "shard_size=256")(out), *_NO_HYDRA_FILES],
        preexec=_limit_file_size(4096),
    )
    assert r.returncode == 2, r.stderr[-3000:]
    line = r.stderr.splitlines()[-2]  # one line naming the file it could not write
    assert line.startswith("error:") and str(tmp_path / "cache_b") in line and "Traceback" not in r.stderr, (
        r.stderr
    )
    assert "cannot write" in line or "File too large" in line
    assert _digests(out, lambda rel: True) == before
    read_manifest(out, "eval_mmeb")


def test_an_output_folder_that_cannot_be_made_is_one_clear_error(tiny_qwen_dir: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file where the output folder's parent should be")
    r = _run("pipelines.embed_items", embed_overrides(tiny_qwen_dir, blocker / "out"))
    assert (
        r.returncode == 2
        and "error:" in r.stderr
        and str(blocker) in r.stderr
        and "Traceback" not in r.stderr
    )
    assert blocker.read_text().startswith("a file")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only folder regardless of its mode")
def test_a_read_only_output_folder_is_one_clear_error(tiny_qwen_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o555)
    try:
        r = _run("pipelines.embed_items", embed_overrides(tiny_qwen_dir, out))
        assert r.returncode == 2 and "Permission denied" in r.stderr and "Traceback" not in r.stderr
    finally:
        out.chmod(0o755)
