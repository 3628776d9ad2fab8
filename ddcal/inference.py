"""Batched evaluation-mode forward passes: logits computed once, without autograd."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from ddcal._validation import as_tensor, check_positive_int


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
        raise ValueError(f"{name} must have shape (N, ...), got shape {tuple(tensor.shape)}")
    if tensor.shape[0] == 0:
        raise ValueError(f"{name} is empty: got shape {tuple(tensor.shape)}")
    if not tensor.is_floating_point():
        raise TypeError(f"{name} must be floating point, got dtype {tensor.dtype}")
    return tensor


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
        images: inputs ``(N, ...)``, moved batch by batch to the model's device.
        batch_size: inputs per forward pass.
        device: where to run; the model is moved there. Default: the model's device.
        input_transform: applied to each batch (on the model's device) before
            the forward pass, e.g. a mask.

    Returns:
        Logits ``(N, C)`` on the device of ``images``.
    """
    inputs = check_images(images)
    batch_size = check_positive_int(batch_size, "batch_size")
    if device is not None:
        model.to(device)
    device = model_device(model)
    outputs = []
    with eval_mode(model), torch.inference_mode():
        for batch in torch.split(inputs, batch_size):
            batch = batch.to(device, non_blocking=True)
            if input_transform is not None:
                batch = input_transform(batch)
            outputs.append(model(batch).to(inputs.device))
    logits = torch.cat(outputs)
    if logits.ndim != 2:
        raise ValueError(f"model must return logits of shape (N, C), got {tuple(logits.shape)}")
    return logits
