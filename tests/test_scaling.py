import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import ddcal
from ddcal.masking import mask_inputs
from ddcal.sampling import PerClassSampler
from ddcal.scaling import (
    CalibratedModel,
    MaskedTemperatureScaler,
    TemperatureBoundWarning,
    TemperatureScaler,
    fit_temperature,
    masked_logits,
)


def _planted(temperature: float, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and labels drawn from softmax(logits / temperature)."""
    generator = torch.Generator().manual_seed(seed)
    logits = 3.0 * torch.randn(n, 10, generator=generator, dtype=torch.float64)
    probs = torch.softmax(logits / temperature, dim=1)
    labels = torch.multinomial(probs, 1, generator=generator).squeeze(1)
    return logits, labels


def _nll(logits: torch.Tensor, labels: torch.Tensor, temperature: float) -> float:
    return float(nn.functional.cross_entropy(logits.double() / temperature, labels))


def _tiny_model(seed: int = 0, in_features: int = 16, classes: int = 3) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(in_features, 8), nn.ReLU(), nn.Linear(8, classes))


def _labelled_images(model: nn.Module, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Images with the model's own predictions as labels, one in four replaced at random.

    The model is then right on most of them but not all, so fitted temperatures
    are interior (neither bound).
    """
    generator = torch.Generator().manual_seed(seed)
    images = 3.0 * torch.randn(n, 1, 4, 4, generator=generator)
    with torch.no_grad():
        labels = model(images).argmax(1)
    noisy = torch.rand(n, generator=generator) < 0.25
    labels[noisy] = torch.randint(0, 3, (int(noisy.sum()),), generator=generator)
    return images, labels


@settings(deadline=None, max_examples=25)
@given(temperature=st.floats(0.3, 5.0), seed=st.integers(0, 10_000))
def test_planted_temperature_is_recovered(temperature: float, seed: int) -> None:
    logits, labels = _planted(temperature, 20_000, seed)
    fitted, bound = fit_temperature(logits, labels)
    assert bound is None
    assert fitted == pytest.approx(temperature, rel=0.08)


@settings(deadline=None, max_examples=25)
@given(temperature=st.floats(0.2, 8.0), seed=st.integers(0, 10_000))
def test_fit_reaches_the_nll_minimum(temperature: float, seed: int) -> None:
    logits, labels = _planted(temperature, 500, seed)
    fitted, _ = fit_temperature(logits, labels)
    grid = torch.logspace(-2, 2, 2001, dtype=torch.float64)
    best_on_grid = min(_nll(logits, labels, float(t)) for t in grid)
    assert _nll(logits, labels, fitted) <= best_on_grid + 1e-12
    for nearby in (fitted * 0.999, fitted * 1.001):
        assert _nll(logits, labels, fitted) <= _nll(logits, labels, nearby)


def test_fit_agrees_with_a_direct_scalar_minimisation() -> None:
    from scipy.optimize import minimize_scalar

    logits, labels = _planted(1.7, 3000, 11)
    reference = minimize_scalar(
        lambda log_t: _nll(logits, labels, math.exp(log_t)),
        bounds=(math.log(1e-2), math.log(1e2)),
        method="bounded",
        options={"xatol": 1e-10},
    )
    assert fit_temperature(logits, labels)[0] == pytest.approx(math.exp(reference.x), rel=1e-6)


def _bisection_fit(
    logits: torch.Tensor, labels: torch.Tensor, bounds: tuple[float, float]
) -> tuple[float, str | None]:
    """The straightforward fit: the root of the float64 NLL slope in b = 1/T by bisection."""
    z = logits.double()

    def slope(b: float) -> float:
        probs = torch.softmax(z * b, dim=1)
        return float(((probs * z).sum(1) - z.gather(1, labels[:, None]).squeeze(1)).mean())

    low, high = 1.0 / bounds[1], 1.0 / bounds[0]
    if slope(low) >= 0.0:
        return bounds[1], "upper"
    if slope(high) <= 0.0:
        return bounds[0], "lower"
    for _ in range(200):
        middle = math.sqrt(low * high)
        low, high = (middle, high) if slope(middle) < 0.0 else (low, middle)
    return 1.0 / math.sqrt(low * high), None


@settings(deadline=None, max_examples=60)
@given(
    scale=st.floats(1e-2, 1e2),
    informative=st.floats(0.0, 1.0),
    classes=st.integers(2, 30),
    bounds=st.sampled_from([(1e-2, 1e2), (0.5, 2.0), (1e-6, 1e6), (3.0, 4.0)]),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    seed=st.integers(0, 10_000),
)
def test_newton_fit_reaches_the_optimum_of_a_straightforward_bisection(
    scale: float,
    informative: float,
    classes: int,
    bounds: tuple[float, float],
    dtype: torch.dtype,
    seed: int,
) -> None:
    generator = torch.Generator().manual_seed(seed)
    logits = scale * torch.randn(500, classes, generator=generator, dtype=torch.float64)
    noise = scale * torch.randn(500, classes, generator=generator, dtype=torch.float64)
    labels = (informative * logits + (1.0 - informative) * noise).argmax(1)
    fitted, bound = fit_temperature(logits.to(dtype), labels, bounds=bounds)
    expected, expected_bound = _bisection_fit(logits, labels, bounds)
    assert bound == expected_bound
    if bound is not None:
        assert fitted == expected
        return
    assert fitted == pytest.approx(expected, rel=_resolution(logits, expected, dtype))
    assert _nll(logits, labels, fitted) <= _nll(logits, labels, expected) + 1e-12


def _resolution(logits: torch.Tensor, temperature: float, dtype: torch.dtype) -> float:
    """How closely a fit in ``dtype`` can place ``T``: the slope in ``b = 1/T`` is rounded
    at about ``eps * mean |z|``, which moves its root by that over the curvature
    ``mean Var_p[z]`` (tiny where the NLL is flat), relative to ``b``."""
    if dtype == torch.float64:
        return 1e-9
    z = logits.double()
    b = 1.0 / temperature
    probs = torch.softmax(z * b, dim=1)
    curvature = float(((probs * z**2).sum(1) - (probs * z).sum(1) ** 2).mean())
    rounding = 10 * torch.finfo(torch.float32).eps * float(z.abs().mean())
    return 1e-5 + rounding / (curvature * b)


def test_an_optimum_far_beyond_the_bound_is_settled_in_few_passes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The NLL flattens exponentially towards T = 0 here: Newton alone would creep."""
    passes = []
    evaluate = ddcal.temperature._slope_and_curvature
    monkeypatch.setattr(
        ddcal.temperature,
        "_slope_and_curvature",
        lambda shifted, b: passes.append(b) or evaluate(shifted, b),
    )
    labels = torch.arange(30) % 3
    logits = 5.0 * nn.functional.one_hot(labels, 3).double()
    assert fit_temperature(logits, labels, bounds=(1e-6, 1e2)) == (1e-6, "lower")
    assert len(passes) <= 5


def test_confidently_correct_logits_hit_the_lower_bound_with_a_warning() -> None:
    labels = torch.arange(30) % 3
    logits = 5.0 * nn.functional.one_hot(labels, 3).double()
    assert fit_temperature(logits, labels) == (0.01, "lower")
    with pytest.warns(TemperatureBoundWarning, match="lower bound"):
        scaler = TemperatureScaler().fit_logits(logits, labels)
    assert scaler.temperature_ == 0.01
    assert scaler.bound_hit_ == "lower"


def test_anti_correlated_logits_hit_the_upper_bound_with_a_warning() -> None:
    labels = torch.arange(30) % 3
    logits = -5.0 * nn.functional.one_hot(labels, 3).double()
    with pytest.warns(TemperatureBoundWarning, match="upper bound"):
        scaler = TemperatureScaler(bounds=(0.1, 10.0)).fit_logits(logits, labels)
    assert scaler.temperature_ == 10.0


def test_constant_logits_carry_no_information_and_give_one() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        scaler = TemperatureScaler().fit_logits(torch.zeros(6, 4), torch.arange(6) % 4)
    assert scaler.temperature_ == 1.0


@settings(deadline=None, max_examples=40)
@given(temperature=st.floats(1e-2, 1e2), seed=st.integers(0, 10_000))
def test_scaling_never_changes_the_argmax(temperature: float, seed: int) -> None:
    logits = torch.randn(64, 7, generator=torch.Generator().manual_seed(seed))
    scaler = TemperatureScaler().load_state_dict(
        {**TemperatureScaler().state_dict(), "temperature": temperature}
    )
    assert torch.equal(scaler.transform(logits).argmax(1), logits.argmax(1))


def test_temperature_one_is_the_identity() -> None:
    logits = torch.randn(10, 4)
    scaler = TemperatureScaler().load_state_dict(
        {**TemperatureScaler().state_dict(), "temperature": 1.0}
    )
    assert torch.equal(scaler.transform(logits), logits)
    model = _tiny_model()
    x = torch.randn(5, 16)
    assert torch.equal(scaler.calibrate(model)(x), model(x))


def test_transform_keeps_type_dtype_and_divides() -> None:
    logits, labels = _planted(2.0, 2000, 0)
    scaler = TemperatureScaler().fit_logits(logits, labels)
    t = scaler.temperature_
    assert t is not None
    half = logits.half()
    assert scaler.transform(half).dtype == torch.float16
    assert torch.allclose(scaler.transform(logits), logits / t)
    as_numpy = scaler.transform(logits.numpy())
    assert isinstance(as_numpy, np.ndarray)
    np.testing.assert_allclose(as_numpy, logits.numpy() / t)


def test_mask_ratio_zero_is_plain_temperature_scaling() -> None:
    model = _tiny_model()
    images, labels = _labelled_images(model, 60)
    plain = TemperatureScaler().fit(model, images, labels)
    masked = MaskedTemperatureScaler(0.0, num_masks=7).fit(model, images, labels)
    assert masked.temperature_ == plain.temperature_
    assert masked.num_fit_samples_ == plain.num_fit_samples_ == 60


def test_masked_fit_uses_masked_copies_of_the_per_class_sample() -> None:
    model = _tiny_model()
    images, labels = _labelled_images(model, 60)
    scaler = MaskedTemperatureScaler(0.5, num_masks=4, per_class=5, seed=3)
    logits, targets = scaler.validation_logits(model, images, labels)
    assert logits.shape == (60, 3)
    assert torch.bincount(targets).tolist() == [20, 20, 20]
    # the same 15 images, each seen through 4 masks, are refitted exactly
    scaler.fit(model, images, labels)
    assert scaler.temperature_ == TemperatureScaler().fit_logits(logits, targets).temperature_
    assert scaler.num_fit_samples_ == 60


def test_masked_logits_are_those_of_masked_inputs() -> None:
    model = _tiny_model()
    images, labels = _labelled_images(model, 9)
    scaler = MaskedTemperatureScaler(0.5, num_masks=2, seed=5)
    logits, _ = scaler.validation_logits(model, images, labels)
    masked = mask_inputs(
        images.repeat_interleave(2, dim=0), 0.5, generator=torch.Generator().manual_seed(5)
    )
    with torch.no_grad():
        assert torch.allclose(logits, model(masked))


def _temperature_the_old_way(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, settings: dict
) -> float:
    """The MTS temperature as the scaler computed it before masked_logits existed."""
    ratio, seed = settings["mask_ratio"], settings.get("seed", 0)
    if settings.get("per_class") is not None:
        chosen = PerClassSampler(labels, per_class=settings["per_class"], seed=seed).indices()
        images, labels = images[chosen], labels[chosen]
    copies = 1 if ratio == 0 else settings.get("num_masks", 10)
    masked = mask_inputs(
        images.repeat_interleave(copies, dim=0),
        ratio,
        generator=torch.Generator().manual_seed(seed),
    )
    with torch.no_grad():
        logits = model.eval()(masked)
    return fit_temperature(logits, labels.repeat_interleave(copies))[0]


MTS_SETTINGS = [
    {"mask_ratio": 0.5},
    {"mask_ratio": 0.0, "num_masks": 7},
    {"mask_ratio": 0.5, "num_masks": 4, "per_class": 5, "seed": 3},
    {"mask_ratio": 0.3, "seed": 11, "batch_size": 4},
]


@pytest.mark.parametrize("settings", MTS_SETTINGS)
def test_fit_is_masked_logits_then_fit_temperature_with_the_old_numbers(settings: dict) -> None:
    model = _tiny_model()
    images, labels = _labelled_images(model, 60)
    scaler = MaskedTemperatureScaler(**settings).fit(model, images, labels)
    composed, _ = fit_temperature(*masked_logits(model, images, labels, **settings))
    assert scaler.temperature_ == composed
    assert scaler.temperature_ == pytest.approx(
        _temperature_the_old_way(model, images, labels, settings), rel=1e-9
    )


@pytest.mark.parametrize("settings", MTS_SETTINGS)
def test_validation_logits_are_masked_logits_with_the_scalers_settings(settings: dict) -> None:
    model = _tiny_model()
    images, labels = _labelled_images(model, 60)
    logits, targets = MaskedTemperatureScaler(**settings).validation_logits(model, images, labels)
    expected_logits, expected_targets = masked_logits(model, images, labels, **settings)
    assert torch.equal(logits, expected_logits)
    assert torch.equal(targets, expected_targets)


def test_masked_logits_holds_k_masked_copies_of_the_per_class_sample() -> None:
    model = _tiny_model()
    images, labels = _labelled_images(model, 60)
    logits, targets = masked_logits(
        model, images, labels, mask_ratio=0.5, num_masks=4, per_class=5, seed=3
    )
    assert logits.shape == (60, 3)
    assert torch.bincount(targets).tolist() == [20, 20, 20]
    assert torch.equal(targets, targets[::4].repeat_interleave(4))  # the copies are adjacent
    assert not torch.equal(logits[0], logits[1])  # and differently masked


def test_masked_logits_at_ratio_zero_are_the_plain_logits_once() -> None:
    model = _tiny_model()
    images, labels = _labelled_images(model, 12)
    logits, targets = masked_logits(model, images, labels, mask_ratio=0.0, num_masks=5)
    with torch.no_grad():
        torch.testing.assert_close(logits, model(images))
    assert torch.equal(targets, labels)


def test_masked_logits_runs_where_device_says_and_is_exported() -> None:
    model = _tiny_model()
    images, labels = _labelled_images(model, 12)
    on_cpu = masked_logits(model, images, labels, mask_ratio=0.4, device="cpu")
    default = masked_logits(model, images, labels, mask_ratio=0.4)
    assert torch.equal(on_cpu[0], default[0])
    assert ddcal.masked_logits is masked_logits
    assert "masked_logits" in ddcal.__all__


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"mask_ratio": 1.0}, ValueError, r"mask_ratio must be in \[0, 1\), got 1.0"),
        ({"mask_ratio": 0.5, "num_masks": 0}, ValueError, "num_masks must be >= 1, got 0"),
        ({"mask_ratio": 0.0, "num_masks": 0}, ValueError, "num_masks must be >= 1, got 0"),
        ({"mask_ratio": 0.5, "per_class": 0}, ValueError, "per_class must be >= 1, got 0"),
        ({"mask_ratio": 0.5, "seed": 1.5}, TypeError, "seed must be an int, got float 1.5"),
        ({"mask_ratio": 0.5, "batch_size": 0}, ValueError, "batch_size must be >= 1, got 0"),
    ],
)
def test_masked_logits_rejects_bad_settings(kwargs: dict, error: type, match: str) -> None:
    model = _tiny_model()
    images, labels = _labelled_images(model, 6)
    with pytest.raises(error, match=match):
        masked_logits(model, images, labels, **kwargs)


def test_the_fit_records_the_mask_ratio_it_applied() -> None:
    model = _tiny_model()
    images, labels = _labelled_images(model, 30)
    scaler = MaskedTemperatureScaler(0.5)
    assert scaler.fitted_mask_ratio_ is None
    scaler.fit(model, images, labels)
    assert scaler.fitted_mask_ratio_ == 0.5
    assert scaler.state_dict()["fitted_mask_ratio"] == 0.5
    assert TemperatureScaler().fit(model, images, labels).fitted_mask_ratio_ == 0.0


def test_fit_logits_records_no_mask_ratio_since_it_applied_none() -> None:
    logits, labels = _planted(1.5, 500, 2)
    model = _tiny_model()
    images, image_labels = _labelled_images(model, 30)
    scaler = MaskedTemperatureScaler(0.5).fit(model, images, image_labels)
    scaler.fit_logits(logits, labels)
    assert scaler.fitted_mask_ratio_ is None
    state = scaler.state_dict()
    assert state["mask_ratio"] == 0.5  # the setting, kept
    assert state["fitted_mask_ratio"] is None  # what was applied: nothing ddcal knows of


def test_a_state_saved_before_fitted_mask_ratio_existed_still_loads() -> None:
    old_state = {
        "mask_ratio": 0.5, "num_masks": 10, "per_class": None, "batch_size": 256, "seed": 0,
        "bounds": (1e-2, 1e2), "temperature": 1.3, "bound_hit": None,
    }  # fmt: skip
    scaler = MaskedTemperatureScaler().load_state_dict(old_state)
    assert scaler.temperature_ == 1.3
    assert scaler.fitted_mask_ratio_ is None
    assert scaler.state_dict() == {**old_state, "fitted_mask_ratio": None}
    plain = TemperatureScaler().load_state_dict({**old_state, "mask_ratio": 0.0})
    assert plain.fitted_mask_ratio_ is None


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"fitted_mask_ratio": 1.5}, r"state\['fitted_mask_ratio'\] must be in \[0, 1\), got 1.5"),
        (
            {"fitted_mask_ratio": 0.5, "temperature": None},
            r"state\['fitted_mask_ratio'\] must be None in an unfitted state",
        ),
        ({"temperature": True}, r"state\['temperature'\] must be a positive finite float"),
        ({"num_masks": 0}, "num_masks must be >= 1, got 0"),
    ],
)
def test_load_state_dict_rejects_a_bad_fit(change: dict, match: str) -> None:
    state = {**MaskedTemperatureScaler().state_dict(), "temperature": 1.0, **change}
    scaler = MaskedTemperatureScaler(0.3)
    with pytest.raises(ValueError, match=match):
        scaler.load_state_dict(state)
    assert scaler.mask_ratio == 0.3  # nothing half-loaded


def test_same_seed_same_temperature_other_seed_other_temperature() -> None:
    model = _tiny_model()
    images, labels = _labelled_images(model, 60)
    first = MaskedTemperatureScaler(0.5, seed=1).fit(model, images, labels).temperature_
    again = MaskedTemperatureScaler(0.5, seed=1).fit(model, images, labels).temperature_
    other = MaskedTemperatureScaler(0.5, seed=2).fit(model, images, labels).temperature_
    assert first == again
    assert first != other


def test_fit_uses_eval_mode_without_gradients_and_restores_the_mode() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(16, 3))
    images = torch.randn(30, 1, 4, 4)
    with torch.no_grad():
        labels = model.eval()(images).argmax(1)
    labels[:5] = (labels[:5] + 1) % 3
    model.train()
    running_mean = model[1].running_mean.clone()
    MaskedTemperatureScaler(0.3, batch_size=7).fit(model, images, labels)
    assert model.training
    assert torch.equal(model[1].running_mean, running_mean)
    assert all(p.grad is None for p in model.parameters())


def test_batch_size_does_not_change_the_unmasked_fit() -> None:
    model = _tiny_model()
    images, labels = _labelled_images(model, 50)
    big = TemperatureScaler(batch_size=256).fit(model, images, labels).temperature_
    small = TemperatureScaler(batch_size=3).fit(model, images, labels).temperature_
    assert big == pytest.approx(small, rel=1e-6)


def test_predict_proba_and_calibrated_model_apply_the_temperature() -> None:
    model = _tiny_model()
    images, labels = _labelled_images(model, 40)
    scaler = MaskedTemperatureScaler(0.5).fit(model, images, labels)
    t = scaler.temperature_
    assert t is not None
    with torch.no_grad():
        expected = torch.softmax(model(images) / t, dim=1)
        calibrated = scaler.calibrate(model)
        assert isinstance(calibrated, CalibratedModel)
        assert torch.allclose(calibrated(images), model(images) / t)
    probs = scaler.predict_proba(model, images)
    assert torch.allclose(probs, expected, atol=1e-6)
    assert torch.allclose(probs.sum(1), torch.ones(40))


def test_state_dict_round_trips_through_a_weights_only_file(tmp_path) -> None:
    logits, labels = _planted(1.5, 1000, 4)
    scaler = MaskedTemperatureScaler(0.7, num_masks=3, per_class=2, seed=9).fit_logits(
        logits, labels
    )
    path = tmp_path / "scaler.pt"
    torch.save(scaler.state_dict(), path)
    restored = MaskedTemperatureScaler().load_state_dict(torch.load(path, weights_only=True))
    assert restored.state_dict() == scaler.state_dict()
    assert torch.equal(restored.transform(logits), scaler.transform(logits))
    model = _tiny_model()
    scaler.fit(model, *_labelled_images(model, 30))
    torch.save(scaler.state_dict(), path)
    restored = MaskedTemperatureScaler().load_state_dict(torch.load(path, weights_only=True))
    assert restored.fitted_mask_ratio_ == 0.7


def test_temperature_scaler_refuses_a_masked_state() -> None:
    state = MaskedTemperatureScaler(0.5).state_dict()
    with pytest.raises(ValueError, match=r"mask_ratio 0, got 0\.5"):
        TemperatureScaler().load_state_dict(state)


def test_load_state_dict_rejects_bad_states() -> None:
    with pytest.raises(ValueError, match="state must be a dict with keys"):
        MaskedTemperatureScaler().load_state_dict({"temperature": 1.0})
    state = {**MaskedTemperatureScaler().state_dict(), "temperature": -1.0}
    with pytest.raises(ValueError, match=r"state\['temperature'\] must be a positive"):
        MaskedTemperatureScaler().load_state_dict(state)


@pytest.mark.parametrize(
    "call",
    [
        lambda s: s.transform(torch.zeros(2, 3)),
        lambda s: s.predict_proba(_tiny_model(), torch.zeros(2, 16)),
        lambda s: s.calibrate(_tiny_model()),
    ],
)
def test_using_an_unfitted_scaler_is_an_error(call) -> None:
    with pytest.raises(RuntimeError, match="not fitted yet: call fit"):
        call(MaskedTemperatureScaler())


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"mask_ratio": 1.0}, ValueError, r"mask_ratio must be in \[0, 1\), got 1.0"),
        ({"mask_ratio": -0.5}, ValueError, r"mask_ratio must be in \[0, 1\), got -0.5"),
        ({"num_masks": 0}, ValueError, "num_masks must be >= 1, got 0"),
        ({"per_class": 0}, ValueError, "per_class must be >= 1, got 0"),
        ({"batch_size": 2.5}, TypeError, "batch_size must be an int"),
        ({"bounds": (1.0, 0.5)}, ValueError, "bounds must satisfy 0 < low < high"),
        ({"bounds": (0.0, 5.0)}, ValueError, "bounds must satisfy 0 < low < high"),
        ({"bounds": 3.0}, TypeError, "bounds must be a pair"),
        ({"seed": "7"}, TypeError, "seed must be an int, got str '7'"),
    ],
)
def test_constructor_rejects_bad_arguments(kwargs: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        MaskedTemperatureScaler(**kwargs)


@pytest.mark.parametrize(
    ("logits", "labels", "error", "match"),
    [
        (
            torch.tensor([[0.0, float("nan")]]),
            torch.tensor([0]),
            ValueError,
            "logits must be finite",
        ),
        (
            torch.tensor([[0.0, float("inf")]]),
            torch.tensor([0]),
            ValueError,
            "logits must be finite",
        ),
        (
            torch.zeros(3, 2),
            torch.tensor([0, 1]),
            ValueError,
            r"labels must have one entry per sample \(3\), got 2",
        ),
        (
            torch.zeros(2, 2),
            torch.tensor([0, 2]),
            ValueError,
            r"labels must be in \[0, 2\), got max 2",
        ),
        (torch.zeros(2), torch.tensor([0, 1]), ValueError, r"logits must have shape \(N, C\)"),
        (torch.zeros(0, 3), torch.tensor([0]), ValueError, "logits is empty"),
        (
            [[0.0, 1.0]],
            torch.tensor([0]),
            TypeError,
            "logits must be a torch.Tensor or numpy.ndarray",
        ),
    ],
)
def test_fit_logits_rejects_bad_inputs(logits, labels, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        TemperatureScaler().fit_logits(logits, labels)


def test_fit_rejects_mismatched_images_and_labels() -> None:
    with pytest.raises(ValueError, match=r"labels must have one entry per sample \(4\), got 3"):
        MaskedTemperatureScaler().fit(_tiny_model(), torch.zeros(4, 16), torch.tensor([0, 1, 2]))
    with pytest.raises(TypeError, match="images must be floating point"):
        MaskedTemperatureScaler().fit(
            _tiny_model(), torch.zeros(3, 16, dtype=torch.long), torch.tensor([0, 1, 2])
        )
    with pytest.raises(ValueError, match=r"labels must be in \[0, 3\), got max 5"):
        MaskedTemperatureScaler().fit(_tiny_model(), torch.zeros(3, 16), torch.tensor([0, 1, 5]))
