"""DM: distribution matching (Zhao & Bilen, WACV 2023).

Every iteration draws a fresh randomly initialised network, frozen, and, class
by class, matches the mean embedding of a real batch with that of the class's
synthetic images, both passed through one siamese DSA draw:
``sum_c || mean embed(aug(real_c)) - mean embed(aug(syn_c)) ||^2``.
The synthetic images are updated by SGD (lr 1.0, momentum 0.5). With MDT the
augmented synthetic batch of class ``c`` is masked with the mask of ``(t, c)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor

from ddcal.augment import DEFAULT_STRATEGY, dsa_from_strategy
from ddcal.distill.base import DistillationContext, MatchingDistiller
from ddcal.distill.loop import DistillationStep
from ddcal.distill.options import (
    MAX_IMAGE_LR,
    check_count,
    check_momentum,
    check_rate,
    check_strategy,
)
from ddcal.models import ConvNet


def dm_loss(synthetic: Tensor, real: Tensor, network: ConvNet) -> Tensor:
    """``|| mean embed(real) - mean embed(synthetic) ||^2`` (real features without gradient).

    Args:
        synthetic: ``(n, C, H, W)`` synthetic images of one class.
        real: ``(m, C, H, W)`` real images of the same class.
        network: a network with ``embed(x) -> (N, D)``.
    """
    with torch.no_grad():
        real_mean = network.embed(real).mean(dim=0)
    synthetic_mean = network.embed(synthetic).mean(dim=0)
    return ((real_mean - synthetic_mean) ** 2).sum()


@dataclass(frozen=True, kw_only=True)
class DMOptions:
    """DM's options, at the reference values.

    Attributes:
        lr_img: SGD learning rate of the images.
        momentum: SGD momentum of the images.
        batch_real: real images per class and iteration.
        dsa_strategy: siamese augmentation of both batches (``"none"``: off).
        width: channels of the ConvNet.
    """

    lr_img: float = 1.0
    momentum: float = 0.5
    batch_real: int = 256
    dsa_strategy: str = DEFAULT_STRATEGY
    width: int = 128

    def __post_init__(self) -> None:
        check_rate(self.lr_img, "lr_img", MAX_IMAGE_LR)
        check_momentum(self.momentum, "momentum")
        check_count(self.batch_real, "batch_real")
        check_strategy(self.dsa_strategy, "dsa_strategy")
        check_count(self.width, "width")


class DMStep(DistillationStep):
    """One DM iteration: a fresh frozen network, every class matched once."""

    def __init__(self, context: DistillationContext, options: DMOptions) -> None:
        self.context = context
        self.options = options
        self.augment = dsa_from_strategy(options.dsa_strategy)
        self.objective = context.masked(dm_loss)

    def make_optimizer(self, synthetic: Tensor) -> torch.optim.Optimizer:
        return torch.optim.SGD([synthetic], lr=self.options.lr_img, momentum=self.options.momentum)

    def step(self, iteration: int, synthetic: Tensor, optimizer: torch.optim.Optimizer) -> float:
        context = self.context
        network = context.network(iteration, self.options.width)
        network.train()
        network.requires_grad_(False)
        loss = torch.zeros((), device=context.device)
        for c in context.own_classes():
            generator = context.batch_generator(iteration, c)
            real, syn = context.class_batches(
                synthetic, c, self.options.batch_real, self.augment, generator
            )
            loss = loss + self.objective((iteration, c), syn, real, network)
        optimizer.zero_grad(set_to_none=True)
        if loss.requires_grad:  # a process may own no class (more processes than classes)
            torch.autograd.backward(loss)
        total = context.combine_gradients(synthetic, loss)
        optimizer.step()
        return float(total)


class DMDistiller(MatchingDistiller):
    """Distribution matching behind the :class:`~ddcal.distill.Distiller` protocol.

    Options: the fields of :class:`DMOptions` (``lr_img`` 1.0, ``momentum`` 0.5,
    ``batch_real`` 256, ``dsa_strategy`` ``"color_crop_cutout_flip_scale_rotate"``,
    ``width`` 128).
    """

    method: ClassVar[str] = "dm"
    compiles: ClassVar[bool] = True
    DEFAULT_ITERATIONS: ClassVar[int] = 20000
    options_type: ClassVar[type[Any]] = DMOptions
    options: DMOptions

    def make_step(self, context: DistillationContext, checkpoint_dir: Path | None) -> DMStep:
        return DMStep(context, self.options)
