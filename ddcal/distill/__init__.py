"""Distillation backbones behind one :class:`Distiller` protocol, with MDT.

``get_distiller("dm", ipc=10, mdt_ratio=0.5).distill(images, labels)`` returns
a :class:`~ddcal.data.DistilledSet`. Each method is a typed step
(:class:`DistillationStep`) with a frozen options dataclass, driven by one loop
(:func:`run_distillation`).
"""

from __future__ import annotations

from typing import Any

from ddcal._random import derived_generator
from ddcal.distill.base import DistillationContext, Distiller, MatchingDistiller
from ddcal.distill.checkpoint import Checkpoint
from ddcal.distill.dc import DCDistiller, DCOptions, DSADistiller, dc_distance, gradient_match
from ddcal.distill.dm import DMDistiller, DMOptions, dm_loss
from ddcal.distill.experts import ExpertTrajectories, import_reference_buffers, train_experts
from ddcal.distill.loop import DistillationStep, run_distillation
from ddcal.distill.mtt import MTTDistiller, MTTOptions, student_loss
from ddcal.distill.real import RealData, data_digest
from ddcal.errors import InvalidValueError

DISTILLERS: dict[str, type[MatchingDistiller]] = {
    "dc": DCDistiller,
    "dsa": DSADistiller,
    "dm": DMDistiller,
    "mtt": MTTDistiller,
}


def get_distiller(name: str, *, ipc: int, **kwargs: Any) -> MatchingDistiller:
    """The distiller called ``name`` (see :data:`DISTILLERS`), configured.

    Keyword arguments are those of :class:`~ddcal.distill.base.MatchingDistiller`
    (``iterations``, ``net``, ``init``, ``mdt_ratio``, ``seed``, ``device``,
    ``progress``) plus the fields of the method's options dataclass (and
    ``experts`` for MTT); an unknown option is an error.
    """
    if name not in DISTILLERS:
        raise InvalidValueError(f"name must be one of {sorted(DISTILLERS)}, got {name!r}")
    return DISTILLERS[name](ipc=ipc, **kwargs)


__all__ = [
    "DISTILLERS",
    "Checkpoint",
    "DCDistiller",
    "DCOptions",
    "DMDistiller",
    "DMOptions",
    "DSADistiller",
    "DistillationContext",
    "DistillationStep",
    "Distiller",
    "ExpertTrajectories",
    "MTTDistiller",
    "MTTOptions",
    "MatchingDistiller",
    "RealData",
    "data_digest",
    "dc_distance",
    "derived_generator",
    "dm_loss",
    "get_distiller",
    "gradient_match",
    "import_reference_buffers",
    "run_distillation",
    "student_loss",
    "train_experts",
]
