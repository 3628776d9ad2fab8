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
the per-step student loss :meth:`MTTDistiller.match` (synthetic batch first), so
every student step sees a fresh mask of its (augmented) synthetic batch.

Experts: the ``experts`` argument takes a folder of shards
(:func:`~ddcal.distill.experts.train_experts`), an
:class:`~ddcal.distill.experts.ExpertTrajectories` or a list of ``(S, P)``
tensors. Without it the distiller trains ``num_experts`` experts of
``train_epochs`` epochs itself on the real data it is given (seeded by ``seed``),
saved under ``<checkpoint_dir>/experts`` when a checkpoint folder is given (so a
resumed run reuses them), else kept in memory.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.func import functional_call

from ddcal.data.distilled import DistilledSet
from ddcal.distill.base import BATCH_STREAM, MatchingDistiller, derived_generator
from ddcal.distill.experts import ExpertTrajectories, train_experts
from ddcal.models import ConvNet

AUGMENT_STREAM = 3

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


class MTTDistiller(MatchingDistiller):
    """Trajectory matching behind the :class:`~ddcal.distill.Distiller` protocol.

    Options (reference values; ``None`` = by IPC from :data:`IPC_DEFAULTS`):
    ``syn_steps`` N (IPC 1: 50, 10: 30, 50: 30), ``expert_epochs`` M (2),
    ``max_start_epoch`` T+ (2 / 20 / 40), ``lr_img`` 1000, ``lr_lr`` (1e-7 / 1e-5 /
    1e-5), ``lr_teacher`` 0.01 (initial ``syn_lr``), ``momentum`` 0.5,
    ``batch_syn`` (``None`` = the whole synthetic set), ``dsa_strategy``
    ``"color_crop_cutout_flip_scale_rotate"`` (``"none"`` = off), ``width`` 128,
    and for experts trained here ``num_experts`` 10 and ``train_epochs`` 50.

    Args:
        experts: a shard folder, an :class:`ExpertTrajectories`, a list of
            ``(S, P)`` tensors, or ``None`` (train them; see the module notes).
        **kwargs: as :class:`~ddcal.distill.base.MatchingDistiller`.
    """

    method: ClassVar[str] = "mtt"
    DEFAULT_ITERATIONS: ClassVar[int] = 5000
    DEFAULTS: ClassVar[dict[str, Any]] = {
        "syn_steps": None,
        "expert_epochs": None,
        "max_start_epoch": None,
        "lr_img": 1000.0,
        "lr_lr": None,
        "lr_teacher": 0.01,
        "momentum": 0.5,
        "batch_syn": None,
        "dsa_strategy": "color_crop_cutout_flip_scale_rotate",
        "width": 128,
        "num_experts": 10,
        "train_epochs": 50,
    }

    def __init__(
        self,
        *,
        experts: str | Path | ExpertTrajectories | Sequence[Tensor] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        for name, value in _ipc_row(self.ipc).items():
            if self.options[name] is None:
                self.options[name] = value
        for name in (
            "syn_steps",
            "expert_epochs",
            "max_start_epoch",
            "num_experts",
            "train_epochs",
        ):
            value = self.options[name]
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        batch_syn = self.options["batch_syn"]
        if batch_syn is not None and (
            isinstance(batch_syn, bool) or not isinstance(batch_syn, int) or batch_syn < 1
        ):
            raise ValueError(f"batch_syn must be an int >= 1 or None, got {batch_syn!r}")
        for name in ("lr_img", "lr_lr", "lr_teacher"):
            value = self.options[name]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"{name} must be a positive float, got {value!r}")
        if experts is None or isinstance(experts, ExpertTrajectories):
            self.experts = experts
        elif isinstance(experts, (str, Path)):
            self.experts = ExpertTrajectories.from_dir(experts)
        else:
            self.experts = ExpertTrajectories.from_tensors(experts)
        self._checkpoint_dir: Path | None = None
        self._trained_here = False

    @property
    def config(self) -> dict[str, Any]:
        experts = "trained"
        if self.experts is not None and not self._trained_here:
            experts = self.experts.describe()
        return {**super().config, "experts": experts}

    def distill(
        self,
        images: Tensor,
        labels: Tensor,
        *,
        checkpoint_dir: str | Path | None = None,
        checkpoint_every: int = 100,
    ) -> DistilledSet:
        self._checkpoint_dir = None if checkpoint_dir is None else Path(checkpoint_dir)
        return super().distill(
            images, labels, checkpoint_dir=checkpoint_dir, checkpoint_every=checkpoint_every
        )

    def prepare(self, images: Tensor, labels: Tensor, num_classes: int) -> None:
        super().prepare(images, labels, num_classes)
        if self.experts is None:
            out = None if self._checkpoint_dir is None else self._checkpoint_dir / "experts"
            self.experts = train_experts(
                images,
                labels,
                num_experts=self.options["num_experts"],
                epochs=self.options["train_epochs"],
                lr=self.options["lr_teacher"],
                net=self.net,
                width=self.options["width"],
                dsa_strategy=self.options["dsa_strategy"],
                seed=self.seed,
                device=self.device,
                out_dir=out,
                progress=self.progress,
            )
            self._trained_here = True
        self.student = self.build_network(0)
        self.student.train()
        self.student.requires_grad_(False)
        self.layout = parameter_layout(self.student)
        num_params = sum(numel for _, _, numel in self.layout)
        if self.experts.num_params != num_params:
            raise ValueError(
                f"experts have {self.experts.num_params} parameters, but {self.net} (width "
                f"{self.options['width']}) on this data has {num_params}"
            )
        needed = self.options["max_start_epoch"] + self.options["expert_epochs"]
        if self.experts.num_snapshots < needed:
            raise ValueError(
                f"max_start_epoch + expert_epochs = {needed} needs experts trained for at least "
                f"{needed - 1} epochs, got {self.experts.num_snapshots - 1}"
            )
        self.syn_labels = torch.arange(num_classes, device=self.device).repeat_interleave(self.ipc)
        self.syn_lr = torch.tensor(
            float(self.options["lr_teacher"]), device=self.device, requires_grad=True
        )

    def match(  # type: ignore[override]
        self, synthetic: Tensor, params: Tensor, labels: Tensor, network: ConvNet
    ) -> Tensor:
        """The student's loss on one synthetic batch (first, what MDT masks) at ``params``."""
        return student_loss(synthetic, params, labels, network, self.layout)

    def make_optimizer(self, synthetic: Tensor) -> torch.optim.Optimizer:
        """One SGD, two groups: the images (``lr_img``) and ``syn_lr`` (``lr_lr``)."""
        momentum = self.options["momentum"]
        return torch.optim.SGD(
            [
                {"params": [synthetic], "lr": self.options["lr_img"]},
                {"params": [self.syn_lr], "lr": self.options["lr_lr"]},
            ],
            lr=self.options["lr_img"],
            momentum=momentum,
        )

    def student_steps(
        self, iteration: int, synthetic: Tensor, start: Tensor, generator: torch.Generator
    ) -> Tensor:
        """``syn_steps`` differentiable student steps from ``start``; returns ``theta_N``."""
        params = start.clone().requires_grad_(True)
        count = synthetic.shape[0]
        batch_syn = self.options["batch_syn"] or count
        chunks: list[Tensor] = []
        for step in range(self.options["syn_steps"]):
            if not chunks:
                chunks = list(torch.split(torch.randperm(count, generator=generator), batch_syn))
            indices = chunks.pop(0).to(self.device)
            batch, labels = synthetic[indices], self.syn_labels[indices]
            if self.augment is not None:
                aug = derived_generator(self.seed, AUGMENT_STREAM, iteration, step)
                batch = self.augment(batch, generator=aug)
            loss = self.objective(batch, params, labels, self.student)
            params = student_step(loss, params, self.syn_lr)
        return params

    def step(self, iteration: int, synthetic: Tensor, optimizer: torch.optim.Optimizer) -> float:
        assert self.experts is not None
        generator = derived_generator(self.seed, BATCH_STREAM, iteration)
        expert = int(torch.randint(len(self.experts), (), generator=generator))
        start_epoch = int(torch.randint(self.options["max_start_epoch"], (), generator=generator))
        trajectory = self.experts[expert]
        start = trajectory[start_epoch].to(self.device)
        target = trajectory[start_epoch + self.options["expert_epochs"]].to(self.device)
        student = self.student_steps(iteration, synthetic, start, generator)
        loss = trajectory_loss(student, start, target)
        optimizer.zero_grad(set_to_none=True)
        torch.autograd.backward(loss)
        optimizer.step()
        return float(loss.detach())

    def extra_state(self) -> dict[str, Any]:
        return {**super().extra_state(), "syn_lr": self.syn_lr.detach().cpu()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        super().load_extra_state(state)
        with torch.no_grad():
            self.syn_lr.copy_(state["syn_lr"])

    def result(self, synthetic: Tensor, history: list[float]) -> DistilledSet:
        base = super().result(synthetic, history)
        lr = float(self.syn_lr.detach())
        if not (math.isfinite(lr) and lr > 0):
            warnings.warn(
                f"the learned syn_lr is {lr}, not a positive step size; the set's lr is None "
                "(meta['syn_lr'] keeps the value)",
                RuntimeWarning,
                stacklevel=2,
            )
        return DistilledSet(
            images=base.images,
            labels=base.labels,
            lr=lr if math.isfinite(lr) and lr > 0 else None,
            meta={**base.meta, "syn_lr": lr},
        )
