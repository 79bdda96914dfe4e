"""``reasoner.load.engine=loop`` (tte.reasoner.decode) against transformers' ``generate`` on a tiny Qwen2."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, TopPLogitsWarper

from tte_recsys.tte.items import ItemInput
from tte_recsys.tte.reasoner.backends import GenerationSettings, HFReasoner, LoadSettings, TraceRequest
from tte_recsys.tte.reasoner.cache import TraceCache
from tte_recsys.tte.reasoner.decode import common_prefix_len, length_groups, pack_linears, top_p_nucleus
from tte_recsys.tte.reasoner.generate import generate_traces
from tte_recsys.tte.reasoner.prompts import get_template

T = get_template("item_card")
REQS = [TraceRequest(f"i{k}", T.messages(f"item {'word ' * k} number {k * 7}")) for k in range(7)]


@pytest.fixture(scope="module")
def lively_dir(tiny_qwen_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Qwen2 with large random weights, so greedy output differs between prompts and steps,
    and an end token that some rows write early and others never: rows of a batch end at
    different steps (the tiny model as built writes only newlines)."""
    d = tmp_path_factory.mktemp("lively") / "m"
    shutil.copytree(tiny_qwen_dir, d)
    model = AutoModelForCausalLM.from_pretrained(d)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.5)
    model.save_pretrained(d)
    r = HFReasoner(str(d), GenerationSettings(max_new_tokens=12, batch_size=8), LoadSettings(dtype="float32"))
    written = [
        set(r.tokenizer(t, add_special_tokens=False)["input_ids"][:10]) for t in _texts(r.generate(REQS))
    ]
    counts = Counter(tok for w in written for tok in w)
    eos = next(tok for tok, n in counts.most_common() if n < len(written))  # in most rows, not all
    cfg = json.loads((d / "generation_config.json").read_text())
    (d / "generation_config.json").write_text(json.dumps({**cfg, "eos_token_id": eos}))
    return d


def _texts(out: list[str | Exception]) -> list[str]:
    assert all(isinstance(x, str) for x in out), out
    return [x for x in out if isinstance(x, str)]


def _pair(d: Path, dtype: str = "float32", **gen: object) -> tuple[HFReasoner, HFReasoner]:
    g = GenerationSettings(**{"max_new_tokens": 12, "batch_size": 4, **gen})  # type: ignore[arg-type]
    return (
        HFReasoner(str(d), g, LoadSettings(dtype=dtype)),
        HFReasoner(str(d), g, LoadSettings(dtype=dtype, engine="loop")),
    )


@pytest.mark.parametrize(
    "gen",
    [{}, {"repetition_penalty": 1.5}, {"repetition_penalty": 1.5, "penalty_scope": "all"}],
    ids=["no-penalty", "penalty-generated", "penalty-all"],
)
def test_loop_greedy_traces_equal_generate(lively_dir: Path, gen: dict[str, object]) -> None:
    hf, loop = _pair(lively_dir, **gen)
    want, got = _texts(hf.generate(REQS)), _texts(loop.generate(REQS))
    assert got == want
    ids = [loop._inputs(r)[0] for r in REQS]
    assert common_prefix_len(ids) >= loop._loop.min_prefix  # the shared-prefix path ran
    lengths = {len(loop.tokenizer(t)["input_ids"]) for t in got}
    assert len(lengths) > 2  # rows ended at different steps: the batch was compacted on the way
    assert loop.calls == 2  # 7 requests, batch 4


def test_loop_compaction_and_prefix_do_not_change_greedy_tokens(lively_dir: Path) -> None:
    _, loop = _pair(lively_dir)
    dec = loop._loop
    ids = [loop._inputs(r)[0] for r in REQS[:4]]
    ref = dec.generate(ids)
    assert ref[0][-1] in dec.decoding.eos_ids or len(ref[0]) == 12
    assert len(length_groups([len(x) for x in ids], 0)) == 4  # overhead 0: each length its own group
    for min_prefix, compact_at, overhead in [
        (10**9, 2.0, 64),
        (10**9, 0.01, 64),
        (8, 0.01, 0),
        (10**9, 2.0, 0),
    ]:
        dec.min_prefix, dec.compact_at, dec.group_overhead = min_prefix, compact_at, overhead
        assert dec.generate(ids) == ref
    assert dec.generate(ids[::-1]) == ref[::-1]  # any order in, the same order out


def test_loop_bf16_greedy_equals_generate(lively_dir: Path) -> None:
    hf, loop = _pair(lively_dir, "bfloat16", repetition_penalty=1.3)
    assert _texts(loop.generate(REQS)) == _texts(hf.generate(REQS))
    packed = torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    kinds = {type(m).__name__ for m in loop.model.modules()}
    assert ("_PackedLinear" in kinds) == packed and ("Linear" not in kinds) == packed


def test_pack_linears_leaves_fp32_models_alone(tiny_qwen_dir: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny_qwen_dir)
    assert pack_linears(model) == 0
    assert any(type(m) is torch.nn.Linear for m in model.modules())


def test_loop_sampling_is_seeded(lively_dir: Path) -> None:
    def run(seed: int) -> list[str]:
        _, loop = _pair(lively_dir, do_sample=True, temperature=1.0, top_p=0.9, seed=seed)
        return _texts(loop.generate(REQS))

    a = run(3)
    assert a == run(3)
    assert a != run(4)


def test_loop_has_its_own_reasoner_id_and_cache_rows(lively_dir: Path, tmp_path: Path) -> None:
    hf, loop = _pair(lively_dir, "bfloat16")
    assert hf.reasoner_id.endswith(":torch-bfloat16") and loop.reasoner_id.endswith(":loop-bfloat16")
    assert hf.reasoner_id.rsplit(":", 1)[0] == loop.reasoner_id.rsplit(":", 1)[0]  # only the engine differs
    items = [ItemInput(f"i{k}", {"title": f"item {'word ' * k} number {k * 7}"}) for k in range(6)]
    cache = TraceCache(tmp_path)
    _, s1 = generate_traces(items, hf, T, cache, show_progress=False)
    _, s2 = generate_traces(items, loop, T, cache, show_progress=False)
    # the loop engine is never served generate's rows
    assert s2.cached == 0 and s2.generated + len(s2.failed) == 6 and loop.calls > 0
    calls = hf.calls
    _, s3 = generate_traces(items, hf, T, cache, show_progress=False)
    assert s3.cached == s1.generated and hf.calls == calls  # and generate's rows are still its own
    rows = cache.load()
    assert set(rows["reasoner_id"].to_list()) == {hf.reasoner_id, loop.reasoner_id}


def test_engine_errors_are_clear(tmp_path: Path) -> None:
    from tte_recsys.tte.tiny import build_tiny_qwen2_vl

    with pytest.raises(
        ValueError, match=r"reasoner.load.engine='vllm': expected one of \['generate', 'loop'\]"
    ):
        LoadSettings(engine="vllm")
    vl = build_tiny_qwen2_vl(tmp_path / "vl")
    with pytest.raises(ValueError, match="engine=loop decodes text-only causal LMs; vl is a vision-language"):
        HFReasoner(str(vl), load=LoadSettings(engine="loop"))


def test_top_p_nucleus_is_transformers_top_p() -> None:
    torch.manual_seed(0)
    scores = torch.randn(6, 500) * 4
    scores[:4, :3] += 12  # four peaked rows
    scores[4:] *= 0.05  # two nearly flat ones
    idx, weights, exact = top_p_nucleus(scores, 0.9, 16)
    assert exact.tolist() == [True] * 4 + [False] * 2
    ref = torch.softmax(TopPLogitsWarper(0.9)(torch.zeros((6, 1), dtype=torch.long), scores.clone()), -1)
    mine = torch.zeros_like(ref).scatter(1, idx, weights / weights.sum(-1, keepdim=True))
    assert torch.equal(mine[:4] > 0, ref[:4] > 0)  # the same tokens kept
    assert torch.allclose(mine[:4], ref[:4], atol=1e-6)  # with the same probabilities


def test_length_groups_minimise_padding_plus_overhead() -> None:
    assert length_groups([50, 52, 55, 60, 61, 90, 95, 130], 64) == [(0, 5), (5, 7), (7, 8)]
    assert length_groups([10, 10, 10], 64) == [(0, 3)]
    assert length_groups([1, 1000], 64) == [(0, 1), (1, 2)]
    assert length_groups([], 64) == []


def test_common_prefix_len() -> None:
    assert common_prefix_len([[1, 2, 3, 4], [1, 2, 5], [1, 2, 3]]) == 2
    assert common_prefix_len([[7, 8], [7, 8]]) == 2
    assert common_prefix_len([[1], [2]]) == 0
    assert common_prefix_len([]) == 0


def test_loop_n_completions_share_one_prefill(lively_dir: Path) -> None:
    _, greedy = _pair(lively_dir)
    ids = [greedy._inputs(r)[0] for r in REQS[:3]]
    one = greedy._loop.generate(ids)
    assert greedy._loop.generate(ids, n=2) == [x for x in one for _ in range(2)]  # prompt-major copies
    _, sampled = _pair(lively_dir, do_sample=True, temperature=1.0, top_p=1.0)
    a = sampled._loop.generate(ids, seed=5, n=3)
    assert len(a) == 9 and a == sampled._loop.generate(ids, seed=5, n=3)
    assert all(len({tuple(x) for x in a[i : i + 3]}) > 1 for i in range(0, 9, 3))  # the copies sample apart
    with pytest.raises(ValueError, match="n=0: expected >= 1"):
        sampled._loop.generate(ids, n=0)
