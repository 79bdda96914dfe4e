"""Ask a serving bundle: ``python -m pipelines.query bundle_dir=<path> item_id=<id> [k=10]``."""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from tte_recsys.runs import check_overrides, cli
from tte_recsys.serving.retriever import BundleRetriever, QueryResult


def run(cfg: DictConfig) -> QueryResult:
    if not (isinstance(cfg.k, int) and not isinstance(cfg.k, bool) and cfg.k >= 1):
        raise ValueError(f"k={cfg.k!r}: expected an integer >= 1 (the neighbours to return)")
    if cfg.share is not None and not (
        isinstance(cfg.share, (int, float)) and not isinstance(cfg.share, bool)
    ):
        raise ValueError(
            f"share={cfg.share!r}: expected a number in [0, 1] (K1/K), or null (the trained one)"
        )
    r = BundleRetriever.load(str(cfg.bundle_dir), share=None if cfg.share is None else float(cfg.share))
    result = r.search([str(cfg.item_id)], int(cfg.k))[0]
    if result.error:
        return result
    title = {i: t for i, t in zip(r.item_ids, r.titles, strict=True)}
    print(f"{cfg.item_id}: {title.get(str(cfg.item_id), '')}  (shares {r.shares})")
    print(f"{'rank':>4}  {'score':>7}  {'head':<9} {'item_id':<12} title")
    for n, hit in enumerate(result.hits, 1):
        print(f"{n:>4}  {hit.score:7.4f}  {hit.head:<9} {hit.item_id:<12} {title.get(hit.item_id, '')}")
    return result


@hydra.main(version_base="1.3", config_path="../configs", config_name="query")
def main(cfg: DictConfig) -> None:
    cli(run, cfg, _exit_on_error)


def _exit_on_error(result: QueryResult) -> None:
    if result.error:  # an unknown trigger id: said on stderr, exit status 2
        print(f"error: {result.error}", file=sys.stderr)
        raise SystemExit(2)


if __name__ == "__main__":
    check_overrides("query")
    main()
