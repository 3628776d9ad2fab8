"""Distillation checkpoints: the state after some iterations, tied to its configuration and data.

A checkpoint holds the synthetic images, the optimiser state, the loss
history, the method's extra state and the *identity* it was written under: the
distiller's :attr:`~ddcal.distill.base.MatchingDistiller.config` plus
``"data"``, the digest of the real images and labels. Restoring it requires the
same identity except ``iterations``: a run asking for more iterations than the
checkpoint holds continues from it (the draws of an iteration depend only on
the seed and its number, so the result is that of one uninterrupted run), one
asking for fewer is refused. Files are written atomically and read with
:func:`ddcal._io.load_weights_only`; a corrupt, foreign or mis-shaped file is an
``InvalidValueError`` naming it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import torch
from torch import Tensor

from ddcal._io import atomic_write, load_weights_only
from ddcal.errors import InvalidValueError

if TYPE_CHECKING:
    from ddcal.distill.loop import DistillationStep

CHECKPOINT_NAME = "checkpoint.pt"
FORMAT = "ddcal-distillation-checkpoint"
VERSION = 2
# Asking for another number of iterations is continuing, not another configuration.
_CONTINUABLE = frozenset({"iterations"})
_ABSENT = "<absent>"


def configuration_differences(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """``"key: checkpoint <saved>, now <current>"`` for each key whose values differ."""
    keys = sorted((set(saved) | set(current)) - _CONTINUABLE)
    return [
        f"{key}: checkpoint {saved.get(key, _ABSENT)!r}, now {current.get(key, _ABSENT)!r}"
        for key in keys
        if saved.get(key, _ABSENT) != current.get(key, _ABSENT)
    ]


class Checkpoint:
    """The checkpoint file ``<folder>/checkpoint.pt`` of a run with ``identity``.

    Args:
        folder: the run's checkpoint folder (created on the first save).
        identity: plain values that determine the result (configuration and data digest).
    """

    def __init__(self, folder: str | Path, identity: Mapping[str, Any]) -> None:
        self.path = Path(folder) / CHECKPOINT_NAME
        self.identity = dict(identity)

    def exists(self) -> bool:
        return self.path.exists()

    def save(
        self,
        iteration: int,
        synthetic: Tensor,
        optimizer: torch.optim.Optimizer,
        history: list[float],
        extra: Mapping[str, Tensor],
    ) -> None:
        """Write the state after ``iteration`` iterations, atomically."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        state = {
            "format": FORMAT,
            "version": VERSION,
            "config": self.identity,
            "iteration": iteration,
            "synthetic": synthetic.detach().cpu(),
            "optimizer": optimizer.state_dict(),
            "history": torch.tensor(history, dtype=torch.float64),
            "extra": dict(extra),
        }
        with atomic_write(self.path) as handle:
            torch.save(state, handle)

    def restore(
        self,
        synthetic: Tensor,
        optimizer: torch.optim.Optimizer,
        step: DistillationStep,
        *,
        iterations: int,
    ) -> tuple[int, list[float]]:
        """Load the file into ``synthetic``, ``optimizer`` and ``step``.

        Returns:
            ``(iterations done, loss history)``.

        Raises:
            InvalidValueError: naming the file, when it is not a readable checkpoint
                of this shape, was written under another identity (naming each
                differing key with both values), or holds more than ``iterations``.
        """
        state = self._read()
        differences = configuration_differences(state["config"], self.identity)
        if differences:
            raise InvalidValueError(
                f"checkpoint {self.path} was written with another configuration ("
                + "; ".join(differences)
                + "): use another checkpoint_dir or the same settings"
            )
        done = state["iteration"]
        if done > iterations:
            raise InvalidValueError(
                f"checkpoint {self.path} holds {done} iterations, more than iterations="
                f"{iterations}: ask for at least {done}, or use another checkpoint_dir"
            )
        saved = state["synthetic"]
        if saved.shape != synthetic.shape or saved.dtype != synthetic.dtype:
            self._refuse(
                f"synthetic images {tuple(saved.shape)} {saved.dtype}, expected "
                f"{tuple(synthetic.shape)} {synthetic.dtype}"
            )
        with torch.no_grad():
            synthetic.copy_(saved)
        self._load_optimizer(optimizer, state["optimizer"])
        try:
            step.load_extra_state(state["extra"])
        except InvalidValueError as exc:
            self._refuse(str(exc))
        return done, state["history"].tolist()

    def _refuse(self, problem: str) -> NoReturn:
        raise InvalidValueError(f"{self.path} is not a usable distillation checkpoint: {problem}")

    def _read(self) -> dict[str, Any]:
        state = load_weights_only(self.path)
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            self._refuse(f"not a {FORMAT!r} file (or one written by an older ddcal)")
        if state.get("version") != VERSION:
            self._refuse(f"version {state.get('version')!r}, this ddcal reads {VERSION}")
        expected = {
            "config": dict,
            "iteration": int,
            "synthetic": Tensor,
            "optimizer": dict,
            "history": Tensor,
            "extra": dict,
        }
        for key, kind in expected.items():
            if not isinstance(state.get(key), kind):
                self._refuse(f"{key!r} must be a {kind.__name__}, got {type(state.get(key))}")
        done, history = state["iteration"], state["history"]
        if done < 0 or history.shape != (done,):
            self._refuse(f"{done} iterations with a loss history of shape {tuple(history.shape)}")
        return state

    def _load_optimizer(self, optimizer: torch.optim.Optimizer, saved: dict[str, Any]) -> None:
        try:
            optimizer.load_state_dict(saved)
        except (ValueError, KeyError, TypeError, RuntimeError) as exc:
            self._refuse(f"optimizer state does not fit ({exc})")
        for group in optimizer.param_groups:
            for param in group["params"]:
                for name, value in optimizer.state[param].items():
                    if isinstance(value, Tensor) and value.ndim > 0 and value.shape != param.shape:
                        self._refuse(
                            f"optimizer {name} of shape {tuple(value.shape)} for a parameter "
                            f"of shape {tuple(param.shape)}"
                        )
