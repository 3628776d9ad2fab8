"""ddcal.analysis: explained-variance ratio, max-logit statistics, feature projections."""

from __future__ import annotations

import dataclasses
import sys
import types
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from ddcal.analysis import (
    MaxLogitStatistics,
    explained_variance_ratio,
    feature_projections,
    max_logit_statistics,
)
from ddcal.masking import mask_inputs
from ddcal.models import ConvNet, build_convnet

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _net(norm: str = "instancenorm", seed: int = 0) -> ConvNet:
    torch.manual_seed(seed)
    return build_convnet("ConvNet", 1, 5, 8, width=8, depth=2, norm=norm)


def _images(n: int = 12, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed))


def _numpy_ratio(data: np.ndarray, kind: str) -> np.ndarray:
    """The reference: numpy's SVD of the flattened data, centred and squared for "pca"."""
    flat = data.reshape(data.shape[0], -1).astype(np.float64)
    if kind == "pca":
        singular = np.linalg.svd(flat - flat.mean(axis=0), compute_uv=False)
        return np.cumsum(singular**2) / np.sum(singular**2)
    singular = np.linalg.svd(flat, compute_uv=False)
    return np.cumsum(singular) / np.sum(singular)


def _numpy_pca(features: np.ndarray) -> np.ndarray:
    """Two leading PCA scores, each signed so its largest-magnitude loading is positive."""
    centred = features - features.mean(axis=0)
    u, s, vt = np.linalg.svd(centred, full_matrices=False)
    signs = np.sign(vt[:2][np.arange(2), np.abs(vt[:2]).argmax(axis=1)])
    return (u[:, :2] * s[:2]) * signs


def _no_hooks(model: nn.Module) -> bool:
    return all(not module._forward_hooks for module in model.modules())


# --------------------------------------------------------------------------- #
# explained_variance_ratio
# --------------------------------------------------------------------------- #


KINDS = ("singular", "pca")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape", [(20, 30), (30, 10), (9, 3, 4, 4)])
def test_explained_variance_ratio_matches_numpy_svd(shape: tuple[int, ...], kind: str) -> None:
    data = np.random.default_rng(0).normal(loc=0.5, size=shape)
    ratio = explained_variance_ratio(torch.from_numpy(data), kind=kind)
    assert ratio.dtype == torch.float64
    assert ratio.device.type == "cpu"
    n, d = shape[0], int(np.prod(shape[1:]))
    assert ratio.shape == (min(n, d),)
    np.testing.assert_allclose(ratio.numpy(), _numpy_ratio(data, kind), rtol=0, atol=1e-12)


def test_the_default_is_the_papers_uncentred_singular_value_share() -> None:
    # s = (3, 1): the singular share is (3/4, 1). Centred, the two rows are opposite:
    # one direction holds all the variance.
    data = torch.tensor([[3.0, 0.0], [0.0, 1.0]])
    torch.testing.assert_close(explained_variance_ratio(data), torch.tensor([0.75, 1.0]).double())
    torch.testing.assert_close(
        explained_variance_ratio(data, kind="pca"), torch.tensor([1.0, 1.0]).double()
    )


def test_singular_kind_matches_numpy_on_fashion_mnist_sized_images() -> None:
    # 10 images of 784 non-negative pixels, as a distilled FashionMNIST class: one large
    # singular value (the mean image) that centring would remove.
    data = np.random.default_rng(2).uniform(0.0, 1.0, size=(10, 1, 28, 28))
    ratio = explained_variance_ratio(data)
    np.testing.assert_allclose(ratio.numpy(), _numpy_ratio(data, "singular"), rtol=0, atol=1e-12)
    assert float(ratio[0]) > float(explained_variance_ratio(data, kind="pca")[0])


@pytest.mark.parametrize("kind", KINDS)
def test_explained_variance_ratio_accepts_numpy_and_integers(kind: str) -> None:
    data = np.random.default_rng(1).integers(0, 256, size=(10, 1, 4, 4), dtype=np.uint8)
    ratio = explained_variance_ratio(data, kind=kind)
    np.testing.assert_allclose(ratio.numpy(), _numpy_ratio(data, kind), rtol=0, atol=1e-12)


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(2, 12),
    d=st.integers(1, 12),
    seed=st.integers(0, 2**31 - 1),
    scale=st.floats(1e-3, 1e3),
    kind=st.sampled_from(KINDS),
)
def test_explained_variance_ratio_is_monotone_in_unit_interval_ending_at_one(
    n: int, d: int, seed: int, scale: float, kind: str
) -> None:
    data = torch.randn(n, d, generator=torch.Generator().manual_seed(seed)) * scale
    ratio = explained_variance_ratio(data, kind=kind)
    assert ratio.shape == (min(n, d),)
    assert bool((ratio[1:] >= ratio[:-1]).all())
    assert bool((ratio >= 0).all())
    assert bool((ratio <= 1).all())
    assert float(ratio[-1]) == 1.0


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("scale", [1e-150, 1e150])
def test_explained_variance_ratio_does_not_depend_on_the_scale(kind: str, scale: float) -> None:
    data = torch.randn(8, 20, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    torch.testing.assert_close(
        explained_variance_ratio(data * scale, kind=kind),
        explained_variance_ratio(data, kind=kind),
        rtol=0,
        atol=1e-12,
    )


def _rank_k(rank: int, n: int = 40, d: int = 50) -> torch.Tensor:
    generator = torch.Generator().manual_seed(rank)
    scores = torch.randn(n, rank, generator=generator, dtype=torch.float64)
    return scores @ torch.randn(rank, d, generator=generator, dtype=torch.float64)


@pytest.mark.parametrize("rank", [1, 2, 5])
def test_rank_k_data_reaches_one_at_component_k(rank: int) -> None:
    ratio = explained_variance_ratio(_rank_k(rank))
    assert float(ratio[rank - 1]) == 1.0
    if rank > 1:
        assert float(ratio[rank - 2]) < 1.0 - 1e-3


@pytest.mark.parametrize("rank", [1, 2, 5])
def test_pca_of_rank_k_data_plus_an_offset_reaches_one_at_component_k(rank: int) -> None:
    offset = torch.randn(1, 50, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    ratio = explained_variance_ratio(_rank_k(rank) + offset, kind="pca")
    assert float(ratio[rank - 1]) == pytest.approx(1.0, abs=1e-12)
    if rank > 1:
        assert float(ratio[rank - 2]) < 1.0 - 1e-3


@pytest.mark.parametrize("kind", KINDS)
def test_explained_variance_ratio_ignores_sample_order(kind: str) -> None:
    data = _images(15)
    permuted = data[torch.randperm(15, generator=torch.Generator().manual_seed(3))]
    torch.testing.assert_close(
        explained_variance_ratio(data, kind=kind),
        explained_variance_ratio(permuted, kind=kind),
        rtol=0,
        atol=1e-12,
    )


def test_equal_images_have_one_singular_direction_and_no_variance() -> None:
    equal = torch.full((5, 1, 3, 3), 0.3)
    assert explained_variance_ratio(equal).tolist() == [1.0] * 5
    with pytest.raises(ValueError, match="images has no variance: all 5 samples are equal"):
        explained_variance_ratio(equal, kind="pca")


def test_all_zero_images_have_no_ratio() -> None:
    with pytest.raises(ValueError, match=r"images is all zeros \(shape \(4, 9\)\)"):
        explained_variance_ratio(torch.zeros(4, 1, 3, 3))


def test_an_unknown_kind_is_an_error_naming_it() -> None:
    with pytest.raises(ValueError, match="kind must be one of 'singular', 'pca'; got 'svd'"):
        explained_variance_ratio(_images(4), kind="svd")


@pytest.mark.parametrize(
    ("images", "error", "message"),
    [
        (torch.zeros(4, 3, 5), ValueError, r"images must have shape .*got shape \(4, 3, 5\)"),
        (torch.zeros(1, 6), ValueError, r"images needs at least 2 samples.*\(1, 6\)"),
        (torch.zeros(3, 0), ValueError, r"images needs at least 2 samples.*\(3, 0\)"),
        (torch.tensor([[0.0, 1.0], [float("nan"), 2.0]]), ValueError, "images must be finite"),
        (torch.zeros(3, 2, dtype=torch.bool), TypeError, "images must hold real numbers"),
        ([[0.0, 1.0], [1.0, 0.0]], TypeError, "images must be a torch.Tensor"),
    ],
)
def test_explained_variance_ratio_rejects_bad_images(
    images: Any, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        explained_variance_ratio(images)


# --------------------------------------------------------------------------- #
# max_logit_statistics
# --------------------------------------------------------------------------- #


def test_max_logit_statistics_matches_direct_computation() -> None:
    net, images = _net(), _images(13)
    stats = max_logit_statistics(net, images, batch_size=4)
    with torch.no_grad():
        expected = net.eval()(images).max(dim=1).values
    assert stats.values.dtype == torch.float32
    assert stats.values.device.type == "cpu"
    torch.testing.assert_close(stats.values, expected)
    values = expected.double().numpy()
    assert stats.mean == pytest.approx(float(np.mean(values)), rel=1e-6)
    assert stats.std == pytest.approx(float(np.std(values)), rel=1e-6)
    assert stats.median == pytest.approx(float(np.median(values)), rel=1e-6)


def test_max_logit_statistics_runs_in_eval_mode_and_restores_train_mode() -> None:
    net, images = _net("batchnorm"), _images(10)
    with torch.no_grad():
        expected = net.eval()(images).amax(dim=1)
    net.train()
    stats = max_logit_statistics(net, images)
    assert net.training
    torch.testing.assert_close(stats.values, expected)


def test_masked_statistics_equal_logits_of_the_seeded_mask() -> None:
    net, images = _net(), _images(11)
    stats = max_logit_statistics(net, images, 0.5, seed=7, batch_size=3)
    masked = mask_inputs(images, 0.5, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        expected = net.eval()(masked).amax(dim=1)
    torch.testing.assert_close(stats.values, expected)
    clean = max_logit_statistics(net, images)
    assert not torch.allclose(stats.values, clean.values)


def test_masked_statistics_are_reproducible_and_independent_of_batch_size() -> None:
    net, images = _net(), _images(9)
    first = max_logit_statistics(net, images, 0.3, seed=1, batch_size=2)
    again = max_logit_statistics(net, images, 0.3, seed=1, batch_size=256)
    other = max_logit_statistics(net, images, 0.3, seed=2)
    torch.testing.assert_close(first.values, again.values)
    assert not torch.allclose(first.values, other.values)


def test_max_logit_statistics_is_frozen_and_std_of_one_value_is_zero() -> None:
    stats = MaxLogitStatistics(torch.tensor([2.5]))
    assert (stats.mean, stats.std, stats.median) == (2.5, 0.0, 2.5)
    with pytest.raises(dataclasses.FrozenInstanceError):
        stats.values = torch.zeros(1)  # type: ignore[misc]


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"mask_ratio": 1.0}, ValueError, r"mask_ratio must be in \[0, 1\), got 1.0"),
        ({"mask_ratio": -0.1}, ValueError, "mask_ratio must be in"),
        ({"mask_ratio": "0.5"}, TypeError, "mask_ratio must be a float"),
        ({"seed": -1}, ValueError, "seed must be >= 0, got -1"),
        ({"batch_size": 0}, ValueError, "batch_size must be >= 1, got 0"),
        ({"images": torch.full((2, 1, 8, 8), float("inf"))}, ValueError, "images must be finite"),
        ({"images": torch.zeros(0, 1, 8, 8)}, ValueError, "images is empty"),
        ({"model": lambda x: x}, TypeError, "model must be a torch.nn.Module, got function"),
    ],
)
def test_max_logit_statistics_rejects_bad_arguments(
    kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    arguments: dict[str, Any] = {"model": _net(), "images": _images(2), **kwargs}
    with pytest.raises(error, match=message):
        max_logit_statistics(**arguments)


def test_max_logit_statistics_rejects_non_finite_logits() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
    with torch.no_grad():
        model[1].bias.fill_(float("nan"))
    with pytest.raises(ValueError, match="model returned NaN or inf logits"):
        max_logit_statistics(model, _images(3))


# --------------------------------------------------------------------------- #
# feature_projections
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize(
    ("norm", "layers"),
    [("instancenorm", ["features.3", "features.7"]), ("none", ["features.2", "features.5"])],
)
def test_default_layers_are_the_block_outputs(norm: str, layers: list[str]) -> None:
    projections = feature_projections(_net(norm), _images(10))
    assert list(projections) == layers
    for points in projections.values():
        assert points.shape == (10, 2)
        assert points.dtype == torch.float32
        assert points.device.type == "cpu"


def test_pca_matches_numpy_on_conv_blocks_and_embedding() -> None:
    # N = 10 < D (128 and 32): the Gram-matrix route.
    net, images = _net(), _images(10)
    projections = feature_projections(net, images, batch_size=3)
    with torch.no_grad():
        net.eval()
        first_block = torch.flatten(net.features[:4](images), 1)
        embedding = net.embed(images)
    for name, features in (("features.3", first_block), ("features.7", embedding)):
        expected = _numpy_pca(features.double().numpy())
        np.testing.assert_allclose(projections[name].numpy(), expected, rtol=1e-4, atol=1e-4)


def test_pca_matches_numpy_with_more_samples_than_features() -> None:
    # N = 30 > D = 6: the covariance route; the ReLU after the hooked layer is in place.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 6), nn.ReLU(inplace=True), nn.Linear(6, 3))
    images = _images(30)
    projections = feature_projections(model, images, layers=["1"])
    with torch.no_grad():
        features = model[1](model[0](images))
    assert bool((features < 0).any())
    expected = _numpy_pca(features.double().numpy())
    np.testing.assert_allclose(projections["1"].numpy(), expected, rtol=1e-4, atol=1e-4)


def test_pca_signs_are_deterministic_under_negation_of_the_features() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 5))
    images = _images(8)
    plain = feature_projections(model, images, layers=["0"])["0"]
    negated = feature_projections(model, -images, layers=["0"])["0"]
    # Negated data has negated loadings; the sign convention flips them back.
    torch.testing.assert_close(plain, -negated, rtol=1e-5, atol=1e-5)


def test_feature_projections_restore_train_mode_and_remove_hooks() -> None:
    net = _net("batchnorm").train()
    feature_projections(net, _images(6))
    assert net.training
    assert _no_hooks(net)


class _SharedLayer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.flatten = nn.Flatten()
        self.linear = nn.Linear(64, 64)
        self.unused = nn.Linear(2, 2)
        self.head = nn.Linear(64, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(self.linear(self.linear(self.flatten(x))))
        return out


class _Pair(nn.Module):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x, x


class _TupleLayer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.pair = _Pair()
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(self.pair(x)[0])
        return out


def test_layer_must_output_one_tensor() -> None:
    model = _TupleLayer()
    with pytest.raises(
        ValueError, match=r"layer 'pair' must output a tensor \(B, ...\), got tuple"
    ):
        feature_projections(model, _images(4), layers=["pair"])
    assert _no_hooks(model)


@pytest.mark.parametrize(
    ("layers", "message"),
    [
        (["linear"], "layer 'linear' gave 8 rows for 4 images"),
        (["unused"], "layer 'unused' never ran"),
    ],
)
def test_layers_must_run_once_per_forward(layers: list[str], message: str) -> None:
    model = _SharedLayer()
    with pytest.raises(ValueError, match=message):
        feature_projections(model, _images(4), layers=layers)
    assert _no_hooks(model)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"method": "umap"}, ValueError, "method must be one of 'pca', 'tsne'; got 'umap'"),
        ({"layers": ["features.99"]}, ValueError, "no module named 'features.99'"),
        ({"layers": []}, ValueError, "layers is empty"),
        ({"layers": ["features.3", "features.3"]}, ValueError, "layers must not repeat"),
        ({"layers": "features.3"}, TypeError, "layers must be a sequence"),
        ({"images": _images(1)}, ValueError, "images needs at least 2 samples"),
        ({"seed": -2}, ValueError, "seed must be >= 0"),
    ],
)
def test_feature_projections_reject_bad_arguments(
    kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    arguments: dict[str, Any] = {"model": _net(), "images": _images(4), **kwargs}
    with pytest.raises(error, match=message):
        feature_projections(**arguments)


def test_generic_model_needs_layers() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
    with pytest.raises(ValueError, match=r"layers is required .* got Sequential"):
        feature_projections(model, _images(4))


def test_layer_with_one_feature_is_refused() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 1), nn.Linear(1, 3))
    with pytest.raises(ValueError, match="layer '1' has 1 feature"):
        feature_projections(model, _images(4), layers=["1"])


def test_tsne_without_scikit_learn_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.manifold", None)
    with pytest.raises(ImportError, match="pip install scikit-learn"):
        feature_projections(_net(), _images(4), "tsne")


def test_tsne_passes_the_seed_and_returns_the_embedding(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[dict[str, Any]] = []

    class FakeTSNE:
        def __init__(self, **kwargs: Any) -> None:
            calls.append(kwargs)

        def fit_transform(self, x: np.ndarray) -> np.ndarray:
            return x[:, :2] * 2.0

    manifold = types.ModuleType("sklearn.manifold")
    manifold.TSNE = FakeTSNE  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "sklearn", types.ModuleType("sklearn"))
    monkeypatch.setitem(sys.modules, "sklearn.manifold", manifold)
    net, images = _net(), _images(7)
    projections = feature_projections(net, images, "tsne", layers=["features.7"], seed=5)
    assert calls == [
        {
            "n_components": 2,
            "perplexity": 2.0,
            "init": "pca",
            "learning_rate": "auto",
            "random_state": 5,
        }
    ]
    with torch.no_grad():
        embedding = net.eval().embed(images)
    torch.testing.assert_close(projections["features.7"], embedding[:, :2] * 2.0)


def test_tsne_with_scikit_learn_is_reproducible() -> None:
    pytest.importorskip("sklearn")
    net, images = _net(), _images(12)
    first = feature_projections(net, images, "tsne", seed=0)
    again = feature_projections(net, images, "tsne", seed=0)
    for name, points in first.items():
        assert points.shape == (12, 2)
        torch.testing.assert_close(points, again[name])
