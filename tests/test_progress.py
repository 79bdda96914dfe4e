from __future__ import annotations

import io
import sys

import pytest

from tte_recsys.progress import LOG_INTERVAL_S, progress


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_bars_redraw_rarely_into_a_log_and_as_usual_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    log = io.StringIO()
    monkeypatch.setattr(sys, "stderr", log)
    bar = progress(range(1000), file=log)
    assert bar.mininterval == LOG_INTERVAL_S
    assert sum(1 for _ in bar) == 1000
    assert progress(range(3), mininterval=1.0, file=log).mininterval == 1.0  # explicit wins

    term = _Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    assert progress(range(3), file=term).mininterval == 0.1  # tqdm's own default


def test_inside_a_kernel_bars_keep_tqdms_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """A notebook kernel's stderr is no terminal, yet its bars are widgets that should move; an
    imported ipykernel (jupyter_client imports it) without a running kernel changes nothing."""
    import types

    log = io.StringIO()
    monkeypatch.setattr(sys, "stderr", log)
    monkeypatch.setitem(sys.modules, "ipykernel", types.ModuleType("ipykernel"))
    assert progress(range(3), file=log).mininterval == LOG_INTERVAL_S
    shell = types.SimpleNamespace(kernel=object())
    monkeypatch.setitem(sys.modules, "IPython", types.SimpleNamespace(get_ipython=lambda: shell))
    assert progress(range(3), file=log).mininterval == 0.1
