"""The distillation stage: expert trajectories (MTT), the distilled sets, or the user's file.

Expert trajectories are resolved once, before distillation, and shared by the
plain and the MDT run. A distillation's checkpoints are keyed by everything
but ``iterations``, and kept: raising ``iterations`` continues the finished
run instead of starting over.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ddcal import distributed
from ddcal._random import STREAMS_VERSION
from ddcal.config import ExperimentConfig
from ddcal.data import DistilledSet, load_distilled
from ddcal.distill import DISTILLERS, MTTDistiller, get_distiller, train_experts
from ddcal.distill.base import MatchingDistiller
from ddcal.distill.experts import ExpertTrajectories
from ddcal.errors import InvalidValueError
from ddcal.pipeline.cache import Artifact, ArtifactCache, ConfigView
from ddcal.pipeline.data import ExperimentData, LabelledImages

__all__ = [
    "DISTILLED",
    "EXPERTS",
    "DistilledSets",
    "Runtime",
    "distil",
    "distilled_sets",
    "mdt_placement_matters",
    "user_distilled_set",
]

_DISTILLER_READS = ("method", "ipc", "net", "distill_options", "distill_seed")
EXPERTS = Artifact("experts", reads=_DISTILLER_READS, version=STREAMS_VERSION)
DISTILLED = Artifact(
    "distilled", reads=(*_DISTILLER_READS, "iterations", "dataset"), version=STREAMS_VERSION
)
# Checkpoints outlive a change of ``iterations``: a longer run continues them.
CHECKPOINTS = Artifact("distill-checkpoint", reads=_DISTILLER_READS, version=STREAMS_VERSION)


@dataclass(frozen=True)
class Runtime:
    """How to run, not what to compute: never part of a key.

    ``vectorize``: train the evaluation networks that share a recipe together
    (one batched pass; pays on GPUs). ``compile``: ``torch.compile`` the
    networks' training and DM's networks.
    """

    device: torch.device
    progress: bool
    batch_size: int
    compile: bool = False
    vectorize: bool = False


@dataclass(frozen=True, eq=False)
class DistilledSets:
    """The sets the networks train on: ``plain`` (MDT off) and ``mdt`` (or ``None``).

    ``source`` is the user's file, or ``""`` when ddcal distilled them.
    """

    plain: LabelledImages
    plain_set: DistilledSet
    mdt: LabelledImages | None
    mdt_set: DistilledSet | None
    source: str = ""


def _as_training_set(distilled: DistilledSet) -> LabelledImages:
    return LabelledImages(distilled.images, distilled.labels, distilled.lr)


def user_distilled_set(config: ExperimentConfig, data: ExperimentData) -> DistilledSets:
    """The ``distilled`` file, checked against the dataset it is evaluated on."""
    path = Path(config.distilled).expanduser()
    distilled = load_distilled(path)
    expected = tuple(data.test.images.shape[1:])
    if tuple(distilled.images.shape[1:]) != expected:
        raise InvalidValueError(
            f"config key 'distilled': {path} holds images of shape "
            f"{tuple(distilled.images.shape[1:])}, but dataset {config.dataset!r} has {expected}"
        )
    if distilled.num_classes != data.num_classes:
        raise InvalidValueError(
            f"config key 'distilled': {path} has {distilled.num_classes} classes, but dataset "
            f"{config.dataset!r} has {data.num_classes}"
        )
    return DistilledSets(_as_training_set(distilled), distilled, None, None, source=str(path))


def _distiller(
    view: ConfigView,
    runtime: Runtime,
    *,
    iterations: int,
    mdt_ratio: float,
    mdt_mask_real: bool,
    experts: ExpertTrajectories | None = None,
) -> MatchingDistiller:
    extra = {} if experts is None else {"experts": experts}
    return get_distiller(
        view.method,
        ipc=view.ipc,
        iterations=iterations or None,
        net=view.net,
        mdt_ratio=mdt_ratio,
        mdt_mask_real=mdt_mask_real,
        seed=view.distill_seed,
        device=runtime.device,
        progress=runtime.progress,
        # Where the method has no compiled form, ``compile`` only speeds the networks up.
        compile=runtime.compile and DISTILLERS[view.method].compiles,
        **extra,
        **view.distill_options,
    )


def _experts(
    config: ExperimentConfig, data: ExperimentData, cache: ArtifactCache, runtime: Runtime
) -> tuple[ExpertTrajectories, str]:
    """The MTT experts of this configuration, trained once for every MTT run."""
    distiller = _distiller(
        EXPERTS.view(config), runtime, iterations=0, mdt_ratio=0.0, mdt_mask_real=False
    )
    assert isinstance(distiller, MTTDistiller)
    settings = distiller.expert_settings()

    def compute(folder: Path) -> ExpertTrajectories:
        return train_experts(
            data.pool.images,
            data.pool.labels,
            out_dir=folder,
            device=runtime.device,
            progress=runtime.progress,
            **settings,
        )

    return cache.get(
        EXPERTS,
        config,
        compute=compute,
        load=ExpertTrajectories.from_dir,
        inputs={"pool": data.pool.digest},
        params={"settings": settings},
        suffix="",
        collective=True,
    )


def mdt_placement_matters(config: ExperimentConfig) -> bool:
    """Whether ``mdt_mask_real`` changes what ``config`` computes: only with MDT on and a
    method whose objective has a real batch (not MTT)."""
    return config.mdt_ratio > 0 and DISTILLERS[config.method].masks_real_batch


def distil(
    config: ExperimentConfig, data: ExperimentData, cache: ArtifactCache, runtime: Runtime
) -> DistilledSets:
    """The pool distilled with MDT off, and at ``mdt_ratio`` when it is above 0."""
    experts: ExpertTrajectories | None = None
    inputs = {"pool": data.pool.digest}
    if config.method == "mtt":
        experts, experts_key = _experts(config, data, cache, runtime)
        inputs["experts"] = experts_key
    results: dict[float, DistilledSet] = {}
    for ratio in dict.fromkeys([0.0, config.mdt_ratio]):
        mask_real = ratio > 0 and config.mdt_mask_real and mdt_placement_matters(config)
        # The key names the real side only when it is masked: keys made before stay valid.
        params: dict[str, Any] = {
            "mdt_ratio": ratio,
            **({"mdt_mask_real": True} if mask_real else {}),
        }

        def compute(
            path: Path,
            ratio: float = ratio,
            mask_real: bool = mask_real,
            params: dict[str, Any] = params,
        ) -> DistilledSet:
            view = DISTILLED.view(config)
            distiller = _distiller(
                view,
                runtime,
                iterations=view.iterations,
                mdt_ratio=ratio,
                mdt_mask_real=mask_real,
                experts=experts,
            )
            checkpoints = cache.path(
                CHECKPOINTS, CHECKPOINTS.key(config, inputs=inputs, params=params), ""
            )
            result = distiller.distill(
                data.pool.images,
                data.pool.labels,
                checkpoint_dir=checkpoints,
                checkpoint_every=max(1, distiller.iterations // 10),
            )
            result.meta["dataset"] = view.dataset
            if distributed.is_main():
                result.save(path)
            return result

        results[ratio], _ = cache.get(
            DISTILLED,
            config,
            compute=compute,
            load=load_distilled,
            inputs=inputs,
            params=params,
            collective=True,
        )
    plain = results[0.0]
    mdt = results.get(config.mdt_ratio) if config.mdt_ratio > 0 else None
    return DistilledSets(
        _as_training_set(plain), plain, None if mdt is None else _as_training_set(mdt), mdt
    )


def distilled_sets(
    config: ExperimentConfig, data: ExperimentData, cache: ArtifactCache, runtime: Runtime
) -> tuple[DistilledSets, ExperimentData]:
    """The sets the networks train on, and the data whitened like them (when they carry ZCA)."""
    sets = (
        user_distilled_set(config, data)
        if config.distilled
        else distil(config, data, cache, runtime)
    )
    zca = sets.plain_set.zca
    return sets, data if zca is None else data.whitened(zca)
