"""Experiments: the library's workflows, above every component they combine.

:mod:`~tte_recsys.experiment.stages` holds the shared catalog stages (reasoning traces, item
vectors); :mod:`~tte_recsys.experiment.i2i` the I2I experiment of ``pipelines.train_i2i`` as
separately callable steps (prepare, train one variant, select on valid, train the references,
score, assemble the report). Pipelines compose a config, call these and write the artifacts.
"""
