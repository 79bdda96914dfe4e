"""Pair-mining benchmark: tte_recsys (polars) vs a straightforward pandas implementation.

Synthetic log: N interactions, Zipf-distributed item popularity, users with ~50 interactions,
timestamps with ~15% ties. Both implementations compute the same thing (window pairs over tie
groups, symmetric, counted per period between two cut-offs) and the outputs are compared.
Each implementation runs in its own subprocess, so its peak RSS is its own.

    python bench/pairs.py [--n 10000000] [--window 5]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time

import numpy as np


def synthetic_log(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    n_users, n_items = max(n // 50, 1), max(n // 50, 10)
    user = rng.integers(0, n_users, n, dtype=np.int32)
    item = (rng.zipf(1.3, n) - 1) % n_items
    # hour resolution over ~2 weeks: ~15% of a user's consecutive events share a timestamp
    ts = (rng.integers(0, 300, n) * 3600 + 1_600_000_000).astype(np.int64)
    perm = rng.permutation(n)
    return {"user": user[perm], "item": item[perm].astype(np.int32), "ts": ts[perm]}


def ours(log: dict[str, np.ndarray], window: int, cuts: list[int]) -> tuple[int, int]:
    import polars as pl

    from tte_recsys.config import PairConfig
    from tte_recsys.data.pairs import mine_pairs

    df = pl.DataFrame({"user_idx": log["user"], "item_idx": log["item"], "timestamp": log["ts"]})
    df = df.with_columns(pl.lit(None, dtype=pl.Float64).alias("weight"))
    out = mine_pairs(df, PairConfig(window=window), cutoffs=cuts)
    return out.height, int(out["count"].sum())


def pandas_peer(log: dict[str, np.ndarray], window: int, cuts: list[int]) -> tuple[int, int]:
    import pandas as pd

    df = pd.DataFrame(log).sort_values(["user", "ts", "item"], kind="stable").reset_index(drop=True)
    df["pos"] = np.arange(len(df))
    df["gid"] = (df["user"].ne(df["user"].shift()) | df["ts"].ne(df["ts"].shift())).cumsum()
    g = (
        df.groupby("gid")
        .agg(user=("user", "first"), ts=("ts", "first"), start=("pos", "min"), end=("pos", "max"))
        .reset_index()
    )
    hops = []
    for hop in range(1, window):
        nxt = g.shift(-hop)
        ok = (nxt["user"] == g["user"]) & (nxt["start"] - g["end"] <= window - 1)
        hops.append(
            pd.DataFrame({"ga": g["gid"][ok].to_numpy(), "gb": nxt["gid"][ok].astype(np.int64).to_numpy()})
        )
    gp = pd.concat(hops)
    m = df[["gid", "item", "ts"]]
    within = m.merge(m, on="gid")
    within = within[within["item_x"] < within["item_y"]]
    within = pd.DataFrame({"a": within["item_x"], "b": within["item_y"], "ts": within["ts_x"]})
    across = gp.merge(m, left_on="ga", right_on="gid").merge(m, left_on="gb", right_on="gid")
    across = across[across["item_x"] != across["item_y"]]
    across = pd.DataFrame(
        {
            "a": np.minimum(across["item_x"], across["item_y"]),
            "b": np.maximum(across["item_x"], across["item_y"]),
            "ts": across["ts_y"],
        }
    )
    occ = pd.concat([within, across], ignore_index=True)
    occ["period"] = sum((occ["ts"] > c).astype(np.int8) for c in cuts)
    res = occ.groupby(["a", "b", "period"]).agg(count=("ts", "size"), first_ts=("ts", "min"))
    return len(res), int(res["count"].sum())


def child(impl: str, n: int, window: int) -> None:
    log = synthetic_log(n)
    cuts = [int(np.quantile(log["ts"], 0.8)), int(np.quantile(log["ts"], 0.9))]
    t0 = time.perf_counter()
    rows, total = (ours if impl == "ours" else pandas_peer)(log, window, cuts)
    secs = time.perf_counter() - t0
    rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    print(json.dumps({"impl": impl, "seconds": secs, "peak_rss_gb": rss_gb, "rows": rows, "total": total}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000_000)
    ap.add_argument("--window", type=int, default=5)
    ap.add_argument("--child", choices=["ours", "pandas"])
    a = ap.parse_args()
    if a.child:
        child(a.child, a.n, a.window)
        return
    res = {}
    for impl in ("ours", "pandas"):
        r = subprocess.run(
            [sys.executable, __file__, "--child", impl, "--n", str(a.n), "--window", str(a.window)],
            capture_output=True,
            text=True,
            check=True,
        )
        res[impl] = json.loads(r.stdout.strip().splitlines()[-1])
    o, p = res["ours"], res["pandas"]
    same = (o["rows"], o["total"]) == (p["rows"], p["total"])
    print(
        f"pair mining, {a.n:,} synthetic interactions, window {a.window}, symmetric, 3 periods "
        f"({platform.machine()}, {platform.python_version()})"
    )
    print(f"{'impl':8} {'seconds':>9} {'peak RSS GB':>12} {'pair rows':>12} {'occurrences':>13}")
    for name, r in res.items():
        print(f"{name:8} {r['seconds']:9.2f} {r['peak_rss_gb']:12.2f} {r['rows']:12,} {r['total']:13,}")
    print(
        f"speed-up ours vs pandas: {p['seconds'] / o['seconds']:.1f}x (target >= 5x); "
        f"outputs identical: {same}; our peak RSS {o['peak_rss_gb']:.2f} GB (target < 4 GB)"
    )
    if not same:
        sys.exit("outputs differ")


if __name__ == "__main__":
    main()
