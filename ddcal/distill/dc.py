"""DC and DSA: gradient matching (Zhao et al., ICLR 2021; Zhao & Bilen, ICML 2021).

Every iteration draws a freshly initialised network and runs ``outer_loop`` outer
steps. In each outer step, class by class, the gradient of the cross-entropy on a
real batch of the class (``batch_real`` images) is matched with the gradient on
the class's synthetic images by :func:`dc_distance`; the distances are summed over
the classes and the synthetic images take one SGD step (``lr_img``, momentum 0.5).
Then, except after the last outer step, the network trains ``inner_loop`` epochs
on a detached copy of the synthetic set (plain SGD ``lr_net``, batches of
``batch_train``), so the next outer step matches gradients of a network further
along its training. The network is the same through the outer steps of one
iteration, as in the reference ``main.py``: a new one is drawn per iteration.

DSA is the same with differentiable siamese augmentation: the real and the
synthetic batch of a class get one shared draw per outer step, and the inner
network training augments every sample with its own draw.

MDT masks the (augmented) synthetic batch of class ``c`` in outer step ``o`` of
iteration ``t`` with the mask of ``(t, o, c)``; the inner network training sees
the synthetic set unmasked.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from ddcal._random import TRAIN_STREAM, derived_generator
from ddcal.augment import DEFAULT_STRATEGY, dsa_from_strategy
from ddcal.distill.base import DistillationContext, MatchingDistiller
from ddcal.distill.loop import DistillationStep
from ddcal.distill.options import (
    MAX_IMAGE_LR,
    MAX_STEP_SIZE,
    check_count,
    check_momentum,
    check_rate,
    check_strategy,
)
from ddcal.errors import InvalidValueError
from ddcal.models import ConvNet

# The reference's ``get_loops``: IPC -> (outer_loop, inner_loop).
DC_LOOPS: dict[int, tuple[int, int]] = {
    1: (1, 1),
    10: (10, 50),
    20: (20, 25),
    30: (30, 20),
    40: (40, 15),
    50: (50, 10),
}

_EPS = 1e-6


def dc_loops(ipc: int) -> tuple[int, int]:
    """``(outer_loop, inner_loop)`` of the reference for ``ipc``; other IPCs are an error."""
    if ipc not in DC_LOOPS:
        raise InvalidValueError(
            f"the reference defines outer/inner loops only for ipc in {sorted(DC_LOOPS)}, "
            f"got ipc={ipc}; pass both outer_loop=... and inner_loop=... options"
        )
    return DC_LOOPS[ipc]


def _layer_distance(grad_syn: Tensor, grad_real: Tensor) -> Tensor:
    if grad_syn.shape != grad_real.shape:
        raise InvalidValueError(
            f"gradient shapes differ: {tuple(grad_syn.shape)} vs {tuple(grad_real.shape)}"
        )
    if grad_syn.ndim <= 1:  # biases and normalisation parameters
        return grad_syn.new_zeros(())
    syn = grad_syn.reshape(grad_syn.shape[0], -1)
    real = grad_real.reshape(grad_real.shape[0], -1)
    cosine = (syn * real).sum(dim=-1) / (
        torch.linalg.vector_norm(syn, dim=-1) * torch.linalg.vector_norm(real, dim=-1) + _EPS
    )
    distance: Tensor = (1.0 - cosine).sum()
    return distance


def dc_distance(grads_syn: Sequence[Tensor], grads_real: Sequence[Tensor]) -> Tensor:
    """The reference layer-wise gradient distance (``dis_metric='ours'``).

    Each tensor is reshaped to ``(out, -1)`` (conv ``(out, in, h, w)`` ->
    ``(out, in*h*w)``, linear ``(out, in)`` as is) and contributes
    ``sum over rows of 1 - <s, r> / (|s| |r| + 1e-6)``; 1-D tensors (biases,
    normalisation parameters) contribute 0. The result is the sum over tensors.

    Args:
        grads_syn: gradients on the synthetic batch (may carry a graph).
        grads_real: gradients on the real batch, same shapes, in the same order.
    """
    grads_syn, grads_real = list(grads_syn), list(grads_real)
    if len(grads_syn) != len(grads_real) or not grads_syn:
        raise InvalidValueError(
            "grads_syn and grads_real must be non-empty and of the same length, got "
            f"{len(grads_syn)} and {len(grads_real)}"
        )
    total = _layer_distance(grads_syn[0], grads_real[0])
    for syn, real in zip(grads_syn[1:], grads_real[1:], strict=True):
        total = total + _layer_distance(syn, real)
    return total


def gradient_match(synthetic: Tensor, real: Tensor, network: ConvNet, label: int) -> Tensor:
    """:func:`dc_distance` between the cross-entropy gradients on ``synthetic`` and on ``real``.

    Both batches belong to class ``label``; ``synthetic`` ``(n, C, H, W)`` stays
    differentiable, the gradients on ``real`` ``(m, C, H, W)`` are detached. Only
    the weight tensors (``ndim >= 2``) are differentiated: the 1-D ones
    contribute 0 to the distance, so the value and its gradient are the reference's.
    """
    weights = [p for p in network.parameters() if p.ndim > 1]
    target_real = torch.full((real.shape[0],), label, dtype=torch.long, device=real.device)
    grads_real = torch.autograd.grad(F.cross_entropy(network(real), target_real), weights)
    grads_real = tuple(g.detach() for g in grads_real)
    target_syn = torch.full((synthetic.shape[0],), label, dtype=torch.long, device=synthetic.device)
    grads_syn = torch.autograd.grad(
        F.cross_entropy(network(synthetic), target_syn), weights, create_graph=True
    )
    return dc_distance(grads_syn, grads_real)


@dataclass(frozen=True, kw_only=True)
class DCOptions:
    """DC's options (DSA's too, with a DSA strategy), at the reference values.

    Attributes:
        outer_loop: image updates per iteration (the distiller takes it from
            :data:`DC_LOOPS` by IPC unless given).
        inner_loop: epochs of network training between two image updates (likewise).
        lr_img: SGD learning rate of the images.
        momentum: SGD momentum of the images.
        lr_net: plain SGD learning rate of the inner network training.
        batch_real: real images per class and outer step.
        batch_train: synthetic images per batch of the inner network training.
        dsa_strategy: augmentation (``"none"``: DC; a DSA strategy: DSA).
        width: channels of the ConvNet.
    """

    outer_loop: int
    inner_loop: int
    lr_img: float = 0.1
    momentum: float = 0.5
    lr_net: float = 0.01
    batch_real: int = 256
    batch_train: int = 256
    dsa_strategy: str = "none"
    width: int = 128

    def __post_init__(self) -> None:
        check_count(self.outer_loop, "outer_loop")
        check_count(self.inner_loop, "inner_loop", minimum=0)
        check_rate(self.lr_img, "lr_img", MAX_IMAGE_LR)
        check_momentum(self.momentum, "momentum")
        check_rate(self.lr_net, "lr_net", MAX_STEP_SIZE)
        check_count(self.batch_real, "batch_real")
        check_count(self.batch_train, "batch_train")
        check_strategy(self.dsa_strategy, "dsa_strategy")
        check_count(self.width, "width")


class DCStep(DistillationStep):
    """One DC/DSA iteration: a fresh network, ``outer_loop`` image updates with
    ``inner_loop`` epochs of network training between them."""

    def __init__(self, context: DistillationContext, options: DCOptions) -> None:
        self.context = context
        self.options = options
        self.augment = dsa_from_strategy(options.dsa_strategy)
        self.objective = context.masked(gradient_match)

    def make_optimizer(self, synthetic: Tensor) -> torch.optim.Optimizer:
        return torch.optim.SGD([synthetic], lr=self.options.lr_img, momentum=self.options.momentum)

    def step(self, iteration: int, synthetic: Tensor, optimizer: torch.optim.Optimizer) -> float:
        context, outer_loop = self.context, self.options.outer_loop
        network = context.network(iteration, self.options.width)
        network.train()
        net_optimizer = torch.optim.SGD(network.parameters(), lr=self.options.lr_net)
        total = torch.zeros((), device=context.device)
        for outer in range(outer_loop):
            optimizer.zero_grad(set_to_none=True)
            matched = torch.zeros((), device=context.device)
            for c in context.own_classes():
                generator = context.batch_generator(iteration, outer, c)
                real, syn = context.class_batches(
                    synthetic, c, self.options.batch_real, self.augment, generator
                )
                loss = self.objective((iteration, outer, c), syn, real, network, c)
                # Per-class backward (only into the images): the same gradient as the
                # reference's backward of the class sum, without holding ten graphs.
                torch.autograd.backward(loss, inputs=[synthetic])
                matched += loss.detach()  # no device sync per class
            total += context.combine_gradients(synthetic, matched)
            optimizer.step()
            if outer == outer_loop - 1:
                break
            self.train_network(network, net_optimizer, synthetic, iteration, outer)
        return float(total) / float(context.real.num_classes * outer_loop)

    def train_network(
        self,
        network: ConvNet,
        optimizer: torch.optim.Optimizer,
        synthetic: Tensor,
        iteration: int,
        outer: int,
    ) -> None:
        """``inner_loop`` epochs of the network on a detached copy of the synthetic set
        (shuffled batches of ``batch_train``; per-sample DSA when augmenting; never masked)."""
        images = synthetic.detach().clone()
        labels = self.context.synthetic_labels()
        generator = derived_generator(self.context.seed, TRAIN_STREAM, iteration, outer)
        for _ in range(self.options.inner_loop):
            order = torch.randperm(images.shape[0], generator=generator).to(self.context.device)
            for chosen in torch.split(order, self.options.batch_train):
                x = images[chosen]
                if self.augment is not None:
                    params = self.augment.sample_params(
                        x.shape[0], generator=generator, shared=False, device=self.context.device
                    )
                    x = self.augment(x, params)
                loss = F.cross_entropy(network(x), labels[chosen])
                optimizer.zero_grad(set_to_none=True)
                torch.autograd.backward(loss)
                optimizer.step()


class DCDistiller(MatchingDistiller):
    """Gradient matching (DC) behind the :class:`~ddcal.distill.Distiller` protocol.

    Options: the fields of :class:`DCOptions` (``lr_img`` 0.1, ``momentum`` 0.5,
    ``lr_net`` 0.01, ``batch_real`` 256, ``batch_train`` 256, ``dsa_strategy``
    ``"none"``, ``width`` 128; ``outer_loop``/``inner_loop`` from
    :data:`DC_LOOPS` by IPC, other IPCs need both). The loss reported per
    iteration is the reference's ``loss_avg``: the distance summed over classes
    and outer steps, divided by ``num_classes * outer_loop``.
    """

    method: ClassVar[str] = "dc"
    DEFAULT_ITERATIONS: ClassVar[int] = 1000
    options_type: ClassVar[type[Any]] = DCOptions
    options: DCOptions

    def option_defaults(self, given: Collection[str]) -> dict[str, Any]:
        if {"outer_loop", "inner_loop"} <= set(given):
            return {}
        outer_loop, inner_loop = dc_loops(self.ipc)
        return {"outer_loop": outer_loop, "inner_loop": inner_loop}

    def make_step(self, context: DistillationContext, checkpoint_dir: Path | None) -> DCStep:
        return DCStep(context, self.options)


class DSADistiller(DCDistiller):
    """DC with differentiable siamese augmentation: options as :class:`DCDistiller`,
    ``dsa_strategy`` ``"color_crop_cutout_flip_scale_rotate"``."""

    method: ClassVar[str] = "dsa"

    def option_defaults(self, given: Collection[str]) -> dict[str, Any]:
        return {"dsa_strategy": DEFAULT_STRATEGY, **super().option_defaults(given)}
