"""The evaluation protocol of the distillation papers: train a network on a (distilled) set.

SGD with momentum 0.9 and weight decay 5e-4, batch 256, the learning rate
multiplied by 0.1 at half the epochs, optional differentiable augmentation (DSA)
on every batch, and the final network reported (never "best on test"). Every
random step (shuffling, augmentation, mixup) draws from one seeded generator.
:func:`train_network` trains one network; :func:`train_networks` several of one
architecture, each as :func:`train_network` would, stacked into one batched
(``torch.func.vmap``) forward and backward pass where that pays (on GPUs).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
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

__all__ = ["predict_logits", "train_network", "train_networks"]

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


@dataclass(frozen=True)
class _Protocol:
    """The validated settings shared by every network of one training call."""

    epochs: int
    lr: float
    batch_size: int
    momentum: float
    weight_decay: float
    augment: Callable[..., Tensor] | None
    criterion: LossFn
    memory_format: torch.memory_format
    compile: bool
    progress: bool


#: The largest weight decay accepted: beyond it each step shrinks the weights by more
#: than ``lr`` times their size (and far beyond, torch's SGD overflows).
MAX_WEIGHT_DECAY = 1.0


def _protocol(
    *,
    epochs: Any,
    lr: Any,
    batch_size: Any,
    momentum: Any,
    weight_decay: Any,
    augment: Any,
    loss: Any,
    channels_last: Any,
    compile: Any,
    progress: Any,
) -> _Protocol:
    epochs = check_positive_int(epochs, "epochs")
    batch_size = check_positive_int(batch_size, "batch_size")
    lr = check_real(lr, "lr")
    if not lr > 0:
        raise InvalidValueError(f"lr must be > 0, got {lr!r}")
    momentum = check_real(momentum, "momentum")
    if not 0.0 <= momentum < 1.0:
        raise InvalidValueError(f"momentum must be in [0, 1), got {momentum!r}")
    weight_decay = check_real(weight_decay, "weight_decay")
    if not 0.0 <= weight_decay <= MAX_WEIGHT_DECAY:
        raise InvalidValueError(
            f"weight_decay must be in [0, {MAX_WEIGHT_DECAY:g}] (an L2 coefficient; the "
            f"protocol's is 5e-4), got {weight_decay!r}"
        )
    if augment is not None and not callable(augment):
        raise InvalidTypeError(f"augment must be callable or None, got {type(augment).__name__}")
    channels_last = check_bool(channels_last, "channels_last")
    return _Protocol(
        epochs=epochs,
        lr=lr,
        batch_size=batch_size,
        momentum=momentum,
        weight_decay=weight_decay,
        augment=augment,
        criterion=_resolve_loss(loss),
        memory_format=torch.channels_last if channels_last else torch.contiguous_format,
        compile=check_bool(compile, "compile"),
        progress=check_bool(progress, "progress"),
    )


@dataclass(frozen=True)
class _Prepared:
    """One network and its data, validated and on the training device."""

    net: nn.Module
    inputs: Tensor
    targets: Tensor
    num_classes: int
    generator: torch.Generator

    def batches(self, protocol: _Protocol) -> list[tuple[Tensor, Tensor]]:
        """One epoch's batches, shuffled, augmented and mixed with this network's generator."""
        device = self.inputs.device
        order = torch.randperm(self.inputs.shape[0], generator=self.generator).to(device)
        batches = []
        for batch in torch.split(order, protocol.batch_size):
            x, y = self.inputs[batch], self.targets[batch]
            if protocol.augment is not None:
                x = protocol.augment(x, generator=self.generator)
            if isinstance(protocol.criterion, BatchMixer):
                x, y = protocol.criterion.mix(
                    x, y, num_classes=self.num_classes, generator=self.generator
                )
            batches.append((x, y))
        return batches


def _prepare(
    net: nn.Module,
    images: Tensor,
    labels: Tensor,
    seed: Any,
    device: str | torch.device | None,
    protocol: _Protocol,
) -> _Prepared:
    check_model(net, "net")
    if not any(parameter.requires_grad for parameter in net.parameters()):
        raise InvalidValueError("net has no trainable parameters")
    inputs = check_images(images)
    targets = _check_targets(labels, inputs.shape[0])
    seed = check_seed(seed)
    if protocol.memory_format == torch.channels_last and inputs.ndim != 4:
        raise InvalidValueError(
            f"channels_last needs images of shape (N, C, H, W), got shape {tuple(inputs.shape)}"
        )
    target_device = torch.device(device) if device is not None else model_device(net)
    net.to(target_device)
    net.to(memory_format=protocol.memory_format)  # type: ignore[call-overload]  # not in stubs
    dtype = input_dtype(net, inputs)
    inputs = inputs.to(target_device, dtype).contiguous(memory_format=protocol.memory_format)
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
    return _Prepared(net, inputs, targets, num_classes, torch.Generator().manual_seed(seed))


def _sgd(
    parameters: Sequence[Tensor], protocol: _Protocol
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    optimizer = torch.optim.SGD(
        parameters, lr=protocol.lr, momentum=protocol.momentum, weight_decay=protocol.weight_decay
    )
    # One epoch has no second half: a milestone at 0 would start at lr x 0.1.
    milestones = [protocol.epochs // 2] if protocol.epochs >= 2 else []
    return optimizer, torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, gamma=0.1)


def _check_finite(net: nn.Module, lr: float) -> None:
    if not all(bool(torch.isfinite(parameter).all()) for parameter in net.parameters()):
        raise InvalidValueError(
            f"training diverged: the network's parameters became NaN or inf with lr={lr}; "
            "lower lr, or check that the network's outputs on the images are finite"
        )


def _train_one(prepared: _Prepared, protocol: _Protocol) -> nn.Module:
    net = prepared.net
    optimizer, schedule = _sgd(list(net.parameters()), protocol)
    forward: Callable[[Tensor], Tensor] = torch.compile(net) if protocol.compile else net
    net.train()
    for _ in tqdm(range(protocol.epochs), desc="train", disable=not protocol.progress, leave=False):
        for x, y in prepared.batches(protocol):
            optimizer.zero_grad(set_to_none=True)
            logits = check_model_output(forward(x), x.shape[0])
            torch.autograd.backward(protocol.criterion(logits, y))
            optimizer.step()
        schedule.step()
    _check_finite(net, protocol.lr)
    return net.eval()


def _train_stacked(group: Sequence[_Prepared], protocol: _Protocol) -> None:
    """Train the networks of ``group`` (one architecture, same data size) as one.

    Their parameters are stacked along a new first dimension and every step runs
    one ``vmap``-ed forward and backward pass; SGD with momentum and weight decay
    acts elementwise, so one optimiser over the stacked tensors is each
    network's own. Each network keeps its own batches (order, augmentation and
    mixup from its own generator), so the result is what :func:`_train_one`
    gives, up to float rounding.
    """
    from torch.func import functional_call, stack_module_state, vmap

    nets = [prepared.net for prepared in group]
    parameters, _ = stack_module_state(nets)
    template = nets[0]

    def logits_of(params: dict[str, Tensor], x: Tensor) -> Tensor:
        logits: Tensor = functional_call(template, params, (x,))
        return logits

    batched = vmap(logits_of)
    optimizer, schedule = _sgd(list(parameters.values()), protocol)
    for net in nets:
        net.train()
    for _ in tqdm(range(protocol.epochs), desc="train", disable=not protocol.progress, leave=False):
        epoch = [prepared.batches(protocol) for prepared in group]
        for step in zip(*epoch, strict=True):
            inputs = torch.stack([x for x, _ in step])
            logits = batched(parameters, inputs)
            losses = [
                protocol.criterion(check_model_output(logits[k], x.shape[0]), y)
                for k, (x, y) in enumerate(step)
            ]
            loss = torch.stack(losses).sum()
            optimizer.zero_grad(set_to_none=True)
            torch.autograd.backward(loss)
            optimizer.step()
        schedule.step()
    with torch.no_grad():
        for k, net in enumerate(nets):
            for name, parameter in net.named_parameters():
                parameter.copy_(parameters[name][k])
    for net in nets:
        _check_finite(net, protocol.lr)
        net.eval()


def _stackable(group: Sequence[_Prepared]) -> bool:
    """Same architecture (class and parameter shapes), same data size, no buffers
    (a running statistic would need per-network updates inside the batched pass)."""
    first = group[0]
    shapes = [[p.shape for p in prepared.net.parameters()] for prepared in group]
    return (
        all(type(prepared.net) is type(first.net) for prepared in group)
        and all(shape == shapes[0] for shape in shapes)
        and all(prepared.inputs.shape == first.inputs.shape for prepared in group)
        and all(next(prepared.net.buffers(), None) is None for prepared in group)
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
    compile: bool = False,
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
            weight_decay in ``[0, MAX_WEIGHT_DECAY]`` (1).
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
        compile: run the training passes through ``torch.compile`` (same math,
            float rounding may differ; the first epochs pay the compilation, a
            minute or less for a ConvNet). ConvNetD3 steps are about 1.4x faster
            on a CPU (``benchmarks/bench_train.py``).
        progress: show a progress bar over epochs.

    Returns:
        ``net``, trained, in eval mode.

    Raises:
        InvalidInputError: a bad argument, or a training that diverged (parameters
            NaN or inf at the end: lower ``lr``).
    """
    protocol = _protocol(
        epochs=epochs,
        lr=lr,
        batch_size=batch_size,
        momentum=momentum,
        weight_decay=weight_decay,
        augment=augment,
        loss=loss,
        channels_last=channels_last,
        compile=compile,
        progress=progress,
    )
    return _train_one(_prepare(net, images, labels, seed, device, protocol), protocol)


def train_networks(
    nets: Sequence[nn.Module],
    images: Sequence[Tensor],
    labels: Sequence[Tensor],
    *,
    seeds: Sequence[int],
    epochs: int,
    lr: float = 0.01,
    batch_size: int = 256,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    augment: Callable[..., Tensor] | None = None,
    loss: str | LossFn = "ce",
    device: str | torch.device | None = None,
    vectorize: bool | None = None,
    progress: bool = False,
) -> list[nn.Module]:
    """Train ``nets[k]`` on ``(images[k], labels[k])`` with seed ``seeds[k]``, together.

    Each network is what ``train_network(nets[k], images[k], labels[k],
    seed=seeds[k], ...)`` gives with the same settings, up to float rounding
    (within ``1e-5`` of it after a few epochs in the tests; over hundreds of
    epochs rounding differences grow as between two devices). Vectorised, the
    networks train as one: one batched forward and backward pass per step
    instead of one per network, which keeps a GPU busy with small networks and
    small distilled sets.

    Args:
        nets, images, labels, seeds: one entry per network; the other arguments
            as in :func:`train_network`.
        vectorize: stack the networks into one pass; ``None``: on CUDA devices only
            (on a CPU one network at a time is faster: ``benchmarks/bench_train_many.py``).
            Networks that cannot be stacked (different architectures or data sizes,
            or buffers such as batch-norm statistics) train one at a time.

    Returns:
        ``nets``, trained, in eval mode.
    """
    if not (len(nets) == len(images) == len(labels) == len(seeds)):
        raise InvalidValueError(
            "nets, images, labels and seeds must have one entry per network, got lengths "
            f"{len(nets)}, {len(images)}, {len(labels)} and {len(seeds)}"
        )
    if len(nets) == 0:
        raise InvalidValueError("nets is empty: give at least one network")
    protocol = _protocol(
        epochs=epochs,
        lr=lr,
        batch_size=batch_size,
        momentum=momentum,
        weight_decay=weight_decay,
        augment=augment,
        loss=loss,
        channels_last=False,
        compile=False,
        progress=progress,
    )
    group = [
        _prepare(net, x, y, seed, device, protocol)
        for net, x, y, seed in zip(nets, images, labels, seeds, strict=True)
    ]
    if vectorize is None:
        vectorize = group[0].inputs.device.type == "cuda"
    if check_bool(vectorize, "vectorize") and len(group) > 1 and _stackable(group):
        _train_stacked(group, protocol)
    else:
        for prepared in group:
            _train_one(prepared, protocol)
    return list(nets)
