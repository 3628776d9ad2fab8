"""Batched evaluation-mode forward passes, data loaders in, and files of saved predictions.

:func:`predict_logits` computes logits once, in eval mode, without autograd,
from tensors or streamed from a ``torch.utils.data.Dataset`` or ``DataLoader``.
:func:`stack_dataset` reads the ``(image, label)`` pairs of a Dataset or
DataLoader once into two tensors: what the scalers' ``fit`` does with one.
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
from typing import Any, Literal, overload

import numpy as np
import torch
from torch import nn

from ddcal._io import atomic_write, check_format_version, load_weights_only, read_npz
from ddcal._validation import (
    as_tensor,
    check_bool,
    check_labels,
    check_positive_int,
    check_scores,
    data_batches,
    is_data,
    split_batch,
)
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


def _check_logits_finite(logits: torch.Tensor, offset: int, name: str) -> None:
    """Refuse NaN or inf logits, naming the first such sample (``offset`` rows came before)."""
    finite = torch.isfinite(logits).all(dim=1)
    if not bool(finite.all()):
        first = offset + int((~finite).nonzero()[0, 0])
        raise InvalidValueError(
            f"model returned NaN or inf logits for sample {first} of {name}: check its "
            "weights (a diverged training?) and that the images are normalised"
        )


def _check_pair(x: Any, y: Any, name: str, index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The images and labels of batch ``index`` of ``name``, validated as tensors are."""
    where = f"batch {index} of {name}"
    images = check_images(x, f"the images of {where}")
    return images, check_labels(y, f"the labels of {where}", num_samples=images.shape[0])


def checked_batch(batch: Any, name: str, index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The images ``(B, ...)`` and labels ``(B,)`` of batch ``index`` of the loader ``name``.

    ``batch`` must be a pair ``(images, labels)``, validated as tensors are
    (:func:`check_images`, ``check_labels``).
    """
    x, y = split_batch(batch, name, index)
    return _check_pair(x, y, name, index)


def _check_inputs(images: Any, name: str) -> None:
    """Refuse what is neither an array nor a Dataset/DataLoader, naming all four."""
    if not (isinstance(images, (torch.Tensor, np.ndarray)) or is_data(images)):
        raise InvalidTypeError(
            f"{name} must be a torch.Tensor, a numpy.ndarray, or a torch.utils.data.Dataset "
            f"or DataLoader of (image, label) pairs, got {type(images).__name__}"
        )


def stack_dataset(
    data: Any, *, batch_size: int = 256, name: str = "data"
) -> tuple[torch.Tensor, torch.Tensor]:
    """All the ``(image, label)`` pairs of a Dataset or DataLoader, as two tensors, read once.

    What the functions that need every image at once (the scalers' ``fit``,
    :func:`~ddcal.scaling.select_mask_ratio`) do with a Dataset or DataLoader.

    Args:
        data: a ``torch.utils.data.Dataset`` whose items are ``(image, label)``
            (read through ``DataLoader(data, batch_size=batch_size)``, in
            order), or a ``DataLoader`` yielding ``(images, labels)`` batches
            (read as it is: its own batch size, sampler, workers and collate).
        batch_size: items per read of a Dataset; unused for a DataLoader.
        name: the argument's name in error messages.

    Returns:
        ``(images, labels)``: the images ``(N, ...)`` of every batch
        concatenated (floating point, finite, on the batches' device) and their
        int64 labels ``(N,)``, validated batch by batch as tensors are.

    Raises:
        InvalidInputError: ``data`` is not a Dataset or DataLoader, an item or
            batch is not an ``(image, label)`` pair, the images differ in shape
            or are not floating point and finite, a label is not a class index,
            or ``data`` is empty; the message names ``name`` and the item or batch.
    """
    batch_size = check_positive_int(batch_size, "batch_size")
    images: list[torch.Tensor] = []
    labels: list[torch.Tensor] = []
    for index, (raw_images, raw_labels) in enumerate(
        data_batches(data, name, batch_size=batch_size)
    ):
        x, y = _check_pair(raw_images, raw_labels, name, index)
        if images and x.shape[1:] != images[0].shape[1:]:
            raise InvalidValueError(
                f"{name} must yield images of one shape: batch {index} has "
                f"{tuple(x.shape[1:])}, batch 0 {tuple(images[0].shape[1:])}"
            )
        images.append(x)
        labels.append(y.cpu())
    if not images:
        raise InvalidValueError(f"{name} is empty: it yielded no (image, label) pair")
    return torch.cat(images), torch.cat(labels)


def labelled_images(
    images: Any,
    labels: Any,
    *,
    batch_size: int,
    name: str = "images",
    labels_name: str = "labels",
) -> tuple[Any, Any]:
    """``(images, labels)`` given either as two arrays or as one Dataset/DataLoader.

    A Dataset or DataLoader is read once by :func:`stack_dataset` (``labels``
    must then be ``None``); arrays pass through unchanged, for the caller to
    validate.
    """
    _check_inputs(images, name)
    if is_data(images):
        if labels is not None:
            raise InvalidValueError(
                f"{labels_name} must be None when {name} is a {type(images).__name__}: "
                f"the labels come from its (image, label) pairs"
            )
        return stack_dataset(images, batch_size=batch_size, name=name)
    if labels is None:
        raise InvalidTypeError(
            f"{labels_name} is missing: give the labels of {name}, or pass {name} as a "
            "Dataset or DataLoader of (image, label) pairs"
        )
    return images, labels


@overload
def predict_logits(
    model: nn.Module,
    images: Any,
    *,
    batch_size: int = ...,
    device: str | torch.device | None = ...,
    input_transform: Callable[[torch.Tensor], torch.Tensor] | None = ...,
    return_labels: Literal[False] = ...,
) -> torch.Tensor: ...


@overload
def predict_logits(
    model: nn.Module,
    images: Any,
    *,
    batch_size: int = ...,
    device: str | torch.device | None = ...,
    input_transform: Callable[[torch.Tensor], torch.Tensor] | None = ...,
    return_labels: Literal[True],
) -> tuple[torch.Tensor, torch.Tensor]: ...


def predict_logits(
    model: nn.Module,
    images: Any,
    *,
    batch_size: int = 256,
    device: str | torch.device | None = None,
    input_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    return_labels: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Logits of ``model`` on ``images`` in eval mode under ``torch.inference_mode``.

    A Dataset or DataLoader is streamed: each batch goes through the model as it
    is read, and only the logits are kept. The same images in the same batches
    give the same logits, bit for bit, as tensors or as a loader.

    Args:
        model: network mapping ``(B, ...)`` to ``(B, C)``; its mode is restored.
        images: inputs ``(N, ...)``, floating point, finite; or a
            ``torch.utils.data.Dataset`` (read through
            ``DataLoader(images, batch_size=batch_size)``, in order) or a
            ``DataLoader`` (read as it is, its own batches) of ``(image,
            label)`` pairs or of images alone. Moved batch by batch to the
            model's device and cast to its parameters' dtype.
        batch_size: inputs per forward pass (for a DataLoader, its own).
        device: where to run; the model is moved there. Default: the model's device.
        input_transform: applied to each batch (on the model's device) before
            the forward pass, e.g. a mask.
        return_labels: also return the labels of a Dataset or DataLoader of
            ``(image, label)`` pairs, validated as ``(N,)`` class indices.

    Returns:
        Logits ``(N, C)``, finite, on the device of ``images`` (of the loader's
        batches); with ``return_labels=True``, ``(logits, labels)`` with int64
        labels ``(N,)`` on the CPU.

    Raises:
        InvalidInputError: bad arguments, a loader that does not yield images
            (or ``(image, label)`` pairs with ``return_labels``), or a model
            whose output is not finite ``(B, C)`` logits for a batch of ``B``
            inputs.
    """
    check_model(model)
    _check_inputs(images, "images")
    batch_size = check_positive_int(batch_size, "batch_size")
    return_labels = check_bool(return_labels, "return_labels")
    if input_transform is not None and not callable(input_transform):
        raise InvalidTypeError(
            f"input_transform must be callable or None, got {type(input_transform).__name__}"
        )
    if return_labels and not is_data(images):
        raise InvalidValueError(
            "return_labels=True needs images to be a Dataset or DataLoader of (image, label) "
            "pairs: the labels of tensors are the ones you already hold"
        )
    if device is not None:
        model.to(device)
    if is_data(images):
        logits, labels = stream_logits(
            model,
            images,
            name="images",
            batch_size=batch_size,
            input_transform=input_transform,
            labelled=return_labels,
        )
        return (logits, labels) if labels is not None else logits
    inputs = check_images(images)
    run_on = model_device(model)
    dtype = input_dtype(model, inputs)
    outputs: list[torch.Tensor] = []
    with eval_mode(model), torch.inference_mode():
        for batch in torch.split(inputs, batch_size):
            outputs.append(_forward(model, batch, run_on, dtype, input_transform))
            _check_logits_finite(outputs[-1], batch_size * (len(outputs) - 1), "images")
    return torch.cat(outputs)


def stream_logits(
    model: nn.Module,
    data: Any,
    *,
    name: str,
    batch_size: int,
    input_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    labelled: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The logits ``(N, C)`` of a Dataset or DataLoader, a batch at a time, and its labels.

    What :func:`predict_logits` does with one (its arguments checked there),
    the loader named ``name`` in errors. Without ``labelled`` the labels are
    not read and ``None`` is returned for them.
    """
    run_on = model_device(model)
    outputs: list[torch.Tensor] = []
    labels: list[torch.Tensor] = []
    done = 0  # rows of logits so far
    batches = data_batches(data, name, batch_size=batch_size, labelled=labelled)
    with eval_mode(model):
        for index, (x, y) in enumerate(batches):
            if labelled:
                inputs, targets = _check_pair(x, y, name, index)
                labels.append(targets.cpu())
            else:
                inputs = check_images(x, f"the images of batch {index} of {name}")
            dtype = input_dtype(model, inputs, f"the images of batch {index} of {name}")
            with torch.inference_mode():  # not the reading: the labels stay normal tensors
                logits = _forward(model, inputs, run_on, dtype, input_transform)
            _check_logits_finite(logits, done, name)
            done += logits.shape[0]
            outputs.append(logits)
    if not outputs:
        raise InvalidValueError(f"{name} is empty: it yielded no batch")
    return torch.cat(outputs), torch.cat(labels) if labelled else None


def _forward(
    model: nn.Module,
    batch: torch.Tensor,
    device: torch.device,
    dtype: torch.dtype,
    input_transform: Callable[[torch.Tensor], torch.Tensor] | None,
) -> torch.Tensor:
    """The model's checked ``(B, C)`` output on one batch, on the batch's device."""
    inputs = batch.to(device, dtype, non_blocking=True)
    if input_transform is not None:
        inputs = input_transform(inputs)
    return check_model_output(model(inputs), batch.shape[0]).to(batch.device)


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
