"""The main job: ``python -m pipelines.train_i2i [data=...] [experiment=...] [debug=tiny]``.

Splits the log by time; gets the content vectors (the embedding job, after the reasoner's traces
when one is configured); trains the MTMH model for each lambda of ``select.lams`` and the
reference models (one head with lambda = 0; id-only); chooses lambda, the id prior, the
popularity prior and the serving quota on the valid split; scores everything against the
classical baselines on test, fit on train and (the headline) refit on train + valid. Writes ``quota_tradeoff.png``, the chosen model's unsharded export
(``export/``), ``report.json`` and ``report.md``. The steps are :mod:`tte_recsys.experiment.i2i`.
Runs under ``torchrun`` (pass ``hydra.run.dir``).
"""

from __future__ import annotations

from typing import Any

import hydra
from omegaconf import DictConfig

from tte_recsys import distributed
from tte_recsys.evaluation.quota import plot_tradeoff
from tte_recsys.evaluation.report import write_report
from tte_recsys.experiment import i2i
from tte_recsys.runs import check_overrides, cli, finish_run, output_dir
from tte_recsys.training.sharding import process_group


def run(cfg: DictConfig) -> dict[str, Any]:
    rank, world = process_group()
    out = output_dir(cfg)
    exp = i2i.prepare(cfg, out, rank, world)
    grid = i2i.train_grid(exp)
    choice = i2i.select(exp, grid)
    refs = i2i.train_references(exp, choice)
    final = i2i.refit(exp, grid, choice, refs)  # None with eval.refit=false
    report: dict[str, Any] = {}
    if rank == 0:
        scores = i2i.score(exp, grid, choice, refs, final)
        title = f"lambda={choice.lam:g}, id prior {choice.shrink:g}, pop prior {choice.pop:g}, age prior {choice.age:g}"
        plot_tradeoff(
            out / "quota_tradeoff.png",
            scores.valid_curve,
            scores.test_curve,
            exp.cfg.eval.select_k,
            choice.share,
            title=f"{exp.ds.name}: MTMH quota sweep ({title})",
        )
        i2i.export_chosen(exp, grid, choice, out / "export", final)
        report = i2i.assemble_report(exp, grid, choice, refs, scores, final)
        table = write_report(out, report, title=f"MTMH I2I: {exp.ds.name}")
        finish_run(out, "train_i2i", cfg)
        print(table)
    distributed.barrier()
    return report


@hydra.main(version_base="1.3", config_path="../configs", config_name="train_i2i")
def main(cfg: DictConfig) -> None:
    cli(run, cfg)


if __name__ == "__main__":
    check_overrides("train_i2i")
    main()
