"""What every distiller shares: the protocol, the checkpointed loop, seeds, real-data sampling.

Randomness is *derived*, not carried: the draws of iteration ``t`` for class
``c`` come from a generator seeded by ``(seed, t, c)`` (:func:`derived_generator`).
Resuming from a checkpoint therefore needs only the synthetic data and the
optimiser state to continue bit for bit, and the per-class work can later be
split across processes without any shared random state.
"""

from __future__ import annotations

import math
import signal
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from ddcal._io import atomic_write
from ddcal._validation import check_choice, check_positive_int
from ddcal.augment import dsa_from_strategy
from ddcal.data.distilled import DistilledSet
from ddcal.inference import check_images
from ddcal.losses import MaskedDistillationTraining
from ddcal.masking import check_mask_ratio
from ddcal.models import ConvNet, build_convnet

CHECKPOINT_NAME = "checkpoint.pt"
INITS = ("real", "noise")


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


# Streams of derived randomness, so that no two purposes share draws.
INIT_STREAM, NETWORK_STREAM, BATCH_STREAM = 0, 1, 2


@contextmanager
def _deferred_interrupt() -> Iterator[Callable[[], bool]]:
    """Hold Ctrl-C until the current iteration ends; yields "was it pressed?".

    The loop then checkpoints a consistent state (never half an update) and
    raises ``KeyboardInterrupt``. Outside the main thread signals cannot be
    caught and Ctrl-C acts as usual.
    """
    pressed = False

    def handler(signum: int, frame: FrameType | None) -> None:
        nonlocal pressed
        pressed = True

    if threading.current_thread() is not threading.main_thread():
        yield lambda: False
        return
    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield lambda: pressed
    finally:
        signal.signal(signal.SIGINT, previous)


def derived_generator(*keys: int) -> torch.Generator:
    """A CPU generator seeded from non-negative integer ``keys``.

    E.g. ``(seed, BATCH_STREAM, iteration, class)``; distinct keys give
    independent streams (numpy's ``SeedSequence`` mixing).
    """
    state = np.random.SeedSequence([int(k) for k in keys]).generate_state(2, np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def class_indices(labels: Tensor, num_classes: int) -> list[Tensor]:
    """Indices of each class ``c`` in ``labels``, ``c = 0 .. num_classes - 1``."""
    order = torch.argsort(labels, stable=True)
    counts = torch.bincount(labels, minlength=num_classes)
    return list(torch.split(order, counts.tolist()))


def sample_class(images: Tensor, indices: Tensor, count: int, generator: torch.Generator) -> Tensor:
    """``count`` images of one class drawn without replacement (all of them if fewer)."""
    chosen = indices[torch.randperm(indices.numel(), generator=generator)[:count]]
    return images[chosen.to(images.device)]


class MatchingDistiller:
    """Base of the distillers: configuration, initialisation, the checkpointed loop.

    Subclasses set :attr:`method`, :attr:`DEFAULTS` (their options with the
    reference values) and implement :meth:`make_optimizer` and :meth:`step`.

    Args:
        ipc: synthetic images per class.
        iterations: distillation iterations (default: the method's).
        net: ConvNet name for the networks used inside distillation.
        init: ``"real"`` (random real images of each class) or ``"noise"``.
        mdt_ratio: Masked Distillation Training ratio; 0 is off.
        seed: seeds every draw (initialisation, networks, batches, masks).
        device: where to distil.
        progress: show a progress bar with the matching loss.
        **options: method options; unknown names are an error.
    """

    method: ClassVar[str]
    DEFAULTS: ClassVar[Mapping[str, Any]]
    DEFAULT_ITERATIONS: ClassVar[int]

    def __init__(
        self,
        *,
        ipc: int,
        iterations: int | None = None,
        net: str = "ConvNetD3",
        init: str = "real",
        mdt_ratio: float = 0.0,
        seed: int = 0,
        device: str | torch.device = "cpu",
        progress: bool = True,
        **options: Any,
    ) -> None:
        unknown = sorted(set(options) - set(self.DEFAULTS))
        if unknown:
            raise ValueError(
                f"unknown option(s) {unknown} for {self.method!r}; it takes {sorted(self.DEFAULTS)}"
            )
        self.ipc = check_positive_int(ipc, "ipc")
        self.iterations = check_positive_int(
            self.DEFAULT_ITERATIONS if iterations is None else iterations, "iterations"
        )
        self.net = net
        self.init = check_choice(init, "init", INITS)
        self.mdt_ratio = check_mask_ratio(mdt_ratio, "mdt_ratio")
        self.seed = check_positive_int(seed, "seed", minimum=0)
        self.device = torch.device(device)
        self.progress = bool(progress)
        self.options: dict[str, Any] = {**self.DEFAULTS, **options}
        self.augment = dsa_from_strategy(self.options.get("dsa_strategy", "none"))
        # The objective the iterations call: ``match``, behind MDT when it is on, so the
        # synthetic batch is masked right before it reaches the network.
        self.objective: Callable[..., Tensor] = (
            self.match
            if self.mdt_ratio == 0.0
            else MaskedDistillationTraining(self.match, self.mdt_ratio, seed=self.seed)
        )

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
            "seed": self.seed,
            **self.options,
        }

    def build_network(self, iteration: int) -> ConvNet:
        """A freshly initialised network, the same for the same seed and iteration."""
        generator = derived_generator(self.seed, NETWORK_STREAM, iteration)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(torch.randint(2**62, (), generator=generator)))
            network = build_convnet(
                self.net,
                self.real_images.shape[1],
                self.num_classes,
                (self.real_images.shape[2], self.real_images.shape[3]),
                width=self.options.get("width", 128),
            )
        return network.to(self.device)

    def real_and_synthetic_batch(
        self, synthetic: Tensor, c: int, generator: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        """A real batch of class ``c`` and its synthetic images, through one siamese DSA draw."""
        real = sample_class(
            self.real_images, self.real_indices[c], self.options["batch_real"], generator
        )
        syn = synthetic[c * self.ipc : (c + 1) * self.ipc]
        if self.augment is not None:
            params = self.augment.sample_params(1, generator=generator, device=self.device)
            real, syn = self.augment(real, params), self.augment(syn, params)
        return real, syn

    def match(self, synthetic: Tensor, real: Tensor, network: ConvNet) -> Tensor:
        """The matching loss of one synthetic batch against one real batch."""
        raise NotImplementedError

    def make_optimizer(self, synthetic: Tensor) -> torch.optim.Optimizer:
        raise NotImplementedError

    def step(self, iteration: int, synthetic: Tensor, optimizer: torch.optim.Optimizer) -> float:
        """One distillation iteration on ``synthetic`` (a leaf); returns the matching loss."""
        raise NotImplementedError

    def prepare(self, images: Tensor, labels: Tensor, num_classes: int) -> None:
        """Called once before the loop with the real data (on ``self.device``)."""
        self.real_images = images
        self.num_classes = num_classes
        self.real_indices = class_indices(labels.cpu(), num_classes)

    def initial_synthetic(self, images: Tensor) -> Tensor:
        """``(num_classes * ipc, C, H, W)``: real images per class, or Gaussian noise."""
        generator = derived_generator(self.seed, INIT_STREAM)
        if self.init == "noise":
            noise = torch.randn(
                (self.num_classes * self.ipc, *images.shape[1:]), generator=generator
            )
            return noise.to(self.device)
        return torch.cat(
            [sample_class(images, idx, self.ipc, generator) for idx in self.real_indices]
        ).clone()

    def distill(
        self,
        images: Tensor,
        labels: Tensor,
        *,
        checkpoint_dir: str | Path | None = None,
        checkpoint_every: int = 100,
    ) -> DistilledSet:
        """Distil ``images (N, C, H, W)`` with class indices ``labels (N,)``.

        With ``checkpoint_dir`` the state is written there atomically every
        ``checkpoint_every`` iterations and at the end, and a run finding a
        checkpoint there resumes from it (same result as an uninterrupted run
        with the same seed). Ctrl-C finishes the current iteration, saves a
        checkpoint and raises ``KeyboardInterrupt``.
        """
        images = check_images(images).to(self.device)
        if images.ndim != 4:
            raise ValueError(f"images must have shape (N, C, H, W), got {tuple(images.shape)}")
        if not isinstance(labels, Tensor) or labels.shape != images.shape[:1]:
            raise ValueError(f"labels must be a tensor of shape ({images.shape[0]},)")
        labels = labels.long()
        num_classes = int(labels.max()) + 1
        counts = torch.bincount(labels.cpu(), minlength=num_classes)
        if int(counts.min()) < self.ipc and self.init == "real":
            missing = int(torch.argmin(counts))
            raise ValueError(
                f"class {missing} has {int(counts[missing])} images, fewer than ipc={self.ipc}"
            )
        checkpoint_every = check_positive_int(checkpoint_every, "checkpoint_every")
        self.prepare(images, labels, num_classes)
        synthetic = self.initial_synthetic(images).requires_grad_(True)
        optimizer = self.make_optimizer(synthetic)
        history: list[float] = []
        start = 0
        path = None if checkpoint_dir is None else Path(checkpoint_dir) / CHECKPOINT_NAME
        if path is not None and path.exists():
            start, history = self._resume(path, synthetic, optimizer)
        bar = tqdm(
            total=self.iterations,
            initial=start,
            desc=self.method,
            disable=not self.progress,
            leave=False,
        )
        try:
            with _deferred_interrupt() as interrupted:
                for iteration in range(start, self.iterations):
                    loss = self.step(iteration, synthetic, optimizer)
                    if not math.isfinite(loss):
                        raise FloatingPointError(
                            f"matching loss became {loss} at iteration {iteration}"
                        )
                    history.append(loss)
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss:.4g}")
                    done = iteration + 1
                    stop = interrupted()
                    if path is not None and (
                        stop or done % checkpoint_every == 0 or done == self.iterations
                    ):
                        self._save(path, done, synthetic, optimizer, history)
                    if stop:
                        raise KeyboardInterrupt(
                            f"interrupted after iteration {done}"
                            + (f"; checkpoint saved in {path}" if path is not None else "")
                        )
        finally:
            bar.close()
        return self.result(synthetic, history)

    def result(self, synthetic: Tensor, history: list[float]) -> DistilledSet:
        labels = torch.arange(self.num_classes).repeat_interleave(self.ipc)
        return DistilledSet(
            images=synthetic.detach().cpu().clone(),
            labels=labels,
            lr=None,
            meta={
                "method": self.method,
                "ipc": self.ipc,
                "seed": self.seed,
                "mdt_ratio": self.mdt_ratio,
                "config": self.config,
                "loss_history": torch.tensor(history, dtype=torch.float64),
            },
        )

    def _save(
        self,
        path: Path,
        iteration: int,
        synthetic: Tensor,
        optimizer: torch.optim.Optimizer,
        history: list[float],
    ) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {
            "config": self.config,
            "iteration": iteration,
            "synthetic": synthetic.detach().cpu(),
            "optimizer": optimizer.state_dict(),
            "history": torch.tensor(history, dtype=torch.float64),
            "extra": self.extra_state(),
        }
        with atomic_write(path) as handle:
            torch.save(state, handle)

    def _resume(
        self, path: Path, synthetic: Tensor, optimizer: torch.optim.Optimizer
    ) -> tuple[int, list[float]]:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if state["config"] != self.config:
            raise ValueError(
                f"checkpoint {path} was written with another configuration "
                f"({state['config']}); use another checkpoint_dir or the same settings"
            )
        with torch.no_grad():
            synthetic.copy_(state["synthetic"])
        optimizer.load_state_dict(state["optimizer"])
        self.load_extra_state(state["extra"])
        return int(state["iteration"]), state["history"].tolist()

    def extra_state(self) -> dict[str, Any]:
        """Method state beyond the images and optimiser (e.g. a learned lr, MDT's generator)."""
        if isinstance(self.objective, MaskedDistillationTraining):
            return {"mdt": self.objective.state_dict()}
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        if isinstance(self.objective, MaskedDistillationTraining):
            self.objective.load_state_dict(state["mdt"])
