"""Batched evaluation-mode forward passes, and files of saved predictions.

:func:`predict_logits` computes logits once, in eval mode, without autograd.
:func:`save_predictions` writes logits and labels to one file;
:func:`load_predictions` reads that file (``torch.load(weights_only=True)``) or
a numpy ``.npz`` archive with arrays ``logits`` and ``labels``.
"""

from __future__ import annotations

import io
import itertools
import os
import pickle
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ddcal._io import atomic_write, check_format_version, load_weights_only, read_npz
from ddcal._validation import as_tensor, check_labels, check_positive_int, check_scores
from ddcal.errors import InputFileNotFoundError, InvalidTypeError, InvalidValueError

#: Format tag and version written by :func:`save_predictions`.
PREDICTIONS_FORMAT = "ddcal-predictions"
PREDICTIONS_FORMAT_VERSION = 1


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (CPU when it has none)."""
    for parameter in model.parameters():
        return parameter.device
    for buffer in model.buffers():
        return buffer.device
    return torch.device("cpu")


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode for the block, then restore its previous mode."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def check_images(images: Any, name: str = "images") -> torch.Tensor:
    """Validate a batch of inputs ``(N, ...)`` with ``N >= 1``, floating point, finite."""
    tensor = as_tensor(images, name)
    if tensor.ndim < 2:
        raise InvalidValueError(f"{name} must have shape (N, ...), got shape {tuple(tensor.shape)}")
    if tensor.shape[0] == 0:
        raise InvalidValueError(f"{name} is empty: got shape {tuple(tensor.shape)}")
    if tensor.numel() == 0:
        raise InvalidValueError(
            f"{name} must hold at least one value per sample, got shape {tuple(tensor.shape)}"
        )
    if tensor.is_complex():
        raise InvalidTypeError(f"{name} must be real floating point, got dtype {tensor.dtype}")
    if not tensor.is_floating_point():
        raise InvalidTypeError(
            f"{name} must be floating point, got dtype {tensor.dtype}: convert and normalise "
            f"them first (e.g. {name}.float() / 255, then the dataset's mean and std)"
        )
    finite = torch.isfinite(tensor)
    if not bool(finite.all()):
        first = int((~finite).reshape(tensor.shape[0], -1).any(dim=1).nonzero()[0, 0])
        raise InvalidValueError(f"{name} must be finite, got NaN or inf in sample {first}")
    return tensor


def check_model(model: Any, name: str = "model") -> nn.Module:
    """Return ``model`` if it is a ``torch.nn.Module`` (TorchScript modules are)."""
    if not isinstance(model, nn.Module):
        raise InvalidTypeError(f"{name} must be a torch.nn.Module, got {type(model).__name__}")
    return model


def model_dtype(model: nn.Module) -> torch.dtype | None:
    """The dtype of the model's first floating-point parameter or buffer (``None`` if none)."""
    for tensor in itertools.chain(model.parameters(), model.buffers()):
        if tensor.is_floating_point():
            return tensor.dtype
    return None


def input_dtype(model: nn.Module, images: torch.Tensor, name: str = "images") -> torch.dtype:
    """The dtype ``images`` enter ``model`` in: its parameters' (their own if it has none).

    A model computes in its parameters' dtype, so images of another float dtype are
    cast; images too large for that dtype would turn into inf and are refused.
    """
    dtype = model_dtype(model) or images.dtype
    if dtype != images.dtype and torch.finfo(dtype).max < torch.finfo(images.dtype).max:
        largest = float(images.abs().amax())
        if largest > torch.finfo(dtype).max:
            raise InvalidValueError(
                f"{name} hold values up to {largest:.4g}, beyond the range of the model's "
                f"{dtype} (max {torch.finfo(dtype).max:.4g}); normalise them first"
            )
    return dtype


def check_model_output(output: Any, num_rows: int) -> torch.Tensor:
    """The model's output on a batch of ``num_rows`` inputs, if it is dense ``(num_rows, C)``
    floating-point logits."""
    if not isinstance(output, torch.Tensor):
        what = (
            f"a {type(output).__name__} of {len(output)}"
            if isinstance(output, (tuple, list, dict))
            else f"a {type(output).__name__}"
        )
        raise InvalidTypeError(
            f"model must return a tensor of logits (N, C), got {what}; wrap it so that its "
            "forward returns the logits alone"
        )
    if output.layout != torch.strided:
        raise InvalidTypeError(
            f"model must return dense logits (N, C), got layout {output.layout}; "
            "call .to_dense() in its forward"
        )
    if output.ndim != 2 or output.shape[0] != num_rows:
        raise InvalidValueError(
            f"model must return logits of shape (N, C), got shape {tuple(output.shape)} "
            f"for a batch of {num_rows} inputs"
        )
    if not output.is_floating_point():
        raise InvalidTypeError(f"model must return floating-point logits, got dtype {output.dtype}")
    return output


def predict_logits(
    model: nn.Module,
    images: Any,
    *,
    batch_size: int = 256,
    device: str | torch.device | None = None,
    input_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Logits of ``model`` on ``images`` in eval mode under ``torch.inference_mode``.

    Args:
        model: network mapping ``(B, ...)`` to ``(B, C)``; its mode is restored.
        images: inputs ``(N, ...)``, floating point, finite; moved batch by batch to
            the model's device and cast to its parameters' dtype.
        batch_size: inputs per forward pass.
        device: where to run; the model is moved there. Default: the model's device.
        input_transform: applied to each batch (on the model's device) before
            the forward pass, e.g. a mask.

    Returns:
        Logits ``(N, C)`` on the device of ``images``, finite.

    Raises:
        InvalidInputError: bad arguments, or a model whose output is not finite
            ``(B, C)`` logits for a batch of ``B`` inputs.
    """
    check_model(model)
    inputs = check_images(images)
    batch_size = check_positive_int(batch_size, "batch_size")
    if input_transform is not None and not callable(input_transform):
        raise InvalidTypeError(
            f"input_transform must be callable or None, got {type(input_transform).__name__}"
        )
    if device is not None:
        model.to(device)
    device = model_device(model)
    dtype = input_dtype(model, inputs)
    outputs = []
    with eval_mode(model), torch.inference_mode():
        for batch in torch.split(inputs, batch_size):
            num_rows = batch.shape[0]
            batch = batch.to(device, dtype, non_blocking=True)
            if input_transform is not None:
                batch = input_transform(batch)
            output = check_model_output(model(batch), num_rows)
            outputs.append(output.to(inputs.device))
    logits = torch.cat(outputs)
    finite = torch.isfinite(logits).all(dim=1)
    if not bool(finite.all()):
        first = int((~finite).nonzero()[0, 0])
        raise InvalidValueError(
            f"model returned NaN or inf logits for sample {first} of images: check its "
            "weights (a diverged training?) and that the images are normalised"
        )
    return logits


def check_plain_extra(extra: Mapping[str, Any] | None, name: str) -> dict[str, Any]:
    """``extra`` as a plain dict (``{}`` for ``None``) that a ``weights_only`` load reads back.

    Metadata saved beside tensors must hold only what a ``weights_only`` load
    rebuilds (``str`` keys; ``None``, bool, int, float, str, tensors, and lists,
    tuples and dicts of them): checked by saving and loading it in memory.
    """
    if extra is None:
        return {}
    if not isinstance(extra, Mapping):
        raise InvalidTypeError(f"{name} must be a dict or None, got {type(extra).__name__}")
    plain = dict(extra)
    if not all(isinstance(key, str) for key in plain):
        raise InvalidTypeError(f"{name} keys must be str, got {sorted(map(repr, plain))}")
    buffer = io.BytesIO()
    torch.save(plain, buffer)
    buffer.seek(0)
    try:
        torch.load(buffer, weights_only=True)
    except pickle.UnpicklingError as exc:
        detail = str(exc).partition("WeightsUnpickler error:")[2].strip()
        reason = detail.split("\n", 1)[0].split(". ", 1)[0]
        raise InvalidTypeError(
            f"{name} must hold only plain values and tensors (None, bool, int, float, str, "
            f"tensors, lists, tuples, dicts), which torch.load(weights_only=True) reads back; "
            f"{reason or 'it refused this value'}"
        ) from exc
    return plain


def _checked_predictions(logits: Any, labels: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """``(N, C)`` floating logits and ``(N,)`` int64 labels in ``[0, C)``, or an error."""
    scores = as_tensor(logits, "logits")
    if not scores.is_floating_point():
        raise InvalidTypeError(f"logits must be floating point, got dtype {scores.dtype}")
    scores = check_scores(scores, "logits", from_logits=True)
    targets = check_labels(
        labels, "labels", num_samples=scores.shape[0], num_classes=scores.shape[1]
    )
    return scores, targets


def save_predictions(
    path: str | os.PathLike[str],
    logits: Any,
    labels: Any,
    *,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write logits and labels to ``path`` atomically; returns the path.

    The file is a ``torch.save`` dict: ``format`` (``"ddcal-predictions"``),
    ``version`` (1), ``logits`` (``(N, C)`` floating, CPU), ``labels``
    (``(N,)`` int64) and ``extra``; it loads with
    ``torch.load(path, weights_only=True)`` and with :func:`load_predictions`.

    Args:
        path: the file to write; its folder must exist.
        logits: ``(N, C)`` finite floating logits (tensor or numpy array);
            float16/bfloat16 are stored as float32.
        labels: ``(N,)`` class indices in ``[0, C)``.
        extra: metadata (model, dataset, seed, ...): ``str`` keys, plain
            values and tensors, in lists, tuples and dicts.
    """
    scores, targets = _checked_predictions(logits, labels)
    metadata = check_plain_extra(extra, "extra")
    target = Path(path).expanduser()
    if not target.parent.is_dir():
        raise InputFileNotFoundError(
            f"cannot save to {target}: folder {target.parent} does not exist"
        )
    payload = {
        "format": PREDICTIONS_FORMAT,
        "version": PREDICTIONS_FORMAT_VERSION,
        "logits": scores.detach().cpu(),
        "labels": targets.cpu(),
        "extra": metadata,
    }
    with atomic_write(target) as handle:
        torch.save(payload, handle)
    return target


def _read_torch(path: Path) -> Any:
    content = load_weights_only(path)
    if isinstance(content, dict) and "format" in content:
        if content["format"] != PREDICTIONS_FORMAT:
            raise InvalidValueError(
                f"{path} has format tag {content['format']!r}, not {PREDICTIONS_FORMAT!r}"
            )
        check_format_version(
            content, path, what="predictions format", current=PREDICTIONS_FORMAT_VERSION
        )
    return content


def load_predictions(path: str | os.PathLike[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits ``(N, C)`` and int64 labels ``(N,)`` read from a predictions file.

    Args:
        path: a file from :func:`save_predictions` (or any ``torch.save`` dict
            with tensors ``logits`` and ``labels``), read with
            ``torch.load(weights_only=True)``; or, when the name ends in
            ``.npz``, a numpy archive with arrays ``logits`` and ``labels``
            (read with ``allow_pickle=False``).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: unreadable file, missing ``logits`` or ``labels``, a foreign
            ``format`` tag or newer version, logits not ``(N, C)`` finite, or
            labels not ``(N,)`` class indices in ``[0, C)``; the message names
            the path.
        TypeError: logits not floating point or labels not integer.
    """
    source = Path(path).expanduser()
    if not source.is_file():
        raise InputFileNotFoundError(f"predictions file {source} does not exist or is not a file")
    content = read_npz(source) if source.suffix.lower() == ".npz" else _read_torch(source)
    if not isinstance(content, dict) or not {"logits", "labels"} <= set(content):
        found = (
            f"keys {sorted(map(str, content))}"
            if isinstance(content, dict)
            else f"a {type(content).__name__}"
        )
        raise InvalidValueError(
            f"{source} must hold 'logits' (N, C) and 'labels' (N,), got {found}"
        )
    try:
        scores, targets = _checked_predictions(content["logits"], content["labels"])
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"{source}: {exc}") from exc
    return scores, targets
