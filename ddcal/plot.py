"""Reliability diagrams and plots of the analyses in :mod:`ddcal.analysis`.

matplotlib is optional (``pip install 'ddcal[plot]'``) and imported only when
a function here runs. Figures are built with ``matplotlib.figure.Figure``
directly: no pyplot, no global state, no display needed. Every function returns
its ``Figure``; nothing is shown or saved unless you call :func:`save_figure`.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from ddcal._io import atomic_write
from ddcal._validation import (
    as_tensor,
    check_bool,
    check_choice,
    check_labels,
    check_positive_int,
    check_scores,
)
from ddcal.analysis import EXPLAINED_RATIO_KINDS, MaxLogitStatistics
from ddcal.errors import InvalidTypeError, InvalidValueError
from ddcal.metrics import ReliabilityBins, calibration_error, reliability_bins

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "plot_ece_against_ratio",
    "plot_explained_variance",
    "plot_feature_projections",
    "plot_max_logit_histograms",
    "reliability_diagram",
    "reliability_panel",
    "save_figure",
]

_NEEDS_MATPLOTLIB = "ddcal.plot needs matplotlib: pip install 'ddcal[plot]'"
_PANEL_INCHES = 3.6
#: Where the count histogram sits, in the reliability axes' coordinates: under it.
_HISTOGRAM_BOUNDS = (0.0, -0.37, 1.0, 0.33)
#: The height of a figure with count histograms, in panel heights.
_HISTOGRAM_HEIGHT = 1.4
_LEGEND_MAX_CLASSES = 20


def _matplotlib(module: str) -> Any:
    """``matplotlib.<module>``, or an ImportError that says how to install matplotlib."""
    try:
        return importlib.import_module(f"matplotlib.{module}")
    except ImportError as exc:
        raise ImportError(_NEEDS_MATPLOTLIB) from exc


def _new_figure(panels: int = 1, *, height: float = 1.0) -> Figure:
    """A figure of ``panels`` square panels side by side, ``height`` times as tall."""
    figure: Figure = _matplotlib("figure").Figure(
        figsize=(_PANEL_INCHES * panels, _PANEL_INCHES * height), layout="constrained"
    )
    return figure


def _root_figure(ax: Axes) -> Figure:
    """The top-level figure of ``ax``, also when ``ax`` lives in a subfigure."""
    figure_class = _matplotlib("figure").Figure
    owner: Any = ax.figure
    while not isinstance(owner, figure_class):
        owner = owner.figure
    root: Figure = owner
    return root


def _check_named(mapping: Any, name: str) -> dict[str, Any]:
    """A non-empty mapping with ``str`` keys, as a dict in its order."""
    if not isinstance(mapping, Mapping):
        raise InvalidTypeError(
            f"{name} must be a mapping of names to data, got {type(mapping).__name__}"
        )
    if not mapping:
        raise InvalidValueError(f"{name} is empty: give at least one named entry")
    for key in mapping:
        if not isinstance(key, str):
            raise InvalidTypeError(f"{name} keys must be str, got {type(key).__name__} {key!r}")
    return dict(mapping)


def _check_finite_float(x: Any, name: str, *, ndim: int) -> Tensor:
    """A non-empty real tensor with ``ndim`` dimensions and finite values, as float64 on the CPU."""
    tensor = as_tensor(x, name)
    if tensor.ndim != ndim:
        raise InvalidValueError(
            f"{name} must have {ndim} dimension(s), got shape {tuple(tensor.shape)}"
        )
    if tensor.numel() == 0:
        raise InvalidValueError(f"{name} is empty: got shape {tuple(tensor.shape)}")
    if tensor.is_complex() or tensor.dtype == torch.bool:
        raise InvalidTypeError(f"{name} must hold real numbers, got dtype {tensor.dtype}")
    tensor = tensor.detach().to(device="cpu", dtype=torch.float64)
    if not bool(torch.isfinite(tensor).all()):
        raise InvalidValueError(f"{name} must be finite, got NaN or inf")
    return tensor


def _check_axes(ax: Any) -> None:
    if not isinstance(ax, _matplotlib("axes").Axes):
        raise InvalidTypeError(f"ax must be a matplotlib Axes or None, got {type(ax).__name__}")


def _draw_reliability(
    ax: Axes,
    scores: Any,
    labels: Any,
    *,
    from_logits: bool,
    n_bins: int,
    title: str | None,
    histogram: bool,
    scores_name: str,
    labels_name: str,
) -> None:
    """Draw one reliability diagram into ``ax``; errors name the caller's arguments."""
    checked = check_scores(scores, scores_name, from_logits=from_logits)
    targets = check_labels(
        labels, labels_name, num_samples=checked.shape[0], num_classes=checked.shape[1]
    )
    bins = reliability_bins(checked, targets, n_bins=n_bins, from_logits=from_logits)
    ece = calibration_error(checked, targets, n_bins=n_bins, from_logits=from_logits)
    filled = bins.count > 0
    left = bins.edges[:-1][filled].numpy()
    width = (bins.edges[1:] - bins.edges[:-1])[filled].numpy()
    accuracy = bins.accuracy[filled].numpy()
    confidence = bins.confidence[filled].numpy()
    ax.bar(
        left, accuracy, width, align="edge", color="tab:blue", edgecolor="black", label="accuracy"
    )
    ax.bar(
        left,
        np.abs(confidence - accuracy),
        width,
        bottom=np.minimum(confidence, accuracy),
        align="edge",
        color="tab:red",
        alpha=0.35,
        edgecolor="tab:red",
        hatch="//",
        label="gap to confidence",
    )
    ax.plot([0.0, 1.0], [0.0, 1.0], linestyle="--", color="gray", label="perfect calibration")
    ax.text(
        0.97,
        0.03,
        f"ECE = {100 * ece:.2f}%",
        transform=ax.transAxes,
        ha="right",
        va="bottom",
        bbox={"boxstyle": "round", "facecolor": "white", "alpha": 0.8},
    )
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(0.0, 1.0)
    ax.set_aspect("equal")
    ax.set_ylabel("accuracy")
    ax.legend(loc="upper left", fontsize="small")
    if title is not None:
        ax.set_title(title)
    if histogram:
        ax.tick_params(labelbottom=False)
        _draw_count_histogram(ax, bins)
    else:
        ax.set_xlabel("confidence")


def _draw_count_histogram(ax: Axes, bins: ReliabilityBins) -> None:
    """The samples per bin in an axes under ``ax``, with the mean confidence and the accuracy.

    The axes is a child of ``ax`` (``ax.child_axes[0]``), sharing its x axis,
    so it moves with ``ax`` in any layout; the lines show over-confidence at a
    glance as the confidence line right of the accuracy line (Guo et al., 2017).
    """
    counts = bins.count.to(torch.float64)
    filled = counts > 0  # the means of an empty bin are NaN
    total = float(counts.sum())
    mean_confidence = float((counts * bins.confidence)[filled].sum()) / total
    overall_accuracy = float((counts * bins.accuracy)[filled].sum()) / total
    hist = ax.inset_axes(_HISTOGRAM_BOUNDS, sharex=ax)
    hist.bar(
        bins.edges[:-1].numpy(),
        counts.numpy(),
        (bins.edges[1:] - bins.edges[:-1]).numpy(),
        align="edge",
        color="gray",
        edgecolor="black",
        label="samples",
    )
    hist.axvline(overall_accuracy, color="tab:blue", linestyle="--", label="accuracy")
    hist.axvline(mean_confidence, color="tab:red", linestyle=":", label="mean confidence")
    hist.set_xlabel("confidence")
    hist.set_ylabel("count")
    hist.set_ylim(0.0, 1.05 * float(counts.max()))
    hist.legend(loc="best", fontsize="x-small", framealpha=0.8)


def reliability_diagram(
    confidences_or_logits: Any,
    labels: Any,
    *,
    from_logits: bool = False,
    n_bins: int = 15,
    title: str | None = None,
    histogram: bool = True,
    ax: Axes | None = None,
) -> Figure:
    """Reliability diagram: accuracy per confidence bin against the diagonal, counts under it.

    Bins and values come from :func:`ddcal.metrics.reliability_bins` (``n_bins``
    equal-width bins, ``[a, b)``, the last closed); only non-empty bins get
    bars. Blue bars: accuracy of each bin; hatched red bars: the gap between
    accuracy and the bin's mean confidence; dashed: perfect calibration. The
    ECE (:func:`ddcal.metrics.calibration_error`, same bins) is printed in the
    lower right corner. Under the diagram, sharing its confidence axis, the
    histogram of samples per bin (every bin, empty ones at 0) with the overall
    accuracy (dashed) and mean confidence (dotted), the form of Guo et al.
    (2017): it shows which bins hold the data, and so which bars to trust.

    Args:
        confidences_or_logits: ``(N, C)`` probabilities (tensor or numpy
            array), or logits with ``from_logits=True``.
        labels: ``(N,)`` class indices in ``[0, C)``.
        from_logits: the first argument holds logits.
        n_bins: number of bins, ``>= 1``.
        title: axes title.
        histogram: draw the count histogram, as an axes under the diagram
            (``ax.child_axes[0]``, labels of its bars ``"samples"``).
        ax: draw into this ``Axes``; ``None`` makes a new figure.

    Returns:
        The ``Figure`` holding the diagram (that of ``ax`` when given).
    """
    from_logits = check_bool(from_logits, "from_logits")
    n_bins = check_positive_int(n_bins, "n_bins")
    histogram = check_bool(histogram, "histogram")
    if title is not None and not isinstance(title, str):
        raise InvalidTypeError(f"title must be a str or None, got {type(title).__name__}")
    if ax is None:
        figure = _new_figure(height=_HISTOGRAM_HEIGHT if histogram else 1.0)
        ax = figure.add_subplot()
    else:
        _check_axes(ax)
        figure = _root_figure(ax)
    _draw_reliability(
        ax,
        confidences_or_logits,
        labels,
        from_logits=from_logits,
        n_bins=n_bins,
        title=title,
        histogram=histogram,
        scores_name="confidences_or_logits",
        labels_name="labels",
    )
    return figure


def reliability_panel(
    predictions: Mapping[str, tuple[Any, Any]],
    *,
    from_logits: bool = True,
    n_bins: int = 15,
    histogram: bool = True,
) -> Figure:
    """One reliability diagram per named method, side by side on the same axes limits.

    Each panel is a :func:`reliability_diagram`, with its count histogram
    under it unless ``histogram=False``.

    Args:
        predictions: ``{name: (scores (N, C), labels (N,))}``, e.g. ``{"raw":
            ..., "TS": ..., "MTS r=0.5": ...}``; ``N`` may differ between entries.
        from_logits: the scores are logits (the default here) or probabilities.
        n_bins: number of bins, ``>= 1``.
        histogram: draw each diagram's count histogram under it.

    Returns:
        A ``Figure`` with ``len(predictions)`` axes, titled by name (the
        histograms are their ``child_axes``).
    """
    named = _check_named(predictions, "predictions")
    from_logits = check_bool(from_logits, "from_logits")
    n_bins = check_positive_int(n_bins, "n_bins")
    histogram = check_bool(histogram, "histogram")
    for name, pair in named.items():
        if not isinstance(pair, tuple) or len(pair) != 2:
            raise InvalidTypeError(
                f"predictions[{name!r}] must be a (scores, labels) pair, got {pair!r}"
            )
    figure = _new_figure(len(named), height=_HISTOGRAM_HEIGHT if histogram else 1.0)
    axes = figure.subplots(1, len(named), sharex=True, sharey=True, squeeze=False)[0]
    for ax, (name, (scores, labels)) in zip(axes, named.items(), strict=True):
        _draw_reliability(
            ax,
            scores,
            labels,
            from_logits=from_logits,
            n_bins=n_bins,
            title=name,
            histogram=histogram,
            scores_name=f"predictions[{name!r}][0]",
            labels_name=f"predictions[{name!r}][1]",
        )
    return figure


#: Per :data:`ddcal.analysis.EXPLAINED_RATIO_KINDS`: x label, y label and title.
_EXPLAINED_RATIO_LABELS: dict[str, tuple[str, str, str]] = {
    "singular": (
        "number of singular values",
        "cumulative share of singular values",
        "SVD explained ratio: cumsum(s) / sum(s), uncentred",
    ),
    "pca": (
        "number of principal components",
        "cumulative explained variance",
        "PCA explained variance: cumsum(s²) / sum(s²), centred",
    ),
}


def plot_explained_variance(curves: Mapping[str, Any], *, kind: str = "singular") -> Figure:
    """Cumulative explained ratio against the number of components, labelled by ``kind``.

    Args:
        curves: ``{name: ratio (K,)}``, e.g. the output of
            :func:`ddcal.analysis.explained_variance_ratio` for ``"distilled"``
            and ``"distilled + MDT"``; entry ``k`` is drawn at ``k + 1`` components.
        kind: what the curves hold, as the ``kind`` they were computed with:
            ``"singular"`` (the paper's Figure 1, the default) or ``"pca"``;
            it sets the axis labels and the title, never the data.

    Returns:
        A ``Figure`` with one axes and one line per curve.
    """
    kind = check_choice(kind, "kind", EXPLAINED_RATIO_KINDS)
    named = _check_named(curves, "curves")
    checked = {
        name: _check_finite_float(y, f"curves[{name!r}]", ndim=1) for name, y in named.items()
    }
    figure = _new_figure()
    ax = figure.add_subplot()
    for name, ratio in checked.items():
        ax.plot(np.arange(1, ratio.numel() + 1), ratio.numpy(), label=name)
    x_label, y_label, title = _EXPLAINED_RATIO_LABELS[kind]
    ax.set_xlabel(x_label)
    ax.set_ylabel(y_label)
    ax.set_title(title, fontsize="medium")
    ax.set_ylim(0.0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    return figure


def plot_ece_against_ratio(
    points: Sequence[tuple[float, float]],
    lines: Mapping[str, float] | None = None,
    *,
    title: str | None = None,
) -> Figure:
    """Test ECE of MTS against its mask ratio, with reference levels as horizontal lines.

    Args:
        points: ``(mask_ratio, ece)`` pairs, ECE as a fraction; drawn in ratio order.
        lines: ``{name: ece}`` drawn across the plot (e.g. raw, the oracle).
        title: the axes title.

    Returns:
        A ``Figure`` with one axes, ECE in percent.
    """
    if not points:
        raise InvalidValueError("points is empty: give at least one (mask_ratio, ece) pair")
    ordered = sorted((float(r), float(e)) for r, e in points)
    figure = _new_figure()
    ax = figure.add_subplot()
    ax.plot([r for r, _ in ordered], [100 * e for _, e in ordered], "o-", label="MTS at ratio r")
    for index, (name, ece) in enumerate((lines or {}).items()):
        ax.axhline(100 * float(ece), linestyle="--", color=f"C{index + 1}", label=name)
    ax.set_xlabel("mask ratio r")
    ax.set_ylabel("test ECE %")
    if title:
        ax.set_title(title, fontsize="medium")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    return figure


def plot_max_logit_histograms(
    values: Mapping[str, Tensor | MaxLogitStatistics], *, bins: int = 50
) -> Figure:
    """Overlaid histograms of max logits, on shared bin edges.

    Args:
        values: ``{name: max logits (N,)}`` or ``{name: MaxLogitStatistics}``,
            e.g. ``"clean"`` and ``"masked r=0.5"``; ``N`` may differ.
        bins: number of equal-width bins spanning all the values together.

    Returns:
        A ``Figure`` with one axes and one filled step histogram per entry,
        normalised to unit area (``density``) so sets of different sizes compare.
    """
    named = _check_named(values, "values")
    bins = check_positive_int(bins, "bins")
    checked = {
        name: _check_finite_float(
            item.values if isinstance(item, MaxLogitStatistics) else item,
            f"values[{name!r}]",
            ndim=1,
        ).numpy()
        for name, item in named.items()
    }
    edges = np.histogram_bin_edges(np.concatenate(list(checked.values())), bins=bins)
    figure = _new_figure(panels=2)
    ax = figure.add_subplot()
    for name, data in checked.items():
        density, _ = np.histogram(data, bins=edges, density=True)
        ax.stairs(density, edges, fill=True, alpha=0.45, label=name)
    ax.set_xlabel("max logit")
    ax.set_ylabel("density")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize="small")
    return figure


def plot_feature_projections(projections: Mapping[str, Any], labels: Any) -> Figure:
    """One scatter plot per layer of 2-D projected features, coloured by class.

    Args:
        projections: ``{layer: (N, 2)}``, e.g. from
            :func:`ddcal.analysis.feature_projections`.
        labels: ``(N,)`` class indices of the projected samples.

    Returns:
        A ``Figure`` with ``len(projections)`` axes, one scatter each, and a
        class legend (a colour bar beyond 20 classes).
    """
    named = _check_named(projections, "projections")
    checked = {
        name: _check_finite_float(points, f"projections[{name!r}]", ndim=2)
        for name, points in named.items()
    }
    for name, points in checked.items():
        if points.shape[1] != 2:
            raise InvalidValueError(
                f"projections[{name!r}] must have shape (N, 2), got {tuple(points.shape)}"
            )
    samples = next(iter(checked.values())).shape[0]
    targets = check_labels(labels, "labels", num_samples=samples).cpu().numpy()
    for name, points in checked.items():
        if points.shape[0] != samples:
            raise InvalidValueError(
                f"projections[{name!r}] has {points.shape[0]} rows, the others and labels {samples}"
            )
    num_classes = int(targets.max()) + 1
    cmap = "tab10" if num_classes <= 10 else "tab20" if num_classes <= 20 else "viridis"
    figure = _new_figure(len(checked))
    axes = figure.subplots(1, len(checked), squeeze=False)[0]
    for ax, (name, points) in zip(axes, checked.items(), strict=True):
        scatter = ax.scatter(
            points[:, 0].numpy(),
            points[:, 1].numpy(),
            c=targets,
            cmap=cmap,
            vmin=0,
            vmax=max(num_classes - 1, 1),
            s=8,
        )
        ax.set_title(name)
        ax.set_xticks([])
        ax.set_yticks([])
    if num_classes <= _LEGEND_MAX_CLASSES:
        handles, names = scatter.legend_elements()
        axes[-1].legend(handles, names, title="class", loc="center left", bbox_to_anchor=(1.0, 0.5))
    else:
        figure.colorbar(scatter, ax=list(axes), label="class")
    return figure


def save_figure(fig: Figure, path: str | os.PathLike[str], *, dpi: int = 120) -> Path:
    """Write ``fig`` as a PNG to ``path`` atomically, creating missing folders.

    The image goes to a temporary file in the same folder, renamed onto
    ``path`` once complete: a failure leaves no partial file behind.

    Args:
        fig: the figure (any of this module's results).
        path: destination, must end in ``.png``.
        dpi: resolution in dots per inch, ``>= 1``.

    Returns:
        ``path`` as a ``Path``.
    """
    if not isinstance(fig, _matplotlib("figure").Figure):
        raise InvalidTypeError(f"fig must be a matplotlib Figure, got {type(fig).__name__}")
    if not isinstance(path, (str, os.PathLike)):
        raise InvalidTypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    target = Path(path)
    if target.suffix.lower() != ".png":
        raise InvalidValueError(f"path must end in .png, got {str(target)!r}")
    dpi = check_positive_int(dpi, "dpi")
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(target) as handle:
        fig.savefig(handle, format="png", dpi=dpi, bbox_inches="tight", pad_inches=0.1)
    return target
