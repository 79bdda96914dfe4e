"""Evaluation kernels against their plain references, in one run: exact top-K with the trigger
masked (ours: one ``torch.topk`` pass, exact fallback on ties) against a stable sort of whole
rows in PyTorch, and the quota merge (ours: vectorised over rows) against the same rule row by
row in Python, the implementation it replaced. Outputs are checked equal before timing.

Shapes default to the generated shop's valid sweep (bench/synthetic_shop.py): 1,024 triggers per
batch, 30,000 items, K = 100, and 11,000 rows to merge for two heads.

    python bench/evaluate.py [--rows 1024] [--items 30000] [--k 100] [--merge-rows 11000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Callable

import numpy as np
import torch

from tte_recsys.retrieval import topk_excluding
from tte_recsys.serving.merge import _merge_rows, merge_by_quota


def full_sort_topk(scores: np.ndarray, triggers: np.ndarray, k: int) -> np.ndarray:
    """The plain reference: mask the trigger, stable-sort every row, keep k (-1 for -inf)."""
    s = torch.from_numpy(scores).clone()
    s[torch.arange(len(s)), torch.from_numpy(triggers)] = -torch.inf
    vals, idx = torch.sort(s, dim=1, descending=True, stable=True)
    idx = idx[:, :k].clone()
    idx[torch.isneginf(vals[:, :k])] = -1
    return idx.numpy()


def best_of(fn: Callable[[], object], rounds: int) -> float:
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1024)
    ap.add_argument("--items", type=int, default=30_000)
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--merge-rows", type=int, default=11_000)
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args()
    print(
        f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    rng = np.random.default_rng(0)

    # Unit-vector cosines, as a head scores a batch of triggers.
    v = rng.normal(size=(a.items, 64)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    triggers = rng.choice(a.items, a.rows, replace=False)
    scores = v[triggers] @ v.T
    ours, ref = topk_excluding(scores, triggers, a.k), full_sort_topk(scores, triggers, a.k)
    assert (ours == ref).all(), "top-K differs from the full sort"
    t_ours = best_of(lambda: topk_excluding(scores, triggers, a.k), a.rounds)
    t_ref = best_of(lambda: full_sort_topk(scores, triggers, a.k), a.rounds)
    print(
        f"top-{a.k} of {a.rows} x {a.items}: ours {t_ours * 1e3:.1f} ms, full stable sort {t_ref * 1e3:.1f} ms "
        f"-> {t_ref / t_ours:.2f}x"
    )

    # Two heads' top-(K+1) lists per row sharing some items, the trigger masked as in serving.
    n = a.merge_rows
    first = np.stack([rng.choice(a.items, a.k + 1, replace=False) for _ in range(n)])
    second = np.stack(
        [
            np.concatenate(
                [
                    first[i, 40:50],
                    np.setdiff1d(rng.choice(a.items, 2 * a.k, replace=False), first[i])[: a.k - 9],
                ]
            )
            for i in range(n)
        ]
    )
    first[:, 3] = -1
    for share in (0.9, 0.5):
        w = np.array([share, 1 - share])
        got = merge_by_quota([first, second], list(w), a.k)
        want = _merge_rows([first, second], w, a.k)
        assert all((x == y).all() for x, y in zip(got, want, strict=True)), "merge differs from the rule"
        t_ours = best_of(lambda w=w: merge_by_quota([first, second], list(w), a.k), a.rounds)
        t_ref = best_of(lambda w=w: _merge_rows([first, second], w, a.k), max(1, a.rounds // 2))
        print(
            f"merge {n} rows, K1/K {share}: ours {t_ours * 1e3:.0f} ms, row by row {t_ref * 1e3:.0f} ms "
            f"-> {t_ref / t_ours:.1f}x"
        )


if __name__ == "__main__":
    main()
