"""DM: distribution matching (Zhao & Bilen, WACV 2023).

Every iteration draws a fresh randomly initialised network, frozen, and, class
by class, matches the mean embedding of a real batch with that of the class's
synthetic images, both passed through one siamese DSA draw:
``sum_c || mean embed(aug(real_c)) - mean embed(aug(syn_c)) ||^2``.
The synthetic images are updated by SGD (lr 1.0, momentum 0.5).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor

from ddcal.distill.base import (
    BATCH_STREAM,
    MatchingDistiller,
    derived_generator,
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


class DMDistiller(MatchingDistiller):
    """Distribution matching behind the :class:`~ddcal.distill.Distiller` protocol.

    Options (reference values): ``lr_img`` 1.0, ``momentum`` 0.5,
    ``batch_real`` 256, ``dsa_strategy`` ``"color_crop_cutout_flip_scale_rotate"``
    (``"none"`` to switch DSA off), ``width`` 128 (ConvNet width).
    """

    method: ClassVar[str] = "dm"
    DEFAULT_ITERATIONS: ClassVar[int] = 20000
    DEFAULTS: ClassVar[dict[str, Any]] = {
        "lr_img": 1.0,
        "momentum": 0.5,
        "batch_real": 256,
        "dsa_strategy": "color_crop_cutout_flip_scale_rotate",
        "width": 128,
    }

    def match(self, synthetic: Tensor, real: Tensor, network: ConvNet) -> Tensor:
        return dm_loss(synthetic, real, network)

    def make_optimizer(self, synthetic: Tensor) -> torch.optim.Optimizer:
        return torch.optim.SGD(
            [synthetic], lr=self.options["lr_img"], momentum=self.options["momentum"]
        )

    def step(self, iteration: int, synthetic: Tensor, optimizer: torch.optim.Optimizer) -> float:
        network = self.build_network(iteration)
        network.train()
        network.requires_grad_(False)
        loss = torch.zeros((), device=self.device)
        for c in range(self.num_classes):
            generator = derived_generator(self.seed, BATCH_STREAM, iteration, c)
            real, syn = self.real_and_synthetic_batch(synthetic, c, generator)
            loss = loss + self.objective(syn, real, network)
        optimizer.zero_grad(set_to_none=True)
        torch.autograd.backward(loss)
        optimizer.step()
        return float(loss.detach())
