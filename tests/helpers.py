"""What several test modules share: tiny datasets, the tiny-run overrides, running a pipeline
under torchrun, killing and resuming it, and a tiny training. Fixtures stay in conftest.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import polars as pl
import psutil
import torch
from omegaconf import DictConfig

from tte_recsys.config import LabelConfig
from tte_recsys.data.dataset import Dataset
from tte_recsys.data.labels import RelevanceLabeler
from tte_recsys.losses.mtmh import LossConfig
from tte_recsys.models.content import ContentTower
from tte_recsys.models.mtmh import ItemFeatures, ModelConfig, MTMHModel
from tte_recsys.training import loop
from tte_recsys.training.batches import BatchConfig, PairBatches
from tte_recsys.training.loop import READ_EVERY, TrainerConfig, fit

ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = str(ROOT / "configs")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
STEPS = 2 * READ_EVERY + 3  # tiny_fit's default: two full loss-log blocks and a partial one


def make_dataset(rows: list[tuple[str, str, int]], items: dict[str, list[str]] | None = None) -> Dataset:
    """A dataset from (user, item, timestamp) rows; ``items`` maps item id -> genres."""
    ids = sorted({r[1] for r in rows} | set(items or {}))
    genres = items or {}
    it = pl.DataFrame(
        {
            "item_id": ids,
            "title": [f"item {i}" for i in ids],
            "text": [""] * len(ids),
            "image_path": pl.Series([None] * len(ids), dtype=pl.String),
            "genres": [genres.get(i, []) for i in ids],
        },
        schema_overrides={"genres": pl.List(pl.String)},
    )
    inter = pl.DataFrame(
        {
            "user_id": [r[0] for r in rows],
            "item_id": [r[1] for r in rows],
            "timestamp": [r[2] for r in rows],
            "weight": pl.Series([None] * len(rows), dtype=pl.Float64),
        },
        schema_overrides={"timestamp": pl.Int64},
    )
    return Dataset.build("tiny", it, inter)


def require_cuda() -> None:
    """Skip the calling test where no CUDA device is seen (called in the test body)."""
    import pytest

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")


def tiny_args(model: Path, *extra: str) -> list[str]:
    """train_i2i overrides of a tiny run (debug=tiny) with the tiny random model as embedder."""
    return ["debug=tiny", f"embedder.model_path={model}", "embedder.pooling=last", *extra]


def launch(
    args: list[str],
    out: Path,
    nproc: int = 1,
    env: dict[str, str] | None = None,
    module: str = "pipelines.train_i2i",
) -> subprocess.Popen[str]:
    """A pipeline under torchrun with ``nproc`` processes, writing into ``out``."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    cmd += ["-m", module, *args, f"hydra.run.dir={out}"]
    return subprocess.Popen(
        cmd, cwd=ROOT, env={**ENV, **(env or {})}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def finish(p: subprocess.Popen[str]) -> None:
    output, _ = p.communicate(timeout=600)
    assert p.returncode == 0, output[-4000:]


def read_report(out: Path) -> dict:  # type: ignore[type-arg]
    return json.loads((out / "report.json").read_text())


def fresh_export_metrics(out: Path, sel: dict, env: dict[str, str] | None = None, refit: bool = True) -> dict:  # type: ignore[type-arg]
    """Test metrics of ``out``'s export, loaded in a fresh process without TorchRec sharding and
    served with the run's selected quota and priors, scored in the view it was fit on (the refit
    view, train + valid, unless ``refit`` is False)."""
    code = f"""
import json, sys
from tte_recsys.models.export import load_export
from tte_recsys.serving.merge import HeadVectorsRetriever, quota_shares
from tte_recsys.evaluation.protocol import evaluate_retriever
from tte_recsys.experiment.i2i import prior_bias
from tte_recsys.config import EvalConfig
from tte_recsys.data.labels import RelevanceLabeler
from tte_recsys.data.split import temporal_split
from tte_recsys.runs import data_configs, load_dataset
from omegaconf import OmegaConf
import torch.distributed as dist
cfg = OmegaConf.load({str(out / "config.yaml")!r})
m = load_export({str(out / "export")!r})
assert not dist.is_initialized()
ds = load_dataset(cfg.data)
p, s, l = data_configs(cfg.data)
split = temporal_split(ds, p, s)
view = split.refit_view() if {refit!r} else split
assert m.manifest["fit"] == ("train+valid" if {refit!r} else "train")
want = prior_bias(ds, view, {sel["pop_prior"]!r}, {sel.get("age_prior", 0.0)!r})
assert (m.item_bias is None) == (want is None) and (want is None or (m.item_bias == want).all())
r = HeadVectorsRetriever(m.encode(), quota_shares(m.heads, {sel["share"]!r}), "x", item_bias=m.item_bias)
ev = EvalConfig(**{{k: tuple(v) if isinstance(v, list) else v for k, v in cfg.eval.items()}})
print(json.dumps(evaluate_retriever(r, view.test, RelevanceLabeler.from_dataset(ds, l), ds.num_items, ev)))
"""
    res = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**ENV, **(env or {})},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def one_then_two_processes(args: list[str], tmp_path: Path, steps: int) -> list[float]:
    """Runs ``args`` in 1 process and in 2 under torchrun; asserts the 2-process loss curve follows
    the 1-process one and that it learns. Returns the 2-process curve."""
    finish(launch(args, tmp_path / "one", 1))
    finish(launch(args, tmp_path / "two", 2))
    one, two = read_report(tmp_path / "one"), read_report(tmp_path / "two")
    a, b = one["training"]["mtmh_lam1"]["loss_curve"], two["training"]["mtmh_lam1"]["loss_curve"]
    assert len(a) == len(b) == steps
    np.testing.assert_allclose(b, a, rtol=2e-3, atol=2e-4)
    assert a[-1] < a[0]  # and it learns
    if "refit" in one:  # the refit training, on train + valid, follows too
        ra, rb = (r["refit"]["training"]["mtmh"]["loss_curve"] for r in (one, two))
        assert len(ra) == len(rb) == one["refit"]["steps"]["mtmh"]
        np.testing.assert_allclose(rb, ra, rtol=2e-3, atol=2e-4)
    return b  # type: ignore[no-any-return]


def kill_then_resume(
    tiny_qwen_dir: Path,
    tmp_path: Path,
    *extra: str,
    max_steps: int = 400,
    every: int = 20,
    during: str = "mtmh_lam1",
) -> tuple[dict, dict]:  # type: ignore[type-arg]
    """Reports of an uninterrupted run and of the same run killed (SIGKILL, torchrun and its worker)
    after the third checkpoint (step 3 x ``every``) of the training ``during`` (a checkpoint
    folder under ``checkpoints/``: ``refit/mtmh`` is the refit), then continued with ``resume=true``."""
    args = tiny_args(
        tiny_qwen_dir,
        "compare.single_head=false",
        "compare.id_only=false",
        f"trainer.max_steps={max_steps}",
        f"trainer.eval_every={every}",
        f"trainer.ckpt_every={every}",
        "trainer.patience=1000",
        *extra,
    )
    finish(launch(args, tmp_path / "full"))
    p = launch(args, tmp_path / "killed")
    mark = tmp_path / "killed" / "checkpoints" / during / f"step_{3 * every:08d}" / "manifest.json"
    deadline = time.time() + 300
    while not mark.is_file() and p.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert p.poll() is None, "the run finished before it could be killed"
    launcher = psutil.Process(p.pid)
    for proc in [*launcher.children(recursive=True), launcher]:  # the worker and torchrun, mid-training
        proc.send_signal(signal.SIGKILL)
    p.communicate(timeout=60)
    assert not (tmp_path / "killed" / "report.json").exists()
    finish(launch([*args, "resume=true"], tmp_path / "killed"))
    return read_report(tmp_path / "full"), read_report(tmp_path / "killed")


def trainable_content_run(
    compose_cfg: Callable[..., DictConfig], tiny_qwen_dir: Path, tmp_path: Path, *extra: str
) -> dict:  # type: ignore[type-arg]
    """``model.content=trainable`` (the embedder with LoRA inside the model) for 6 steps: it trains
    and its export encodes unit vectors. Returns the report (tests/test_gpu.py runs it on a GPU)."""
    from tte_recsys.models.export import load_export

    args = tiny_args(
        tiny_qwen_dir,
        "model.content=trainable",
        "trainer.max_steps=6",
        "trainer.eval_every=3",
        "compare.id_only=false",
        *extra,
    )
    from pipelines import train_i2i

    report = train_i2i.run(compose_cfg("train_i2i", args))
    curve = report["training"]["mtmh_lam1"]["loss_curve"]
    assert len(curve) == 6 and all(np.isfinite(curve))
    m = load_export(tmp_path / "out" / "export")
    v = m.encode(np.arange(5))
    assert set(v) == {"coeng", "semantic"} and np.allclose(np.linalg.norm(v["coeng"], axis=1), 1.0, atol=1e-5)
    return report  # type: ignore[no-any-return]


def tiny_fit(
    ckpt_dir: Path,
    steps: int = STEPS,
    resume: bool = False,
    ckpt_every: int = 0,
    labels_on_device: bool | None = None,
    content: ContentTower | None = None,
) -> loop.TrainResult:
    """A model on 8 items (ids and a 2-value genre, and ``content`` if given), 8 pairs per step,
    seeded: one head, or with ``labels_on_device`` set, both heads and genre-Jaccard labels."""
    ds = make_dataset(
        [("u", i, t) for t, i in enumerate("abcdefgh")],
        {i: ["x" if i < "e" else "y", "z"] if i in "aeg" else ["x" if i < "e" else "y"] for i in "abcdefgh"},
    )
    f = ItemFeatures.from_items(ds.items, ["genres"])
    lab = None
    if labels_on_device is not None:
        lab = RelevanceLabeler.from_dataset(ds, LabelConfig(fields={"genres": 1.0}))
    rng = np.random.default_rng(0)
    batches = PairBatches(rng.integers(0, 8, 64), rng.integers(0, 8, 64), f, lab, BatchConfig(batch_size=8))
    torch.manual_seed(0)
    heads = ("coeng",) if lab is None else ("coeng", "semantic")
    kind = "none" if content is None else "frozen"
    cfg = ModelConfig(heads=heads, content=kind, hidden=(8,), features=("genres",))
    model = MTMHModel(cfg, f.num_embeddings(), content, device="meta")
    tc = TrainerConfig(
        batch_size=8,
        max_steps=steps,
        eval_every=0,
        ckpt_every=ckpt_every,
        num_workers=0,
        labels_on_device=labels_on_device,
    )
    loss = LossConfig(lam=0.0, alpha=0.0) if lab is None else LossConfig(lam=1.0)
    return fit(model, batches, tc, loss, ckpt_dir, resume=resume)


def embed_overrides(model: Path, out: Path, *extra: str) -> list[str]:
    return [
        "data=amazon_office",
        "debug=tiny",
        "data.max_items=150",
        f"embedder.model_path={model}",
        "embedder.pooling=last",
        "shard_size=64",
        f"output_dir={out}",
        *extra,
    ]


class ScriptedJSONServer:
    """A real HTTP server on 127.0.0.1 (a thread per request) for backends that talk to an
    OpenAI-compatible server: every POST body is recorded; ``script`` lists (status, headers)
    failures to serve first; otherwise :meth:`answer` gives the JSON reply. ``max_in_flight``
    counts concurrent requests (released before the reply leaves: a client may send its next
    request at once). ``url`` ends in ``/v1``; ``start``/``stop`` run it in a daemon thread."""

    def __init__(self) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
        from typing import Any

        self.script: list[tuple[int, dict[str, str]]] = []
        self.bodies: list[dict[str, Any]] = []
        self.delay_s, self.in_flight, self.max_in_flight = 0.0, 0, 0
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with outer.lock:
                    outer.bodies.append(body)
                    outer.in_flight += 1
                    outer.max_in_flight = max(outer.max_in_flight, outer.in_flight)
                    step = outer.script.pop(0) if outer.script else None
                counted = True
                try:
                    time.sleep(outer.delay_s)
                    if step is not None:
                        self.send_response(step[0])
                        for k, v in step[1].items():
                            self.send_header(k, v)
                        self.end_headers()
                        self.wfile.write(b'{"error": "scripted"}')
                        return
                    payload = json.dumps(outer.answer(body)).encode()
                    with outer.lock:
                        outer.in_flight -= 1
                        counted = False
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                finally:
                    if counted:
                        with outer.lock:
                            outer.in_flight -= 1

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def answer(self, body: dict) -> dict:  # type: ignore[type-arg]
        raise NotImplementedError

    def start(self) -> None:
        import threading

        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.httpd.shutdown()


def mmeb_args(root: Path, model: Path, cache: Path, *extra: str) -> list[str]:
    """eval_mmeb overrides: a local root, a (tiny) vision-language model as the embedder with
    last-token pooling in PyTorch, an embedding cache folder, then ``extra``."""
    return [
        f"root={root}",
        f"embedder.model_path={model}",
        "embedder.pooling=last",
        "embedder.runtime=torch",
        f"cache_dir={cache}",
        *extra,
    ]


def run_module(
    module: str,
    args: list[str],
    cwd: Path = ROOT,
    env: dict[str, str] | None = None,
    timeout: float = 600,
    preexec: Callable[[], None] | None = None,
) -> subprocess.CompletedProcess[str]:
    """``python -m module args`` as a user runs it (ENV plus ``env``), output captured, never raising
    on a non-zero exit: the tests read its status and stderr."""
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        env={**ENV, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=preexec,
        check=False,
    )
