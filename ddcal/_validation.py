"""Input checks shared by the public functions: one place for the error messages.

Every check raises ``ValueError`` (or ``TypeError`` for the wrong kind of object)
naming the argument, what was expected and what came.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, default_collate

from ddcal.errors import InvalidTypeError, InvalidValueError

ArrayLike = torch.Tensor | np.ndarray

_INTEGER_DTYPES = (
    torch.uint8, torch.uint16, torch.uint32, torch.uint64,
    torch.int8, torch.int16, torch.int32, torch.int64,
)  # fmt: skip
_SUM_TOLERANCE = {torch.float16: 1e-2, torch.bfloat16: 1e-2}
_DEFAULT_SUM_TOLERANCE = 1e-3


#: Seeds must lie in ``[0, SEED_LIMIT)``: torch's CPU generator keeps a seed modulo 2**32,
#: so a larger or negative seed would silently repeat the draws of another.
SEED_LIMIT = 2**32


#: Where temperature bounds may lie: the 1-D search for ``T`` converges in its iterations
#: across this range, and a temperature outside it is a unit mistake, not a calibration.
TEMPERATURE_RANGE = (1e-6, 1e6)


def as_tensor(x: Any, name: str) -> torch.Tensor:
    """Return ``x`` as a dense tensor (numpy arrays are wrapped without a copy)."""
    if isinstance(x, torch.Tensor):
        if x.layout != torch.strided:
            raise InvalidTypeError(
                f"{name} must be a dense tensor, got layout {x.layout}; pass {name}.to_dense()"
            )
        if x.is_meta:
            raise InvalidValueError(f"{name} is a meta tensor, which holds no values")
        return x
    if isinstance(x, np.ndarray):
        try:
            # ascontiguousarray turns a 0-d array into shape (1,): the reshape keeps its shape.
            return torch.from_numpy(np.ascontiguousarray(x).reshape(x.shape))
        except TypeError:
            raise InvalidTypeError(
                f"{name} must hold numbers, got a numpy array of dtype {x.dtype}"
            ) from None
    raise InvalidTypeError(
        f"{name} must be a torch.Tensor or numpy.ndarray, got {type(x).__name__}"
    )


def check_score_matrix(x: Any, name: str) -> tuple[torch.Tensor, torch.dtype]:
    """The shape and dtype checks of :func:`check_scores`: the (upcast) matrix and the
    dtype it came in (which sets the tolerance of its row sums)."""
    scores = as_tensor(x, name)
    if scores.ndim != 2:
        raise InvalidValueError(f"{name} must have shape (N, C), got shape {tuple(scores.shape)}")
    if scores.shape[0] == 0:
        raise InvalidValueError(f"{name} is empty: got shape {tuple(scores.shape)}, need N >= 1")
    if scores.shape[1] < 2:
        raise InvalidValueError(
            f"{name} must have at least 2 classes, got shape {tuple(scores.shape)}"
        )
    if not (scores.is_floating_point() or scores.dtype in _INTEGER_DTYPES):
        raise InvalidTypeError(
            f"{name} must be a real floating-point array, got dtype {scores.dtype}"
        )
    in_dtype = scores.dtype
    if scores.dtype not in (torch.float32, torch.float64):
        scores = scores.to(torch.float32)
    return scores, in_dtype


def check_finite_rows(scores: torch.Tensor, row_sums: torch.Tensor, name: str) -> None:
    """Finite entries (read off the row sums; the entries only to name the row)."""
    if not bool(torch.isfinite(row_sums).all()):
        nonfinite_rows = (~torch.isfinite(scores)).any(dim=1)
        if bool(nonfinite_rows.any()):
            row = int(nonfinite_rows.nonzero()[0, 0])
            raise InvalidValueError(f"{name} must be finite, got NaN or inf in row {row}")
        row = int((~torch.isfinite(row_sums)).nonzero()[0, 0])
        raise InvalidValueError(
            f"{name} has values too large to sum in {scores.dtype} in row {row}"
        )


def check_probability_rows(
    row_sums: torch.Tensor, low: float, high: float, in_dtype: torch.dtype, name: str
) -> None:
    """Finite rows of probabilities: entries in ``[low, high]`` within ``[0, 1]``, rows
    summing to 1 within the tolerance of ``in_dtype``."""
    if low < 0.0 or high > 1.0:
        raise InvalidValueError(
            f"{name} must be probabilities in [0, 1], got values in [{low:.4g}, {high:.4g}]; "
            "pass from_logits=True if these are logits"
        )
    tolerance = _SUM_TOLERANCE.get(in_dtype, _DEFAULT_SUM_TOLERANCE)
    deviation = (row_sums - 1.0).abs()
    worst = int(deviation.argmax())
    if float(deviation[worst]) > tolerance:
        raise InvalidValueError(
            f"{name} rows must sum to 1, got {float(row_sums[worst]):.6g} in row {worst}; "
            "pass from_logits=True if these are logits"
        )


def check_scores(x: Any, name: str, *, from_logits: bool) -> torch.Tensor:
    """Validate a ``(N, C)`` matrix of probabilities or logits.

    Returns a floating tensor on the input's device (float16/bfloat16 upcast to
    float32; float32 and float64 kept). Probabilities must lie in ``[0, 1]``
    with rows summing to 1; logits only need to be finite.
    """
    scores, in_dtype = check_score_matrix(x, name)
    row_sums = scores.sum(dim=1)
    check_finite_rows(scores, row_sums, name)
    if from_logits:
        return scores
    # One pass for both extremes (the values are finite here, checked above).
    extremes = torch.aminmax(scores)
    check_probability_rows(row_sums, float(extremes.min), float(extremes.max), in_dtype, name)
    return scores


def check_soft_labels(labels: torch.Tensor, name: str) -> None:
    """Require ``(N, K)`` floating rows of probabilities: finite, non-negative, each summing
    to 1 (within the tolerance of :func:`check_scores`)."""
    if labels.shape[1] == 0:
        raise InvalidValueError(
            f"{name} must have at least one class, got shape {tuple(labels.shape)}"
        )
    values = labels if labels.dtype in (torch.float32, torch.float64) else labels.float()
    if not bool(torch.isfinite(values).all()):
        raise InvalidValueError(f"{name} must be finite, got NaN or inf in the soft labels")
    low = float(values.min())
    if low < 0.0:
        raise InvalidValueError(
            f"{name} must be non-negative (probabilities), got min {low:.4g}; apply softmax "
            "first if they are logits"
        )
    row_sums = values.sum(dim=1)
    deviation = (row_sums - 1.0).abs()
    worst = int(deviation.argmax())
    if float(deviation[worst]) > _SUM_TOLERANCE.get(labels.dtype, _DEFAULT_SUM_TOLERANCE):
        raise InvalidValueError(
            f"{name} rows must sum to 1 (probabilities), got {float(row_sums[worst]):.6g} in "
            f"row {worst}; divide them by their row sums"
        )


def check_labels(
    labels: Any, name: str, *, num_samples: int | None = None, num_classes: int | None = None
) -> torch.Tensor:
    """Validate a ``(N,)`` vector of class indices; returns an int64 tensor."""
    tensor = as_tensor(labels, name)
    if tensor.ndim != 1:
        raise InvalidValueError(f"{name} must have shape (N,), got shape {tuple(tensor.shape)}")
    if tensor.numel() == 0:
        raise InvalidValueError(f"{name} is empty: need at least one label")
    if tensor.is_floating_point() or tensor.is_complex() or tensor.dtype == torch.bool:
        raise InvalidTypeError(f"{name} must hold integer class indices, got dtype {tensor.dtype}")
    if num_samples is not None and tensor.shape[0] != num_samples:
        raise InvalidValueError(
            f"{name} must have one entry per sample ({num_samples}), got {tensor.shape[0]}"
        )
    tensor = tensor.long()
    low, high = int(tensor.min()), int(tensor.max())
    if low < 0:
        raise InvalidValueError(f"{name} must be non-negative class indices, got min {low}")
    if num_classes is not None and high >= num_classes:
        raise InvalidValueError(f"{name} must be in [0, {num_classes}), got max {high}")
    return tensor


def check_positive_int(
    value: Any, name: str, *, minimum: int = 1, maximum: int | None = None
) -> int:
    """Return ``value`` as an int, requiring ``minimum <= value`` (and ``value <= maximum``)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise InvalidTypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise InvalidValueError(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise InvalidValueError(f"{name} must be <= {maximum}, got {value}")
    return int(value)


def check_real(value: Any, name: str) -> float:
    """Return ``value`` as a finite float (bools refused)."""
    real = (int, float, np.integer, np.floating)
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, real):
        raise InvalidTypeError(
            f"{name} must be a real number, got {type(value).__name__} {value!r}"
        )
    number = float(value)
    if not math.isfinite(number):
        raise InvalidValueError(f"{name} must be finite, got {value!r}")
    return number


def check_choice(value: Any, name: str, choices: tuple[str, ...]) -> str:
    """Return ``value`` if it is one of ``choices``."""
    if value not in choices:
        raise InvalidValueError(
            f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}"
        )
    return str(value)


def check_bool(value: Any, name: str) -> bool:
    """Return ``value`` if it is a ``bool`` (ints such as 0/1 are refused)."""
    if not isinstance(value, (bool, np.bool_)):
        raise InvalidTypeError(f"{name} must be a bool, got {type(value).__name__} {value!r}")
    return bool(value)


def check_open_interval(value: Any, name: str, low: float, high: float) -> float:
    """Return ``value`` as a float, requiring ``low < value < high``."""
    real = (int, float, np.integer, np.floating)
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, real):
        raise InvalidTypeError(
            f"{name} must be a real number, got {type(value).__name__} {value!r}"
        )
    number = float(value)
    if not low < number < high:
        raise InvalidValueError(f"{name} must be in ({low:g}, {high:g}), got {value!r}")
    return number


def check_bounds(bounds: Any) -> tuple[float, float]:
    try:
        low, high = (float(v) for v in bounds)
    except (TypeError, ValueError):
        raise InvalidTypeError(
            f"bounds must be a pair (low, high) of floats, got {bounds!r}"
        ) from None
    smallest, largest = TEMPERATURE_RANGE
    if not (0.0 < low < high and smallest <= low and high <= largest):
        raise InvalidValueError(
            f"bounds must satisfy 0 < low < high < inf, both in [{smallest:g}, {largest:g}], "
            f"got {bounds!r}"
        )
    return low, high


def check_seed(seed: Any, name: str = "seed") -> int:
    """Return ``seed`` as an int in ``[0, SEED_LIMIT)``."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise InvalidTypeError(f"{name} must be an int, got {type(seed).__name__} {seed!r}")
    if seed < 0:
        raise InvalidValueError(f"{name} must be >= 0, got {seed}; seeds are in [0, 2**32)")
    if seed >= SEED_LIMIT:
        raise InvalidValueError(
            f"{name} must be < 2**32, got {seed}: torch's generator keeps seeds modulo 2**32, "
            f"so it would repeat the draws of seed {seed % SEED_LIMIT}"
        )
    return int(seed)


def _memory_bytes(device: torch.device) -> int | None:
    """The memory of ``device`` (physical RAM for the CPU), or ``None`` where unknown."""
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory)
    if device.type == "cpu" and hasattr(os, "sysconf"):
        try:
            return int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
        except (ValueError, OSError):
            return None
    return None


def check_memory(num_bytes: int, device: torch.device, what: str, advice: str) -> None:
    """Refuse an allocation of more than half the memory of ``device``.

    Such a request is a mistake (a typo'd count), and granting it ends in the
    kernel killing the process, not in an error the user can read.
    """
    memory = _memory_bytes(device)
    if memory is not None and num_bytes > memory // 2:
        raise InvalidValueError(
            f"{what} need {num_bytes / 2**30:.3g} GiB, more than half the "
            f"{memory / 2**30:.3g} GiB of {device.type} memory; {advice}"
        )


# --------------------------------------------------------------------------- #
# Datasets and data loaders: the one place that reads them.
# --------------------------------------------------------------------------- #


def is_data(x: Any) -> bool:
    """Whether ``x`` is a ``torch.utils.data.Dataset`` or ``DataLoader``."""
    return isinstance(x, (Dataset, DataLoader))


def describe(x: Any) -> str:
    """What ``x`` is, for an error message: ``a Tensor of shape (2, 3)``, ``a tuple of 3``."""
    if isinstance(x, (torch.Tensor, np.ndarray)):
        return f"a {type(x).__name__} of shape {tuple(x.shape)}"
    if isinstance(x, (tuple, list, dict)):
        return f"a {type(x).__name__} of {len(x)}"
    return f"a {type(x).__name__}"


def _is_pair(x: Any, labelled: bool) -> bool:
    """``(x, y)``; without ``labelled`` also ``(x,)`` or a bare array."""
    if isinstance(x, (tuple, list)):
        return len(x) == 2 or (not labelled and len(x) == 1)
    return not labelled and isinstance(x, (torch.Tensor, np.ndarray))


def _expected(pair: str, labelled: bool) -> str:
    return f"{pair} pairs" if labelled else f"{pair} pairs or of images alone"


class _ItemCollate:
    """``default_collate`` of the items of a Dataset, each first checked to be a pair.

    Errors name the item by its index in the Dataset: the loader that calls this is
    sequential and in-process, so the items arrive in order.
    """

    def __init__(self, name: str, pair: str, labelled: bool) -> None:
        self.name, self.pair, self.labelled = name, pair, labelled
        self.start = 0

    def __call__(self, items: list[Any]) -> Any:
        start, self.start = self.start, self.start + len(items)
        for offset, item in enumerate(items):
            if not _is_pair(item, self.labelled):
                raise InvalidTypeError(
                    f"{self.name} must be a Dataset of {_expected(self.pair, self.labelled)}, "
                    f"got {describe(item)} as item {start + offset}"
                )
        try:
            return default_collate(items)
        except (RuntimeError, TypeError) as exc:
            raise InvalidValueError(
                f"{self.name}: items {start} to {start + len(items) - 1} do not stack into "
                f"one batch (each part of an item must be an array or number, of one shape "
                f"in every item): {exc}"
            ) from None


def split_batch(
    batch: Any, name: str, index: int, *, pair: str = "(image, label)", labelled: bool = True
) -> tuple[Any, Any]:
    """``(x, y)`` of batch ``index`` of the loader ``name``, if it is a pair.

    Without ``labelled`` a batch of ``x`` alone (an array, or a 1-tuple as from
    ``TensorDataset(images)``) is ``(x, None)``.
    """
    if not _is_pair(batch, labelled):
        raise InvalidTypeError(
            f"{name} must yield batches of {_expected(pair, labelled)}, got {describe(batch)} "
            f"as batch {index}"
        )
    if isinstance(batch, (tuple, list)):
        return batch[0], batch[1] if len(batch) == 2 else None
    return batch, None


def data_batches(
    data: Any, name: str, *, batch_size: int, pair: str = "(image, label)", labelled: bool = True
) -> Iterator[tuple[Any, Any]]:
    """The batches ``(x, y)`` of a Dataset or DataLoader, checked to be pairs.

    A DataLoader is read as it is (its own batch size, sampler, workers and
    collate); a Dataset through ``DataLoader(data, batch_size=batch_size)``, in
    order, its items checked one by one. Only the structure is checked here; the
    caller validates the values. Without ``labelled``, batches of ``x`` alone
    are accepted, as in :func:`split_batch`.
    """
    if not is_data(data):
        raise InvalidTypeError(
            f"{name} must be a torch.utils.data.Dataset or DataLoader, got {type(data).__name__}"
        )
    loader = (
        data
        if isinstance(data, DataLoader)
        else DataLoader(data, batch_size=batch_size, collate_fn=_ItemCollate(name, pair, labelled))
    )
    for index, batch in enumerate(loader):
        yield split_batch(batch, name, index, pair=pair, labelled=labelled)
