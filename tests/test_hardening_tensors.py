"""Regression tests of the tensor hardening: each bad input is a named ddcal error, and
good inputs of every float dtype and memory layout give the float32, contiguous result."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import ddcal
from ddcal import _validation
from ddcal.errors import InvalidInputError, InvalidTypeError, InvalidValueError
from ddcal.label_free import UninformativeMaskingWarning
from ddcal.metrics import MAX_BINS, MAX_RESAMPLES
from ddcal.temperature import MAX_NUM_MASKS

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _model(classes: int = 3, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, classes))


def _images(n: int = 12, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 2, 2, generator=generator), torch.arange(n) % 3


def _probs(n: int = 40, classes: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    logits = 2 * torch.randn(n, classes, generator=generator, dtype=torch.float64)
    return torch.softmax(logits, dim=1), torch.randint(0, classes, (n,), generator=generator)


def _quietly(call: Callable[[], Any]) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ddcal.TemperatureBoundWarning)
        warnings.simplefilter("ignore", UninformativeMaskingWarning)
        return call()


class _Returns(nn.Module):
    """A model whose forward returns ``make(linear(x))``."""

    def __init__(self, make: Callable[[torch.Tensor], Any]) -> None:
        super().__init__()
        self.linear = nn.Linear(12, 3)
        self.make = make

    def forward(self, x: torch.Tensor) -> Any:
        return self.make(self.linear(x.flatten(1)))


# --------------------------------------------------------------------------- #
# 1. Non-finite inputs to fit/select/calibrate are refused, naming the argument.
# --------------------------------------------------------------------------- #


def _with_nan(images: torch.Tensor) -> torch.Tensor:
    spoilt = images.clone()
    spoilt[1, 0, 0, 0] = float("nan")
    return spoilt


def test_select_mask_ratio_refuses_nan_calibration_images_instead_of_choosing_zero() -> None:
    images, labels = _images()
    with pytest.raises(InvalidValueError, match="real_calibration images must be finite"):
        ddcal.select_mask_ratio(_model(), images, labels, (_with_nan(images), labels))
    with pytest.raises(InvalidValueError, match="images must be finite"):
        ddcal.select_mask_ratio(_model(), _with_nan(images), labels, (images, labels))


def test_select_mask_ratio_refuses_a_model_whose_logits_are_nan() -> None:
    images, labels = _images()
    nan_model = _Returns(lambda logits: logits * float("nan"))
    with pytest.raises(InvalidValueError, match="model returned NaN or inf logits for sample 0"):
        ddcal.select_mask_ratio(nan_model, images, labels, (images, labels), candidates=(0.0,))


class _HugeOnShiftedImages(nn.Module):
    """Ordinary float64 logits, but about +-1e308 for images around 100 (the calibration set)."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(12, 3, dtype=torch.float64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.linear(x.flatten(1) - 100 * (x.mean() > 50))
        return torch.where(x.mean() > 50, logits.sign() * 1e308, logits)


def test_select_mask_ratio_refuses_calibration_logits_whose_nll_overflows() -> None:
    images, labels = _images()
    calibration = (images.double() + 100, labels)
    with pytest.raises(InvalidValueError, match=r"NLL of real_calibration .* overflow float64"):
        _quietly(
            lambda: ddcal.select_mask_ratio(
                _HugeOnShiftedImages(), images, labels, calibration, candidates=(0.0, 0.5)
            )
        )


@pytest.mark.parametrize(
    "fit",
    [
        lambda m, x, y: ddcal.MaskedTemperatureScaler(0.5, num_masks=2).fit(m, x, y),
        lambda m, x, y: ddcal.TemperatureScaler().fit(m, x, y),
        lambda m, x, y: ddcal.masked_logits(m, x, y, mask_ratio=0.3),
        lambda m, x, y: ddcal.calibrate(m, x, y, labelled=(x, y)),
        lambda m, x, y: ddcal.calibrate(m, x, y, num_masks=2),
        lambda m, x, y: ddcal.train_network(m, x, y, epochs=1),
        lambda m, x, y: ddcal.predict_logits(m, x),
    ],
)
def test_every_fit_refuses_nan_images(fit: Callable[..., Any]) -> None:
    images, labels = _images()
    with pytest.raises(
        InvalidValueError, match=r"images must be finite, got NaN or inf in sample 1"
    ):
        fit(_model(), _with_nan(images), labels)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_fit_temperature_and_fit_logits_refuse_non_finite_logits(bad: float) -> None:
    logits = torch.tensor([[0.0, 1.0], [bad, 0.0]])
    labels = torch.tensor([0, 1])
    with pytest.raises(InvalidValueError, match="logits must be finite"):
        ddcal.fit_temperature(logits, labels)
    with pytest.raises(InvalidValueError, match="logits must be finite"):
        ddcal.TemperatureScaler().fit_logits(logits, labels)


def test_fit_temperature_refuses_logits_that_overflow_instead_of_returning_nan() -> None:
    logits = torch.tensor([[1e308, -1e308], [-1e308, 1e308], [0.0, 1.0]], dtype=torch.float64)
    labels = torch.tensor([1, 1, 1])
    with pytest.raises(InvalidValueError, match=r"logits are too large to fit a temperature"):
        ddcal.fit_temperature(logits, labels)


# --------------------------------------------------------------------------- #
# 2. train_network: options range-checked, soft labels are rows of probabilities.
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"lr": float("inf")}, InvalidValueError, "lr must be finite, got inf"),
        ({"lr": float("nan")}, InvalidValueError, "lr must be finite, got nan"),
        ({"lr": -0.1}, InvalidValueError, r"lr must be > 0, got -0\.1"),
        ({"lr": "0.1"}, InvalidTypeError, "lr must be a real number"),
        ({"weight_decay": float("nan")}, InvalidValueError, "weight_decay must be finite"),
        ({"weight_decay": float("inf")}, InvalidValueError, "weight_decay must be finite"),
        ({"weight_decay": -1e-4}, InvalidValueError, r"weight_decay must be in \[0, 1\]"),
        (
            {"weight_decay": 3.4e38},
            InvalidValueError,
            r"weight_decay must be in \[0, 1\].*3\.4e\+38",
        ),
        ({"momentum": 1.0}, InvalidValueError, r"momentum must be in \[0, 1\), got 1\.0"),
        ({"momentum": -0.5}, InvalidValueError, r"momentum must be in \[0, 1\)"),
        ({"momentum": float("nan")}, InvalidValueError, "momentum must be finite"),
        ({"seed": -1}, InvalidValueError, "seed must be >= 0, got -1"),
        ({"seed": 2**32}, InvalidValueError, "seed must be < 2[*][*]32"),
        ({"seed": 0.5}, InvalidTypeError, "seed must be an int"),
        ({"augment": 3}, InvalidTypeError, "augment must be callable or None, got int"),
        ({"channels_last": 1}, InvalidTypeError, "channels_last must be a bool"),
        ({"progress": "yes"}, InvalidTypeError, "progress must be a bool"),
        ({"net": None}, InvalidTypeError, "net must be a torch.nn.Module, got NoneType"),
        ({"net": nn.Flatten()}, InvalidValueError, "net has no trainable parameters"),
        ({"labels": torch.tensor(1)}, InvalidValueError, r"one entry per image \(12\), got shape"),
        ({"labels": torch.ones(12, dtype=torch.bool)}, InvalidTypeError, "must be class indices"),
        (
            {"images": torch.zeros(12, 3, 2, 2, dtype=torch.uint8)},
            InvalidTypeError,
            r"images must be floating point, got dtype torch.uint8: convert and normalise",
        ),
        (
            {"images": torch.zeros(12, 12), "channels_last": True},
            InvalidValueError,
            r"channels_last needs images of shape \(N, C, H, W\)",
        ),
    ],
)
def test_train_network_refuses_bad_options(kwargs: dict[str, Any], error: type, match: str) -> None:
    images, labels = _images()
    arguments = {"net": _model(), "images": images, "labels": labels, "epochs": 1, **kwargs}
    with pytest.raises(error, match=match):
        ddcal.train_network(**arguments)


@pytest.mark.parametrize(
    ("soft", "match"),
    [
        (torch.tensor([[1.5, -0.5, 0.0]]), r"labels must be non-negative \(probabilities\)"),
        (torch.tensor([[0.5, 0.5, 0.5]]), r"labels rows must sum to 1 .* got 1\.5 in row 0"),
        (torch.tensor([[0.5, float("nan"), 0.5]]), "labels must be finite"),
        (torch.tensor([[0.25, 0.25, 0.25, 0.25]]), r"one column per class of the network \(3\)"),
        (torch.zeros(1, 0), "labels must have at least one class"),
    ],
)
def test_train_network_refuses_soft_labels_that_are_not_probabilities(
    soft: torch.Tensor, match: str
) -> None:
    images, _ = _images()
    with pytest.raises(InvalidValueError, match=match):
        ddcal.train_network(_model(), images, soft.expand(12, -1), epochs=1)


def test_train_network_takes_soft_labels_within_the_sum_tolerance() -> None:
    images, labels = _images()
    soft = nn.functional.one_hot(labels, 3).double() * (1 + 5e-4)
    ddcal.train_network(_model(), images, soft, epochs=1)
    ddcal.train_network(_model(), images, soft.half() * (1 + 5e-3), epochs=1, loss="mixup")


def test_train_network_reports_a_diverged_training_naming_lr() -> None:
    images, labels = _images()
    with pytest.raises(InvalidValueError, match=r"training diverged: .* lr=1e\+30; lower lr"):
        ddcal.train_network(_model(), images, labels, epochs=2, lr=1e30)


# --------------------------------------------------------------------------- #
# 3. A rejected state changes nothing; a loaded one leaves nothing of the old fit.
# --------------------------------------------------------------------------- #


def _fitted_scaler() -> ddcal.MaskedTemperatureScaler:
    images, labels = _images(30)
    return _quietly(
        lambda: ddcal.MaskedTemperatureScaler(num_masks=2).fit(_model(), images, labels)
    )


@pytest.mark.parametrize(
    "change",
    [
        {"bound_hit": "sideways"},
        {"bound_hit": 1},
        {"bound_hit": "lower", "temperature": None},
        {"seed": 2**32},
        {"num_masks": MAX_NUM_MASKS + 1},
        {"temperature": float("nan")},
        {"fitted_mask_ratio": 2.0},
    ],
)
def test_a_rejected_state_leaves_the_scaler_as_it_was(change: dict[str, Any]) -> None:
    scaler = _fitted_scaler()
    before = dict(vars(scaler))
    state = {**ddcal.MaskedTemperatureScaler(0.4, seed=9).state_dict(), "temperature": 2.0}
    with pytest.raises(InvalidValueError, match=r"state|seed|num_masks"):
        scaler.load_state_dict({**state, **change})
    assert vars(scaler) == before


def test_a_loaded_state_replaces_the_whole_fit() -> None:
    scaler = _fitted_scaler()
    assert scaler.label_free_choice_ is not None
    assert scaler.num_fit_samples_ is not None
    state = {**ddcal.MaskedTemperatureScaler(0.4).state_dict(), "temperature": 2.0}
    scaler.load_state_dict({**state, "bound_hit": "upper"})
    assert (scaler.temperature_, scaler.bound_hit_, scaler.mask_ratio) == (2.0, "upper", 0.4)
    assert scaler.label_free_choice_ is None
    assert scaler.num_fit_samples_ is None


# --------------------------------------------------------------------------- #
# 4. n_bins, num_masks and other counts are bounded before anything is allocated.
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize(
    "metric",
    [
        lambda p, y, n: ddcal.calibration_error(p, y, n_bins=n),
        lambda p, y, n: ddcal.calibration_error(p, y, n_bins=n, binning="quantile"),
        lambda p, y, n: ddcal.reliability_bins(p, y, n_bins=n),
        lambda p, y, n: ddcal.classwise_calibration_error(p, y, n_bins=n),
        lambda p, y, n: ddcal.calibration_summary(p, y, n_bins=n),
        lambda p, y, n: ddcal.CalibrationMeter(n_bins=n),
    ],
)
def test_n_bins_is_bounded(metric: Callable[..., Any]) -> None:
    probs, labels = _probs()
    with pytest.raises(InvalidValueError, match=f"n_bins must be <= {MAX_BINS}, got 100000000"):
        metric(probs, labels, 100_000_000)
    metric(probs, labels, MAX_BINS)


def test_classwise_bins_beyond_the_memory_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_validation, "_memory_bytes", lambda device: 2**20)
    probs, labels = _probs(classes=100)
    with pytest.raises(
        InvalidValueError, match=r"classwise bins of 100 classes with n_bins=1000 need .* GiB"
    ):
        ddcal.classwise_calibration_error(probs, labels, n_bins=1000)


@pytest.mark.parametrize(
    "call",
    [
        lambda m, x, y, k: ddcal.MaskedTemperatureScaler(0.5, num_masks=k),
        lambda m, x, y, k: ddcal.masked_logits(m, x, y, mask_ratio=0.5, num_masks=k),
        lambda m, x, y, k: ddcal.select_mask_ratio(m, x, y, (x, y), num_masks=k),
        lambda m, x, y, k: ddcal.calibrate(m, x, y, num_masks=k),
    ],
)
def test_num_masks_is_bounded(call: Callable[..., Any]) -> None:
    images, labels = _images()
    with pytest.raises(InvalidValueError, match=f"num_masks must be <= {MAX_NUM_MASKS}, got 10001"):
        call(_model(), images, labels, 10_001)


def test_masked_copies_beyond_the_memory_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_validation, "_memory_bytes", lambda device: 2**16)
    images, labels = _images(100)
    with pytest.raises(
        InvalidValueError, match=r"num_masks=1000 masked copies of 100 images need .*\(num_masks\)"
    ):
        ddcal.masked_logits(_model(), images, labels, mask_ratio=0.5, num_masks=1000)
    ddcal.masked_logits(_model(), images, labels, mask_ratio=0.5, num_masks=2)


def test_sampler_draws_beyond_the_memory_are_refused() -> None:
    with pytest.raises(InvalidValueError, match=r"indices of per_class=1000000000000 .* GiB"):
        ddcal.PerClassSampler(torch.tensor([0, 1]), per_class=10**12, replacement=True)


def test_bootstrap_resamples_are_bounded() -> None:
    probs, labels = _probs()
    with pytest.raises(InvalidValueError, match=f"n_resamples must be <= {MAX_RESAMPLES}"):
        ddcal.bootstrap_interval(ddcal.calibration_error, probs, labels, n_resamples=10**12)


# --------------------------------------------------------------------------- #
# 5. Images of any float dtype enter the model in its dtype; integer images are refused.
# --------------------------------------------------------------------------- #

FLOAT_DTYPES = [torch.float16, torch.bfloat16, torch.float64]


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_images_of_any_float_dtype_give_the_logits_of_their_float32_cast(
    dtype: torch.dtype,
) -> None:
    images, _ = _images()
    images = images.to(dtype)
    expected = ddcal.predict_logits(_model(), images.float(), batch_size=5)
    assert torch.equal(ddcal.predict_logits(_model(), images, batch_size=5), expected)


SCALERS = [
    ddcal.TemperatureScaler,
    lambda: ddcal.MaskedTemperatureScaler(0.5, num_masks=3),
]


@pytest.mark.parametrize("make_scaler", SCALERS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_scalers_fit_and_predict_on_images_of_any_float_dtype(
    make_scaler: Callable[[], ddcal.MaskedTemperatureScaler], dtype: torch.dtype
) -> None:
    images, labels = _images(30)
    reference = _quietly(lambda: make_scaler().fit(_model(), images, labels))
    fitted = _quietly(lambda: make_scaler().fit(_model(), images.to(dtype), labels))
    expected = _quietly(lambda: make_scaler().fit(_model(), images.to(dtype).float(), labels))
    assert fitted.temperature_ == expected.temperature_
    assert math.isclose(fitted.temperature_, reference.temperature_, rel_tol=0.2)
    probs = fitted.predict_proba(_model(), images.to(dtype))
    assert torch.allclose(probs.sum(dim=1), torch.ones(30))


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_train_network_and_select_mask_ratio_take_images_of_any_float_dtype(
    dtype: torch.dtype,
) -> None:
    images, labels = _images()
    trained = ddcal.train_network(_model(), images.to(dtype), labels, epochs=2, batch_size=4)
    expected = ddcal.train_network(
        _model(), images.to(dtype).float(), labels, epochs=2, batch_size=4
    )
    for a, b in zip(trained.parameters(), expected.parameters(), strict=True):
        assert torch.equal(a, b)
    selection = _quietly(
        lambda: ddcal.select_mask_ratio(
            _model(), images.to(dtype), labels, (images.to(dtype), labels), num_masks=2
        )
    )
    assert 0.0 <= selection.mask_ratio < 1.0


def test_a_float64_model_gets_float64_images() -> None:
    images, _ = _images()
    model = _model().double()
    logits = ddcal.predict_logits(model, images)
    assert logits.dtype == torch.float64
    assert torch.equal(logits, ddcal.predict_logits(model, images.double()))


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int64, torch.bool])
def test_integer_images_are_refused_with_what_to_do(dtype: torch.dtype) -> None:
    images, labels = _images()
    with pytest.raises(InvalidTypeError, match=r"convert and normalise them first .* / 255"):
        ddcal.predict_logits(_model(), images.to(dtype))
    with pytest.raises(InvalidTypeError, match=r"convert and normalise"):
        ddcal.TemperatureScaler().fit(_model(), images.to(dtype), labels)


def test_complex_images_are_refused() -> None:
    images, _ = _images()
    with pytest.raises(InvalidTypeError, match="images must be real floating point"):
        ddcal.predict_logits(_model(), images.to(torch.complex64))


def test_images_beyond_the_range_of_the_models_dtype_are_refused() -> None:
    images, _ = _images()
    with pytest.raises(
        InvalidValueError, match=r"images hold values up to .* model's torch.float32"
    ):
        ddcal.predict_logits(_model(), images.double() * 1e300)
    with pytest.raises(InvalidValueError, match=r"model's torch.float16"):
        ddcal.predict_logits(_model().half(), images * 1e6)


# --------------------------------------------------------------------------- #
# 6. Sparse logits and models that return something else than (N, C) logits.
# --------------------------------------------------------------------------- #


class _TupleNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(12, 3)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.linear(x.flatten(1))
        return logits, logits


@pytest.mark.parametrize(
    ("model", "error", "match"),
    [
        (_Returns(lambda logits: logits.sum()), InvalidValueError, r"got shape \(\) for a batch"),
        (_Returns(lambda logits: logits[0]), InvalidValueError, r"got shape \(3,\)"),
        (_Returns(lambda logits: logits[:1]), InvalidValueError, r"\(1, 3\) for a batch of 12"),
        (_Returns(lambda logits: (logits, 0)), InvalidTypeError, "got a tuple of 2"),
        (_Returns(lambda logits: {"out": logits}), InvalidTypeError, "got a dict of 1"),
        (_Returns(lambda logits: logits.tolist()), InvalidTypeError, "got a list of"),
        (_Returns(lambda logits: None), InvalidTypeError, "got a NoneType"),
        (_Returns(lambda logits: logits.to_sparse()), InvalidTypeError, "dense logits"),
        (_Returns(lambda logits: logits.long()), InvalidTypeError, "floating-point logits"),
    ],
)
def test_a_model_that_does_not_return_logits_is_named(
    model: nn.Module, error: type, match: str
) -> None:
    images, labels = _images()
    calls = [
        lambda: ddcal.predict_logits(model, images),
        lambda: ddcal.TemperatureScaler().fit(model, images, labels),
        lambda: ddcal.MaskedTemperatureScaler(num_masks=2).fit(model, images, labels),
        lambda: ddcal.select_mask_ratio(model, images, labels, (images, labels)),
        lambda: ddcal.train_network(model, images, labels, epochs=1),
    ]
    for call in calls:
        with pytest.raises(error, match=f"model must return .*{match}"):
            call()


def test_a_torchscript_model_returning_a_tuple_is_named() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit.script's own notice
        scripted = torch.jit.script(_TupleNet())
    images, labels = _images()
    with pytest.raises(InvalidTypeError, match=r"model must return .* got a tuple of 2"):
        ddcal.predict_logits(scripted, images)
    with pytest.raises(InvalidTypeError, match="got a tuple of 2"):
        ddcal.MaskedTemperatureScaler(num_masks=2).fit(scripted, images, labels)


def test_a_model_that_is_not_a_module_is_named() -> None:
    images, labels = _images()
    with pytest.raises(InvalidTypeError, match=r"model must be a torch\.nn\.Module, got function"):
        ddcal.predict_logits(lambda x: x, images)
    with pytest.raises(InvalidTypeError, match=r"model must be a torch\.nn\.Module"):
        ddcal.select_mask_ratio("net", images, labels)
    with pytest.raises(InvalidTypeError, match=r"model must be a torch\.nn\.Module"):
        ddcal.CalibratedModel(None, 1.5)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "call",
    [
        lambda x, y: ddcal.calibration_error(x, y, from_logits=True),
        lambda x, y: ddcal.negative_log_likelihood(x, y, from_logits=True),
        lambda x, y: ddcal.CalibrationMeter(from_logits=True).update(x, y),
        lambda x, y: ddcal.fit_temperature(x, y),
        lambda x, y: ddcal.TemperatureScaler().fit_logits(x, y),
        lambda x, y: _quietly(
            lambda: ddcal.TemperatureScaler().fit_logits(x.to_dense(), y)
        ).transform(x),
        lambda x, y: ddcal.save_predictions("unused.pt", x, y),
    ],
)
def test_sparse_logits_are_refused_with_what_to_do(call: Callable[..., Any]) -> None:
    logits = torch.tensor([[1.0, 0.0], [0.0, 2.0]]).to_sparse()
    with pytest.raises(
        InvalidTypeError, match=r"must be a dense tensor, got layout .*to_dense\(\)"
    ):
        call(logits, torch.tensor([0, 1]))


def test_sparse_labels_are_refused() -> None:
    probs, labels = _probs()
    with pytest.raises(InvalidTypeError, match="labels must be a dense tensor"):
        ddcal.calibration_error(probs, labels.to_sparse())
    images, image_labels = _images()
    with pytest.raises(InvalidTypeError, match="labels must be a dense tensor"):
        ddcal.train_network(_model(), images, image_labels.to_sparse(), epochs=1)


def test_logits_that_overflow_when_scaled_are_refused() -> None:
    scaler = ddcal.TemperatureScaler().load_state_dict(
        {**ddcal.TemperatureScaler().state_dict(), "temperature": 0.5}
    )
    with pytest.raises(InvalidValueError, match=r"logits / T overflow torch.float16 at T = 0.5"):
        scaler.transform(torch.tensor([[60000.0, 0.0]], dtype=torch.float16))
    with pytest.raises(InvalidValueError, match=r"logits / T overflow float16"):
        scaler.transform(np.array([[60000.0, 0.0]], dtype=np.float16))
    assert torch.equal(scaler.transform(torch.tensor([[1.0, 0.0]])), torch.tensor([[2.0, 0.0]]))


def test_an_nll_that_overflows_float64_is_refused_and_leaves_the_meter_unchanged() -> None:
    logits = torch.tensor([[1e308, -1e308]], dtype=torch.float64)
    with pytest.raises(InvalidValueError, match="NLL of probs overflows float64"):
        ddcal.negative_log_likelihood(logits, torch.tensor([1]), from_logits=True)
    meter = ddcal.CalibrationMeter(from_logits=True)
    meter.update(torch.tensor([[0.0, 1.0]]), torch.tensor([1]))
    before = meter.compute()
    with pytest.raises(InvalidValueError, match="overflows float64"):
        meter.update(logits, torch.tensor([1]))
    assert meter.compute() == before


# --------------------------------------------------------------------------- #
# 7. Non-contiguous inputs give the contiguous result.
# --------------------------------------------------------------------------- #

METRICS = [
    ddcal.calibration_error,
    lambda p, y: ddcal.calibration_error(p, y, norm="max", binning="quantile"),
    ddcal.classwise_calibration_error,
    ddcal.negative_log_likelihood,
    ddcal.brier_score,
    ddcal.accuracy,
    lambda p, y: ddcal.calibration_summary(p, y, classwise=True),
    lambda p, y: [t.tolist() for t in vars(ddcal.reliability_bins(p, y)).values()],
]


@pytest.mark.parametrize("metric", METRICS)
def test_metrics_of_non_contiguous_inputs_equal_those_of_contiguous_ones(
    metric: Callable[..., Any],
) -> None:
    probs, labels = _probs()
    transposed = probs.t().contiguous().t()  # the same values, column-major
    strided_labels = labels.repeat_interleave(2)[::2]
    assert not transposed.is_contiguous()
    assert not strided_labels.is_contiguous()
    expected = metric(probs, labels)
    assert _same(metric(transposed, strided_labels), expected)
    assert _same(metric(probs[:, [0, 1, 2, 3]][::1], labels), expected)
    expanded = probs[:1].expand(5, -1)
    assert _same(metric(expanded, labels[:5]), metric(expanded.contiguous(), labels[:5]))


def _same(a: Any, b: Any) -> bool:
    return repr(a) == repr(b)


def test_the_meter_takes_non_contiguous_batches() -> None:
    probs, labels = _probs()
    contiguous, strided = ddcal.CalibrationMeter(), ddcal.CalibrationMeter()
    contiguous.update(probs, labels)
    strided.update(probs.t().contiguous().t(), labels.repeat_interleave(2)[::2])
    assert strided.compute() == contiguous.compute()


# --------------------------------------------------------------------------- #
# 8. Seeds outside [0, 2**32) would alias: refused wherever a seed is taken.
# --------------------------------------------------------------------------- #

SEEDED = [
    lambda m, x, y, s: ddcal.MaskedTemperatureScaler(0.5, seed=s),
    lambda m, x, y, s: ddcal.TemperatureScaler(seed=s),
    lambda m, x, y, s: ddcal.masked_logits(m, x, y, mask_ratio=0.5, num_masks=2, seed=s),
    lambda m, x, y, s: ddcal.select_mask_ratio(m, x, y, (x, y), num_masks=2, seed=s),
    lambda m, x, y, s: ddcal.calibrate(m, x, y, labelled=(x, y), seed=s),
    lambda m, x, y, s: ddcal.train_network(m, x, y, epochs=1, seed=s),
    lambda m, x, y, s: ddcal.PerClassSampler(y, per_class=1, seed=s).indices(),
    lambda m, x, y, s: ddcal.per_class_split(y, 0.5, seed=s),
    lambda m, x, y, s: ddcal.bootstrap_interval(
        ddcal.accuracy, torch.eye(3)[y], y, n_resamples=2, seed=s
    ),
]


@pytest.mark.parametrize("seeded", SEEDED)
def test_seeds_outside_the_generator_range_are_refused(seeded: Callable[..., Any]) -> None:
    images, labels = _images()
    with pytest.raises(InvalidValueError, match="seed must be >= 0, got -1"):
        seeded(_model(), images, labels, -1)
    with pytest.raises(InvalidValueError, match=r"seed must be < 2\*\*32, .* draws of seed 5"):
        seeded(_model(), images, labels, 2**32 + 5)
    with pytest.raises(InvalidValueError, match="seed must be < 2"):
        seeded(_model(), images, labels, 2**64)
    _quietly(lambda: seeded(_model(), images, labels, 2**32 - 1))
    _quietly(lambda: seeded(_model(), images, labels, np.int64(7)))


def test_check_seed_names_the_argument_and_keeps_valid_seeds() -> None:
    assert _validation.check_seed(0) == 0
    assert _validation.check_seed(np.uint32(2**32 - 1)) == 2**32 - 1
    with pytest.raises(InvalidValueError, match="distill_seed must be < 2"):
        _validation.check_seed(2**32, "distill_seed")
    with pytest.raises(InvalidTypeError, match="epoch_seed must be an int, got bool True"):
        _validation.check_seed(True, "epoch_seed")


def test_sampler_epochs_are_checked() -> None:
    sampler = ddcal.PerClassSampler(torch.tensor([0, 1, 0, 1]), per_class=1)
    with pytest.raises(InvalidValueError, match="epoch must be >= 0, got -1"):
        sampler.set_epoch(-1)
    with pytest.raises(InvalidTypeError, match="epoch must be an int"):
        sampler.set_epoch(1.5)  # type: ignore[arg-type]


def test_every_refusal_above_is_an_invalid_input_error() -> None:
    assert issubclass(InvalidValueError, InvalidInputError)
    assert issubclass(InvalidTypeError, InvalidInputError)


# --------------------------------------------------------------------------- #
# Smaller doors: masking, losses, inputs that are not numbers.
# --------------------------------------------------------------------------- #


def test_mask_inputs_refuses_what_is_not_a_dense_tensor_or_a_generator() -> None:
    with pytest.raises(InvalidTypeError, match=r"x must be a dense torch\.Tensor, got list"):
        ddcal.mask_inputs([1.0, 2.0], 0.5)  # type: ignore[arg-type]
    with pytest.raises(InvalidTypeError, match=r"x must be a dense torch\.Tensor, got layout"):
        ddcal.mask_inputs(torch.eye(2).to_sparse(), 0.5)
    with pytest.raises(InvalidTypeError, match=r"generator must be a torch\.Generator or None"):
        ddcal.mask_inputs(torch.ones(2), 0.5, generator=0)  # type: ignore[arg-type]
    with pytest.raises(InvalidTypeError, match=r"generator must be a torch\.Generator or None"):
        ddcal.MaskInputs(0.5, generator="seed")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: ddcal.losses.FocalLoss(gamma=float("inf")), "gamma must be finite"),
        (lambda: ddcal.losses.MixupLoss(alpha=float("inf")), "alpha must be finite"),
        (lambda: ddcal.losses.LabelSmoothingLoss(epsilon="0.1"), "epsilon must be a real number"),
        (lambda: ddcal.losses.MixupLoss(alpha=float("nan")), "alpha must be finite"),
    ],
)
def test_loss_settings_must_be_finite_numbers(make: Callable[[], Any], match: str) -> None:
    with pytest.raises(InvalidInputError, match=match):
        make()


@pytest.mark.parametrize("dtype", [object, str])
def test_numpy_arrays_of_non_numbers_are_refused(dtype: type) -> None:
    with pytest.raises(InvalidTypeError, match="probs must hold numbers, got a numpy array"):
        ddcal.calibration_error(np.array([["a", "b"]], dtype=dtype), np.array([0]))


def test_meta_tensors_are_refused() -> None:
    with pytest.raises(InvalidValueError, match="probs is a meta tensor"):
        ddcal.calibration_error(torch.empty(2, 2, device="meta"), torch.tensor([0, 1]))


@pytest.mark.parametrize("dtype", [torch.uint16, torch.uint32, torch.uint64, torch.int16])
def test_integer_probabilities_of_every_width_are_read(dtype: torch.dtype) -> None:
    one_hot = torch.tensor([[1, 0], [0, 1], [1, 0]], dtype=dtype)
    assert ddcal.calibration_error(one_hot, torch.tensor([0, 1, 1])) == pytest.approx(1 / 3)


def test_a_zero_dimensional_numpy_array_keeps_its_shape() -> None:
    with pytest.raises(InvalidValueError, match=r"labels must have shape \(N,\), got shape \(\)"):
        ddcal.PerClassSampler(np.array(0, dtype=np.uint8), per_class=1)
    with pytest.raises(InvalidValueError, match=r"probs must have shape \(N, C\), got shape \(\)"):
        ddcal.calibration_error(np.array(0.5), np.array([0]))
