"""tte_recsys: item-to-item retrieval with a TorchRec multi-task model and a Think-Then-Embed tower."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

__all__ = ["__version__"]

try:  # the one version is pyproject.toml's, read from the installed package's metadata
    __version__ = version("tte_recsys")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"
