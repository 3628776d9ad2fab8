"""Distillation checkpoints: the state after some iterations, tied to its configuration and data.

A checkpoint holds the synthetic images, the optimiser state, the loss
history, the method's extra state and the *identity* it was written under: the
distiller's :attr:`~ddcal.distill.base.MatchingDistiller.config` plus
``"data"``, the digest of the real images and labels. Restoring it requires the
same identity except ``iterations``: a run asking for more iterations than the
checkpoint holds continues from it (the draws of an iteration depend only on
the seed and its number, so the result is that of one uninterrupted run), one
asking for fewer is refused. Files are written atomically and read with
:func:`ddcal._io.load_weights_only`; a corrupt, empty, foreign or mis-shaped file
is an ``InvalidValueError`` naming it. A write killed midway leaves only a
temporary file, which the next write or resume of the same checkpoint removes;
a write that fails (a full disk) leaves the previous checkpoint as it was.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import torch
from torch import Tensor

from ddcal._io import atomic_write, load_weights_only, remove_stale_temporaries
from ddcal.errors import InvalidValueError

if TYPE_CHECKING:
    from ddcal.distill.loop import DistillationStep

CHECKPOINT_NAME = "checkpoint.pt"
FORMAT = "ddcal-distillation-checkpoint"
#: 4: the random streams of ddcal._random version 3 (3: version 2); a checkpoint of
#: other draws is not continued.
VERSION = 4
# Asking for another number of iterations is continuing, not another configuration.
_CONTINUABLE = frozenset({"iterations"})
_ABSENT = "<absent>"
# A configuration holds plain scalars (the distiller's settings and the data digest).
_PLAIN = (type(None), bool, int, float, str)
# What torch's Optimizer.load_state_dict raises on a state of the wrong structure.
_OPTIMIZER_STATE_ERRORS = (
    ValueError,
    KeyError,
    TypeError,
    RuntimeError,
    AttributeError,
    IndexError,
)


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
        """Write the state after ``iteration`` iterations, atomically.

        Raises:
            OSError: the write failed (a full disk), with the file's name; the
                previous checkpoint, if any, is left as it was.
        """
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
        remove_stale_temporaries(self.path)
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
        except (InvalidValueError, TypeError, RuntimeError) as exc:
            self._refuse(str(exc))
        return done, state["history"].tolist()

    def _refuse(self, problem: str) -> NoReturn:
        raise InvalidValueError(
            f"{self.path} is not a usable distillation checkpoint: {problem}; delete it or use "
            "another checkpoint_dir to start over"
        )

    def _read(self) -> dict[str, Any]:
        try:
            state = load_weights_only(self.path)
        except InvalidValueError as exc:
            raise InvalidValueError(
                f"{exc}; or delete it, or use another checkpoint_dir, to start over"
            ) from exc
        if not isinstance(state, dict) or not _is_plain_equal(state.get("format"), FORMAT):
            self._refuse(f"not a {FORMAT!r} file (or one written by an older ddcal)")
        if not _is_plain_equal(state.get("version"), VERSION):
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
            if not isinstance(state.get(key), kind) or isinstance(state.get(key), bool):
                self._refuse(f"{key!r} must be a {kind.__name__}, got {type(state.get(key))}")
        config = state["config"]
        if not all(isinstance(k, str) and isinstance(v, _PLAIN) for k, v in config.items()):
            self._refuse("'config' must map names to plain values (None, bool, int, float, str)")
        done, history = state["iteration"], state["history"]
        if done < 0 or history.shape != (done,):
            self._refuse(f"{done} iterations with a loss history of shape {tuple(history.shape)}")
        return state

    def _load_optimizer(self, optimizer: torch.optim.Optimizer, saved: dict[str, Any]) -> None:
        fresh_groups = [dict(group) for group in optimizer.param_groups]
        try:
            optimizer.load_state_dict(saved)
        except _OPTIMIZER_STATE_ERRORS as exc:
            self._refuse(f"optimizer state does not fit ({exc})")
        for fresh, group in zip(fresh_groups, optimizer.param_groups, strict=True):
            for name in (fresh.keys() & group.keys()) - {"params"}:
                if type(group[name]) is not type(fresh[name]):
                    self._refuse(
                        f"optimizer setting {name} is {group[name]!r}, expected a "
                        f"{type(fresh[name]).__name__}"
                    )
        for group in optimizer.param_groups:
            for param in group["params"]:
                for name, value in optimizer.state[param].items():
                    if not isinstance(value, Tensor):
                        self._refuse(f"optimizer {name} must be a tensor, got {type(value)}")
                    if value.ndim > 0 and value.shape != param.shape:
                        self._refuse(
                            f"optimizer {name} of shape {tuple(value.shape)} for a parameter "
                            f"of shape {tuple(param.shape)}"
                        )


def _is_plain_equal(value: Any, expected: str | int) -> bool:
    """``value == expected`` for a value of the same plain type (a tensor compares elementwise)."""
    return type(value) is type(expected) and value == expected
