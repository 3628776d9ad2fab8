"""Distillation backbones behind one :class:`Distiller` protocol, with MDT.

``get_distiller("dm", ipc=10, mdt_ratio=0.5).distill(images, labels)`` returns
a :class:`~ddcal.data.DistilledSet`.
"""

from __future__ import annotations

from typing import Any

from ddcal.distill.base import Distiller, MatchingDistiller, derived_generator
from ddcal.distill.dm import DMDistiller, dm_loss

DISTILLERS: dict[str, type[MatchingDistiller]] = {"dm": DMDistiller}


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
    "DMDistiller",
    "Distiller",
    "MatchingDistiller",
    "derived_generator",
    "dm_loss",
    "get_distiller",
]
