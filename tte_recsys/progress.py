"""Progress bars that suit where they are shown.

A bar redrawn every 0.1 s (tqdm's default) is right on a terminal. Where stderr is a file (a CI
log, ``nohup``, a batch scheduler) every redraw is another line of text, and a 10-minute training
writes thousands of them. There the bars redraw at most every 30 s; in a terminal or a notebook
nothing changes.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any

from tqdm.auto import tqdm

__all__ = ["LOG_INTERVAL_S", "progress"]

LOG_INTERVAL_S = 30.0


def _in_kernel() -> bool:
    """Running inside a Jupyter kernel (ipykernel merely imported, as jupyter_client does, is not)."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    return getattr(shell, "kernel", None) is not None


def progress(iterable: Iterable[Any] | None = None, **kwargs: Any) -> tqdm[Any]:
    """``tqdm(iterable, **kwargs)``, with ``mininterval`` 30 s when stderr is not a terminal."""
    if not sys.stderr.isatty() and not _in_kernel():
        kwargs.setdefault("mininterval", LOG_INTERVAL_S)
    return tqdm(iterable, **kwargs)
