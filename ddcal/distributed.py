"""Several processes with ``torch.distributed``: launched by ``torchrun``, nothing home-made.

ddcal's randomness is derived from keys (:mod:`ddcal._random`), never carried
from one step to the next, so splitting work over processes changes no draw:

* distillation (DC, DSA, DM) gives each process a share of the classes and
  sums the synthetic images' gradients (:func:`all_reduce_sum`), so every
  process holds the same images after every step;
* experts, evaluation networks and study cells are dealt out by index
  (:func:`owned`), each process storing its own through the atomic cache;
* process 0 alone writes reports, checkpoints and progress (:func:`is_main`).

Without ``torchrun`` (or with one process) every function here is the
single-process no-op, so library code calls them unconditionally.

:func:`init_from_environment` joins the process group that ``torchrun`` describes
in the environment (gloo on CPUs, NCCL on GPUs). A failure on one process must
end the run on all, not hang the others in a collective: :func:`all_or_nothing`
turns an error on any process into an error on every process at the next
exchange, and the group's timeout (``DDCAL_DIST_TIMEOUT`` seconds, default 1800)
bounds every wait for a process that died.
"""

from __future__ import annotations

import datetime
import importlib
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import torch
import torch.distributed as dist

from ddcal.errors import InvalidValueError

__all__ = [
    "RankFailedError",
    "all_or_nothing",
    "all_reduce_gradients",
    "all_reduce_sum",
    "barrier",
    "broadcast_object",
    "deal",
    "differentiable_sum",
    "gather_objects",
    "init_from_environment",
    "is_distributed",
    "is_main",
    "leave",
    "on_main",
    "owned",
    "rank",
    "single_process",
    "world_size",
]

T = TypeVar("T")

DEFAULT_TIMEOUT_S = 1800.0
_TIMEOUT_VARIABLE = "DDCAL_DIST_TIMEOUT"

_local_depth = 0


class RankFailedError(RuntimeError):
    """Another process of the group failed; this one stops too (its error is on that process)."""


def _active() -> bool:
    return _local_depth == 0 and dist.is_available() and dist.is_initialized()


def is_distributed() -> bool:
    """Whether work is split over more than one process here."""
    return _active() and dist.get_world_size() > 1


def rank() -> int:
    """This process's index in the group (0 alone)."""
    return dist.get_rank() if _active() else 0


def world_size() -> int:
    """How many processes share the work (1 alone)."""
    return dist.get_world_size() if _active() else 1


def is_main() -> bool:
    """Whether this is process 0: the one that writes reports, checkpoints and progress."""
    return rank() == 0


def owned(count: int) -> range:
    """The indices of ``count`` items this process takes: ``rank, rank + world, ...``."""
    return range(rank(), count, world_size())


@contextmanager
def single_process() -> Iterator[None]:
    """Inside the block this process works alone (e.g. on a study cell it was dealt),
    whatever the group around it."""
    global _local_depth
    _local_depth += 1
    try:
        yield
    finally:
        _local_depth -= 1


def _timeout_s() -> float:
    text = os.environ.get(_TIMEOUT_VARIABLE, "")
    if not text:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise InvalidValueError(
            f"environment variable {_TIMEOUT_VARIABLE} must be a positive number of seconds, "
            f"got {text!r}"
        )
    return value


def init_from_environment(backend: str | None = None) -> bool:
    """Join the process group ``torchrun`` describes (``WORLD_SIZE``, ``RANK``, ...).

    Does nothing without ``torchrun`` (no ``WORLD_SIZE``, or 1) or when a group
    exists already. The backend is NCCL when CUDA is available (each process
    then uses GPU ``LOCAL_RANK``), gloo otherwise.

    Returns:
        Whether this process is now one of several.
    """
    if dist.is_initialized():
        return is_distributed()
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if not dist.is_available():
        raise InvalidValueError(
            "WORLD_SIZE is set (a torchrun launch) but this torch has no torch.distributed"
        )
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    # torch._dynamo (which torch.optim imports on first use), imported once the group
    # exists, takes references to the group that destroy_process_group does not drop
    # (torch 2.13: its refcount goes from 10 to 20); the group's worker threads then
    # outlive leave() and can free a tensor during interpreter shutdown, which aborts
    # the process (SIGABRT). Imported first, it never sees the group.
    importlib.import_module("torch._dynamo")

    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=_timeout_s()))
    return is_distributed()


def leave() -> None:
    """Leave the process group (after :func:`init_from_environment`); alone, nothing.

    Every process must call it, after its last collective: the group and its
    worker threads are gone when it returns.
    """
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _device() -> torch.device:
    """Where collectives' tensors live: the current GPU under NCCL, else the CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over the processes, in place (on any device the backend serves)."""
    if is_distributed():
        if tensor.device == _device():
            dist.all_reduce(tensor)
        else:
            staged = tensor.to(_device())
            dist.all_reduce(staged)
            tensor.copy_(staged)
    return tensor


class _SumOverProcesses(torch.autograd.Function):
    """``y = sum_r x_r``; the adjoint of each ``x_r`` is the sum of the processes' adjoints
    of ``y`` (the same operation, so it is differentiable again)."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor) -> torch.Tensor:
        return all_reduce_sum(tensor.clone())

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        summed: torch.Tensor = _SumOverProcesses.apply(grad)  # type: ignore[no-untyped-call]
        return summed


def differentiable_sum(tensor: torch.Tensor) -> torch.Tensor:
    """The sum of ``tensor`` over the processes, as a new tensor autograd differentiates
    through (its backward sums the processes' gradients); alone, ``tensor`` itself."""
    if not is_distributed():
        return tensor
    summed: torch.Tensor = _SumOverProcesses.apply(tensor)  # type: ignore[no-untyped-call]
    return summed


def all_reduce_gradients(*values: torch.Tensor) -> None:
    """Sum the ``.grad`` of each of ``values`` over the processes, in place (a process
    that left one without a gradient contributes zeros)."""
    if not is_distributed():
        return
    for value in values:
        if value.grad is None:
            value.grad = torch.zeros_like(value)
        all_reduce_sum(value.grad)


def barrier() -> None:
    """Wait until every process gets here."""
    if is_distributed():
        dist.barrier()


def broadcast_object(value: T, source: int = 0) -> T:
    """Process ``source``'s ``value`` (picklable), on every process."""
    if not is_distributed():
        return value
    holder: list[Any] = [value]
    dist.broadcast_object_list(holder, src=source, device=_device())
    return holder[0]  # type: ignore[no-any-return]


def gather_objects(value: T) -> list[T]:
    """Every process's ``value`` (picklable), in rank order, on every process."""
    if not is_distributed():
        return [value]
    gathered: list[Any] = [None] * world_size()
    dist.all_gather_object(gathered, value)
    return gathered


def _any_failed(failed: bool) -> list[int]:
    flags = torch.zeros(world_size(), dtype=torch.int32, device=_device())
    flags[rank()] = int(failed)
    dist.all_reduce(flags)
    return [index for index, flag in enumerate(flags.tolist()) if flag]


@contextmanager
def all_or_nothing(what: str) -> Iterator[None]:
    """Run the block on every process and agree at its end on whether all succeeded.

    A process whose block raised re-raises its own error; the others raise
    :class:`RankFailedError` naming the failed processes, instead of waiting
    for them in the next collective. Alone, the block runs as it is.
    """
    if not is_distributed():
        yield
        return
    try:
        yield
    except BaseException:
        _any_failed(True)
        raise
    failed = _any_failed(False)
    if failed:
        names = ", ".join(map(str, failed))
        raise RankFailedError(
            f"{what} failed on process {names} of {world_size()}; its error is in that "
            "process's output"
        )


@dataclass(frozen=True)
class _Failed:
    what: str


def on_main(compute: Callable[[], T], what: str) -> T:
    """``compute()`` on process 0 alone; every process returns its result (picklable).

    If it raises on process 0, the others raise :class:`RankFailedError` instead
    of waiting for a result that will not come.
    """
    if not is_distributed():
        return compute()
    if is_main():
        try:
            value = compute()
        except BaseException:
            broadcast_object(_Failed(what))
            raise
        return broadcast_object(value)
    received = broadcast_object(None)
    if isinstance(received, _Failed):
        raise RankFailedError(
            f"{received.what} failed on process 0 of {world_size()}; its error is in that "
            "process's output"
        )
    return cast(T, received)


def deal(items: Sequence[T]) -> list[T]:
    """The items of ``items`` this process takes (see :func:`owned`)."""
    return [items[index] for index in owned(len(items))]
