"""Fuzz tests of every door through which ddcal takes tensors.

Inputs of every dtype (float16/32/64, bfloat16, integers, bool, complex), shape
(empty, 0-d, wrong rank, mismatched lengths, one class, many classes) and value
(NaN, +-inf, subnormal, huge), as tensors, numpy arrays and non-contiguous views,
go through the metrics, the meter, the scalers, masking, the samplers, inference
and training. The property everywhere: a documented ddcal error
(:class:`~ddcal.errors.InvalidInputError`) whose message names an argument, or a
finite result that is right (calibration errors in [0, 1] and equal to a plain
reference, probabilities summing to 1, temperatures within their bounds); never
another exception, never NaN out of finite input.

``DDCAL_FUZZ=deep`` (tests/conftest.py) runs ten times the examples.
"""

from __future__ import annotations

import bisect
import functools
import math
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import event, given, settings
from hypothesis import strategies as st
from torch import nn

import ddcal
from ddcal.errors import InvalidInputError
from ddcal.label_free import UninformativeMaskingWarning
from ddcal.losses import FocalLoss
from ddcal.metrics import MAX_BINS
from ddcal.temperature import MAX_NUM_MASKS

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _fewer(divisor: int) -> settings:
    """The loaded profile's settings with ``1 / divisor`` of its examples (for costly doors)."""
    return settings(max_examples=max(10, settings().max_examples // divisor))


# --------------------------------------------------------------------------- #
# Strategies.
# --------------------------------------------------------------------------- #

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
INTEGER_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)
OTHER_DTYPES = (torch.bool, torch.complex64, torch.complex128)
ALL_DTYPES = FLOAT_DTYPES + INTEGER_DTYPES + OTHER_DTYPES

#: Values where arithmetic goes wrong: NaN, infinities, subnormals of every float width,
#: the largest finite values of float16/float32/float64, and values whose squares overflow.
SPECIAL_VALUES = (
    0.0, -0.0, 1.0, -1.0, 0.5, math.nan, math.inf, -math.inf,
    5e-324, 1e-310, 1e-45, 6e-8, 65504.0, 7e4, 3.4e38, 1e38, 1e30, 1e154, 1e308, -1e308,
)  # fmt: skip

values = st.one_of(
    st.floats(-10.0, 10.0, width=32),
    st.sampled_from(SPECIAL_VALUES),
    st.floats(allow_nan=True, allow_infinity=True),
)

shapes = st.one_of(
    st.just(()),
    st.tuples(st.integers(0, 6)),
    st.tuples(st.integers(0, 8), st.integers(0, 6)),
    st.tuples(st.integers(0, 3), st.integers(0, 3), st.integers(0, 3)),
    st.tuples(st.integers(1, 3), st.sampled_from([1000, 20_000])),
)


def _mostly(valid: Any, invalid: Any, one_in: int = 5) -> st.SearchStrategy[Any]:
    """Values of ``valid`` but one time in ``one_in``, then of ``invalid`` (lists are sampled):
    enough results to check even where a call takes many arguments."""

    def strategy(choices: Any) -> st.SearchStrategy[Any]:
        return choices if isinstance(choices, st.SearchStrategy) else st.sampled_from(choices)

    return st.integers(1, one_in).flatmap(
        lambda k: strategy(invalid) if k == 1 else strategy(valid)
    )


def _as_given(tensor: torch.Tensor, form: str) -> Any:
    """``tensor`` as a user may pass it: as is, a numpy array, or a non-contiguous view."""
    if form == "numpy" and tensor.dtype != torch.bfloat16:
        return tensor.numpy()
    if form == "strided" and tensor.ndim >= 1:
        return tensor.repeat_interleave(2, dim=-1)[..., ::2]
    if form == "transposed" and tensor.ndim == 2:
        return tensor.t().contiguous().t()
    return tensor


forms = st.sampled_from(["tensor", "numpy", "strided", "transposed"])


@st.composite
def tensors(
    draw: st.DrawFn, shape: Any = None, dtypes: tuple[torch.dtype, ...] = ALL_DTYPES
) -> Any:
    """A tensor (or array) of any dtype, shape and values: mostly garbage."""
    size = draw(shapes) if shape is None else shape
    count = math.prod(size)
    if count <= 64:
        drawn = draw(st.lists(values, min_size=count, max_size=count))
        flat = torch.tensor(drawn, dtype=torch.float64)
    else:  # many classes: random values with a few special ones planted
        generator = torch.Generator().manual_seed(draw(st.integers(0, 2**32 - 1)))
        flat = torch.randn(count, generator=generator, dtype=torch.float64)
        for _ in range(draw(st.integers(0, 2))):
            flat[draw(st.integers(0, count - 1))] = draw(st.sampled_from(SPECIAL_VALUES))
    tensor = flat.reshape(size).to(draw(st.sampled_from(dtypes)))
    return _as_given(tensor, draw(forms))


@st.composite
def valid_scores(draw: st.DrawFn, from_logits: bool) -> tuple[Any, Any]:
    """Valid ``(probs or logits, labels)`` of a float dtype: ties, one-hot rows, many classes."""
    n = draw(st.integers(1, 24))
    c = draw(st.sampled_from([2, 3, 7, 1000]))
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**32 - 1)))
    scale = draw(st.sampled_from([0.0, 1e-3, 1.0, 5.0, 1e3, 1e30]))
    logits = torch.randn(n, c, generator=generator, dtype=torch.float64) * scale
    if draw(st.booleans()):
        logits = logits.round()  # ties for the maximum
    dtype = draw(st.sampled_from(FLOAT_DTYPES))
    scores = (logits if from_logits else torch.softmax(logits, dim=1)).to(dtype)
    labels = torch.randint(0, c, (n,), generator=generator)
    return _as_given(scores, draw(forms)), _as_given(labels, draw(forms))


def _labels_for(scores: Any) -> st.SearchStrategy[Any]:
    """Labels for ``scores``: valid class indices, or any tensor at all."""
    shape = tuple(getattr(scores, "shape", ()))
    n = shape[0] if shape else 0
    c = shape[1] if len(shape) > 1 else 1
    valid = st.builds(
        lambda seed, form: _as_given(
            torch.randint(0, max(c, 1), (n,), generator=torch.Generator().manual_seed(seed)),
            form,
        ),
        st.integers(0, 2**32 - 1),
        forms,
    )
    return st.one_of(valid, tensors(dtypes=(*INTEGER_DTYPES, torch.bool, torch.float32)))


@st.composite
def scores_and_labels(draw: st.DrawFn, from_logits: bool) -> tuple[Any, Any]:
    if draw(st.integers(0, 2)) > 0:
        return draw(valid_scores(from_logits))
    scores = draw(tensors())
    return scores, draw(_labels_for(scores))


def _n_bins(num_classes: int) -> st.SearchStrategy[Any]:
    """Bin counts, valid and not; ``MAX_BINS`` only for few classes (the classwise
    bins are a ``(classes, n_bins)`` array)."""
    valid = st.integers(1, 30) if num_classes > 10 else st.sampled_from([*range(1, 31), MAX_BINS])
    return _mostly(valid, [0, -1, MAX_BINS + 1, 10**8, 2**70, 1.5, True, "15", None])


def _rows(x: Any) -> int:
    """The length of the first dimension of ``x`` (0 for a 0-d array)."""
    shape = tuple(x.shape)
    return shape[0] if shape else 0


def _num_classes(scores: Any) -> int:
    shape = tuple(getattr(scores, "shape", ()))
    return shape[1] if len(shape) > 1 else 1


# --------------------------------------------------------------------------- #
# The property: a named ddcal error, or a result.
# --------------------------------------------------------------------------- #


def _outcome(call: Callable[[], Any], *names: str) -> tuple[Any, InvalidInputError | None]:
    """``(result, None)``, or ``(None, error)`` for a ddcal error naming one of ``names``.

    Any other exception propagates and fails the test. Which of the two came is an
    event, so ``--hypothesis-show-statistics`` shows that both paths are exercised.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ddcal.TemperatureBoundWarning)
            warnings.simplefilter("ignore", UninformativeMaskingWarning)
            result = call()
    except InvalidInputError as error:
        message = str(error)
        assert any(name in message for name in names), f"{message!r} names none of {names}"
        event("a ddcal error")
        return None, error
    event("a result")
    return result, None


def _float64(x: Any) -> torch.Tensor:
    """The float64 values ddcal computes with: float16/bfloat16 go through float32."""
    tensor = torch.as_tensor(x)
    if tensor.dtype not in (torch.float32, torch.float64):
        tensor = tensor.to(torch.float32)
    return tensor.to(torch.float64)


def _is_finite(x: Any) -> bool:
    return bool(torch.isfinite(torch.as_tensor(x)).all())


def _reference_calibration_error(probs: Any, labels: Any, n_bins: int, norm: str) -> float:
    """Top-label calibration error by the module docstring, one sample at a time."""
    p, y = _float64(probs), torch.as_tensor(labels).long()
    edges = torch.linspace(0.0, 1.0, n_bins + 1, dtype=torch.float64).tolist()
    members: dict[int, list[tuple[float, float]]] = {}
    for row, label in zip(p, y.tolist(), strict=True):
        confidence = float(row.max())
        # Bins are [a, b), the last one closed: 1.0 belongs to the last bin.
        index = min(bisect.bisect_right(edges, confidence) - 1, n_bins - 1)
        members.setdefault(index, []).append((confidence, float(int(row.argmax()) == label)))
    gaps, weights = [], []
    for inside in members.values():
        mean_confidence = sum(c for c, _ in inside) / len(inside)
        accuracy = sum(a for _, a in inside) / len(inside)
        gaps.append(abs(accuracy - mean_confidence))
        weights.append(len(inside) / len(p))
    if norm == "l1":
        return sum(g * w for g, w in zip(gaps, weights, strict=True))
    if norm == "l2":
        return math.sqrt(sum(g * g * w for g, w in zip(gaps, weights, strict=True)))
    return max(gaps)


METRIC_NAMES = ("probs", "labels", "n_bins", "norm", "binning", "from_logits")


# --------------------------------------------------------------------------- #
# Metrics.
# --------------------------------------------------------------------------- #


@given(
    data=st.data(),
    from_logits=st.booleans(),
    norm=_mostly(["l1", "l2", "max"], ["L1", None, 1]),
    binning=_mostly(["uniform", "quantile"], ["equal", None]),
)
def test_calibration_error_is_a_named_error_or_right(
    data: st.DataObject, from_logits: bool, norm: Any, binning: Any
) -> None:
    probs, labels = data.draw(scores_and_labels(from_logits))
    n_bins = data.draw(_n_bins(_num_classes(probs)))
    value, error = _outcome(
        lambda: ddcal.calibration_error(
            probs, labels, n_bins=n_bins, norm=norm, binning=binning, from_logits=from_logits
        ),
        *METRIC_NAMES,
    )
    if error is None:
        assert 0.0 <= value <= 1.0
        if not from_logits and binning == "uniform":
            expected = _reference_calibration_error(probs, labels, n_bins, norm)
            assert value == pytest.approx(expected, abs=1e-9)


@given(data=st.data(), from_logits=st.booleans(), norm=st.sampled_from(["l1", "l2", "max"]))
def test_classwise_calibration_error_is_a_named_error_or_in_the_unit_interval(
    data: st.DataObject, from_logits: bool, norm: str
) -> None:
    probs, labels = data.draw(scores_and_labels(from_logits))
    n_bins = data.draw(_n_bins(_num_classes(probs)))
    value, error = _outcome(
        lambda: ddcal.classwise_calibration_error(
            probs, labels, n_bins=n_bins, norm=norm, from_logits=from_logits
        ),
        *METRIC_NAMES,
    )
    if error is None:
        assert 0.0 <= value <= 1.0


@given(data=st.data(), from_logits=st.booleans())
def test_nll_brier_and_accuracy_are_named_errors_or_right(
    data: st.DataObject, from_logits: bool
) -> None:
    probs, labels = data.draw(scores_and_labels(from_logits))
    nll, nll_error = _outcome(
        lambda: ddcal.negative_log_likelihood(probs, labels, from_logits=from_logits),
        *METRIC_NAMES,
    )
    brier, brier_error = _outcome(
        lambda: ddcal.brier_score(probs, labels, from_logits=from_logits), *METRIC_NAMES
    )
    accuracy, accuracy_error = _outcome(lambda: ddcal.accuracy(probs, labels), *METRIC_NAMES)
    if nll_error is None:
        assert math.isfinite(nll)
        assert nll >= 0.0
        if not from_logits:
            in_float64 = torch.as_tensor(probs).dtype == torch.float64
            tiny = torch.finfo(torch.float64 if in_float64 else torch.float32).tiny
            y = torch.as_tensor(labels).long()
            picked = _float64(probs).gather(1, y[:, None]).squeeze(1).clamp(min=tiny)
            assert nll == pytest.approx(float(-picked.log().mean()), rel=1e-9)
    if brier_error is None:
        assert 0.0 <= brier <= 2.03  # 2 for sums of exactly 1, a little more within tolerance
    if accuracy_error is None:
        expected = float((_float64(probs).argmax(dim=1) == torch.as_tensor(labels)).double().mean())
        assert accuracy == pytest.approx(expected, abs=1e-12)


@given(data=st.data(), from_logits=st.booleans(), binning=st.sampled_from(["uniform", "quantile"]))
def test_reliability_bins_are_a_named_error_or_consistent(
    data: st.DataObject, from_logits: bool, binning: str
) -> None:
    probs, labels = data.draw(scores_and_labels(from_logits))
    n_bins = data.draw(_n_bins(_num_classes(probs)))
    bins, error = _outcome(
        lambda: ddcal.reliability_bins(
            probs, labels, n_bins=n_bins, binning=binning, from_logits=from_logits
        ),
        *METRIC_NAMES,
    )
    if error is None:
        assert int(bins.count.sum()) == torch.as_tensor(labels).shape[0]
        assert bool((bins.edges[1:] >= bins.edges[:-1]).all())
        filled = bins.count > 0
        for column in (bins.confidence, bins.accuracy):
            assert bool(column[~filled].isnan().all())  # NaN marks an empty bin, nothing else
            assert bool(((column[filled] >= 0) & (column[filled] <= 1 + 1e-12)).all())


@given(data=st.data(), from_logits=st.booleans())
def test_calibration_summary_is_a_named_error_or_finite(
    data: st.DataObject, from_logits: bool
) -> None:
    probs, labels = data.draw(scores_and_labels(from_logits))
    summary, error = _outcome(
        lambda: ddcal.calibration_summary(
            probs, labels, from_logits=from_logits, classwise=True, n_bins=10
        ),
        *METRIC_NAMES,
    )
    if error is None:
        assert all(math.isfinite(value) for value in summary.values())
        assert 0.0 <= summary["ece"] <= summary["mce"] + 1e-12 <= 1.0 + 1e-12


def _meter_state(meter: ddcal.CalibrationMeter) -> tuple[Any, ...]:
    return (
        meter._count.tolist(),
        meter._confidence_sum.tolist(),
        meter._correct.tolist(),
        float(meter._nll_sum),
        meter._num_classes,
        meter.count,
    )


@_fewer(2)
@given(data=st.data(), from_logits=st.booleans(), n_bins=st.integers(1, 20))
def test_the_meter_refuses_bad_batches_unchanged_and_matches_the_functional_metrics(
    data: st.DataObject, from_logits: bool, n_bins: int
) -> None:
    meter = ddcal.CalibrationMeter(n_bins, from_logits=from_logits)
    accepted: list[tuple[torch.Tensor, torch.Tensor]] = []
    for _ in range(data.draw(st.integers(1, 4))):
        probs, labels = data.draw(scores_and_labels(from_logits))
        # Contiguous, as the concatenation below is: a float32 row sum then adds in the
        # same order (test_hardening_tensors checks non-contiguous batches).
        batch = torch.as_tensor(probs).contiguous()
        before = _meter_state(meter)
        _, error = _outcome(functools.partial(meter.update, batch, labels), *METRIC_NAMES)
        if error is None:
            accepted.append((batch, torch.as_tensor(labels).long()))
        else:
            assert _meter_state(meter) == before
    if not accepted:
        return
    result = meter.compute()
    assert all(math.isfinite(value) for value in result.values())
    assert result["count"] == sum(y.shape[0] for _, y in accepted)
    for key in ("ece", "mce", "l2"):
        assert 0.0 <= result[key] <= 1.0
    if len({p.dtype for p, _ in accepted}) > 1:
        return  # the concatenation would be computed in another dtype than some batches
    everything = torch.cat([p for p, _ in accepted]), torch.cat([y for _, y in accepted])
    for key, norm in (("ece", "l1"), ("mce", "max"), ("l2", "l2")):
        expected = ddcal.calibration_error(
            *everything, n_bins=n_bins, norm=norm, from_logits=from_logits
        )
        assert result[key] == pytest.approx(expected, abs=1e-9)


# --------------------------------------------------------------------------- #
# Temperature fits and scalers.
# --------------------------------------------------------------------------- #

bounds_strategy = _mostly(
    st.one_of(
        st.just((1e-2, 1e2)),
        st.tuples(st.floats(1e-3, 1.0), st.floats(1.5, 1e3)),
        st.just((1e-6, 1e6)),
    ),
    st.one_of(
        st.tuples(values, values),
        st.sampled_from([(1e-300, 1e300), (5e-324, 1.0), (2.0, 1.0), (0.0, 1.0), (1.0,)]),
        st.sampled_from(["ab", 3.0, None]),
    ),
)
FIT_NAMES = ("logits", "labels", "bounds")


@given(data=st.data(), bounds=bounds_strategy)
def test_fit_temperature_is_a_named_error_or_the_optimum_within_the_bounds(
    data: st.DataObject, bounds: Any
) -> None:
    logits, labels = data.draw(scores_and_labels(from_logits=True))
    result, error = _outcome(
        lambda: ddcal.fit_temperature(logits, labels, bounds=bounds), *FIT_NAMES
    )
    if error is not None:
        return
    temperature, bound = result
    low, high = bounds
    assert low <= temperature <= high
    assert bound in (None, "lower", "upper")
    if bound is not None:
        assert temperature == (low if bound == "lower" else high)
    z, y = _float64(logits), torch.as_tensor(labels).long()
    if float(z.abs().max()) * max(1.0, 1.0 / low) < 1e100:  # the NLLs themselves are finite
        at = [ddcal.temperature.mean_nll(z, y, t) for t in (temperature, low, high)]
        assert at[0] <= min(at[1:]) + 1e-9 * max(1.0, abs(at[0]))


scaler_settings = st.fixed_dictionaries(
    {
        "mask_ratio": _mostly(
            st.one_of(st.sampled_from([0.0, 0.5, "auto"]), st.floats(0.0, 0.99)),
            [1.0, -0.1, math.nan, math.inf, "0.5", None, True],
        ),
        "num_masks": _mostly([1, 2, 3, MAX_NUM_MASKS], [0, -1, MAX_NUM_MASKS + 1, 2.0]),
        "per_class": _mostly([None, 1, 2, 10**9], [0, -1, 1.5]),
        "batch_size": _mostly([1, 3, 256, 2**62], [0, 2.5]),
        "seed": _mostly([0, 7, 2**32 - 1, np.int64(3)], [-1, 2**32, 2**64, 1.5, "7"]),
        "bounds": bounds_strategy,
    }
)
SCALER_NAMES = (
    "mask_ratio", "num_masks", "per_class", "batch_size", "seed", "bounds",
    "logits", "labels", "images", "model",
)  # fmt: skip


@given(settings_=scaler_settings)
def test_scaler_settings_are_named_errors_or_a_state_that_round_trips(
    settings_: dict[str, Any],
) -> None:
    scaler, error = _outcome(lambda: ddcal.MaskedTemperatureScaler(**settings_), *SCALER_NAMES)
    if error is None:
        again = ddcal.MaskedTemperatureScaler().load_state_dict(scaler.state_dict())
        assert again.state_dict() == scaler.state_dict()


@given(data=st.data(), bounds=bounds_strategy)
def test_fit_logits_and_transform_are_named_errors_or_finite_within_the_bounds(
    data: st.DataObject, bounds: Any
) -> None:
    logits, labels = data.draw(scores_and_labels(from_logits=True))
    scaler, error = _outcome(
        lambda: ddcal.MaskedTemperatureScaler(0.5, bounds=bounds).fit_logits(logits, labels),
        *SCALER_NAMES,
    )
    if error is not None:
        return
    low, high = scaler.bounds
    assert low <= scaler.temperature_ <= high
    scaled, transform_error = _outcome(lambda: scaler.transform(logits), *SCALER_NAMES)
    if transform_error is None:
        assert type(scaled) is type(logits)
        assert tuple(scaled.shape) == tuple(logits.shape)
        assert _is_finite(scaled)
        probs = torch.softmax(torch.as_tensor(scaled).double(), dim=1)
        assert torch.allclose(probs.sum(dim=1), torch.ones(probs.shape[0], dtype=torch.float64))


class AnyShapeNet(nn.Module):
    """Logits ``mean(x) * scale + bias`` for inputs of any shape ``(N, ...)``."""

    def __init__(self, classes: int = 3, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.linspace(-2.0, 2.0, classes, dtype=dtype))
        self.bias = nn.Parameter(torch.linspace(0.3, -0.3, classes, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1).mean(dim=1, keepdim=True) * self.scale + self.bias


valid_image_shapes = st.one_of(
    st.tuples(st.integers(1, 6), st.just(1), st.integers(1, 3), st.integers(1, 3)),
    st.tuples(st.integers(1, 6), st.integers(1, 4)),
)


@st.composite
def images_and_labels(draw: st.DrawFn, classes: int = 3) -> tuple[Any, Any]:
    """Images of any dtype, shape and values (mostly floats), and labels for them."""
    dtypes = draw(st.sampled_from([FLOAT_DTYPES, ALL_DTYPES]))
    if draw(st.integers(0, 2)) > 0:  # finite, moderate: the inputs that must succeed
        shape = draw(valid_image_shapes)
        generator = torch.Generator().manual_seed(draw(st.integers(0, 2**32 - 1)))
        images = torch.randn(shape, generator=generator).to(draw(st.sampled_from(FLOAT_DTYPES)))
        images = _as_given(images, draw(forms))
    else:
        images = draw(tensors(shape=draw(st.one_of(valid_image_shapes, shapes)), dtypes=dtypes))
    n = _rows(images)
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**32 - 1)))
    valid = (
        torch.arange(n) % classes
        if n >= classes
        else torch.randint(0, classes, (n,), generator=generator)
    )
    labels = draw(_mostly(st.just(valid), tensors(dtypes=(*INTEGER_DTYPES, torch.float32))))
    return images, labels


model_dtypes = st.sampled_from([torch.float32, torch.float64, torch.bfloat16])


@_fewer(2)
@given(
    data=st.data(),
    dtype=model_dtypes,
    mask_ratio=st.sampled_from([0.0, 0.5, "auto"]),
    num_masks=st.integers(1, 3),
    per_class=st.sampled_from([None, 1]),
)
def test_scaler_fit_and_predict_are_named_errors_or_calibrated_probabilities(
    data: st.DataObject, dtype: torch.dtype, mask_ratio: Any, num_masks: int, per_class: Any
) -> None:
    images, labels = data.draw(images_and_labels())
    model = AnyShapeNet(dtype=dtype)
    scaler = (
        ddcal.TemperatureScaler(per_class=per_class)
        if mask_ratio == 0.0
        else ddcal.MaskedTemperatureScaler(mask_ratio, num_masks=num_masks, per_class=per_class)
    )
    fitted, error = _outcome(lambda: scaler.fit(model, images, labels), *SCALER_NAMES)
    if error is not None:
        return
    low, high = fitted.bounds
    assert low <= fitted.temperature_ <= high
    probs, predict_error = _outcome(lambda: fitted.predict_proba(model, images), *SCALER_NAMES)
    if predict_error is not None:  # an image the per-class draw left out, or logits / T
        return
    assert _is_finite(probs)
    assert torch.allclose(probs.sum(dim=1), torch.ones(probs.shape[0]), atol=1e-5)
    calibrated = fitted.calibrate(model)
    assert float(calibrated.temperature) == pytest.approx(fitted.temperature_, rel=1e-6)


@_fewer(2)
@given(data=st.data(), mask_ratio=st.floats(0.0, 0.95), num_masks=st.integers(1, 3))
def test_masked_logits_are_a_named_error_or_finite_copies(
    data: st.DataObject, mask_ratio: float, num_masks: int
) -> None:
    images, labels = data.draw(images_and_labels())
    result, error = _outcome(
        lambda: ddcal.masked_logits(
            AnyShapeNet(), images, labels, mask_ratio=mask_ratio, num_masks=num_masks
        ),
        *SCALER_NAMES,
    )
    if error is None:
        logits, targets = result
        copies = 1 if mask_ratio == 0.0 else num_masks
        n = torch.as_tensor(images).shape[0]
        assert tuple(logits.shape) == (copies * n, 3)
        assert _is_finite(logits)
        assert torch.equal(targets, torch.as_tensor(labels).long().repeat_interleave(copies))


@_fewer(3)
@given(
    data=st.data(),
    candidates=_mostly([(0.0, 0.5), (0.3,), (0.9, 0.1)], [(), (0.5, 0.5), (1.2,), "0.5"]),
    with_calibration=st.booleans(),
    seed=_mostly([0, 2**32 - 1], [-1, 2**32]),
)
def test_select_mask_ratio_is_a_named_error_or_a_candidate(
    data: st.DataObject, candidates: Any, with_calibration: bool, seed: int
) -> None:
    images, labels = data.draw(images_and_labels())
    calibration = data.draw(images_and_labels()) if with_calibration else None
    selection, error = _outcome(
        lambda: ddcal.select_mask_ratio(
            AnyShapeNet(),
            images,
            labels,
            calibration,
            candidates=candidates,
            num_masks=2,
            seed=seed,
        ),
        *SCALER_NAMES,
        "candidates",
        "real_calibration",
    )
    if error is None:
        assert 1e-2 <= selection.temperature <= 1e2
        if with_calibration:
            assert selection.mask_ratio in selection.candidates
            assert selection.nll is not None
            assert all(math.isfinite(value) for value in selection.nll)


@_fewer(3)
@given(data=st.data(), labelled=st.booleans())
def test_calibrate_is_a_named_error_or_a_calibrated_model(
    data: st.DataObject, labelled: bool
) -> None:
    images, labels = data.draw(images_and_labels())
    pair = data.draw(images_and_labels()) if labelled else None
    result, error = _outcome(
        lambda: ddcal.calibrate(AnyShapeNet(), images, labels, labelled=pair, num_masks=2),
        *SCALER_NAMES,
        "labelled",
    )
    if error is None:
        assert 1e-2 <= result.temperature <= 1e2
        assert float(result.model.temperature) == pytest.approx(result.temperature, rel=1e-6)


# --------------------------------------------------------------------------- #
# Inference: any images, and models that return anything.
# --------------------------------------------------------------------------- #

INFERENCE_NAMES = ("images", "batch_size", "model")


@given(data=st.data(), dtype=model_dtypes, batch_size=_mostly([1, 2, 256], [0, -3, 2.0]))
def test_predict_logits_is_a_named_error_or_the_models_finite_logits(
    data: st.DataObject, dtype: torch.dtype, batch_size: Any
) -> None:
    images, _ = data.draw(images_and_labels())
    model = AnyShapeNet(dtype=dtype)
    logits, error = _outcome(
        lambda: ddcal.predict_logits(model, images, batch_size=batch_size), *INFERENCE_NAMES
    )
    if error is None:
        inputs = torch.as_tensor(images)
        assert tuple(logits.shape) == (inputs.shape[0], 3)
        assert logits.dtype == dtype
        assert _is_finite(logits)
        with torch.no_grad():
            expected = model(inputs.to(dtype))
        assert torch.allclose(logits.double(), expected.double(), rtol=1e-2, atol=1e-3)


_OUTPUTS: dict[str, Callable[[torch.Tensor], Any]] = {
    "logits": lambda logits: logits,
    "scalar": lambda logits: logits.sum(),
    "vector": lambda logits: logits[:, 0],
    "one row": lambda logits: logits[:1],
    "three-d": lambda logits: logits[:, :, None],
    "tuple": lambda logits: (logits, logits),
    "list": lambda logits: [logits],
    "dict": lambda logits: {"logits": logits},
    "none": lambda logits: None,
    "sparse": lambda logits: logits.to_sparse(),
    "integer": lambda logits: logits.long(),
    "complex": lambda logits: logits.to(torch.complex64),
    "nan": lambda logits: logits * math.nan,
    "inf": lambda logits: logits / 0.0,
    "huge": lambda logits: logits.double() * 1e308,
}


class Returning(nn.Module):
    """A model whose forward returns ``make(logits)``."""

    def __init__(self, make: Callable[[torch.Tensor], Any]) -> None:
        super().__init__()
        self.net = AnyShapeNet()
        self.make = make

    def forward(self, x: torch.Tensor) -> Any:
        return self.make(self.net(x))


@_fewer(2)
@given(
    output=st.sampled_from(sorted(_OUTPUTS)),
    door=st.sampled_from(["predict", "fit", "mts", "select", "train"]),
    n=st.integers(1, 5),
)
def test_a_model_returning_anything_is_a_named_error_or_used(
    output: str, door: str, n: int
) -> None:
    model = Returning(_OUTPUTS[output])
    images = torch.randn(n, 1, 2, 2, generator=torch.Generator().manual_seed(n))
    labels = torch.arange(n) % 3
    doors: dict[str, Callable[[], Any]] = {
        "predict": lambda: ddcal.predict_logits(model, images),
        "fit": lambda: ddcal.TemperatureScaler().fit(model, images, labels),
        "mts": lambda: ddcal.MaskedTemperatureScaler(num_masks=2).fit(model, images, labels),
        "select": lambda: ddcal.select_mask_ratio(
            model, images, labels, (images, labels), candidates=(0.0, 0.5), num_masks=2
        ),
        "train": lambda: ddcal.train_network(model, images, labels, epochs=1),
    }
    _, error = _outcome(doors[door], "model", "logits", "real_calibration", "lr")
    if output == "logits":
        assert error is None
    elif output in {"scalar", "vector", "three-d", "tuple", "list", "dict", "none", "sparse"}:
        assert error is not None


# --------------------------------------------------------------------------- #
# Masking and samplers.
# --------------------------------------------------------------------------- #


@given(
    x=tensors(),
    ratio=_mostly(st.floats(0.0, 0.99), [1.0, -0.1, math.nan, "0.5", True]),
    seeded=st.booleans(),
)
def test_mask_inputs_is_a_named_error_or_zeroes_some_elements(
    x: Any, ratio: Any, seeded: bool
) -> None:
    generator = torch.Generator().manual_seed(0) if seeded else None
    masked, error = _outcome(lambda: ddcal.mask_inputs(x, ratio, generator=generator), "x", "ratio")
    if error is not None:
        return
    assert masked.shape == x.shape
    assert masked.dtype == x.dtype
    if x.is_floating_point() and _is_finite(x):
        kept = masked == x
        assert bool((kept | (masked == 0)).all())


@st.composite
def class_labels(draw: st.DrawFn) -> Any:
    """Class indices with a few images per class (in any order, classes maybe missing),
    or any tensor."""
    if draw(_mostly([False], [True])):
        return draw(tensors(dtypes=(*INTEGER_DTYPES, torch.bool, torch.float32)))
    per_class = draw(st.lists(_mostly(st.integers(1, 5), [0]), min_size=1, max_size=5))
    labels = torch.repeat_interleave(torch.arange(len(per_class)), torch.tensor(per_class))
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**32 - 1)))
    shuffled = labels[torch.randperm(labels.numel(), generator=generator)]
    return _as_given(shuffled.to(draw(st.sampled_from(INTEGER_DTYPES))), draw(forms))


SAMPLER_NAMES = ("labels", "per_class", "fraction", "num_classes", "seed")


@given(
    data=st.data(),
    which=st.sampled_from(["per_class", "fraction"]),
    per_class=_mostly([1, 2, 5], [None, 0, -1, 1.5]),
    fraction=_mostly([0.3, 0.5, 0.99], [None, 0.0, 1.0, math.nan]),
    replacement=st.booleans(),
    num_classes=_mostly([None], [1, 3, 4, 0, 10**12, 2.5]),
    seed=_mostly([0, 5, 2**32 - 1], [-1, 2**32, 1.5]),
)
def test_per_class_sampler_is_a_named_error_or_an_exact_per_class_draw(
    data: st.DataObject,
    which: str,
    per_class: Any,
    fraction: Any,
    replacement: bool,
    num_classes: Any,
    seed: Any,
) -> None:
    labels = data.draw(class_labels())
    if data.draw(_mostly([True], [False])):  # exactly one of per_class and fraction
        per_class, fraction = (per_class, None) if which == "per_class" else (None, fraction)
    sampler, error = _outcome(
        lambda: ddcal.PerClassSampler(
            labels,
            per_class=per_class,
            fraction=fraction,
            replacement=replacement,
            num_classes=num_classes,
            seed=seed,
        ),
        *SAMPLER_NAMES,
    )
    if error is not None:
        return
    indices = sampler.indices()
    y = torch.as_tensor(labels).long()
    assert len(sampler) == indices.numel()
    assert bool(((indices >= 0) & (indices < y.numel())).all())
    if not replacement:
        assert indices.unique().numel() == indices.numel()
    if per_class is not None:
        _, counts = torch.unique(y[indices], return_counts=True)
        assert set(counts.tolist()) == {per_class}


@given(
    data=st.data(),
    val_fraction=_mostly([0.1, 0.5, 0.9], [0.0, 1.0, -1.0, math.nan, "0.5"]),
    seed=_mostly([0, 2**32 - 1], [-1, 2**32]),
)
def test_per_class_split_is_a_named_error_or_a_partition(
    data: st.DataObject, val_fraction: Any, seed: Any
) -> None:
    labels = data.draw(class_labels())
    split, error = _outcome(
        lambda: ddcal.per_class_split(labels, val_fraction, seed=seed),
        "labels",
        "val_fraction",
        "seed",
        "class",
    )
    if error is None:
        train, val = split
        y = torch.as_tensor(labels).long()
        assert torch.equal(torch.sort(torch.cat([train, val])).values, torch.arange(y.numel()))
        assert set(y[train].tolist()) == set(y[val].tolist()) == set(y.tolist())


# --------------------------------------------------------------------------- #
# Training.
# --------------------------------------------------------------------------- #


@st.composite
def training_labels(draw: st.DrawFn, n: int) -> Any:
    """Hard or soft labels for ``n`` images, valid or not."""
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**32 - 1)))
    kind = draw(_mostly(["hard", "soft"], ["anything"]))
    if kind == "hard":
        return torch.randint(0, 3, (n,), generator=generator)
    if kind == "soft":
        soft = torch.softmax(3 * torch.randn(n, 3, generator=generator, dtype=torch.float64), 1)
        return soft.to(draw(st.sampled_from(FLOAT_DTYPES)))
    return draw(tensors(dtypes=(*INTEGER_DTYPES, *FLOAT_DTYPES)))


TRAIN_NAMES = (
    "net", "images", "labels", "epochs", "lr", "batch_size", "momentum", "weight_decay",
    "loss", "seed", "augment", "channels_last", "progress",
)  # fmt: skip

bad_numbers = st.one_of(
    st.sampled_from([math.nan, math.inf, -math.inf, -1.0, 0.0, 1e30, "0.1"]), values
)


@_fewer(2)
@given(
    data=st.data(),
    dtype=model_dtypes,
    epochs=_mostly([1, 2], [0, -1, 1.5], one_in=12),
    lr=_mostly([0.01, 0.1], bad_numbers, one_in=12),
    momentum=_mostly([0.0, 0.9], bad_numbers, one_in=12),
    weight_decay=_mostly([0.0, 5e-4], bad_numbers, one_in=12),
    batch_size=_mostly([1, 4, 256], [0, 2.5], one_in=12),
    loss=_mostly(["ce", "mixup", "label_smoothing", "focal", FocalLoss(gamma=1.0)], ["hinge", 3]),
    seed=_mostly([0, 2**32 - 1], [-1, 2**32, 0.5], one_in=12),
    channels_last=_mostly([False, True], [1], one_in=12),
)
def test_train_network_is_a_named_error_or_a_finite_network(
    data: st.DataObject,
    dtype: torch.dtype,
    epochs: Any,
    lr: Any,
    momentum: Any,
    weight_decay: Any,
    batch_size: Any,
    loss: Any,
    seed: Any,
    channels_last: Any,
) -> None:
    images, _ = data.draw(images_and_labels())
    labels = data.draw(training_labels(max(_rows(images), 1)))
    net = AnyShapeNet(dtype=dtype)
    trained, error = _outcome(
        lambda: ddcal.train_network(
            net,
            images,
            labels,
            epochs=epochs,
            lr=lr,
            momentum=momentum,
            weight_decay=weight_decay,
            batch_size=batch_size,
            loss=loss,
            seed=seed,
            channels_last=channels_last,
        ),
        *TRAIN_NAMES,
    )
    if error is None:
        assert not trained.training
        assert all(_is_finite(parameter.detach()) for parameter in trained.parameters())
        _, predict_error = _outcome(lambda: ddcal.predict_logits(trained, images), "model")
        assert predict_error is None or "model returned NaN or inf" in str(predict_error)
