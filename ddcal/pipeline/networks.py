"""The training stage: the evaluation networks of each arm and seed, and their logits.

An *arm* is one kind of evaluation network: what it trains on, with which
loss, how long and at which learning rate. A network's key is the digest of
its training tensors plus its resolved settings, so two arms that train the
same way on the same tensors share one network, and nothing that changes a
network can be left out of its key.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ddcal import distributed
from ddcal.augment import dsa_from_strategy
from ddcal.config import ExperimentConfig
from ddcal.inference import load_predictions, predict_logits, save_predictions
from ddcal.models import ConvNet, build_convnet, load_checkpoint, save_checkpoint
from ddcal.pipeline.cache import Artifact, ArtifactCache, ConfigView, StaleArtifactError
from ddcal.pipeline.data import ExperimentData, LabelledImages
from ddcal.pipeline.distilled import DistilledSets, Runtime
from ddcal.sampling import per_class_split
from ddcal.train import train_network
from ddcal.train import train_networks as train_together

__all__ = [
    "LOGITS",
    "NETWORK",
    "Arm",
    "SeedNetworks",
    "build_arms",
    "cached_logits",
    "train_networks",
    "trained_network",
]

NETWORK = Artifact("net", reads=("net", "width", "dsa", "dsa_strategy"))
LOGITS = Artifact("logits", reads=())

FULL_DATA_LR = 0.01
#: The partner network of the agreement calibrator: the ``ce`` recipe, another seed.
PARTNER_SEED_OFFSET = 1_000_003


@dataclass(frozen=True, eq=False)
class Arm:
    """One kind of evaluation network.

    Attributes:
        id: ``"ce"``, ``"holdout"``, a baseline loss name, ``"mdt"`` or ``"full"``.
        train: what it trains on.
        loss: the training loss (:data:`ddcal.losses.LOSSES`).
        epochs, lr: the protocol's budget and learning rate.
        holdout: the held-out part of the distilled set (``"holdout"`` arm only).
        seed_offset: added to the evaluation seed for this arm's network.
    """

    id: str
    train: LabelledImages
    loss: str
    epochs: int
    lr: float
    holdout: LabelledImages | None = None
    seed_offset: int = 0


@dataclass(frozen=True)
class Arms:
    """The arms of one seed, and why an expected one is missing."""

    by_id: dict[str, Arm]
    notes: dict[str, str]


def build_arms(
    config: ExperimentConfig, sets: DistilledSets, data: ExperimentData, seed: int
) -> Arms:
    """The arms ``config`` asks for, for evaluation seed ``seed``."""
    distilled = sets.plain
    lr = config.lr or distilled.lr or FULL_DATA_LR
    arms = [Arm("ce", distilled, "ce", config.epochs, lr)]
    notes: dict[str, str] = {}
    counts = torch.bincount(distilled.class_labels, minlength=data.num_classes)
    if int(counts.min()) >= 2:
        train, held = per_class_split(distilled.class_labels, config.holdout_fraction, seed=seed)
        arms.append(
            Arm(
                "holdout",
                distilled.subset(train),
                "ce",
                config.epochs,
                lr,
                holdout=distilled.subset(held),
            )
        )
    else:
        notes["holdout"] = (
            f"a per-class hold-out needs at least 2 images per class; this set has "
            f"{int(counts.min())}"
        )
    arms += [Arm(loss, distilled, loss, config.epochs, lr) for loss in config.baselines]
    if "agreement" in config.calibrators:
        arms.append(
            Arm("partner", distilled, "ce", config.epochs, lr, seed_offset=PARTNER_SEED_OFFSET)
        )
    if sets.mdt is not None:
        mdt_lr = config.lr or sets.mdt.lr or FULL_DATA_LR
        arms.append(Arm("mdt", sets.mdt, "ce", config.epochs, mdt_lr))
    if config.full_data_epochs > 0:
        pool = data.pool
        if 0 < config.full_data_limit < len(pool):
            notes["full"] = (
                f"trained on {config.full_data_limit} of the {len(pool)} training images "
                "(full_data_limit)"
            )
            generator = torch.Generator().manual_seed(config.distill_seed)
            pool = pool.subset(
                torch.randperm(len(pool), generator=generator)[: config.full_data_limit]
            )
        arms.append(Arm("full", pool, "ce", config.full_data_epochs, FULL_DATA_LR))
    return Arms({arm.id: arm for arm in arms}, notes)


@dataclass(frozen=True, eq=False)
class TrainedNetwork:
    """A trained network and its artifact key (what its logits are keyed by)."""

    net: ConvNet
    key: str


def _for_inference(net: ConvNet, device: torch.device) -> ConvNet:
    """channels_last on a CPU: every later forward pass (test logits, masked fits,
    analysis) is ~1.3x faster, with the same logits up to float rounding."""
    if device.type == "cpu":
        net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    return net


def _fresh_network(view: ConfigView, arm: Arm, seed: int, num_classes: int) -> ConvNet:
    """The arm's network before training, initialised from ``seed`` alone."""
    images = arm.train.images
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_convnet(
            view.net,
            images.shape[1],
            num_classes,
            (images.shape[2], images.shape[3]),
            width=view.width,
        )


def _network_key(
    config: ExperimentConfig, arm: Arm, seed: int, num_classes: int
) -> tuple[dict[str, str], dict[str, Any], str]:
    """What a network's key hashes besides the config (``seed`` with the arm's offset)."""
    inputs = {"train": arm.train.digest}
    params = {
        "loss": arm.loss,
        "epochs": arm.epochs,
        "lr": arm.lr,
        "seed": seed,
        "num_classes": num_classes,  # the head's size: not always visible in the labels
    }
    return inputs, params, NETWORK.key(config, inputs=inputs, params=params)


def trained_network(
    config: ExperimentConfig,
    arm: Arm,
    seed: int,
    num_classes: int,
    cache: ArtifactCache,
    runtime: Runtime,
    pretrained: Mapping[str, ConvNet] | None = None,
) -> TrainedNetwork:
    """The arm's network for ``seed``: trained with the protocol, or from the cache.

    ``pretrained`` holds networks already trained (together) for their keys:
    they are stored instead of trained again.
    """
    view = NETWORK.view(config)
    seed = seed + arm.seed_offset
    inputs, params, key = _network_key(config, arm, seed, num_classes)

    def compute(path: Path) -> ConvNet:
        net = (pretrained or {}).get(key)
        if net is None:
            net = _fresh_network(view, arm, seed, num_classes)
            train_network(
                net,
                arm.train.images,
                arm.train.labels,
                epochs=arm.epochs,
                lr=arm.lr,
                augment=dsa_from_strategy(view.dsa_strategy) if view.dsa else None,
                loss=arm.loss,
                seed=seed,
                device=runtime.device,
                compile=runtime.compile,
            )
        save_checkpoint(net, path, extra={"arm": arm.id, "seed": seed})
        return net

    def load(path: Path) -> ConvNet:
        return load_checkpoint(path, map_location=runtime.device)

    net, _ = cache.get(NETWORK, config, compute=compute, load=load, inputs=inputs, params=params)
    return TrainedNetwork(_for_inference(net, runtime.device), key)


def _train_missing_together(
    config: ExperimentConfig,
    plans: Sequence[tuple[int, Arms]],
    num_classes: int,
    cache: ArtifactCache,
    runtime: Runtime,
) -> dict[str, ConvNet]:
    """The networks not stored yet, trained together where they share a recipe.

    A recipe is the training set's shape, the loss, the epochs and the learning
    rate: the networks of every seed, and arms such as ``ce``, ``mdt`` and
    ``partner`` that train alike on sets of one size. Returns them by key.
    """
    view = NETWORK.view(config)
    groups: dict[tuple[Any, ...], dict[str, tuple[Arm, int]]] = {}
    for seed, arms in plans:
        for arm in arms.by_id.values():
            own_seed = seed + arm.seed_offset
            key = _network_key(config, arm, own_seed, num_classes)[2]
            if not cache.stored(NETWORK, key):
                recipe = (tuple(arm.train.images.shape), arm.loss, arm.epochs, arm.lr)
                groups.setdefault(recipe, {})[key] = (arm, own_seed)
    trained: dict[str, ConvNet] = {}
    for members in groups.values():
        if len(members) < 2:
            continue
        nets = [_fresh_network(view, arm, seed, num_classes) for arm, seed in members.values()]
        first = next(iter(members.values()))[0]
        train_together(
            nets,
            [arm.train.images for arm, _ in members.values()],
            [arm.train.labels for arm, _ in members.values()],
            seeds=[seed for _, seed in members.values()],
            epochs=first.epochs,
            lr=first.lr,
            augment=dsa_from_strategy(view.dsa_strategy) if view.dsa else None,
            loss=first.loss,
            device=runtime.device,
            vectorize=True,
        )
        trained.update(zip(members, nets, strict=True))
    return trained


def _train_own_share(
    config: ExperimentConfig,
    plans: Sequence[tuple[int, Arms]],
    num_classes: int,
    cache: ArtifactCache,
    runtime: Runtime,
) -> None:
    """This process's share of the networks not stored yet, trained and stored."""
    distributed.barrier()  # every process lists the missing ones before any is stored
    missing: dict[str, tuple[Arm, int]] = {}
    for seed, arms in plans:
        for arm in arms.by_id.values():
            key = _network_key(config, arm, seed + arm.seed_offset, num_classes)[2]
            if not cache.stored(NETWORK, key):
                missing.setdefault(key, (arm, seed))
    with distributed.all_or_nothing("training the evaluation networks"):
        for arm, seed in distributed.deal(list(missing.values())):
            trained_network(config, arm, seed, num_classes, cache, runtime)


def cached_logits(
    network: TrainedNetwork,
    images: LabelledImages,
    cache: ArtifactCache,
    runtime: Runtime,
) -> Tensor:
    """``network``'s logits on ``images`` ``(N, C)`` on the CPU, computed once.

    Loading checks that the stored labels are ``images``' and the shape is right.
    """

    def compute(path: Path) -> Tensor:
        logits = predict_logits(
            network.net, images.images, batch_size=runtime.batch_size, device=runtime.device
        ).cpu()
        save_predictions(path, logits, images.class_labels)
        return logits

    def load(path: Path) -> Tensor:
        logits, labels = load_predictions(path)
        if logits.shape[0] != len(images) or not torch.equal(labels, images.class_labels.cpu()):
            raise StaleArtifactError(f"{path.name} holds logits of other images")
        return logits

    logits, _ = cache.get(
        LOGITS,
        None,
        compute=compute,
        load=load,
        inputs={"network": network.key, "images": images.digest},
    )
    return logits


@dataclass(frozen=True, eq=False)
class SeedNetworks:
    """One evaluation seed's arms and their trained networks (by arm id)."""

    seed: int
    arms: Arms
    networks: dict[str, TrainedNetwork]


def train_networks(
    config: ExperimentConfig,
    sets: DistilledSets,
    data: ExperimentData,
    cache: ArtifactCache,
    runtime: Runtime,
    *,
    on_network: Callable[[], None] = lambda: None,
) -> list[SeedNetworks]:
    """Every arm's network for every seed of ``config``, in seed order.

    With ``runtime.vectorize`` the networks still to train are trained together
    where they share a recipe (:func:`ddcal.train.train_networks`). Under
    ``torchrun`` the processes first train the missing ones between them (each
    stores its own), then every process loads all of them.
    """
    plans = [(seed, build_arms(config, sets, data, seed)) for seed in config.seeds]
    if distributed.is_distributed():
        _train_own_share(config, plans, data.num_classes, cache, runtime)
    pretrained = (
        _train_missing_together(config, plans, data.num_classes, cache, runtime)
        if runtime.vectorize
        else {}
    )
    trained = []
    for seed, arms in plans:
        networks = {}
        for arm in arms.by_id.values():
            networks[arm.id] = trained_network(
                config, arm, seed, data.num_classes, cache, runtime, pretrained
            )
            on_network()
        trained.append(SeedNetworks(seed, arms, networks))
    return trained
