"""Temperature scaling and Masked Temperature Scaling (MTS).

Temperature scaling divides logits by one scalar ``T`` fitted by minimising the
negative log-likelihood on validation data. On a distilled set that fit drives
``T`` below 1 (the network fits its own training images), making it *more*
over-confident. MTS fits ``T`` on masked copies of the distilled images
instead (every element zeroed with probability ``mask_ratio``), which produce
real mistakes and therefore a meaningful temperature.

MTS is a composition of two functions: :func:`masked_logits` (the logits of
masked copies of a per-class sample) and :func:`fit_temperature` (the fit on
any logits). :class:`MaskedTemperatureScaler` holds their settings and the result.

The NLL of ``logits * b`` is convex in ``b = 1 / T``; its derivative is
monotone, so the optimum inside the bounds is found exactly by bracketing the
root of the derivative (Brent's method), not by a gradient method that can
stall or leave the feasible range.

:func:`select_mask_ratio` chooses the mask ratio by the NLL of a *real*
held-out calibration set when the user has one, and otherwise returns the
documented default ratio; it never sees test data.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from scipy.optimize import brentq
from torch import nn

from ddcal._validation import as_tensor, check_labels, check_positive_int, check_scores
from ddcal.errors import InvalidTypeError, InvalidValueError
from ddcal.inference import check_images, model_device, predict_logits
from ddcal.masking import check_mask_ratio, mask_inputs
from ddcal.sampling import PerClassSampler

__all__ = [
    "DEFAULT_MASK_RATIO",
    "MASK_RATIO_CANDIDATES",
    "CalibratedModel",
    "MaskRatioSelection",
    "MaskedTemperatureScaler",
    "TemperatureBoundWarning",
    "TemperatureScaler",
    "fit_temperature",
    "masked_logits",
    "select_mask_ratio",
]

_CONFIG_KEYS = ("mask_ratio", "num_masks", "per_class", "batch_size", "seed", "bounds")
#: State keys added after the state's first release: a state saved without them still loads.
_KEYS_ADDED_LATER = ("fitted_mask_ratio",)

#: The mask ratio MTS uses when nothing else chooses one.
DEFAULT_MASK_RATIO = 0.5

#: The ratios :func:`select_mask_ratio` compares by default: 0.0 to 0.9 in steps of 0.1.
MASK_RATIO_CANDIDATES: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


class TemperatureBoundWarning(UserWarning):
    """The fitted temperature sits on a bound of the search interval."""


def _nll_slope(logits: torch.Tensor, labels: torch.Tensor, inverse_temperature: float) -> float:
    """d/db of the mean NLL of ``softmax(b * logits)``: mean of E_p[z] - z_y."""
    probs = torch.softmax(logits * inverse_temperature, dim=1)
    expected = (probs * logits).sum(dim=1)
    return float((expected - logits.gather(1, labels[:, None]).squeeze(1)).mean())


def _mean_nll(logits: torch.Tensor, labels: torch.Tensor, temperature: float) -> float:
    return float(nn.functional.cross_entropy(logits / temperature, labels))


def fit_temperature(
    logits: Any,
    labels: Any,
    *,
    bounds: tuple[float, float] = (1e-2, 1e2),
) -> tuple[float, str | None]:
    """The temperature minimising the mean NLL of ``softmax(logits / T)``.

    Args:
        logits: ``(N, C)`` logits, any float dtype or device.
        labels: ``(N,)`` class indices.
        bounds: search interval ``(low, high)`` for ``T``, ``0 < low < high``.

    Returns:
        ``(T, bound)`` where ``bound`` is ``None`` for an interior optimum and
        ``"lower"``/``"upper"`` when the optimum lies on (or beyond) that bound.
        Logits that carry no information about ``T`` (every row constant)
        give ``T = 1``.
    """
    scores = check_scores(logits, "logits", from_logits=True)
    targets = check_labels(
        labels, "labels", num_samples=scores.shape[0], num_classes=scores.shape[1]
    )
    low, high = _check_bounds(bounds)
    z = scores.detach().to("cpu", torch.float64)
    y = targets.cpu()
    b_low, b_high = 1.0 / high, 1.0 / low
    slope_low, slope_high = _nll_slope(z, y, b_low), _nll_slope(z, y, b_high)
    if slope_low == 0.0 and slope_high == 0.0:
        return 1.0, None
    if slope_low >= 0.0:
        return high, "upper"
    if slope_high <= 0.0:
        return low, "lower"
    b_star = brentq(lambda b: _nll_slope(z, y, b), b_low, b_high, xtol=1e-14, rtol=1e-12)
    return float(1.0 / b_star), None


def _check_bounds(bounds: Any) -> tuple[float, float]:
    try:
        low, high = (float(v) for v in bounds)
    except (TypeError, ValueError):
        raise InvalidTypeError(
            f"bounds must be a pair (low, high) of floats, got {bounds!r}"
        ) from None
    if not (0.0 < low < high and math.isfinite(high)):
        raise InvalidValueError(f"bounds must satisfy 0 < low < high < inf, got {bounds!r}")
    return low, high


def _check_seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise InvalidTypeError(f"seed must be an int, got {type(seed).__name__} {seed!r}")
    return int(seed)


def masked_logits(
    model: nn.Module,
    images: Any,
    labels: Any,
    *,
    mask_ratio: float,
    num_masks: int = 10,
    per_class: int | None = None,
    seed: int = 0,
    batch_size: int = 256,
    device: str | torch.device | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits of masked copies of a per-class sample of ``images``: what MTS fits ``T`` on.

    ``n`` images are drawn per class from all of ``images`` (or all are used),
    and each is seen through ``K = num_masks`` independent masks, every input
    element zeroed with probability ``mask_ratio`` (``K = 1`` at ratio 0:
    unmasked copies would be identical). The draw and the masks come from
    ``seed`` alone (a CPU generator), whatever ``batch_size`` and ``device``.
    ``fit_temperature(*masked_logits(...))`` is the MTS temperature.

    Args:
        model: network ``(B, ...) -> (B, C)``; evaluated in eval mode without
            gradients, its mode restored afterwards.
        images: the training (e.g. distilled) images ``(N, ...)``, floating point, finite.
        labels: their class indices ``(N,)``.
        mask_ratio: probability of zeroing each input element, ``0 <= r < 1``.
        num_masks: masked copies of each image, ``K >= 1``.
        per_class: images drawn per class (seeded); ``None`` uses every image.
        seed: seed of the per-class draw and of the masks.
        batch_size: inputs per forward pass.
        device: where to run; the model is moved there. Default: the model's device.

    Returns:
        ``(logits, labels)``: ``(K * n, C)`` logits on the device of ``images``,
        the ``K`` copies of each image adjacent, and their labels ``(K * n,)``.
    """
    ratio = check_mask_ratio(mask_ratio, "mask_ratio")
    num_masks = check_positive_int(num_masks, "num_masks")
    per_class = None if per_class is None else check_positive_int(per_class, "per_class")
    seed = _check_seed(seed)
    inputs = check_images(images)
    targets = check_labels(labels, "labels", num_samples=inputs.shape[0])
    copies = 1 if ratio == 0.0 else num_masks
    if per_class is not None:
        chosen = PerClassSampler(targets, per_class=per_class, seed=seed).indices()
        inputs, targets = inputs[chosen.to(inputs.device)], targets[chosen]
    generator = torch.Generator().manual_seed(seed)

    def mask(batch: torch.Tensor) -> torch.Tensor:
        return mask_inputs(batch, ratio, generator=generator)

    repeated = inputs.repeat_interleave(copies, dim=0) if copies > 1 else inputs
    logits = predict_logits(
        model, repeated, batch_size=batch_size, device=device, input_transform=mask
    )
    return logits, targets.repeat_interleave(copies)


class CalibratedModel(nn.Module):
    """Wrap a network so that ``forward`` returns ``model(x) / temperature``.

    Shape: ``(N, ...)`` -> ``(N, C)``. The temperature is a buffer, saved with
    the state dict.
    """

    temperature: torch.Tensor

    def __init__(self, model: nn.Module, temperature: float) -> None:
        super().__init__()
        if not (math.isfinite(temperature) and temperature > 0):
            raise InvalidValueError(
                f"temperature must be a positive finite float, got {temperature!r}"
            )
        self.model = model
        self.register_buffer("temperature", torch.tensor(float(temperature)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.model(x)
        return logits / self.temperature

    def extra_repr(self) -> str:
        return f"temperature={float(self.temperature):.4g}"


class MaskedTemperatureScaler:
    """Masked Temperature Scaling: fit ``T`` on masked copies of the training images.

    ``fit`` is :func:`masked_logits` followed by :func:`fit_temperature`, with
    this object's settings; ``fit_logits`` is the fit alone, on logits you give.

    Args:
        mask_ratio: probability of zeroing each input element, ``0 <= r < 1``;
            0 is plain temperature scaling. 0.5 is the documented default;
            choose another value only on data that is not the test set.
        num_masks: independent masked copies of the validation sample (more
            copies, less variance in ``T``). Ignored when ``mask_ratio == 0``.
        per_class: validation images drawn per class from *all* the given
            images (seeded); ``None`` uses every image.
        batch_size: inputs per forward pass.
        seed: seed of the per-class draw and of the masks.
        bounds: search interval for ``T``.

    Attributes (after ``fit`` or ``fit_logits``):
        temperature_: the fitted temperature (float).
        bound_hit_: ``None``, ``"lower"`` or ``"upper"``.
        num_fit_samples_: rows of logits used in the fit.
        fitted_mask_ratio_: the mask ratio the fit applied: ``mask_ratio``
            after ``fit``; ``None`` after ``fit_logits`` (ddcal did not make
            those logits, so it does not know how they were masked), before
            fitting, and in a state saved before this attribute existed.

    Example:
        >>> scaler = MaskedTemperatureScaler(mask_ratio=0.5).fit(model, images, labels)
        >>> probs = scaler.predict_proba(model, test_images)
    """

    def __init__(
        self,
        mask_ratio: float = DEFAULT_MASK_RATIO,
        *,
        num_masks: int = 10,
        per_class: int | None = None,
        batch_size: int = 256,
        seed: int = 0,
        bounds: tuple[float, float] = (1e-2, 1e2),
    ) -> None:
        self._configure(mask_ratio, num_masks, per_class, batch_size, seed, bounds)
        self.temperature_: float | None = None
        self.bound_hit_: str | None = None
        self.num_fit_samples_: int | None = None
        self.fitted_mask_ratio_: float | None = None

    def _configure(
        self,
        mask_ratio: float,
        num_masks: int,
        per_class: int | None,
        batch_size: int,
        seed: int,
        bounds: tuple[float, float],
    ) -> None:
        """Check every setting, then set them all (a bad one changes nothing)."""
        checked = (
            check_mask_ratio(mask_ratio, "mask_ratio"),
            check_positive_int(num_masks, "num_masks"),
            None if per_class is None else check_positive_int(per_class, "per_class"),
            check_positive_int(batch_size, "batch_size"),
            _check_seed(seed),
            _check_bounds(bounds),
        )
        (
            self.mask_ratio,
            self.num_masks,
            self.per_class,
            self.batch_size,
            self.seed,
            self.bounds,
        ) = checked

    def __repr__(self) -> str:
        fitted = "" if self.temperature_ is None else f", temperature_={self.temperature_:.4g}"
        return (
            f"{type(self).__name__}(mask_ratio={self.mask_ratio}, num_masks={self.num_masks}, "
            f"per_class={self.per_class}, seed={self.seed}{fitted})"
        )

    def validation_logits(
        self, model: nn.Module, images: Any, labels: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The logits ``(K * n, C)`` and labels ``(K * n,)`` that ``fit`` uses.

        :func:`masked_logits` with this scaler's ``mask_ratio``, ``num_masks``,
        ``per_class``, ``seed`` and ``batch_size``.
        """
        return masked_logits(
            model,
            images,
            labels,
            mask_ratio=self.mask_ratio,
            num_masks=self.num_masks,
            per_class=self.per_class,
            seed=self.seed,
            batch_size=self.batch_size,
        )

    def fit(self, model: nn.Module, images: Any, labels: Any) -> MaskedTemperatureScaler:
        """Fit ``T`` for ``model`` on (masked copies of) ``images``.

        Args:
            model: trained network ``(N, ...) -> (N, C)``; evaluated in eval
                mode without gradients, its mode restored afterwards.
            images: the training (e.g. distilled) images ``(N, ...)``.
            labels: class indices ``(N,)``.

        Returns:
            ``self``, with ``fitted_mask_ratio_ = mask_ratio``.
        """
        logits, targets = self.validation_logits(model, images, labels)
        self._fit_logits(logits, targets)
        self.fitted_mask_ratio_ = self.mask_ratio
        return self

    def fit_logits(self, logits: Any, labels: Any) -> MaskedTemperatureScaler:
        """Fit ``T`` on precomputed logits ``(N, C)`` and labels ``(N,)``, as they are.

        No mask is applied (``mask_ratio`` is not used), so ``fitted_mask_ratio_``
        becomes ``None``. Returns ``self``.
        """
        self._fit_logits(logits, labels)
        self.fitted_mask_ratio_ = None
        return self

    def _fit_logits(self, logits: Any, labels: Any) -> None:
        """The fit behind ``fit`` and ``fit_logits`` (a bound warning points at their caller)."""
        temperature, bound = fit_temperature(logits, labels, bounds=self.bounds)
        if bound is not None:
            warnings.warn(
                f"fitted temperature {temperature:g} is on the {bound} bound of {self.bounds}: "
                + (
                    "the validation logits are confidently correct, typical of fitting on the "
                    "network's own training images; use a higher mask_ratio or real "
                    "held-out data"
                    if bound == "lower"
                    else "the validation predictions are no better than chance"
                ),
                TemperatureBoundWarning,
                stacklevel=3,
            )
        self.temperature_, self.bound_hit_ = temperature, bound
        self.num_fit_samples_ = int(as_tensor(logits, "logits").shape[0])

    def _fitted_temperature(self) -> float:
        if self.temperature_ is None:
            raise RuntimeError(
                f"this {type(self).__name__} is not fitted yet: call fit(model, images, labels) "
                "or fit_logits(logits, labels) first"
            )
        return self.temperature_

    def transform(self, logits: Any) -> Any:
        """Scaled logits ``logits / T``, same type, shape ``(N, C)``, dtype and device."""
        temperature = self._fitted_temperature()
        scores = check_scores(logits, "logits", from_logits=True)
        if isinstance(logits, np.ndarray):
            return logits / temperature
        return scores.to(logits.dtype) / temperature

    def predict_proba(self, model: nn.Module, images: Any) -> torch.Tensor:
        """Calibrated probabilities ``softmax(model(images) / T)``, ``(N, C)``."""
        temperature = self._fitted_temperature()
        logits = predict_logits(model, images, batch_size=self.batch_size)
        return torch.softmax(logits.float() / temperature, dim=1)

    def calibrate(self, model: nn.Module) -> CalibratedModel:
        """``model`` wrapped so that its forward returns calibrated logits."""
        temperature = self._fitted_temperature()
        return CalibratedModel(model, temperature).to(model_device(model))

    def state_dict(self) -> dict[str, Any]:
        """Configuration and fit, as plain values (``torch.save``-able).

        Keys: the constructor's ``mask_ratio``, ``num_masks``, ``per_class``,
        ``batch_size``, ``seed``, ``bounds``; the fit's ``temperature``,
        ``bound_hit`` and ``fitted_mask_ratio`` (``None`` where unfitted).
        """
        return {
            "mask_ratio": self.mask_ratio,
            "num_masks": self.num_masks,
            "per_class": self.per_class,
            "batch_size": self.batch_size,
            "seed": self.seed,
            "bounds": self.bounds,
            "temperature": self.temperature_,
            "bound_hit": self.bound_hit_,
            "fitted_mask_ratio": self.fitted_mask_ratio_,
        }

    def load_state_dict(self, state: dict[str, Any]) -> MaskedTemperatureScaler:
        """Restore from :meth:`state_dict`; returns ``self``.

        A state saved before ``fitted_mask_ratio`` existed loads with
        ``fitted_mask_ratio_ = None`` (not recorded).
        """
        _check_state_keys(state, set(self.state_dict()))
        temperature = _check_state_temperature(state["temperature"])
        fitted_mask_ratio = _check_state_fitted_mask_ratio(
            state.get("fitted_mask_ratio"), temperature
        )
        self._configure(*(state[key] for key in _CONFIG_KEYS))
        self.temperature_, self.bound_hit_ = temperature, state["bound_hit"]
        self.fitted_mask_ratio_ = fitted_mask_ratio
        return self


def _check_state_keys(state: Any, keys: set[str]) -> None:
    older_keys = keys - set(_KEYS_ADDED_LATER)
    if not isinstance(state, dict) or set(state) not in (keys, older_keys):
        got = sorted(state) if isinstance(state, dict) else type(state).__name__
        raise InvalidValueError(
            f"state must be a dict with keys {sorted(keys)} (from an older ddcal: without "
            f"{list(_KEYS_ADDED_LATER)}), got {got}"
        )


def _check_state_temperature(temperature: Any) -> float | None:
    if temperature is None:
        return None
    if (
        isinstance(temperature, (int, float))
        and not isinstance(temperature, bool)
        and math.isfinite(temperature)
        and temperature > 0
    ):
        return float(temperature)
    raise InvalidValueError(
        f"state['temperature'] must be a positive finite float, got {temperature!r}"
    )


def _check_state_fitted_mask_ratio(ratio: Any, temperature: float | None) -> float | None:
    if ratio is None:
        return None
    if temperature is None:
        raise InvalidValueError(
            f"state['fitted_mask_ratio'] must be None in an unfitted state (temperature None), "
            f"got {ratio!r}"
        )
    return check_mask_ratio(ratio, "state['fitted_mask_ratio']")


class TemperatureScaler(MaskedTemperatureScaler):
    """Plain temperature scaling: :class:`MaskedTemperatureScaler` with ``mask_ratio=0``.

    Fitted on a network's own (distilled) training images it usually gives
    ``T < 1``; fit it on held-out real data where you have some.
    """

    def __init__(
        self,
        *,
        per_class: int | None = None,
        batch_size: int = 256,
        seed: int = 0,
        bounds: tuple[float, float] = (1e-2, 1e2),
    ) -> None:
        super().__init__(
            0.0, num_masks=1, per_class=per_class, batch_size=batch_size, seed=seed, bounds=bounds
        )

    def __repr__(self) -> str:
        fitted = "" if self.temperature_ is None else f", temperature_={self.temperature_:.4g}"
        return f"TemperatureScaler(per_class={self.per_class}, seed={self.seed}{fitted})"

    def load_state_dict(self, state: dict[str, Any]) -> TemperatureScaler:
        """Restore from :meth:`state_dict`; the state must have ``mask_ratio`` 0."""
        if isinstance(state, dict) and state.get("mask_ratio", 0.0) != 0.0:
            raise InvalidValueError(
                f"a TemperatureScaler state has mask_ratio 0, got {state['mask_ratio']!r}; "
                "load it into a MaskedTemperatureScaler"
            )
        super().load_state_dict(state)
        return self


@dataclass(frozen=True)
class MaskRatioSelection:
    """The result of :func:`select_mask_ratio`.

    Attributes:
        mask_ratio: the chosen ratio.
        temperature: the MTS temperature fitted on the distilled set at that ratio.
        candidates: the ratios whose temperatures were fitted, ascending; only
            the default ratio when no calibration set was given.
        temperatures: the fitted temperature of each candidate, same order.
        nll: the mean NLL of the calibration set under each candidate's
            temperature, same order; ``None`` without a calibration set.
        selected_by: ``"calibration-nll"`` (lowest NLL on the real calibration
            set) or ``"default"`` (:data:`DEFAULT_MASK_RATIO`, no calibration set).
        bound_hit: ``None``, or ``"lower"``/``"upper"`` when the chosen
            temperature lies on that bound of the search interval.
    """

    mask_ratio: float
    temperature: float
    candidates: tuple[float, ...]
    temperatures: tuple[float, ...]
    nll: tuple[float, ...] | None
    selected_by: Literal["calibration-nll", "default"]
    bound_hit: str | None = None


def _check_candidates(candidates: Any) -> tuple[float, ...]:
    """The candidate ratios, validated and sorted ascending."""
    if isinstance(candidates, (str, bytes)) or not isinstance(candidates, Sequence):
        raise InvalidTypeError(
            f"candidates must be a sequence of mask ratios, got {type(candidates).__name__}"
        )
    if len(candidates) == 0:
        raise InvalidValueError("candidates is empty: give at least one mask ratio")
    ratios = [check_mask_ratio(ratio, f"candidates[{i}]") for i, ratio in enumerate(candidates)]
    repeated = sorted({ratio for ratio in ratios if ratios.count(ratio) > 1})
    if repeated:
        raise InvalidValueError(
            f"candidates must not repeat a ratio, got {repeated} more than once"
        )
    return tuple(sorted(ratios))


def _check_calibration_pair(pair: Any) -> tuple[torch.Tensor, Any]:
    if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
        raise InvalidTypeError(
            f"real_calibration must be a pair (images, labels) or None, got {type(pair).__name__}"
        )
    return check_images(pair[0], "real_calibration images"), pair[1]


def _fit_quietly(
    scaler: MaskedTemperatureScaler, model: nn.Module, images: Any, labels: Any
) -> MaskedTemperatureScaler:
    """``scaler.fit`` without its bound warning (candidates on a bound are expected)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TemperatureBoundWarning)
        return scaler.fit(model, images, labels)


def select_mask_ratio(
    model: nn.Module,
    distilled_images: Any,
    distilled_labels: Any,
    real_calibration: tuple[Any, Any] | None = None,
    *,
    candidates: Sequence[float] = MASK_RATIO_CANDIDATES,
    num_masks: int = 10,
    seed: int = 0,
    batch_size: int = 256,
    device: str | torch.device | None = None,
) -> MaskRatioSelection:
    """Choose the MTS mask ratio without test data.

    With a real calibration set (held-out real images the network was not
    trained on), a :class:`MaskedTemperatureScaler` is fitted on the distilled
    set at every candidate ratio, and the ratio whose temperature gives the
    calibration set the lowest mean NLL wins (on equal NLL, the smaller
    ratio). The calibration logits are computed once. Without a calibration
    set the result is :data:`DEFAULT_MASK_RATIO` and its fitted temperature.

    Never pass test data as ``real_calibration``: a ratio chosen on the test
    set makes every number measured on it optimistic.

    Args:
        model: the network trained on the distilled set, ``(N, ...) -> (N, C)``;
            evaluated in eval mode without gradients, its mode restored.
        distilled_images: the distilled images ``(N, ...)``, what MTS masks.
        distilled_labels: their class indices ``(N,)``.
        real_calibration: ``(images, labels)`` of real held-out data, or ``None``.
        candidates: the mask ratios to compare, each in ``[0, 1)``, no repeats
            (default 0.0 to 0.9 in steps of 0.1); unused without a calibration set.
        num_masks, seed, batch_size: as in :class:`MaskedTemperatureScaler`.
        device: where to run; the model is moved there. Default: the model's device.

    Returns:
        A :class:`MaskRatioSelection`. If the chosen temperature lies on a
        bound of the search interval a :class:`TemperatureBoundWarning` is
        issued (bounds hit by the other candidates are not reported).
    """
    ratios = _check_candidates(candidates)
    num_masks = check_positive_int(num_masks, "num_masks")
    batch_size = check_positive_int(batch_size, "batch_size")
    if device is not None:
        model.to(device)
    calibration: tuple[torch.Tensor, torch.Tensor] | None = None
    if real_calibration is not None:
        images, labels = _check_calibration_pair(real_calibration)
        logits = predict_logits(model, images, batch_size=batch_size)
        targets = check_labels(
            labels,
            "real_calibration labels",
            num_samples=images.shape[0],
            num_classes=logits.shape[1],
        )
        calibration = logits.detach().to("cpu", torch.float64), targets.cpu()
    else:
        ratios = (DEFAULT_MASK_RATIO,)

    def fitted(ratio: float) -> MaskedTemperatureScaler:
        scaler = MaskedTemperatureScaler(
            ratio, num_masks=num_masks, batch_size=batch_size, seed=seed
        )
        return _fit_quietly(scaler, model, distilled_images, distilled_labels)

    scalers = [fitted(ratio) for ratio in ratios]
    temperatures = tuple(scaler._fitted_temperature() for scaler in scalers)
    nll: tuple[float, ...] | None = None
    best = 0
    if calibration is not None:
        nll = tuple(_mean_nll(*calibration, temperature) for temperature in temperatures)
        best = min(range(len(ratios)), key=lambda i: (nll[i], ratios[i]))
    chosen = scalers[best]
    if chosen.bound_hit_ is not None:
        warnings.warn(
            f"the temperature of the selected mask ratio {ratios[best]} is on the "
            f"{chosen.bound_hit_} bound {temperatures[best]:g} of {chosen.bounds}",
            TemperatureBoundWarning,
            stacklevel=2,
        )
    return MaskRatioSelection(
        mask_ratio=ratios[best],
        temperature=temperatures[best],
        candidates=ratios,
        temperatures=temperatures,
        nll=nll,
        selected_by="default" if calibration is None else "calibration-nll",
        bound_hit=chosen.bound_hit_,
    )
