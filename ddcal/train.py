"""The evaluation protocol of the distillation papers: train a network on a (distilled) set.

SGD with momentum 0.9 and weight decay 5e-4, batch 256, the learning rate
multiplied by 0.1 at half the epochs, optional differentiable augmentation (DSA)
on every batch, and the final network reported (never "best on test"). Every
random step (shuffling, augmentation, mixup) draws from one seeded generator.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ddcal._validation import (
    check_bool,
    check_positive_int,
    check_real,
    check_seed,
    check_soft_labels,
)
from ddcal.errors import InvalidTypeError, InvalidValueError
from ddcal.inference import (
    check_images,
    check_model,
    check_model_output,
    input_dtype,
    model_device,
    predict_logits,
)
from ddcal.losses import BatchMixer, get_loss

__all__ = ["predict_logits", "train_network"]

LossFn = Callable[[Tensor, Tensor], Tensor]


def _check_targets(labels: Any, num_samples: int) -> Tensor:
    """Class indices ``(N,)`` as int64, or soft labels ``(N, K)`` (rows of probabilities)."""
    if not isinstance(labels, Tensor):
        raise InvalidTypeError(f"labels must be a torch.Tensor, got {type(labels).__name__}")
    if labels.layout != torch.strided:
        raise InvalidTypeError(
            f"labels must be a dense tensor, got layout {labels.layout}; pass labels.to_dense()"
        )
    if labels.ndim == 0 or labels.shape[0] != num_samples:
        got = labels.shape[0] if labels.ndim else f"shape {tuple(labels.shape)}"
        raise InvalidValueError(f"labels must have one entry per image ({num_samples}), got {got}")
    if labels.ndim == 1:
        if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
            raise InvalidTypeError(
                f"labels of shape (N,) must be class indices, got dtype {labels.dtype}"
            )
        if int(labels.min()) < 0:
            raise InvalidValueError(
                f"labels must be non-negative class indices, got min {int(labels.min())}"
            )
        return labels.long()
    if labels.ndim == 2 and labels.is_floating_point():
        check_soft_labels(labels, "labels")
        return labels
    raise InvalidValueError(
        f"labels must be class indices (N,) or soft labels (N, K), got {labels.dtype} "
        f"{tuple(labels.shape)}"
    )


def _resolve_loss(loss: str | LossFn) -> LossFn:
    if isinstance(loss, str):
        return get_loss(loss)
    if callable(loss):
        return loss
    raise InvalidTypeError(
        f"loss must be a name or a callable(logits, targets), got {type(loss).__name__}"
    )


def train_network(
    net: nn.Module,
    images: Tensor,
    labels: Tensor,
    *,
    epochs: int,
    lr: float = 0.01,
    batch_size: int = 256,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    augment: Callable[..., Tensor] | None = None,
    loss: str | LossFn = "ce",
    seed: int = 0,
    device: str | torch.device | None = None,
    channels_last: bool = False,
    progress: bool = False,
) -> nn.Module:
    """Train ``net`` on ``(images, labels)`` with the reference evaluation protocol.

    Args:
        net: the network, freshly initialised by the caller; trained in place.
        images: ``(N, C, H, W)`` training images (a distilled set or real data),
            finite, of any float dtype (cast to the network's).
        labels: ``(N,)`` class indices or ``(N, K)`` soft labels: rows of
            probabilities (non-negative, each summing to 1), one column per output.
        epochs: passes over the data; the learning rate drops x0.1 after
            ``epochs // 2`` of them (300 for DC, 1000 for DSA/DM/MTT).
        lr: initial learning rate, finite and > 0 (MTT: the learned synthetic lr).
        batch_size, momentum, weight_decay: SGD settings; momentum in ``[0, 1)``,
            weight_decay finite and ``>= 0``.
        augment: applied to every batch as ``augment(x, generator=g)``, e.g.
            ``ddcal.augment.DSA()`` with per-sample parameters.
        loss: ``"ce"``, ``"mixup"`` (Beta(1, 1)), ``"label_smoothing"`` (0.1),
            ``"focal"`` (gamma 3), or any ``callable(logits, targets) -> loss``
            (e.g. ``ddcal.losses.FocalLoss(gamma=2)``); a loss with a ``mix``
            method (``MixupLoss``) rewrites each batch first.
        seed: seeds shuffling, augmentation and mixup, in ``[0, 2**32)`` (not the
            initialisation: seed ``torch.manual_seed`` before building ``net``).
        device: where to train; default the network's device.
        channels_last: train in the channels-last memory format.
        progress: show a progress bar over epochs.

    Returns:
        ``net``, trained, in eval mode.

    Raises:
        InvalidInputError: a bad argument, or a training that diverged (parameters
            NaN or inf at the end: lower ``lr``).
    """
    check_model(net, "net")
    if not any(parameter.requires_grad for parameter in net.parameters()):
        raise InvalidValueError("net has no trainable parameters")
    inputs = check_images(images)
    targets = _check_targets(labels, inputs.shape[0])
    epochs = check_positive_int(epochs, "epochs")
    batch_size = check_positive_int(batch_size, "batch_size")
    lr = check_real(lr, "lr")
    if not lr > 0:
        raise InvalidValueError(f"lr must be > 0, got {lr!r}")
    momentum = check_real(momentum, "momentum")
    if not 0.0 <= momentum < 1.0:
        raise InvalidValueError(f"momentum must be in [0, 1), got {momentum!r}")
    weight_decay = check_real(weight_decay, "weight_decay")
    if not weight_decay >= 0.0:
        raise InvalidValueError(f"weight_decay must be >= 0, got {weight_decay!r}")
    if augment is not None and not callable(augment):
        raise InvalidTypeError(f"augment must be callable or None, got {type(augment).__name__}")
    seed = check_seed(seed)
    channels_last = check_bool(channels_last, "channels_last")
    if channels_last and inputs.ndim != 4:
        raise InvalidValueError(
            f"channels_last needs images of shape (N, C, H, W), got shape {tuple(inputs.shape)}"
        )
    progress = check_bool(progress, "progress")
    criterion = _resolve_loss(loss)
    target_device = torch.device(device) if device is not None else model_device(net)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    net.to(target_device)
    net.to(memory_format=memory_format)  # type: ignore[call-overload]  # missing from the stubs
    dtype = input_dtype(net, inputs)
    inputs = inputs.to(target_device, dtype).contiguous(memory_format=memory_format)
    targets = targets.to(target_device)
    with torch.no_grad():
        num_classes = int(check_model_output(net(inputs[:1]), 1).shape[1])
    if targets.ndim == 1 and int(targets.max()) >= num_classes:
        raise InvalidValueError(
            f"labels must be in [0, {num_classes}), got max {int(targets.max())}"
        )
    if targets.ndim == 2 and targets.shape[1] != num_classes:
        raise InvalidValueError(
            f"soft labels must have one column per class of the network ({num_classes}), "
            f"got shape {tuple(targets.shape)}"
        )

    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.SGD(
        net.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay
    )
    # One epoch has no second half: a milestone at 0 would start at lr x 0.1.
    milestones = [epochs // 2] if epochs >= 2 else []
    schedule = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, gamma=0.1)
    net.train()
    for _ in tqdm(range(epochs), desc="train", disable=not progress, leave=False):
        order = torch.randperm(inputs.shape[0], generator=generator).to(target_device)
        for batch in torch.split(order, batch_size):
            x, y = inputs[batch], targets[batch]
            if augment is not None:
                x = augment(x, generator=generator)
            if isinstance(criterion, BatchMixer):
                x, y = criterion.mix(x, y, num_classes=num_classes, generator=generator)
            optimizer.zero_grad(set_to_none=True)
            torch.autograd.backward(criterion(check_model_output(net(x), x.shape[0]), y))
            optimizer.step()
        schedule.step()
    if not all(bool(torch.isfinite(parameter).all()) for parameter in net.parameters()):
        raise InvalidValueError(
            f"training diverged: the network's parameters became NaN or inf with lr={lr}; "
            "lower lr, or check that the network's outputs on the images are finite"
        )
    return net.eval()
