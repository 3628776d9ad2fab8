"""MTT: matching training trajectories (Cazenavette et al., CVPR 2022).

Each iteration picks an expert trajectory and a start epoch ``t`` uniform in
``[0, max_start_epoch)``; a student starts from the expert's parameters
``theta*_t`` and takes ``syn_steps`` differentiable SGD steps on minibatches of the
synthetic set (``batch_syn``, all of it by default, each step a fresh DSA draw
with per-sample parameters as the reference) with the learnable step size
``syn_lr``::

    theta_{n+1} = theta_n - syn_lr * grad CE(f(aug(x_syn); theta_n), y_syn)

(``create_graph=True``, the network run with :func:`torch.func.functional_call`
on the flat parameter vector). The loss is
``||theta_N - theta*_{t+M}||^2 / ||theta*_t - theta*_{t+M}||^2`` (the reference
divides both by the parameter count, which cancels), and one SGD step with
momentum 0.5 updates the images (``lr_img``) and ``syn_lr`` (``lr_lr``). The
learned ``syn_lr`` becomes the :class:`~ddcal.data.DistilledSet`'s ``lr``.

MDT: the objective masked by :class:`~ddcal.losses.MaskedDistillationTraining` is
the per-step :func:`student_loss` (synthetic batch first), so student step ``n``
of iteration ``t`` sees its (augmented) synthetic batch under the mask of ``(t, n)``.

Experts: the ``experts`` argument takes a folder of shards
(:func:`~ddcal.distill.experts.train_experts`), an
:class:`~ddcal.distill.experts.ExpertTrajectories` or a list of ``(S, P)``
tensors. Without it the distiller trains experts itself, before the first
iteration, on the real data it is given, with
:meth:`MTTDistiller.expert_settings` (``num_experts`` experts of
``train_epochs`` epochs, seeded by ``seed``), saved under
``<checkpoint_dir>/experts`` when a checkpoint folder is given (so a resumed
run reuses them), else kept in memory. The settings do not depend on
``mdt_ratio``: train once with ``train_experts(images, labels,
**distiller.expert_settings(), out_dir=folder)`` and pass ``experts=folder`` to
the plain and the MDT run.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.func import functional_call

from ddcal import distributed
from ddcal._random import AUGMENT_STREAM, derived_generator
from ddcal.augment import DEFAULT_STRATEGY, dsa_from_strategy
from ddcal.data.distilled import DistilledSet
from ddcal.distill.base import DistillationContext, MatchingDistiller
from ddcal.distill.experts import (
    EXPERT_BATCH_SIZE,
    EXPERT_MOMENTUM,
    EXPERT_WEIGHT_DECAY,
    ExpertTrajectories,
    train_experts,
)
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

# Per-IPC defaults of the reference (MTT paper, CIFAR-10 rows): N, M, T+ and lr_lr.
# lr_img 1000 is the reference default and its value for data without ZCA whitening
# (the ZCA'd CIFAR-10 rows use 1e2 / 1e5 instead).
IPC_DEFAULTS: dict[int, dict[str, Any]] = {
    1: {"syn_steps": 50, "expert_epochs": 2, "max_start_epoch": 2, "lr_lr": 1e-7},
    10: {"syn_steps": 30, "expert_epochs": 2, "max_start_epoch": 20, "lr_lr": 1e-5},
    50: {"syn_steps": 30, "expert_epochs": 2, "max_start_epoch": 40, "lr_lr": 1e-5},
}

ExpertSource = str | Path | ExpertTrajectories | Sequence[Tensor]
ParamLayout = tuple[tuple[str, tuple[int, ...], int], ...]


def parameter_layout(network: torch.nn.Module) -> ParamLayout:
    """``(name, shape, numel)`` of each parameter, in ``network.parameters()`` order."""
    return tuple((n, tuple(p.shape), p.numel()) for n, p in network.named_parameters())


def unflatten(flat: Tensor, layout: ParamLayout) -> dict[str, Tensor]:
    """Views of the ``(P,)`` vector ``flat`` as the named parameters of ``layout``."""
    chunks = torch.split(flat, [numel for _, _, numel in layout])
    return {name: chunk.view(shape) for (name, shape, _), chunk in zip(layout, chunks, strict=True)}


def student_loss(
    synthetic: Tensor, params: Tensor, labels: Tensor, network: ConvNet, layout: ParamLayout
) -> Tensor:
    """Cross-entropy of ``network`` run with the flat ``params`` on ``synthetic``."""
    logits = functional_call(network, unflatten(params, layout), (synthetic,))
    return F.cross_entropy(logits, labels)


def student_loss_share(
    synthetic: Tensor,
    params: Tensor,
    labels: Tensor,
    network: ConvNet,
    layout: ParamLayout,
    rows: slice,
) -> Tensor:
    """This process's part of :func:`student_loss`: the cross-entropy summed over
    ``synthetic[rows]``, divided by the whole batch's size (the parts sum to the mean)."""
    logits = functional_call(network, unflatten(params, layout), (synthetic[rows],))
    return F.cross_entropy(logits, labels[rows], reduction="sum") / synthetic.shape[0]


def _rows_of_this_process(count: int) -> slice:
    """A contiguous share of ``count`` rows: the first ``count % world`` processes get one more."""
    world, rank = distributed.world_size(), distributed.rank()
    size, extra = divmod(count, world)
    start = rank * size + min(rank, extra)
    return slice(start, start + size + (rank < extra))


def student_step(loss: Tensor, params: Tensor, lr: Tensor) -> Tensor:
    """``params - lr * d loss / d params``, differentiable (``create_graph=True``)."""
    (grad,) = torch.autograd.grad(loss, params, create_graph=True)
    return params - lr * grad


def trajectory_loss(student: Tensor, start: Tensor, target: Tensor) -> Tensor:
    """``||student - target||^2 / ||start - target||^2``."""
    return ((student - target) ** 2).sum() / ((start - target) ** 2).sum()


def _ipc_row(ipc: int) -> dict[str, Any]:
    key = max(k for k in IPC_DEFAULTS if k <= ipc)
    return IPC_DEFAULTS[key]


@dataclass(frozen=True, kw_only=True)
class MTTOptions:
    """MTT's options, at the reference values.

    Attributes:
        syn_steps: student steps ``N`` per iteration (the distiller takes this
            and the next two and ``lr_lr`` from :data:`IPC_DEFAULTS` unless given).
        expert_epochs: expert epochs ``M`` the student must cover.
        max_start_epoch: start epochs are uniform in ``[0, max_start_epoch)``.
        lr_lr: SGD learning rate of the learnable step size ``syn_lr``.
        lr_img: SGD learning rate of the images (1000: data without ZCA).
        lr_teacher: the initial ``syn_lr``, and the experts' lr when trained here.
        momentum: SGD momentum of the images and ``syn_lr``.
        batch_syn: synthetic images per student step (``None``: all of them).
        dsa_strategy: augmentation of every student batch, and of the experts
            trained here (``"none"``: off).
        width: channels of the ConvNet.
        num_experts: experts trained here (when no experts are given).
        train_epochs: epochs of the experts trained here.
    """

    syn_steps: int
    expert_epochs: int
    max_start_epoch: int
    lr_lr: float
    lr_img: float = 1000.0
    lr_teacher: float = 0.01
    momentum: float = 0.5
    batch_syn: int | None = None
    dsa_strategy: str = DEFAULT_STRATEGY
    width: int = 128
    num_experts: int = 10
    train_epochs: int = 50

    def __post_init__(self) -> None:
        for name in ("syn_steps", "expert_epochs", "max_start_epoch"):
            check_count(getattr(self, name), name)
        for name in ("width", "num_experts", "train_epochs"):
            check_count(getattr(self, name), name)
        check_rate(self.lr_img, "lr_img", MAX_IMAGE_LR)
        for name in ("lr_lr", "lr_teacher"):
            check_rate(getattr(self, name), name, MAX_STEP_SIZE)
        check_momentum(self.momentum, "momentum")
        if self.batch_syn is not None:
            check_count(self.batch_syn, "batch_syn")
        check_strategy(self.dsa_strategy, "dsa_strategy")


def _resolve_experts(experts: ExpertSource | None) -> ExpertTrajectories | None:
    if experts is None or isinstance(experts, ExpertTrajectories):
        return experts
    if isinstance(experts, (str, Path)):
        return ExpertTrajectories.from_dir(experts)
    return ExpertTrajectories.from_tensors(experts)


class MTTStep(DistillationStep):
    """One MTT iteration: ``syn_steps`` student steps from an expert snapshot, one update."""

    def __init__(
        self, context: DistillationContext, options: MTTOptions, experts: ExpertTrajectories
    ) -> None:
        self.context = context
        self.options = options
        self.experts = experts
        self.augment = dsa_from_strategy(options.dsa_strategy)
        self.objective = context.masked(student_loss)
        self.shared_objective = context.masked(student_loss_share)
        self.student = context.network(0, options.width)
        self.student.train()
        self.student.requires_grad_(False)
        self.layout = parameter_layout(self.student)
        num_params = sum(numel for _, _, numel in self.layout)
        if experts.num_params != num_params:
            raise InvalidValueError(
                f"experts have {experts.num_params} parameters, but {context.net} (width "
                f"{options.width}) on this data has {num_params}"
            )
        needed = options.max_start_epoch + options.expert_epochs
        if experts.num_snapshots < needed:
            raise InvalidValueError(
                f"max_start_epoch + expert_epochs = {needed} needs experts trained for at least "
                f"{needed - 1} epochs, got {experts.num_snapshots - 1}"
            )
        self.syn_labels = context.synthetic_labels()
        self.syn_lr = torch.tensor(
            float(options.lr_teacher), device=context.device, requires_grad=True
        )

    def make_optimizer(self, synthetic: Tensor) -> torch.optim.Optimizer:
        """One SGD, two groups: the images (``lr_img``) and ``syn_lr`` (``lr_lr``)."""
        return torch.optim.SGD(
            [
                {"params": [synthetic], "lr": self.options.lr_img},
                {"params": [self.syn_lr], "lr": self.options.lr_lr},
            ],
            lr=self.options.lr_img,
            momentum=self.options.momentum,
        )

    def student_steps(
        self, iteration: int, synthetic: Tensor, start: Tensor, generator: torch.Generator
    ) -> Tensor:
        """``syn_steps`` differentiable student steps from ``start`` ``(P,)``: ``theta_N``."""
        params = start.clone().requires_grad_(True)
        count = synthetic.shape[0]
        batch_syn = self.options.batch_syn or count
        chunks: list[Tensor] = []
        for step in range(self.options.syn_steps):
            if not chunks:
                chunks = list(torch.split(torch.randperm(count, generator=generator), batch_syn))
            indices = chunks.pop(0).to(self.context.device)
            batch, labels = synthetic[indices], self.syn_labels[indices]
            if self.augment is not None:
                augment = derived_generator(self.context.seed, AUGMENT_STREAM, iteration, step)
                batch = self.augment(batch, generator=augment)
            if distributed.is_distributed():
                params = self._shared_student_step(iteration, step, batch, params, labels)
                continue
            loss = self.objective(
                (iteration, step), batch, params, labels, self.student, self.layout
            )
            params = student_step(loss, params, self.syn_lr)
        return params

    def _shared_student_step(
        self, iteration: int, step: int, batch: Tensor, params: Tensor, labels: Tensor
    ) -> Tensor:
        """:func:`student_step` with the batch's rows split over the processes.

        Every process augments and masks the whole batch (the same draws as one
        process), runs the student on its rows only and the parts of the gradient
        are summed by an all-reduce that autograd differentiates through.
        """
        rows = _rows_of_this_process(batch.shape[0])
        if rows.start == rows.stop:
            part = torch.zeros_like(params)
        else:
            loss = self.shared_objective(
                (iteration, step), batch, params, labels, self.student, self.layout, rows
            )
            (part,) = torch.autograd.grad(loss, params, create_graph=True)
        return params - self.syn_lr * distributed.differentiable_sum(part)

    def step(self, iteration: int, synthetic: Tensor, optimizer: torch.optim.Optimizer) -> float:
        generator = self.context.batch_generator(iteration)
        expert = int(torch.randint(len(self.experts), (), generator=generator))
        start_epoch = int(torch.randint(self.options.max_start_epoch, (), generator=generator))
        trajectory = self.experts[expert]
        device = self.context.device
        start = trajectory[start_epoch].to(device)
        target = trajectory[start_epoch + self.options.expert_epochs].to(device)
        student = self.student_steps(iteration, synthetic, start, generator)
        loss = trajectory_loss(student, start, target)
        optimizer.zero_grad(set_to_none=True)
        if not distributed.is_distributed():
            torch.autograd.backward(loss)
            optimizer.step()
            return float(loss.detach())
        # Every process holds the same loss; the all-reduces' backward sums the
        # processes' adjoints, so each back-propagates 1/world of it and the
        # gradients' sum over the processes is the single-process one.
        torch.autograd.backward(loss / distributed.world_size())
        distributed.all_reduce_gradients(synthetic, self.syn_lr)
        optimizer.step()
        return float(loss.detach())

    def extra_state(self) -> dict[str, Tensor]:
        return {"syn_lr": self.syn_lr.detach().cpu()}

    def load_extra_state(self, state: Mapping[str, Any]) -> None:
        syn_lr = state.get("syn_lr")
        if set(state) != {"syn_lr"} or not isinstance(syn_lr, Tensor) or syn_lr.shape != ():
            raise InvalidValueError(f"extra state must be a scalar syn_lr, got {sorted(state)}")
        with torch.no_grad():
            self.syn_lr.copy_(syn_lr)

    def package(self, synthetic: Tensor, labels: Tensor, meta: dict[str, Any]) -> DistilledSet:
        """The images with the learned ``syn_lr`` as the set's ``lr`` (``None`` when not > 0)."""
        lr = float(self.syn_lr.detach())
        usable = math.isfinite(lr) and lr > 0
        if not usable:
            warnings.warn(
                f"the learned syn_lr is {lr}, not a positive step size; the set's lr is None "
                "(meta['syn_lr'] keeps the value)",
                RuntimeWarning,
                stacklevel=3,
            )
        return DistilledSet(
            images=synthetic.detach().cpu().clone(),
            labels=labels,
            lr=lr if usable else None,
            meta={**meta, "syn_lr": lr},
        )


class MTTDistiller(MatchingDistiller):
    """Trajectory matching behind the :class:`~ddcal.distill.Distiller` protocol.

    Options: the fields of :class:`MTTOptions` (by IPC from :data:`IPC_DEFAULTS`:
    ``syn_steps`` N (IPC 1: 50, 10: 30, 50: 30), ``expert_epochs`` M (2),
    ``max_start_epoch`` T+ (2 / 20 / 40), ``lr_lr`` (1e-7 / 1e-5 / 1e-5); and
    ``lr_img`` 1000, ``lr_teacher`` 0.01, ``momentum`` 0.5, ``batch_syn`` ``None``,
    ``dsa_strategy`` ``"color_crop_cutout_flip_scale_rotate"``, ``width`` 128,
    ``num_experts`` 10, ``train_epochs`` 50).

    Args:
        experts: a shard folder, an :class:`ExpertTrajectories`, a list of
            ``(S, P)`` tensors, or ``None``: train them with
            :meth:`expert_settings` on the real data given to :meth:`distill`
            (under ``<checkpoint_dir>/experts`` when checkpointing).
        **kwargs: as :class:`~ddcal.distill.base.MatchingDistiller`.
    """

    method: ClassVar[str] = "mtt"
    masks_real_batch: ClassVar[bool] = False
    DEFAULT_ITERATIONS: ClassVar[int] = 5000
    options_type: ClassVar[type[Any]] = MTTOptions
    options: MTTOptions

    def __init__(self, *, experts: ExpertSource | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if self.mdt_mask_real:
            raise InvalidValueError(
                "mdt_mask_real is for DC, DSA and DM: MTT's objective has no real batch "
                "(its experts trained on the real images)"
            )
        self.experts = _resolve_experts(experts)

    def option_defaults(self, given: Collection[str]) -> dict[str, Any]:
        return dict(_ipc_row(self.ipc))

    def expert_settings(self) -> dict[str, Any]:
        """The keyword arguments of :func:`~ddcal.distill.experts.train_experts` (all but
        the data, ``out_dir``, ``device`` and ``progress``) with which this distiller
        trains its own experts; they do not depend on ``mdt_ratio``, so one set of
        experts serves the plain and the MDT run."""
        return {
            "num_experts": self.options.num_experts,
            "epochs": self.options.train_epochs,
            "lr": self.options.lr_teacher,
            "momentum": EXPERT_MOMENTUM,
            "weight_decay": EXPERT_WEIGHT_DECAY,
            "batch_size": EXPERT_BATCH_SIZE,
            "net": self.net,
            "width": self.options.width,
            "dsa_strategy": self.options.dsa_strategy,
            "seed": self.seed,
        }

    @property
    def config(self) -> dict[str, Any]:
        experts = "trained" if self.experts is None else self.experts.describe()
        return {**super().config, "experts": experts}

    def make_step(self, context: DistillationContext, checkpoint_dir: Path | None) -> MTTStep:
        experts = self.experts
        if experts is None:
            experts = train_experts(
                context.real.images,
                context.real.labels,
                **self.expert_settings(),
                out_dir=None if checkpoint_dir is None else checkpoint_dir / "experts",
                device=self.device,
                progress=self.progress,
            )
        return MTTStep(context, self.options, experts)
