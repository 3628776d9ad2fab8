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
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from ddcal._validation import check_positive_int
from ddcal.distill.base import (
    BATCH_STREAM,
    MatchingDistiller,
    derived_generator,
)
from ddcal.models import ConvNet

# Derived-randomness stream of the inner network training (shuffling, DSA draws);
# the base's streams are 0 (init), 1 (networks) and 2 (real batches).
TRAIN_STREAM = 3

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
        raise ValueError(
            f"the reference defines outer/inner loops only for ipc in {sorted(DC_LOOPS)}, "
            f"got ipc={ipc}; pass outer_loop=... and inner_loop=... options"
        )
    return DC_LOOPS[ipc]


def _layer_distance(grad_syn: Tensor, grad_real: Tensor) -> Tensor:
    if grad_syn.shape != grad_real.shape:
        raise ValueError(
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
        raise ValueError(
            "grads_syn and grads_real must be non-empty and of the same length, got "
            f"{len(grads_syn)} and {len(grads_real)}"
        )
    total = _layer_distance(grads_syn[0], grads_real[0])
    for syn, real in zip(grads_syn[1:], grads_real[1:], strict=True):
        total = total + _layer_distance(syn, real)
    return total


def _check_rate(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


class DCDistiller(MatchingDistiller):
    """Gradient matching (DC) behind the :class:`~ddcal.distill.Distiller` protocol.

    Options (reference values): ``lr_img`` 0.1, ``momentum`` 0.5 (of the image
    optimiser), ``lr_net`` 0.01 (plain SGD of the inner network training),
    ``batch_real`` 256, ``batch_train`` 256, ``outer_loop``/``inner_loop``
    (``None``: the reference table by IPC, :data:`DC_LOOPS`; other IPCs need
    both), ``dsa_strategy`` ``"none"`` (a DSA strategy makes it DSA), ``width``
    128 (ConvNet width). The loss reported per iteration is the reference's
    ``loss_avg``: the distance summed over classes and outer steps, divided by
    ``num_classes * outer_loop``.
    """

    method: ClassVar[str] = "dc"
    DEFAULT_ITERATIONS: ClassVar[int] = 1000
    DEFAULTS: ClassVar[dict[str, Any]] = {
        "lr_img": 0.1,
        "momentum": 0.5,
        "lr_net": 0.01,
        "batch_real": 256,
        "batch_train": 256,
        "outer_loop": None,
        "inner_loop": None,
        "dsa_strategy": "none",
        "width": 128,
    }

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        opts = self.options
        for name in ("lr_img", "lr_net"):
            opts[name] = _check_rate(opts[name], name)
        momentum = opts["momentum"]
        if isinstance(momentum, bool) or not isinstance(momentum, (int, float)):
            raise TypeError(f"momentum must be a number, got {momentum!r}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
        for name in ("batch_real", "batch_train", "width"):
            check_positive_int(opts[name], name)
        outer, inner = opts["outer_loop"], opts["inner_loop"]
        if outer is None or inner is None:
            if self.ipc not in DC_LOOPS and (outer is not None or inner is not None):
                raise ValueError(
                    f"ipc={self.ipc} has no reference loops: give both outer_loop and inner_loop"
                )
            table_outer, table_inner = dc_loops(self.ipc)
            outer = table_outer if outer is None else outer
            inner = table_inner if inner is None else inner
        # The resolved loops go into the config, so the metadata says what ran.
        opts["outer_loop"] = check_positive_int(outer, "outer_loop")
        opts["inner_loop"] = check_positive_int(inner, "inner_loop", minimum=0)

    def match(
        self, synthetic: Tensor, real: Tensor, network: ConvNet, label: int | None = None
    ) -> Tensor:
        """:func:`dc_distance` between the gradients of the cross-entropy (target ``label``,
        the class of both batches; required) on ``synthetic`` (kept differentiable) and on
        ``real`` (detached).

        Only the weight tensors (``ndim >= 2``) are differentiated: the 1-D ones
        contribute 0 to the distance, so the value and its gradient are the reference's.
        """
        if label is None:
            raise TypeError("DC matching needs the class label of the batches")
        weights = [p for p in network.parameters() if p.ndim > 1]
        target_real = torch.full((real.shape[0],), label, dtype=torch.long, device=real.device)
        grads_real = torch.autograd.grad(F.cross_entropy(network(real), target_real), weights)
        grads_real = tuple(g.detach() for g in grads_real)
        target_syn = torch.full(
            (synthetic.shape[0],), label, dtype=torch.long, device=synthetic.device
        )
        grads_syn = torch.autograd.grad(
            F.cross_entropy(network(synthetic), target_syn), weights, create_graph=True
        )
        return dc_distance(grads_syn, grads_real)

    def make_optimizer(self, synthetic: Tensor) -> torch.optim.Optimizer:
        return torch.optim.SGD(
            [synthetic], lr=self.options["lr_img"], momentum=self.options["momentum"]
        )

    def step(self, iteration: int, synthetic: Tensor, optimizer: torch.optim.Optimizer) -> float:
        outer_loop = self.options["outer_loop"]
        network = self.build_network(iteration)
        network.train()
        net_optimizer = torch.optim.SGD(network.parameters(), lr=self.options["lr_net"])
        total = torch.zeros((), device=self.device)
        for outer in range(outer_loop):
            optimizer.zero_grad(set_to_none=True)
            for c in range(self.num_classes):
                generator = derived_generator(self.seed, BATCH_STREAM, iteration, outer, c)
                real, syn = self.real_and_synthetic_batch(synthetic, c, generator)
                loss = self.objective(syn, real, network, c)
                # Per-class backward (only into the images): the same gradient as the
                # reference's backward of the class sum, without holding ten graphs.
                torch.autograd.backward(loss, inputs=[synthetic])
                total += loss.detach()  # no device sync per class
            optimizer.step()
            if outer == outer_loop - 1:
                break
            self.train_network(network, net_optimizer, synthetic, iteration, outer)
        return float(total) / float(self.num_classes * outer_loop)

    def train_network(
        self,
        network: ConvNet,
        optimizer: torch.optim.Optimizer,
        synthetic: Tensor,
        iteration: int,
        outer: int,
    ) -> None:
        """``inner_loop`` epochs of the network on a detached copy of the synthetic set
        (shuffled batches of ``batch_train``; per-sample DSA when augmenting)."""
        images = synthetic.detach().clone()
        labels = torch.arange(self.num_classes, device=self.device).repeat_interleave(self.ipc)
        generator = derived_generator(self.seed, TRAIN_STREAM, iteration, outer)
        batch = self.options["batch_train"]
        for _ in range(self.options["inner_loop"]):
            order = torch.randperm(images.shape[0], generator=generator).to(self.device)
            for chosen in torch.split(order, batch):
                x = images[chosen]
                if self.augment is not None:
                    params = self.augment.sample_params(
                        x.shape[0], generator=generator, shared=False, device=self.device
                    )
                    x = self.augment(x, params)
                loss = F.cross_entropy(network(x), labels[chosen])
                optimizer.zero_grad(set_to_none=True)
                torch.autograd.backward(loss)
                optimizer.step()


class DSADistiller(DCDistiller):
    """DC with differentiable siamese augmentation (options as :class:`DCDistiller`,
    ``dsa_strategy`` ``"color_crop_cutout_flip_scale_rotate"``)."""

    method: ClassVar[str] = "dsa"
    DEFAULTS: ClassVar[dict[str, Any]] = {
        **DCDistiller.DEFAULTS,
        "dsa_strategy": "color_crop_cutout_flip_scale_rotate",
    }
