"""What every distiller shares: the protocol, the common settings, the context a method's step gets.

A distiller (:class:`MatchingDistiller` subclass) is a configuration: the
common settings (IPC, iterations, network, initialisation, MDT ratio, seed,
device) and a frozen options dataclass of its method. :meth:`~MatchingDistiller.distill`
validates the real data, builds the method's :class:`~ddcal.distill.loop.DistillationStep`
with a :class:`DistillationContext`, initialises the synthetic images and hands
both to the one loop, :func:`~ddcal.distill.loop.run_distillation`.

Randomness is derived, not carried (:mod:`ddcal._random`): the draws of
iteration ``t`` (for class ``c``) come from generators seeded by the seed, a
stream and ``(t, c)``, MDT's masks included.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Concatenate, ParamSpec, Protocol, runtime_checkable

import torch
from torch import Tensor

from ddcal import distributed
from ddcal._random import (
    BATCH_STREAM,
    INIT_STREAM,
    NETWORK_STREAM,
    derived_generator,
    derived_global_rng,
)
from ddcal._validation import check_bool, check_choice, check_positive_int, check_seed
from ddcal.augment import DSA
from ddcal.data.distilled import DistilledSet
from ddcal.distill.checkpoint import Checkpoint
from ddcal.distill.loop import DistillationStep, run_distillation
from ddcal.distill.options import build_options
from ddcal.distill.real import RealData
from ddcal.errors import InvalidTypeError, InvalidValueError
from ddcal.losses import MaskedDistillationTraining
from ddcal.masking import check_mask_ratio
from ddcal.models import CONVNET_NAMES, ConvNet, build_convnet

INITS = ("real", "noise")

P = ParamSpec("P")


@runtime_checkable
class Distiller(Protocol):
    """Turns a real training set into a small synthetic one."""

    method: str

    def distill(
        self,
        images: Tensor,
        labels: Tensor,
        *,
        checkpoint_dir: str | Path | None = None,
        checkpoint_every: int = 100,
    ) -> DistilledSet: ...


@dataclass(frozen=True)
class DistillationContext:
    """What a method's step gets besides its options: the real data and the common settings."""

    real: RealData
    ipc: int
    net: str
    seed: int
    mdt_ratio: float
    device: torch.device
    mdt_mask_real: bool = False
    compile: bool = False

    def network(self, iteration: int, width: int) -> ConvNet:
        """A freshly initialised ``net``, the same for the same seed and ``iteration``.

        With :attr:`compile` its ``embed`` runs through ``torch.compile``: compiled
        once per process, as every iteration's network has the same architecture.
        """
        channels, height, width_px = self.real.image_shape
        with derived_global_rng(self.seed, NETWORK_STREAM, iteration):
            network = build_convnet(
                self.net, channels, self.real.num_classes, (height, width_px), width=width
            )
        network = network.to(self.device)
        if self.compile:
            network.embed = torch.compile(network.embed)  # type: ignore[method-assign]
        return network

    def masked(
        self, objective: Callable[Concatenate[Tensor, P], Tensor]
    ) -> MaskedDistillationTraining[P]:
        """``objective`` behind MDT at ``mdt_ratio`` (masks seeded by ``seed``; 0: unmasked)."""
        return MaskedDistillationTraining(
            objective, self.mdt_ratio, seed=self.seed, mask_real=self.mdt_mask_real
        )

    def synthetic_labels(self) -> Tensor:
        """``(K * ipc,)`` class of each synthetic image, on the device: class-major order."""
        classes = torch.arange(self.real.num_classes, device=self.device)
        return classes.repeat_interleave(self.ipc)

    def class_batches(
        self,
        synthetic: Tensor,
        c: int,
        batch_real: int,
        augment: DSA | None,
        generator: torch.Generator,
    ) -> tuple[Tensor, Tensor]:
        """``batch_real`` real images of class ``c`` and its ``ipc`` synthetic ones,
        both through one siamese DSA draw from ``generator`` (when augmenting)."""
        real = self.real.sample(c, batch_real, generator)
        syn = synthetic[c * self.ipc : (c + 1) * self.ipc]
        if augment is not None:
            params = augment.sample_params(1, generator=generator, device=self.device)
            real, syn = augment(real, params), augment(syn, params)
        return real, syn

    def own_classes(self) -> range:
        """The classes this process matches: all of them alone, a share under ``torchrun``."""
        return distributed.owned(self.real.num_classes)

    def combine_gradients(self, synthetic: Tensor, loss: Tensor) -> Tensor:
        """Sum the synthetic images' gradient over the processes (in place) and the loss.

        Each process back-propagated only its :meth:`own_classes`, whose images
        are disjoint rows of ``synthetic``: the sum is the single-process gradient
        exactly. Returns the summed (detached) loss; its addition order is the one
        difference from a single process.
        """
        loss = loss.detach()
        if not distributed.is_distributed():
            return loss
        distributed.all_reduce_gradients(synthetic)
        return distributed.all_reduce_sum(loss.clone())

    def batch_generator(self, iteration: int, *keys: int) -> torch.Generator:
        """The generator of iteration ``iteration``'s real batches and DSA draws for ``keys``."""
        return derived_generator(self.seed, BATCH_STREAM, iteration, *keys)


class MatchingDistiller(ABC):
    """A configured distiller: the common settings and the method's options.

    Subclasses set :attr:`method`, :attr:`DEFAULT_ITERATIONS`, :attr:`options_type`
    (a frozen dataclass, which they also declare as the type of :attr:`options`)
    and implement :meth:`make_step`; options whose default depends on the IPC
    come from :meth:`option_defaults`.

    Args:
        ipc: synthetic images per class.
        iterations: distillation iterations (default: the method's).
        net: ConvNet name for the networks used inside distillation.
        init: ``"real"`` (random real images of each class) or ``"noise"``.
        mdt_ratio: Masked Distillation Training ratio; 0 is off.
        mdt_mask_real: MDT masks the real batch of the matching objective too
            (see :class:`~ddcal.losses.MaskedDistillationTraining`); ``None``:
            :attr:`masks_real_batch`, the method's default (DC, DSA, DM: yes;
            MTT, whose objective has no real batch: no).
        seed: seeds every draw (initialisation, networks, batches, masks), in ``[0, 2**32)``.
        device: where to distil.
        compile: run the method's networks through ``torch.compile`` (DM only, see
            :attr:`compiles`); the same math, float rounding may differ, so like
            ``device`` it is not part of :attr:`config`.
        progress: show a progress bar with the matching loss.
        **options: fields of :attr:`options_type`; unknown names are an error.
    """

    method: ClassVar[str]
    #: Whether MDT masks the objective's real batch too by default (it has one).
    masks_real_batch: ClassVar[bool] = True
    #: Whether ``compile=True`` is available: torch.compile has no double backward,
    #: which gradient matching (DC, DSA) and MTT's unrolled student need.
    compiles: ClassVar[bool] = False
    DEFAULT_ITERATIONS: ClassVar[int]
    options_type: ClassVar[type[Any]]
    options: Any

    def __init__(
        self,
        *,
        ipc: int,
        iterations: int | None = None,
        net: str = "ConvNetD3",
        init: str = "real",
        mdt_ratio: float = 0.0,
        mdt_mask_real: bool | None = None,
        seed: int = 0,
        device: str | torch.device = "cpu",
        compile: bool = False,
        progress: bool = True,
        **options: Any,
    ) -> None:
        self.ipc = check_positive_int(ipc, "ipc")
        self.iterations = check_positive_int(
            self.DEFAULT_ITERATIONS if iterations is None else iterations, "iterations"
        )
        self.net = check_choice(net, "net", CONVNET_NAMES)
        self.init = check_choice(init, "init", INITS)
        self.mdt_ratio = check_mask_ratio(mdt_ratio, "mdt_ratio")
        if mdt_mask_real is None:
            mdt_mask_real = self.masks_real_batch
        if not isinstance(mdt_mask_real, bool):
            raise InvalidTypeError(
                f"mdt_mask_real must be True, False or None, got {mdt_mask_real!r}"
            )
        self.mdt_mask_real = mdt_mask_real
        self.seed = check_seed(check_positive_int(seed, "seed", minimum=0))
        try:
            self.device = torch.device(device)
        except (RuntimeError, TypeError) as exc:
            raise InvalidValueError(f"device must name a torch device, got {device!r}") from exc
        self.compile = check_bool(compile, "compile")
        if self.compile and not self.compiles:
            raise InvalidValueError(
                f"compile=True is not available for {self.method}: torch.compile has no "
                "double backward, which its objective needs; use compile=False (no --compile)"
            )
        self.progress = bool(progress)
        values = {**self.option_defaults(options), **options}
        self.options = build_options(self.options_type, values, self.method)

    def option_defaults(self, given: Collection[str]) -> dict[str, Any]:
        """Defaults that depend on the settings (e.g. the IPC), for options not ``given``."""
        return {}

    @abstractmethod
    def make_step(
        self, context: DistillationContext, checkpoint_dir: Path | None
    ) -> DistillationStep:
        """The method's step on the real data of ``context``."""

    @property
    def config(self) -> dict[str, Any]:
        """Everything that determines the result, as plain values."""
        return {
            "method": self.method,
            "ipc": self.ipc,
            "iterations": self.iterations,
            "net": self.net,
            "init": self.init,
            "mdt_ratio": self.mdt_ratio,
            # Absent without MDT or without the real side masked: what runs made before
            # the option did, so that their checkpoints still resume.
            **({"mdt_mask_real": True} if self.mdt_ratio > 0 and self.mdt_mask_real else {}),
            "seed": self.seed,
            **dataclasses.asdict(self.options),
        }

    def distill(
        self,
        images: Tensor,
        labels: Tensor,
        *,
        checkpoint_dir: str | Path | None = None,
        checkpoint_every: int = 100,
    ) -> DistilledSet:
        """Distil ``images (N, C, H, W)`` with class indices ``labels (N,)``.

        Returns ``K * ipc`` synthetic images in class-major order. With
        ``checkpoint_dir`` the state is written there atomically every
        ``checkpoint_every`` iterations and at the end, and a run finding a
        checkpoint there continues from it: the same result as an uninterrupted
        run, also when it asks for more iterations than the checkpoint holds.
        Ctrl-C finishes the current iteration, saves a checkpoint and raises
        ``KeyboardInterrupt``.
        """
        real = RealData.from_tensors(images, labels, self.device)
        smallest, count = real.smallest_class()
        if self.init == "real" and count < self.ipc:
            raise InvalidValueError(
                f"class {smallest} has {count} images, fewer than ipc={self.ipc}"
            )
        checkpoint_every = check_positive_int(checkpoint_every, "checkpoint_every")
        folder = None if checkpoint_dir is None else Path(checkpoint_dir)
        context = DistillationContext(
            real,
            self.ipc,
            self.net,
            self.seed,
            self.mdt_ratio,
            self.device,
            self.mdt_mask_real,
            self.compile,
        )
        step = self.make_step(context, folder)
        synthetic = self.initial_synthetic(real).requires_grad_(True)
        checkpoint = None
        if folder is not None:
            checkpoint = Checkpoint(folder, {**self.config, "data": real.digest})
        history = run_distillation(
            step,
            synthetic,
            iterations=self.iterations,
            checkpoint=checkpoint,
            checkpoint_every=checkpoint_every,
            progress=self.progress,
            description=self.method,
        )
        meta = {
            "method": self.method,
            "ipc": self.ipc,
            "seed": self.seed,
            "mdt_ratio": self.mdt_ratio,
            "config": self.config,
            "data": real.digest,
            "loss_history": torch.tensor(history, dtype=torch.float64),
        }
        return step.package(synthetic, context.synthetic_labels().cpu(), meta)

    def initial_synthetic(self, real: RealData) -> Tensor:
        """``(K * ipc, C, H, W)``: random real images of each class, or Gaussian noise."""
        generator = derived_generator(self.seed, INIT_STREAM)
        if self.init == "noise":
            shape = (real.num_classes * self.ipc, *real.image_shape)
            return torch.randn(shape, generator=generator).to(self.device)
        samples = [real.sample(c, self.ipc, generator) for c in range(real.num_classes)]
        return torch.cat(samples).clone()
