"""Method options: the checks their dataclasses run, and building one from keyword arguments.

Each method has a frozen options dataclass (:class:`~ddcal.distill.dm.DMOptions`,
:class:`~ddcal.distill.dc.DCOptions`, :class:`~ddcal.distill.mtt.MTTOptions`)
whose ``__post_init__`` validates every field with these checks, so a bad value
is refused when the distiller is configured, with the option's name and value.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any, TypeVar

from ddcal.augment import dsa_from_strategy
from ddcal.errors import InvalidTypeError, InvalidValueError

T = TypeVar("T")

#: The largest learning rate of the synthetic images: MTT's reference goes up to 1e5
#: (ZCA'd CIFAR-10); far beyond that the first update throws the images out of any data range.
MAX_IMAGE_LR = 1e6
#: The largest SGD step size of network weights (``lr_net``, ``lr_teacher``) and of MTT's
#: learned step size (``lr_lr``): the references use at most 0.01.
MAX_STEP_SIZE = 10.0


def _check_number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidTypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    return float(value)


def check_rate(value: Any, name: str, maximum: float) -> None:
    """A learning rate: a finite number ``> 0`` and ``<= maximum``."""
    number = _check_number(value, name)
    if not (math.isfinite(number) and number > 0):
        raise InvalidValueError(f"{name} must be a finite number > 0, got {value!r}")
    if number > maximum:
        raise InvalidValueError(
            f"{name} must be at most {maximum:g}, got {value!r}: a step that large diverges"
        )


def check_momentum(value: Any, name: str) -> None:
    """An SGD momentum in ``[0, 1)``."""
    if not 0.0 <= _check_number(value, name) < 1.0:
        raise InvalidValueError(f"{name} must be in [0, 1), got {value!r}")


def check_count(value: Any, name: str, minimum: int = 1) -> None:
    """An int ``>= minimum``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidTypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise InvalidValueError(f"{name} must be an int >= {minimum}, got {value!r}")


def check_strategy(value: Any, name: str) -> None:
    """A DSA strategy (groups joined by ``"_"``) or ``"none"``."""
    try:
        dsa_from_strategy(value)
    except (InvalidTypeError, InvalidValueError) as exc:
        raise InvalidValueError(f"{name}: {exc}") from exc


def build_options(options_type: type[T], values: Mapping[str, Any], method: str) -> T:
    """``options_type(**values)``; names it has no field for are an error listing those it has.

    Args:
        options_type: a dataclass (keyword-only fields).
        values: option values, the method's defaults for this configuration
            overridden by what the user gave.
        method: the method's name, for the message.
    """
    names = [field.name for field in dataclasses.fields(options_type)]  # type: ignore[arg-type]
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise InvalidValueError(
            f"unknown option(s) {unknown} for {method!r}; it takes {sorted(names)}"
        )
    return options_type(**values)
