"""``pipelines.train_reasoner`` end to end on the toy task (debug=tiny: tiny models it builds
itself), every method; the export loads as ``reasoner=hf``; kill then resume; bad input."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from safetensors.torch import load_file

from tests.helpers import ENV, ROOT
from tte_recsys.reasoner_training.policy import PolicySettings
from tte_recsys.reasoner_training.rewards import EmbedderReward, RewardSettings
from tte_recsys.reasoner_training.tasks import i2i_pairs, table_pairs
from tte_recsys.tte.items import ItemInput


def train_reasoner(out: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    p = subprocess.run(
        [sys.executable, "-m", "pipelines.train_reasoner", "debug=tiny", f"output_dir={out}", *args],
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if check:
        assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return p


@pytest.mark.parametrize("method", ["eg_rl", "restrain", "sft"])
def test_each_method_runs_reports_and_exports(tmp_path: Path, method: str) -> None:
    out = tmp_path / method
    train_reasoner(out, f"method={method}")
    report = json.loads((out / "report.json").read_text())
    assert report["method"] == method
    h = report["heldout_reward"]
    assert np.isfinite(h["start"]) and np.isfinite(h["end"])
    assert report["curves"] and (out / "curves.png").is_file()
    assert "held-out EG-RL reward" in (out / "report.md").read_text()
    export = out / "export"
    manifest = json.loads((export / "manifest.json").read_text())
    assert manifest["kind"] == "train_reasoner" and "model.safetensors" in manifest["files"]
    assert (export / "tokenizer.json").is_file() and (export / "chat_template.jinja").is_file()


def test_unified_head_trains_the_head_of_a_frozen_reasoner(tmp_path: Path) -> None:
    out = tmp_path / "u"
    train_reasoner(out, "method=unified_head")
    u = json.loads((out / "report.json").read_text())["unified"]
    assert u["loss_last"] < u["loss_first"]
    assert set(load_file(out / "export" / "head.safetensors"))  # the trained head's weights


def test_the_export_loads_as_the_hf_reasoner_with_its_own_trace_key(tmp_path: Path) -> None:
    from tte_recsys.tte.reasoner.backends import HFReasoner, TraceRequest

    out = tmp_path / "eg"
    train_reasoner(out, "method=eg_rl")
    r = HFReasoner(str(out / "export"), generation={"max_new_tokens": 4})
    assert r.reasoner_id.startswith("hf:export@")  # the weights' hash: another training, another key
    texts = r.generate([TraceRequest("toy0", [{"role": "user", "content": "title: lamp desk red"}])])
    assert isinstance(texts[0], str)
    # and through generate_traces, as a user runs it
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipelines.generate_traces",
            "debug=tiny",
            "reasoner=hf",
            f"reasoner.model_path={out / 'export'}",
            "reasoner.generation.max_new_tokens=4",
            f"cache_dir={tmp_path / 'cache'}",
            f"hydra.run.dir={tmp_path / 'traces'}",
        ],
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    manifest = json.loads((tmp_path / "traces" / "manifest.json").read_text())
    assert manifest["summary"]["reasoner_id"] == r.reasoner_id


@pytest.mark.slow
def test_kill_mid_training_then_resume_gives_the_same_weights(tmp_path: Path) -> None:
    args = ["method=eg_rl", "train.steps=120", "train.ckpt_every=20"]
    train_reasoner(tmp_path / "full", *args)
    killed = tmp_path / "killed"
    p = subprocess.Popen(
        [sys.executable, "-m", "pipelines.train_reasoner", "debug=tiny", f"output_dir={killed}", *args],
        cwd=ROOT,
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    mark = killed / "checkpoints" / "checkpoint-40" / "trainer_state.json"
    deadline = time.time() + 300
    while not mark.is_file() and p.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert p.poll() is None, "the run finished before it could be killed"
    p.send_signal(signal.SIGKILL)
    p.wait(timeout=60)
    assert not (killed / "export").exists() and not (killed / "report.json").exists()
    train_reasoner(killed, *args, "resume=true")
    full = json.loads((tmp_path / "full" / "report.json").read_text())["curves"]
    resumed = json.loads((killed / "report.json").read_text())["curves"]
    assert [c["step"] for c in resumed] == [c["step"] for c in full] == [float(i) for i in range(1, 121)]
    a = load_file(tmp_path / "full" / "export" / "model.safetensors")
    b = load_file(killed / "export" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_bad_input_is_refused_before_training(tmp_path: Path) -> None:
    p = train_reasoner(tmp_path / "g", "train.num_generations=1", check=False)
    assert p.returncode != 0 and "needs a group of >= 2" in p.stderr
    p = train_reasoner(tmp_path / "m", "method=ppo", check=False)
    assert p.returncode != 0 and "expected one of ['sft', 'eg_rl'" in p.stderr
    bad = tmp_path / "bad.parquet"
    pl.DataFrame({"item_id": ["toy0"], "text": ["x"]}).write_parquet(bad)
    p = train_reasoner(
        tmp_path / "t",
        "method=sft",
        "sft.source=teacher",
        "+sft.teacher._target_=tte_recsys.tte.reasoner.backends.FileReasoner",
        f"+sft.teacher.path={bad}",
        check=False,
    )
    assert p.returncode != 0 and "missing column(s) ['trace']" in p.stderr
    for out in ("g", "m", "t"):
        assert not (tmp_path / out / "export").exists()


def test_missing_model_folders_are_named(tmp_path: Path) -> None:
    p = train_reasoner(
        tmp_path / "e", "toy=false", "data=amazon_office", f"embedder.model_path={tmp_path}/nope", check=False
    )
    assert p.returncode != 0 and f"{tmp_path}/nope" in p.stderr
    p = train_reasoner(
        tmp_path / "p", "toy=false", "data=amazon_office", f"policy_path={tmp_path}/gone", check=False
    )
    assert p.returncode != 0 and f"{tmp_path}/gone" in p.stderr


class _NanEmbedder:
    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        v = np.ones((len(texts), 4), np.float32) / 2
        v[1] = np.nan
        return v


def test_a_reward_that_is_not_finite_names_its_item() -> None:
    r = EmbedderReward(_NanEmbedder(), RewardSettings())  # type: ignore[arg-type]
    with pytest.raises(FloatingPointError, match="item 'b'"):
        r.rewards(["a", "b", "c", "d"], ["", "", "", ""], [0, 0, 1, 1], [0, 1, 0, 1], ["a", "b", "c", "d"])


def test_queries_without_positives_and_bad_pair_tables(tmp_path: Path) -> None:
    items = [ItemInput(str(i), {"title": f"t{i}"}) for i in range(3)]
    empty = pl.DataFrame(
        {"src": [], "dst": [], "count": []}, schema={"src": pl.Int32, "dst": pl.Int32, "count": pl.UInt32}
    )
    with pytest.raises(ValueError, match="no train pairs"):
        i2i_pairs(empty, items, 10)
    outside = pl.DataFrame({"src": [0], "dst": [7], "count": [1]})
    with pytest.raises(ValueError, match=r"row 0: item codes \(0, 7\) outside the catalog of 3"):
        i2i_pairs(outside, items, 10)
    t = tmp_path / "pairs.parquet"
    pl.DataFrame({"query_text": ["a", "b"], "target_text": ["x", " "]}).write_parquet(t)
    with pytest.raises(ValueError, match=r"row 1, column 'target_text' is empty"):
        table_pairs(t)
    pl.DataFrame({"query_text": ["a"]}).write_parquet(t)
    with pytest.raises(ValueError, match=r"missing column\(s\) \['target_text'\]"):
        table_pairs(t)
    with pytest.raises(ValueError, match="pairs_per_step"):
        PolicySettings(pairs_per_step=0)


def test_every_section_of_the_config_builds(compose_cfg) -> None:  # type: ignore[no-untyped-def]
    from tte_recsys.config import from_mapping
    from tte_recsys.reasoner_training.restrain import RestrainSettings
    from tte_recsys.reasoner_training.sft import SftSettings
    from tte_recsys.reasoner_training.unified import UnifiedSettings

    for overrides in ([], ["debug=tiny"]):
        cfg = compose_cfg("train_reasoner", overrides)
        assert from_mapping(PolicySettings, cfg.train, "train").num_generations >= 2
        assert from_mapping(RewardSettings, cfg.reward, "reward").accuracy == "hard"
        assert from_mapping(RestrainSettings, cfg.restrain, "restrain").kappa >= 1
        assert from_mapping(SftSettings, {k: v for k, v in cfg.sft.items() if k != "teacher"}, "sft").n >= 2
        assert from_mapping(UnifiedSettings, cfg.unified, "unified").layers == 1


def test_vllm_rollouts_are_refused_without_a_gpu(tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the vLLM server mode is allowed here")
    r = train_reasoner(
        tmp_path / "out", "method=eg_rl", "train.vllm_server=http://127.0.0.1:8000", check=False
    )
    assert (
        r.returncode == 2
        and "train.vllm_server='http://127.0.0.1:8000': vLLM rollouts need a GPU node" in r.stderr
    )
