"""Trace generation: batched vs one-at-a-time, the cache, and the engines on the real SmolLM2 reasoner.

    python bench/traces.py [--smollm2 models/smollm2-135m-instruct] [--threads 2] [--reps 2]
                           [--sections greedy,sampled,k4,ct2] [--batching]

1. Tiny random Qwen2 (built here): the same prompts through HFReasoner with batch 32 and batch 1.
2. The cache: a second generate_traces over the same items must make 0 model calls.
3. SmolLM2-135M-Instruct (if converted, see tte_recsys.tte.convert), Amazon Office titles with the
   catalog job's prompt: ``reasoner.load.engine=generate`` (today's backend) against ``engine=loop``
   at the same dtype (``auto``), batch and lengths, run interleaved ``--reps`` times (best kept):
   greedy 32 tokens at batch 32 and 64, sampled 64 tokens at batch 32, and k=4 sampled traces per
   prompt (``num_return_sequences`` against the loop's one prefill per prompt). Generated tokens
   per second by wall clock and by this process's CPU time (the second is the steadier figure on a
   shared machine), the ratio, how many greedy traces the engines agree on, and how many
   ``generate`` agrees with itself at another batch size.
   ``--sections ...,ct2``: CTranslate2 int8 too (``pip install '.[ct2]'``; converted into a temporary folder;
   its repetition penalty also covers the prompt, so it is a speed reference, not an engine).
   ``--batching``: SmolLM2 traces/s batched (32) against one at a time, fp32 and bf16.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from machine import cpu_name
from transformers import LogitsProcessorList

from tte_recsys.data.adapters import AmazonOfficeAdapter
from tte_recsys.tte.items import item_inputs
from tte_recsys.tte.reasoner.backends import (
    GenerationSettings,
    HFReasoner,
    LoadSettings,
    TraceRequest,
)
from tte_recsys.tte.reasoner.cache import TraceCache
from tte_recsys.tte.reasoner.generate import generate_traces
from tte_recsys.tte.reasoner.penalty import GeneratedRepetitionPenalty
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


def timed(fn: Callable[[], Any]) -> tuple[float, float, Any]:
    """(wall seconds, this process's CPU seconds, result)."""
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - w, time.process_time() - c, out


def n_tokens(r: HFReasoner, texts: list[str]) -> int:
    return sum(len(r.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts)


def k_per_prompt_generate(r: HFReasoner, reqs: list[TraceRequest], k: int) -> list[str]:
    """``k`` sampled traces per prompt through transformers' ``generate`` (``num_return_sequences``),
    decoded as HFReasoner decodes; one batch."""
    ids = [r._inputs(q)[0] for q in reqs]
    enc = r.tokenizer.pad({"input_ids": ids}, padding=True, return_tensors="pt")
    width = int(enc["input_ids"].shape[1])
    torch.manual_seed(r.seed)
    with torch.inference_mode():
        gen = r.model.generate(
            input_ids=enc["input_ids"],
            attention_mask=enc["attention_mask"],
            do_sample=True,
            temperature=r.temperature,
            top_p=r.top_p,
            top_k=None,
            repetition_penalty=None,
            logits_processor=LogitsProcessorList([GeneratedRepetitionPenalty(r.repetition_penalty, width)]),
            max_new_tokens=r.max_new_tokens,
            num_return_sequences=k,
            pad_token_id=r.tokenizer.pad_token_id,
        )
    return list(r.tokenizer.batch_decode(gen[:, width:], skip_special_tokens=True))


def k_per_prompt_loop(r: HFReasoner, reqs: list[TraceRequest], k: int) -> list[str]:
    assert r._loop is not None
    written = r._loop.generate([r._inputs(q)[0] for q in reqs], seed=r.seed, n=k)
    return list(r.tokenizer.batch_decode(written, skip_special_tokens=True))


def compare(
    label: str,
    runs: dict[str, Callable[[], list[str]]],
    counter: HFReasoner,
    reps: int,
) -> dict[str, list[str]]:
    """Run each engine ``reps`` times, interleaved; print the best wall and CPU tok/s of each and the
    ratio of each to the first. Returns each engine's texts."""
    wall: dict[str, float] = {}
    cpu: dict[str, float] = {}
    texts: dict[str, list[str]] = {}
    for _ in range(reps):
        for name, fn in runs.items():
            w, c, texts[name] = timed(fn)
            wall[name], cpu[name] = min(wall.get(name, w), w), min(cpu.get(name, c), c)
    base = next(iter(runs))
    for name in runs:
        tok = n_tokens(counter, texts[name])
        vs = (
            ""
            if name == base
            else f"  | vs {base}: {_ratio(texts, wall, base, name, counter)} wall, "
            f"{_ratio(texts, cpu, base, name, counter)} CPU"
        )
        print(
            f"  {label:44s} {name:17s} {len(texts[name]):3d} traces, {tok / len(texts[name]):4.1f} tok each: "
            f"{tok / wall[name]:6.1f} tok/s wall, {tok / cpu[name]:6.1f} tok/s CPU{vs}"
        )
    return texts


def _ratio(
    texts: dict[str, list[str]], secs: dict[str, float], base: str, name: str, counter: HFReasoner
) -> str:
    """tok/s of ``name`` over tok/s of ``base``."""
    mine = n_tokens(counter, texts[name]) / secs[name]
    theirs = n_tokens(counter, texts[base]) / secs[base]
    return f"{mine / theirs:.2f}x"


def same(a: list[str], b: list[str]) -> str:
    return f"{sum(x == y for x, y in zip(a, b, strict=True))}/{len(a)}"


SECTIONS = ("greedy", "sampled", "k4", "ct2")


def engines(model: str, reps: int, sections: set[str]) -> None:
    """Section 3: generate against loop on SmolLM2 at dtype=auto (the ``sections`` asked for)."""
    items = item_inputs(AmazonOfficeAdapter().load(), ["title"])
    prompt = get_template("item_keywords")  # the catalog job's prompt
    reqs = [TraceRequest(it.item_id, prompt.messages(it.text)) for it in items[1000:1064]]

    def pair(**gen: Any) -> tuple[HFReasoner, HFReasoner]:
        g = GenerationSettings(**gen)
        a, b = (
            HFReasoner(model, g, LoadSettings(engine="generate")),
            HFReasoner(model, g, LoadSettings(engine="loop")),
        )
        a.generate(reqs[:2]), b.generate(reqs[:2])  # warm-up
        return a, b

    hf, loop = pair(max_new_tokens=32, batch_size=32)
    print(
        f"SmolLM2-135M-Instruct, dtype=auto -> {hf.model.dtype}, prompt item_keywords, Amazon Office titles:"
    )
    print(f"  ids: {hf.reasoner_id} | {loop.reasoner_id}")
    if "greedy" in sections:
        greedy(hf, loop, reqs, reps, pair)
    if "sampled" in sections:
        hs, ls = pair(max_new_tokens=64, batch_size=32, do_sample=True, seed=0)
        compare(
            "sampled T0.7 p0.9, 64 new tokens, batch 32",
            {"generate": lambda: _texts(hs, reqs[:32]), "loop": lambda: _texts(ls, reqs[:32])},
            hf,
            reps,
        )
    if "k4" in sections:
        hk, lk = pair(max_new_tokens=32, batch_size=64, do_sample=True, seed=0)
        compare(
            "k=4 sampled per prompt, 32 new, 16 prompts",
            {
                "generate": lambda: k_per_prompt_generate(hk, reqs[:16], 4),
                "loop": lambda: k_per_prompt_loop(lk, reqs[:16], 4),
            },
            hf,
            reps,
        )
    if "ct2" in sections:
        ct2(model, hf, reqs, reps)


def greedy(
    hf: HFReasoner,
    loop: HFReasoner,
    reqs: list[TraceRequest],
    reps: int,
    pair: Callable[..., tuple[HFReasoner, HFReasoner]],
) -> None:
    """Greedy 32 tokens at batch 32 and 64, and how often the engines (and batch sizes) agree."""
    g32 = compare(
        "greedy, 32 new tokens, batch 32, 64 prompts",
        {"generate": lambda: _texts(hf, reqs), "loop": lambda: _texts(loop, reqs)},
        hf,
        reps,
    )
    hf64, loop64 = pair(max_new_tokens=32, batch_size=64)
    g64 = compare(
        "greedy, 32 new tokens, batch 64, 64 prompts",
        {"generate": lambda: _texts(hf64, reqs), "loop": lambda: _texts(loop64, reqs)},
        hf,
        reps,
    )
    print(
        f"  greedy traces identical: loop vs generate {same(g32['loop'], g32['generate'])} (batch 32), "
        f"{same(g64['loop'], g64['generate'])} (batch 64); generate batch 32 vs generate batch 64 "
        f"{same(g32['generate'], g64['generate'])}; loop batch 32 vs 64 {same(g32['loop'], g64['loop'])}"
    )


def _texts(r: HFReasoner, reqs: list[TraceRequest]) -> list[str]:
    out = r.generate(reqs)
    return [x if isinstance(x, str) else "" for x in out]


def ct2(model: str, hf: HFReasoner, reqs: list[TraceRequest], reps: int) -> None:
    """CTranslate2 int8, greedy 32 tokens, batch 32: a speed reference beside the engines."""
    try:
        import ctranslate2
        from ctranslate2.converters import TransformersConverter
    except ImportError:
        print("  CTranslate2: not installed (pip install '.[ct2]'): skipped")
        return
    with tempfile.TemporaryDirectory() as d:
        out = TransformersConverter(model, low_cpu_mem_usage=True).convert(
            str(Path(d) / "ct2"), quantization="int8"
        )
        g = ctranslate2.Generator(
            out, device="cpu", compute_type="int8", intra_threads=torch.get_num_threads()
        )
        toks = [hf.tokenizer.convert_ids_to_tokens(hf._inputs(q)[0]) for q in reqs]

        def run() -> list[str]:
            res = g.generate_batch(
                toks,
                max_length=32,
                sampling_topk=1,
                repetition_penalty=1.15,
                include_prompt_in_result=False,
                max_batch_size=32,
            )
            return list(
                hf.tokenizer.batch_decode([x.sequences_ids[0] for x in res], skip_special_tokens=True)
            )

        compare(
            "greedy, 32 new tokens, batch 32, 64 prompts",
            {"generate": lambda: _texts(hf, reqs), "ctranslate2-int8": run},
            hf,
            reps,
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smollm2", default="models/smollm2-135m-instruct")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (the machine has 2 cores)")
    ap.add_argument("--reps", type=int, default=2, help="interleaved runs of each engine; the best is kept")
    ap.add_argument(
        "--sections",
        default="greedy,sampled,k4",
        help=f"SmolLM2 comparisons to run, from {','.join(SECTIONS)} (ct2 needs the ct2 extra)",
    )
    ap.add_argument("--batching", action="store_true", help="also SmolLM2 batched vs one at a time")
    a = ap.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]  # each figure as it comes
    torch.set_num_threads(a.threads)
    print(f"machine: {cpu_name()}, torch {torch.__version__}")
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
    asked = set(a.sections.split(","))
    if asked - set(SECTIONS):
        ap.error(f"--sections: unknown {sorted(asked - set(SECTIONS))}; expected some of {list(SECTIONS)}")
    engines(a.smollm2, a.reps, asked)
    if a.batching:
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
