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
from typing import Any, Literal, TypeVar

import numpy as np
import torch
from torch import nn

from ddcal._validation import (
    as_tensor,
    check_bounds,
    check_labels,
    check_positive_int,
    check_scores,
    check_seed,
    is_data,
)
from ddcal.errors import InvalidTypeError, InvalidValueError
from ddcal.inference import (
    check_images,
    check_model,
    labelled_images,
    model_device,
    predict_logits,
    stream_logits,
)
from ddcal.label_free import LabelFreeChoice, target_accuracy_ratio
from ddcal.masking import check_mask_ratio
from ddcal.temperature import (
    MAX_NUM_MASKS,
    TemperatureBoundWarning,
    fit_temperature,
    masked_logits,
    mean_nll,
)

__all__ = [
    "DEFAULT_MASK_RATIO",
    "MASK_RATIO_CANDIDATES",
    "CalibratedModel",
    "CalibrationResult",
    "MaskRatioSelection",
    "MaskedTemperatureScaler",
    "TemperatureBoundWarning",
    "TemperatureScaler",
    "calibrate",
    "fit_temperature",
    "masked_logits",
    "select_mask_ratio",
]

_CONFIG_KEYS = ("mask_ratio", "num_masks", "per_class", "batch_size", "seed", "bounds")
#: State keys added after the state's first release: a state saved without them still loads.
_KEYS_ADDED_LATER = ("fitted_mask_ratio",)

ArrayT = TypeVar("ArrayT", torch.Tensor, np.ndarray)

#: ``mask_ratio="auto"``: the label-free ratio of
#: :func:`ddcal.label_free.target_accuracy_ratio`, the scaler's default.
AUTO = "auto"

#: The fixed ratio of the paper's experiments (no longer the scaler's default:
#: alone it often makes networks worse calibrated than raw, see docs/label-free.md).
DEFAULT_MASK_RATIO = 0.5

#: The ratios :func:`select_mask_ratio` compares by default: 0.0 to 0.9 in steps of 0.1.
MASK_RATIO_CANDIDATES: tuple[float, ...] = (
    0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98
)  # fmt: skip


def _check_scaler_ratio(mask_ratio: Any) -> float | str:
    """A mask ratio in ``[0, 1)``, or ``"auto"``."""
    if isinstance(mask_ratio, str):
        if mask_ratio != AUTO:
            raise InvalidValueError(
                f'mask_ratio must be a float in [0, 1) or "auto", got {mask_ratio!r}'
            )
        return AUTO
    return check_mask_ratio(mask_ratio, "mask_ratio")


class CalibratedModel(nn.Module):
    """Wrap a network so that ``forward`` returns ``model(x) / temperature``.

    Shape: ``(N, ...)`` -> ``(N, C)``. The temperature is a buffer, saved with
    the state dict.
    """

    temperature: torch.Tensor

    def __init__(self, model: nn.Module, temperature: float) -> None:
        super().__init__()
        check_model(model)
        number = _number(temperature)
        if not (math.isfinite(number) and number > 0):
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
            copies, less variance in ``T``), at most ``MAX_NUM_MASKS``. Ignored
            when ``mask_ratio == 0``.
        per_class: validation images drawn per class from *all* the given
            images (seeded); ``None`` uses every image.
        batch_size: inputs per forward pass.
        seed: seed of the per-class draw and of the masks, in ``[0, 2**32)``.
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
        >>> scaler = MaskedTemperatureScaler().fit(model, distilled_loader)  # doctest: +SKIP
    """

    def __init__(
        self,
        mask_ratio: float | str = AUTO,
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
        self.label_free_choice_: LabelFreeChoice | None = None

    def _configure(
        self,
        mask_ratio: float | str,
        num_masks: int,
        per_class: int | None,
        batch_size: int,
        seed: int,
        bounds: tuple[float, float],
    ) -> None:
        """Check every setting, then set them all (a bad one changes nothing)."""
        checked = (
            _check_scaler_ratio(mask_ratio),
            check_positive_int(num_masks, "num_masks", maximum=MAX_NUM_MASKS),
            None if per_class is None else check_positive_int(per_class, "per_class"),
            check_positive_int(batch_size, "batch_size"),
            check_seed(seed),
            check_bounds(bounds),
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
        self, model: nn.Module, images: Any, labels: Any = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The logits ``(K * n, C)`` and labels ``(K * n,)`` that ``fit`` uses.

        :func:`masked_logits` with this scaler's ``mask_ratio`` (for ``"auto"``,
        the ratio the last ``fit`` chose), ``num_masks``, ``per_class``, ``seed``
        and ``batch_size``. ``images`` and ``labels`` as in :meth:`fit`.
        """
        ratio = self.mask_ratio if self.mask_ratio != AUTO else self.fitted_mask_ratio_
        if ratio is None or isinstance(ratio, str):
            raise RuntimeError(
                'mask_ratio="auto" chooses its ratio in fit(model, images, labels): call it first'
            )
        images, labels = labelled_images(images, labels, batch_size=self.batch_size)
        return masked_logits(
            model,
            images,
            labels,
            mask_ratio=ratio,
            num_masks=self.num_masks,
            per_class=self.per_class,
            seed=self.seed,
            batch_size=self.batch_size,
        )

    def fit(self, model: nn.Module, images: Any, labels: Any = None) -> MaskedTemperatureScaler:
        """Fit ``T`` for ``model`` on (masked copies of) ``images``.

        Args:
            model: trained network ``(N, ...) -> (N, C)``; evaluated in eval
                mode without gradients, its mode restored afterwards.
            images: the training (e.g. distilled) images ``(N, ...)``; or a
                ``torch.utils.data.Dataset`` or ``DataLoader`` of ``(image,
                label)`` pairs, read once (:func:`~ddcal.inference.stack_dataset`,
                a Dataset ``batch_size`` items at a time) into tensors that the
                fit then uses as it would the given ones.
            labels: class indices ``(N,)``; ``None`` when ``images`` is a
                Dataset or DataLoader (its labels are used).

        Returns:
            ``self``, with ``fitted_mask_ratio_ = mask_ratio``.
        """
        images, labels = labelled_images(images, labels, batch_size=self.batch_size)
        if self.mask_ratio == AUTO:
            choice = target_accuracy_ratio(
                model,
                images,
                labels,
                num_masks=self.num_masks,
                per_class=self.per_class,
                seed=self.seed,
                batch_size=self.batch_size,
                bounds=self.bounds,
            )
            self.temperature_, self.bound_hit_ = choice.temperature, choice.bound
            self.num_fit_samples_ = choice.num_samples
            self.fitted_mask_ratio_ = choice.mask_ratio
            self.label_free_choice_ = choice
            return self
        logits, targets = self.validation_logits(model, images, labels)
        self._fit_logits(logits, targets)
        self.fitted_mask_ratio_ = float(self.mask_ratio)
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
            with np.errstate(over="ignore"):  # an overflow is the error raised just below
                return _check_scaled(logits / temperature, "logits", temperature)
        return _check_scaled(scores.to(logits.dtype) / temperature, "logits", temperature)

    def predict_proba(self, model: nn.Module, images: Any) -> torch.Tensor:
        """Calibrated probabilities ``softmax(model(images) / T)``, ``(N, C)``.

        ``images`` as in :func:`~ddcal.inference.predict_logits`: ``(N, ...)``,
        or a Dataset or DataLoader, streamed.
        """
        temperature = self._fitted_temperature()
        logits = predict_logits(model, images, batch_size=self.batch_size)
        scaled = _check_scaled(logits.float() / temperature, "the model's logits", temperature)
        return torch.softmax(scaled, dim=1)

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
        bound_hit = _check_state_bound_hit(state["bound_hit"], temperature)
        fitted_mask_ratio = _check_state_fitted_mask_ratio(
            state.get("fitted_mask_ratio"), temperature
        )
        self._configure(*(state[key] for key in _CONFIG_KEYS))
        self.temperature_, self.bound_hit_ = temperature, bound_hit
        self.fitted_mask_ratio_ = fitted_mask_ratio
        # Not in a state: what they described belongs to the fit this load replaces.
        self.num_fit_samples_ = None
        self.label_free_choice_ = None
        return self


def _check_state_keys(state: Any, keys: set[str]) -> None:
    older_keys = keys - set(_KEYS_ADDED_LATER)
    if not isinstance(state, dict) or set(state) not in (keys, older_keys):
        got = sorted(state) if isinstance(state, dict) else type(state).__name__
        raise InvalidValueError(
            f"state must be a dict with keys {sorted(keys)} (from an older ddcal: without "
            f"{list(_KEYS_ADDED_LATER)}), got {got}"
        )


def _number(value: Any) -> float:
    """``float(value)`` for a number (anything but text that converts), else NaN."""
    if isinstance(value, (str, bytes)):
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError, RuntimeError):
        return math.nan


def _check_scaled(scaled: ArrayT, name: str, temperature: float) -> ArrayT:
    """``scaled`` (some logits divided by ``T``) if no entry overflowed to inf."""
    if not bool(torch.isfinite(as_tensor(scaled, name)).all()):
        raise InvalidValueError(
            f"{name} / T overflow {scaled.dtype} at T = {temperature:g}: the logits are too "
            f"large for {scaled.dtype} (pass float64 logits, or rescale them)"
        )
    return scaled


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


def _check_state_bound_hit(bound_hit: Any, temperature: float | None) -> str | None:
    if bound_hit is None:
        return None
    if temperature is not None and isinstance(bound_hit, str) and bound_hit in ("lower", "upper"):
        return bound_hit
    raise InvalidValueError(
        f"state['bound_hit'] must be None, 'lower' or 'upper' (None in an unfitted state), "
        f"got {bound_hit!r}"
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
            the label-free choice when no calibration set was given.
        temperatures: the fitted temperature of each candidate, same order.
        nll: the mean NLL of the calibration set under each candidate's
            temperature, same order; ``None`` without a calibration set.
        selected_by: ``"calibration-nll"`` (lowest NLL on the real calibration
            set) or ``"label-free"`` (no calibration set:
            :func:`~ddcal.label_free.target_accuracy_ratio`).
        bound_hit: ``None``, or ``"lower"``/``"upper"`` when the chosen
            temperature lies on that bound of the search interval.
    """

    mask_ratio: float
    temperature: float
    candidates: tuple[float, ...]
    temperatures: tuple[float, ...]
    nll: tuple[float, ...] | None
    selected_by: Literal["calibration-nll", "label-free"]
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


def _labelled_logits(
    model: nn.Module, data: Any, name: str, batch_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and labels of real labelled data: a pair ``(images, labels)``, or a Dataset or
    DataLoader of ``(image, label)`` pairs, streamed through the model."""
    if is_data(data):
        check_model(model)
        batch_size = check_positive_int(batch_size, "batch_size")
        logits, labels = stream_logits(model, data, name=name, batch_size=batch_size)
    elif isinstance(data, (tuple, list)) and len(data) == 2:
        images, labels = check_images(data[0], f"{name} images"), data[1]
        logits = predict_logits(model, images, batch_size=batch_size)
    else:
        raise InvalidTypeError(
            f"{name} must be a pair (images, labels), a Dataset or DataLoader of (image, label) "
            f"pairs, or None, got {type(data).__name__}"
        )
    targets = check_labels(
        labels, f"{name} labels", num_samples=logits.shape[0], num_classes=logits.shape[1]
    )
    return logits, targets


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
    distilled_labels: Any = None,
    real_calibration: Any = None,
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
    set the label-free rule chooses
    (:func:`~ddcal.label_free.target_accuracy_ratio`, what
    ``MaskedTemperatureScaler()`` uses), never a silent constant.

    Never pass test data as ``real_calibration``: a ratio chosen on the test
    set makes every number measured on it optimistic.

    Args:
        model: the network trained on the distilled set, ``(N, ...) -> (N, C)``;
            evaluated in eval mode without gradients, its mode restored.
        distilled_images: the distilled images ``(N, ...)``, what MTS masks; or
            a Dataset or DataLoader of ``(image, label)`` pairs, read once
            (:func:`~ddcal.inference.stack_dataset`).
        distilled_labels: their class indices ``(N,)``; ``None`` when
            ``distilled_images`` is a Dataset or DataLoader.
        real_calibration: ``(images, labels)`` of real held-out data, a Dataset
            or DataLoader of such pairs (streamed through the model once), or
            ``None``.
        candidates: the mask ratios to compare, each in ``[0, 1)``, no repeats
            (default 0.0 to 0.9 in steps of 0.1); unused without a calibration set.
        num_masks, seed, batch_size: as in :class:`MaskedTemperatureScaler`.
        device: where to run; the model is moved there. Default: the model's device.

    Returns:
        A :class:`MaskRatioSelection`. If the chosen temperature lies on a
        bound of the search interval a :class:`TemperatureBoundWarning` is
        issued (bounds hit by the other candidates are not reported).
    """
    check_model(model)
    ratios = _check_candidates(candidates)
    num_masks = check_positive_int(num_masks, "num_masks", maximum=MAX_NUM_MASKS)
    seed = check_seed(seed)
    batch_size = check_positive_int(batch_size, "batch_size")
    if device is not None:
        model.to(device)
    distilled_images, distilled_labels = labelled_images(
        distilled_images,
        distilled_labels,
        batch_size=batch_size,
        name="distilled_images",
        labels_name="distilled_labels",
    )
    if real_calibration is None:
        choice = target_accuracy_ratio(
            model,
            distilled_images,
            distilled_labels,
            num_masks=num_masks,
            seed=seed,
            batch_size=batch_size,
        )
        return MaskRatioSelection(
            mask_ratio=choice.mask_ratio,
            temperature=choice.temperature,
            candidates=(choice.mask_ratio,),
            temperatures=(choice.temperature,),
            nll=None,
            selected_by="label-free",
            bound_hit=choice.bound,
        )
    logits, targets = _labelled_logits(model, real_calibration, "real_calibration", batch_size)
    calibration = logits.detach().to("cpu", torch.float64), targets.cpu()

    def fitted(ratio: float) -> MaskedTemperatureScaler:
        scaler = MaskedTemperatureScaler(
            ratio, num_masks=num_masks, batch_size=batch_size, seed=seed
        )
        return _fit_quietly(scaler, model, distilled_images, distilled_labels)

    scalers = [fitted(ratio) for ratio in ratios]
    temperatures = tuple(scaler._fitted_temperature() for scaler in scalers)
    nll = tuple(mean_nll(*calibration, temperature) for temperature in temperatures)
    overflowed = [i for i, value in enumerate(nll) if not math.isfinite(value)]
    if overflowed:
        i = overflowed[0]
        raise InvalidValueError(
            f"the NLL of real_calibration at T = {temperatures[i]:g} (mask ratio {ratios[i]}) "
            f"is {nll[i]}: its logits (largest |logit| {float(calibration[0].abs().amax()):.4g}) "
            "overflow float64; check the model and that the images are normalised"
        )
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
        selected_by="calibration-nll",
        bound_hit=chosen.bound_hit_,
    )


@dataclass(frozen=True)
class CalibrationResult:
    """What :func:`calibrate` fitted, with what, and why.

    Attributes:
        temperature: the fitted temperature.
        method: ``"ts-labelled"`` (TS on the labelled real images) or
            ``"mts-label-free"`` (the default rule on the distilled set).
        reason: one sentence on why that method was used.
        mask_ratio: the MTS ratio (``None`` for ``"ts-labelled"``).
        model: the network wrapped to return calibrated logits.
    """

    temperature: float
    method: Literal["ts-labelled", "mts-label-free"]
    reason: str
    mask_ratio: float | None
    model: CalibratedModel


def calibrate(
    model: nn.Module,
    distilled_images: Any,
    distilled_labels: Any = None,
    *,
    unlabelled: Any | None = None,
    labelled: Any | None = None,
    num_masks: int = 10,
    seed: int = 0,
    batch_size: int = 256,
) -> CalibrationResult:
    """Calibrate ``model`` with the strongest method the given data allows.

    * ``labelled=(images, labels)``, real images the network did not train on
      (never the test set): plain temperature scaling on them, what every
      label-free rule is measured against.
    * otherwise the label-free default, ``MaskedTemperatureScaler()`` on the
      distilled set. ``unlabelled`` real images are accepted but not used: the
      rules that use them (confidence matching, two-network agreement) were
      worse than the label-free rule in the study (docs/label-free.md), and the
      result says so.

    The distilled set (with ``distilled_labels=None``) and ``labelled`` may
    also be Datasets or DataLoaders of ``(image, label)`` pairs, as in
    :func:`select_mask_ratio`; an ``unlabelled`` one is not read.

    Returns:
        A :class:`CalibrationResult` recording the method and the reason.
    """
    if labelled is not None:
        logits, labels = _labelled_logits(model, labelled, "labelled", batch_size)
        scaler = TemperatureScaler(seed=seed, batch_size=batch_size).fit_logits(logits, labels)
        temperature = scaler._fitted_temperature()
        return CalibrationResult(
            temperature,
            "ts-labelled",
            f"{logits.shape[0]} labelled real images were given: plain TS on them",
            None,
            scaler.calibrate(model),
        )
    scaler = MaskedTemperatureScaler(num_masks=num_masks, seed=seed, batch_size=batch_size)
    scaler.fit(model, distilled_images, distilled_labels)
    reason = "only the distilled set was given: the label-free rule (mask_ratio='auto')"
    if unlabelled is not None:
        if not is_data(unlabelled):
            check_images(unlabelled, "unlabelled")
        reason = (
            "unlabelled real images were given, but no rule that uses them beat the label-free "
            "rule in the study (docs/label-free.md): the label-free rule (mask_ratio='auto')"
        )
    return CalibrationResult(
        scaler._fitted_temperature(),
        "mts-label-free",
        reason,
        scaler.fitted_mask_ratio_,
        scaler.calibrate(model),
    )
