"""``pipelines.train_reasoner`` end to end on the toy task (debug=tiny: tiny models it builds
itself), every method; the export loads as ``reasoner=hf``; kill then resume; bad input; the
teacher's prompts; the sampler's penalty scope and token count."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import polars as pl
import pytest
import torch
from safetensors.torch import load_file

from tests.helpers import ENV, ROOT
from tte_recsys.reasoner_training.grpo import GrpoSettings
from tte_recsys.reasoner_training.policy import PolicySettings
from tte_recsys.reasoner_training.rewards import CatalogReward, RewardSettings
from tte_recsys.reasoner_training.tasks import Side, i2i_pairs, table_pairs
from tte_recsys.reasoner_training.toy import build_toy_models
from tte_recsys.tte.fusion import TraceFusion
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


@pytest.mark.parametrize("method", ["eg_rl", "restrain", "sft", "expert_iteration"])
def test_each_method_runs_reports_and_exports(tmp_path: Path, method: str) -> None:
    out = tmp_path / method
    train_reasoner(out, f"method={method}")
    report = json.loads((out / "report.json").read_text())
    assert report["method"] == method
    h = report["heldout_reward"]
    assert np.isfinite(h["start"]) and np.isfinite(h["end"])
    c = h["change"]  # the paired bootstrap interval of end - start over held-out items
    assert (
        c["lo"] <= c["diff"] <= c["hi"] and c["diff"] == pytest.approx(h["end"] - h["start"]) and c["n"] > 0
    )
    assert report["generated_tokens"] > 0
    assert report["settings"]["method"] and report["settings"]["train"]["max_completion_length"] == 4
    assert report["curves"] and (out / "curves.png").is_file()
    assert "held-out reward (catalog rank, no-trace floor)" in (out / "report.md").read_text()
    export = out / "export"
    manifest = json.loads((export / "manifest.json").read_text())
    assert manifest["kind"] == "train_reasoner" and "model.safetensors" in manifest["files"]
    assert (export / "tokenizer.json").is_file() and (export / "chat_template.jinja").is_file()


def test_expert_iteration_reports_each_round_and_resumes_after_the_last_finished(tmp_path: Path) -> None:
    full, cut = tmp_path / "full", tmp_path / "cut"
    train_reasoner(full, "method=expert_iteration")
    rounds = json.loads((full / "report.json").read_text())["expert_iteration"]["rounds"]
    assert [r["round"] for r in rounds] == [1, 2]
    assert rounds[0]["generated_tokens"] < rounds[1]["generated_tokens"]
    assert all(r["sampled"] == 8 * 2 and 0 <= r["kept"] <= r["sampled"] for r in rounds)
    assert all({"diff", "lo", "hi", "n"} <= set(r["change"]) for r in rounds)
    assert "round 2: kept" in (full / "report.md").read_text()
    # a run killed in round 2 (round 1 finished): resume=true continues from round 1's model
    train_reasoner(cut, "method=expert_iteration", "method.rounds=1")
    for p in (cut / "export", cut / "report.json"):
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    train_reasoner(cut, "method=expert_iteration", "resume=true")
    resumed = json.loads((cut / "report.json").read_text())["expert_iteration"]["rounds"]
    assert resumed == rounds
    a = load_file(full / "export" / "model.safetensors")
    b = load_file(cut / "export" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


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
    args = ["method=eg_rl", "method.steps=120", "method.ckpt_every=20"]
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
    p = train_reasoner(tmp_path / "g", "method.num_generations=1", check=False)
    assert p.returncode != 0 and "method.num_generations=1: GRPO needs a group of >= 2" in p.stderr
    p = train_reasoner(tmp_path / "m", "method=ppo", check=False)
    assert p.returncode != 0 and "Could not find 'method/ppo'" in p.stderr and "expert_iteration" in p.stderr
    p = train_reasoner(tmp_path / "k", "method=expert_iteration", "method.rounds=0", check=False)
    assert p.returncode == 2 and "method: rounds=0" in p.stderr
    p = train_reasoner(tmp_path / "u", "method=expert_iteration", "+method.round=2", check=False)
    assert p.returncode == 2 and "unknown key(s) ['round']" in p.stderr
    bad = tmp_path / "bad.parquet"
    pl.DataFrame({"item_id": ["toy0"], "text": ["x"]}).write_parquet(bad)
    p = train_reasoner(
        tmp_path / "t",
        "method=sft",
        "method.source=teacher",
        "+method.teacher._target_=tte_recsys.tte.reasoner.backends.FileReasoner",
        f"+method.teacher.path={bad}",
        check=False,
    )
    assert p.returncode != 0 and "missing column(s) ['trace']" in p.stderr
    for out in ("g", "m", "k", "u", "t"):
        assert not (tmp_path / out / "export").exists()


def test_missing_model_folders_are_named(tmp_path: Path) -> None:
    policy, _ = build_toy_models(tmp_path / "toy")  # a policy that exists (make smollm2 may not have run)
    p = train_reasoner(
        tmp_path / "e",
        "toy=false",
        "data=amazon_office",
        f"policy_path={policy}",
        f"embedder.model_path={tmp_path}/nope",
        check=False,
    )
    assert p.returncode != 0 and f"{tmp_path}/nope" in p.stderr
    p = train_reasoner(
        tmp_path / "p", "toy=false", "data=amazon_office", f"policy_path={tmp_path}/gone", check=False
    )
    assert p.returncode != 0 and f"{tmp_path}/gone" in p.stderr


class _NanEmbedder:
    dim = 4

    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        v = np.ones((len(texts), 4), np.float32) / 2
        if texts == ["nan"]:
            v[:] = np.nan
        return v


def test_a_reward_that_is_not_finite_names_its_item() -> None:
    catalog = [Side(i, i) for i in ("a", "b", "c")]
    r = CatalogReward(_NanEmbedder(), catalog, TraceFusion(), RewardSettings())  # type: ignore[arg-type]
    with pytest.raises(FloatingPointError, match="item 'b'"):
        r.score(catalog, ["", "nan", ""], [("c",), ("c",), ("a",)])


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
    with pytest.raises(ValueError, match="prompts_per_step=0"):
        GrpoSettings(prompts_per_step=0)
    with pytest.raises(ValueError, match=r"train\.penalty_scope='prompt'"):
        PolicySettings(penalty_scope="prompt")


METHODS = ("eg_rl", "restrain", "sft", "expert_iteration", "unified_head", "score")


def test_every_section_and_method_of_the_config_builds(compose_cfg) -> None:  # type: ignore[no-untyped-def]
    from tte_recsys.config import from_mapping
    from tte_recsys.experiment.reasoner import build_method

    assert {p.stem for p in (ROOT / "configs" / "method").glob("*.yaml")} == set(METHODS)
    for overrides in ([], ["debug=tiny"]):
        for name in METHODS:
            cfg = compose_cfg("train_reasoner", [*overrides, f"method={name}"])
            assert build_method(cfg.method).name == name
            assert from_mapping(PolicySettings, cfg.train, "train").max_completion_length >= 1
            assert from_mapping(RewardSettings, cfg.reward, "reward").floor == "signed"
    tiny = build_method(compose_cfg("train_reasoner", ["debug=tiny", "method=expert_iteration"]).method)
    assert (tiny.settings.rounds, tiny.settings.k) == (2, 2)  # debug=tiny shrinks the chosen method


def test_the_teacher_writes_from_the_catalog_item_and_its_cache_key(tmp_path: Path) -> None:
    # the catalog's traces and the teacher's SFT traces share prompt content and cache key: a
    # teacher that already wrote the catalog's traces is never called again
    from tte_recsys.reasoner_training.sft import teacher_traces
    from tte_recsys.reasoner_training.tasks import item_side
    from tte_recsys.tte.reasoner.cache import TraceCache
    from tte_recsys.tte.reasoner.generate import generate_traces
    from tte_recsys.tte.reasoner.prompts import get_template

    template = get_template("item_card")
    items = [ItemInput(f"i{k}", {"title": f"stapler {k}"}) for k in range(3)]
    teacher = {"_target_": "tests.reasoner_training.test_pipeline.RecordingReasoner"}
    RecordingReasoner.seen.clear()
    generate_traces(items, RecordingReasoner(), template, TraceCache(str(tmp_path), writer="catalog"))
    want = sorted(template.messages(f"title: stapler {k}")[-1]["content"] for k in range(3))
    assert sorted(RecordingReasoner.seen) == want  # the item's fields, once: no "text: title: ..."
    RecordingReasoner.seen.clear()
    sides = [item_side(it) for it in items]
    got = teacher_traces(teacher, sides, {it.item_id: it for it in items}, template, str(tmp_path))
    assert RecordingReasoner.seen == []  # every trace came from the cache
    assert sorted((x.id, t) for x, t in got) == [
        (f"i{k}", f"<think> t </think> stapler {k}") for k in range(3)
    ]
    with pytest.raises(ValueError, match="item 'q0' is no catalog item"):
        teacher_traces(teacher, [Side("q0", "raw text")], {}, template, str(tmp_path))


class RecordingReasoner:
    """A reasoner that records the user turn of every prompt it is asked for."""

    seen: ClassVar[list[str]] = []
    reasoner_id = "recording"
    calls = 0

    def generate(self, requests: list[Any]) -> list[str | Exception]:
        RecordingReasoner.seen += [r.messages[-1]["content"] for r in requests]
        return [
            f"<think> t </think> {r.messages[-1]['content'].split('title: ')[1].split(chr(10))[0]}"
            for r in requests
        ]


def test_the_sampler_counts_tokens_and_never_penalises_the_prompt(toy_models: tuple[Path, Path]) -> None:
    from tte_recsys.reasoner_training.policy import load_policy, sample_counted

    policy, tok = load_policy(str(toy_models[0]))
    prompts = [[{"role": "user", "content": "title: lamp desk red"}]] * 3
    s = PolicySettings(max_completion_length=4, repetition_penalty=1.5)
    texts, tokens = sample_counted(policy, tok, prompts, 2, s, seed=0)
    assert len(texts) == 3 and all(len(t) == 2 for t in texts)
    assert 6 <= tokens <= 3 * 2 * 4  # at least one token each (an end-of-sequence counts), at most the cap
    again, _ = sample_counted(policy, tok, prompts, 2, s, seed=0)
    assert again == texts  # seeded
    # with the penalty on the trace only, <|im_end|> (in the prompt) stays as likely as without one
    eos = tok.eos_token_id
    ids = tok.apply_chat_template(prompts[0], add_generation_prompt=True, tokenize=True, return_dict=False)
    from tte_recsys.tte.reasoner.penalty import GeneratedRepetitionPenalty

    scores = torch.zeros(1, len(tok)) + 1.0
    out = GeneratedRepetitionPenalty(1.5, len(ids))(torch.tensor([ids]), scores.clone())
    assert float(out[0, eos]) == 1.0


def test_vllm_rollouts_are_refused_without_a_gpu(tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the vLLM server mode is allowed here")
    r = train_reasoner(
        tmp_path / "out", "method=eg_rl", "method.vllm_server=http://127.0.0.1:8000", check=False
    )
    assert (
        r.returncode == 2
        and "method.vllm_server='http://127.0.0.1:8000': vLLM rollouts need a GPU node" in r.stderr
    )
