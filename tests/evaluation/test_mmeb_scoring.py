"""MMEB-V2 scoring against hand-computed values: ties both ways, graded NDCG, duplicates,
local vs global candidates, and independence from PYTHONHASHSEED."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.helpers import ROOT
from tte_recsys.evaluation.mmeb.data import CandidatePool, Entry
from tte_recsys.evaluation.mmeb.scoring import aggregate, ndcg_at_k, score_task, top_k_order


def _vecs(scores: list[float]) -> tuple[np.ndarray, np.ndarray]:
    """A query (1, 2) and candidates (C, 2) whose dot products are exactly ``scores``."""
    q = np.array([[1.0, 0.0]])
    c = np.array([[s, 0.0] for s in scores])
    return q, c


def test_ties_go_against_the_positive_by_default_and_to_it_when_optimistic() -> None:
    q, c = _vecs([0.5, 0.5, 0.2])  # the positive (index 0) ties with a negative
    pess = score_task(q, c, None, [{0: 1.0}], "hit@1")
    opt = score_task(q, c, None, [{0: 1.0}], "hit@1", ties="optimistic")
    assert pess.score == 0.0 and opt.score == 100.0
    assert pess.predictions["first_relevant_rank"][0] == 2 and opt.predictions["first_relevant_rank"][0] == 1
    # the reference's unstable sort usually leaves index 0 first: a tie it scores as a hit
    q, c = _vecs([0.5, 0.5, 0.5])
    assert score_task(q, c, None, [{2: 1.0}], "hit@1", ties="optimistic").score == 100.0
    assert score_task(q, c, None, [{2: 1.0}], "hit@1").predictions["first_relevant_rank"][0] == 3


def test_ties_among_negatives_keep_candidate_order() -> None:
    order = top_k_order(np.array([0.1, 0.3, 0.3, 0.3, 0.9]), np.zeros(5), 4)
    assert order.tolist() == [4, 1, 2, 3]
    # pessimistic: among equal scores the higher grade goes last; optimistic: first
    g = np.array([0.0, 2.0, 0.0, 3.0])
    s = np.array([0.7, 0.7, 0.7, 0.7])
    assert top_k_order(s, g, 4).tolist() == [0, 2, 1, 3]
    assert top_k_order(s, g, 4, "optimistic").tolist() == [3, 1, 0, 2]


def test_graded_ndcg_by_hand() -> None:
    # ranked grades 2, 0, 3, 0, 0; positives {3, 2}
    dcg = 2 / math.log2(2) + 3 / math.log2(4)  # 3.5
    idcg = 3 / math.log2(2) + 2 / math.log2(3)  # 4.26186
    got = ndcg_at_k(np.array([2.0, 0, 3, 0, 0]), np.array([2.0, 3.0, 0, 0, 0, 0]), 5)
    assert got == pytest.approx(dcg / idcg) and got == pytest.approx(0.821238, abs=1e-6)
    # through score_task: candidates scored so that the order is d1 (grade 2), d0, d2 (grade 3)
    q, c = _vecs([0.8, 0.9, 0.7, 0.1, 0.0, -0.5])
    res = score_task(q, c, None, [{1: 2.0, 2: 3.0}], "ndcg_linear@5")
    assert res.score == pytest.approx(100 * dcg / idcg)
    # the grade stays with its document whatever order the labels come in
    again = score_task(q, c, None, [{2: 3.0, 1: 2.0}], "ndcg_linear@5")
    assert again.score == res.score


def test_positive_beyond_the_cut_scores_zero_and_perfect_scores_one() -> None:
    q, c = _vecs([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3])
    assert score_task(q, c, None, [{6: 1.0}], "ndcg_linear@5").score == 0.0
    assert score_task(q, c, None, [{0: 3.0, 1: 2.0}], "ndcg_linear@5").score == pytest.approx(100.0)


def test_local_lists_rank_only_their_own_candidates() -> None:
    q = np.array([[1.0, 0.0], [0.0, 1.0]])
    c = np.array([[0.9, 0.0], [0.0, 0.8], [0.6, 0.6], [1.0, 0.0]])
    rel = [{0: 1.0}, {2: 1.0}]
    # globally candidate 3 (1.0) beats query 0's positive, and 1 (0.8) beats query 1's (0.6)
    assert score_task(q, c, None, rel, "hit@1").per_query.tolist() == [0.0, 0.0]
    # locally query 0 ranks [0, 1, 2] (0.9 wins), query 1 ranks [2, 0] (0.6 beats 0.0)
    local = score_task(q, c, [np.array([0, 1, 2]), np.array([2, 0])], rel, "hit@1", names=list("abcd"))
    assert local.per_query.tolist() == [1.0, 1.0]
    assert local.predictions["top"].to_list() == [["a", "c", "b"], ["c", "a"]]


def test_duplicate_candidates_share_one_embedding_and_conflicts_are_counted() -> None:
    pool = CandidatePool()
    a = pool.add(Entry("cat", "label: cat"))
    assert pool.add(Entry("cat", "label: cat")) == a  # the same name and content: one candidate
    b = pool.add(Entry("cat", "Represent: cat"))  # the same name, another content: its own
    assert b != a and len(pool.entries) == 2 and pool.conflicting_names() == 1


def test_a_query_without_positive_is_an_error() -> None:
    q, c = _vecs([0.1, 0.2])
    with pytest.raises(ValueError, match="query 0 has no relevant candidate"):
        score_task(q, c, None, [{}], "hit@1")
    with pytest.raises(ValueError, match="metric='recall@5'"):
        score_task(q, c, None, [{0: 1.0}], "recall@5")


def test_aggregate_is_plain_means() -> None:
    meta = {"a": ("image", "VQA"), "b": ("image", "VQA"), "c": ("image", "Retrieval"), "d": ("video", "QA")}
    agg = aggregate({"a": 10.0, "b": 20.0, "c": 60.0, "d": 0.0}, meta)
    assert agg["meta_tasks"]["image/VQA"] == {"score": 15.0, "tasks": 2}
    assert agg["modalities"]["image"]["score"] == pytest.approx(30.0)
    assert agg["overall"] == {"score": 22.5, "tasks": 4}


_SCRIPT = """
import numpy as np
from pathlib import Path
from tte_recsys.evaluation.mmeb.synthetic import make_synthetic_root
from tte_recsys.evaluation.mmeb.registry import select_tasks, families
from tte_recsys.evaluation.mmeb.readers import ReadSettings, read_task
from tte_recsys.evaluation.mmeb.scoring import score_task
import sys
root = Path(sys.argv[1])
t = select_tasks(["ViDoSeek-doc"])[0]
d = read_task(t, families()[t.family], root, ReadSettings(), root / "_pix")
rng = np.random.default_rng(0)
q = rng.normal(size=(len(d.queries), 8)); c = rng.normal(size=(len(d.candidates), 8))
print(repr(score_task(q, c, d.lists, d.relevance, t.metric).score))
"""


def test_graded_score_is_the_same_under_two_hash_seeds(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from tte_recsys.evaluation.mmeb.synthetic import make_synthetic_root

    make_synthetic_root(tmp_path / "root")
    outs = []
    for seed in ("0", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        res = subprocess.run(
            [sys.executable, "-c", _SCRIPT, str(tmp_path / "root")],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
        )
        assert res.returncode == 0, res.stderr[-2000:]
        outs.append(res.stdout.strip())
    assert outs[0] == outs[1] and 0.0 < float(outs[0]) <= 100.0
