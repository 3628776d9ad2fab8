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

from ddcal._validation import check_positive_int
from ddcal.errors import InvalidTypeError, InvalidValueError
from ddcal.inference import check_images, model_device, predict_logits
from ddcal.losses import BatchMixer, get_loss

__all__ = ["predict_logits", "train_network"]

LossFn = Callable[[Tensor, Tensor], Tensor]


def _check_targets(labels: Any, num_samples: int) -> Tensor:
    """Class indices ``(N,)`` as int64, or soft labels ``(N, K)`` as float."""
    if not isinstance(labels, Tensor):
        raise InvalidTypeError(f"labels must be a torch.Tensor, got {type(labels).__name__}")
    if labels.shape[0] != num_samples:
        raise InvalidValueError(
            f"labels must have one entry per image ({num_samples}), got {labels.shape[0]}"
        )
    if labels.ndim == 1:
        if labels.is_floating_point():
            raise InvalidTypeError(
                f"labels of shape (N,) must be class indices, got dtype {labels.dtype}"
            )
        if int(labels.min()) < 0:
            raise InvalidValueError(
                f"labels must be non-negative class indices, got min {int(labels.min())}"
            )
        return labels.long()
    if labels.ndim == 2 and labels.is_floating_point():
        if not bool(torch.isfinite(labels).all()):
            raise InvalidValueError("labels must be finite, got NaN or inf in the soft labels")
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
        images: ``(N, C, H, W)`` training images (a distilled set or real data).
        labels: ``(N,)`` class indices or ``(N, K)`` soft labels.
        epochs: passes over the data; the learning rate drops x0.1 after
            ``epochs // 2`` of them (300 for DC, 1000 for DSA/DM/MTT).
        lr: initial learning rate (MTT: the learned synthetic lr).
        batch_size, momentum, weight_decay: SGD settings.
        augment: applied to every batch as ``augment(x, generator=g)``, e.g.
            ``ddcal.augment.DSA()`` with per-sample parameters.
        loss: ``"ce"``, ``"mixup"`` (Beta(1, 1)), ``"label_smoothing"`` (0.1),
            ``"focal"`` (gamma 3), or any ``callable(logits, targets) -> loss``
            (e.g. ``ddcal.losses.FocalLoss(gamma=2)``); a loss with a ``mix``
            method (``MixupLoss``) rewrites each batch first.
        seed: seeds shuffling, augmentation and mixup (not the initialisation:
            seed ``torch.manual_seed`` before building ``net``).
        device: where to train; default the network's device.
        channels_last: train in the channels-last memory format.
        progress: show a progress bar over epochs.

    Returns:
        ``net``, trained, in eval mode.
    """
    inputs = check_images(images)
    targets = _check_targets(labels, inputs.shape[0])
    epochs = check_positive_int(epochs, "epochs")
    batch_size = check_positive_int(batch_size, "batch_size")
    if not lr > 0:
        raise InvalidValueError(f"lr must be > 0, got {lr!r}")
    criterion = _resolve_loss(loss)
    target_device = torch.device(device) if device is not None else model_device(net)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    net.to(target_device)
    net.to(memory_format=memory_format)  # type: ignore[call-overload]  # missing from the stubs
    inputs = inputs.to(target_device).contiguous(memory_format=memory_format)
    targets = targets.to(target_device)
    with torch.no_grad():
        num_classes = int(net(inputs[:1]).shape[1])
    if targets.ndim == 1 and int(targets.max()) >= num_classes:
        raise InvalidValueError(
            f"labels must be in [0, {num_classes}), got max {int(targets.max())}"
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
            torch.autograd.backward(criterion(net(x), y))
            optimizer.step()
        schedule.step()
    return net.eval()
