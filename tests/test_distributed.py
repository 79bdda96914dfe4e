"""Device choice from the launcher's environment (the CUDA branches run in tests/test_gpu.py)."""

from __future__ import annotations

import pytest
import torch

from tte_recsys.distributed import local_device, resolve_device


def test_device_choice_without_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    if torch.cuda.is_available():  # asked here, not at collection (tests/test_gpu.py says why)
        pytest.skip("the CPU-only answers")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert local_device() == torch.device("cpu") == resolve_device("auto") == resolve_device("cpu")
    for name in ("cuda", "cuda:1"):
        with pytest.raises(RuntimeError, match=rf"device='{name}' but CUDA is not available"):
            resolve_device(name)


def test_unknown_device_is_named() -> None:
    with pytest.raises(ValueError, match=r"device='gpu': expected auto, cpu, cuda or cuda:N"):
        resolve_device("gpu")
