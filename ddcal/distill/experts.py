"""MTT expert trajectories: training, sharded storage, lazy loading, reference import.

An *expert* is a ConvNet trained on the real data with plain SGD (the reference
``buffer.py``: lr 0.01, momentum 0, weight decay 0, batch 256, 50 epochs, DSA on
every batch with per-sample parameters). Its *trajectory* is the flattened
parameter vector (``torch.cat([p.reshape(-1) for p in net.parameters()])``, the
order of ``net.parameters()``) at the start and after every epoch: a float32
tensor ``(epochs + 1, P)``.

Storage: one shard per expert, ``<out_dir>/expert_<i:05d>.pt``, written atomically,
holding ``{"format", "trajectory", "config"}``; :func:`train_experts` skips experts
whose shard already exists (resume), and expert ``i`` is drawn from its own seeded
streams, so an interrupted and resumed run writes the same shards as an
uninterrupted one. :class:`ExpertTrajectories` loads shards lazily, on indexing,
with :func:`ddcal._io.load_weights_only` memory-mapped (only the snapshots used
are read from disk) and caches the last one opened.

:func:`import_reference_buffers` converts the reference's
``replay_buffer_<n>.pt`` files (each a list of trajectories, a trajectory a list
of ``epochs + 1`` snapshots, a snapshot the list of ``net.parameters()`` tensors)
into shards.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from ddcal import distributed
from ddcal._io import atomic_write, load_weights_only
from ddcal._random import EXPERT_STREAM, STREAMS_VERSION, derived_generator, derived_global_rng
from ddcal._validation import check_positive_int
from ddcal.augment import DEFAULT_STRATEGY, DSA, dsa_from_strategy
from ddcal.errors import InvalidValueError
from ddcal.models import ConvNet, build_convnet

FORMAT = "ddcal-expert-v1"
SHARD_PATTERN = "expert_{:05d}.pt"
_SHARD_RE = re.compile(r"^expert_(\d{5})\.pt$")
_REFERENCE_RE = re.compile(r"^replay_buffer_(\d+)\.pt$")
# The reference ``buffer.py``'s expert optimiser: plain SGD on batches of 256.
EXPERT_MOMENTUM = 0.0
EXPERT_WEIGHT_DECAY = 0.0
EXPERT_BATCH_SIZE = 256


def flatten_parameters(network: torch.nn.Module) -> Tensor:
    """``(P,)`` float32 copy of ``network.parameters()`` flattened in order, on the CPU."""
    return torch.cat([p.detach().reshape(-1) for p in network.parameters()]).float().cpu()


def build_expert_network(
    net: str,
    in_channels: int,
    num_classes: int,
    im_size: tuple[int, int],
    *,
    width: int,
    seed: int,
    index: int,
) -> ConvNet:
    """Expert ``index``'s initial ConvNet: drawn from ``derived_generator(seed,
    EXPERT_STREAM, index, 0)`` (the global generator is left as it was)."""
    with derived_global_rng(seed, EXPERT_STREAM, index, 0):
        return build_convnet(net, in_channels, num_classes, im_size, width=width)


class ExpertTrajectories(Sequence[Tensor]):
    """A sequence of expert trajectories, each a float32 ``(S, P)`` tensor (``S`` snapshots).

    Build it from shard files (:meth:`from_dir`, loaded lazily on indexing, the last
    one cached) or from tensors in memory (:meth:`from_tensors`).
    """

    def __init__(self, sources: Sequence[Path | Tensor]) -> None:
        if len(sources) == 0:
            raise InvalidValueError("expert trajectories must not be empty")
        self._sources = list(sources)
        self._cache: tuple[int, Tensor] | None = None
        first = self[0]
        self.num_snapshots, self.num_params = int(first.shape[0]), int(first.shape[1])

    @classmethod
    def from_dir(cls, path: str | Path) -> ExpertTrajectories:
        """All ``expert_<i>.pt`` shards in ``path``, in index order."""
        folder = Path(path)
        if not folder.is_dir():
            raise InvalidValueError(f"expert directory {folder} does not exist")
        shards = sorted(p for p in folder.iterdir() if _SHARD_RE.match(p.name))
        if not shards:
            raise InvalidValueError(f"no expert shards (expert_*.pt) found in {folder}")
        return cls(shards)

    @classmethod
    def from_tensors(cls, trajectories: Sequence[Tensor]) -> ExpertTrajectories:
        """In-memory trajectories, each ``(S, P)`` with the same shape."""
        checked = []
        for i, t in enumerate(trajectories):
            if not isinstance(t, Tensor) or t.ndim != 2 or not t.is_floating_point():
                raise InvalidValueError(f"trajectory {i} must be a floating tensor (S, P)")
            checked.append(t.detach().float().cpu())
        return cls(checked)

    @property
    def paths(self) -> list[Path] | None:
        """The shard files, or ``None`` for in-memory trajectories."""
        if all(isinstance(s, Path) for s in self._sources):
            return [s for s in self._sources if isinstance(s, Path)]
        return None

    def describe(self) -> str:
        """A plain description for configurations (shard folder, or in-memory sizes)."""
        paths = self.paths
        where = str(paths[0].parent) if paths else "in-memory"
        return f"{where}: {len(self)} experts x {self.num_snapshots} snapshots x {self.num_params}"

    def __len__(self) -> int:
        return len(self._sources)

    def __getitem__(self, index: int) -> Tensor:  # type: ignore[override]
        index = range(len(self))[index]
        source = self._sources[index]
        if isinstance(source, Tensor):
            trajectory = source
        elif self._cache is not None and self._cache[0] == index:
            trajectory = self._cache[1]
        else:
            trajectory = _read_shard(source)["trajectory"]
            self._cache = (index, trajectory)
        if hasattr(self, "num_params") and tuple(trajectory.shape) != (
            self.num_snapshots,
            self.num_params,
        ):
            raise InvalidValueError(
                f"expert {index} has shape {tuple(trajectory.shape)}, expected "
                f"({self.num_snapshots}, {self.num_params}) like expert 0"
            )
        return trajectory


def _read_shard(path: Path) -> dict[str, Any]:
    # mmap: a step reads two snapshots of a trajectory, only their pages are read.
    content = load_weights_only(path, mmap=True)
    if not isinstance(content, dict) or content.get("format") != FORMAT:
        raise InvalidValueError(f"{path} is not a ddcal expert shard (format {FORMAT!r})")
    trajectory = content["trajectory"]
    if not isinstance(trajectory, Tensor) or trajectory.ndim != 2:
        raise InvalidValueError(f"{path}: trajectory must be a (S, P) tensor")
    return content


def _write_shard(path: Path, trajectory: Tensor, config: dict[str, Any]) -> None:
    with atomic_write(path) as handle:
        torch.save({"format": FORMAT, "trajectory": trajectory, "config": config}, handle)


def train_experts(
    images: Tensor,
    labels: Tensor,
    *,
    num_experts: int,
    out_dir: str | Path | None = None,
    epochs: int = 50,
    lr: float = 0.01,
    momentum: float = EXPERT_MOMENTUM,
    weight_decay: float = EXPERT_WEIGHT_DECAY,
    batch_size: int = EXPERT_BATCH_SIZE,
    net: str = "ConvNetD3",
    width: int = 128,
    dsa_strategy: str = DEFAULT_STRATEGY,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> ExpertTrajectories:
    """Train ``num_experts`` experts on ``images (N, C, H, W)`` / ``labels (N,)``.

    Plain SGD (the reference ``buffer.py`` defaults: lr 0.01, momentum 0, weight
    decay 0, batch 256, no lr decay), cross-entropy, DSA with per-sample
    parameters on every training batch (``dsa_strategy="none"`` switches it off).
    Expert ``i`` draws its initialisation, batch order and augmentation from
    streams seeded by ``(seed, i)``.

    With ``out_dir`` each expert is saved as soon as it is trained, atomically,
    and experts whose shard exists are skipped (their configuration must match);
    the result loads lazily from there. Without it the trajectories stay in memory.
    Under ``torchrun`` process ``r`` trains experts ``r, r + world, ...`` (each
    from its own streams: the trajectories are the single-process ones) and every
    process returns all of them.
    """
    num_experts = check_positive_int(num_experts, "num_experts")
    epochs = check_positive_int(epochs, "epochs")
    batch_size = check_positive_int(batch_size, "batch_size")
    if images.ndim != 4 or labels.shape != images.shape[:1]:
        raise InvalidValueError(
            f"images must be (N, C, H, W) and labels (N,), got {tuple(images.shape)} "
            f"and {tuple(labels.shape)}"
        )
    device = torch.device(device)
    labels = labels.long()
    num_classes = int(labels.max()) + 1
    config: dict[str, Any] = {
        "net": net,
        "width": int(width),
        "epochs": epochs,
        "lr": float(lr),
        "momentum": float(momentum),
        "weight_decay": float(weight_decay),
        "batch_size": batch_size,
        "dsa_strategy": dsa_strategy,
        "seed": int(seed),
        "num_classes": num_classes,
        "image_shape": list(images.shape[1:]),
        "num_images": int(images.shape[0]),
        "random_streams": STREAMS_VERSION,
    }
    folder = None if out_dir is None else Path(out_dir)
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
    augment = dsa_from_strategy(dsa_strategy)
    images, labels = images.to(device), labels.to(device)
    trained: dict[int, Tensor] = {}
    mine = distributed.owned(num_experts)
    with distributed.all_or_nothing("training experts"):
        hidden = not progress or not distributed.is_main()
        for index in tqdm(mine, desc="experts", disable=hidden, leave=False):
            path = None if folder is None else folder / SHARD_PATTERN.format(index)
            if path is not None and path.exists():
                found = _read_shard(path)["config"]
                if found != config:
                    raise InvalidValueError(
                        f"{path} was trained with another configuration ({found}); "
                        f"expected {config}: use another out_dir or the same settings"
                    )
                continue
            trajectory = _train_one(images, labels, num_classes, index, config, augment, device)
            if path is None:
                trained[index] = trajectory
            else:
                _write_shard(path, trajectory, config)
    if folder is not None:
        return ExpertTrajectories([folder / SHARD_PATTERN.format(i) for i in range(num_experts)])
    world = distributed.world_size()
    everyone: list[Path | Tensor] = [
        distributed.broadcast_object(trained.get(i, torch.empty(0)), source=i % world)
        for i in range(num_experts)
    ]
    return ExpertTrajectories(everyone)


def _train_one(
    images: Tensor,
    labels: Tensor,
    num_classes: int,
    index: int,
    config: dict[str, Any],
    augment: DSA | None,
    device: torch.device,
) -> Tensor:
    seed = config["seed"]
    network = build_expert_network(
        config["net"],
        images.shape[1],
        num_classes,
        (images.shape[2], images.shape[3]),
        width=config["width"],
        seed=seed,
        index=index,
    ).to(device)
    network.train()
    optimizer = torch.optim.SGD(
        network.parameters(),
        lr=config["lr"],
        momentum=config["momentum"],
        weight_decay=config["weight_decay"],
    )
    snapshots = [flatten_parameters(network)]
    for epoch in range(config["epochs"]):
        generator = derived_generator(seed, EXPERT_STREAM, index, 1, epoch)
        order = torch.randperm(images.shape[0], generator=generator)
        for batch in torch.split(order, config["batch_size"]):
            batch = batch.to(device)
            x, y = images[batch], labels[batch]
            if augment is not None:
                x = augment(x, generator=generator)
            loss = F.cross_entropy(network(x), y)
            optimizer.zero_grad(set_to_none=True)
            torch.autograd.backward(loss)
            optimizer.step()
        snapshots.append(flatten_parameters(network))
    return torch.stack(snapshots)


def import_reference_buffers(
    source: str | Path | Sequence[str | Path], out_dir: str | Path
) -> ExpertTrajectories:
    """Convert the reference's ``replay_buffer_<n>.pt`` files into ddcal shards.

    Args:
        source: a folder (its ``replay_buffer_<n>.pt`` files in order of ``n``) or
            a list of such files. Each holds a list of trajectories; a trajectory is
            a list of ``epochs + 1`` snapshots; a snapshot the list of the network's
            parameter tensors in ``net.parameters()`` order (the reference ConvNet
            has the same order as :class:`~ddcal.models.ConvNet`).
        out_dir: where to write ``expert_<i>.pt`` (experts numbered across files
            in order); existing shards are overwritten.

    Returns:
        The imported trajectories, loading lazily from ``out_dir``.
    """
    if isinstance(source, (str, Path)):
        folder = Path(source)
        if folder.is_dir():
            found = [
                (int(m.group(1)), p) for p in folder.iterdir() if (m := _REFERENCE_RE.match(p.name))
            ]
            files = [p for _, p in sorted(found)]
        else:
            files = [folder]
    else:
        files = [Path(p) for p in source]
    if not files:
        raise InvalidValueError(f"no replay_buffer_<n>.pt files found in {source}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: list[Path | Tensor] = []
    for file in files:
        buffer = load_weights_only(file)
        if not isinstance(buffer, list):
            raise InvalidValueError(
                f"{file} must hold a list of trajectories, got {type(buffer).__name__}"
            )
        for number, trajectory in enumerate(buffer):
            if not isinstance(trajectory, list) or not all(
                isinstance(s, list) and all(isinstance(p, Tensor) for p in s) for s in trajectory
            ):
                raise InvalidValueError(
                    f"{file}: trajectory {number} must be a list of snapshots, each a list of "
                    "parameter tensors"
                )
            flat = torch.stack([torch.cat([p.reshape(-1).float() for p in s]) for s in trajectory])
            path = out / SHARD_PATTERN.format(len(paths))
            _write_shard(path, flat, {"imported_from": str(file), "position": number})
            paths.append(path)
    return ExpertTrajectories(paths)
