"""MMEB-V2 evaluation: the task registry, readers of the published layout, cached data-parallel
encoding, deterministic scoring and the report (``python -m pipelines.eval_mmeb``)."""
