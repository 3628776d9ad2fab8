"""Distillation backbones behind one :class:`Distiller` protocol, with MDT.

``get_distiller("dm", ipc=10, mdt_ratio=0.5).distill(images, labels)`` returns
a :class:`~ddcal.data.DistilledSet`.
"""

from __future__ import annotations

from typing import Any

from ddcal.distill.base import Distiller, MatchingDistiller, derived_generator
from ddcal.distill.dc import DCDistiller, DSADistiller, dc_distance
from ddcal.distill.dm import DMDistiller, dm_loss
from ddcal.distill.experts import ExpertTrajectories, import_reference_buffers, train_experts
from ddcal.distill.mtt import MTTDistiller

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
    ``progress``) plus the method's options; an unknown option is an error.
    """
    if name not in DISTILLERS:
        raise ValueError(f"name must be one of {sorted(DISTILLERS)}, got {name!r}")
    return DISTILLERS[name](ipc=ipc, **kwargs)


__all__ = [
    "DISTILLERS",
    "DCDistiller",
    "DMDistiller",
    "DSADistiller",
    "Distiller",
    "ExpertTrajectories",
    "MTTDistiller",
    "MatchingDistiller",
    "dc_distance",
    "derived_generator",
    "dm_loss",
    "get_distiller",
    "import_reference_buffers",
    "train_experts",
]
