"""Trace generation: batched vs one-at-a-time, cache re-run, and the real SmolLM2 reasoner.

    python bench/traces.py [--smollm2 models/smollm2-135m-instruct]

1. Tiny random Qwen2 (built here): the same prompts through HFReasoner with batch 32 and batch 1.
2. The cache: a second generate_traces over the same items must make 0 model calls.
3. SmolLM2-135M-Instruct (if converted, see tte_recsys.tte.convert): traces/s batched vs one at a time.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from tte_recsys.data.adapters import AmazonOfficeAdapter
from tte_recsys.tte.items import item_inputs
from tte_recsys.tte.reasoner.backends import GenerationSettings, HFReasoner, LoadSettings, TraceRequest
from tte_recsys.tte.reasoner.cache import TraceCache
from tte_recsys.tte.reasoner.generate import generate_traces
from tte_recsys.tte.reasoner.prompts import get_template
from tte_recsys.tte.tiny import build_tiny_qwen

T = get_template("item_card")


def rate(model: str, reqs: list[TraceRequest], batch: int, tokens: int, dtype: str) -> float:
    r = HFReasoner(
        model,
        GenerationSettings(max_new_tokens=tokens, batch_size=batch, do_sample=True, seed=0),
        LoadSettings(dtype=dtype),
    )
    r.generate(reqs[:2])  # warm-up
    t = time.perf_counter()
    r.generate(reqs)
    return len(reqs) / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smollm2", default="models/smollm2-135m-instruct")
    a = ap.parse_args()
    torch.set_num_threads(2)
    items = item_inputs(AmazonOfficeAdapter().load(), ["title"])
    with tempfile.TemporaryDirectory() as d:
        tiny = str(build_tiny_qwen(Path(d) / "tiny"))
        reqs = [TraceRequest(it.item_id, T.messages(it.text)) for it in items[:64]]
        b, one = rate(tiny, reqs, 32, 16, "float32"), rate(tiny, reqs, 1, 16, "float32")
        print(
            f"tiny Qwen2, 64 prompts x 16 new tokens: batched (32) {b:.1f} traces/s, one at a time "
            f"{one:.1f} traces/s, ratio {b / one:.1f}x (target >= 4x)"
        )
        cache = TraceCache(Path(d) / "cache")
        r = HFReasoner(tiny, GenerationSettings(max_new_tokens=8, batch_size=32, do_sample=True, seed=0))
        _, s1 = generate_traces(items[:200], r, T, cache, show_progress=False)
        _, s2 = generate_traces(items[:200], r, T, cache, show_progress=False)
        print(
            f"cache: first run generated {s1.generated} ({s1.model_calls} model calls); re-run cached "
            f"{s2.cached}, model calls {s2.model_calls} (target 0)"
        )
    if not Path(a.smollm2).is_dir():
        print(
            f"SmolLM2 folder {a.smollm2} not found: skipped (python -m tte_recsys.tte.convert --out {a.smollm2})"
        )
        return
    reqs = [TraceRequest(it.item_id, T.messages(it.text)) for it in items[1000:1032]]
    for dtype in ("float32", "bfloat16"):
        b = rate(a.smollm2, reqs, 32, 64, dtype)
        one = rate(a.smollm2, reqs[:8], 1, 64, dtype)
        print(
            f"SmolLM2-135M-Instruct {dtype}, 64 new tokens: batched (32) {b:.2f} traces/s, one at a time "
            f"{one:.2f} traces/s, ratio {b / one:.1f}x"
        )


if __name__ == "__main__":
    main()
