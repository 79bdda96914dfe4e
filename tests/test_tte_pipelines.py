"""generate_traces -> embed_items -> evaluate end to end on tiny data with a tiny random Qwen2,
resume, refusal to mix jobs, and a real 2-process torchrun against 1 process."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from omegaconf import DictConfig

from pipelines import embed_items, evaluate, generate_traces
from tests.helpers import ROOT, embed_overrides
from tte_recsys.vectors import load_vectors


def test_traces_embed_evaluate_end_to_end(
    compose_cfg: Callable[..., DictConfig], tiny_qwen_dir: Path, tmp_path: Path
) -> None:
    tr = [
        "data=amazon_office",
        "debug=tiny",
        "data.max_items=150",
        "reasoner=hf",
        f"reasoner.model_path={tiny_qwen_dir}",
        "reasoner.generation.max_new_tokens=4",
        "reasoner.generation.do_sample=true",
        f"cache_dir={tmp_path / 'cache'}",
    ]
    s1 = generate_traces.run(compose_cfg("generate_traces", [*tr, f"output_dir={tmp_path / 't1'}"]))
    assert s1["generated"] == 150 and s1["failed"] == 0 and s1["model_calls"] > 0
    s2 = generate_traces.run(compose_cfg("generate_traces", [*tr, f"output_dir={tmp_path / 't2'}"]))
    assert (s2["generated"], s2["cached"], s2["model_calls"]) == (0, 150, 0)

    plain = embed_items.run(compose_cfg("embed_items", embed_overrides(tiny_qwen_dir, tmp_path / "e0")))
    with_t = embed_items.run(
        compose_cfg(
            "embed_items", embed_overrides(tiny_qwen_dir, tmp_path / "e1", f"traces_dir={tmp_path / 't2'}")
        )
    )
    assert plain["items"] == with_t["items"] == 150 and with_t["items_with_trace"] == 150
    v0, v1 = load_vectors(tmp_path / "e0"), load_vectors(tmp_path / "e1")
    assert v0.vectors.shape == (150, 32) and v0.trace_version == "none"
    assert v1.trace_version.startswith("hf:") and not np.allclose(v0.vectors, v1.vectors)
    assert v1.trace_version.endswith("|fuse-w0.1")  # the default: fused, w = 0.1
    embed_items.run(
        compose_cfg(
            "embed_items",
            embed_overrides(
                tiny_qwen_dir, tmp_path / "e2", f"traces_dir={tmp_path / 't2'}", "embedder.traces=concat"
            ),
        )
    )
    v2 = load_vectors(tmp_path / "e2")
    assert v2.trace_version.endswith("|concat") and not np.allclose(v1.vectors, v2.vectors)

    report = evaluate.run(
        compose_cfg(
            "evaluate",
            [
                "experiment=amazon_office",
                "debug=tiny",
                "data.max_items=150",
                f"+content_dirs.plain={tmp_path / 'e0'}",
                f"+content_dirs.traced={tmp_path / 'e1'}",
                f"+content_dirs.concat={tmp_path / 'e2'}",
                "intervals_against=content:plain",
                f"output_dir={tmp_path / 'ev'}",
            ],
        )
    )
    assert {"content:plain", "content:traced"} <= set(report["methods"])
    assert set(report["intervals"]) == {"content:traced vs content:plain", "content:concat vs content:plain"}
    for iv in report["intervals"].values():
        assert iv["lo"] <= iv["diff"] <= iv["hi"] and iv["n"] == report["split"]["test"]["triggers"]
    assert "content:concat vs content:plain" in (tmp_path / "ev" / "report.md").read_text()
    assert 0.0 <= report["methods"]["content:traced"]["semrel@10"] <= 1.0


def test_embed_resumes_and_refuses_another_job(
    compose_cfg: Callable[..., DictConfig], tiny_qwen_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "e"
    first = embed_items.run(compose_cfg("embed_items", embed_overrides(tiny_qwen_dir, out)))
    assert first["shards_written"] == 3
    before = load_vectors(out).vectors
    (out / "shards" / "part-00001.parquet").unlink()  # as if killed before this shard landed
    again = embed_items.run(compose_cfg("embed_items", embed_overrides(tiny_qwen_dir, out)))
    assert (again["shards_written"], again["shards_skipped"]) == (1, 2)
    np.testing.assert_allclose(load_vectors(out).vectors, before, atol=1e-6)
    with pytest.raises(ValueError, match=r"already holds vectors of another job \(differs in \{'model_id'"):
        embed_items.run(
            compose_cfg("embed_items", embed_overrides(tiny_qwen_dir, out, "embedder.pooling=mean"))
        )


def test_torchrun_two_processes_equal_one(tiny_qwen_dir: Path, tmp_path: Path) -> None:
    def launch(n: int, out: Path) -> None:
        args = [a for a in embed_overrides(tiny_qwen_dir, out) if not a.startswith("output_dir")]
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={n}",
            "-m",
            "pipelines.embed_items",
            *args,
            f"hydra.run.dir={out}",
        ]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
        r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)
        assert r.returncode == 0, r.stderr[-3000:]

    launch(1, tmp_path / "one")
    launch(2, tmp_path / "two")
    a, b = load_vectors(tmp_path / "one"), load_vectors(tmp_path / "two")
    assert a.ids == b.ids
    np.testing.assert_allclose(a.vectors, b.vectors, atol=1e-6)


def test_items_without_any_text_are_named_before_embedding(tmp_path: Path) -> None:
    from typing import Any, cast

    from tte_recsys.serving.embed_job import embed_catalog
    from tte_recsys.tte.items import ItemInput
    from tte_recsys.vectors import JobSpec

    items = [
        ItemInput("a", {"title": "Stapler"}),
        ItemInput("b", {"title": ""}),
        ItemInput("c", {"title": " "}),
    ]
    with pytest.raises(
        ValueError,
        match=r"2 item\(s\) have no text and no image \(e.g. \['b', 'c'\]\): their content fields \['title'\]",
    ):
        embed_catalog(items, cast(Any, None), tmp_path / "v", JobSpec("x", 3, 2, "m", "none"))
    assert not (tmp_path / "v").exists()  # nothing half-written
