"""Property tests (hypothesis) of the pieces every number rests on: pair mining against its
definition, the split's invariants, the metrics against a direct computation, the quota merge.

Each property draws random inputs (small, with many timestamp ties) and compares with a
brute-force reference or checks an invariant that must hold for every input.
"""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from tests.data.test_pairs import _brute_force
from tests.helpers import make_dataset
from tte_recsys.config import PairConfig, SplitConfig
from tte_recsys.data.pairs import mine_pairs
from tte_recsys.data.split import EvalSet, temporal_split
from tte_recsys.evaluation.metrics import coverage_at_k, recall_at_k
from tte_recsys.retrieval import topk_excluding
from tte_recsys.serving.merge import HeadVectorsRetriever, merge_by_quota

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

logs = st.lists(
    st.tuples(
        st.sampled_from([f"u{k}" for k in range(5)]),
        st.sampled_from([f"i{k}" for k in range(8)]),
        st.integers(0, 15),  # coarse times: many ties
    ),
    min_size=1,
    max_size=50,
)


@st.composite
def _pair_cfg(draw: st.DrawFn) -> PairConfig:
    window = draw(st.one_of(st.none(), st.integers(2, 6)))
    seconds = draw(st.integers(0, 8)) if window is None else draw(st.one_of(st.none(), st.integers(0, 8)))
    return PairConfig(window=window, max_seconds=seconds, symmetric=draw(st.booleans()))


@SETTINGS
@given(rows=logs, cfg=_pair_cfg(), cuts=st.lists(st.integers(0, 15), max_size=2, unique=True))
def test_pair_mining_matches_its_definition(
    rows: list[tuple[str, str, int]], cfg: PairConfig, cuts: list[int]
) -> None:
    ds = make_dataset(rows)
    ids = ds.items["item_id"].to_list()
    got = mine_pairs(ds.interactions, cfg, cutoffs=sorted(cuts))
    named = {(ids[s], ids[d], p): c for s, d, p, c, _ in got.iter_rows()}
    assert named == _brute_force(rows, cfg, sorted(cuts))


@SETTINGS
@given(
    rows=st.lists(
        st.tuples(st.integers(0, 9), st.integers(0, 11), st.integers(0, 40)), min_size=20, max_size=120
    ),
    window=st.integers(2, 5),
)
def test_split_never_leaks_across_periods(rows: list[tuple[int, int, int]], window: int) -> None:
    ds = make_dataset([(f"u{u}", f"i{i:02d}", t) for u, i, t in rows])
    try:
        split = temporal_split(ds, PairConfig(window=window), SplitConfig())
    except ValueError:
        assume(False)  # a log spanning too little time is refused, by design
        return
    c_valid, _c_test = split.cutoffs
    assert split.train["timestamp"].max() <= c_valid  # type: ignore[operator]
    train_pairs = set(split.train_pairs.select("src", "dst").iter_rows())
    counts = np.bincount(split.train["item_idx"].to_numpy(), minlength=ds.num_items)
    np.testing.assert_array_equal(split.item_counts, counts)
    seen: set[tuple[int, int]] = set(train_pairs)
    for ev in (split.valid, split.test):
        owner = np.repeat(ev.triggers, np.diff(ev.indptr))
        pos = set(zip(owner.tolist(), ev.targets.tolist(), strict=True))
        assert not pos & seen  # a held-out positive is first seen in its own period
        assert (counts[ev.triggers] > 0).all()  # every trigger has train interactions
        np.testing.assert_array_equal(ev.cold, counts[ev.targets] == 0)  # cold = no train interaction
        seen |= pos
    # the test positives were mined from interactions after the valid cut-off only
    late = ds.interactions.filter(pl.col("timestamp") > c_valid)
    assert split.test.targets.size == 0 or late.height > 0


@st.composite
def _evalset_and_topk(draw: st.DrawFn) -> tuple[EvalSet, np.ndarray, int]:
    n = draw(st.integers(3, 12))
    k = draw(st.integers(1, 5))
    pairs = draw(st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)), min_size=1, max_size=30))
    cold = np.array(draw(st.lists(st.booleans(), min_size=n, max_size=n)))
    ev = EvalSet.from_pairs(pl.DataFrame(pairs, schema=["src", "dst"], orient="row"), cold)
    rows = [draw(st.lists(st.integers(-1, n - 1), min_size=k, max_size=k)) for _ in range(ev.num_triggers)]
    return ev, np.array(rows, dtype=np.int64).reshape(ev.num_triggers, k), n


@SETTINGS
@given(case=_evalset_and_topk())
def test_metrics_equal_a_direct_computation(case: tuple[EvalSet, np.ndarray, int]) -> None:
    ev, topk, n = case
    per, per_cold = [], []
    for t in range(ev.num_triggers):
        targets = ev.targets[ev.indptr[t] : ev.indptr[t + 1]].tolist()
        got = set(topk[t].tolist())
        per.append(sum(x in got for x in targets) / len(targets))
        cold_t = [x for x in targets if ev.cold_items[x]]
        if cold_t:
            per_cold.append(sum(x in got for x in cold_t) / len(cold_t))
    assert recall_at_k(ev, topk) == pytest.approx(np.mean(per))
    cold = recall_at_k(ev, topk, only_cold=True)
    assert (np.isnan(cold) and not per_cold) or cold == pytest.approx(np.mean(per_cold))
    assert coverage_at_k(topk, n) == pytest.approx(len({x for x in topk.ravel().tolist() if x >= 0}) / n)


@SETTINGS
@given(
    k=st.integers(1, 12),
    shares=st.lists(st.floats(0.0, 1.0), min_size=2, max_size=3).filter(lambda w: sum(w) > 0.05),
    seed=st.integers(0, 10_000),
)
def test_quota_merge_prefixes_honour_the_shares(k: int, shares: list[float], seed: int) -> None:
    """Disjoint, long enough lists: after every prefix of length p each head holds within one
    slot of its share x p, nothing repeats, and everything comes from its head in order."""
    rng = np.random.default_rng(seed)
    n_heads = len(shares)
    items = rng.permutation(1000)[: n_heads * k].reshape(n_heads, 1, k)
    codes, source, position = merge_by_quota([items[h] for h in range(n_heads)], shares, k)
    w = np.asarray(shares) / sum(shares)
    assert len(set(codes[0].tolist())) == k
    for p in range(1, k + 1):
        taken = np.bincount(source[0, :p], minlength=n_heads)
        assert (np.abs(taken - w * p) < 1.0 + 1e-9).all(), (p, taken, w)
    for slot in range(k):
        assert codes[0, slot] == items[source[0, slot], 0, position[0, slot]]


@SETTINGS
@given(n=st.integers(4, 30), k=st.integers(1, 8), share=st.floats(0.0, 1.0), seed=st.integers(0, 10_000))
def test_retrieval_excludes_the_trigger_and_repeats_nothing(n: int, k: int, share: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    vecs = {h: rng.normal(size=(n, 4)).astype(np.float32) for h in ("coeng", "semantic")}
    vecs = {h: v / np.linalg.norm(v, axis=1, keepdims=True) for h, v in vecs.items()}
    r = HeadVectorsRetriever(vecs, {"coeng": share, "semantic": 1 - share}, "mtmh")
    triggers = np.arange(n)
    top = r.retrieve(triggers, k)
    for t in range(n):
        row = [x for x in top[t].tolist() if x >= 0]
        assert t not in row and len(row) == len(set(row)) == min(k, n - 1)
    # each head alone is the exact top-k of its own scores, trigger excluded
    exact = topk_excluding(vecs["coeng"] @ vecs["coeng"].T, triggers, k)
    np.testing.assert_array_equal(
        HeadVectorsRetriever(vecs, {"coeng": 1.0, "semantic": 0.0}, "c").retrieve(triggers, k), exact
    )
