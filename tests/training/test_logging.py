"""The run logs keep fbgemm-gpu's kernel argument dumps out, and nothing else."""

from __future__ import annotations

import logging

import pytest

import tte_recsys.training.sharding  # noqa: F401 - importing it installs the filter


def test_kernel_dumps_are_dropped_and_other_records_kept(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO):
        logging.info("[TBE=1f2e] SplitTableBatchedEmbeddingBagsCodegen Arguments: {...}")
        logging.info("a root record of another kind")
        logging.getLogger("tte_recsys.training.loop").info("[TBE=...] from a named logger")
    assert [r.getMessage() for r in caplog.records] == [
        "a root record of another kind",
        "[TBE=...] from a named logger",
    ]
