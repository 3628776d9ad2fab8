"""The one distillation loop, whatever the method: iterate, check, show progress, checkpoint.

A method contributes a :class:`DistillationStep`: its optimiser, one iteration
on the synthetic images, any state of its own beyond the images and the
optimiser (MTT's learned step size), and the packaging of the result.
:func:`run_distillation` drives it: it resumes from a checkpoint, stops on a
non-finite loss (:class:`DivergenceError`), shows a progress bar, writes checkpoints,
and holds Ctrl-C until the iteration under way ends (then saves and raises
``KeyboardInterrupt``). Under ``torchrun`` every process runs the loop on the same
images; process 0 alone shows progress and writes the checkpoints.
"""

from __future__ import annotations

import math
import signal
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from types import FrameType
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ddcal import distributed
from ddcal.data.distilled import DistilledSet
from ddcal.distill.checkpoint import Checkpoint
from ddcal.errors import DivergenceError, InvalidValueError


def _image_lr(optimizer: torch.optim.Optimizer, synthetic: Tensor) -> float:
    """The learning rate of the parameter group that holds ``synthetic``."""
    return float(
        next(g["lr"] for g in optimizer.param_groups if any(p is synthetic for p in g["params"]))
    )


class DistillationStep(ABC):
    """One method's iteration, typed; built with the real data by the method's distiller."""

    @abstractmethod
    def make_optimizer(self, synthetic: Tensor) -> torch.optim.Optimizer:
        """The optimiser of ``synthetic`` (and of the method's own learnable values)."""

    @abstractmethod
    def step(self, iteration: int, synthetic: Tensor, optimizer: torch.optim.Optimizer) -> float:
        """Iteration ``iteration`` on ``synthetic`` ``(K * ipc, C, H, W)`` (a leaf).

        Updates ``synthetic`` through ``optimizer`` and returns the matching loss.
        Its draws must depend only on the seed and ``iteration`` (see
        :mod:`ddcal._random`), so that a resumed run continues bit for bit.
        """

    def extra_state(self) -> dict[str, Tensor]:
        """What a checkpoint must hold besides the images and the optimiser."""
        return {}

    def load_extra_state(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`extra_state`; a wrong state is an ``InvalidValueError``."""
        if state:
            raise InvalidValueError(f"unexpected extra state {sorted(state)}")

    def package(self, synthetic: Tensor, labels: Tensor, meta: dict[str, Any]) -> DistilledSet:
        """The result: the final ``synthetic`` with its ``labels`` and ``meta``."""
        return DistilledSet(images=synthetic.detach().cpu().clone(), labels=labels, meta=meta)


@contextmanager
def deferred_interrupt() -> Iterator[Callable[[], bool]]:
    """Hold Ctrl-C until the current iteration ends; yields "was it pressed?".

    The loop then checkpoints a consistent state (never half an update) and
    raises ``KeyboardInterrupt``. Outside the main thread signals cannot be
    caught and Ctrl-C acts as usual.
    """
    pressed = False

    def handler(signum: int, frame: FrameType | None) -> None:
        nonlocal pressed
        pressed = True

    if threading.current_thread() is not threading.main_thread():
        yield lambda: False
        return
    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield lambda: pressed
    finally:
        signal.signal(signal.SIGINT, previous)


def _anyone(pressed: bool) -> bool:
    """Whether Ctrl-C reached any process: all stop after the same iteration."""
    if not distributed.is_distributed():
        return pressed
    return bool(distributed.all_reduce_sum(torch.tensor([int(pressed)])).item())


def run_distillation(
    step: DistillationStep,
    synthetic: Tensor,
    *,
    iterations: int,
    checkpoint: Checkpoint | None = None,
    checkpoint_every: int = 100,
    progress: bool = True,
    description: str = "distill",
) -> list[float]:
    """Run ``step`` on ``synthetic`` (a leaf, updated in place) up to ``iterations``.

    With ``checkpoint``, a saved state is resumed first (also one of fewer
    iterations than asked: the run continues from it), and the state is saved
    every ``checkpoint_every`` iterations, at the end and on Ctrl-C.

    Returns:
        The matching loss of every iteration, ``iterations`` values.

    Raises:
        DivergenceError: a loss was NaN or infinite (a ``FloatingPointError``).
        KeyboardInterrupt: Ctrl-C, after the iteration under way and its checkpoint.
    """
    optimizer = step.make_optimizer(synthetic)
    done, history = 0, list[float]()
    if checkpoint is not None and checkpoint.exists():
        done, history = checkpoint.restore(synthetic, optimizer, step, iterations=iterations)
    bar = tqdm(
        total=iterations,
        initial=done,
        desc=description,
        disable=not (progress and distributed.is_main()),
        leave=False,
    )
    try:
        with deferred_interrupt() as interrupted:
            for iteration in range(done, iterations):
                loss = step.step(iteration, synthetic, optimizer)
                if not math.isfinite(loss):
                    raise DivergenceError(
                        f"matching loss became {loss} at iteration {iteration}: the synthetic "
                        f"images diverged; try a lower lr_img (it is "
                        f"{_image_lr(optimizer, synthetic):g})"
                    )
                history.append(loss)
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4g}")
                done = iteration + 1
                stop = _anyone(interrupted())
                due = done % checkpoint_every == 0 or done == iterations
                if checkpoint is not None and (stop or due) and distributed.is_main():
                    checkpoint.save(done, synthetic, optimizer, history, step.extra_state())
                if stop:
                    where = "" if checkpoint is None else f"; checkpoint saved in {checkpoint.path}"
                    raise KeyboardInterrupt(f"interrupted after iteration {done}{where}")
    finally:
        bar.close()
    return history
