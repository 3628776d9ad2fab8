"""The errors ddcal raises for what a user gave it.

Every argument, setting or file that ddcal rejects raises a subclass of
:class:`InvalidInputError`, which is also the matching built-in type
(``ValueError``, ``TypeError``, ``FileNotFoundError``), so ``except ValueError``
keeps working. The ``ddcal`` command prints these as one line (exit code 2)
and treats any other exception as a bug in ddcal (traceback, exit code 1).
"""

from __future__ import annotations

__all__ = [
    "DivergenceError",
    "InputFileNotFoundError",
    "InvalidInputError",
    "InvalidTypeError",
    "InvalidValueError",
]


class InvalidInputError(Exception):
    """An argument, setting or file given to ddcal is wrong; the message says which and why."""


class InvalidValueError(InvalidInputError, ValueError):
    """A value is out of range, of the wrong shape or inconsistent with another."""


class InvalidTypeError(InvalidInputError, TypeError):
    """A value has the wrong type."""


class InputFileNotFoundError(InvalidInputError, FileNotFoundError):
    """A file or folder the user named does not exist."""


class DivergenceError(InvalidValueError, FloatingPointError):
    """A distillation's matching loss became NaN or infinite: its options (mostly
    ``lr_img``) are too aggressive for this data. Also a ``FloatingPointError``."""
