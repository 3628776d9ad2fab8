"""ZCA whitening: covariance after whitening, inverse, same transform for every split, state."""

from __future__ import annotations

import io

import pytest
import torch

from ddcal.data import ImageClassificationData
from ddcal.data.zca import ZCA


def correlated_images(n: int, shape: tuple[int, int, int], seed: int) -> torch.Tensor:
    """float64 images whose pixels are strongly correlated and have a non-zero mean."""
    generator = torch.Generator().manual_seed(seed)
    features = shape[0] * shape[1] * shape[2]
    mixing = torch.randn(features, features, generator=generator, dtype=torch.float64)
    scales = torch.logspace(-2, 1, features, dtype=torch.float64)
    latent = torch.randn(n, features, generator=generator, dtype=torch.float64) * scales
    return (latent @ mixing + 0.5).reshape(n, *shape)


def sample_covariance(images: torch.Tensor) -> torch.Tensor:
    flat = images.reshape(images.shape[0], -1)
    centred = flat - flat.mean(dim=0, keepdim=True)
    return centred.T @ centred / (flat.shape[0] - 1)


@pytest.fixture(scope="module")
def train() -> torch.Tensor:
    return correlated_images(400, (2, 3, 3), seed=0)


def test_whitened_covariance_has_eigenvalues_s_over_s_plus_eps(train: torch.Tensor) -> None:
    eps = 0.1
    whitened = ZCA(eps=eps).fit(train)(train)
    # Independently: Sigma = U diag(S) U^T, so W Sigma W = U diag(S / (S + eps)) U^T.
    eigenvalues, vectors = torch.linalg.eigh(sample_covariance(train))
    expected = vectors @ torch.diag(eigenvalues / (eigenvalues + eps)) @ vectors.T
    torch.testing.assert_close(sample_covariance(whitened), expected, rtol=0, atol=1e-9)
    assert whitened.reshape(len(train), -1).mean(dim=0).abs().max() < 1e-12


def test_small_eps_gives_identity_covariance(train: torch.Tensor) -> None:
    whitened = ZCA(eps=1e-12).fit(train)(train)
    identity = torch.eye(whitened[0].numel(), dtype=torch.float64)
    torch.testing.assert_close(sample_covariance(whitened), identity, rtol=0, atol=1e-6)


def test_zca_is_symmetric_whitening_not_a_rotation(train: torch.Tensor) -> None:
    # ZCA is the whitening closest to the identity map: W is symmetric positive definite.
    zca = ZCA(eps=0.1).fit(train)
    matrix = zca.state_dict()["transform"]
    torch.testing.assert_close(matrix, matrix.T)
    assert bool((torch.linalg.eigvalsh(matrix) > 0).all())


def test_inverse_round_trips(train: torch.Tensor) -> None:
    zca = ZCA().fit(train)
    torch.testing.assert_close(zca.inverse(zca(train)), train, rtol=0, atol=1e-10)


def test_same_transform_for_train_and_test(train: torch.Tensor) -> None:
    test = correlated_images(50, (2, 3, 3), seed=1)
    zca = ZCA().fit(train)
    state = zca.state_dict()
    flat = test.reshape(len(test), -1)
    by_hand = ((flat - state["mean"]) @ state["transform"]).reshape(test.shape)
    torch.testing.assert_close(zca(test), by_hand)
    # Per sample: transforming a concatenation equals concatenating the transforms.
    both = zca(torch.cat([train, test]))
    torch.testing.assert_close(both, torch.cat([zca(train), zca(test)]))
    # Fitting is on the training images only: the test images do not change the fit.
    assert torch.equal(zca.state_dict()["transform"], state["transform"])


def test_float32_fit_matches_float64(train: torch.Tensor) -> None:
    single = ZCA().fit(train.float())
    out = single(train.float())
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), ZCA().fit(train)(train), rtol=0, atol=1e-3)
    # float64 input to a float32 fit comes back as float64.
    assert single(train).dtype == torch.float64


def test_state_round_trip_through_weights_only_load(train: torch.Tensor) -> None:
    zca = ZCA(eps=0.05).fit(train)
    buffer = io.BytesIO()
    torch.save(zca.state_dict(), buffer)
    buffer.seek(0)
    restored = ZCA().load_state_dict(torch.load(buffer, weights_only=True))
    assert restored.eps == 0.05
    assert restored.image_shape == (2, 3, 3)
    test = correlated_images(20, (2, 3, 3), seed=2)
    assert torch.equal(restored(test), zca(test))
    # The state omits the inverse; it is recomputed on demand.
    torch.testing.assert_close(restored.inverse(restored(test)), test, rtol=0, atol=1e-10)


def test_state_holds_only_plain_values_and_cpu_tensors(train: torch.Tensor) -> None:
    state = ZCA().fit(train).state_dict()
    assert set(state) == {"eps", "image_shape", "mean", "transform"}
    assert state["image_shape"] == [2, 3, 3]
    assert state["mean"].shape == (1, 18)
    assert state["transform"].shape == (18, 18)


def test_transform_before_fit_is_refused() -> None:
    zca = ZCA()
    assert not zca.fitted
    for call in (zca.transform, zca.inverse):
        with pytest.raises(RuntimeError, match="not fitted"):
            call(torch.zeros(2, 1, 2, 2))
    with pytest.raises(RuntimeError, match="not fitted"):
        zca.state_dict()


def test_shape_mismatch_is_refused(train: torch.Tensor) -> None:
    zca = ZCA().fit(train)
    with pytest.raises(ValueError, match=r"per-image shape \(2, 3, 3\).*got \(1, 3, 3\)"):
        zca(torch.zeros(4, 1, 3, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"shape \(N, C, H, W\)"):
        zca(torch.zeros(4, 18, dtype=torch.float64))


@pytest.mark.parametrize(
    ("images", "error", "match"),
    [
        (torch.zeros(1, 1, 2, 2), ValueError, "at least 2 images"),
        (torch.zeros(3, 4), ValueError, r"shape \(N, C, H, W\)"),
        (torch.zeros(3, 1, 2, 2, dtype=torch.uint8), TypeError, "floating point"),
        (torch.full((3, 1, 2, 2), float("nan")), ValueError, "finite"),
        ([[1.0]], TypeError, "torch.Tensor or numpy.ndarray"),
    ],
)
def test_fit_input_errors(images: object, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        ZCA().fit(images)


@pytest.mark.parametrize(
    ("eps", "error"), [(0.0, ValueError), (-1.0, ValueError), ("1", TypeError)]
)
def test_eps_must_be_positive(eps: object, error: type[Exception]) -> None:
    with pytest.raises(error, match="eps"):
        ZCA(eps=eps)


def test_bad_state_is_refused(train: torch.Tensor) -> None:
    state = ZCA().fit(train).state_dict()
    with pytest.raises(ValueError, match="keys"):
        ZCA().load_state_dict({"eps": 0.1})
    with pytest.raises(ValueError, match=r"state\['transform'\] must have shape \(18, 18\)"):
        ZCA().load_state_dict({**state, "transform": torch.eye(4, dtype=torch.float64)})
    with pytest.raises(ValueError, match=r"state\['image_shape'\]"):
        ZCA().load_state_dict({**state, "image_shape": [18]})
    with pytest.raises(ValueError, match=r"state\['eps'\]"):
        ZCA().load_state_dict({**state, "eps": -0.1})


def test_device_mismatch_names_the_fix(train: torch.Tensor) -> None:
    zca = ZCA().fit(train).to("meta")
    with pytest.raises(ValueError, match=r"zca.to\('cpu'\)"):
        zca(train)


@pytest.mark.slow
def test_fashion_mnist_slice(fashion_mnist: ImageClassificationData) -> None:
    # A central 12x12 crop keeps the fit (an SVD of D x D, D = 144) quick.
    train = fashion_mnist.train_images[:1000, :, 8:20, 8:20].double()
    test = fashion_mnist.test_images[:200, :, 8:20, 8:20].double()
    zca = ZCA().fit(train)
    # The whitened covariance's spectrum is S / (S + eps), S the training covariance's.
    spectrum = torch.linalg.eigvalsh(sample_covariance(train)).clamp(min=0)
    whitened_spectrum = torch.linalg.eigvalsh(sample_covariance(zca(train)))
    expected = spectrum / (spectrum + zca.eps)
    torch.testing.assert_close(whitened_spectrum, expected, rtol=0, atol=1e-8)
    torch.testing.assert_close(zca.inverse(zca(test)), test, rtol=0, atol=1e-8)
