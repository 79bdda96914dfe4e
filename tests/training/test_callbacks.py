"""Each piece around the training step on its own, without a model: the loss read-back, the
timer, the progress bar, validation with early stopping, checkpoints, and the loop that runs them
(tests/training/test_loop.py trains through all of them together)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from tte_recsys.training.callbacks import (
    WARMUP_STEPS,
    Callback,
    Checkpointing,
    EarlyStopping,
    LoopState,
    LossReadback,
    ProgressBar,
    Timer,
    mean_over_ranks,
)
from tte_recsys.training.loop import TrainResult, run_steps


def _state(max_steps: int = 10, start: int = 0) -> LoopState:
    result = TrainResult(best_state=None, best_step=-1, best_score=-math.inf)
    return LoopState(result, max_steps, start=start, step=start)


def _terms(loss: float) -> dict[str, torch.Tensor]:
    return {"loss": torch.tensor(loss), "rel": torch.tensor(loss / 2)}


def _steps(s: LoopState, callbacks: list[Callback], n: int, loss: float = 1.0) -> None:
    for _ in range(n):
        for cb in callbacks:
            cb.on_batch_start(s)
        s.end_step(_terms(loss + s.step))
        for cb in callbacks:
            cb.on_step_end(s)


def test_losses_are_read_back_in_order_with_their_steps() -> None:
    s = _state()
    for loss in (3.0, 2.0):
        s.end_step(_terms(loss))
    s.read_losses()
    assert s.result.losses == [
        {"step": 1, "loss": 3.0, "rel": 1.5},
        {"step": 2, "loss": 2.0, "rel": 1.0},
    ]
    assert not s.pending
    assert mean_over_ranks([], 1) == []


def test_a_non_finite_loss_is_named_with_its_step() -> None:
    s = _state()
    for loss in (1.0, float("inf"), 1.0):
        s.end_step(_terms(loss))
    with pytest.raises(FloatingPointError, match="loss is inf at step 2: lower trainer"):
        s.read_losses()


def test_the_read_back_runs_every_n_steps_at_the_budget_and_at_the_end() -> None:
    s, reads = _state(max_steps=10), []
    read = s.read_losses

    def counted() -> None:
        reads.append(s.step)
        read()

    s.read_losses = counted  # type: ignore[method-assign]
    cb = LossReadback(every=4)
    _steps(s, [cb], 10)
    assert reads == [4, 8, 10]
    _steps(s, [cb], 1)  # past the budget (a loop never goes there): pending until the end
    assert len(s.pending) == 1
    cb.on_train_end(s)
    assert [x["step"] for x in s.result.losses] == list(range(1, 12)) and not s.pending


def test_checkpoint_record_restores_the_loop() -> None:
    s = _state()
    _steps(s, [LossReadback(every=1)], 3)
    s.bad, s.result.best_step, s.result.best_score = 2, 1, 0.5
    s.result.valid.append({"step": 1, "recall": 0.5})
    back = _state()
    back.restore(3, s.record())
    assert (back.start, back.step, back.bad) == (3, 3, 2)
    assert (back.result.best_step, back.result.best_score) == (1, 0.5)
    assert back.result.losses == s.result.losses and back.result.valid == s.result.valid


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_timer_counts_fetch_to_step_end_after_the_warmup() -> None:
    clock, s = _Clock(), _state(max_steps=20)
    timer = Timer(clock)

    class Tick(Callback):  # each step takes 1 s before the timer's hook and 5 s after it
        def on_batch_start(self, s: LoopState) -> None:
            clock.now += 1.0

        def on_step_end(self, s: LoopState) -> None:
            clock.now += 5.0

    _steps(s, [timer, Tick()], 8)  # the timer's on_batch_start runs before the tick: 1 s counted
    timer.on_train_end(s)
    assert timer.steps == 8 - WARMUP_STEPS
    assert s.result.steps_per_sec == pytest.approx(1.0)


def test_timer_counts_every_step_of_a_short_run_and_nan_without_time() -> None:
    clock, s = _Clock(), _state(max_steps=WARMUP_STEPS)
    timer = Timer(clock)
    _steps(s, [timer], WARMUP_STEPS)
    assert timer.steps == WARMUP_STEPS
    timer.on_train_end(s)
    assert math.isnan(s.result.steps_per_sec)


def test_progress_bar_counts_steps_from_the_resumed_one() -> None:
    s = _state(max_steps=10, start=4)
    bar = ProgressBar("t", batch_size=8, enabled=True)  # a disabled bar counts nothing
    cbs: list[Callback] = [LossReadback(every=2), bar]
    for cb in cbs:
        cb.on_train_start(s)
    _steps(s, cbs, 3)
    assert bar.bar.n == 7 and bar.shown == len(s.result.losses) == 2
    for cb in cbs:
        cb.on_train_end(s)
    assert bar.shown == 3


def _early(s: LoopState, scores: list[float], tmp_path: Path, patience: int = 2) -> list[int]:
    calls: list[int] = []

    def validate(state: dict[str, torch.Tensor]) -> tuple[float, dict[str, float]]:
        calls.append(s.step)
        assert not s.pending  # the losses are read before the model is validated
        return scores[len(calls) - 1], {"recall": scores[len(calls) - 1]}

    def state() -> dict[str, torch.Tensor]:
        return {"w": torch.full((2,), float(s.step))}

    cb = EarlyStopping(validate, state, every=3, patience=patience, best_path=tmp_path / "best.safetensors")
    while s.step < s.max_steps and not s.stop:
        _steps(s, [cb], 1)
    return calls


def test_early_stopping_keeps_the_best_state_and_stops_after_patience(tmp_path: Path) -> None:
    s = _state(max_steps=30)
    calls = _early(s, [0.1, 0.3, 0.2, 0.25, 0.5], tmp_path)
    assert calls == [3, 6, 9, 12]  # 0.2 and 0.25 do not beat 0.3: patience 2 runs out at step 12
    assert s.stop and s.result.stopped_early and s.bad == 2
    assert (s.result.best_step, s.result.best_score) == (6, 0.3)
    assert s.result.valid == [
        {"step": k, "recall": v} for k, v in zip(calls, [0.1, 0.3, 0.2, 0.25], strict=True)
    ]
    assert s.result.best_state is not None and s.result.best_state["w"].tolist() == [6.0, 6.0]
    assert load_file(str(tmp_path / "best.safetensors"))["w"].tolist() == [6.0, 6.0]


def test_early_stopping_validates_at_the_budgets_last_step(tmp_path: Path) -> None:
    s = _state(max_steps=7)
    assert _early(s, [0.1, 0.2, 0.3], tmp_path) == [3, 6, 7]
    assert not s.result.stopped_early and s.result.best_step == 7


def test_early_stopping_on_other_ranks_takes_the_broadcast_score(tmp_path: Path) -> None:
    """Where the state is not gathered (ranks > 0) nothing is validated or written."""
    s = _state(max_steps=3)
    cb = EarlyStopping(lambda st: pytest.fail("validated off rank 0"), lambda: None, 3, 1, tmp_path / "b")
    _steps(s, [cb], 3)
    assert s.result.valid == [{"step": 3}] and s.result.best_state is None and not (tmp_path / "b").exists()


def test_checkpoints_every_n_steps_and_at_an_early_stop() -> None:
    saved: list[tuple[int, dict[str, Any]]] = []

    class StopAt(Callback):
        def on_step_end(self, s: LoopState) -> None:
            s.stop = s.step == 7

    s = _state(max_steps=20)
    cbs: list[Callback] = [StopAt(), Checkpointing(lambda step, loop: saved.append((step, loop)), every=3)]
    for _ in range(7):
        _steps(s, cbs, 1)
    assert [step for step, _ in saved] == [3, 6, 7]
    assert [x["step"] for x in saved[-1][1]["losses"]] == list(range(1, 8))  # read back before saving
    assert saved[0][1].keys() == {"bad", "best_step", "best_score", "losses", "valid"}


def test_the_loop_runs_hooks_in_order_and_stops_when_asked() -> None:
    events: list[str] = []

    class Spy(Callback):
        def __init__(self, name: str, stop_at: int = 0) -> None:
            self.name, self.stop_at = name, stop_at

        def on_train_start(self, s: LoopState) -> None:
            events.append(f"{self.name}:start")

        def on_batch_start(self, s: LoopState) -> None:
            events.append(f"{self.name}:batch{s.step + 1}")

        def on_step_end(self, s: LoopState) -> None:
            events.append(f"{self.name}:end{s.step}")
            s.stop = s.step == self.stop_at

        def on_train_end(self, s: LoopState) -> None:
            events.append(f"{self.name}:done")

    def loader() -> Iterator[Any]:
        yield from range(100)

    fed: list[Any] = []

    def step(batch: Any) -> dict[str, torch.Tensor]:
        fed.append(batch)
        return _terms(1.0)

    s = _state(max_steps=5)
    run_steps(loader(), step, s, [Spy("a"), Spy("b", stop_at=2)])
    assert fed == [0, 1] and s.step == 2 and len(s.pending) == 2
    assert events == [
        "a:start", "b:start",
        "a:batch1", "b:batch1", "a:end1", "b:end1",
        "a:batch2", "b:batch2", "a:end2", "b:end2",
        "a:done", "b:done",
    ]  # fmt: skip
    s = _state(max_steps=3, start=1)
    run_steps(loader(), step, s, [])
    assert s.step == 3 and len(fed) == 4  # from the resumed step to the budget
