"""ddcal.plot: figures built headless, their artists checked against the data."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

pytest.importorskip("matplotlib")

from matplotlib.collections import PathCollection
from matplotlib.container import BarContainer
from matplotlib.figure import Figure
from matplotlib.patches import StepPatch

import ddcal.plot
from ddcal.analysis import MaxLogitStatistics
from ddcal.metrics import calibration_error
from ddcal.plot import (
    plot_explained_variance,
    plot_feature_projections,
    plot_max_logit_histograms,
    reliability_diagram,
    reliability_panel,
    save_figure,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _logits(n: int = 300, classes: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    logits = 3.0 * torch.randn(n, classes, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, classes, (n,), generator=generator)
    return logits, labels


def _bars(figure: Figure, label: str) -> BarContainer:
    (container,) = [c for c in figure.axes[0].containers if c.get_label() == label]
    assert isinstance(container, BarContainer)
    return container


def _numpy_bins(
    logits: torch.Tensor, labels: torch.Tensor, n_bins: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Occupied bins, their accuracy and mean confidence, computed independently."""
    z = logits.numpy()
    probs = np.exp(z - z.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels.numpy()
    index = np.minimum((confidence * n_bins).astype(int), n_bins - 1)
    occupied = np.unique(index)
    accuracy = np.array([correct[index == b].mean() for b in occupied])
    mean_confidence = np.array([confidence[index == b].mean() for b in occupied])
    return occupied, accuracy, mean_confidence


# --------------------------------------------------------------------------- #
# reliability_diagram / reliability_panel
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("n_bins", [5, 15])
def test_reliability_diagram_bars_match_the_occupied_bins(n_bins: int) -> None:
    logits, labels = _logits()
    figure = reliability_diagram(logits, labels, from_logits=True, n_bins=n_bins, title="raw")
    assert isinstance(figure, Figure)
    assert len(figure.axes) == 1
    occupied, accuracy, confidence = _numpy_bins(logits, labels, n_bins)
    bars = _bars(figure, "accuracy")
    assert len(bars) == len(occupied)
    np.testing.assert_allclose([bar.get_x() for bar in bars], occupied / n_bins, atol=1e-12)
    np.testing.assert_allclose([bar.get_height() for bar in bars], accuracy, atol=1e-12)
    gaps = _bars(figure, "gap to confidence")
    assert len(gaps) == len(occupied)
    np.testing.assert_allclose(
        [bar.get_y() for bar in gaps], np.minimum(accuracy, confidence), atol=1e-12
    )
    np.testing.assert_allclose(
        [bar.get_height() for bar in gaps], np.abs(confidence - accuracy), atol=1e-12
    )
    ece = calibration_error(logits, labels, from_logits=True, n_bins=n_bins)
    texts = [text.get_text() for text in figure.axes[0].texts]
    assert texts == [f"ECE = {100 * ece:.2f}%"]
    assert figure.axes[0].get_title() == "raw"


def test_reliability_diagram_takes_probabilities_and_an_existing_axes() -> None:
    logits, labels = _logits(seed=1)
    figure = Figure()
    left, right = figure.subfigures(1, 2)
    ax = right.add_subplot()
    returned = reliability_diagram(torch.softmax(logits, dim=1), labels, ax=ax)
    assert returned is figure
    (bars,) = [c for c in ax.containers if c.get_label() == "accuracy"]
    assert len(bars) == len(_numpy_bins(logits, labels, 15)[0])
    assert not left.axes


def _histogram(ax: Any) -> Any:
    (hist,) = ax.child_axes
    return hist


@pytest.mark.parametrize("n_bins", [5, 15])
def test_reliability_diagram_has_the_count_histogram_under_it(n_bins: int) -> None:
    logits, labels = _logits(n=500, seed=3)
    figure = reliability_diagram(logits, labels, from_logits=True, n_bins=n_bins)
    (ax,) = figure.axes
    hist = _histogram(ax)
    (bars,) = [c for c in hist.containers if c.get_label() == "samples"]
    assert isinstance(bars, BarContainer)
    z = logits.numpy()
    probs = np.exp(z - z.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    confidence = probs.max(axis=1)
    index = np.minimum((confidence * n_bins).astype(int), n_bins - 1)
    counts = np.bincount(index, minlength=n_bins)
    assert len(bars) == n_bins  # every bin, the empty ones at height 0
    np.testing.assert_allclose([bar.get_x() for bar in bars], np.arange(n_bins) / n_bins)
    np.testing.assert_array_equal([bar.get_height() for bar in bars], counts)
    assert sum(bar.get_height() for bar in bars) == 500
    lines = {line.get_label(): line.get_xdata()[0] for line in hist.get_lines()}
    correct = probs.argmax(axis=1) == labels.numpy()
    assert lines["accuracy"] == pytest.approx(correct.mean(), abs=1e-12)
    assert lines["mean confidence"] == pytest.approx(confidence.mean(), abs=1e-12)
    assert hist.get_shared_x_axes().joined(hist, ax)
    assert hist.get_xlabel() == "confidence"
    assert hist.get_ylabel() == "count"
    assert ax.get_xlabel() == ""
    figure.draw_without_rendering()
    assert hist.get_position().y1 <= ax.get_position().y0  # under the diagram


def test_reliability_diagram_without_the_histogram() -> None:
    logits, labels = _logits(seed=4)
    figure = reliability_diagram(logits, labels, from_logits=True, histogram=False)
    (ax,) = figure.axes
    assert ax.child_axes == []
    assert ax.get_xlabel() == "confidence"


def test_reliability_diagram_puts_the_histogram_under_a_given_axes() -> None:
    logits, labels = _logits(seed=5)
    figure = Figure()
    left, right = figure.subplots(1, 2)
    reliability_diagram(logits, labels, from_logits=True, ax=right)
    assert left.child_axes == []
    (bars,) = [c for c in _histogram(right).containers if c.get_label() == "samples"]
    assert sum(bar.get_height() for bar in bars) == logits.shape[0]


@pytest.mark.parametrize("histogram", [True, False])
def test_reliability_panel_puts_the_methods_on_one_figure_with_their_histograms(
    histogram: bool,
) -> None:
    logits, labels = _logits(seed=6)
    predictions = {"raw": (logits, labels), "TS": (logits[:200] / 2, labels[:200])}
    figure = reliability_panel(predictions, histogram=histogram)
    assert [ax.get_title() for ax in figure.axes] == ["raw", "TS"]
    for ax, size in zip(figure.axes, (300, 200), strict=True):
        if not histogram:
            assert ax.child_axes == []
            continue
        (bars,) = [c for c in _histogram(ax).containers if c.get_label() == "samples"]
        assert len(bars) == 15
        assert sum(bar.get_height() for bar in bars) == size


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"from_logits": False}, ValueError, "confidences_or_logits must be probabilities"),
        ({"labels": torch.zeros(5, dtype=torch.long)}, ValueError, "labels must have one entry"),
        ({"n_bins": 0}, ValueError, "n_bins must be >= 1, got 0"),
        ({"from_logits": 1}, TypeError, "from_logits must be a bool"),
        ({"histogram": "yes"}, TypeError, "histogram must be a bool"),
        ({"title": 3}, TypeError, "title must be a str or None"),
        ({"ax": "left"}, TypeError, "ax must be a matplotlib Axes or None, got str"),
    ],
)
def test_reliability_diagram_rejects_bad_arguments(
    kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    logits, labels = _logits(n=20)
    arguments: dict[str, Any] = {"labels": labels, "from_logits": True, **kwargs}
    with pytest.raises(error, match=message):
        reliability_diagram(logits, **arguments)


def test_reliability_panel_has_one_titled_diagram_per_method() -> None:
    logits, labels = _logits(seed=2)
    predictions = {"raw": (logits, labels), "TS": (logits / 2, labels), "MTS": (logits / 3, labels)}
    figure = reliability_panel(predictions, n_bins=10)
    assert [ax.get_title() for ax in figure.axes] == ["raw", "TS", "MTS"]
    for ax, scores in zip(figure.axes, (logits, logits / 2, logits / 3), strict=True):
        (bars,) = [c for c in ax.containers if c.get_label() == "accuracy"]
        assert len(bars) == len(_numpy_bins(scores, labels, 10)[0])
        assert ax.get_xlim() == (0.0, 1.0)
        assert ax.get_ylim() == (0.0, 1.0)


@pytest.mark.parametrize(
    ("predictions", "error", "message"),
    [
        ({}, ValueError, "predictions is empty"),
        ([1, 2], TypeError, "predictions must be a mapping"),
        ({"TS": torch.zeros(3, 2)}, TypeError, r"predictions\['TS'\] must be a \(scores, labels\)"),
        (
            {"TS": (torch.full((2, 2), float("nan")), torch.zeros(2, dtype=torch.long))},
            ValueError,
            r"predictions\['TS'\]\[0\] must be finite",
        ),
        (
            {"TS": (torch.zeros(2, 2), torch.tensor([0, 5]))},
            ValueError,
            r"predictions\['TS'\]\[1\] must be in \[0, 2\), got max 5",
        ),
        ({1: (torch.zeros(2, 2), torch.zeros(2))}, TypeError, "predictions keys must be str"),
    ],
)
def test_reliability_panel_errors_name_the_entry(
    predictions: Any, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        reliability_panel(predictions)


# --------------------------------------------------------------------------- #
# analysis plots
# --------------------------------------------------------------------------- #


def test_plot_explained_variance_draws_one_line_per_curve() -> None:
    curves = {
        "distilled": torch.tensor([0.5, 0.8, 1.0], dtype=torch.float64),
        "distilled + MDT": np.array([0.3, 0.55, 0.75, 0.9, 1.0]),
    }
    figure = plot_explained_variance(curves)
    (ax,) = figure.axes
    lines = ax.get_lines()
    assert [line.get_label() for line in lines] == list(curves)
    for line, curve in zip(lines, curves.values(), strict=True):
        np.testing.assert_array_equal(line.get_xdata(), np.arange(1, len(curve) + 1))
        np.testing.assert_allclose(line.get_ydata(), np.asarray(curve))


@pytest.mark.parametrize(
    ("kind", "words"),
    [
        (None, ("singular values", "cumsum(s) / sum(s)", "uncentred")),
        ("singular", ("singular values", "cumsum(s) / sum(s)", "uncentred")),
        ("pca", ("explained variance", "principal components", "centred")),
    ],
)
def test_plot_explained_variance_says_which_quantity_it_shows(
    kind: str | None, words: tuple[str, ...]
) -> None:
    options = {} if kind is None else {"kind": kind}
    (ax,) = plot_explained_variance({"a": torch.tensor([0.6, 1.0])}, **options).axes
    text = " ".join((ax.get_xlabel(), ax.get_ylabel(), ax.get_title()))
    for word in words:
        assert word in text
    if kind == "pca":
        assert "singular" not in text


def test_plot_explained_variance_rejects_an_unknown_kind() -> None:
    with pytest.raises(ValueError, match="kind must be one of 'singular', 'pca'; got 'svd'"):
        plot_explained_variance({"a": torch.tensor([1.0])}, kind="svd")


@pytest.mark.parametrize(
    ("curves", "message"),
    [
        ({"a": torch.zeros(2, 2)}, r"curves\['a'\] must have 1 dimension"),
        ({"a": torch.zeros(0)}, r"curves\['a'\] is empty"),
        ({"a": torch.tensor([0.5, float("inf")])}, r"curves\['a'\] must be finite"),
    ],
)
def test_plot_explained_variance_rejects_bad_curves(curves: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        plot_explained_variance(curves)


def test_max_logit_histograms_share_edges_and_match_numpy_densities() -> None:
    generator = torch.Generator().manual_seed(0)
    clean = torch.randn(200, generator=generator) + 4.0
    masked = torch.randn(50, generator=generator)
    figure = plot_max_logit_histograms(
        {"clean": clean, "masked r=0.5": MaxLogitStatistics(masked)}, bins=12
    )
    (ax,) = figure.axes
    patches = [patch for patch in ax.patches if isinstance(patch, StepPatch)]
    assert [patch.get_label() for patch in patches] == ["clean", "masked r=0.5"]
    edges = np.linspace(float(masked.min()), float(clean.max()), 13)
    for patch, data in zip(patches, (clean, masked), strict=True):
        heights, patch_edges, _ = patch.get_data()
        np.testing.assert_allclose(patch_edges, edges, rtol=1e-6)
        expected, _ = np.histogram(data.double().numpy(), bins=edges, density=True)
        np.testing.assert_allclose(heights, expected, rtol=1e-6)


@pytest.mark.parametrize(
    ("values", "bins", "error", "message"),
    [
        ({"clean": torch.ones(3)}, 0, ValueError, "bins must be >= 1, got 0"),
        ({"clean": torch.ones(3, 1)}, 5, ValueError, r"values\['clean'\] must have 1 dimension"),
        ({"clean": "x"}, 5, TypeError, r"values\['clean'\] must be a torch.Tensor"),
    ],
)
def test_max_logit_histograms_reject_bad_arguments(
    values: Any, bins: int, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        plot_max_logit_histograms(values, bins=bins)


def test_feature_projections_plot_one_scatter_per_layer() -> None:
    generator = torch.Generator().manual_seed(0)
    projections = {f"features.{i}": torch.randn(30, 2, generator=generator) for i in (3, 7, 11)}
    labels = torch.arange(30) % 10
    figure = plot_feature_projections(projections, labels)
    axes = [ax for ax in figure.axes if ax.get_title()]
    assert [ax.get_title() for ax in axes] == list(projections)
    for ax, points in zip(axes, projections.values(), strict=True):
        (scatter,) = [c for c in ax.collections if isinstance(c, PathCollection)]
        np.testing.assert_allclose(scatter.get_offsets(), points.numpy(), rtol=1e-6)
        np.testing.assert_array_equal(scatter.get_array(), labels.numpy())
    legend = axes[-1].get_legend()
    assert legend is not None
    assert len(legend.legend_handles) == 10


def test_many_classes_get_a_colour_bar_instead_of_a_legend() -> None:
    labels = torch.arange(40) % 25
    figure = plot_feature_projections({"embedding": torch.randn(40, 2)}, labels)
    assert len(figure.axes) == 2
    assert figure.axes[0].get_legend() is None


@pytest.mark.parametrize(
    ("projections", "labels", "message"),
    [
        ({"a": torch.zeros(4, 3)}, torch.zeros(4, dtype=torch.long), r"must have shape \(N, 2\)"),
        ({"a": torch.zeros(4, 2)}, torch.zeros(3, dtype=torch.long), "labels must have one entry"),
        (
            {"a": torch.zeros(4, 2), "b": torch.zeros(5, 2)},
            torch.zeros(4, dtype=torch.long),
            r"projections\['b'\] has 5 rows",
        ),
    ],
)
def test_feature_projection_plot_rejects_mismatched_shapes(
    projections: Any, labels: torch.Tensor, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        plot_feature_projections(projections, labels)


# --------------------------------------------------------------------------- #
# save_figure
# --------------------------------------------------------------------------- #


def test_save_figure_writes_a_png_and_creates_folders(tmp_path: Path) -> None:
    figure = plot_explained_variance({"a": torch.tensor([0.6, 1.0])})
    target = tmp_path / "plots" / "deep" / "ratio.png"
    returned = save_figure(figure, str(target), dpi=50)
    assert returned == target
    assert target.read_bytes()[:8] == PNG_SIGNATURE
    assert [path.name for path in target.parent.iterdir()] == ["ratio.png"]


def test_failed_save_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    figure = plot_explained_variance({"a": torch.tensor([0.6, 1.0])})

    def broken_savefig(handle: Any, **kwargs: Any) -> None:
        handle.write(PNG_SIGNATURE)
        raise RuntimeError("disk full")

    monkeypatch.setattr(figure, "savefig", broken_savefig)
    with pytest.raises(RuntimeError, match="disk full"):
        save_figure(figure, tmp_path / "ratio.png")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("fig", "path", "dpi", "error", "message"),
    [
        ("figure", "a.png", 100, TypeError, "fig must be a matplotlib Figure, got str"),
        (Figure(), "a.pdf", 100, ValueError, "path must end in .png"),
        (Figure(), 3, 100, TypeError, "path must be a str or os.PathLike"),
        (Figure(), "a.png", 0, ValueError, "dpi must be >= 1"),
    ],
)
def test_save_figure_rejects_bad_arguments(
    tmp_path: Path, fig: Any, path: Any, dpi: int, error: type[Exception], message: str
) -> None:
    destination = tmp_path / path if isinstance(path, str) else path
    with pytest.raises(error, match=message):
        save_figure(fig, destination, dpi=dpi)
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- #
# without matplotlib
# --------------------------------------------------------------------------- #


def test_missing_matplotlib_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    for module in ("matplotlib", "matplotlib.figure", "matplotlib.axes"):
        monkeypatch.setitem(sys.modules, module, None)
    importlib.reload(ddcal.plot)
    logits, labels = _logits(n=10)
    calls = [
        lambda: reliability_diagram(logits, labels, from_logits=True),
        lambda: reliability_panel({"raw": (logits, labels)}),
        lambda: plot_explained_variance({"a": torch.tensor([1.0])}),
        lambda: plot_max_logit_histograms({"a": torch.ones(3)}),
        lambda: plot_feature_projections(
            {"a": torch.zeros(2, 2)}, torch.zeros(2, dtype=torch.long)
        ),
        lambda: save_figure(object(), "a.png"),  # type: ignore[arg-type]
    ]
    for call in calls:
        with pytest.raises(ImportError) as caught:
            call()
        assert str(caught.value) == "ddcal.plot needs matplotlib: pip install 'ddcal[plot]'"
