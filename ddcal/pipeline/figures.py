"""The figures of a run: reliability diagrams per row, the panel, and the analyses."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor

from ddcal import plot
from ddcal.analysis import explained_variance_ratio, feature_projections, max_logit_statistics
from ddcal.config import ExperimentConfig
from ddcal.pipeline.data import ExperimentData
from ddcal.pipeline.distilled import DistilledSets, Runtime
from ddcal.pipeline.networks import TrainedNetwork
from ddcal.pipeline.rows import N_BINS, RowSpec
from ddcal.sampling import PerClassSampler

__all__ = ["PANEL_ROWS", "FigureInputs", "matplotlib_missing", "write_figures"]

#: The rows of the reliability panel, by id: what the table leads with.
PANEL_ROWS = ("raw", "ts-distilled", "mts-auto", "oracle-ts")

_OWNERS = {"ce": ("distilled-data network", "distilled"), "full": ("full-data network", "full")}


def slug(name: str) -> str:
    """``"MTS r=0.5"`` -> ``"mts_r_0_5"``: a file-name form of a row label."""
    keep = "".join(ch.lower() if ch.isalnum() else "_" for ch in name)
    return "_".join(part for part in keep.split("_") if part)


@dataclass(frozen=True, eq=False)
class FigureInputs:
    """What the figures show: the first seed's rows, networks and data.

    Attributes:
        specs: the table's rows.
        first_seed: ``{row id: (test logits, temperature)}`` of the first seed.
        data, sets: the experiment's data (whitened like the sets) and distilled sets.
        networks: the first seed's networks by arm id.
        test_logits: ``test_logits(arm_id)``, cached test logits of that network.
    """

    specs: list[RowSpec]
    first_seed: dict[str, tuple[Tensor, float]]
    data: ExperimentData
    sets: DistilledSets
    networks: dict[str, TrainedNetwork]
    test_logits: Callable[[str], Tensor]


def matplotlib_missing() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return True
    return False


def write_figures(
    folder: Path,
    config: ExperimentConfig,
    inputs: FigureInputs,
    runtime: Runtime,
    *,
    on_figure: Callable[[], None] = lambda: None,
) -> list[Path]:
    """Every figure of the first seed under ``folder``; returns the files written."""
    specs, first_seed, data, sets = inputs.specs, inputs.first_seed, inputs.data, inputs.sets
    networks, test_logits = inputs.networks, inputs.test_logits
    written: list[Path] = []
    labels = data.test.class_labels

    def save(fig: Any, name: str) -> None:
        written.append(plot.save_figure(fig, folder / name))
        on_figure()

    label_of = {spec.id: spec.label for spec in specs}
    for row_id, (logits, temperature) in first_seed.items():
        fig = plot.reliability_diagram(
            logits / temperature, labels, from_logits=True, n_bins=N_BINS, title=label_of[row_id]
        )
        save(fig, f"reliability_{slug(label_of[row_id])}.png")
    panel = {
        label_of[row_id]: (first_seed[row_id][0] / first_seed[row_id][1], labels)
        for row_id in PANEL_ROWS
        if row_id in first_seed
    }
    save(plot.reliability_panel(panel, from_logits=True, n_bins=N_BINS), "reliability_panel.png")

    curves = {"distilled": explained_variance_ratio(sets.plain.images)}
    if sets.mdt is not None:
        curves[f"distilled + MDT r={config.mdt_ratio:g}"] = explained_variance_ratio(
            sets.mdt.images
        )
    per_class = max(1, len(sets.plain) // data.num_classes)
    sample = PerClassSampler(
        data.pool.class_labels, per_class=per_class, seed=config.distill_seed
    ).indices()
    curves["random real sample"] = explained_variance_ratio(data.pool.images[sample])
    save(plot.plot_explained_variance(curves), "explained_variance.png")

    count = min(config.analysis_images, len(data.test))
    if count < 2:
        return written
    images = data.test.images[:count]
    ratio = config.mdt_ratio if config.mdt_ratio > 0 else 0.5
    histograms: dict[str, Tensor] = {}
    for arm, (owner, _) in _OWNERS.items():
        if arm in networks:
            histograms[f"{owner}, clean"] = test_logits(arm)[:count].max(dim=1).values
            masked = max_logit_statistics(
                networks[arm].net,
                images,
                ratio,
                seed=0,
                batch_size=runtime.batch_size,
                device=runtime.device,
            )
            histograms[f"{owner}, masked r={ratio:g}"] = masked.values
    save(plot.plot_max_logit_histograms(histograms), "max_logits.png")
    for method in ["pca"] + (["tsne"] if _has_sklearn() else []):
        for arm, (_, name) in _OWNERS.items():
            if arm in networks:
                projections = feature_projections(
                    networks[arm].net,
                    images,
                    method,
                    seed=0,
                    batch_size=runtime.batch_size,
                    device=runtime.device,
                )
                fig = plot.plot_feature_projections(projections, labels[:count])
                save(fig, f"features_{method}_{name}.png")
    return written


def _has_sklearn() -> bool:
    try:
        import sklearn  # noqa: F401
    except ImportError:
        return False
    return True
